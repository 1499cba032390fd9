"""The qemu/vm, ssh and serve verbs: running the image in a VM and reaching it."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from mkosi import log
from mkosi.config.enums import BootProtocol, QemuKvm
from mkosi.config.settings import MkosiArgs
from mkosi.errors import MkosiError
from mkosi.outputs import output_stem

# The host port forwarded to the guest's sshd by `mkosi qemu` with Ssh=yes; `mkosi ssh` uses it.
QEMU_SSH_PORT = 2222


def use_kvm(args: MkosiArgs) -> bool:
    from mkosi.qemu import probe_kvm

    if args.qemu_kvm == QemuKvm.no:
        return False
    works = probe_kvm()
    if args.qemu_kvm == QemuKvm.yes and not works:
        log.warn("QemuKvm=yes, but KVM guests do not run on this host; using it anyway as asked")
        return True
    if not works:
        log.warn("KVM is not usable on this host (probe guest did not run); falling back to TCG emulation")
    return works


def qemu_argv(args: MkosiArgs, tmp: Path) -> list[str]:
    from mkosi.qemu import copy_ovmf_vars, qemu_command

    assert args.output is not None
    if args.output_compression:
        raise MkosiError("qemu cannot boot a compressed image", hint="build without CompressOutput=")
    boot = args.qemu_boot or BootProtocol.uefi
    kernel = initrd = None
    cmdline = None
    if boot == BootProtocol.linux:
        stem = args.output.parent / output_stem(args)
        kernel, initrd = Path(f"{stem}.vmlinuz"), Path(f"{stem}.initrd")
        if not kernel.exists():
            raise MkosiError(f"'{kernel}' is missing", hint="build with BootProtocols=linux")
        cmdline = Path(f"{stem}.cmdline").read_text().strip()
        if args.cmdline:
            cmdline += " " + " ".join(args.cmdline)
    vars_copy = copy_ovmf_vars(tmp / "OVMF_VARS.fd", arch=args.architecture) if boot == BootProtocol.uefi else None
    return qemu_command(
        image=args.output, fmt="qcow2" if args.qcow2 else "raw", boot=boot.value, kernel=kernel, initrd=initrd,
        cmdline=cmdline, smp=args.qemu_smp, mem=args.qemu_mem, kvm=use_kvm(args), headless=args.qemu_headless,
        extra_args=args.qemu_args, netdev=args.netdev or args.ssh, ssh_port=QEMU_SSH_PORT if args.ssh else None,
        guest_ssh_port=args.ssh_port,
        ovmf_vars_copy=vars_copy, arch=args.architecture,
    )


def run_vm(args: MkosiArgs) -> int:
    from mkosi.container import ephemeral_copy
    from mkosi.qemu import run_qemu

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkosi-qemu-")))
        if args.ephemeral:
            assert args.output is not None
            copy = stack.enter_context(ephemeral_copy(args.output))
            import dataclasses

            args = dataclasses.replace(args, output=copy)
        run_qemu(qemu_argv(args, tmp))
    return 0


def run_ssh(args: MkosiArgs) -> int:
    from mkosi.ssh import connect_with_retry, ssh_command

    if not args.ssh:
        raise MkosiError("the image was not built with Ssh=yes", hint="build with --ssh")
    key = args.ssh_key or args.output_sshkey
    agent = None
    if args.ssh_agent:
        import os

        agent = os.environ.get("SSH_AUTH_SOCK") if args.ssh_agent.lower() in ("yes", "true", "1") else args.ssh_agent
    if key is not None and not key.exists() and agent is None:
        raise MkosiError(f"ssh key '{key}' does not exist", hint="build the image with Ssh=yes first")
    argv = ssh_command("127.0.0.1", QEMU_SSH_PORT, key if agent is None else None, agent, list(args.cmdline))
    return connect_with_retry(argv, args.ssh_timeout)


def run_serve(args: MkosiArgs) -> int:
    from mkosi.serve import serve

    assert args.output_dir is not None
    log.info(f"Serving {args.output_dir} on http://0.0.0.0:8081/ (Ctrl-C stops)")
    serve(args.output_dir, 8081)
    return 0
