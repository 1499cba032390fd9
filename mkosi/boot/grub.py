"""GRUB for BIOS (i386-pc) on a GPT disk image, without loop devices: grub.cfg in a directory tree,
the core image in the BIOS boot partition, boot.img in the MBR."""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from mkosi import log
from mkosi.boot.cmdline import kernel_cmdline_words
from mkosi.errors import MkosiError
from mkosi.output.gpt import type_uuid as _gpt_type_uuid
from mkosi.run import require_tool, run

GRUB_I386_PC_DIR = Path("/usr/lib/grub/i386-pc")

SECTOR_SIZE = 512

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
        "    " + " ".join(["linux", _grub_word(kernel), *map(_grub_word, kernel_cmdline_words(cmdline))]),
    ]
    if initrd:
        lines.append(f"    initrd {_grub_word(initrd)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _copy_grub_modules(grub_dir: Path, grub_lib: Path) -> None:
    if not grub_lib.is_dir():
        raise MkosiError(f"GRUB module directory {grub_lib} not found", hint="apt-get install grub-pc-bin")
    dest = grub_dir / grub_lib.name
    dest.mkdir(exist_ok=True)
    for f in grub_lib.iterdir():
        if f.suffix in (".mod", ".lst"):
            shutil.copyfile(f, dest / f.name)


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
        _copy_grub_modules(grub_dir, grub_lib)
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


def _bios_boot_partition(image: Path, offset: int | None, size: int | None) -> tuple[int, int]:
    """The BIOS boot partition's (offset, size): as given, or found in the GPT."""
    if offset is None:
        offset, found_size = find_gpt_partition(image, BIOS_BOOT_PARTITION_TYPE)
        if size is None:
            size = found_size
    if offset % SECTOR_SIZE:
        raise MkosiError(f"BIOS boot partition offset {offset} is not sector aligned")
    if size is None:
        raise MkosiError("the size of the BIOS boot partition must be given with its offset")
    if offset + size > image.stat().st_size:
        raise MkosiError(f"BIOS boot partition extends past the end of {image}")
    return offset, size


def _patch_blocklist(core: bytearray, core_lba: int) -> None:
    """diskboot.img loads the rest of core.img following the blocklist at the end of its sector.
    grub-mkimage fills in length and load segment; only the start needs to be our location."""
    rest_sectors = (len(core) - SECTOR_SIZE + SECTOR_SIZE - 1) // SECTOR_SIZE
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


def _patched_boot_img(grub_lib: Path, core_lba: int) -> bytearray:
    boot = bytearray((grub_lib / "boot.img").read_bytes())
    if len(boot) != SECTOR_SIZE:
        raise MkosiError(f"{grub_lib}/boot.img is not one sector long")
    struct.pack_into("<Q", boot, BOOT_IMG_KERNEL_SECTOR, core_lba)
    boot[BOOT_IMG_BOOT_DRIVE] = 0xFF
    # Hard disk install: do not trust a floppy drive number from the BIOS, force 0x80 instead.
    boot[BOOT_IMG_DRIVE_CHECK : BOOT_IMG_DRIVE_CHECK + 2] = b"\x90\x90"
    return boot


def _write_boot_code(image: Path, boot: bytearray, core: bytearray, core_offset: int) -> None:
    with image.open("r+b") as f:
        mbr = bytearray(f.read(SECTOR_SIZE))
        if len(mbr) != SECTOR_SIZE:
            raise MkosiError(f"{image} is too small to hold a boot sector")
        mbr[:MBR_CODE_SIZE] = boot[:MBR_CODE_SIZE]
        mbr[510:512] = b"\x55\xaa"
        f.seek(core_offset)
        f.write(core)
        f.seek(0)
        f.write(mbr)


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
    offset, size = _bios_boot_partition(image, bios_boot_offset, bios_boot_size)

    modules = list(dict.fromkeys([*GRUB_BIOS_MODULES, *extra_modules]))
    with tempfile.TemporaryDirectory(prefix="mkosi-grub-") as tmp:
        core = bytearray(_make_grub_core(Path(tmp) / "core.img", grub_dir=grub_dir,
                                         filesystem_uuid=filesystem_uuid, modules=modules, grub_lib=grub_lib))
    if len(core) > size:
        raise MkosiError(
            f"GRUB core image ({len(core)} bytes) does not fit the BIOS boot partition ({size} bytes)",
            hint="make the BIOS boot partition at least 1 MiB",
        )
    core_lba = offset // SECTOR_SIZE
    boot = _patched_boot_img(grub_lib, core_lba)
    _patch_blocklist(core, core_lba)
    _write_boot_code(image, boot, core, offset)
    log.debug(f"installed GRUB ({len(core)} byte core image) at LBA {core_lba} of {image}")


# ---- GRUB for UEFI (Bootloader=grub): an EFI image that chainloads the unified kernel images ----

GRUB_EFI_MODULES = (
    "part_gpt", "fat", "search", "search_fs_file", "normal", "configfile", "chain", "echo", "test",
    "serial", "terminal", "efi_gop", "boot",
)  # fmt: skip

GRUB_EFI_TARGETS = {"x64": "x86_64-efi", "aa64": "arm64-efi", "ia32": "i386-efi"}


def grub_efi_config_text(title: str, ukis: Sequence[str], *, bios_kernel: str | None = None,
                         bios_initrd: str | None = None, cmdline: str = "", timeout: int = 0) -> str:
    """grub/grub.cfg for UEFI: one menu entry per UKI (a path on the ESP) that chainloads it. With a BIOS
    kernel too (BiosBootloader=), GRUB for BIOS boots it from the same file."""
    lines = ["serial --unit=0 --speed=115200", "terminal_input console serial", "terminal_output console serial",
             f"set timeout={timeout}", "set default=0"]
    efi = [f"menuentry {_grub_word(title if i == 0 else f'{title} ({Path(u).stem})')} {{\n"
           f"    chainloader {_grub_word(u)}\n}}" for i, u in enumerate(ukis)]
    if bios_kernel is None:
        return "\n".join([*lines, *efi]) + "\n"
    bios = [f"menuentry {_grub_word(title)} {{",
            "    " + " ".join(["linux", _grub_word(bios_kernel), *map(_grub_word, kernel_cmdline_words(cmdline))])]
    if bios_initrd:
        bios.append(f"    initrd {_grub_word(bios_initrd)}")
    bios.append("}")
    return "\n".join([*lines, 'if [ "$grub_platform" = "efi" ]; then', *efi, "else", *bios, "fi"]) + "\n"


def grub_shim_config_text(grub_dir: str = "/grub") -> str:
    """EFI/<distribution>/grub.cfg: what signed GRUB builds read; it loads the real grub.cfg."""
    return (f"search --no-floppy --file --set=root {grub_dir}/grub.cfg\nset prefix=($root){grub_dir}\n"
            f"configfile ($root){grub_dir}/grub.cfg\n")


def make_grub_efi(output: Path, grub_lib: Path, efi_arch: str, grub_dir: str = "/grub") -> Path:
    """GRUB's EFI image (grub-mkimage) that finds the ESP holding `grub_dir`/grub.cfg and reads it."""
    target = GRUB_EFI_TARGETS.get(efi_arch)
    if target is None:
        raise MkosiError(f"GRUB for UEFI on the EFI architecture {efi_arch} is not supported")
    if not (grub_lib / "normal.mod").is_file():
        raise MkosiError(f"GRUB's EFI modules are not in {grub_lib}",
                         hint="add grub-efi-amd64-bin to Packages= (or to the tools tree)")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mkosi-grub-") as tmp:
        early = Path(tmp) / "early.cfg"
        early.write_text(f"search --no-floppy --file --set=root {grub_dir}/grub.cfg\nset prefix=($root){grub_dir}\n")
        run([
            require_tool("grub-mkimage"),
            "--format", target,
            "--directory", os.fspath(grub_lib),
            "--output", os.fspath(output),
            "--config", os.fspath(early),
            "--prefix", grub_dir,
            *GRUB_EFI_MODULES,
        ])  # fmt: skip
    return output


def install_grub_efi(esp: Path, grub_lib: Path, efi_arch: str, distribution_id: str, config_text: str) -> Path:
    """GRUB as the firmware's default EFI/BOOT/BOOT<ARCH>.EFI, its modules and grub.cfg in /grub and the
    shim configuration in EFI/<distribution>/. Returns the EFI image."""
    binary = make_grub_efi(esp / f"EFI/BOOT/BOOT{efi_arch.upper()}.EFI", grub_lib, efi_arch)
    grub_dir = esp / "grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    _copy_grub_modules(grub_dir, grub_lib)
    (grub_dir / "grub.cfg").write_text(config_text)
    shim = esp / "EFI" / distribution_id / "grub.cfg"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(grub_shim_config_text())
    return binary
