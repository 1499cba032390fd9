"""XBootLDRSize=: a bootable gpt_ext4 image with an extended boot loader partition, built once through
mkosi, its partition table read by sfdisk, both FAT partitions read by mtools at their offsets, the root
file system by debugfs, and booted under qemu (UEFI, systemd-boot) to see what systemd mounts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
XBOOTLDR_TYPE = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
ROOT_X86_64_TYPE = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"

# Reports, on the serial console, what is mounted at /boot and /efi once systemd is up (both are
# automount points of systemd-gpt-auto-generator: listing them mounts them), then powers off.
REPORT = """\
#!/bin/sh
mounted() {
    findmnt -n -r -o FSTYPE,PARTLABEL --mountpoint "$1" | grep -v autofs | tr '\\n' ' '
}
for i in $(seq 60); do
    ls /boot/EFI/Linux /efi/loader >/dev/null 2>&1
    [ -n "$(mounted /boot)" ] && [ -n "$(mounted /efi)" ] && break
    sleep 1
done
units=$(systemctl show -p Id -p ActiveState boot.automount boot.mount efi.automount efi.mount | tr '\\n' ' ')
echo "MKOSI-XBOOTLDR boot=[$(mounted /boot)] efi=[$(mounted /efi)] ukis=[$(ls /boot/EFI/Linux | tr '\\n' ' ')]" \\
     "kernels=[$(ls /boot | grep vmlinuz | tr '\\n' ' ')] loader=[$(ls /efi/loader | tr '\\n' ' ')]" \\
     "units=[$units] tries=$i" > /dev/ttyS0
"""

REPORT_UNIT = """\
[Unit]
Description=Report the /boot and /efi mounts on the serial console and power off
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/bin/mkosi-report-boot
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""


def make_project(d: Path, package_cache: Path, image_id: str, output: str) -> Path:
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_ext4
Bootable=yes
BootProtocols=uefi
ImageId={image_id}
{output}
[Partitions]
RootSize=2G
XBootLDRSize=300M

[Content]
Cache={package_cache}

[Host]
QemuHeadless=yes
""")
    extra = d / "mkosi.extra"
    units = extra / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "mkosi-report-boot.service").write_text(REPORT_UNIT)
    (units / "multi-user.target.wants/mkosi-report-boot.service").symlink_to("../mkosi-report-boot.service")
    (extra / "usr/local/bin").mkdir(parents=True)
    (extra / "usr/local/bin/mkosi-report-boot").write_text(REPORT)
    (extra / "usr/local/bin/mkosi-report-boot").chmod(0o755)
    (d / "mkosi.output").mkdir()
    start = time.monotonic()
    proc = run_mkosi(d, "build", timeout=3000)
    (d / "build.log").write_text(proc.stdout + proc.stderr)
    print(f"bootable XBOOTLDR build ({image_id}) took {time.monotonic() - start:.0f}s", file=sys.stderr)
    return d


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    """Unified kernel images (the default), split artifacts."""
    return make_project(tmp_path_factory.mktemp("xbootldr-project"), package_cache, "xbl", "SplitArtifacts=yes\n")


@pytest.fixture(scope="module")
def type1_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    """Boot Loader Specification Type #1 entries instead of unified kernel images."""
    return make_project(tmp_path_factory.mktemp("xbootldr-type1"), package_cache, "xbl1",
                        "UnifiedKernelImages=no\n")


def partitions(image: Path) -> list[dict[str, Any]]:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["sectorsize"] == 512
    parts: list[dict[str, Any]] = table["partitions"]
    return parts


def by_type(image: Path, type_uuid: str) -> dict[str, Any]:
    found = [p for p in partitions(image) if p["type"].lower() == type_uuid]
    assert len(found) == 1, partitions(image)
    return found[0]


