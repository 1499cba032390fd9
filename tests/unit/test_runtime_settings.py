"""BindUser=, UnitProperties=, Register=, ForwardJournal=, StorageTargetMode=, VirtualMachineMonitor=,
CXL= and SshCertificate=: the nspawn, qemu, systemd-run, systemd-vmspawn, journal-remote and storagetm
command lines they make, and their errors. Nothing is booted."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest

from mkosi import container, runtime, sandbox, serve, vm
from mkosi.config.enums import BootProtocol, ConsoleMode, Feature, Firmware, QemuKvm, RuntimeNetwork, Verb, Vmm
from mkosi.config.settings import Args, Config
from mkosi.errors import MkosiError
from mkosi.formats import OutputFormat
from mkosi.summary import not_implemented
from tests.unit.test_container import fake_run, tree_config
from tests.unit.test_vm_runtime import argv_of, fake_vm_run, firmware, opt, vm_config

__all__ = ["firmware"]   # the fixture, used by name

SHELL = Args(verb=Verb.shell)
BOOT = Args(verb=Verb.boot)

# A user that exists everywhere and is not root.
NOBODY = pwd.getpwnam("nobody")


def with_systemd(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    for module in (sandbox, runtime):
        monkeypatch.setattr(module, "host_has_systemd", lambda: present)


def as_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_UID", str(NOBODY.pw_uid))


# ---- Register= --------------------------------------------------------------------------------


@pytest.mark.parametrize("register, systemd, flag", [
    (None, False, "--register=no"), (None, True, None), (False, True, "--register=no"),
    (True, True, "--register=yes"), (True, False, "--register=no")])
def test_nspawn_register_flag(monkeypatch: pytest.MonkeyPatch, register: Optional[bool], systemd: bool,
                              flag: Optional[str]) -> None:
    with_systemd(monkeypatch, systemd)
    argv = sandbox.nspawn_base_args(None, "systemd-nspawn", register)
    assert [a for a in argv if a.startswith("--register")] == ([flag] if flag else [])


def test_want_register(monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    monkeypatch.setattr(runtime, "machined_available", lambda: False)
    assert runtime.want_register(dataclasses.replace(config, register=Feature.auto)) is False
    assert runtime.want_register(dataclasses.replace(config, register=Feature.disabled)) is False
    with pytest.raises(MkosiError, match=r"Register=yes.*machined"):
        runtime.want_register(dataclasses.replace(config, register=Feature.enabled))
    monkeypatch.setattr(runtime, "machined_available", lambda: True)
    assert runtime.want_register(dataclasses.replace(config, register=Feature.auto)) is True
    assert runtime.want_register(dataclasses.replace(config, register=Feature.disabled)) is False


def test_this_host_has_no_machined_so_auto_keeps_register_no(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    with_systemd(monkeypatch, False)
    calls = fake_run(monkeypatch, tmp_path)
    container.run_container(SHELL, tree_config(tmp_path, "image", settings=False), boot=False)
    assert "--register=no" in calls[0]["argv"] and "--register=yes" not in calls[0]["argv"]
    config = dataclasses.replace(tree_config(tmp_path, "other", settings=False), register=Feature.enabled)
    with pytest.raises(MkosiError, match="Register=yes"):
        container.run_container(SHELL, config, boot=False)


def test_container_registers_where_machined_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_systemd(monkeypatch, True)
    monkeypatch.setattr(runtime, "machined_available", lambda: True)
    calls = fake_run(monkeypatch, tmp_path)
    container.run_container(SHELL, tree_config(tmp_path, "image", settings=False), boot=False)
    assert "--register=yes" in calls[0]["argv"]
    config = dataclasses.replace(tree_config(tmp_path, "two", settings=False), register=Feature.disabled)
    container.run_container(SHELL, config, boot=False)
    assert "--register=no" in calls[1]["argv"]


def test_machined_register_call() -> None:
    argv = runtime.machined_register_argv("varlinkctl", "box", 1234, 77, 2222)
    assert argv[:4] == ["varlinkctl", "call", str(runtime.MACHINED_VARLINK), "io.systemd.Machine.Register"]
    assert json.loads(argv[4]) == {"name": "box", "class": "vm", "service": "mkosi", "leader": 1234,
                                   "vSockCid": 77, "sshAddress": "127.0.0.1:2222"}
    assert "vSockCid" not in json.loads(runtime.machined_register_argv("v", "b", 1, None, None)[4])


def test_register_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(runtime, "run", run)
    monkeypatch.setattr(runtime, "machined_available", lambda: True)
    monkeypatch.setattr(runtime, "find_tool", lambda name: None)
    runtime.register_vm(Config(), "box", None, None)   # auto: no varlinkctl, skipped
    assert ran == []
    with pytest.raises(MkosiError, match="varlinkctl"):
        runtime.register_vm(dataclasses.replace(Config(), register=Feature.enabled), "box", None, None)
    monkeypatch.setattr(runtime, "find_tool", lambda name: "/usr/bin/varlinkctl")
    monkeypatch.setattr(runtime, "MACHINED_VARLINK", Path("/"))   # "exists"
    runtime.register_vm(Config(), "box", 9, None)
    assert ran[0][0] == "/usr/bin/varlinkctl" and json.loads(ran[0][4])["leader"] == os.getpid()


# ---- UnitProperties= --------------------------------------------------------------------------


def test_unit_properties_reach_nspawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_systemd(monkeypatch, True)
    calls = fake_run(monkeypatch, tmp_path)
    config = dataclasses.replace(tree_config(tmp_path, "image", settings=False),
                                 unit_properties=["MemoryMax=1G", "CPUQuota=50%"])
    container.run_container(SHELL, config, boot=False)
    argv = calls[0]["argv"]
    assert [a for a in argv if a.startswith("--property=")] == ["--property=MemoryMax=1G", "--property=CPUQuota=50%"]


def test_unit_properties_without_systemd_are_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with_systemd(monkeypatch, False)
    fake_run(monkeypatch, tmp_path)
    config = dataclasses.replace(tree_config(tmp_path, "image", settings=False), unit_properties=["MemoryMax=1G"])
    with pytest.raises(MkosiError, match=r"UnitProperties=.*scope"):
        container.run_container(SHELL, config, boot=False)
    with_systemd(monkeypatch, True)
    with pytest.raises(MkosiError, match="NspawnKeepUnit=yes"):
        container.run_container(SHELL, dataclasses.replace(config, nspawn_keep_unit=True), boot=False)


def test_unit_properties_put_qemu_in_a_scope(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = vm_config(tmp_path, unit_properties=["MemoryMax=3G"])
    with_systemd(monkeypatch, False)
    with pytest.raises(MkosiError, match="systemd-run"):
        argv_of(tmp_path, config)
    with_systemd(monkeypatch, True)
    monkeypatch.setattr(runtime, "find_tool", lambda name: f"/usr/bin/{name}")
    argv = argv_of(tmp_path, config)
    assert argv[:6] == ["/usr/bin/systemd-run", "--scope", "--quiet", "--collect", "--property=MemoryMax=3G", "--"]
    assert argv[6] == "qemu-system-x86_64"
    assert argv_of(tmp_path, vm_config(tmp_path))[0] == "qemu-system-x86_64"


# ---- BindUser= ----------------------------------------------------------------------------------


def test_invoking_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.delenv("SUDO_UID", raising=False)
    with pytest.raises(MkosiError, match="root"):
        runtime.invoking_user()
    as_sudo_user(monkeypatch)
    user = runtime.invoking_user()
    assert (user.name, user.uid, user.home) == (NOBODY.pw_name, NOBODY.pw_uid, Path(NOBODY.pw_dir))


def test_bind_user_in_a_container(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = fake_run(monkeypatch, tmp_path)
    as_sudo_user(monkeypatch)
    config = dataclasses.replace(tree_config(tmp_path, "image", settings=False), bind_user=True)
    container.run_container(BOOT, config, boot=True)
    argv = calls[0]["argv"]
    assert f"--bind-user={NOBODY.pw_name}" in argv
    # nspawn refuses --bind-user= without a user namespace; the image is idmapped, not chowned.
    assert "--private-users=pick" in argv and "--private-users-ownership=map" in argv
    container.run_container(SHELL, tree_config(tmp_path, "plain", settings=False), boot=False)
    assert not any(a.startswith(("--bind-user", "--private-users")) for a in calls[1]["argv"])


def test_bind_user_in_a_vm(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_sudo_user(monkeypatch)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    started: list[list[str]] = []
    calls = fake_vm_run(monkeypatch, started)
    monkeypatch.setattr(vm, "find_virtiofsd", lambda: "/usr/libexec/virtiofsd")
    vm.run_vm(Args(), vm_config(tmp_path, bind_user=True))
    # The home directory is a virtiofs share at the same path...
    assert any(f"--shared-dir={NOBODY.pw_dir}" in a for argv in started for a in argv)
    assert any("tag=mkosi-tree-0" in a for a in opt(calls[0], "-device"))
    creds = fake_vm_run.credentials   # type: ignore[attr-defined]
    decoded = {c.split(":", 1)[1].split("=", 1)[0]: c for c in creds}
    assert set(decoded) >= {"fstab.extra", "sysusers.extra"}
    def value(name: str) -> str:
        return base64.b64decode(decoded[name].split("=", 1)[1]).decode()

    assert value("fstab.extra") == f"mkosi-tree-0 {NOBODY.pw_dir} virtiofs defaults 0 0\n"
    # ...and sysusers makes the user with the host's uid and gid.
    assert value("sysusers.extra").splitlines() == [
        f"g {NOBODY.pw_name} {NOBODY.pw_gid}",
        f'u {NOBODY.pw_name} {NOBODY.pw_uid}:{NOBODY.pw_gid} "{NOBODY.pw_gecos.split(",")[0] or NOBODY.pw_name}" '
        f"{NOBODY.pw_dir} {NOBODY.pw_shell}"]


# ---- ForwardJournal= ----------------------------------------------------------------------------


def test_journal_remote_command_line(tmp_path: Path) -> None:
    assert runtime.journal_remote_argv("jr", tmp_path / "m.journal", "/run/sock") == [
        "jr", f"--output={tmp_path}/m.journal", "--split-mode=none", "--listen-raw=/run/sock"]
    assert runtime.journal_remote_argv("jr", tmp_path / "logs", "vsock:2:7000")[2:] == [
        "--split-mode=host", "--listen-raw=vsock:2:7000"]


def test_forward_journal_from_a_container(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = fake_run(monkeypatch, tmp_path)
    started: list[list[str]] = []

    @contextlib.contextmanager
    def background(argv: list[str], what: str, ready: Optional[Path] = None) -> Any:
        started.append(argv)
        yield None

    monkeypatch.setattr(container, "background", background)
    monkeypatch.setattr(runtime, "find_first_tool", lambda candidates: "/usr/lib/systemd/systemd-journal-remote")
    logs = tmp_path / "logs"
    config = dataclasses.replace(tree_config(tmp_path, "image", settings=False), forward_journal=logs)
    container.run_container(BOOT, config, boot=True)
    (jr,) = started
    sock = jr[-1].removeprefix("--listen-raw=")
    assert jr[:3] == ["/usr/lib/systemd/systemd-journal-remote", f"--output={logs}", "--split-mode=host"]
    assert logs.is_dir()
    argv = calls[0]["argv"]
    assert f"--bind={sock}:/run/host/journal/socket" in argv
    cred = next(a for a in argv if a.startswith("--load-credential=journal.forward_to_socket:"))
    assert cred.endswith("/journal.forward_to_socket")   # the value goes in a file, not on the command line


def test_forward_journal_needs_journal_remote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_run(monkeypatch, tmp_path)
    monkeypatch.setattr(runtime, "find_first_tool", lambda candidates: None)
    config = dataclasses.replace(tree_config(tmp_path, "image", settings=False), forward_journal=tmp_path / "j")
    with pytest.raises(MkosiError, match="systemd-journal-remote"):
        container.run_container(BOOT, config, boot=True)


def test_forward_journal_from_a_vm(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    fake_vm_run(monkeypatch, started)
    monkeypatch.setattr(runtime, "find_first_tool", lambda candidates: "/usr/bin/systemd-journal-remote")
    journal = tmp_path / "j" / "vm.journal"
    with pytest.raises(MkosiError, match="vsock"):
        vm.run_vm(Args(), vm_config(tmp_path, forward_journal=journal, vsock=Feature.disabled))
    monkeypatch.setattr(vm, "vsock_cid", lambda config: 42)
    monkeypatch.setattr(vm, "vsock_journal_port", lambda: 7000)
    vm.run_vm(Args(), vm_config(tmp_path, forward_journal=journal))
    assert started[-1] == ["/usr/bin/systemd-journal-remote", f"--output={journal}", "--split-mode=none",
                           "--listen-raw=vsock:2:7000"]
    creds = fake_vm_run.credentials   # type: ignore[attr-defined]
    (cred,) = [c for c in creds if ":journal.forward_to_socket=" in c]
    assert base64.b64decode(cred.split("=", 1)[1]) == b"vsock:2:7000"


# ---- CXL= ---------------------------------------------------------------------------------------


def test_cxl_devices(firmware: Path, tmp_path: Path) -> None:
    assert not any("cxl=on" in a or "pxb-cxl" in a for a in argv_of(tmp_path, vm_config(tmp_path)))
    argv = argv_of(tmp_path, vm_config(tmp_path, cxl=True))
    assert "cxl=on" in opt(argv, "-machine")
    assert "cxl-fmw.0.targets.0=cxl.0,cxl-fmw.0.size=256M" in opt(argv, "-machine")
    devices = opt(argv, "-device")
    assert "pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.0" in devices
    assert any(d.startswith("cxl-type3,bus=cxl-rp0,memdev=cxl-mem0,lsa=cxl-lsa0") for d in devices)
    with pytest.raises(MkosiError, match="x86-64"):
        runtime.cxl_args("aarch64")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64")
def test_qemu_accepts_the_cxl_devices() -> None:
    # The machine is created, paused (-S) and stopped at once: qemu checks every option, nothing boots.
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "512M", "-S", "-display", "none",
            "-monitor", "none", "-nodefaults", *runtime.cxl_args("x86_64")]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return   # still running: every option was accepted
    assert proc.stderr is not None
    pytest.fail(f"qemu refused the CXL options: {proc.stderr.read().decode()}")


# ---- SshCertificate= ----------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("needs openssl and ssh-keygen")
    key, cert = tmp_path / "mkosi.key", tmp_path / "mkosi.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=mkosi test"], check=True, capture_output=True)
    return key, cert


def test_certificate_public_key_is_the_private_keys(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    line = runtime.certificate_public_key(cert)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", key], check=True, capture_output=True, text=True).stdout
    assert line.split()[:2] == derived.split()[:2] and line.startswith("ssh-rsa ")
    with pytest.raises(MkosiError, match="does not exist"):
        runtime.certificate_public_key(cert.with_name("missing.crt"))


def test_ssh_certificate_becomes_the_authorized_keys_credential(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                certificate: tuple[Path, Path]) -> None:
    _, cert = certificate
    calls = fake_run(monkeypatch, tmp_path)
    config = dataclasses.replace(tree_config(tmp_path, "image", settings=False), ssh_certificate=cert)
    container.run_container(BOOT, config, boot=True)
    assert any(a.startswith("--load-credential=ssh.authorized_keys.root:") for a in calls[0]["argv"])
    assert runtime.ssh_credentials(config)["ssh.authorized_keys.root"].startswith(b"ssh-rsa ")
    assert runtime.ssh_credentials(tree_config(tmp_path, "plain", settings=False)) == {}


# ---- StorageTargetMode= -------------------------------------------------------------------------


def test_storage_target_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\0" * 512)
    config = Config()
    monkeypatch.setattr(runtime, "find_storagetm", lambda: "/usr/lib/systemd/systemd-storagetm")
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert runtime.want_storagetm(config, image) == "/usr/lib/systemd/systemd-storagetm"
    assert runtime.want_storagetm(config, None) is None   # auto: not a disk image
    assert runtime.want_storagetm(dataclasses.replace(config, storage_target_mode=Feature.disabled), image) is None
    monkeypatch.setattr(runtime, "find_storagetm", lambda: None)
    assert runtime.want_storagetm(config, image) is None
    with pytest.raises(MkosiError, match=r"StorageTargetMode=yes.*systemd-storagetm was not found"):
        runtime.want_storagetm(dataclasses.replace(config, storage_target_mode=Feature.enabled), image)
    assert runtime.storagetm_argv("storagetm", "box", image) == ["storagetm", "--nqn=mkosi-box", str(image)]


def test_serve_starts_storagetm_beside_the_http_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    image = out / "image.raw"
    image.write_bytes(b"\0" * 512)
    config = dataclasses.replace(Config(), format=OutputFormat("disk"), output=image, output_dir=out,
                                 storage_target_mode=Feature.enabled)
    events: list[Any] = []

    @contextlib.contextmanager
    def background(argv: list[str], what: str, ready: Optional[Path] = None) -> Any:
        events.append(argv)
        yield None
        events.append("stopped")

    monkeypatch.setattr(serve, "background", background)
    monkeypatch.setattr(serve, "served_files", lambda config: {"image.raw": image})
    monkeypatch.setattr(serve, "serve", lambda files, port, bind: events.append("http"))
    monkeypatch.setattr(serve, "want_storagetm", lambda config, img: "/usr/lib/systemd/systemd-storagetm")
    assert serve.run_serve(config) == 0
    assert events == [["/usr/lib/systemd/systemd-storagetm", "--nqn=mkosi-image", str(image)], "http", "stopped"]


# ---- VirtualMachineMonitor=vmspawn ----------------------------------------------------------------


def vmspawn_config(tmp_path: Path, **changes: Any) -> Config:
    base: dict[str, Any] = {"vmm": Vmm.vmspawn, "format": OutputFormat("disk"), "qemu_boot": BootProtocol.uefi}
    base.update(changes)
    return vm_config(tmp_path, **base)


def test_vmspawn_command_line(tmp_path: Path) -> None:
    config = vmspawn_config(tmp_path, qemu_smp="3", qemu_mem="3G", qemu_kvm=QemuKvm.yes, vsock=Feature.enabled,
                            vsock_cid="77", tpm=Feature.disabled, machine="box", console=ConsoleMode.read_only,
                            kernel_command_line_extra=["quiet"], forward_journal=tmp_path / "j",
                            unit_properties=["MemoryMax=4G"])
    argv = vm.vmspawn_argv(Args(cmdline=["--pass-ssh-key=no", "systemd.log_level=debug"]), config,
                           "/usr/bin/systemd-vmspawn", register=False,
                           credentials={"greeting": tmp_path / "greeting"}, bind_user="alice")
    assert argv[0] == "/usr/bin/systemd-vmspawn"
    for flag in ("--machine=box", "--cpus=3", "--ram=3G", "--register=no", "--console=read-only",
                 f"--image={config.output}", "--kvm=yes", "--vsock=yes", "--vsock-cid=77", "--tpm=no",
                 "--network-user-mode", "--bind-user=alice", f"--load-credential=greeting:{tmp_path}/greeting",
                 f"--forward-journal={tmp_path}/j", "--property=MemoryMax=4G"):
        assert flag in argv, flag
    assert argv[-3:] == ["--pass-ssh-key=no", "systemd.log_level=debug", "quiet"]


def test_vmspawn_directory_kernel_and_network(tmp_path: Path) -> None:
    tree = tmp_path / "out" / "tree"
    tree.mkdir(parents=True)
    kernel = tmp_path / "vmlinuz"
    argv = vm.vmspawn_argv(Args(), vmspawn_config(tmp_path, format=OutputFormat("directory"), output=tree,
                                                  firmware=Firmware.linux_noinitrd, linux=str(kernel),
                                                  runtime_network=RuntimeNetwork.interface),
                           "vmspawn", register=True, credentials={})
    assert f"--directory={tree}" in argv and f"--linux={kernel}" in argv and "--network-tap" in argv
    assert "--register=yes" in argv and not any(a.startswith("--initrd") for a in argv)
    assert not any(a.startswith("--console") for a in vm.vmspawn_argv(   # interactive: vmspawn's default
        Args(), vmspawn_config(tmp_path, console=ConsoleMode.interactive), "vmspawn", register=False,
        credentials={}))
    secure = vm.vmspawn_argv(Args(), vmspawn_config(tmp_path, firmware=Firmware.uefi_secure_boot), "vmspawn",
                             register=False, credentials={})
    assert "--secure-boot=yes" in secure and not any(a.startswith("--network") for a in
                                                     vm.vmspawn_argv(Args(), vmspawn_config(
                                                         tmp_path, runtime_network=RuntimeNetwork.none),
                                                         "vmspawn", register=False, credentials={}))


@pytest.mark.parametrize("changes, error", [
    ({"format": OutputFormat("tar")}, "disk images and directories"),
    ({"qemu_boot": BootProtocol.bios}, "BIOS"),
    ({"cxl": True}, "CXL="),
    ({"drives": ["a:1G"]}, "Drives="),
    ({"qemu_args": ["-device", "x"]}, "QemuArgs="),
])
def test_vmspawn_refuses_what_it_cannot_do(tmp_path: Path, changes: dict[str, Any], error: str) -> None:
    with pytest.raises(MkosiError, match=error):
        vm.vmspawn_argv(Args(), vmspawn_config(tmp_path, **changes), "vmspawn", register=False, credentials={})


def test_vmspawn_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "find_tool", lambda name: None)
    with pytest.raises(MkosiError, match="systemd-vmspawn was not found"):
        vm.run_vm(Args(), vmspawn_config(tmp_path))


def test_run_vm_with_vmspawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_vm_run(monkeypatch)
    monkeypatch.setattr(vm, "find_tool", lambda name: "/tools/usr/bin/systemd-vmspawn")
    monkeypatch.setattr(runtime, "machined_available", lambda: False)
    vm.run_vm(Args(), vmspawn_config(tmp_path, credentials=["token=s3cret"]))
    (argv,) = calls
    assert argv[0] == "/tools/usr/bin/systemd-vmspawn" and "--register=no" in argv
    cred = next(a for a in argv if a.startswith("--load-credential=token:"))
    assert "s3cret" not in " ".join(argv) and cred.endswith("/token")


# ---- summary ------------------------------------------------------------------------------------


def test_summary_no_longer_calls_them_not_implemented(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), bind_user=True, unit_properties=["MemoryMax=1G"],
                                 register=Feature.enabled, forward_journal=tmp_path / "j", cxl=True,
                                 storage_target_mode=Feature.enabled, vmm=Vmm.vmspawn,
                                 ssh_certificate=tmp_path / "c.crt")
    assert not_implemented(config) == {}


def test_build_authorizes_the_certificates_key_when_ssh_key_has_no_pub(tmp_path: Path,
                                                                       certificate: tuple[Path, Path]) -> None:
    from mkosi import build
    from tests.unit.test_build_steps import ctx_for

    key, cert = certificate
    ctx = ctx_for(tmp_path / "root", ssh=True, ssh_key=key, ssh_certificate=cert)
    build.configure_ssh(ctx)
    authorized = (ctx.root / "root/.ssh/authorized_keys").read_text()
    assert authorized == runtime.certificate_public_key(cert) + "\n"
    # A key with its .pub keeps using the .pub.
    key.with_name("mkosi.key.pub").write_text("ssh-ed25519 AAAA own\n")
    build.configure_ssh(ctx_for(tmp_path / "root2", ssh=True, ssh_key=key, ssh_certificate=cert))
    assert (tmp_path / "root2/root/.ssh/authorized_keys").read_text() == "ssh-ed25519 AAAA own\n"
