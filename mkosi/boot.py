"""Boot loaders and boot artifacts: unified kernel images, systemd-boot, Type #1 entries, GRUB for
BIOS, Secure Boot signing and key generation.

Everything here takes explicit paths and strings; nothing depends on mkosi's configuration
objects, so the build pipeline (or a test) can call these functions directly.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import CommandError, MkosiError
from mkosi.output.gpt import type_uuid as _gpt_type_uuid
from mkosi.run import require_tool, run

SYSTEMD_BOOT_EFI_DIR = Path("/usr/lib/systemd/boot/efi")
DEFAULT_UKI_STUB = SYSTEMD_BOOT_EFI_DIR / "linuxx64.efi.stub"
GRUB_I386_PC_DIR = Path("/usr/lib/grub/i386-pc")

SECTOR_SIZE = 512

# ---------------------------------------------------------------------------------------------
# PE/COFF parsing (just enough to lay out new sections after the existing ones)
# ---------------------------------------------------------------------------------------------

PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B


@dataclasses.dataclass(frozen=True)
class PESection:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int
    characteristics: int

    @property
    def virtual_end(self) -> int:
        """The first RVA after this section once loaded (whichever of the two sizes is larger)."""
        return self.virtual_address + max(self.virtual_size, self.raw_size)


@dataclasses.dataclass(frozen=True)
class PEImage:
    machine: int
    magic: int
    image_base: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    sections: tuple[PESection, ...]

    def section(self, name: str) -> PESection | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None


def parse_pe(data: bytes) -> PEImage:
    """Parse the DOS stub, COFF file header, optional header and section table of a PE image."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise MkosiError("not a PE image: missing 'MZ' signature")
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    if pe_offset + 24 > len(data) or data[pe_offset : pe_offset + 4] != b"PE\0\0":
        raise MkosiError("not a PE image: missing 'PE' signature")
    coff = pe_offset + 4
    machine, nsections, _timestamp, _symtab, _nsyms, opt_size, _chars = struct.unpack_from(
        "<HHIIIHH", data, coff
    )
    opt = coff + 20
    if opt + opt_size > len(data):
        raise MkosiError("truncated PE optional header")
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic == PE32PLUS_MAGIC:
        (image_base,) = struct.unpack_from("<Q", data, opt + 24)
    elif magic == PE32_MAGIC:
        (image_base,) = struct.unpack_from("<I", data, opt + 28)
    else:
        raise MkosiError(f"unknown PE optional header magic {magic:#x}")
    # These offsets are the same for PE32 and PE32+.
    section_alignment, file_alignment = struct.unpack_from("<II", data, opt + 32)
    size_of_image, size_of_headers = struct.unpack_from("<II", data, opt + 56)

    sections = []
    table = opt + opt_size
    if table + nsections * 40 > len(data):
        raise MkosiError("truncated PE section table")
    for i in range(nsections):
        raw_name, vsize, vaddr, rsize, roff, _relocs, _lines, _nrelocs, _nlines, chars = struct.unpack_from(
            "<8sIIIIIIHHI", data, table + i * 40
        )
        name = raw_name.rstrip(b"\0").decode("ascii", errors="replace")
        sections.append(PESection(name, vsize, vaddr, rsize, roff, chars))

    return PEImage(
        machine=machine,
        magic=magic,
        image_base=image_base,
        section_alignment=section_alignment,
        file_alignment=file_alignment,
        size_of_image=size_of_image,
        size_of_headers=size_of_headers,
        sections=tuple(sections),
    )


