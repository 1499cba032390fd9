"""The [Runtime] settings of vm/qemu, boot and shell: the qemu and nspawn command lines they make, the
machine records `mkosi ssh` finds machines with, and the generator that applies login credentials."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

import mkosi.run
from mkosi import container, qemu, runtime, ssh, vm
from mkosi.config import load_args
from mkosi.config.enums import BootProtocol, ConsoleMode, Feature, Firmware, QemuKvm, RuntimeNetwork, Verb
from mkosi.config.settings import Args, Config
from mkosi.config.types import ConfigTree
from mkosi.errors import MkosiError
from mkosi.formats import OutputFormat
from mkosi.sandbox import Sandbox
from mkosi.summary import summary_json, summary_text
from tests.markers import needs_tools


def opt(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


@pytest.fixture
def firmware(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Fake OVMF and SeaBIOS files, found by every lookup."""
    fw = tmp_path / "fw"
    fw.mkdir()
    for name in ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", "OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd",
                 "bios-256k.bin"):
        (fw / name).write_bytes(name.encode())

    def find_ovmf(arch: str = "x86_64", *, secure_boot: bool = False, root: Path = Path("/")) -> tuple[Path, Path]:
        return fw / ("OVMF_CODE_4M.secboot.fd" if secure_boot else "OVMF_CODE_4M.fd"), fw / "OVMF_VARS_4M.fd"

    monkeypatch.setattr(qemu, "find_ovmf", find_ovmf)
    monkeypatch.setattr(vm, "find_ovmf", find_ovmf)
    monkeypatch.setattr(qemu, "find_seabios", lambda root=Path("/"): fw / "bios-256k.bin")
    monkeypatch.setattr(vm, "find_tool", lambda name: None)   # no swtpm, no virtiofsd unless a test says so
    return fw


def vm_config(tmp_path: Path, **changes: Any) -> Config:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    image = out / "image.raw"
    if not image.exists():
        image.write_bytes(b"\0" * 4096)
    base: dict[str, Any] = {"output": image, "output_dir": out, "qemu_kvm": QemuKvm.no,
                            "qemu_boot": BootProtocol.bios, "compress_output": "no", "architecture": "x86_64",
                            "console": ConsoleMode.native}
    base.update(changes)
    return dataclasses.replace(Config(), **base)


def argv_of(tmp_path: Path, config: Config, args: Args | None = None, **kwargs: Any) -> list[str]:
    return vm.qemu_argv(args or Args(), config, tmp_path, **kwargs)


# ---- CPUs=, RAM=, KVM=, QemuArgs= ---------------------------------------------------------------


def test_cpus_ram_and_qemu_args(firmware: Path, tmp_path: Path) -> None:
    argv = argv_of(tmp_path, vm_config(tmp_path, qemu_smp="3", qemu_mem="3G", qemu_args=["-device", "foo"]))
    assert opt(argv, "-smp") == ["3"] and opt(argv, "-m") == ["3G"]
    assert argv[-2:] == ["-device", "foo"]
    all_cpus = argv_of(tmp_path, vm_config(tmp_path, qemu_smp="0"))
    assert opt(all_cpus, "-smp") == [str(len(os.sched_getaffinity(0)))]


def test_kvm_setting(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert opt(argv_of(tmp_path, vm_config(tmp_path)), "-accel") == ["tcg"]
    monkeypatch.setattr(vm, "probe_kvm", lambda: True)
    assert opt(argv_of(tmp_path, vm_config(tmp_path, qemu_kvm=QemuKvm.auto)), "-accel") == ["kvm"]
    monkeypatch.setattr(vm, "probe_kvm", lambda: False)   # auto falls back to TCG when the probe fails
    assert opt(argv_of(tmp_path, vm_config(tmp_path, qemu_kvm=QemuKvm.auto)), "-accel") == ["tcg"]
    assert opt(argv_of(tmp_path, vm_config(tmp_path, qemu_kvm=QemuKvm.yes)), "-accel") == ["kvm"]


# ---- Firmware=, FirmwareVariables=, KernelCommandLineExtra= ----------------------------------


def linux_artifacts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "image.vmlinuz").write_bytes(b"k")
    (out / "image.initrd").write_bytes(b"i")
    (out / "image.cmdline").write_text("root=PARTLABEL=x\n")


