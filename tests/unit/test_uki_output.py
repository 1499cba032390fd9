"""The makers of Format=uki, esp and addon on a small fake root tree (a fake stub and kernel, no
distribution): what each writes, checked by reading the PE sections back, cpio, sfdisk and mtools."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mkosi.boot.bootable import user_initrd
from mkosi.boot.pe import read_pe
from mkosi.config import load_args
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.dependencies import host_tools
from mkosi.errors import MkosiError
from mkosi.output.artifacts import IMAGE, SPLIT_KERNEL, staged
from mkosi.output.uki import make_addon_output, make_esp_output, make_uki_output
from tests.markers import needs_tools
from tests.unit.conftest import write
from tests.unit.test_uki import fake_stub, section_data

pytestmark = pytest.mark.usefixtures("fixed_host")
needs = needs_tools("cpio", "zstd")
needs_esp = needs_tools("cpio", "zstd", "mkfs.vfat", "mcopy", "mdir", "sfdisk")


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[-1]


def fake_root(root: Path) -> Path:
    write(root / "usr/lib/modules/6.1.0-10-amd64/kernel/virtio.ko", "ko")
    (root / "boot").mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-10-amd64").write_bytes(b"MZ" + b"k" * 4000)
    write(root / "usr/lib/os-release", "ID=test\nIMAGE_ID=img\n")
    write(root / "usr/lib/systemd/systemd", "#!/bin/true\n", 0o755)
    efi = root / "usr/lib/systemd/boot/efi"
    efi.mkdir(parents=True)
    fake_stub(efi / "linuxx64.efi.stub")
    fake_stub(efi / "addonx64.efi.stub", kind="addon")
    (efi / "systemd-bootx64.efi").write_bytes(b"MZ systemd-boot" + bytes(100))
    return root


def context(tmp_path: Path, config: Config) -> Context:
    ws = tmp_path / "ws"
    (ws / "staging").mkdir(parents=True)
    root = fake_root(ws / "root")
    return Context(Args(), config, ws, Phase.final, root, None, ws / "staging")


def cpio_listing(data: bytes) -> list[str]:
    cpio = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True).stdout
    return listing.decode().split()


@needs
def test_format_uki_puts_the_whole_image_into_the_initrd(wd: Path) -> None:
    ctx = context(wd, load("--format=uki", "--image-id=img", "--kernel-command-line=quiet"))
    make_uki_output(ctx)
    uki = staged(ctx, IMAGE)
    assert uki.name == "img.efi"
    names = [s.name for s in read_pe(uki).sections]
    assert names[2:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    assert section_data(uki, 3) == b"quiet rw"            # no root=: the initrd is the root
    listing = cpio_listing(section_data(uki, 5))
    assert "init" in listing and "usr/lib/systemd/systemd" in listing and "usr/lib/os-release" in listing
    assert os.readlink(ctx.root / "init") == "usr/lib/systemd/systemd"


@needs
def test_format_uki_needs_systemd(wd: Path) -> None:
    ctx = context(wd, load("--format=uki"))
    (ctx.root / "usr/lib/systemd/systemd").unlink()
    with pytest.raises(MkosiError, match="needs systemd in the image"):
        make_uki_output(ctx)


@needs
def test_format_uki_profiles_need_a_new_stub(wd: Path) -> None:
    write(wd / "mkosi.uki-profiles/a.conf", "[UKIProfile]\nProfile=ID=a\nCmdline=debug\n")
    ctx = context(wd, load("--format=uki"))
    make_uki_output(ctx)
    names = [s.name for s in read_pe(staged(ctx, IMAGE)).sections]
    assert names[-2:] == [".profile", ".cmdline"]
    assert section_data(staged(ctx, IMAGE), len(names) - 1).endswith(b"rw debug")
    fake_stub(ctx.root / "usr/lib/systemd/boot/efi/linuxx64.efi.stub", "252.1")
    with pytest.raises(MkosiError, match="of systemd 257 or newer"):
        make_uki_output(ctx)


@needs_esp
def test_format_esp_is_a_disk_with_one_esp(wd: Path) -> None:
    ctx = context(wd, load("--format=esp", "--image-id=img", "--split-artifacts=yes"))
    make_esp_output(ctx)
    disk = staged(ctx, IMAGE)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert [p["type"] for p in table["partitions"]] == ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B"]
    start = table["partitions"][0]["start"] * 512
    listing = subprocess.run(["mdir", "-i", f"{disk}@@{start}", "-/", "-b", "::"], capture_output=True, text=True,
                             check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout.split()
    assert sorted(p.lstrip(":") for p in listing if "." in p.rsplit("/", 1)[-1]) == [
        "/EFI/BOOT/BOOTX64.EFI", "/EFI/Linux/img-6.1.0-10-amd64.efi", "/EFI/systemd/systemd-bootx64.efi",
        "/loader/loader.conf"]
    assert [s.name for s in read_pe(staged(ctx, SPLIT_KERNEL)).sections][-1] == ".linux"


@needs_esp
def test_format_esp_without_the_uki(wd: Path) -> None:
    ctx = context(wd, load("--format=esp", "--bootable=no"))
    make_esp_output(ctx)
    assert staged(ctx, IMAGE).stat().st_size >= 64 * 2**20


def test_format_addon(wd: Path) -> None:
    ctx = context(wd, load("--format=addon", "--image-id=dbg", "--kernel-command-line=systemd.log_level=debug"))
    make_addon_output(ctx)
    addon = staged(ctx, IMAGE)
    assert addon.name == "dbg.efi"
    assert [s.name for s in read_pe(addon).sections][2:] == [".cmdline"]
    assert section_data(addon, 2) == b"systemd.log_level=debug"
    ctx2 = context(wd / "2", load("--format=addon"))
    with pytest.raises(MkosiError, match="needs KernelCommandLine="):
        make_addon_output(ctx2)


@needs
def test_initrds_with_the_kernel_modules_initrd(wd: Path) -> None:
    write(wd / "a.initrd", "AAAAA")
    ctx = context(wd, load("-b", "--initrd=a.initrd"))
    initrd = user_initrd(ctx, "6.1.0-10-amd64").read_bytes()
    assert initrd.startswith(b"AAAAA\0\0\0")
    assert "usr/lib/modules/6.1.0-10-amd64/kernel/virtio.ko" in cpio_listing(initrd[8:].rstrip(b"\0"))
    ctx = context(wd / "2", load("-b", "--initrd=a.initrd", "--kernel-modules-initrd=no"))
    assert user_initrd(ctx, "6.1.0-10-amd64").read_bytes() == b"AAAAA\0\0\0"


def test_host_tools(wd: Path) -> None:
    assert {"cpio", "zstd"} <= set(host_tools(load("--format=uki")))
    assert {"mkfs.vfat", "mcopy", "sfdisk"} <= set(host_tools(load("--format=esp")))
    assert "objcopy" not in host_tools(load("-b"))
    assert "grub-mkimage" in host_tools(load("-b", "--bootloader=grub"))
    assert "grub-mkimage" in host_tools(load("--format=esp", "--bootloader=grub"))
    assert "grub-mkimage" not in host_tools(load("--bootloader=grub"))
