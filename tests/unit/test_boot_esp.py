"""The ESP and UKI code works on a root tree and plain files, without a disk image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mkosi.boot.esp import EspOptions, populate_esp
from mkosi.boot.grub import GRUB_I386_PC_DIR
from mkosi.boot.kernel import boot_files
from mkosi.boot.pe import read_pe
from mkosi.boot.uki import SYSTEMD_BOOT_EFI_DIR, uki_file_name
from mkosi.config.enums import BootProtocol, UnifiedKernelImages
from mkosi.errors import MkosiError
from tests.markers import needs_tools

needs_grub = needs_tools(files=(GRUB_I386_PC_DIR,))
needs_stub = needs_tools("objcopy", files=(SYSTEMD_BOOT_EFI_DIR / "linuxx64.efi.stub",))


def fake_root(tmp_path: Path, efi_dir: Path | None = None) -> Path:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-9-amd64").write_bytes(b"MZ old kernel")
    (root / "boot/vmlinuz-6.1.0-10-amd64").write_bytes(b"MZ" + bytes(4094))
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=test\n")
    efi = root / "usr/lib/systemd/boot/efi"
    if efi_dir is not None:
        shutil.copytree(efi_dir, efi)
    else:
        efi.mkdir(parents=True)
        (efi / "systemd-bootx64.efi").write_bytes(b"MZ systemd-boot")
    return root


def test_boot_files_of_a_root_tree(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    initrd = tmp_path / "initrd"
    files = boot_files(root, initrd, "rw quiet", "x86_64")
    assert files.version == "6.1.0-10-amd64"
    assert files.kernel == root / "boot/vmlinuz-6.1.0-10-amd64"
    assert files.os_release == root / "usr/lib/os-release"   # /etc/os-release is missing
    assert files.systemd_boot == root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    assert files.stub.name == "linuxx64.efi.stub"
    assert boot_files(root, initrd, "", "aarch64").systemd_boot.name == "systemd-bootaa64.efi"


@needs_grub
def test_populate_esp_type1_entry_and_bios(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi, BootProtocol.bios), entry_id="img", title="Image",
                         unified_kernel_image=UnifiedKernelImages.none)
    assert populate_esp(esp, boot_files(root, initrd, "root=PARTLABEL=x rw", "x86_64"), options) is None
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ systemd-boot"
    entry = (esp / "loader/entries/img-6.1.0-10-amd64.conf").read_text()
    assert "linux /img-6.1.0-10-amd64/linux" in entry and "options root=PARTLABEL=x rw" in entry
    assert (esp / "img-6.1.0-10-amd64/initrd").read_bytes() == b"initrd"
    assert (esp / "initrd").read_bytes() == b"initrd"
    assert (esp / "vmlinuz").read_bytes()[:2] == b"MZ"
    assert "root=PARTLABEL=x" in (esp / "grub/grub.cfg").read_text()


def test_populate_esp_needs_systemd_boot_for_uefi(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi").unlink()
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    with pytest.raises(MkosiError, match="no systemd-boot EFI binaries"):
        populate_esp(tmp_path, boot_files(root, initrd, "", "x86_64"),
                     EspOptions(protocols=(BootProtocol.uefi,), entry_id="linux", title="Linux"))


@needs_stub
def test_populate_esp_builds_uki_from_root_tree(tmp_path: Path) -> None:
    root = fake_root(tmp_path, efi_dir=SYSTEMD_BOOT_EFI_DIR)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd" * 100)
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", image_version="7.1")
    uki = populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    assert uki == esp / "EFI/Linux/img_7.1.efi"
    names = [s.name for s in read_pe(uki).sections]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]


def test_uki_file_name() -> None:
    assert uki_file_name("img", "7.1", "6.1.0") == "img_7.1.efi"
    assert uki_file_name("linux", None, "6.1.0") == "linux-6.1.0.efi"