def read_pe(path: Path) -> PEImage:
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:2] != b"MZ":
            raise MkosiError(f"{path}: not a PE image")
        (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
        f.seek(pe_offset + 4)
        coff = f.read(20)
        if len(coff) < 20:
            raise MkosiError(f"{path}: truncated PE header")
        _machine, nsections = struct.unpack_from("<HH", coff, 0)
        (opt_size,) = struct.unpack_from("<H", coff, 16)
        f.seek(0)
        data = f.read(pe_offset + 4 + 20 + opt_size + nsections * 40)
    try:
        return parse_pe(data)
    except MkosiError as e:
        raise MkosiError(f"{path}: {e}")


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def uki_layout(
    stub: PEImage, sections: Sequence[tuple[str, int]], page_size: int = 4096
) -> list[tuple[str, int]]:
    """Compute the RVA of each new section, in the given order, after everything in the stub.

    Each new section starts at a multiple of the stub's SectionAlignment (and of the page size,
    so firmware can map them with page granularity) and does not overlap anything before it.
    """
    alignment = max(stub.section_alignment, 1)
    alignment = page_size if page_size % alignment == 0 else _align_up(page_size, alignment)
    end = max([stub.size_of_image, *(s.virtual_end for s in stub.sections)])
    result = []
    for name, size in sections:
        if size <= 0:
            raise MkosiError(f"UKI section {name} would be empty")
        rva = _align_up(end, alignment)
        result.append((name, rva))
        end = rva + size
    return result


def build_uki(
    stub: Path,
    kernel: Path,
    initrd: Path | None,
    cmdline: str,
    os_release: Path,
    output: Path,
    uname: str | None = None,
    *,
    extra_sections: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Build a unified kernel image: the systemd EFI stub plus .osrel, .cmdline, .uname, any
    extra sections (e.g. .splash), .initrd and finally .linux, each placed at a section-aligned
    virtual address after the stub's own sections. Returns `output`."""
    objcopy = require_tool("objcopy")
    if not stub.is_file():
        raise MkosiError(
            f"EFI stub {stub} not found",
            hint="install it with: apt-get install systemd-boot-efi",
        )
    if not kernel.is_file():
        raise MkosiError(f"kernel image {kernel} not found")
    if not os_release.is_file():
        raise MkosiError(f"os-release file {os_release} not found")
    if initrd is not None and not initrd.is_file():
        raise MkosiError(f"initrd {initrd} not found")
    with kernel.open("rb") as f:
        if f.read(2) != b"MZ":
            raise MkosiError(
                f"{kernel} is not an EFI-bootable kernel (no PE header)",
                hint="the kernel must be built with CONFIG_EFI_STUB=y",
            )

    pe = read_pe(stub)
    existing = {s.name for s in pe.sections}

    with tempfile.TemporaryDirectory(prefix="mkosi-uki-") as tmp:
        tmpdir = Path(tmp)
        cmdline_file = tmpdir / "cmdline"
        cmdline_file.write_text(cmdline.strip())

        payloads: list[tuple[str, Path]] = [(".osrel", os_release), (".cmdline", cmdline_file)]
        if uname:
            uname_file = tmpdir / "uname"
            uname_file.write_text(uname)
            payloads.append((".uname", uname_file))
        payloads.extend(extra_sections)
        if initrd is not None:
            payloads.append((".initrd", initrd))
        payloads.append((".linux", kernel))

        for name, path in payloads:
            if len(name.encode()) > 8 or not name.startswith("."):
                raise MkosiError(
                    f"invalid PE section name {name!r} (at most 8 characters, starting with '.')"
                )
            if name in existing:
                raise MkosiError(f"the EFI stub {stub} already has a {name} section")
            if path.stat().st_size == 0:
                if name == ".initrd":
                    raise MkosiError(f"initrd {path} is empty")
                raise MkosiError(f"{path} is empty, cannot add it as {name}")

        layout = uki_layout(pe, [(name, path.stat().st_size) for name, path in payloads])
        argv: list[str] = [objcopy]
        for (name, path), (_, rva) in zip(payloads, layout):
            argv += [
                "--add-section", f"{name}={path}",
                "--set-section-flags", f"{name}=data,readonly",
                "--change-section-vma", f"{name}={pe.image_base + rva:#x}",
            ]  # fmt: skip
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp_output = output.with_name(f".{output.name}.tmp")
        argv += [os.fspath(stub), os.fspath(tmp_output)]
        try:
            run(argv)
            os.replace(tmp_output, output)
        finally:
            tmp_output.unlink(missing_ok=True)

    log.debug(f"built UKI {output} ({output.stat().st_size} bytes)")
    return output


# ---------------------------------------------------------------------------------------------
# systemd-boot and Boot Loader Specification entries
# ---------------------------------------------------------------------------------------------


def install_systemd_boot(
    esp_dir: Path,
    efi_arch: str = "x64",
    *,
    timeout: int = 0,
    default: str | None = None,
    source_dir: Path = SYSTEMD_BOOT_EFI_DIR,
) -> None:
    """Copy systemd-boot into an ESP tree as EFI/systemd/systemd-boot<arch>.efi and as the
    removable-media fallback EFI/BOOT/BOOT<ARCH>.EFI, and write loader/loader.conf."""
    binary = source_dir / f"systemd-boot{efi_arch}.efi"
    if not binary.is_file():
        raise MkosiError(
            f"systemd-boot binary {binary} not found",
            hint="install it with: apt-get install systemd-boot-efi",
        )
    (esp_dir / "EFI/systemd").mkdir(parents=True, exist_ok=True)
    (esp_dir / "EFI/BOOT").mkdir(parents=True, exist_ok=True)
    (esp_dir / "EFI/Linux").mkdir(parents=True, exist_ok=True)
    (esp_dir / "loader/entries").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, esp_dir / f"EFI/systemd/systemd-boot{efi_arch}.efi")
    shutil.copyfile(binary, esp_dir / f"EFI/BOOT/BOOT{efi_arch.upper()}.EFI")

    lines = [f"timeout {timeout}"]
    if default:
        lines.append(f"default {default}")
    lines.append("editor no")
    (esp_dir / "loader/loader.conf").write_text("\n".join(lines) + "\n")


_ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9._+-]+$")


