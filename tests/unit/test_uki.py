"""Unified kernel images, addons and their profiles, assembled by mkosi's own PE writer: the section
layout (checked by parsing the result and by objdump), profiles, addons, the file name patterns and
what Bootloader= puts on the ESP."""

from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mkosi.boot.esp import EspOptions, install_uefi, populate_esp
from mkosi.boot.initrd import modules_initrd
from mkosi.boot.kernel import BootFiles, boot_files
from mkosi.boot.pe import DATA_SECTION_FLAGS, append_sections, header_room, read_pe, stub_version
from mkosi.boot.signing import generate_secure_boot_keys, sign_efi, verify_efi
from mkosi.boot.uki import (
    UkiProfile,
    build_addon,
    build_uki,
    concat_initrds,
    expand_uki_format,
    installed_uki_name,
)
from mkosi.config.enums import Bootloader, BootProtocol, ShimBootloader, UnifiedKernelImages
from mkosi.config.ukiprofile import load_uki_profiles, parse_uki_profile, profile_files
from mkosi.errors import ConfigError, MkosiError
from tests.markers import needs_tools
from tests.unit.conftest import write

needs_objdump = needs_tools("objdump")
needs_sbsign = needs_tools("sbsign", "sbverify")


def fake_stub(path: Path, version: str = "257.9", *, kind: str = "stub", room: int = 16) -> Path:
    """A small but complete PE32+ image (.text and .sdmagic with data) like systemd's stubs, with header
    room for `room` more sections."""
    pe_offset = 0x80
    opt_size = 240
    nsections = 2
    headers = pe_offset + 24 + opt_size + 40 * (nsections + room)
    size_of_headers = (headers + 0x1FF) // 0x200 * 0x200
    text = b"\xc3" * 0x300
    magic = f"#### LoaderInfo: systemd-{kind} {version} ####\0".encode()
    text_off = size_of_headers
    magic_off = text_off + 0x400
    dos = bytearray(pe_offset)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, pe_offset)
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x8664, nsections, 0, 0, 0, opt_size, 0x206)
    opt = bytearray(opt_size)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<I", opt, 16, 0x1000)               # AddressOfEntryPoint
    struct.pack_into("<Q", opt, 24, 0x140000000)          # ImageBase
    struct.pack_into("<II", opt, 32, 0x1000, 0x200)       # SectionAlignment, FileAlignment
    struct.pack_into("<II", opt, 56, 0x3000, size_of_headers)  # SizeOfImage, SizeOfHeaders
    struct.pack_into("<H", opt, 68, 10)                   # Subsystem: EFI application
    struct.pack_into("<I", opt, 108, 16)                  # NumberOfRvaAndSizes
    table = struct.pack("<8sIIIIIIHHI", b".text", len(text), 0x1000, 0x400, text_off, 0, 0, 0, 0, 0x60000020)
    table += struct.pack("<8sIIIIIIHHI", b".sdmagic", len(magic), 0x2000, 0x200, magic_off, 0, 0, 0, 0,
                         DATA_SECTION_FLAGS)
    head = bytes(dos) + coff + bytes(opt) + table
    data = head + bytes(text_off - len(head)) + text + bytes(0x100) + magic + bytes(0x200 - len(magic))
    path.write_bytes(data)
    return path


def section_data(path: Path, index: int) -> bytes:
    pe = read_pe(path)
    s = pe.sections[index]
    with path.open("rb") as f:
        f.seek(s.raw_offset)
        return f.read(s.virtual_size)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + b"k" * 5000)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"i" * 10000)
    osrel = tmp_path / "os-release"
    osrel.write_text("ID=debian\nVERSION_ID=12\n")
    return {"stub": fake_stub(tmp_path / "linuxx64.efi.stub"), "kernel": kernel, "initrd": initrd, "osrel": osrel}


