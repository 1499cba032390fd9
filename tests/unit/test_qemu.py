from __future__ import annotations

import json
import os
import platform
import shutil
import stat
from pathlib import Path

import pytest

from mkosi import qemu, ssh
from mkosi.errors import MkosiError
from tests.markers import needs_tools


def touch(path: Path, data: bytes = b"fw") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def fw_root(tmp_path: Path) -> Path:
    """A fake firmware tree laid out like Debian's ovmf and seabios packages."""
    root = tmp_path / "fw"
    touch(root / "usr/share/OVMF/OVMF_CODE_4M.fd")
    touch(root / "usr/share/OVMF/OVMF_VARS_4M.fd")
    touch(root / "usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
    touch(root / "usr/share/seabios/bios-256k.bin")
    return root


def opt(argv: list[str], name: str) -> list[str]:
    """All values given to option `name`."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


# ---- firmware discovery --------------------------------------------------------------------


def test_find_ovmf_fallback_paths(fw_root: Path) -> None:
    code, template = qemu.find_ovmf(root=fw_root)
    assert code == fw_root / "usr/share/OVMF/OVMF_CODE_4M.fd"
    assert template == fw_root / "usr/share/OVMF/OVMF_VARS_4M.fd"
    code, template = qemu.find_ovmf(root=fw_root, secure_boot=True)
    assert code == fw_root / "usr/share/OVMF/OVMF_CODE_4M.secboot.fd"


def test_find_ovmf_other_distributions(tmp_path: Path) -> None:
    touch(tmp_path / "usr/share/edk2/x64/OVMF_CODE.4m.fd")
    touch(tmp_path / "usr/share/edk2/x64/OVMF_VARS.4m.fd")
    assert qemu.find_ovmf(root=tmp_path)[0] == tmp_path / "usr/share/edk2/x64/OVMF_CODE.4m.fd"
    # A code image without its variable store is no use.
    other = tmp_path / "other"
    touch(other / "usr/share/edk2/ovmf/OVMF_CODE.fd")
    with pytest.raises(MkosiError):
        qemu.find_ovmf(root=other)


def test_find_ovmf_descriptors(tmp_path: Path) -> None:
    desc_dir = tmp_path / "usr/share/qemu/firmware"
    desc_dir.mkdir(parents=True)

    def descriptor(name: str, code: str, vars: str, features: list[str], machines: list[str]) -> None:
        touch(tmp_path / code.lstrip("/"))
        touch(tmp_path / vars.lstrip("/"))
        (desc_dir / name).write_text(
            json.dumps({
                "interface-types": ["uefi"],
                "mapping": {
                    "device": "flash",
                    "executable": {"filename": code, "format": "raw"},
                    "nvram-template": {"filename": vars, "format": "raw"},
                },
                "targets": [{"architecture": "x86_64", "machines": machines}],
                "features": features,
            })
        )

    descriptor("10-enrolled.json", "/fw/ms_code.fd", "/fw/ms_vars.fd", ["secure-boot", "enrolled-keys"], ["pc-q35-*"])
    descriptor("20-secure.json", "/fw/sb_code.fd", "/fw/sb_vars.fd", ["secure-boot", "requires-smm"], ["pc-q35-*"])
    descriptor("30-i440fx.json", "/fw/old_code.fd", "/fw/old_vars.fd", [], ["pc-i440fx-*"])
    descriptor("40-plain.json", "/fw/code.fd", "/fw/vars.fd", ["acpi-s3"], ["pc-i440fx-*", "pc-q35-*"])
    (desc_dir / "50-broken.json").write_text("{not json")
    assert qemu.find_ovmf(root=tmp_path) == (tmp_path / "fw/code.fd", tmp_path / "fw/vars.fd")
    assert qemu.find_ovmf(root=tmp_path, secure_boot=True) == (tmp_path / "fw/sb_code.fd", tmp_path / "fw/sb_vars.fd")
    # /etc overrides a descriptor of the same name.
    etc = tmp_path / "etc/qemu/firmware"
    etc.mkdir(parents=True)
    (etc / "40-plain.json").write_text("{}")
    with pytest.raises(MkosiError):
        qemu.find_ovmf(root=tmp_path)


def test_find_firmware_missing(tmp_path: Path) -> None:
    with pytest.raises(MkosiError) as e:
        qemu.find_ovmf(root=tmp_path)
    assert e.value.hint and "apt-get install ovmf" in e.value.hint
    with pytest.raises(MkosiError) as e:
        qemu.find_seabios(root=tmp_path)
    assert e.value.hint and "apt-get install seabios" in e.value.hint


def test_find_seabios(fw_root: Path) -> None:
    assert qemu.find_seabios(fw_root) == fw_root / "usr/share/seabios/bios-256k.bin"


# ---- command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("kvm", [True, False])
def test_qemu_command_uefi(fw_root: Path, tmp_path: Path, kvm: bool) -> None:
    image = tmp_path / "image.raw"
    vars_copy = tmp_path / "vars.fd"
    argv = qemu.qemu_command(
        image=image, fmt="raw", boot="uefi", smp="4", mem="3G", kvm=kvm, headless=True, extra_args=["-S"],
        netdev=True, ssh_port=2222, ovmf_vars_copy=vars_copy, firmware_root=fw_root,
    )  # fmt: skip
    assert argv[0] == "qemu-system-x86_64"
    assert opt(argv, "-machine") == ["q35"]
    assert opt(argv, "-accel") == ["kvm" if kvm else "tcg"]
    assert opt(argv, "-cpu") == ["host" if kvm else "max"]
    assert opt(argv, "-smp") == ["4"] and opt(argv, "-m") == ["3G"]
    assert "-nographic" in argv
    drives = opt(argv, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={fw_root}/usr/share/OVMF/OVMF_CODE_4M.fd" in drives
    assert f"if=pflash,format=raw,unit=1,file={vars_copy}" in drives
    assert any(d.startswith("if=none,id=disk0,format=raw,") and d.endswith(f"file={image}") for d in drives)
    devices = opt(argv, "-device")
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in devices
    assert any(d.startswith("virtio-rng-pci") for d in devices)
    assert opt(argv, "-nic") == ["user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert "-bios" not in argv and "-kernel" not in argv
    assert argv[-1] == "-S"


def test_qemu_command_uefi_without_vars_copy_uses_snapshot(fw_root: Path, tmp_path: Path) -> None:
    argv = qemu.qemu_command(
        image=tmp_path / "i.qcow2", fmt="qcow2", boot="uefi", kvm=False, netdev=False, firmware_root=fw_root
    )
    drives = opt(argv, "-drive")
    assert f"if=pflash,format=raw,unit=1,snapshot=on,file={fw_root}/usr/share/OVMF/OVMF_VARS_4M.fd" in drives
    assert any("format=qcow2" in d for d in drives)
    assert opt(argv, "-nic") == ["none"]


def test_qemu_command_secure_boot(fw_root: Path, tmp_path: Path) -> None:
    argv = qemu.qemu_command(
        image=tmp_path / "i.raw", boot="uefi", kvm=True, secure_boot=True, firmware_root=fw_root,
        ovmf_vars_copy=tmp_path / "v.fd",
    )  # fmt: skip
    assert opt(argv, "-machine") == ["q35,smm=on"]
    assert "driver=cfi.pflash01,property=secure,value=on" in opt(argv, "-global")
    assert any("OVMF_CODE_4M.secboot.fd" in d for d in opt(argv, "-drive"))


@pytest.mark.parametrize("kvm", [True, False])
def test_qemu_command_bios(fw_root: Path, tmp_path: Path, kvm: bool) -> None:
    argv = qemu.qemu_command(
        image=tmp_path / "image,1.raw", boot="bios", kvm=kvm, headless=False, netdev=True, firmware_root=fw_root
    )
    assert opt(argv, "-bios") == [f"{fw_root}/usr/share/seabios/bios-256k.bin"]
    assert opt(argv, "-cpu") == ["host" if kvm else "max"]
    assert "-nographic" not in argv
    assert not any("pflash" in d for d in opt(argv, "-drive"))
    # Commas in paths are doubled in qemu's option syntax.
    assert any(d.endswith("file=" + str(tmp_path / "image,,1.raw")) for d in opt(argv, "-drive"))
    assert opt(argv, "-nic") == ["user,model=virtio-net-pci"]


@pytest.mark.parametrize("kvm", [True, False])
def test_qemu_command_linux(fw_root: Path, tmp_path: Path, kvm: bool) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    argv = qemu.qemu_command(
        image=tmp_path / "root.raw", boot="linux", kernel=kernel, initrd=initrd, cmdline="root=/dev/vda quiet",
        kvm=kvm, headless=True, firmware_root=fw_root,
    )  # fmt: skip
    assert opt(argv, "-kernel") == [str(kernel)]
    assert opt(argv, "-initrd") == [str(initrd)]
    assert opt(argv, "-append") == ["root=/dev/vda quiet console=ttyS0"]
    assert opt(argv, "-accel") == ["kvm" if kvm else "tcg"]
    # An explicit console is kept, and a graphical VM gets none added.
    argv = qemu.qemu_command(
        image=None, boot="linux", kernel=kernel, cmdline="console=hvc0", kvm=kvm, firmware_root=fw_root
    )
    assert opt(argv, "-append") == ["console=hvc0"] and "-initrd" not in argv and "-drive" not in argv
    argv = qemu.qemu_command(image=None, boot="linux", kernel=kernel, kvm=kvm, headless=False, firmware_root=fw_root)
    assert "-append" not in argv


def test_qemu_command_errors(fw_root: Path, tmp_path: Path) -> None:
    image = tmp_path / "i.raw"
    with pytest.raises(MkosiError):
        qemu.qemu_command(image=image, boot="pxe", kvm=False, firmware_root=fw_root)
    with pytest.raises(MkosiError):
        qemu.qemu_command(image=image, fmt="vmdk", boot="bios", kvm=False, firmware_root=fw_root)
    with pytest.raises(MkosiError):
        qemu.qemu_command(image=image, boot="linux", kvm=False, firmware_root=fw_root)
    with pytest.raises(MkosiError):
        qemu.qemu_command(image=None, boot="uefi", kvm=False, firmware_root=fw_root)
    with pytest.raises(MkosiError):
        qemu.qemu_command(image=image, boot="bios", kvm=False, ssh_port=22, firmware_root=fw_root)
    with pytest.raises(MkosiError):
        qemu.qemu_command(image=image, boot="bios", arch="aarch64", kvm=False, firmware_root=fw_root)
    with pytest.raises(MkosiError) as e:
        qemu.qemu_command(image=image, boot="uefi", kvm=False, firmware_root=tmp_path / "empty")
    assert e.value.hint and "ovmf" in e.value.hint


# ---- KVM probe -----------------------------------------------------------------------------


def test_probe_rom_layout() -> None:
    rom = qemu.probe_rom()
    assert len(rom) == 64 * 1024
    # Reset vector: far jump to f000:0000, where the probe code starts.
    assert rom[0xFFF0:0xFFF5] == bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])
    assert rom[0] == 0xFA  # cli


def test_probe_kvm_without_dev_kvm_is_false_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    qemu.reset_kvm_probe_cache()
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/kvm" else real_exists(p))
    try:
        assert qemu.probe_kvm() is False
        monkeypatch.setattr(os.path, "exists", lambda p: True if p == "/dev/kvm" else real_exists(p))
        monkeypatch.setattr(os, "access", lambda *a: True)
        monkeypatch.setattr(qemu, "run_probe_guest", lambda *a, **k: (True, "fake"))
        assert qemu.probe_kvm() is False  # cached, not probed again
    finally:
        qemu.reset_kvm_probe_cache()


def test_probe_kvm_uses_the_guest_result(monkeypatch: pytest.MonkeyPatch) -> None:
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: True if p == "/dev/kvm" else real_exists(p))
    monkeypatch.setattr(os, "access", lambda *a: True)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    calls: list[float] = []

    def fake_guest(binary: str, timeout: float, **kwargs: str) -> tuple[bool, str]:
        calls.append(timeout)
        return len(calls) == 1, "fake"

    monkeypatch.setattr(qemu, "run_probe_guest", fake_guest)
    qemu.reset_kvm_probe_cache()
    try:
        assert qemu.probe_kvm(timeout=2.5) is True
        assert qemu.probe_kvm(timeout=2.5) is True
        assert calls == [2.5]
        qemu.reset_kvm_probe_cache()
        assert qemu.probe_kvm() is False
    finally:
        qemu.reset_kvm_probe_cache()


@needs_tools("qemu-system-x86_64")
def test_probe_firmware_under_tcg() -> None:
    ok, reason = qemu.run_probe_guest("qemu-system-x86_64", 30.0, accel="tcg", cpu="max")
    assert ok, reason


# ---- ssh -------------------------------------------------------------------------------------


def test_ssh_command() -> None:
    argv = ssh.ssh_command("localhost", 2222, Path("/k/id"), None, ["systemctl", "is-system-running"])
    assert argv[0] == "ssh"
    assert opt(argv, "-p") == ["2222"]
    options = opt(argv, "-o")
    for o in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR", "IdentitiesOnly=yes"):
        assert o in options
    assert any(o.startswith("ConnectTimeout=") for o in options)
    assert opt(argv, "-i") == ["/k/id"]
    assert argv[-4:] == ["root@localhost", "--", "systemctl", "is-system-running"]


def test_ssh_command_agent_and_interactive() -> None:
    argv = ssh.ssh_command("admin@10.0.2.15", 22, None, "/run/user/0/agent.sock", [], tty=True)
    assert "-i" not in argv
    assert "IdentityAgent=/run/user/0/agent.sock" in opt(argv, "-o")
    assert argv[-1] == "admin@10.0.2.15" and "-t" in argv and "--" not in argv
    assert ssh.ssh_command("h", 22, None, None, [], user=None)[-1] == "h"


def test_connect_with_retry(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = tmp_path / "fake-ssh"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        "[ $n -lt 3 ] && exit 255\n"
        "exit 7\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    assert ssh.connect_with_retry([str(script)], 30, interval=0.01) == 7
    assert counter.read_text().strip() == "3"


def test_connect_with_retry_times_out(tmp_path: Path) -> None:
    script = tmp_path / "fake-ssh"
    script.write_text("#!/bin/sh\nexit 255\n")
    script.chmod(0o755)
    with pytest.raises(MkosiError, match="within 1s"):
        ssh.connect_with_retry([str(script)], 1, interval=0.05)


@needs_tools("ssh-keygen")
def test_generate_ssh_keypair(tmp_path: Path) -> None:
    key = tmp_path / "keys/id_mkosi"
    pub = ssh.generate_ssh_keypair(key, "mkosi@test")
    assert pub == tmp_path / "keys/id_mkosi.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("ssh-ed25519 ") and pub.read_text().strip().endswith("mkosi@test")
    with pytest.raises(MkosiError):
        ssh.generate_ssh_keypair(key, "again")
    old = pub.read_text()
    ssh.generate_ssh_keypair(key, "again", overwrite=True)
    assert pub.read_text() != old


def test_run_qemu_reports_failure(tmp_path: Path) -> None:
    from mkosi.errors import CommandError

    ok = tmp_path / "fake-qemu-ok"
    ok.write_text("#!/bin/sh\nexit 0\n")
    ok.chmod(0o755)
    qemu.run_qemu([str(ok), "-m", "1G"])
    bad = tmp_path / "fake-qemu-bad"
    bad.write_text("#!/bin/sh\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(CommandError):
        qemu.run_qemu([str(bad)])


# ---- Netdev= ----------------------------------------------------------------------------------


def test_qemu_command_tap_link(fw_root: Path, tmp_path: Path) -> None:
    argv = qemu.qemu_command(image=tmp_path / "i.raw", fmt="raw", boot="bios", kvm=False, tap="vt-image-1.2",
                             firmware_root=fw_root)
    assert opt(argv, "-nic") == ["tap,ifname=vt-image-1.2,script=no,downscript=no,model=virtio-net-pci"]
    both = qemu.qemu_command(image=tmp_path / "i.raw", fmt="raw", boot="bios", kvm=False, tap="vt-x",
                             netdev=True, ssh_port=2222, firmware_root=fw_root)
    assert opt(both, "-nic") == ["tap,ifname=vt-x,script=no,downscript=no,model=virtio-net-pci",
                                 "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22"]


def test_tap_name_matches_networkd_and_fits() -> None:
    assert qemu.tap_name("image-1.2") == "vt-image-1.2"
    long = qemu.tap_name("a-rather-long-machine-name")
    assert long.startswith("vt-a-rathe") and len(long) == 15
    assert long != qemu.tap_name("a-rather-long-machine-other")
    assert all(len(qemu.tap_name(n)) <= 15 for n in ("x" * 64, "y", "web_server.example"))


def test_qemu_verb_netdev_uses_a_tap_link(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dataclasses

    from mkosi import vm
    from mkosi.config.enums import BootProtocol, QemuKvm
    from mkosi.config.settings import Args, Config

    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    monkeypatch.setattr(qemu, "find_seabios", lambda root=Path("/"): tmp_path / "bios.bin")
    config = dataclasses.replace(Config(), output=tmp_path / "image_1.2.raw", netdev=True, qemu_kvm=QemuKvm.no,
                               qemu_boot=BootProtocol.bios, compress_output="no", architecture="x86_64")
    argv = vm.qemu_argv(Args(), config, tmp_path)
    assert opt(argv, "-nic") == ["tap,ifname=vt-image-1.2,script=no,downscript=no,model=virtio-net-pci"]
    with_ssh = vm.qemu_argv(Args(), dataclasses.replace(config, ssh=True), tmp_path, ssh_port=2222)
    nics = opt(with_ssh, "-nic")
    assert nics[0].startswith("tap,ifname=vt-image-1.2,") and nics[1].startswith("user,") and "hostfwd" in nics[1]

    monkeypatch.setattr(os, "getuid", lambda: 1000)
    with pytest.raises(MkosiError, match="tap device"):
        vm.qemu_argv(Args(), config, tmp_path)
