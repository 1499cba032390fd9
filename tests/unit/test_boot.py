from __future__ import annotations

import datetime
import os
import shutil
import stat
import struct
import uuid
from pathlib import Path

import pytest

from mkosi.boot.cmdline import kernel_cmdline, kernel_cmdline_words
from mkosi.boot.grub import (
    BIOS_BOOT_PARTITION_TYPE,
    GRUB_I386_PC_DIR,
    find_gpt_partition,
    grub_config_text,
    install_grub_bios,
    write_grub_config,
)
from mkosi.boot.kernel import find_kernel
from mkosi.boot.pe import PE32PLUS_MAGIC, parse_pe, read_pe
from mkosi.boot.signing import generate_secure_boot_keys, sign_efi, verify_efi
from mkosi.boot.systemd_boot import bls_entry_text, install_bls_entry, install_systemd_boot
from mkosi.boot.uki import DEFAULT_UKI_STUB, build_uki, uki_layout
from mkosi.errors import MkosiError
from tests.markers import needs_tools

STUB = DEFAULT_UKI_STUB
needs_stub = needs_tools(files=(STUB,))
needs_objcopy = needs_tools("objcopy")


def fake_pe(sections: list[tuple[str, int, int]], *, section_alignment: int = 0x1000, image_base: int = 0) -> bytes:
    """A minimal PE32+ header with (name, rva, size) sections, enough for parse_pe()."""
    pe_offset = 0x80
    dos = bytearray(pe_offset)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, pe_offset)
    opt_size = 240
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x8664, len(sections), 0, 0, 0, opt_size, 0x206)
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<Q", opt, 24, image_base)
    struct.pack_into("<II", opt, 32, section_alignment, 0x200)
    end = max((rva + size for _, rva, size in sections), default=0x1000)
    struct.pack_into("<II", opt, 56, end, 0x400)
    table = b"".join(
        struct.pack("<8sIIIIIIHHI", name.encode(), size, rva, size, 0x400, 0, 0, 0, 0, 0x40000040)
        for name, rva, size in sections
    )
    return bytes(dos) + coff + bytes(opt) + table


def test_parse_fake_pe() -> None:
    pe = parse_pe(fake_pe([(".text", 0x1000, 0x2345), (".data", 0x4000, 0x10)], image_base=0x140000000))
    assert pe.image_base == 0x140000000
    assert pe.section_alignment == 0x1000
    assert [s.name for s in pe.sections] == [".text", ".data"]
    text = pe.section(".text")
    assert text is not None and text.virtual_address == 0x1000 and text.virtual_end == 0x3345
    assert pe.section(".nope") is None


def test_parse_pe_rejects_garbage() -> None:
    with pytest.raises(MkosiError):
        parse_pe(b"\x7fELF" + bytes(100))
    bad = bytearray(fake_pe([]))
    bad[0x80:0x84] = b"NE\0\0"
    with pytest.raises(MkosiError):
        parse_pe(bytes(bad))


def test_uki_layout_alignment_and_order() -> None:
    pe = parse_pe(fake_pe([(".text", 0x1000, 0x2345), (".sdmagic", 0x3400, 0x34)], section_alignment=0x200))
    layout = uki_layout(pe, [(".osrel", 10), (".cmdline", 0x1001), (".initrd", 5000), (".linux", 99)])
    assert [n for n, _ in layout] == [".osrel", ".cmdline", ".initrd", ".linux"]
    rvas = [rva for _, rva in layout]
    assert rvas == [0x4000, 0x5000, 0x7000, 0x9000]
    for rva in rvas:
        assert rva % 0x200 == 0 and rva % 4096 == 0
    with pytest.raises(MkosiError):
        uki_layout(pe, [(".initrd", 0)])


def test_uki_layout_large_section_alignment() -> None:
    pe = parse_pe(fake_pe([(".text", 0x10000, 0x100)], section_alignment=0x10000))
    layout = uki_layout(pe, [(".osrel", 1), (".linux", 1)])
    assert [rva for _, rva in layout] == [0x20000, 0x30000]