def test_uki_sections_in_order_with_their_contents(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = build_uki(inputs["stub"], inputs["kernel"], inputs["initrd"], "rw quiet\n", inputs["osrel"],
                    tmp_path / "uki.efi", uname="6.1.0-test")
    pe = read_pe(out)
    names = [s.name for s in pe.sections]
    assert names == [".text", ".sdmagic", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    assert section_data(out, 2) == inputs["osrel"].read_bytes()
    assert section_data(out, 3) == b"rw quiet"
    assert section_data(out, 4) == b"6.1.0-test"
    assert section_data(out, 5) == inputs["initrd"].read_bytes()
    assert section_data(out, 6) == inputs["kernel"].read_bytes()
    # The stub itself is unchanged, the new sections follow it without overlapping, page aligned.
    assert out.read_bytes()[0x400:0x700] == inputs["stub"].read_bytes()[0x400:0x700]
    previous_end = 0x3000
    for s in pe.sections[2:]:
        assert s.virtual_address % 0x1000 == 0 and s.virtual_address >= previous_end
        assert s.raw_offset % 0x200 == 0 and s.characteristics == DATA_SECTION_FLAGS
        previous_end = s.virtual_address + s.virtual_size
    assert pe.size_of_image >= previous_end and pe.size_of_image % 0x1000 == 0


def test_uki_profiles_follow_the_base_sections(tmp_path: Path, inputs: dict[str, Path]) -> None:
    profiles = [UkiProfile("ID=debug\nTITLE=Debug\n", "rw quiet systemd.log_level=debug"), UkiProfile("ID=plain")]
    out = build_uki(inputs["stub"], inputs["kernel"], inputs["initrd"], "rw quiet", inputs["osrel"],
                    tmp_path / "uki.efi", profiles=profiles)
    names = [s.name for s in read_pe(out).sections]
    assert names[2:] == [".osrel", ".cmdline", ".initrd", ".linux", ".profile", ".cmdline", ".profile"]
    assert section_data(out, 6) == b"ID=debug\nTITLE=Debug\n"
    assert section_data(out, 7) == b"rw quiet systemd.log_level=debug"
    assert section_data(out, 8) == b"ID=plain\n"


def test_profiles_need_a_stub_of_systemd_257(tmp_path: Path, inputs: dict[str, Path]) -> None:
    old = fake_stub(tmp_path / "old.stub", "252.39-1~deb12u2")
    assert stub_version(old) == (252, 39)
    with pytest.raises(MkosiError, match="does not support UKI profiles"):
        build_uki(old, inputs["kernel"], inputs["initrd"], "rw", inputs["osrel"], tmp_path / "uki.efi",
                  profiles=[UkiProfile("ID=x")])
    # Without profiles the old stub is fine.
    build_uki(old, inputs["kernel"], inputs["initrd"], "rw", inputs["osrel"], tmp_path / "uki.efi")


def test_a_stub_without_header_room_is_refused(tmp_path: Path, inputs: dict[str, Path]) -> None:
    tight = fake_stub(tmp_path / "tight.stub", room=3)
    # The headers end at 0x80 + 24 + 240 + 2 * 40 bytes; SizeOfHeaders is rounded up to 0x400.
    assert header_room(read_pe(tight), tight.read_bytes()) == (0x400 - (0x80 + 24 + 240 + 2 * 40)) // 40 == 13
    with pytest.raises(MkosiError, match="room for 13 more PE sections, 14 are needed"):
        build_uki(tight, inputs["kernel"], inputs["initrd"], "x", inputs["osrel"], tmp_path / "uki.efi",
                  profiles=[UkiProfile(f"ID={n}", n) for n in "abcde"])
    assert not (tmp_path / "uki.efi").exists()


def test_append_sections_keeps_repeated_names(tmp_path: Path) -> None:
    stub = fake_stub(tmp_path / "s")
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A" * 10)
    b.write_bytes(b"B" * 700)
    append_sections(stub, [(".cmdline", 0x3000, a), (".cmdline", 0x4000, b)], tmp_path / "out")
    pe = read_pe(tmp_path / "out")
    assert [(s.name, s.virtual_address, s.virtual_size, s.raw_size) for s in pe.sections[2:]] == [
        (".cmdline", 0x3000, 10, 0x200), (".cmdline", 0x4000, 700, 0x400)]
    assert section_data(tmp_path / "out", 3) == b"B" * 700


@needs_objdump
def test_objdump_reads_the_uki(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = build_uki(inputs["stub"], inputs["kernel"], inputs["initrd"], "rw", inputs["osrel"], tmp_path / "uki.efi",
                    profiles=[UkiProfile("ID=debug", "rw debug")])
    text = subprocess.run(["objdump", "-h", str(out)], capture_output=True, text=True, check=True).stdout
    found = [line.split()[1] for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert found == [".text", ".sdmagic", ".osrel", ".cmdline", ".initrd", ".linux", ".profile", ".cmdline"]


def test_addon_carries_the_command_line(tmp_path: Path) -> None:
    stub = fake_stub(tmp_path / "addonx64.efi.stub", kind="addon")
    out = build_addon(stub, tmp_path / "a.addon.efi", cmdline="  console=ttyS0   quiet ")
    names = [s.name for s in read_pe(out).sections]
    assert names == [".text", ".sdmagic", ".cmdline"]
    assert section_data(out, 2) == b"console=ttyS0   quiet"
    with pytest.raises(MkosiError, match="needs a kernel command line"):
        build_addon(stub, tmp_path / "b.efi", cmdline=" ")
    with pytest.raises(MkosiError, match="addon stub"):
        build_addon(tmp_path / "missing", tmp_path / "c.efi", cmdline="x")


@needs_sbsign
def test_signed_uki_verifies(tmp_path: Path, inputs: dict[str, Path]) -> None:
    key, cert = tmp_path / "k.key", tmp_path / "k.crt"
    generate_secure_boot_keys("test", 30, key, cert)
    real_stub = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    stub = real_stub if real_stub.is_file() else inputs["stub"]
    out = build_uki(stub, inputs["kernel"], inputs["initrd"], "rw", inputs["osrel"], tmp_path / "uki.efi")
    sign_efi(out, key, cert)
    assert verify_efi(out, cert)


def test_concat_initrds_pads_each_to_four_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"12345")
    b.write_bytes(b"678")
    out = concat_initrds([a, b], tmp_path / "out")
    assert out.read_bytes() == b"12345" + bytes(3) + b"678" + bytes(1)


# ---- UnifiedKernelImageFormat= ----

def test_uki_format_specifiers() -> None:
    assert expand_uki_format("&e-&k", "img", "6.1.0") == "img-6.1.0.efi"
    assert expand_uki_format("&e-&k-&h", "img", "6.1", "abcd") == "img-6.1-abcd.efi"
    assert expand_uki_format("a&&b.efi", "img", "6.1") == "a&b.efi"
    with pytest.raises(MkosiError, match="&h needs roothash"):
        expand_uki_format("&e-&h", "img", "6.1")
    with pytest.raises(MkosiError, match="unknown specifier &x"):
        expand_uki_format("&x", "img", "6.1")


def test_installed_uki_name_default_and_pattern() -> None:
    assert installed_uki_name(None, "img", "7.1", "6.1.0", "rw") == "img_7.1.efi"
    assert installed_uki_name(None, "img", None, "6.1.0", "rw") == "img-6.1.0.efi"
    assert installed_uki_name("&e-&k-&h", "img", "7.1", "6.1.0", "roothash=ff00 rw") == "img-6.1.0-ff00.efi"


# ---- [UKIProfile] files ----

def test_profile_file(tmp_path: Path) -> None:
    p = write(tmp_path / "debug.conf", """
        # a comment
        [UKIProfile]
        Profile=ID=debug
                TITLE="Debug shell"
        Cmdline=systemd.log_level=debug
                rd.debug
        SignExpectedPcr=no
        """)
    profile = parse_uki_profile(p)
    assert profile.id == "debug"
    assert profile.profile_text() == 'ID=debug\nTITLE="Debug shell"\n'
    assert profile.cmdline == ("systemd.log_level=debug", "rd.debug")
    assert profile.sign_expected_pcr is False


@pytest.mark.parametrize("text, message, line", [
    ("[UKIProfile]\nProfile=TITLE=x\n", "has no ID=", None),
    ("[UKIProfile]\nProfile=ID=x\nFoo=1\n", "unknown setting Foo=", 3),
    ("[Output]\nProfile=ID=x\n", r"unknown section \[Output\]", 1),
    ("Profile=ID=x\n", "outside of a", 1),
    ("[UKIProfile]\nProfile=ID=x lower=1\n", "upper-case KEY", 2),
    ("[UKIProfile]\nProfile=ID=x\nSignExpectedPcr=maybe\n", "invalid boolean", 3),
])
def test_bad_profile_files_name_file_and_line(tmp_path: Path, text: str, message: str, line: int | None) -> None:
    p = tmp_path / "p.conf"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        parse_uki_profile(p)
    assert str(p) in str(e.value)
    if line is not None:
        assert f"{p}:{line}:" in str(e.value)


def test_profile_directory_and_duplicate_ids(tmp_path: Path) -> None:
    d = tmp_path / "mkosi.uki-profiles"
    write(d / "b.conf", "[UKIProfile]\nProfile=ID=b\n")
    write(d / "a.conf", "[UKIProfile]\nProfile=ID=a\n")
    write(d / "ignored.txt", "junk")
    assert [p.name for p in profile_files([d])] == ["a.conf", "b.conf"]
    assert [p.id for p in load_uki_profiles([d])] == ["a", "b"]
    write(tmp_path / "again.conf", "[UKIProfile]\nProfile=ID=a\n")
    with pytest.raises(ConfigError, match="profile ID 'a' is also"):
        load_uki_profiles([d, tmp_path / "again.conf"])


# ---- Bootloader=: what each puts on the ESP ----

def esp_root(tmp_path: Path, stub: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-10-amd64").write_bytes(b"MZ" + bytes(4094))
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=test\n")
    efi = root / "usr/lib/systemd/boot/efi"
    efi.mkdir(parents=True)
    (efi / "systemd-bootx64.efi").write_bytes(b"MZ systemd-boot")
    (efi / "systemd-bootx64.efi.signed").write_bytes(b"MZ signed systemd-boot")
    if stub:
        fake_stub(efi / "linuxx64.efi.stub")
    return root


def esp_and_files(tmp_path: Path, root: Path) -> tuple[Path, BootFiles]:
    """An empty ESP directory and the boot files of `root` with a stand-in initrd."""
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    esp = tmp_path / "esp"
    esp.mkdir()
    return esp, boot_files(root, initrd, "rw", "x86_64")


def esp_files(tmp_path: Path, bootloader: Bootloader, **extra: object) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    root = esp_root(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", bootloader=bootloader,
                         **extra)  # type: ignore[arg-type]
    populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    return sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file())


def test_bootloader_systemd_boot(tmp_path: Path) -> None:
    assert esp_files(tmp_path, Bootloader.systemd_boot) == [
        "EFI/BOOT/BOOTX64.EFI", "EFI/Linux/img-6.1.0-10-amd64.efi", "EFI/systemd/systemd-bootx64.efi",
        "loader/loader.conf"]
    assert (tmp_path / "esp/EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ systemd-boot"


def test_bootloader_systemd_boot_with_a_name_pattern(tmp_path: Path) -> None:
    files = esp_files(tmp_path, Bootloader.systemd_boot, uki_format="&e+&k")
    assert "EFI/Linux/img+6.1.0-10-amd64.efi" in files


def test_bootloader_systemd_boot_without_ukis_writes_a_type1_entry(tmp_path: Path) -> None:
    files = esp_files(tmp_path, Bootloader.systemd_boot, unified_kernel_image=UnifiedKernelImages.none)
    assert "loader/entries/img-6.1.0-10-amd64.conf" in files
    assert not any(f.startswith("EFI/Linux/") for f in files)


def test_ukis_auto_without_the_stub_boots_a_type1_entry(tmp_path: Path) -> None:
    root = esp_root(tmp_path, stub=False)
    esp, files = esp_and_files(tmp_path, root)
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image")
    assert options.unified_kernel_image == UnifiedKernelImages.auto
    assert populate_esp(esp, files, options) is None
    assert (esp / "loader/entries/img-6.1.0-10-amd64.conf").is_file()
    assert list(esp.glob("EFI/Linux/*")) == []
    assert (esp / "EFI/systemd/systemd-bootx64.efi").is_file()
    # unsigned (and the classic yes) insist on a UKI: the missing stub is an error.
    with pytest.raises(MkosiError, match="stub"):
        populate_esp(tmp_path / "esp2", files,
                     dataclasses.replace(options, unified_kernel_image=UnifiedKernelImages.unsigned))


def prebuilt_uki(root: Path) -> bytes:
    """Fedora's kernel-uki-virt: the distribution's signed UKI next to the kernel's modules."""
    uki = root / "usr/lib/modules/6.1.0-10-amd64/vmlinuz-virt.efi"
    uki.parent.mkdir(parents=True)
    uki.write_bytes(b"MZ the distribution's signed UKI")
    return uki.read_bytes()


@pytest.mark.parametrize("mode", [UnifiedKernelImages.auto, UnifiedKernelImages.signed])
def test_signed_loaders_take_the_prebuilt_uki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              mode: UnifiedKernelImages) -> None:
    signed: list[Path] = []
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: signed.append(binary))
    root = esp_root(tmp_path)
    content = prebuilt_uki(root)
    esp, files = esp_and_files(tmp_path, root)
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", image_root=root,
                         bootloader=Bootloader.systemd_boot_signed, unified_kernel_image=mode,
                         secure_boot_key=tmp_path / "k", secure_boot_certificate=tmp_path / "c")
    uki = populate_esp(esp, files, options)
    assert uki == esp / "EFI/Linux/img-6.1.0-10-amd64.efi"
    assert uki.read_bytes() == content          # copied as it is: not built here
    assert signed == []                          # and not signed again (systemd-boot is pre-signed too)


def test_signed_loaders_without_a_prebuilt_uki(tmp_path: Path) -> None:
    root = esp_root(tmp_path)
    signed_files(root, shim=False)
    esp, files = esp_and_files(tmp_path, root)
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", image_root=root,
                         bootloader=Bootloader.grub_signed)
    with pytest.raises(MkosiError, match="Bootloader=grub-signed: the image has no pre-built signed") as e:
        populate_esp(esp, files, options)
    assert "UnifiedKernelImages=unsigned" in (e.value.hint or "")


