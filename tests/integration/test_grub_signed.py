"""Bootloader=grub-signed with ShimBootloader=signed: Debian's signed shim and GRUB from the image on the
ESP, chainloading the UKI mkosi builds; checked on the ESP and booted under qemu with OVMF to a marker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi
from tests.integration.test_boot import boot, install_marker_unit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grub_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("grub-signed")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_ext4
ImageId=grubimg
SplitArtifacts=yes

[Content]
Bootable=yes
Bootloader=grub-signed
ShimBootloader=signed
# Debian ships no pre-built signed UKI: mkosi builds it.
UnifiedKernelImages=unsigned
Packages=grub-efi-amd64-signed
         shim-signed
PackageCacheDirectory={package_cache}

[Host]
QemuHeadless=yes
""")
    install_marker_unit(d)
    start = time.monotonic()
    run_mkosi(d, "build", timeout=3000)
    print(f"grub-signed bootable build took {time.monotonic() - start:.0f}s", file=sys.stderr)
    return d


def mdir(image: Path, offset: int, path: str) -> str:
    return subprocess.run(["mdir", "-b", "-i", f"{image}@@{offset}", path], capture_output=True, text=True,
                          check=True).stdout


def mtype(image: Path, offset: int, path: str) -> bytes:
    return subprocess.run(["mtype", "-i", f"{image}@@{offset}", path], capture_output=True, check=True).stdout


def esp_offset(image: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    esp = next(p for p in table["partitions"] if p["type"].lower() == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    return int(esp["start"]) * int(table.get("sectorsize", 512))


def test_esp_holds_the_distributions_signed_binaries(grub_project: Path) -> None:
    image = grub_project / "grubimg.raw"
    offset = esp_offset(image)
    listing = mdir(image, offset, "::/EFI/BOOT")
    assert "BOOTX64.EFI" in listing.upper() and "GRUBX64.EFI" in listing.upper(), listing
    # The ESP's binaries are the packages' own, byte for byte (copied, not signed again by mkosi).
    root = grub_project / "grubimg.root.raw"
    shim = subprocess.run(["debugfs", "-R", "cat /usr/lib/shim/shimx64.efi.signed", str(root)],
                          capture_output=True, check=True).stdout
    assert len(shim) > 100_000 and mtype(image, offset, "::/EFI/BOOT/BOOTX64.EFI") == shim
    grub = subprocess.run(["debugfs", "-R", "cat /usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", str(root)],
                          capture_output=True, check=True).stdout
    assert len(grub) > 100_000 and mtype(image, offset, "::/EFI/BOOT/grubx64.efi") == grub
    config = mtype(image, offset, "::/grub/grub.cfg").decode()
    assert "chainloader /EFI/Linux/" in config, config
    assert b"configfile" in mtype(image, offset, "::/EFI/debian/grub.cfg")


@pytest.mark.slow
def test_grub_signed_boots(grub_project: Path) -> None:
    out, seconds = boot(grub_project, "uefi")
    print(f"grub-signed uefi boot to marker and poweroff: {seconds:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert "root=PARTLABEL=grubimg" in out