def test_firmware_linux_and_kernel_command_line_extra(firmware: Path, tmp_path: Path) -> None:
    linux_artifacts(tmp_path)
    config = vm_config(tmp_path, firmware=Firmware.linux, kernel_command_line_extra=["systemd.unit=rescue.target"])
    argv = argv_of(tmp_path, config, Args(cmdline=["quiet"]))
    assert opt(argv, "-kernel") == [str(tmp_path / "out/image.vmlinuz")]
    assert opt(argv, "-initrd") == [str(tmp_path / "out/image.initrd")]
    assert opt(argv, "-append") == ["root=PARTLABEL=x systemd.unit=rescue.target quiet console=ttyS0"]
    assert not any("kernel-cmdline-extra" in a for a in argv)   # on the command line itself, not SMBIOS
    noinitrd = argv_of(tmp_path, dataclasses.replace(config, firmware=Firmware.linux_noinitrd))
    assert "-initrd" not in noinitrd and "-kernel" in noinitrd


def test_firmware_uefi_variants(firmware: Path, tmp_path: Path) -> None:
    uefi = argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.uefi, kernel_command_line_extra=["a=1,2", "b"]))
    drives = opt(uefi, "-drive")
    assert drives[0].endswith(f"file={firmware}/OVMF_CODE_4M.fd") and "readonly=on" in drives[0]
    assert drives[1].endswith(f"file={tmp_path}/OVMF_VARS.fd")
    assert (tmp_path / "OVMF_VARS.fd").read_bytes() == b"OVMF_VARS_4M.fd"
    # KernelCommandLineExtra= reaches a UKI through SMBIOS (commas doubled for qemu).
    assert "type=11,value=io.systemd.stub.kernel-cmdline-extra=a=1,,2 b" in opt(uefi, "-smbios")
    secure = argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.uefi_secure_boot))
    assert opt(secure, "-machine") == ["q35,smm=on"]
    assert "driver=cfi.pflash01,property=secure,value=on" in opt(secure, "-global")
    assert opt(secure, "-drive")[0].endswith("OVMF_CODE_4M.secboot.fd")
    bios = argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.bios, qemu_boot=BootProtocol.uefi))
    assert opt(bios, "-bios") == [str(firmware / "bios-256k.bin")]
    # auto: the classic QemuBoot= decides.
    assert "-bios" in argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.auto, qemu_boot=BootProtocol.bios))


def test_firmware_variables(firmware: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my-vars.fd"
    mine.write_bytes(b"my variables")
    argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.uefi, firmware_variables=str(mine)))
    assert (tmp_path / "OVMF_VARS.fd").read_bytes() == b"my variables"
    assert mine.read_bytes() == b"my variables"   # the VM writes to a copy
    argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.uefi, firmware_variables="microsoft"))
    assert (tmp_path / "OVMF_VARS.fd").read_bytes() == b"OVMF_VARS_4M.ms.fd"
    with pytest.raises(MkosiError, match="not implemented yet"):
        argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.uefi, firmware_variables="custom"))
    with pytest.raises(MkosiError, match="does not exist"):
        argv_of(tmp_path, vm_config(tmp_path, firmware=Firmware.uefi, firmware_variables=str(tmp_path / "nope")))


# ---- Console= ----------------------------------------------------------------------------------