def test_bootloader_uki_is_the_firmware_default(tmp_path: Path) -> None:
    assert esp_files(tmp_path, Bootloader.uki) == ["EFI/BOOT/BOOTX64.EFI"]
    assert [s.name for s in read_pe(tmp_path / "esp/EFI/BOOT/BOOTX64.EFI").sections][-1] == ".linux"


def test_bootloader_none_installs_nothing(tmp_path: Path) -> None:
    assert esp_files(tmp_path, Bootloader.none) == []


def test_bootloader_systemd_boot_signed_is_not_signed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[Path] = []
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: signed.append(binary))
    files = esp_files(tmp_path, Bootloader.systemd_boot_signed, secure_boot_key=tmp_path / "k",
                      secure_boot_certificate=tmp_path / "c", unified_kernel_image=UnifiedKernelImages.unsigned)
    assert (tmp_path / "esp/EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ signed systemd-boot"
    assert "EFI/Linux/img-6.1.0-10-amd64.efi" in files
    assert [p.name for p in signed] == ["img-6.1.0-10-amd64.efi"]   # only the UKI mkosi built


def test_bootloader_systemd_boot_signs_loader_and_uki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[Path] = []
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: signed.append(binary))
    esp_files(tmp_path, Bootloader.systemd_boot, secure_boot_key=tmp_path / "k", secure_boot_certificate=tmp_path / "c")
    assert sorted(p.name for p in signed) == ["BOOTX64.EFI", "img-6.1.0-10-amd64.efi", "systemd-bootx64.efi"]


