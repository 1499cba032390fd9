"""Bootable images: build once (UEFI + BIOS + direct kernel boot, Secure Boot signed with signed expected
PCR values, Ssh=yes),
then boot each way under qemu (TCG when KVM does not work) until a marker unit reports in."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkosi.boot.pcrsig import public_key_pem, stub_sections
from mkosi.boot.pe import read_pe
from tests.integration.conftest import REPO, run_mkosi
from tests.unit.test_pcrsig import calculate, check_signature, section

pytestmark = pytest.mark.integration

MARKER_UNIT = """\
[Unit]
Description=Report a successful boot on the serial console and power off
ConditionKernelCommandLine=!mkosi.test.stay

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "MKOSI-BOOT-MARKER $(cat /proc/cmdline)" > /dev/ttyS0'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""


def install_marker_unit(project: Path) -> None:
    """MARKER_UNIT in the project's mkosi.extra/, enabled for multi-user.target."""
    units = project / "mkosi.extra/etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "mkosi-marker.service").write_text(MARKER_UNIT)
    (units / "multi-user.target.wants/mkosi-marker.service").symlink_to("../mkosi-marker.service")


@pytest.fixture(scope="module")
def boot_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("boot-project")
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_ext4
Bootable=yes
BootProtocols=uefi,bios,linux
SecureBoot=yes
SignExpectedPCR=yes
SplitArtifacts=yes
ImageId=bootimg

[Partitions]
RootSize=2G

[Content]
Cache={package_cache}