def mtools(tool: str, image: Path, part: dict[str, Any], *argv: str) -> str:
    """An mtools command on the FAT file system of `part`, read at its offset in the disk image."""
    proc = subprocess.run([tool, "-i", f"{image}@@{part['start'] * 512}", *argv], capture_output=True, text=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fat_names(image: Path, part: dict[str, Any], directory: str) -> set[str]:
    """The names in a FAT directory (long names), without . and .."""
    out = mtools("mdir", image, part, "-b", f"::{directory}")
    return {line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()} - {".", ".."}


def debugfs(partition: Path, command: str) -> str:
    proc = subprocess.run(["debugfs", "-R", command, str(partition)], capture_output=True, text=True, check=True)
    return proc.stdout


def test_partition_table(project: Path) -> None:
    image = project / "mkosi.output/xbl.raw"
    parts = partitions(image)
    assert [p["type"].lower() for p in parts] == [ESP_TYPE, XBOOTLDR_TYPE, ROOT_X86_64_TYPE]
    xbootldr = by_type(image, XBOOTLDR_TYPE)
    assert xbootldr["name"] == "xbootldr"
    assert xbootldr["size"] * 512 == 300 * MiB
    assert by_type(image, ESP_TYPE)["size"] * 512 == 256 * MiB   # ESPSize='s default
    assert xbootldr["start"] * 512 % MiB == 0
    # The file system's own label, read at the partition's offset.
    assert "XBOOTLDR" in mtools("mlabel", image, xbootldr, "-s", "::")
    probe = subprocess.run(["blkid", "-p", "-O", str(xbootldr["start"] * 512), "-o", "export", str(image)],
                           capture_output=True, text=True, check=True).stdout
    assert "TYPE=vfat" in probe.splitlines() and "LABEL=XBOOTLDR" in probe.splitlines(), probe


def test_unified_kernel_image_is_on_xbootldr_and_systemd_boot_on_the_esp(project: Path) -> None:
    image = project / "mkosi.output/xbl.raw"
    esp, xbootldr = by_type(image, ESP_TYPE), by_type(image, XBOOTLDR_TYPE)
    ukis = fat_names(image, xbootldr, "/EFI/Linux")
    assert len(ukis) == 1 and next(iter(ukis)).endswith(".efi"), ukis
    assert (project / "mkosi.output/xbl.efi").exists()   # the split UKI, the same file
    uki = next(iter(ukis))
    copy = project / "uki-from-xbootldr.efi"
    mtools("mcopy", image, xbootldr, "-n", f"::/EFI/Linux/{uki}", str(copy))
    assert copy.read_bytes() == (project / "mkosi.output/xbl.efi").read_bytes()
    # systemd-boot and its configuration stay on the ESP; no kernel is left there.
    assert {"systemd-bootx64.efi"} <= fat_names(image, esp, "/EFI/systemd")
    assert {"BOOTX64.EFI"} <= fat_names(image, esp, "/EFI/BOOT")
    assert "loader.conf" in fat_names(image, esp, "/loader")
    assert fat_names(image, esp, "/EFI/Linux") == set()
    assert "loader" not in fat_names(image, xbootldr, "/")   # no Type #1 entries with UKIs


def test_boot_directory_moved_to_xbootldr(project: Path) -> None:
    image = project / "mkosi.output/xbl.raw"
    xbootldr = by_type(image, XBOOTLDR_TYPE)
    top = fat_names(image, xbootldr, "/")
    kernels = {n for n in top if n.startswith("vmlinuz-")}
    assert kernels and any(n.startswith("config-") for n in top), top
    # The root keeps empty /boot and /efi mount points, so that systemd mounts XBOOTLDR at /boot and the ESP
    # at /efi.
    root = project / "mkosi.output/xbl.root.raw"
    for mount_point in ("/boot", "/efi"):
        assert {e.split("/")[5] for e in debugfs(root, f"ls -p {mount_point}").split()} == {".", ".."}, mount_point
    assert "/boot" not in debugfs(root, "cat /etc/fstab")


def boot_report(project: Path) -> str:
    start = time.monotonic()
    proc = run_mkosi(project, "--qemu-boot=uefi", "qemu", timeout=900)
    out = proc.stdout + proc.stderr
    print(f"XBOOTLDR uefi boot to report and poweroff: {time.monotonic() - start:.0f}s", file=sys.stderr)
    line = next((line for line in out.splitlines() if "MKOSI-XBOOTLDR" in line), None)
    assert line is not None, out[-4000:]
    print(line, file=sys.stderr)
    return line


@pytest.mark.slow
def test_boots_with_boot_and_efi_mounted(project: Path) -> None:
    line = boot_report(project)
    assert "boot=[vfat xbootldr ]" in line, line
    assert "efi=[vfat ESP ]" in line, line
    assert ".efi" in line.split("ukis=[")[1].split("]")[0], line
    assert "vmlinuz-" in line.split("kernels=[")[1].split("]")[0], line
    assert "loader.conf" in line.split("loader=[")[1], line


@pytest.mark.slow
def test_type1_entry_on_xbootldr_boots(type1_project: Path) -> None:
    image = type1_project / "mkosi.output/xbl1.raw"
    esp, xbootldr = by_type(image, ESP_TYPE), by_type(image, XBOOTLDR_TYPE)
    entries = fat_names(image, xbootldr, "/loader/entries")
    assert len(entries) == 1, entries
    entry_id = next(iter(entries)).removesuffix(".conf")
    assert entry_id.startswith("xbl1-")
    assert fat_names(image, xbootldr, f"/{entry_id}") == {"linux", "initrd"}
    text = mtools("mtype", image, xbootldr, f"::/loader/entries/{entry_id}.conf")
    assert f"linux /{entry_id}/linux" in text and f"initrd /{entry_id}/initrd" in text, text
    assert fat_names(image, esp, "/loader/entries") == set() and "loader.conf" in fat_names(image, esp, "/loader")
    assert entry_id not in fat_names(image, esp, "/")
    # systemd-boot on the ESP finds the entry on the XBOOTLDR partition and boots it.
    line = boot_report(type1_project)
    assert "boot=[vfat xbootldr ]" in line, line
    assert "ukis=[]" in line, line