def signed_files(root: Path, *, shim: bool = True) -> None:
    """What Debian's grub-efi-amd64-signed and shim-signed install (contents are stand-ins)."""
    grub = root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
    grub.parent.mkdir(parents=True)
    grub.write_bytes(b"MZ signed grub")
    if shim:
        (root / "usr/lib/shim").mkdir(parents=True)
        (root / "usr/lib/shim/shimx64.efi.signed").write_bytes(b"MZ signed shim")
        (root / "usr/lib/shim/mmx64.efi.signed").write_bytes(b"MZ signed mok manager")


def signed_esp_files(tmp_path: Path, bootloader: Bootloader, **extra: object) -> list[str]:
    root = esp_root(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", bootloader=bootloader,
                         image_root=root, **extra)  # type: ignore[arg-type]
    populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    return sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file())


def test_bootloader_grub_signed_behind_the_signed_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[Path] = []
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: signed.append(binary))
    root = esp_root(tmp_path)
    signed_files(root)
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image",
                         bootloader=Bootloader.grub_signed, image_root=root, shim=ShimBootloader.signed,
                         secure_boot_key=tmp_path / "k", secure_boot_certificate=tmp_path / "c",
                         unified_kernel_image=UnifiedKernelImages.unsigned)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    uki = populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    listing = sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file())
    assert listing == ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grub.cfg", "EFI/BOOT/grubx64.efi", "EFI/BOOT/mmx64.efi",
                       "EFI/Linux/img-6.1.0-10-amd64.efi", "EFI/test/grub.cfg", "grub/grub.cfg"]
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ signed shim"
    assert (esp / "EFI/BOOT/grubx64.efi").read_bytes() == b"MZ signed grub"
    # Both places a signed GRUB reads its configuration from lead to grub/grub.cfg, which chainloads the UKI.
    for cfg in ("EFI/test/grub.cfg", "EFI/BOOT/grub.cfg"):
        assert "configfile ($root)/grub/grub.cfg" in (esp / cfg).read_text()
    assert "chainloader /EFI/Linux/img-6.1.0-10-amd64.efi" in (esp / "grub/grub.cfg").read_text()
    # The pre-signed binaries are copied as they are; only the UKI mkosi built is signed.
    assert uki is not None and signed == [uki]