def bls_entry_text(
    title: str,
    linux: str,
    initrds: Sequence[str],
    cmdline: str,
    *,
    version: str | None = None,
    machine_id: str | None = None,
    sort_key: str | None = None,
) -> str:
    """The text of a Boot Loader Specification Type #1 entry."""
    lines = [f"title {title}"]
    if version:
        lines.append(f"version {version}")
    if machine_id:
        lines.append(f"machine-id {machine_id}")
    if sort_key:
        lines.append(f"sort-key {sort_key}")
    lines.append(f"linux {linux}")
    lines += [f"initrd {i}" for i in initrds]
    if cmdline.strip():
        lines.append(f"options {' '.join(cmdline.split())}")
    return "\n".join(lines) + "\n"


def install_bls_entry(
    esp_dir: Path,
    entry_id: str,
    title: str,
    kernel: Path,
    initrd: Path | None,
    cmdline: str,
    *,
    version: str | None = None,
    machine_id: str | None = None,
) -> Path:
    """Copy kernel and initrd to /<entry_id>/ on the ESP and write loader/entries/<entry_id>.conf
    (Boot Loader Specification Type #1) referencing them. Returns the entry file."""
    if not _ENTRY_ID_RE.match(entry_id):
        raise MkosiError(f"invalid boot entry id {entry_id!r}", hint="use letters, digits and . _ + -")
    dest = esp_dir / entry_id
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel, dest / "linux")
    initrds = []
    if initrd is not None:
        shutil.copyfile(initrd, dest / "initrd")
        initrds.append(f"/{entry_id}/initrd")
    entries = esp_dir / "loader/entries"
    entries.mkdir(parents=True, exist_ok=True)
    entry = entries / f"{entry_id}.conf"
    entry.write_text(
        bls_entry_text(title, f"/{entry_id}/linux", initrds, cmdline, version=version, machine_id=machine_id)
    )
    return entry


# ---------------------------------------------------------------------------------------------
# GRUB for BIOS (i386-pc) on a GPT disk image, without loop devices
# ---------------------------------------------------------------------------------------------

# The GPT type of the BIOS boot partition GRUB's core image lives in (the one table in gpt.py).
BIOS_BOOT_PARTITION_TYPE = _gpt_type_uuid("bios-boot")

# Offsets inside GRUB's boot.img (the MBR boot code) and diskboot.img (first sector of core.img).
BOOT_IMG_KERNEL_SECTOR = 0x5C  # u64: LBA of the first sector of core.img
BOOT_IMG_BOOT_DRIVE = 0x64  # u8: 0xff = use the drive the BIOS passed in %dl
BOOT_IMG_DRIVE_CHECK = 0x66  # 2-byte short jump; replaced by NOPs for hard disk installs
MBR_CODE_SIZE = 440  # boot code ends where the disk signature and partition table begin
BLOCKLIST_SIZE = 12  # struct { u64 start; u16 len; u16 segment; } at the end of diskboot.img

GRUB_BIOS_MODULES = (
    "biosdisk", "part_gpt", "part_msdos",
    "fat", "ext2", "xfs", "btrfs", "squash4", "iso9660",
    "search", "search_fs_file", "search_fs_uuid", "search_label",
    "normal", "configfile", "linux", "echo", "test", "serial", "terminal", "boot", "gzio",
)  # fmt: skip


