"""A modern multi-image tree as public projects write it: an initrd sub-image that includes the built-in
mkosi-initrd configuration (mkosi.images/initrd/), and a bootable Format=disk main image whose
Initrds=%O/initrd names it through the link to its output (followed by a kernel modules initrd of
KernelInitrdModules=default). Built once (with the tools tree's
systemd-repart); the initrd is inspected with cpio and the image boots through it under `mkosi vm`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi
from tests.integration.test_boot import install_marker_unit

pytestmark = pytest.mark.integration

MAIN = """\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=disk
ImageId=withinitrd

[Content]
Bootable=yes
Packages=linux-image-amd64
         systemd
         systemd-boot
         udev
Initrds=%O/initrd
KernelInitrdModules=default

[Build]
PackageCacheDirectory={cache}

[Runtime]
RAM=2G
QemuHeadless=yes
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    d = tmp_path_factory.mktemp("initrd-image")
    (d / "mkosi.conf").write_text(MAIN.format(cache=package_cache))
    (d / "mkosi.images/initrd").mkdir(parents=True)
    (d / "mkosi.images/initrd/mkosi.conf").write_text("[Include]\nInclude=mkosi-initrd\n")
    (d / "mkosi.output").mkdir()
    install_marker_unit(d)
    start = time.monotonic()
    proc = run_mkosi(d, f"--tools-tree={tools_tree}", "build", timeout=3000)
    (d / "build.log").write_text(proc.stdout + proc.stderr)
    print(f"initrd sub-image + bootable disk build: {time.monotonic() - start:.0f}s", file=sys.stderr)
    return d


def test_the_initrd_is_built_first_and_named_through_its_link(project: Path) -> None:
    out = project / "mkosi.output"
    assert os.readlink(out / "initrd") == "initrd.cpio.zst"
    assert (out / "withinitrd.raw").is_file() and os.readlink(out / "withinitrd") == "withinitrd.raw"
    log = (project / "build.log").read_text()
    assert log.index("[initrd]") < log.index("[main]")
    assert "with dracut" not in log            # Initrds= given: no initrd of the image's own
    # KernelInitrdModules=default: the kernel modules initrd after it holds a few hundred modules, not all.
    m = re.search(r"KernelInitrdModules=: (\d+) modules and \d+ firmware files", log)
    assert m is not None and 50 < int(m.group(1)) < 2000, m


def test_the_initrd_can_start_systemd(project: Path) -> None:
    archive = project / "mkosi.output/initrd.cpio.zst"
    cpio = subprocess.run(["zstd", "-dc", str(archive)], capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=cpio, capture_output=True, check=True).stdout.decode()
    entries = {line.split()[8]: line for line in listing.splitlines() if len(line.split()) >= 9}
    # MakeInitrd=yes of mkosi-initrd: /init starts systemd, and systemd knows it runs in an initrd.
    assert "init" in entries and "-> usr/lib/systemd/systemd" in entries["init"], entries.get("init")
    assert "etc/initrd-release" in entries and "-> ../usr/lib/os-release" in entries["etc/initrd-release"]
    assert "usr/lib/systemd/systemd" in entries and "usr/bin/udevadm" in entries


@pytest.mark.slow
def test_the_image_boots_through_the_initrd_sub_image(project: Path) -> None:
    start = time.monotonic()
    proc = run_mkosi(project, "vm", timeout=900)
    out = proc.stdout + proc.stderr
    print(f"boot through the initrd sub-image to the marker: {time.monotonic() - start:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert "root=PARTLABEL=" in out
    assert "Kernel panic" not in out