def test_bootloader_grub_signed_alone_and_without_grub(tmp_path: Path) -> None:
    root = esp_root(tmp_path)
    signed_files(root, shim=False)
    esp = tmp_path / "esp"
    esp.mkdir()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image",
                         bootloader=Bootloader.grub_signed, image_root=root,
                         unified_kernel_image=UnifiedKernelImages.unsigned)
    populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ signed grub"
    assert not (esp / "EFI/BOOT/grubx64.efi").exists()
    with pytest.raises(MkosiError, match="no signed GRUB") as e:
        signed_esp_files(tmp_path / "none", Bootloader.grub_signed, unified_kernel_image=UnifiedKernelImages.unsigned)
    assert "grub-efi-amd64-signed" in (e.value.hint or "")


def test_unsigned_shim_in_front_of_systemd_boot_is_signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[Path] = []
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: signed.append(binary))
    root = esp_root(tmp_path)
    (root / "usr/lib/shim").mkdir(parents=True)
    (root / "usr/lib/shim/shimx64.efi").write_bytes(b"MZ shim")
    esp = tmp_path / "esp"
    esp.mkdir()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", image_root=root,
                         shim=ShimBootloader.unsigned, secure_boot_key=tmp_path / "k",
                         secure_boot_certificate=tmp_path / "c")
    populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    boot = esp / "EFI/BOOT"
    assert (boot / "BOOTX64.EFI").read_bytes() == b"MZ shim"
    assert (boot / "grubx64.efi").read_bytes() == b"MZ systemd-boot"   # shim's second stage
    assert not (boot / "mmx64.efi").exists()                           # the image has no MokManager
    # systemd-boot and the UKI were signed where they were written, then the unsigned shim.
    names = [str(p.relative_to(esp)) for p in signed]
    assert names[-1] == "EFI/BOOT/BOOTX64.EFI" and names.count("EFI/BOOT/BOOTX64.EFI") == 2
    assert "EFI/Linux/img-6.1.0-10-amd64.efi" in names
    with pytest.raises(MkosiError, match=r"no signed shimx64\.efi") as e:
        populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"),
                     dataclasses.replace(options, shim=ShimBootloader.signed))
    assert "shim-signed" in (e.value.hint or "")