@needs_stub
def test_parse_real_stub() -> None:
    pe = read_pe(STUB)
    assert pe.magic == PE32PLUS_MAGIC
    names = {s.name for s in pe.sections}
    assert ".text" in names and ".sdmagic" in names
    assert ".linux" not in names


@needs_stub
@needs_objcopy
def test_build_uki(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + os.urandom(70000))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(os.urandom(12345))
    osrel = tmp_path / "os-release"
    osrel.write_text("ID=test\n")
    out = tmp_path / "uki.efi"
    build_uki(STUB, kernel, initrd, "root=/dev/vda2 quiet\n", osrel, out, uname="6.1.0-test")

    stub = read_pe(STUB)
    pe = read_pe(out)
    names = [s.name for s in pe.sections]
    assert names[: len(stub.sections)] == [s.name for s in stub.sections]
    assert names[len(stub.sections) :] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]

    alignment = max(stub.section_alignment, 4096)
    previous_end = max(s.virtual_end for s in stub.sections)
    data = out.read_bytes()
    expected = {
        ".osrel": osrel.read_bytes(),
        ".cmdline": b"root=/dev/vda2 quiet",
        ".uname": b"6.1.0-test",
        ".initrd": initrd.read_bytes(),
        ".linux": kernel.read_bytes(),
    }
    for s in pe.sections[len(stub.sections) :]:
        assert s.virtual_address % alignment == 0
        assert s.virtual_address % stub.section_alignment == 0
        assert s.virtual_address >= previous_end, f"{s.name} overlaps the previous section"
        previous_end = s.virtual_end
        assert s.virtual_size == len(expected[s.name])
        assert data[s.raw_offset : s.raw_offset + s.virtual_size] == expected[s.name]
    assert pe.size_of_image >= previous_end
    assert not (tmp_path / ".uki.efi.tmp").exists()


