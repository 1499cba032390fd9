"""The qemu/vm, ssh and serve verbs: running the image in a VM and reaching it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path

from mkosi import log
from mkosi.config.enums import BootProtocol, QemuKvm
from mkosi.config.settings import Args, Config
from mkosi.container import ephemeral_copy
from mkosi.errors import MkosiError
from mkosi.output import artifacts
from mkosi.qemu import copy_ovmf_vars, probe_kvm, qemu_command, run_qemu, tap_name
from mkosi.sandbox import valid_machine_name
from mkosi.ssh import connect_with_retry, ssh_command

# The host port forwarded to the guest's sshd by `mkosi qemu` with Ssh=yes; `mkosi ssh` uses it.
QEMU_SSH_PORT = 2222


def use_kvm(config: Config) -> bool:

    if config.qemu_kvm == QemuKvm.no:
        return False
    works = probe_kvm()
    if config.qemu_kvm == QemuKvm.yes and not works:
        log.warn("QemuKvm=yes, but KVM guests do not run on this host; using it anyway as asked")
        return True
    if not works:
        log.warn("KVM is not usable on this host (probe guest did not run); falling back to TCG emulation")
    return works


def qemu_argv(args: Args, config: Config, tmp: Path) -> list[str]:

    assert config.output is not None
    if config.output_compression:
        raise MkosiError("qemu cannot boot a compressed image", hint="build without CompressOutput=")
    boot = config.qemu_boot or BootProtocol.uefi
    kernel = initrd = None
    cmdline = None
    if boot == BootProtocol.linux:
        kernel, initrd = artifacts.path(config, artifacts.LINUX_KERNEL), artifacts.path(config, artifacts.LINUX_INITRD)
        if not kernel.exists():
            raise MkosiError(f"'{kernel}' is missing", hint="build with BootProtocols=linux")
        cmdline = artifacts.path(config, artifacts.LINUX_CMDLINE).read_text().strip()
        if args.cmdline:
            cmdline += " " + " ".join(args.cmdline)
    image: Path | None = config.output
    if config.format.row.name == "uki":
        # A UKI boots as the kernel OVMF loads (-kernel), without a disk; its own .cmdline applies unless
        # the qemu verb is given a command line.
        kernel, image, boot = config.output, None, BootProtocol.uefi
        cmdline = " ".join(args.cmdline) if args.cmdline else None
    tap = None
    if config.netdev:

        # A link on the host that systemd-networkd configures (its 80-vm-vt.network), like nspawn's veth.
        if os.getuid() != 0 or not os.access("/dev/net/tun", os.R_OK | os.W_OK):
            raise MkosiError("Netdev=yes with qemu needs root and /dev/net/tun: qemu creates a tap device",
                             hint="run as root, or build without Netdev=")
        tap = tap_name(valid_machine_name(artifacts.output_stem(config)) or "mkosi")
    vars_copy = copy_ovmf_vars(tmp / "OVMF_VARS.fd", arch=config.architecture) if boot == BootProtocol.uefi else None
    return qemu_command(
        image=image, fmt="qcow2" if config.qcow2 else "raw", boot=boot.value, kernel=kernel, initrd=initrd,
        cmdline=cmdline, smp=config.qemu_smp, mem=config.qemu_mem, kvm=use_kvm(config), headless=config.qemu_headless,
        extra_args=config.qemu_args, netdev=config.ssh, tap=tap, ssh_port=QEMU_SSH_PORT if config.ssh else None,
        guest_ssh_port=config.ssh_port,
        ovmf_vars_copy=vars_copy, arch=config.architecture,
    )


def run_vm(args: Args, config: Config) -> int:

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkosi-qemu-")))
        if config.ephemeral:
            assert config.output is not None
            copy = stack.enter_context(ephemeral_copy(config.output))

            config = dataclasses.replace(config, output=copy)
        run_qemu(qemu_argv(args, config, tmp))
    return 0


def run_ssh(args: Args, config: Config) -> int:

    if not config.ssh:
        raise MkosiError("the image was not built with Ssh=yes", hint="build with --ssh")
    key = config.ssh_key or artifacts.written(config, artifacts.SSH_KEY)
    agent = None
    if config.ssh_agent:

        use_env = config.ssh_agent.lower() in ("yes", "true", "1")
        agent = os.environ.get("SSH_AUTH_SOCK") if use_env else config.ssh_agent
    if key is not None and not key.exists() and agent is None:
        raise MkosiError(f"ssh key '{key}' does not exist", hint="build the image with Ssh=yes first")
    argv = ssh_command("127.0.0.1", QEMU_SSH_PORT, key if agent is None else None, agent, list(args.cmdline))
    return connect_with_retry(argv, config.ssh_timeout)