def find_gpt_partition(image: Path, type_uuid: uuid.UUID) -> tuple[int, int]:
    """Find the first GPT partition of the given type. Returns (byte offset, byte size)."""
    with image.open("rb") as f:
        f.seek(SECTOR_SIZE)
        header = f.read(92)
        if len(header) < 92 or header[:8] != b"EFI PART":
            raise MkosiError(f"{image}: no GPT partition table found")
        entries_lba, nentries, entry_size = struct.unpack_from("<QII", header, 72)
        f.seek(entries_lba * SECTOR_SIZE)
        table = f.read(nentries * entry_size)
    for i in range(nentries):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if len(entry) < 48:
            break
        if uuid.UUID(bytes_le=entry[:16]) == type_uuid:
            first, last = struct.unpack_from("<QQ", entry, 32)
            return first * SECTOR_SIZE, (last - first + 1) * SECTOR_SIZE
    raise MkosiError(f"{image}: no partition of type {type_uuid} found")


def _grub_word(word: str) -> str:
    """Quote one word for GRUB's script language."""
    if word and re.fullmatch(r"[A-Za-z0-9_./:=,+@%^-]+", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _kernel_cmdline_words(cmdline: str) -> list[str]:
    """Split a kernel command line the way the kernel does: whitespace outside double quotes
    separates parameters; the quotes themselves only group."""
    words = []
    current = ""
    quoted = False
    started = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append(current)
            current, started = "", False
        else:
            current += ch
            started = True
    if started:
        words.append(current)
    return words


def grub_config_text(
    *,
    title: str,
    kernel: str,
    initrd: str | None,
    cmdline: str,
    timeout: int = 0,
    serial: bool = True,
) -> str:
    """A grub.cfg that boots `kernel` (a path on the filesystem holding grub.cfg) directly."""
    lines = []
    if serial:
        lines += [
            "serial --unit=0 --speed=115200",
            "terminal_input console serial",
            "terminal_output console serial",
        ]
    lines += [
        f"set timeout={timeout}",
        "set default=0",
        f"menuentry {_grub_word(title)} {{",
        "    " + " ".join(["linux", _grub_word(kernel), *map(_grub_word, _kernel_cmdline_words(cmdline))]),
    ]
    if initrd:
        lines.append(f"    initrd {_grub_word(initrd)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_grub_config(
    grub_dir: Path,
    *,
    title: str,
    kernel: str,
    initrd: str | None,
    cmdline: str,
    timeout: int = 0,
    serial: bool = True,
    copy_modules: bool = True,
    grub_lib: Path = GRUB_I386_PC_DIR,
) -> Path:
    """Write grub.cfg into `grub_dir` (the staging copy of e.g. /boot/grub in the root tree, or
    /grub in an ESP tree) and optionally GRUB's module directory next to it, so `insmod` works for
    modules not built into the core image. Returns the grub.cfg path."""
    grub_dir.mkdir(parents=True, exist_ok=True)
    cfg = grub_dir / "grub.cfg"
    cfg.write_text(
        grub_config_text(
            title=title, kernel=kernel, initrd=initrd, cmdline=cmdline, timeout=timeout, serial=serial
        )
    )
    if copy_modules:
        if not grub_lib.is_dir():
            raise MkosiError(
                f"GRUB module directory {grub_lib} not found", hint="apt-get install grub-pc-bin"
            )
        dest = grub_dir / grub_lib.name
        dest.mkdir(exist_ok=True)
        for f in grub_lib.iterdir():
            if f.suffix in (".mod", ".lst"):
                shutil.copyfile(f, dest / f.name)
    return cfg


def _make_grub_core(
    output: Path,
    *,
    grub_dir: str,
    filesystem_uuid: str | None,
    modules: Sequence[str],
    grub_lib: Path,
) -> bytes:
    grub_dir = "/" + grub_dir.strip("/")
    if filesystem_uuid:
        search = f"search --no-floppy --fs-uuid --set=root {filesystem_uuid}"
    else:
        search = f"search --no-floppy --file --set=root {grub_dir}/grub.cfg"
    early = output.with_name("early.cfg")
    early.write_text(f"{search}\nset prefix=($root){grub_dir}\n")
    run([
        require_tool("grub-mkimage"),
        "--format", "i386-pc",
        "--directory", os.fspath(grub_lib),
        "--output", os.fspath(output),
        "--config", os.fspath(early),
        "--prefix", grub_dir,
        *modules,
    ])  # fmt: skip
    return output.read_bytes()


def install_grub_bios(
    image: Path,
    *,
    grub_dir: str = "/boot/grub",
    filesystem_uuid: str | None = None,
    bios_boot_offset: int | None = None,
    bios_boot_size: int | None = None,
    extra_modules: Sequence[str] = (),
    grub_lib: Path = GRUB_I386_PC_DIR,
) -> None:
    """Make a GPT disk image BIOS-bootable with GRUB, writing directly into the image file.

    A core image with the modules for GPT, the common file systems, the Linux loader and
    `normal` is built with an embedded config that finds the file system holding
    `<grub_dir>/grub.cfg` (by `filesystem_uuid` if given, otherwise by looking for that file) and
    sets the prefix there. core.img goes into the BIOS boot partition (found in the GPT unless its
    offset and size are given); the first 440 bytes of the MBR get boot.img, patched with the LBA
    of core.img, and the blocklist at the end of core.img's first sector is patched to point at
    the rest of it. The protective MBR's partition table is left alone. The grub.cfg itself comes
    from write_grub_config(), written into the file system's tree before it is built.
    """
    for name in ("boot.img", "diskboot.img", "kernel.img", "moddep.lst"):
        if not (grub_lib / name).exists():
            raise MkosiError(f"GRUB BIOS files not found in {grub_lib}", hint="apt-get install grub-pc-bin")

    if bios_boot_offset is None:
        bios_boot_offset, found_size = find_gpt_partition(image, BIOS_BOOT_PARTITION_TYPE)
        if bios_boot_size is None:
            bios_boot_size = found_size
    if bios_boot_offset % SECTOR_SIZE:
        raise MkosiError(f"BIOS boot partition offset {bios_boot_offset} is not sector aligned")
    if bios_boot_size is None:
        raise MkosiError("the size of the BIOS boot partition must be given with its offset")
    if bios_boot_offset + bios_boot_size > image.stat().st_size:
        raise MkosiError(f"BIOS boot partition extends past the end of {image}")

    modules = list(dict.fromkeys([*GRUB_BIOS_MODULES, *extra_modules]))
    with tempfile.TemporaryDirectory(prefix="mkosi-grub-") as tmp:
        core = bytearray(
            _make_grub_core(
                Path(tmp) / "core.img",
                grub_dir=grub_dir,
                filesystem_uuid=filesystem_uuid,
                modules=modules,
                grub_lib=grub_lib,
            )
        )
    if len(core) > bios_boot_size:
        raise MkosiError(
            f"GRUB core image ({len(core)} bytes) does not fit "
            f"the BIOS boot partition ({bios_boot_size} bytes)",
            hint="make the BIOS boot partition at least 1 MiB",
        )
    boot = bytearray((grub_lib / "boot.img").read_bytes())
    if len(boot) != SECTOR_SIZE:
        raise MkosiError(f"{grub_lib}/boot.img is not one sector long")

    core_lba = bios_boot_offset // SECTOR_SIZE
    rest_sectors = (len(core) - SECTOR_SIZE + SECTOR_SIZE - 1) // SECTOR_SIZE

    # diskboot.img loads the rest of core.img following the blocklist at the end of its sector.
    # grub-mkimage fills in length and load segment; only the start needs to be our location.
    bl = SECTOR_SIZE - BLOCKLIST_SIZE
    _start, length, segment = struct.unpack_from("<QHH", core, bl)
    if length != rest_sectors or segment == 0:
        raise MkosiError(
            f"unexpected blocklist in GRUB core image (length {length}, segment {segment:#x}), "
            f"expected {rest_sectors} sectors"
        )
    struct.pack_into("<Q", core, bl, core_lba + 1)
    # An all-zero entry after ours terminates the list.
    if core[bl - BLOCKLIST_SIZE : bl] != bytes(BLOCKLIST_SIZE):
        raise MkosiError("unexpected data before the blocklist in the GRUB core image")

    struct.pack_into("<Q", boot, BOOT_IMG_KERNEL_SECTOR, core_lba)
    boot[BOOT_IMG_BOOT_DRIVE] = 0xFF
    # Hard disk install: do not trust a floppy drive number from the BIOS, force 0x80 instead.
    boot[BOOT_IMG_DRIVE_CHECK : BOOT_IMG_DRIVE_CHECK + 2] = b"\x90\x90"

    with image.open("r+b") as f:
        mbr = bytearray(f.read(SECTOR_SIZE))
        if len(mbr) != SECTOR_SIZE:
            raise MkosiError(f"{image} is too small to hold a boot sector")
        mbr[:MBR_CODE_SIZE] = boot[:MBR_CODE_SIZE]
        mbr[510:512] = b"\x55\xaa"
        f.seek(bios_boot_offset)
        f.write(core)
        f.seek(0)
        f.write(mbr)
    log.debug(f"installed GRUB ({len(core)} byte core image) at LBA {core_lba} of {image}")


# ---------------------------------------------------------------------------------------------
# Secure Boot
# ---------------------------------------------------------------------------------------------


def sign_efi(binary: Path, key: Path, cert: Path) -> None:
    """Sign a PE binary in place with sbsign."""
    sbsign = require_tool("sbsign")
    tmp = binary.with_name(f".{binary.name}.signed")
    try:
        run(
            [sbsign, "--key", key, "--cert", cert, "--output", tmp, binary],
            capture=True,
        )
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)


