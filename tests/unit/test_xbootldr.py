"""XBootLDRSize=: the extended boot loader partition of GPT disk images (its place, size, type and FAT
file system), what moves into it from the tree's /boot, and which boot files go to it instead of the ESP."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from mkosi.boot.esp import EspOptions, install_uefi, populate_esp
from mkosi.boot.kernel import boot_files
from mkosi.config import load_args
from mkosi.config.enums import Bootloader, BootProtocol, UnifiedKernelImages
from mkosi.errors import MkosiError
from mkosi.output import disk, gpt
from tests.markers import needs_tools
from tests.unit.test_boot_esp import fake_root

MiB = 1024 * 1024
XBOOTLDR_TYPE = uuid.UUID("bc13c2ff-59e6-4262-a352-b275fd6f7172")
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def make_tree(base: Path) -> Path:
    tree = base / "tree"
    for d in ("etc", "usr/bin", "boot/grub", "var"):
        (tree / d).mkdir(parents=True)
    (tree / "etc/hostname").write_text("host\n")
    (tree / "usr/bin/true").write_text("#!/bin/sh\n")
    (tree / "boot/vmlinuz-6.1.0-10-amd64").write_bytes(b"MZ kernel")
    (tree / "boot/config-6.1.0-10-amd64").write_text("CONFIG_X=y\n")
    (tree / "boot/grub/grubenv").write_text("# env\n")
    (tree / "boot/vmlinuz").symlink_to("vmlinuz-6.1.0-10-amd64")        # Ubuntu's kind of link
    (tree / "boot/hostname").symlink_to("/etc/hostname")                 # absolute: inside the tree
    (tree / "boot/dangling").symlink_to("/nonexistent")
    return tree


def test_copy_boot_tree_resolves_links_inside_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = make_tree(tmp_path)
    Path("/tmp").joinpath("mkosi-xbootldr-host-file").unlink(missing_ok=True)
    (tree / "boot/host").symlink_to("/tmp/mkosi-xbootldr-host-file")   # not in the tree: left out
    Path("/tmp/mkosi-xbootldr-host-file").write_text("host's")
    try:
        copy = disk.copy_boot_tree(tree, tmp_path / "copy")
    finally:
        Path("/tmp/mkosi-xbootldr-host-file").unlink()
    names = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    assert names == ["config-6.1.0-10-amd64", "grub", "grub/grubenv", "hostname", "vmlinuz", "vmlinuz-6.1.0-10-amd64"]
    assert not any(p.is_symlink() for p in copy.rglob("*"))
    assert (copy / "vmlinuz").read_bytes() == b"MZ kernel"
    assert (copy / "hostname").read_text() == "host\n"   # the tree's /etc/hostname, not the host's
    err = capsys.readouterr().err
    assert "/boot/dangling" in err and "/boot/host" in err
    # A tree without /boot gives an empty directory.
    assert list(disk.copy_boot_tree(tmp_path / "empty-root", tmp_path / "copy2").iterdir()) == []


def sfdisk_json(image: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout
    parts: list[dict[str, Any]] = json.loads(out)["partitiontable"]["partitions"]
    return parts


def fat_names(image: Path, offset: int, directory: str) -> set[str]:
    out = subprocess.run(["mdir", "-i", f"{image}@@{offset}", "-b", f"::{directory}"], capture_output=True,
                         text=True, check=True, env=MTOOLS_ENV).stdout
    return {line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}


def fat_read(image: Path, offset: int, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::{path}"], capture_output=True, check=True,
                          env=MTOOLS_ENV).stdout


def squashfs_listing(image: Path) -> set[str]:
    out = subprocess.run(["unsquashfs", "-l", "-d", "", str(image)], capture_output=True, text=True,
                         check=True).stdout
    return {line.strip() for line in out.splitlines() if line.startswith("/")}


@needs_tools("mksquashfs", "unsquashfs", "sfdisk", "mkfs.vfat", "mcopy", "mdir", "mtype")
def test_xbootldr_partition_layout_and_contents(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    spec = disk.DiskSpec(tree=tree, output=tmp_path / "disk.raw", workspace=tmp_path / "ws", root_fs="squashfs",
                         arch="x86-64", esp_size=64 * MiB, xbootldr_size=96 * MiB, seed="xbootldr-test")
    result = disk.build_disk(spec)

    assert [p.role for p in result.partitions] == ["esp", "xbootldr", "root"]
    placed = result.partition("xbootldr")
    assert placed is not None and placed.size == 96 * MiB and placed.label == "xbootldr"
    assert placed.type_uuid == XBOOTLDR_TYPE == gpt.type_uuid("xbootldr")
    assert placed.offset % MiB == 0 and placed.offset >= result.partitions[0].end
    assert result.filesystems["xbootldr"] == "vfat"
    table = sfdisk_json(result.output)
    assert [uuid.UUID(p["type"]) for p in table] == [gpt.type_uuid("esp"), XBOOTLDR_TYPE,
                                                    gpt.type_uuid("root", "x86-64")]
    assert table[1]["name"] == "xbootldr" and table[1]["start"] * 512 == placed.offset
    assert table[1]["size"] * 512 == 96 * MiB

    # The FAT file system at the partition's offset in the disk holds the tree's /boot.
    label = subprocess.run(["mlabel", "-i", f"{result.output}@@{placed.offset}", "-s", "::"], capture_output=True,
                           text=True, check=True, env=MTOOLS_ENV).stdout
    assert "XBOOTLDR" in label
    assert fat_names(result.output, placed.offset, "/") == {"vmlinuz-6.1.0-10-amd64", "config-6.1.0-10-amd64",
                                                             "grub", "vmlinuz", "hostname"}
    assert fat_read(result.output, placed.offset, "/grub/grubenv") == b"# env\n"
    assert fat_read(result.output, placed.offset, "/vmlinuz") == b"MZ kernel"
    # The ESP is empty (it is filled later, by the build).
    esp = result.partition("esp")
    assert esp is not None and fat_names(result.output, esp.offset, "/") == set()

    # The root keeps empty /boot and /efi mount points.
    listing = squashfs_listing(result.images["root"])
    assert {"/boot", "/efi", "/etc/hostname"} <= listing
    assert not any(p.startswith(("/boot/", "/efi/")) for p in listing), listing
    # The tree is as it was.
    assert (tree / "boot/vmlinuz").is_symlink() and (tree / "boot/grub/grubenv").is_file()
    assert not (tree / "efi").exists()
    assert not any(p.name.endswith("-mkosi-stash") for p in tmp_path.iterdir())


@needs_tools("mksquashfs", "unsquashfs", "sfdisk", "mkfs.vfat", "mcopy")
def test_without_xbootldr_boot_stays_in_the_root_and_an_own_efi_is_kept(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    (tree / "boot/dangling").unlink()
    spec = disk.DiskSpec(tree=tree, output=tmp_path / "disk.raw", workspace=tmp_path / "ws", root_fs="squashfs",
                         esp_size=64 * MiB)
    result = disk.build_disk(spec)
    assert [p.role for p in result.partitions] == ["esp", "root"]
    listing = squashfs_listing(result.images["root"])
    assert "/boot/vmlinuz-6.1.0-10-amd64" in listing and "/efi" not in listing

    # With XBOOTLDR, an /efi of the tree's own is left as it is.
    (tree / "efi").mkdir()
    (tree / "efi/README").write_text("mine\n")
    spec = disk.DiskSpec(tree=tree, output=tmp_path / "disk2.raw", workspace=tmp_path / "ws2",
                         root_fs="squashfs", esp_size=64 * MiB, xbootldr_size=64 * MiB)
    listing = squashfs_listing(disk.build_disk(spec).images["root"])
    assert "/efi/README" in listing and not any(p.startswith("/boot/") for p in listing)


@needs_tools("mksquashfs", "sfdisk", "mkfs.vfat", "mcopy")
def test_boot_files_larger_than_the_partition_name_xbootldrsize(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    with open(tree / "boot/big", "wb") as f:
        f.write(os.urandom(3 * MiB))
    spec = disk.DiskSpec(tree=tree, output=tmp_path / "disk.raw", workspace=tmp_path / "ws", root_fs="squashfs",
                         xbootldr_size=2 * MiB)
    with pytest.raises(MkosiError) as e:
        disk.build_disk(spec)
    assert "XBootLDRSize=" in (e.value.hint or "")
    assert (tree / "boot/big").is_file() and not (tree / "efi").exists()


# ---------------------------------------------------------------------------------------------
# Where the boot files go


def test_type1_entry_goes_to_xbootldr_and_systemd_boot_stays_on_the_esp(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd")
    esp, boot = tmp_path / "esp", tmp_path / "boot"
    esp.mkdir()
    boot.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image",
                         unified_kernel_image=UnifiedKernelImages.none)
    assert populate_esp(esp, boot_files(root, initrd, "root=PARTLABEL=x rw", "x86_64"), options, boot=boot) is None
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"MZ systemd-boot"
    assert (esp / "EFI/systemd/systemd-bootx64.efi").is_file() and (esp / "loader/loader.conf").is_file()
    assert not any((esp / "loader/entries").iterdir()) and not (esp / "img-6.1.0-10-amd64").exists()
    entry = (boot / "loader/entries/img-6.1.0-10-amd64.conf").read_text()
    # Paths of an entry are relative to the partition it is on.
    assert "linux /img-6.1.0-10-amd64/linux" in entry and "initrd /img-6.1.0-10-amd64/initrd" in entry
    assert (boot / "img-6.1.0-10-amd64/linux").read_bytes() == (root / "boot/vmlinuz-6.1.0-10-amd64").read_bytes()
    assert (boot / "img-6.1.0-10-amd64/initrd").read_bytes() == b"initrd"
    assert sorted(p.name for p in boot.iterdir()) == ["img-6.1.0-10-amd64", "loader"]


def test_uki_goes_to_xbootldr_with_systemd_boot(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    files = boot_files(root, tmp_path / "initrd", "rw", "x86_64")
    esp, boot = tmp_path / "esp", tmp_path / "boot"
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", image_version="7.1")
    uki = install_uefi(esp, files, options, make=lambda p: (p.write_bytes(b"MZ uki"), p)[1], boot=boot)
    assert uki == boot / "EFI/Linux/img_7.1.efi" and uki.read_bytes() == b"MZ uki"
    assert not any((esp / "EFI/Linux").iterdir())
    assert (esp / "EFI/BOOT/BOOTX64.EFI").is_file()


@pytest.mark.parametrize("bootloader", [Bootloader.uki, Bootloader.none])
def test_loaders_that_cannot_read_xbootldr_keep_everything_on_the_esp(
        tmp_path: Path, bootloader: Bootloader, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    files = boot_files(root, tmp_path / "initrd", "rw", "x86_64")
    esp, boot = tmp_path / "esp", tmp_path / "boot"
    boot.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", bootloader=bootloader)
    uki = install_uefi(esp, files, options, make=lambda p: (p.write_bytes(b"MZ uki"), p)[1], boot=boot)
    if bootloader == Bootloader.uki:
        assert uki == esp / "EFI/BOOT/BOOTX64.EFI"
    else:
        assert uki is None
    assert list(boot.iterdir()) == []
    assert "XBOOTLDR partition holds only the image's /boot" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The setting


def write_default(directory: Path, text: str) -> None:
    (directory / "mkosi.default").write_text(text)


def test_xbootldr_size_is_a_gpt_disk_setting(wd: Path) -> None:
    tmp_path = wd
    write_default(tmp_path, "[Output]\nFormat=gpt_ext4\nBootable=yes\n[Partitions]\nXBootLDRSize=512M\n")
    _, configs = load_args(["summary"])
    assert configs[-1].xbootldr_size == 512 * MiB and configs[-1].esp_size == 256 * MiB
    for fmt in ("directory", "disk", "esp"):
        write_default(tmp_path, f"[Output]\nFormat={fmt}\nBootable=yes\n[Partitions]\nXBootLDRSize=512M\n")
        with pytest.raises(MkosiError, match="XBootLDRSize"):
            load_args(["summary"])