def test_console_modes(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    interactive = argv_of(tmp_path, vm_config(tmp_path, console=ConsoleMode.interactive))
    assert opt(interactive, "-chardev") == ["stdio,id=console,mux=on,signal=off"]
    assert opt(interactive, "-serial") == ["chardev:console"] and opt(interactive, "-monitor") == ["none"]
    assert "-nographic" not in interactive
    read_only = argv_of(tmp_path, vm_config(tmp_path, console=ConsoleMode.read_only))
    assert opt(read_only, "-chardev") == ["file,id=console,path=/dev/stdout"]
    native = argv_of(tmp_path, vm_config(tmp_path, console=ConsoleMode.native))
    assert "-nographic" in native and "-chardev" not in native
    gui = argv_of(tmp_path, vm_config(tmp_path, console=ConsoleMode.gui))
    assert "-nographic" not in gui and "-display" not in gui
    # The classic QemuHeadless=no keeps its window where there is a display.
    monkeypatch.setenv("DISPLAY", ":0")
    assert "-display" not in argv_of(tmp_path, vm_config(tmp_path, console=ConsoleMode.interactive))
    assert "-display" in argv_of(tmp_path, vm_config(tmp_path, console=ConsoleMode.interactive, qemu_headless=True))


# ---- RuntimeNetwork= ---------------------------------------------------------------------------


def test_runtime_network(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = argv_of(tmp_path, vm_config(tmp_path, ssh=True), ssh_port=40022)
    assert opt(user, "-nic") == ["user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40022-:22"]
    assert opt(argv_of(tmp_path, vm_config(tmp_path)), "-nic") == ["user,model=virtio-net-pci"]
    assert opt(argv_of(tmp_path, vm_config(tmp_path, runtime_network=RuntimeNetwork.none)), "-nic") == ["none"]
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    iface = argv_of(tmp_path, vm_config(tmp_path, runtime_network=RuntimeNetwork.interface))
    assert opt(iface, "-nic") == ["tap,ifname=vt-image,script=no,downscript=no,model=virtio-net-pci"]


# ---- TPM=, VSock= --------------------------------------------------------------------------------


def test_tpm(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = vm_config(tmp_path, tpm=Feature.auto)
    assert not vm.want_tpm(config, BootProtocol.uefi)          # no swtpm: auto is off
    with pytest.raises(MkosiError, match="swtpm"):
        vm.want_tpm(dataclasses.replace(config, tpm=Feature.enabled), BootProtocol.uefi)
    monkeypatch.setattr(vm, "find_tool", lambda name: "/usr/bin/swtpm" if name == "swtpm" else None)
    assert vm.want_tpm(config, BootProtocol.uefi) and not vm.want_tpm(config, BootProtocol.bios)
    assert not vm.want_tpm(dataclasses.replace(config, tpm=Feature.disabled), BootProtocol.uefi)
    sock = tmp_path / "tpm.sock"
    assert qemu.tpm_args(sock) == ["-chardev", f"socket,id=chrtpm,path={sock}", "-tpmdev",
                                   "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
    assert vm.swtpm_argv("swtpm", tmp_path / "st", sock) == [
        "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp_path / 'st'}", "--ctrl", f"type=unixio,path={sock}"]


def test_tpm_reaches_qemu(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "find_tool", lambda name: "/usr/bin/swtpm" if name == "swtpm" else None)
    started: list[list[str]] = []
    argvs = fake_vm_run(monkeypatch, started)
    vm.run_vm(Args(), vm_config(tmp_path, firmware=Firmware.uefi, tpm=Feature.auto))
    assert started[0][:2] == ["/usr/bin/swtpm", "socket"]
    assert "emulator,id=tpm0,chardev=chrtpm" in opt(argvs[0], "-tpmdev")


def test_vsock_only_where_the_host_has_it(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "VHOST_VSOCK", tmp_path / "no-vhost-vsock")
    assert vm.vsock_cid(vm_config(tmp_path)) is None
    with pytest.raises(MkosiError, match="vhost-vsock"):
        vm.vsock_cid(vm_config(tmp_path, vsock=Feature.enabled))
    dev = tmp_path / "vhost-vsock"
    dev.touch()
    monkeypatch.setattr(vm, "VHOST_VSOCK", dev)
    assert vm.vsock_cid(vm_config(tmp_path, vsock_cid="42")) == 42
    hashed = vm.vsock_cid(vm_config(tmp_path, vsock_cid="hash"))
    assert hashed == vm.vsock_cid(vm_config(tmp_path, vsock_cid="hash")) and hashed is not None and hashed >= 3
    assert vm.vsock_cid(vm_config(tmp_path, vsock=Feature.disabled)) is None
    argv = argv_of(tmp_path, vm_config(tmp_path), vsock=42)
    assert "vhost-vsock-pci,guest-cid=42" in opt(argv, "-device")


# ---- Drives= -------------------------------------------------------------------------------------


def test_drives(tmp_path: Path) -> None:
    config = vm_config(tmp_path, drives=[f"a:1M:{tmp_path}", f"b:2M:{tmp_path}:cache.direct=on",
                                         f"c:3M:{tmp_path}::a", f"p:1M:{tmp_path}:::persist"])
    drives = vm.parse_drives(config)
    with vm.drive_files(drives, "box") as argv:
        a, b, p = (tmp_path / f"mkosi-drive-box-{n}" for n in ("a", "b", "p"))
        assert a.stat().st_size == 1 << 20 and b.stat().st_size == 2 << 20
        assert a.stat().st_blocks == 0   # sparse
        assert not (tmp_path / "mkosi-drive-box-c").exists()   # c shares a's file
        specs = opt(argv, "-blockdev")
        assert specs[0] == f"driver=raw,node-name=a,discard=unmap,file.driver=file,file.filename={a}"
        assert specs[1].endswith(",cache.direct=on")
        assert specs[2].startswith("driver=raw,node-name=c,") and f"file.filename={a}" in specs[2]
    assert not a.exists() and not b.exists()
    assert p.exists()   # persist
    # The default directory is /var/tmp.
    assert vm.parse_drives(vm_config(tmp_path, drives=["x:1G"]))[0].directory == Path("/var/tmp")


# ---- Ephemeral=, RuntimeSize= -------------------------------------------------------------------


def fake_vm_run(monkeypatch: pytest.MonkeyPatch, started: list[list[str]] | None = None) -> list[list[str]]:
    """Record the qemu argv (and what the VM would find: image, credential files) instead of running qemu;
    helper processes (swtpm, virtiofsd) are recorded, not started."""
    calls: list[list[str]] = []

    def run_qemu(argv: list[str]) -> None:
        calls.append(list(argv))
        for a in argv:
            if a.startswith("if=none,id=disk0"):
                path = Path(a.split("file=", 1)[1])
                assert path.exists()
        smbios = [a for a in opt(list(argv), "-smbios") if "path=" in a]
        fake_vm_run.credentials = [Path(s.split("path=", 1)[1]).read_text() for s in smbios]  # type: ignore

    class Proc:
        def poll(self) -> int:
            return 0

    @contextlib.contextmanager
    def background(argv: list[str], what: str, ready: Path | None = None) -> Any:
        if started is not None:
            started.append(argv)
        yield Proc()

    monkeypatch.setattr(vm, "run_qemu", run_qemu)
    monkeypatch.setattr(vm, "background", background)
    return calls


def disk_image(path: Path, size: int = 8 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "--quiet", str(path)], input="label: gpt\nsize=2M, type=linux\n", text=True, check=True)
    return path


def test_ephemeral_boots_a_copy(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_vm_run(monkeypatch)
    config = vm_config(tmp_path, ephemeral=True)
    vm.run_vm(Args(), config)
    disk = next(a for a in opt(calls[0], "-drive") if a.startswith("if=none,id=disk0"))
    used = Path(disk.split("file=", 1)[1])
    assert used != config.output and used.name == "image.raw"
    assert not used.exists()   # removed afterwards
    vm.run_vm(Args(), vm_config(tmp_path))
    assert opt(calls[1], "-drive")[0].endswith(f"file={config.output}")


def test_runtime_size_grows_the_disk(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vm_run(monkeypatch)
    (tmp_path / "out").mkdir()
    image = disk_image(tmp_path / "out/image.raw")
    vm.run_vm(Args(), vm_config(tmp_path, runtime_size=32 << 20, ephemeral=True))
    assert image.stat().st_size == 8 << 20   # the ephemeral copy grew, not the image
    vm.run_vm(Args(), vm_config(tmp_path, runtime_size=32 << 20))
    assert image.stat().st_size == 32 << 20
    # The backup GPT header moved to the new end: sfdisk finds nothing to complain about.
    verify = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True)
    assert verify.returncode == 0 and "backup" not in (verify.stdout + verify.stderr).lower(), verify.stdout
    vm.run_vm(Args(), vm_config(tmp_path, runtime_size=16 << 20))
    assert image.stat().st_size == 32 << 20   # never shrunk


# ---- Credentials=, RuntimeTrees=, RuntimeBuildSources= -----------------------------------------


def test_credentials_sources(tmp_path: Path) -> None:
    plain = tmp_path / "greeting"
    plain.write_text("hello")
    exe = tmp_path / "dynamic"
    exe.write_text("#!/bin/sh\nprintf computed\n")
    exe.chmod(0o755)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "one").write_text("1")
    (d / "two").write_text("2")
    config = vm_config(tmp_path, credentials=["a=b=c", str(plain), str(exe), str(d)])
    assert container.runtime_credentials(config) == {
        "a": b"b=c", "greeting": b"hello", "dynamic": b"computed", "one": b"1", "two": b"2"}
    with pytest.raises(MkosiError, match="does not exist"):
        container.runtime_credentials(vm_config(tmp_path, credentials=[str(tmp_path / "missing")]))


def test_credentials_reach_qemu_by_file(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_vm_run(monkeypatch)
    vm.run_vm(Args(), vm_config(tmp_path, credentials=["passwd.plaintext-password.root=s3cret", "x=1"]))
    argv = calls[0]
    assert not any("s3cret" in a for a in argv)
    creds = fake_vm_run.credentials  # type: ignore[attr-defined]
    prefix = "io.systemd.credential.binary:"
    assert creds == [f"{prefix}passwd.plaintext-password.root={base64.b64encode(b's3cret').decode()}",
                     f"{prefix}x={base64.b64encode(b'1').decode()}"]


def test_runtime_trees_via_virtiofs(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    monkeypatch.setattr(vm, "find_virtiofsd", lambda: "/usr/libexec/virtiofsd")
    started: list[list[str]] = []
    calls = fake_vm_run(monkeypatch, started)
    config = vm_config(tmp_path, qemu_mem="1G", runtime_trees=[ConfigTree(src), ConfigTree(other, Path("sub")),
                                                                 ConfigTree(other, Path("/mnt/abs"))])
    assert container.runtime_mounts(config) == [(src, "/root/src"), (other, "/root/src/sub"), (other, "/mnt/abs")]
    vm.run_vm(Args(), config)
    argv = calls[0]
    assert opt(argv, "-object")[-1] == "memory-backend-memfd,id=mem,size=1G,share=on"
    assert opt(argv, "-numa") == ["node,memdev=mem"]
    fs = [d for d in opt(argv, "-device") if d.startswith("vhost-user-fs-pci")]
    assert fs == [f"vhost-user-fs-pci,queue-size=1024,chardev=virtiofs{i},tag=mkosi-tree-{i}" for i in range(3)]
    assert [a for a in started[0] if a.startswith("--shared-dir")] == [f"--shared-dir={src}"]
    fstab = [base64.b64decode(c.split("=", 1)[1]).decode() for c in fake_vm_run.credentials  # type: ignore
             if c.startswith("io.systemd.credential.binary:fstab.extra=")]
    assert fstab == ["mkosi-tree-0 /root/src virtiofs defaults 0 0\nmkosi-tree-1 /root/src/sub virtiofs defaults 0 0\n"
                     "mkosi-tree-2 /mnt/abs virtiofs defaults 0 0\n"]
    c_virtiofsd = vm.virtiofsd_argv("/usr/lib/qemu/virtiofsd", tmp_path / "s", src)
    assert c_virtiofsd[1:] == [f"--socket-path={tmp_path / 's'}", "-o", f"source={src}", "-o", "cache=auto"]
    with pytest.raises(MkosiError, match="not a directory"):
        container.runtime_mounts(vm_config(tmp_path, runtime_trees=[ConfigTree(tmp_path / "nope")]))


def test_runtime_build_sources(tmp_path: Path) -> None:
    src, lib, build = tmp_path / "src", tmp_path / "lib", tmp_path / "build"
    for d in (src, lib, build):
        d.mkdir()
    config = vm_config(tmp_path, build_sources=[ConfigTree(src), ConfigTree(lib, Path("lib"))], build_dir=build)
    assert container.runtime_mounts(config) == []
    assert container.runtime_mounts(dataclasses.replace(config, runtime_build_sources=True)) == [
        (src, "/root/src"), (lib, "/root/src/lib"), (build, "/root/build")]


# ---- machine records and mkosi ssh --------------------------------------------------------------


def test_machine_records(tmp_path: Path) -> None:
    path = ssh.machine_state_path(tmp_path, "box")
    record = ssh.MachineRecord(machine="box", kind="vm", host="127.0.0.1", port=40000, pid=os.getpid())
    with ssh.recorded_machine(path, record):
        assert json.loads(path.read_text()) == {"machine": "box", "kind": "vm", "host": "127.0.0.1", "port": 40000,
                                                "pid": os.getpid(), "vsock_cid": None}
        assert ssh.read_machine(path) == record
        with pytest.raises(MkosiError, match="already running"), ssh.recorded_machine(path, record):
            pass
    assert not path.exists()
    # A record of a process that is gone does not count and is cleaned away.
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(record, pid=dead.pid))))
    assert ssh.read_machine(path) is None and not path.exists()


def test_free_ports_differ() -> None:
    ports = {ssh.free_port() for _ in range(5)}
    assert len(ports) >= 2 and all(1024 <= p < 65536 for p in ports)


def fake_sshd(greeting: bytes) -> tuple[int, threading.Thread, socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(greeting)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread, server


def test_wait_for_sshd(capsys: pytest.CaptureFixture[str]) -> None:
    port, _, server = fake_sshd(b"SSH-2.0-OpenSSH\r\n")
    record = ssh.MachineRecord(machine="box", kind="vm", host="127.0.0.1", port=port, pid=os.getpid())
    ssh.wait_for_sshd(record, 5)
    server.close()
    # Something that accepts but is not sshd (qemu's forwarding before the guest listens) is waited for.
    port, _, server = fake_sshd(b"")
    record = dataclasses.replace(record, port=port)
    with pytest.raises(MkosiError, match="did not answer within 1s"):
        ssh.wait_for_sshd(record, 1, interval=0.1)
    with pytest.raises(MkosiError, match="stopped"):
        ssh.wait_for_sshd(record, 0, interval=0.1, alive=lambda: False)
    server.close()
    err = capsys.readouterr().err
    assert err.count("Waiting for vm 'box'") == 2   # one line per wait, not one per attempt


def test_ssh_connects_to_the_recorded_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = vm_config(tmp_path, ssh=True, ssh_key=tmp_path / "key")
    (tmp_path / "key").write_text("k")
    seen: list[list[str]] = []
    monkeypatch.setattr(vm, "wait_for_sshd", lambda record, timeout, quiet=False: None)
    monkeypatch.setattr(vm, "MACHINE_START_WAIT", 0.3)

    def connect(argv: list[str], timeout: int) -> int:
        seen.append(list(argv))
        return 0

    monkeypatch.setattr(vm, "connect_with_retry", connect)
    with pytest.raises(MkosiError, match="no running machine 'image'"):
        vm.run_ssh(Args(verb=Verb.ssh), config)
    out = tmp_path / "out"
    one = ssh.MachineRecord(machine="image", kind="vm", host="127.0.0.1", port=40001, pid=os.getpid())
    two = ssh.MachineRecord(machine="second", kind="container", host="127.0.0.1", port=40002, pid=os.getpid())
    with ssh.recorded_machine(ssh.machine_state_path(out, "image"), one), \
         ssh.recorded_machine(ssh.machine_state_path(out, "second"), two):
        vm.run_ssh(Args(verb=Verb.ssh, cmdline=["true"]), config)
        vm.run_ssh(Args(verb=Verb.ssh), dataclasses.replace(config, machine="second"))
    assert opt(seen[0], "-p") == ["40001"] and opt(seen[1], "-p") == ["40002"]
    with ssh.recorded_machine(ssh.machine_state_path(out, "second"), two):
        # The image's own machine does not run, but the only other one does.
        vm.run_ssh(Args(verb=Verb.ssh), config)
        assert opt(seen[2], "-p") == ["40002"]
        with pytest.raises(MkosiError, match="running machines of this image: second"):
            vm.run_ssh(Args(verb=Verb.ssh), dataclasses.replace(config, machine="third"))


def test_ssh_waits_for_a_machine_being_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = vm_config(tmp_path, ssh=True, ssh_key=tmp_path / "key")
    (tmp_path / "key").write_text("k")
    waits: list[bool] = []

    def wait_for_sshd(record: ssh.MachineRecord, timeout: int, quiet: bool = False) -> None:
        waits.append(quiet)

    monkeypatch.setattr(vm, "wait_for_sshd", wait_for_sshd)
    monkeypatch.setattr(vm, "connect_with_retry", lambda argv, timeout: int(opt(list(argv), "-p")[0]) - 40000)
    record = ssh.MachineRecord(machine="image", kind="vm", host="127.0.0.1", port=40007, pid=os.getpid())
    path = ssh.machine_state_path(tmp_path / "out", "image")
    path.parent.mkdir(parents=True)
    timer = threading.Timer(0.5, lambda: path.write_text(json.dumps(dataclasses.asdict(record))))
    timer.start()
    assert vm.run_ssh(Args(verb=Verb.ssh), config) == 7
    timer.join()
    assert waits == [True]   # the line about the machine starting was the only one
    assert capsys.readouterr().err.count("Waiting for") == 1
    path.unlink()


def test_vm_records_itself_while_it_runs(firmware: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def run_qemu(argv: list[str]) -> None:
        seen.append((argv, ssh.running_machines(tmp_path / "out")))

    monkeypatch.setattr(vm, "run_qemu", run_qemu)
    vm.run_vm(Args(), vm_config(tmp_path, ssh=True, machine="web"))
    argv, records = seen[0]
    assert [r.machine for r in records] == ["web"] and records[0].kind == "vm"
    assert f"hostfwd=tcp:127.0.0.1:{records[0].port}-:22" in opt(argv, "-nic")[0]
    assert ssh.running_machines(tmp_path / "out") == []
    vm.run_vm(Args(), vm_config(tmp_path, ssh=False))
    assert seen[1][1] == []   # nothing to reach without Ssh=


# ---- nspawn: boot and shell ----------------------------------------------------------------------


def fake_nspawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    monkeypatch.setattr(container, "NSPAWN_RUNTIME_DIR", tmp_path / "run-nspawn")
    monkeypatch.setattr(os, "getuid", lambda: 0)
    calls: list[dict[str, Any]] = []

    def run(argv: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        full = [str(a) for a in kwargs["sandbox"].argv(argv, "systemd-nspawn")]
        files = {}
        for a in full:
            for prefix in ("--load-credential=", "--bind-ro="):
                if a.startswith(prefix):
                    host = a[len(prefix):].split(":")[1 if prefix == "--load-credential=" else 0]
                    files[a] = Path(host).read_text()
        calls.append({"argv": full, "files": files, "records": ssh.running_machines(tmp_path / "out")})
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(container, "run", run)
    return calls


def tree_config(tmp_path: Path, **changes: Any) -> Config:
    out = tmp_path / "out"
    (out / "tree").mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(Config(), format=OutputFormat("directory"), output=out / "tree", output_dir=out,
                               **changes)


def test_boot_credentials_trees_and_cmdline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_nspawn(monkeypatch, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    config = tree_config(tmp_path, credentials=["passwd.plaintext-password.root=s3cret"],
                         runtime_trees=[ConfigTree(src)], kernel_command_line_extra=["systemd.unit=rescue.target"])
    container.run_container(Args(verb=Verb.boot, cmdline=["quiet"]), config, boot=True)
    argv, files = calls[0]["argv"], calls[0]["files"]
    assert not any("s3cret" in a for a in argv)
    cred = [a for a in argv if a.startswith("--load-credential=passwd.plaintext-password.root:")]
    assert len(cred) == 1 and files[cred[0]] == "s3cret"
    assert f"--bind={src}:/root/src" in argv
    assert argv[argv.index("--boot"):] == ["--boot", "--", "systemd.unit=rescue.target", "quiet"]
    # shell gets the credentials and trees too, but not the init arguments.
    container.run_container(Args(verb=Verb.shell), config, boot=False)
    assert f"--bind={src}:/root/src" in calls[1]["argv"] and "systemd.unit=rescue.target" not in calls[1]["argv"]


def test_boot_runtime_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_nspawn(monkeypatch, tmp_path)
    for network in RuntimeNetwork:
        container.run_container(Args(verb=Verb.boot), tree_config(tmp_path, runtime_network=network), boot=True)
    user, interface, none = (c["argv"] for c in calls)
    assert "--private-network" not in user and "--network-veth" not in user
    assert "--network-veth" in interface
    assert "--private-network" in none


def test_boot_makes_the_container_reachable_by_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_nspawn(monkeypatch, tmp_path)
    container.run_container(Args(verb=Verb.boot), tree_config(tmp_path, ssh=True, machine="ct"), boot=True)
    argv, files, records = calls[0]["argv"], calls[0]["files"], calls[0]["records"]
    assert [r.machine for r in records] == ["ct"] and records[0].kind == "container"
    dropin = [a for a in argv if a.endswith(":" + container.SSHD_RUNTIME_DROPIN)]
    assert len(dropin) == 1 and f"Port {records[0].port}\n" in files[dropin[0]]
    assert "ListenAddress 127.0.0.1" in files[dropin[0]]
    assert "--machine=ct" in argv
    assert ssh.running_machines(tmp_path / "out") == []   # gone when the container stopped
    # The empty file nspawn makes in the image to mount the configuration on is not left behind.
    def nspawn_making_the_mount_point(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        (tmp_path / "out/tree/etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
        (tmp_path / "out/tree" / container.SSHD_RUNTIME_DROPIN.lstrip("/")).touch()
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(container, "run", nspawn_making_the_mount_point)
    container.run_container(Args(verb=Verb.boot), tree_config(tmp_path, ssh=True), boot=True)
    assert (tmp_path / "out/tree/etc/ssh/sshd_config.d").is_dir()
    assert not (tmp_path / "out/tree" / container.SSHD_RUNTIME_DROPIN.lstrip("/")).exists()
    calls = fake_nspawn(monkeypatch, tmp_path)
    container.run_container(Args(verb=Verb.shell), tree_config(tmp_path, ssh=True), boot=False)
    assert calls[0]["records"] == []   # a shell runs no sshd


# ---- the generator that applies login credentials in the machine --------------------------------


def run_generator(tmp_path: Path, creds: dict[str, str]) -> Path:
    cred_dir, out = tmp_path / "creds", tmp_path / "gen"
    cred_dir.mkdir()
    out.mkdir()
    for name, value in creds.items():
        (cred_dir / name).write_text(value)
    script = tmp_path / "generator"
    script.write_text(container.runtime_generator().replace("/run/credentials/@system", str(cred_dir)))
    subprocess.run(["sh", str(script), str(out)], check=True)
    return out


def test_generator_without_credentials_does_nothing(tmp_path: Path) -> None:
    out = run_generator(tmp_path, {})
    assert list(out.iterdir()) == []


def test_generator_root_password_and_autologin(tmp_path: Path) -> None:
    out = run_generator(tmp_path, {"passwd.plaintext-password.root": "s3cret", "mkosi.autologin": "yes"})
    unit = (out / "mkosi-root-password.service").read_text()
    assert f"ExecStart=/{container.RUNTIME_GENERATOR_PATH} --set-root-password" in unit
    assert "s3cret" not in unit
    assert (out / "sysinit.target.wants/mkosi-root-password.service").is_symlink()
    serial = (out / "serial-getty@ttyS0.service.d/mkosi-autologin.conf").read_text()
    assert "--autologin root --keep-baud 115200,57600,38400,9600 - $TERM" in serial
    assert (out / "container-getty@0.service.d/mkosi-autologin.conf").exists()
    assert (out / "console-getty.service.d/mkosi-autologin.conf").exists()


def test_generator_sets_the_password_with_chpasswd(tmp_path: Path) -> None:
    cred_dir, bin_dir = tmp_path / "creds", tmp_path / "bin"
    cred_dir.mkdir()
    bin_dir.mkdir()
    (cred_dir / "passwd.hashed-password.root").write_text("$6$salt$hash\n")
    chpasswd = bin_dir / "chpasswd"
    chpasswd.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/stdin\n")
    chpasswd.chmod(0o755)
    script = tmp_path / "generator"
    script.write_text(container.runtime_generator().replace("/run/credentials/@system", str(cred_dir)))
    subprocess.run(["sh", str(script), "--set-root-password"], check=True,
                   env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert (tmp_path / "args").read_text() == "-e\n"
    assert (tmp_path / "stdin").read_text() == "root:$6$salt$hash\n"


def test_generator_mounts_fstab_extra_on_old_systemd(tmp_path: Path) -> None:
    out = run_generator(tmp_path, {"fstab.extra": "mkosi-tree-0 /root/src virtiofs defaults 0 0\n"})
    version = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout.split()[1]
    if int(version) >= 254:
        assert not (out / "root-src.mount").exists()   # systemd reads fstab.extra itself
    else:
        mount = (out / "root-src.mount").read_text()
        assert "What=mkosi-tree-0\nWhere=/root/src\nType=virtiofs\n" in mount
        assert (out / "local-fs.target.wants/root-src.mount").is_symlink()


def test_generator_is_installed_in_images_with_systemd(tmp_path: Path) -> None:
    container.install_runtime_generator(tmp_path)
    assert not (tmp_path / container.RUNTIME_GENERATOR_PATH).exists()
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/systemd").touch()
    container.install_runtime_generator(tmp_path)
    gen = tmp_path / container.RUNTIME_GENERATOR_PATH
    assert gen.stat().st_mode & 0o777 == 0o755
    assert subprocess.run(["sh", "-n", str(gen)]).returncode == 0


def test_background_helper_waits_for_its_socket_and_reports_failures(tmp_path: Path) -> None:
    ready = tmp_path / "sock"
    with runtime.background(["sh", "-c", f"sleep 0.2; touch {ready}; exec sleep 60"], "helper", ready=ready) as proc:
        assert ready.exists() and proc.poll() is None
    assert proc.poll() is not None   # stopped with the VM
    with pytest.raises(MkosiError, match="helper did not start: no such state"), \
         runtime.background(["sh", "-c", "echo no such state >&2; exit 1"], "helper", ready=tmp_path / "never"):
        pass


@needs_tools("bwrap")
def test_background_helpers_run_in_the_tools_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # swtpm found in the tools tree is started through the tree's sandbox (its /usr as /usr), not as a
    # host path that does not exist on the host.
    tools = tmp_path / "tools"
    (tools / "usr/bin").mkdir(parents=True)
    (tools / "usr/bin/swtpm").write_text("#!/bin/sh\n")
    (tools / "usr/bin/swtpm").chmod(0o755)
    started: list[list[str]] = []

    class Started:
        def __init__(self, argv: list[str], **kwargs: object) -> None:
            started.append(argv)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Started)
    with mkosi.run.using_sandbox(Sandbox(tools=tools)):
        assert mkosi.run.find_tool("swtpm") == "/usr/bin/swtpm"
        with runtime.background(["/usr/bin/swtpm", "socket"], "swtpm"):
            pass
    argv = started[0]
    assert argv[0].endswith("bwrap") and argv[-3:] == ["--", "/usr/bin/swtpm", "socket"]
    i = argv.index(str(tools / "usr"))
    assert argv[i - 1:i + 2] == ["--ro-bind", str(tools / "usr"), "/usr"]


def test_summary_does_not_show_credential_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args, configs = load_args(["--credential=passwd.plaintext-password.root=s3cret", "summary"])
    text, data = summary_text(args, configs), summary_json(args, configs)
    assert "s3cret" not in text and "s3cret" not in data
    assert "Credentials=(set)" in text
