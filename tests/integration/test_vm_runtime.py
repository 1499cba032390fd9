"""Running a bootable Debian image (built once): logging in on the serial console with a root password
given as a credential at run time, `mkosi ssh` into a container started with `boot`, and two VMs at
once, each reachable by `mkosi ssh`, with runtime trees, an extra drive, a TPM and extra kernel
command line options. Three VM boots in all (TCG where KVM does not work)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.integration.conftest import REPO, run_mkosi

pytestmark = pytest.mark.integration

PASSWORD = "runtime-Secret-42"
# The VMs boot the kernel directly: no firmware to wait for under TCG.
VM = ("--firmware=linux", "--ephemeral")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("vm-runtime")
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_ext4
Bootable=yes
BootProtocols=uefi,linux
SplitArtifacts=yes
ImageId=rtimg

[Partitions]
RootSize=2G

[Content]
PackageCacheDirectory={package_cache}

[Host]
QemuHeadless=yes
Ssh=yes
""")
    (d / "mkosi.output").mkdir()
    start = time.monotonic()
    run_mkosi(d, "build", timeout=3000)
    print(f"bootable build took {time.monotonic() - start:.0f}s", file=sys.stderr)
    return d


def mkosi_argv(project: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "mkosi", "-C", str(project), *argv]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def background(project: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Machines started in the background; killed (with everything they started) at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def start(project: Path, procs: list[subprocess.Popen[bytes]], log: Path, *argv: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(mkosi_argv(project, *argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    procs.append(proc)
    return proc


def records(project: Path) -> dict[str, dict[str, object]]:
    directory = project / "mkosi.output/.mkosi-machines"
    return {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json")} if directory.is_dir() else {}


def wait_for_record(project: Path, machine: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = records(project).get(machine)
        if found is not None:
            return found
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no record of {machine}: {log.read_text()[-3000:]}")


def test_root_password_credential_logs_in_on_the_serial_console(project: Path) -> None:
    """No rebuild: the image's root is locked; a credential given to `mkosi vm` sets the password."""
    argv = mkosi_argv(project, *VM, "--console=interactive",
                      f"--credential=passwd.plaintext-password.root={PASSWORD}", "vm")
    began = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], env=ENV, timeout=600, encoding="utf-8", codec_errors="replace")
    transcript: list[str] = []
    try:
        child.expect("login: ")
        transcript.append(str(child.before))
        print(f"mkosi vm -> login prompt on the serial console: {time.monotonic() - began:.0f}s", file=sys.stderr)
        assert PASSWORD not in json.dumps(records(project))
        child.sendline("root")
        child.expect("Password: ", timeout=60)
        child.sendline(PASSWORD)
        child.expect("# ", timeout=120)
        child.sendline("echo LOGGED-IN-$((6*7)); systemctl is-active mkosi-root-password.service")
        child.expect("LOGGED-IN-42", timeout=60)
        child.expect("active", timeout=60)
        child.sendline("systemctl poweroff")
        child.expect(pexpect.EOF, timeout=300)
    except pexpect.ExceptionPexpect:
        print("".join(transcript) + str(child.before), file=sys.stderr)
        raise
    finally:
        child.close(force=True)
    assert "Login incorrect" not in "".join(transcript) + str(child.before)
    assert child.exitstatus == 0, child.before
    assert records(project) == {}


def test_ssh_into_a_boot_container(project: Path, background: list[subprocess.Popen[bytes]]) -> None:
    log = project / "container.log"
    hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=PASSWORD, capture_output=True, text=True,
                            check=True).stdout.strip()
    proc = start(project, background, log, "--ephemeral", f"--credential=passwd.hashed-password.root={hashed}",
                 "--credential=mkosi.autologin=yes", "boot")
    record = wait_for_record(project, "rtimg", proc, log)
    assert record["kind"] == "container" and hashed not in json.dumps(record)
    began = time.monotonic()
    out = run_mkosi(project, "ssh", "cat /etc/os-release; grep ^root: /etc/shadow; "
                    "systemctl cat console-getty.service", timeout=300)
    print(f"boot container -> working mkosi ssh: {time.monotonic() - began:.0f}s", file=sys.stderr)
    assert "ID=debian" in out.stdout
    assert f"root:{hashed}:" in out.stdout                     # the credential set root's password
    assert "--autologin root" in out.stdout                    # and mkosi.autologin=yes the console login
    assert out.stderr.count("Waiting for container") <= 1      # one progress line, no connection errors
    assert "Connection refused" not in out.stderr
    run_mkosi(project, "ssh", "systemctl", "--no-block", "poweroff", check=False, timeout=60)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert records(project) == {}
    assert hashed not in log.read_text()


@pytest.mark.slow
def test_two_vms_at_once_each_reachable(project: Path, background: list[subprocess.Popen[bytes]],
                                        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    began = time.monotonic()
    one_log, two_log = project / "vm-one.log", project / "vm-two.log"
    one = start(project, background, one_log, *VM, "--machine=one", f"--runtime-tree={shared}:/root/shared",
                "--kernel-command-line-extra=mkosi.test.extra=1", "--console=read-only", "vm")
    two = start(project, background, two_log, *VM, "--machine=two", "--tpm=yes", "--drive=scratch:64M",
                "--qemu-args=-device virtio-blk-pci,drive=scratch,serial=scratch", "--console=read-only", "vm")
    rec_one = wait_for_record(project, "one", one, one_log)
    rec_two = wait_for_record(project, "two", two, two_log)
    assert rec_one["port"] != rec_two["port"]
    try:
        first = run_mkosi(project, "--machine=one", "ssh", "hostname; cat /root/shared/hello.txt; cat /proc/cmdline",
                          timeout=900)
        print(f"mkosi vm -> working mkosi ssh (two VMs booting at once, TCG unless KVM works): "
              f"{time.monotonic() - began:.0f}s", file=sys.stderr)
        assert "from the host" in first.stdout and "mkosi.test.extra=1" in first.stdout
        second = run_mkosi(project, "--machine=two", "ssh", "ls /dev/tpmrm0 /dev/disk/by-id/", timeout=900)
        assert "/dev/tpmrm0" in second.stdout and "virtio-scratch" in second.stdout
        # Without --machine= and with two running, ssh asks which one.
        ambiguous = run_mkosi(project, "ssh", "true", check=False, timeout=60)
        assert ambiguous.returncode != 0 and "one, two" in ambiguous.stderr
        # The guest writes through to the host's directory.
        run_mkosi(project, "--machine=one", "ssh", "echo back > /root/shared/reply.txt", timeout=120)
        assert (shared / "reply.txt").read_text() == "back\n"
    except BaseException:
        print(one_log.read_text()[-3000:], two_log.read_text()[-3000:], file=sys.stderr)
        raise
    for machine in ("one", "two"):
        run_mkosi(project, f"--machine={machine}", "ssh", "systemctl", "--no-block", "poweroff", check=False,
                  timeout=60)
    assert one.wait(timeout=300) == 0 and two.wait(timeout=300) == 0
    assert records(project) == {}
    assert not list(Path("/var/tmp").glob("mkosi-drive-two-*"))