def verify_efi(binary: Path, cert: Path) -> bool:
    """True when sbverify accepts the binary's signature against `cert`."""
    sbverify = require_tool("sbverify")
    try:
        proc = run([sbverify, "--cert", os.fspath(cert), os.fspath(binary)], check=False, capture=True)
    except CommandError:
        return False
    return proc.returncode == 0


def generate_secure_boot_keys(common_name: str, valid_days: int, key_out: Path, cert_out: Path) -> None:
    """Create an RSA 2048 key (PEM, mode 0600) and a self-signed X.509 certificate for it with the
    given common name, valid from now for `valid_days` days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if valid_days <= 0:
        raise MkosiError(f"certificate validity must be a positive number of days, not {valid_days}")
    if not common_name:
        raise MkosiError("the certificate common name must not be empty")

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )

    key_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    key_out.parent.mkdir(parents=True, exist_ok=True)
    cert_out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key_pem)
    finally:
        os.close(fd)
    cert_out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------------------------------------
# Kernel discovery and command line
# ---------------------------------------------------------------------------------------------


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts: list[tuple[int, int | str]] = []
    for piece in re.findall(r"\d+|[A-Za-z]+|[~]", version):
        if piece.isdigit():
            parts.append((2, int(piece)))
        elif piece == "~":
            parts.append((0, ""))
        else:
            parts.append((1, piece))
    return tuple(parts)


def find_kernel(root: Path) -> tuple[Path, str]:
    """Find the newest kernel in a root tree: /boot/vmlinuz-VERSION (Debian, Ubuntu) or
    /usr/lib/modules/VERSION/vmlinuz (Fedora, Arch, ...). Returns (path, version)."""
    candidates: dict[str, Path] = {}
    modules = root / "usr/lib/modules"
    if modules.is_dir():
        for d in modules.iterdir():
            if (d / "vmlinuz").is_file():
                candidates[d.name] = d / "vmlinuz"
    boot = root / "boot"
    if boot.is_dir():
        for f in boot.glob("vmlinuz-*"):
            if f.is_file():
                candidates[f.name[len("vmlinuz-") :]] = f
    if not candidates:
        raise MkosiError(
            f"no kernel found in {root} (looked for boot/vmlinuz-* and usr/lib/modules/*/vmlinuz)",
            hint="add a kernel package (e.g. linux-image-amd64) to the image's packages",
        )
    version = max(candidates, key=_version_key)
    return candidates[version], version


def kernel_cmdline(
    base: Sequence[str],
    root: str | None = None,
    *,
    serial_console: bool = False,
    read_only: bool = False,
) -> str:
    """Assemble a kernel command line from `base` words.

    `root` is a root= value ("PARTUUID=…", "UUID=…", "LABEL=…", "/dev/…", or "root=…"); it is
    only added if `base` has no root= already (with none, systemd's GPT auto-discovery finds the
    root partition). "rw" (or "ro" with `read_only`) is added unless either is present, and
    console=ttyS0 with `serial_console` unless a console= is present. Duplicate words are dropped,
    keeping the first.
    """
    words: list[str] = []
    for item in base:
        words += _kernel_cmdline_words(item) if " " in item and '"' not in item else [item]
    keys = {w.split("=", 1)[0] for w in words}
    if root and "root" not in keys:
        words.insert(0, root if root.startswith("root=") else f"root={root}")
    if "ro" not in keys and "rw" not in keys:
        words.append("ro" if read_only else "rw")
    if serial_console and "console" not in keys:
        words.append("console=ttyS0,115200")
    return " ".join(dict.fromkeys(w for w in words if w))