def test_shim_in_front_of_the_uki_alone(tmp_path: Path) -> None:
    root = esp_root(tmp_path)
    signed_files(root)
    esp = tmp_path / "esp"
    esp.mkdir()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", image_root=root,
                         bootloader=Bootloader.uki, shim=ShimBootloader.signed)
    uki = populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    assert uki == esp / "EFI/BOOT/grubx64.efi" and uki.read_bytes().startswith(b"MZ")
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ signed shim"
    assert (esp / "EFI/BOOT/mmx64.efi").read_bytes() == b"MZ signed mok manager"


def test_bootloader_uki_signed_takes_the_newest_prebuilt_uki(tmp_path: Path) -> None:
    root = esp_root(tmp_path)
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (root / f"usr/lib/modules/{version}").mkdir(parents=True)
        (root / f"usr/lib/modules/{version}/vmlinuz-virt.efi").write_bytes(f"MZ uki {version}".encode())
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image",
                         bootloader=Bootloader.uki_signed, image_root=root)
    uki = populate_esp(esp, boot_files(root, tmp_path / "unused-initrd", "rw", "x86_64"), options)
    assert uki == esp / "EFI/BOOT/BOOTX64.EFI"
    assert uki.read_bytes() == b"MZ uki 6.1.0-10-amd64"   # 10 sorts after 9 as a version
    assert sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file()) == ["EFI/BOOT/BOOTX64.EFI"]
    with pytest.raises(MkosiError, match="no pre-built signed unified kernel image"):
        signed_esp_files(tmp_path / "none", Bootloader.uki_signed)