[Host]
QemuHeadless=yes
Ssh=yes
SshTimeout=240
""")
    install_marker_unit(d)
    (d / "mkosi.output").mkdir()
    run_mkosi(d, "genkey")
    start = time.monotonic()
    # -i: test_rebuild_reuses_the_initrd builds again and expects the initrd of this build to be reused.
    proc = run_mkosi(d, "-i", "build", timeout=3000)
    (d / "first-build.log").write_text(proc.stdout + proc.stderr)
    print(f"bootable build took {time.monotonic() - start:.0f}s", file=sys.stderr)
    return d


def debugfs(partition: Path, command: str) -> str:
    proc = subprocess.run(["debugfs", "-R", command, str(partition)], capture_output=True, text=True, check=True)
    return proc.stdout


def boot(project: Path, protocol: str, *extra: str, timeout: int = 420) -> tuple[str, float]:
    start = time.monotonic()
    proc = run_mkosi(project, f"--qemu-boot={protocol}", "qemu", *extra, timeout=timeout)
    return proc.stdout + proc.stderr, time.monotonic() - start


def test_layout(boot_project: Path) -> None:
    image = boot_project / "mkosi.output/bootimg.raw"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    types = [p["type"].lower() for p in table["partitions"]]
    assert "21686148-6449-6e6f-744e-656564454649" in types  # BIOS boot
    assert "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" in types  # ESP
    assert "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" in types  # x86-64 root
    for suffix in (".vmlinuz", ".initrd", ".cmdline", ".efi", ".root.raw"):
        assert (boot_project / f"mkosi.output/bootimg{suffix}").exists(), suffix
    assert (boot_project / "mkosi.output/id_ed25519").exists()


def test_secure_boot_signature(boot_project: Path) -> None:
    uki = boot_project / "mkosi.output/bootimg.efi"
    cert = boot_project / "mkosi.secure-boot.crt"
    ok = subprocess.run(["sbverify", "--cert", str(cert), str(uki)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    sections = subprocess.run(["objdump", "-h", str(uki)], capture_output=True, text=True, check=True).stdout
    for name in (".osrel", ".cmdline", ".linux", ".initrd", ".pcrpkey", ".pcrsig"):
        assert name in sections


def test_expected_pcr_signature_matches_the_uki(boot_project: Path, tmp_path: Path) -> None:
    """SignExpectedPCR=yes: the .pcrsig of the signed UKI is a signature, by the Secure Boot key, of the
    PCR 11 values that systemd-measure calculate gives for the sections the UKI's stub measures."""
    uki = boot_project / "mkosi.output/bootimg.efi"
    cert = boot_project / "mkosi.secure-boot.crt"
    assert section(uki, ".pcrpkey") == public_key_pem(cert)
    first_added = min(s.raw_offset for s in read_pe(uki).sections if s.name == ".osrel")
    stub = tmp_path / "stub"
    stub.write_bytes(uki.read_bytes()[:first_added])     # the stub's own part of the UKI
    known = stub_sections(stub)
    assert known is not None and ".linux" in known
    names = [n for n in (".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".pcrpkey") if n in known]
    check_signature(json.loads(section(uki, ".pcrsig")), cert, calculate(tmp_path, uki, names))


def test_rebuild_reuses_the_initrd(boot_project: Path) -> None:
    """A change that does not shape the initrd rebuilds the image with -i without running dracut, and
    the distribution's kernel hooks never put an initrd of their own into the image. (The boot tests
    after this one boot the rebuilt image.)"""
    first_log = (boot_project / "first-build.log").read_text()
    # One initrd, ours (the distribution's hook would print "dracut: Generating /boot/initrd.img-...").
    assert len(re.findall(r"Building the initrd for kernel \S+ with dracut done in", first_log)) == 1, first_log
    assert "Generating /boot/initrd.img" not in first_log
    assert "falling back to default" not in first_log   # dracut found zstd in the image
    initrd = (boot_project / "mkosi.output/bootimg.initrd").read_bytes()
    (boot_project / "mkosi.extra/etc/motd").write_text("rebuilt\n")
    start = time.monotonic()
    proc = run_mkosi(boot_project, "-i", "-f", "build", timeout=3000)
    print(f"incremental bootable rebuild took {time.monotonic() - start:.0f}s", file=sys.stderr)
    log = proc.stdout + proc.stderr
    assert "Reusing the cached initrd for kernel" in log, log[-3000:]
    assert "Building the initrd" not in log
    assert (boot_project / "mkosi.output/bootimg.initrd").read_bytes() == initrd
    root = boot_project / "mkosi.output/bootimg.root.raw"
    assert "rebuilt" in debugfs(root, "cat /etc/motd")
    boot_dir = debugfs(root, "ls /boot")
    assert "vmlinuz-" in boot_dir and "initrd.img" not in boot_dir, boot_dir
    # The hooks are the packages' own again, for the image's later kernel updates.
    hook = debugfs(root, "cat /etc/kernel/postinst.d/dracut")
    assert "dracut" in hook and "mkosi" not in hook, hook
    assert "mkosi" not in debugfs(root, "cat /var/lib/dpkg/diversions")


@pytest.mark.parametrize("protocol", ["uefi", "bios", "linux"])
def test_boots(boot_project: Path, protocol: str) -> None:
    out, seconds = boot(boot_project, protocol)
    print(f"{protocol} boot to marker and poweroff: {seconds:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert "root=PARTLABEL=bootimg" in out


def test_ssh_into_vm(boot_project: Path) -> None:
    cmd = [sys.executable, "-m", "mkosi", "-C", str(boot_project), "--qemu-boot=linux", "qemu", "mkosi.test.stay"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = boot_project / "vm.log"
    with open(log, "w") as out:
        vm = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    try:
        proc = run_mkosi(boot_project, "ssh", "cat", "/etc/os-release", timeout=400)
        assert "ID=debian" in proc.stdout
        run_mkosi(boot_project, "ssh", "systemctl", "--no-block", "poweroff", check=False, timeout=120)
        vm.wait(timeout=180)
    except BaseException:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        if vm.poll() is None:
            os.killpg(vm.pid, signal.SIGKILL)  # mkosi and the qemu it started
            vm.wait()


@pytest.fixture(scope="module")
def verity_project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("verity-boot")
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_squashfs
Bootable=yes
Verity=yes
ImageId=verityimg

[Content]
Cache={package_cache}

[Host]
QemuHeadless=yes
""")
    install_marker_unit(d)
    (d / "mkosi.output").mkdir()
    run_mkosi(d, "build", timeout=3000)
    return d


def test_verity_protected_root_boots(verity_project: Path) -> None:
    roothash = (verity_project / "mkosi.output/verityimg.roothash").read_text().strip()
    out, seconds = boot(verity_project, "uefi")
    print(f"verity uefi boot to marker and poweroff: {seconds:.0f}s", file=sys.stderr)
    assert "MKOSI-BOOT-MARKER" in out, out[-3000:]
    assert f"roothash={roothash}" in out
    assert "root=/dev/mapper/root" in out
