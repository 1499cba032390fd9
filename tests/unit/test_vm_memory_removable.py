"""MaxMem= (qemu's -m size=,slots=,maxmem= for memory hotplug) and Removable= (the disk as a removable USB
device): the settings and the qemu command line as built (no VM is booted)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mkosi import qemu, vm
from mkosi.config import load_args
from mkosi.config.enums import BootProtocol, QemuKvm
from mkosi.config.settings import Args, Config, by_dest
from mkosi.errors import ConfigError, MkosiError
from mkosi.summary import summary_dict
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def opt(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[-1]


@pytest.fixture
def vm_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A BIOS-booted disk image, so that no firmware has to be found; KVM off (no probe)."""
    monkeypatch.setattr(qemu, "find_seabios", lambda root=Path("/"): tmp_path / "bios.bin")
    return dataclasses.replace(Config(), output=tmp_path / "image.raw", qemu_kvm=QemuKvm.no,
                               qemu_boot=BootProtocol.bios, compress_output="no", architecture="x86_64",
                               qemu_mem="2G")


# ---- the settings ----

def test_settings_are_read_and_implemented(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Runtime]\nRAM=2G\nMaxMem=8G\nRemovable=yes\n")
    c = load()
    assert (c.max_mem, c.removable) == (8 * 1024**3, True)
    assert load("--maxmem=4096M", "--removable=no").max_mem == 4 * 1024**3
    write(wd / "mkosi.conf", "[Runtime]\nQemuRemovable=yes\n")
    assert load().removable is True
    assert by_dest("max_mem").status is None and by_dest("removable").status is None
    notes = summary_dict(Args(), c)["NotImplemented"]
    assert "MaxMem" not in notes and "Removable" not in notes
    with pytest.raises(ConfigError, match="--maxmem: invalid size"):
        load("--maxmem=lots")


# ---- MaxMem= ----

def test_memory_option() -> None:
    assert qemu.memory_option("2G") == "2G"
    assert qemu.memory_option("2G", "8G") == f"size=2G,slots={qemu.HOTPLUG_SLOTS},maxmem=8G"


def test_qemu_command_with_maxmem(tmp_path: Path) -> None:
    bios = tmp_path / "usr/share/seabios/bios.bin"
    bios.parent.mkdir(parents=True)
    bios.write_bytes(b"x")
    argv = qemu.qemu_command(image=tmp_path / "i.raw", boot="bios", kvm=False, mem="1G", maxmem="4G",
                             firmware_root=tmp_path)
    assert opt(argv, "-m") == ["size=1G,slots=8,maxmem=4G"]
    assert opt(qemu.qemu_command(image=tmp_path / "i.raw", boot="bios", kvm=False, mem="1G",
                                 firmware_root=tmp_path), "-m") == ["1G"]


def test_vm_without_maxmem_keeps_plain_ram(vm_config: Config, tmp_path: Path) -> None:
    argv = vm.qemu_argv(Args(), vm_config, tmp_path)
    assert opt(argv, "-m") == ["2G"]
    # MaxMem= equal to RAM= adds nothing.
    same = vm.qemu_argv(Args(), dataclasses.replace(vm_config, max_mem=2 * 1024**3), tmp_path)
    assert opt(same, "-m") == ["2G"]


def test_vm_with_maxmem(vm_config: Config, tmp_path: Path) -> None:
    argv = vm.qemu_argv(Args(), dataclasses.replace(vm_config, max_mem=6 * 1024**3), tmp_path)
    assert opt(argv, "-m") == ["size=2G,slots=8,maxmem=6G"]
    # A bare RAM= number is MiB to qemu.
    mib = vm.qemu_argv(Args(), dataclasses.replace(vm_config, qemu_mem="1024", max_mem=1536 * 1024**2), tmp_path)
    assert opt(mib, "-m") == ["size=1024,slots=8,maxmem=1536M"]


def test_vm_maxmem_errors(vm_config: Config, tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="MaxMem=1G is less than RAM=2G"):
        vm.qemu_argv(Args(), dataclasses.replace(vm_config, max_mem=1024**3), tmp_path)
    with pytest.raises(MkosiError, match="multiple of the page size"):
        vm.qemu_argv(Args(), dataclasses.replace(vm_config, max_mem=3 * 1024**3 + 512), tmp_path)
    with pytest.raises(MkosiError, match="RAM=: invalid size"):
        vm.vm_maxmem(dataclasses.replace(vm_config, qemu_mem="much", max_mem=1024**3))


def test_sizes_for_qemu() -> None:
    assert vm.qemu_size(8 * 1024**3) == "8G" and vm.qemu_size(1536 * 1024**2) == "1536M"
    assert vm.qemu_size(12 * 1024) == "12K" and vm.qemu_size(1000) == "1000B"
    assert vm.qemu_ram_bytes("512") == 512 * 1024**2 and vm.qemu_ram_bytes("2G") == 2 * 1024**3


# ---- Removable= ----

def test_disk_device_args() -> None:
    assert qemu.disk_device_args("disk0") == ["-device", "virtio-blk-pci,drive=disk0,bootindex=1"]
    assert qemu.disk_device_args("disk0", removable=True) == [
        "-device", "qemu-xhci,id=mkosi-usb",
        "-device", "usb-storage,bus=mkosi-usb.0,drive=disk0,removable=on,bootindex=1"]


def test_vm_with_removable_disk(vm_config: Config, tmp_path: Path) -> None:
    fixed = vm.qemu_argv(Args(), vm_config, tmp_path)
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in opt(fixed, "-device")
    argv = vm.qemu_argv(Args(), dataclasses.replace(vm_config, removable=True), tmp_path)
    devices = opt(argv, "-device")
    assert "qemu-xhci,id=mkosi-usb" in devices
    assert "usb-storage,bus=mkosi-usb.0,drive=disk0,removable=on,bootindex=1" in devices
    assert not any(d.startswith("virtio-blk-pci") for d in devices)
    # The controller comes before the device that sits on it, and the drive is the image.
    assert devices.index("qemu-xhci,id=mkosi-usb") < devices.index(
        "usb-storage,bus=mkosi-usb.0,drive=disk0,removable=on,bootindex=1")
    assert any(d.startswith("if=none,id=disk0,") and d.endswith(os.fspath(tmp_path / "image.raw"))
               for d in opt(argv, "-drive"))