@needs_stub
def test_build_uki_rejects_non_pe_kernel(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\x7fELF" + bytes(100))
    osrel = tmp_path / "os-release"
    osrel.write_text("ID=test\n")
    with pytest.raises(MkosiError, match="EFI"):
        build_uki(STUB, kernel, None, "", osrel, tmp_path / "uki.efi")


def test_build_uki_missing_stub(tmp_path: Path) -> None:
    with pytest.raises(MkosiError) as e:
        build_uki(tmp_path / "nope.stub", tmp_path / "k", None, "", tmp_path / "o", tmp_path / "u")
    assert e.value.hint and "systemd-boot-efi" in e.value.hint


def test_bls_entry_text() -> None:
    text = bls_entry_text(
        "Debian GNU/Linux 12", "/abc/6.1.0/linux", ["/abc/6.1.0/initrd"], "root=UUID=1234  rw\n quiet",
        version="6.1.0", machine_id="abc",
    )  # fmt: skip
    assert text == (
        "title Debian GNU/Linux 12\n"
        "version 6.1.0\n"
        "machine-id abc\n"
        "linux /abc/6.1.0/linux\n"
        "initrd /abc/6.1.0/initrd\n"
        "options root=UUID=1234 rw quiet\n"
    )
    assert "options" not in bls_entry_text("T", "/l", [], "")


def test_install_bls_entry(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"initrd")
    esp = tmp_path / "esp"
    entry = install_bls_entry(esp, "debian-6.1", "Debian", kernel, initrd, "console=ttyS0")
    assert entry == esp / "loader/entries/debian-6.1.conf"
    assert (esp / "debian-6.1/linux").read_bytes() == b"kernel"
    assert (esp / "debian-6.1/initrd").read_bytes() == b"initrd"
    text = entry.read_text()
    assert "linux /debian-6.1/linux\n" in text
    assert "initrd /debian-6.1/initrd\n" in text
    assert "options console=ttyS0\n" in text
    no_initrd = install_bls_entry(esp, "other", "Other", kernel, None, "")
    assert "initrd" not in no_initrd.read_text()
    with pytest.raises(MkosiError):
        install_bls_entry(esp, "../evil", "x", kernel, None, "")


def test_install_systemd_boot(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "systemd-bootx64.efi").write_bytes(b"MZ sd-boot")
    esp = tmp_path / "esp"
    install_systemd_boot(esp, source_dir=src, timeout=3, default="debian-*")
    assert (esp / "EFI/systemd/systemd-bootx64.efi").read_bytes() == b"MZ sd-boot"
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ sd-boot"
    conf = (esp / "loader/loader.conf").read_text().splitlines()
    assert "timeout 3" in conf and "default debian-*" in conf
    install_systemd_boot(tmp_path / "esp2", source_dir=src)
    assert "timeout 0" in (tmp_path / "esp2/loader/loader.conf").read_text().splitlines()
    with pytest.raises(MkosiError) as e:
        install_systemd_boot(esp, "aa64", source_dir=src)
    assert e.value.hint and "systemd-boot-efi" in e.value.hint


def test_kernel_cmdline_words() -> None:
    assert kernel_cmdline_words('a  b="c d" "e f"  g=') == ["a", "b=c d", "e f", "g="]
    assert kernel_cmdline_words("") == []


def test_grub_config_text() -> None:
    text = grub_config_text(
        title="Debian's image", kernel="/boot/vmlinuz", initrd="/boot/initrd.img",
        cmdline='root=LABEL=root console=ttyS0 x="a b" $y', timeout=0,
    )  # fmt: skip
    assert "menuentry 'Debian'\\''s image' {" in text
    assert "    linux /boot/vmlinuz root=LABEL=root console=ttyS0 'x=a b' '$y'\n" in text
    assert "    initrd /boot/initrd.img\n" in text
    assert "set timeout=0" in text
    assert "serial --unit=0" in text
    assert "serial" not in grub_config_text(title="t", kernel="/k", initrd=None, cmdline="", serial=False)


def test_write_grub_config_copies_modules(tmp_path: Path) -> None:
    lib = tmp_path / "i386-pc"
    lib.mkdir()
    (lib / "linux.mod").write_bytes(b"m")
    (lib / "command.lst").write_text("x")
    (lib / "boot.img").write_bytes(b"b")
    cfg = write_grub_config(
        tmp_path / "tree/boot/grub", title="t", kernel="/k", initrd=None, cmdline="", grub_lib=lib
    )
    assert cfg == tmp_path / "tree/boot/grub/grub.cfg"
    assert sorted(p.name for p in (tmp_path / "tree/boot/grub/i386-pc").iterdir()) == ["command.lst", "linux.mod"]


def write_gpt(path: Path, partitions: list[tuple[uuid.UUID, int, int]]) -> None:
    """A tiny hand-made GPT (no CRCs; find_gpt_partition does not check them)."""
    with path.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
        f.seek(512)
        header = bytearray(92)
        header[:8] = b"EFI PART"
        struct.pack_into("<QII", header, 72, 2, 128, 128)
        f.write(header)
        f.seek(1024)
        for type_uuid, first, last in partitions:
            entry = bytearray(128)
            entry[:16] = type_uuid.bytes_le
            entry[16:32] = uuid.uuid4().bytes_le
            struct.pack_into("<QQ", entry, 32, first, last)
            f.write(entry)


def test_find_gpt_partition(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    esp = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    write_gpt(image, [(esp, 2048, 4095), (BIOS_BOOT_PARTITION_TYPE, 4096, 6143)])
    assert find_gpt_partition(image, BIOS_BOOT_PARTITION_TYPE) == (4096 * 512, 2048 * 512)
    assert find_gpt_partition(image, esp) == (2048 * 512, 2048 * 512)
    with pytest.raises(MkosiError):
        find_gpt_partition(image, uuid.uuid4())
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(4096))
    with pytest.raises(MkosiError, match="GPT"):
        find_gpt_partition(blank, esp)


@needs_tools("grub-mkimage", files=(GRUB_I386_PC_DIR / "boot.img",))
def test_install_grub_bios_patches_image(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    write_gpt(image, [(BIOS_BOOT_PARTITION_TYPE, 2048, 4095)])
    with image.open("r+b") as f:  # a protective MBR partition entry that must survive
        f.seek(446)
        f.write(bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]))
    before = image.read_bytes()[440:510]
    install_grub_bios(image)
    data = image.read_bytes()
    assert data[440:510] == before
    assert data[510:512] == b"\x55\xaa"
    bootimg = (GRUB_I386_PC_DIR / "boot.img").read_bytes()
    assert struct.unpack_from("<Q", data, 0x5C)[0] == 2048
    assert data[0x66:0x68] == b"\x90\x90"
    assert data[:0x5C] == bootimg[:0x5C]
    core = data[2048 * 512 : 2048 * 512 + 512]
    start, length, segment = struct.unpack_from("<QHH", core, 500)
    assert start == 2049 and length > 0 and segment == 0x820
    assert data[2049 * 512 : 2049 * 512 + length * 512].strip(b"\0")

    small = tmp_path / "small.raw"
    write_gpt(small, [(BIOS_BOOT_PARTITION_TYPE, 2048, 2050)])
    with pytest.raises(MkosiError, match="does not fit"):
        install_grub_bios(small)


