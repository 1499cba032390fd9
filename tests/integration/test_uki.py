"""The EFI formats, each built once from Debian bookworm (linux-image-amd64, systemd, udev) and checked
with the tools their users would use: objdump and ukify inspect (from the tools tree) on the UKI and
the addon, sbverify on the signed UKI, sfdisk and mtools on the ESP disk; the UKI (a system running
from memory) and the ESP disk boot under `mkosi vm` (qemu with OVMF) to a marker unit."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mkosi.boot import efivars
from mkosi.boot.signing import verify_efi
from tests.integration.conftest import run_mkosi
from tests.unit.test_signing_keys import auth_parts, openssl_verifies

pytestmark = pytest.mark.integration

MARKER_UNIT = """\
[Unit]
Description=Report a successful boot on the serial console and power off

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "MKOSI-BOOT-MARKER $(cat /proc/cmdline)" > /dev/ttyS0'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""

PROFILE = """\
[UKIProfile]
Profile=ID=debug
        TITLE="Debug logging"
Cmdline=systemd.log_level=debug
"""


def project(base: Path, package_cache: Path, fmt: str, image_id: str, extra: str = "") -> Path:
    (base / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format={fmt}
ImageId={image_id}

[Content]
Packages=linux-image-amd64,systemd,udev
PackageCacheDirectory={package_cache}
{extra}
[Runtime]
RAM=2G
QemuHeadless=yes
""")
    units = base / "mkosi.extra/etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "mkosi-marker.service").write_text(MARKER_UNIT)
    (units / "multi-user.target.wants/mkosi-marker.service").symlink_to("../mkosi-marker.service")
    (base / "mkosi.output").mkdir()
    return base


def build(d: Path, tools_tree: Path, *extra: str) -> float:
    start = time.monotonic()
    proc = run_mkosi(d, f"--tools-tree={tools_tree}", *extra, "build", timeout=3000)
    (d / "build.log").write_text(proc.stdout + proc.stderr)
    return time.monotonic() - start


def sections(path: Path) -> list[str]:
    text = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split()[1] for line in text.splitlines() if line.strip()[:1].isdigit()]


def ukify_inspect(d: Path, tools_tree: Path, binary: Path) -> str:
    proc = run_mkosi(d, f"--tools-tree={tools_tree}", "sandbox", "--", "ukify", "inspect", str(binary))
    return proc.stdout


def boot(d: Path) -> tuple[str, float]:
    # qemu and OVMF from the host (the tools tree need not have them).
    start = time.monotonic()
    proc = run_mkosi(d, "vm", timeout=900)
    return proc.stdout + proc.stderr, time.monotonic() - start


def tiny_bmp() -> bytes:
    """A 1x1 24-bit BMP picture (what systemd-stub shows from the .splash section)."""
    pixels = b"\x00\x80\xff\x00"
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def uki_initrd_listing(uki: Path, tmp: Path) -> list[str]:
    """The files of the UKI's .initrd section (the image, a zstd-compressed cpio)."""
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.initrd", str(uki), str(tmp / "initrd.zst")],
                   check=True)
    cpio = subprocess.run(["zstd", "-dc", str(tmp / "initrd.zst")], capture_output=True, check=True).stdout
    return subprocess.run(["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True,
                          ).stdout.decode().split()


@pytest.fixture(scope="module")
def uki_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    """A signed Format=uki image with one extra profile (the profile needs the tools tree's systemd stub)."""
    d = project(tmp_path_factory.mktemp("uki"), package_cache, "uki", "ukiimg",
                "KernelCommandLine=mkosi.test=uki\n"
                # Only the block drivers and ext4 (with what they need) stay; depmod writes the index again.
                "KernelModules=/drivers/block/,ext4,-/drivers/block/floppy\n"
                "Splash=/usr/share/mkosi-test/splash.bmp\n"
                "[Validation]\nSecureBoot=yes\n")
    (d / "mkosi.extra/usr/share/mkosi-test").mkdir(parents=True)
    (d / "mkosi.extra/usr/share/mkosi-test/splash.bmp").write_bytes(tiny_bmp())
    (d / "mkosi.uki-profiles").mkdir()
    (d / "mkosi.uki-profiles/debug.conf").write_text(PROFILE)
    run_mkosi(d, "genkey")
    seconds = build(d, tools_tree)
    print(f"Format=uki build: {seconds:.0f}s", file=sys.stderr)
    return d


def test_uki_sections(uki_project: Path) -> None:
    uki = uki_project / "mkosi.output/ukiimg.efi"
    found = sections(uki)
    base = found[found.index(".osrel"):]
    # SecureBoot=yes with a key and systemd-measure in the tools tree: SignExpectedPcr=auto signs, so the
    # base carries .pcrpkey and its .pcrsig, and the profile its own .pcrsig after its sections.
    assert base == [".osrel", ".cmdline", ".uname", ".splash", ".initrd", ".linux", ".pcrpkey", ".pcrsig",
                    ".profile", ".cmdline", ".pcrsig"], found
    print(f"Format=uki size: {uki.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)


def test_kernel_modules_restrict_the_images_modules(uki_project: Path, tmp_path: Path) -> None:
    """KernelModules=: the image (the UKI's initrd) keeps the block drivers and ext4 with their
    dependencies, nothing else, and the module index depmod wrote again lists only those."""
    files = uki_initrd_listing(uki_project / "mkosi.output/ukiimg.efi", tmp_path)
    modules = [f for f in files if f.startswith("usr/lib/modules/") and ".ko" in f]
    kernel = {f.split("/kernel/", 1)[1] for f in modules}
    assert any(k.startswith("fs/ext4/ext4.ko") for k in kernel), kernel
    assert any(k.startswith("fs/jbd2/") for k in kernel), kernel            # ext4's dependency
    assert any(k.startswith("drivers/block/loop.ko") for k in kernel), kernel
    assert any(k.startswith("drivers/block/virtio_blk.ko") for k in kernel), kernel
    assert not any(k.startswith(("sound/", "drivers/net/", "drivers/gpu/", "drivers/block/floppy")) for k in kernel)
    assert len(modules) < 60, len(modules)
    version = modules[0].split("/")[3]
    assert f"usr/lib/modules/{version}/modules.dep.bin" in files
    log = (uki_project / "build.log").read_text()
    assert "Selecting kernel modules and firmware" in log


def test_ukify_inspect_reads_the_uki_and_its_profile(uki_project: Path, tools_tree: Path) -> None:
    text = ukify_inspect(uki_project, tools_tree, uki_project / "mkosi.output/ukiimg.efi")
    for name in (".osrel:", ".cmdline:", ".uname:", ".initrd:", ".linux:", ".profile:"):
        assert name in text, text
    assert "ID=debug" in text and 'TITLE="Debug logging"' in text
    assert "mkosi.test=uki" in text and "systemd.log_level=debug" in text
    assert "IMAGE_ID=ukiimg" in text
    assert ".splash:" in text
    assert "systemd-stub" in text or "systemd,1" in text   # .sbat of the tools tree's stub


def test_uki_is_signed(uki_project: Path) -> None:
    ok = subprocess.run(["sbverify", "--cert", str(uki_project / "mkosi.secure-boot.crt"),
                         str(uki_project / "mkosi.output/ukiimg.efi")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.slow
def test_uki_boots_from_memory(uki_project: Path) -> None:
    out, seconds = boot(uki_project)
    print(f"Format=uki boot to marker and poweroff: {seconds:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert "mkosi.test=uki" in out


@pytest.fixture(scope="module")
def esp_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    """Format=esp, signed for Secure Boot (SecureBootSignTool=auto: sbsign of the tools tree, which has no
    systemd-sbsign), with the keys for systemd-boot to enroll (SecureBootAutoEnroll= defaults to yes)."""
    d = project(tmp_path_factory.mktemp("esp"), package_cache, "esp", "espimg",
                "KernelCommandLine=mkosi.test=esp\nUnifiedKernelImageFormat=&e-&k-mkosi\n"
                "[Validation]\nSecureBoot=yes\nSecureBootSignTool=auto\n")
    run_mkosi(d, "genkey")
    seconds = build(d, tools_tree)
    print(f"Format=esp build: {seconds:.0f}s", file=sys.stderr)
    return d


def test_esp_disk_holds_only_the_esp(esp_project: Path) -> None:
    image = esp_project / "mkosi.output/espimg.raw"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert [p["type"].upper() for p in table["partitions"]] == ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B"]
    start = table["partitions"][0]["start"] * 512
    listing = subprocess.run(["mdir", "-i", f"{image}@@{start}", "-/", "-b", "::"], capture_output=True, text=True,
                             check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    files = sorted(line.strip().lstrip(":") for line in listing.splitlines()
                   if line.strip().endswith((".efi", ".EFI", ".conf", ".auth")))
    kernels = [f for f in files if f.startswith("/EFI/Linux/")]
    assert len(kernels) == 1 and kernels[0].startswith("/EFI/Linux/espimg-") and kernels[0].endswith("-mkosi.efi")
    assert {"/EFI/BOOT/BOOTX64.EFI", "/EFI/systemd/systemd-bootx64.efi", "/loader/loader.conf"} <= set(files), files
    assert {"/loader/keys/auto/PK.auth", "/loader/keys/auto/KEK.auth", "/loader/keys/auto/db.auth"} <= set(files)
    print(f"Format=esp size: {image.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)


def test_esp_disk_is_signed_and_carries_the_enrollment_keys(esp_project: Path, tmp_path: Path) -> None:
    """The ESP's binaries verify against the certificate, and PK/KEK/db.auth are authenticated variables
    signed by its key over the specification's payload, each holding the certificate."""
    image = esp_project / "mkosi.output/espimg.raw"
    cert = esp_project / "mkosi.secure-boot.crt"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    esp = f"{image}@@{table['partitions'][0]['start'] * 512}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def mtype(path: str) -> bytes:
        return subprocess.run(["mtype", "-i", esp, path], capture_output=True, check=True, env=env).stdout

    for binary in ("::/EFI/BOOT/BOOTX64.EFI", "::/EFI/systemd/systemd-bootx64.efi"):
        (tmp_path / "b.efi").write_bytes(mtype(binary))
        assert verify_efi(tmp_path / "b.efi", cert), binary
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    vendors = {"PK": efivars.EFI_GLOBAL_VARIABLE, "KEK": efivars.EFI_GLOBAL_VARIABLE,
               "db": efivars.EFI_IMAGE_SECURITY_DATABASE}
    for name, vendor in vendors.items():
        timestamp, signature, data = auth_parts(mtype(f"::/loader/keys/auto/{name}.auth"))
        assert data[44:] == der, name
        assert openssl_verifies(tmp_path, signature, efivars.signed_payload(name, vendor, timestamp, data), cert)


@pytest.mark.slow
def test_esp_disk_boots(esp_project: Path) -> None:
    out, seconds = boot(esp_project)
    print(f"Format=esp boot to marker and poweroff: {seconds:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert "mkosi.test=esp" in out


@pytest.fixture(scope="module")
def addon_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    d = tmp_path_factory.mktemp("addon")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=addon
ImageId=debuglog

[Content]
BasePackages=no
PackageCacheDirectory={package_cache}
KernelCommandLine=systemd.log_level=debug systemd.log_target=console
""")
    seconds = build(d, tools_tree)
    print(f"Format=addon build: {seconds:.0f}s", file=sys.stderr)
    return d


def test_addon_carries_the_command_line(addon_project: Path, tools_tree: Path) -> None:
    addon = addon_project / "debuglog.efi"
    assert sections(addon)[-1] == ".cmdline"
    text = ukify_inspect(addon_project, tools_tree, addon)
    assert ".cmdline:" in text and "systemd.log_level=debug systemd.log_target=console" in text, text
    assert ".linux:" not in text
    print(f"Format=addon size: {addon.stat().st_size} bytes", file=sys.stderr)