def test_install_uefi_with_a_uki_of_its_own_and_without(tmp_path: Path) -> None:
    root = esp_root(tmp_path)
    files = boot_files(root, tmp_path / "nonexistent", "rw", "x86_64")
    esp = tmp_path / "esp"
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image")
    uki = install_uefi(esp, files, options, make=lambda p: (p.write_bytes(b"MZ mine"), p)[1])
    assert uki is not None and uki.read_bytes() == b"MZ mine"
    shutil.rmtree(esp)
    assert install_uefi(esp, files, options, with_uki=False) is None
    assert not any((esp / "EFI/Linux").iterdir())


@needs_tools("cpio", "zstd")
def test_kernel_modules_initrd_holds_only_the_modules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "usr/lib/modules/6.1.0/kernel/drivers/virtio.ko", "ko")
    write(root / "usr/lib/modules/6.1.0/modules.dep", "dep")
    write(root / "usr/lib/modules/5.0/kernel/old.ko", "old")
    write(root / "etc/passwd", "root:x:0:0::/root:/bin/sh")
    out = modules_initrd(root, "6.1.0", tmp_path / "modules.initrd")
    cpio = subprocess.run(["zstd", "-dc", str(out)], capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True).stdout.decode()
    assert listing.split() == ["usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/6.1.0",
                               "usr/lib/modules/6.1.0/modules.dep", "usr/lib/modules/6.1.0/kernel",
                               "usr/lib/modules/6.1.0/kernel/drivers", "usr/lib/modules/6.1.0/kernel/drivers/virtio.ko"]
    with pytest.raises(MkosiError, match=r"no usr/lib/modules/7\.0/"):
        modules_initrd(root, "7.0", tmp_path / "none.initrd")