def test_find_kernel(tmp_path: Path) -> None:
    with pytest.raises(MkosiError):
        find_kernel(tmp_path)
    (tmp_path / "boot").mkdir()
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-23-amd64"):
        (tmp_path / f"boot/vmlinuz-{v}").write_bytes(b"k")
    (tmp_path / "boot/vmlinuz-7.0-broken").mkdir()
    path, version = find_kernel(tmp_path)
    assert version == "6.1.0-10-amd64"
    assert path == tmp_path / "boot/vmlinuz-6.1.0-10-amd64"

    other = tmp_path / "fedora"
    (other / "usr/lib/modules/6.5.6-300.fc39.x86_64").mkdir(parents=True)
    (other / "usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz").write_bytes(b"k")
    (other / "usr/lib/modules/6.5.12-300.fc39.x86_64").mkdir(parents=True)  # modules only
    assert find_kernel(other) == (
        other / "usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz",
        "6.5.6-300.fc39.x86_64",
    )


def test_kernel_cmdline() -> None:
    assert kernel_cmdline(["quiet"]) == "quiet rw"
    assert kernel_cmdline(["quiet"], "PARTUUID=abc") == "root=PARTUUID=abc quiet rw"
    assert kernel_cmdline(["root=/dev/sda1", "ro"], "PARTUUID=abc") == "root=/dev/sda1 ro"
    assert kernel_cmdline(["a b", "a"], read_only=True, serial_console=True) == "a b ro console=ttyS0,115200"
    assert kernel_cmdline(["console=tty0"], "root=LABEL=r", serial_console=True) == "root=LABEL=r console=tty0 rw"


def test_generate_secure_boot_keys(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key_path, cert_path = tmp_path / "keys/mkosi.key", tmp_path / "keys/mkosi.crt"
    generate_secure_boot_keys("mkosi of test", 365, key_path, cert_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["mkosi of test"]
    assert cert.issuer == cert.subject
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert validity == datetime.timedelta(days=365)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]

    # Overwriting an existing, more permissive file still leaves it private.
    key_path.chmod(0o644)
    generate_secure_boot_keys("again", 1, key_path, cert_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    with pytest.raises(MkosiError):
        generate_secure_boot_keys("x", 0, key_path, cert_path)


@needs_stub
@needs_tools("sbsign")
def test_sign_and_verify(tmp_path: Path) -> None:
    key, cert = tmp_path / "db.key", tmp_path / "db.crt"
    generate_secure_boot_keys("signer", 10, key, cert)
    binary = tmp_path / "stub.efi"
    shutil.copyfile(STUB, binary)
    assert not verify_efi(binary, cert)
    sign_efi(binary, key, cert)
    assert verify_efi(binary, cert)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bios_boot_partition_type_is_the_spec_value() -> None:
    # "Hah!IdontNeedEFI": the GUID GRUB and the partitioning tools use for BIOS boot partitions.
    assert str(BIOS_BOOT_PARTITION_TYPE) == "21686148-6449-6e6f-744e-656564454649"