GRUB_EFI = Path("/usr/lib/grub/x86_64-efi")


@needs_tools("grub-mkimage", files=(GRUB_EFI / "normal.mod",))
def test_bootloader_grub_chainloads_the_uki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signed: list[Path] = []
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: signed.append(binary))
    files = esp_files(tmp_path, Bootloader.grub, grub_efi_dirs=(tmp_path / "nowhere", GRUB_EFI),
                      secure_boot_key=tmp_path / "k", secure_boot_certificate=tmp_path / "c")
    assert {"EFI/BOOT/BOOTX64.EFI", "EFI/Linux/img-6.1.0-10-amd64.efi", "EFI/test/grub.cfg", "grub/grub.cfg",
            "grub/x86_64-efi/normal.mod"} <= set(files)
    assert not any(f.startswith(("EFI/systemd", "loader/")) for f in files)
    grub = read_pe(tmp_path / "esp/EFI/BOOT/BOOTX64.EFI")     # grub-mkimage's EFI image
    assert grub.machine == 0x8664
    cfg = (tmp_path / "esp/grub/grub.cfg").read_text()
    assert "chainloader /EFI/Linux/img-6.1.0-10-amd64.efi" in cfg and "grub_platform" not in cfg
    assert "configfile ($root)/grub/grub.cfg" in (tmp_path / "esp/EFI/test/grub.cfg").read_text()
    assert sorted(p.name for p in signed) == ["BOOTX64.EFI", "img-6.1.0-10-amd64.efi"]


@needs_tools("grub-mkimage", files=(GRUB_EFI / "normal.mod", Path("/usr/lib/grub/i386-pc/normal.mod")))
def test_bootloader_grub_with_bios_shares_one_config(tmp_path: Path) -> None:
    root = esp_root(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    esp = tmp_path / "esp"
    options = EspOptions(protocols=(BootProtocol.uefi, BootProtocol.bios), entry_id="img", title="Image",
                         bootloader=Bootloader.grub, grub_efi_dirs=(GRUB_EFI,))
    populate_esp(esp, boot_files(root, initrd, "root=PARTLABEL=x rw", "x86_64"), options)
    cfg = (esp / "grub/grub.cfg").read_text()
    efi_part, bios_part = cfg.split("else")
    assert 'if [ "$grub_platform" = "efi" ]' in efi_part and "chainloader /EFI/Linux/" in efi_part
    assert "linux /vmlinuz root=PARTLABEL=x rw" in bios_part and "initrd /initrd" in bios_part
    assert (esp / "grub/i386-pc").is_dir() and (esp / "grub/x86_64-efi").is_dir()


def test_bootloader_grub_needs_its_modules_and_ukis(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="GRUB's EFI modules"):
        esp_files(tmp_path / "a", Bootloader.grub, grub_efi_dirs=(tmp_path / "nowhere",))
    with pytest.raises(MkosiError, match="without unified kernel images is not implemented yet"):
        esp_files(tmp_path / "b", Bootloader.grub, unified_kernel_image=UnifiedKernelImages.none)


@pytest.mark.parametrize(("bootloader", "shim", "message"), [
    (Bootloader.uki_signed, ShimBootloader.none, "Bootloader=uki-signed needs the image tree to take the signed UKI"),
    (Bootloader.grub_signed, ShimBootloader.none, "Bootloader=grub-signed needs the image tree to take the signed"),
    (Bootloader.systemd_boot_signed, ShimBootloader.none, "Bootloader=systemd-boot-signed needs the image tree"),
    (Bootloader.systemd_boot, ShimBootloader.signed, "ShimBootloader= needs the image tree to take shim from"),
])
def test_the_prebuilt_binaries_need_the_image_tree(tmp_path: Path, bootloader: Bootloader, shim: ShimBootloader,
                                                   message: str) -> None:
    root = esp_root(tmp_path)
    esp, files = esp_and_files(tmp_path, root)
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", bootloader=bootloader,
                         shim=shim)
    with pytest.raises(MkosiError, match=message):
        populate_esp(esp, files, options)
