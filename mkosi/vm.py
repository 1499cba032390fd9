"""The qemu/vm and ssh verbs: running the image in a VM and reaching it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mkosi import log
from mkosi.config.enums import BootProtocol, Feature, Firmware, QemuKvm, RuntimeNetwork, Vmm
from mkosi.config.settings import Args, Config
from mkosi.config.types import parse_size
from mkosi.container import (
    ephemeral_copy,
    grow_image,
    machine_name,
    runtime_credentials,
    runtime_mounts,
    smbios_credential_files,
    write_credentials,
)
from mkosi.errors import MkosiError
from mkosi.formats import FormatKind
from mkosi.output import artifacts
from mkosi.qemu import (
    drive_args,
    find_ovmf,
    kernel_cmdline_extra_args,
    probe_kvm,
    qemu_command,
    run_qemu,
    smbios_credential_args,
    tap_name,
    tpm_args,
    virtiofs_args,
    vsock_args,
)
from mkosi.run import current_sandbox, find_first_tool, find_tool
from mkosi.runtime import (
    FORWARD_CREDENTIAL,
    background,
    cxl_args,
    find_journal_remote,
    invoking_user,
    journal_remote_argv,
    prepare_journal_output,
    register_vm,
    scope_prefix,
    ssh_credentials,
    sysusers_for,
    vm_journal_listen,
    vsock_journal_port,
    want_register,
)
from mkosi.ssh import (
    MachineRecord,
    connect_with_retry,
    free_port,
    machine_state_path,
    read_machine,
    recorded_machine,
    running_machines,
    ssh_command,
    wait_for_sshd,
)

VHOST_VSOCK = Path("/dev/vhost-vsock")
# How long `mkosi ssh` waits for a machine of the image to be started.
MACHINE_START_WAIT = 30.0
# Where Drives= files go without a directory of their own.
DRIVES_DIR = Path("/var/tmp")


def use_kvm(config: Config) -> bool:

    if config.qemu_kvm == QemuKvm.no:
        return False
    works = probe_kvm()
    if config.qemu_kvm == QemuKvm.yes and not works:
        log.warn("KVM=yes, but KVM guests do not run on this host; using it anyway as asked")
        return True
    if not works:
        log.warn("KVM is not usable on this host (probe guest did not run); falling back to TCG emulation")
    return works


def vm_cpus(config: Config) -> str:
    """CPUs=: 0 means as many as this process may run on."""
    if config.qemu_smp.strip() == "0":
        return str(len(os.sched_getaffinity(0)))
    return config.qemu_smp


def qemu_ram_bytes(mem: str) -> int:
    """RAM= as qemu reads it: a number without a unit is MiB."""
    v = mem.strip()
    if v.isascii() and v.isdigit():
        return int(v) * 1024**2
    return parse_size(v)


def qemu_size(size: int) -> str:
    """A size in bytes for qemu's options, in the largest unit that divides it (qemu's -m reads a bare
    number as MiB, so a unit is always written)."""
    for suffix, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size % factor == 0:
            return f"{size // factor}{suffix}"
    return f"{size}B"


def vm_maxmem(config: Config) -> str | None:
    """MaxMem= for qemu's -m maxmem=, or None when it adds nothing to RAM= (unset, or the same size)."""
    if config.max_mem is None:
        return None
    try:
        ram = qemu_ram_bytes(config.qemu_mem)
    except ValueError as e:
        raise MkosiError(f"RAM=: {e}")
    if config.max_mem < ram:
        raise MkosiError(f"MaxMem={qemu_size(config.max_mem)} is less than RAM={config.qemu_mem}",
                         hint="MaxMem= is the memory the VM may reach with hotplug: at least RAM=")
    if config.max_mem == ram:
        return None
    if config.max_mem % 4096:
        raise MkosiError(f"MaxMem={config.max_mem} is not a multiple of the page size (4K)")
    return qemu_size(config.max_mem)


def vm_firmware(config: Config) -> tuple[BootProtocol, bool, bool]:
    """The boot protocol Firmware= (or, with auto, the classic QemuBoot=) asks for, whether the firmware
    enforces Secure Boot, and whether direct kernel boot uses the initrd."""
    fw = config.firmware
    if fw == Firmware.uefi:
        return BootProtocol.uefi, False, True
    if fw == Firmware.uefi_secure_boot:
        return BootProtocol.uefi, True, True
    if fw == Firmware.bios:
        return BootProtocol.bios, False, True
    if fw in (Firmware.linux, Firmware.linux_noinitrd):
        return BootProtocol.linux, False, fw == Firmware.linux
    return config.qemu_boot or BootProtocol.uefi, False, True


def console_mode(config: Config) -> str:
    """Console=, and the classic QemuHeadless=: `gui` opens a window; the default `interactive` opens
    one too when QemuHeadless=no and there is a display to open it on, else the serial console is on
    the terminal."""
    mode = config.console.value
    if mode == "interactive" and not config.qemu_headless and (os.environ.get("DISPLAY") or
                                                                os.environ.get("WAYLAND_DISPLAY")):
        return "gui"
    return mode


def firmware_variables(config: Config, secure_boot: bool, tmp: Path) -> Path:
    """The per-VM copy of the UEFI variable store: of FirmwareVariables= (a file, or `microsoft` for
    the firmware's store with Microsoft's keys enrolled), else of the firmware's template."""
    dest = tmp / "OVMF_VARS.fd"
    fv = config.firmware_variables
    if fv in ("custom", "microsoft-mok"):
        raise MkosiError(f"FirmwareVariables={fv} is not implemented yet",
                         hint="give a variables file prepared with virt-fw-vars instead")
    if fv == "microsoft":
        code, _ = find_ovmf(config.architecture, secure_boot=True)
        candidates = [code.parent / n for n in ("OVMF_VARS_4M.ms.fd", "OVMF_VARS.ms.fd", "OVMF_VARS.secboot.fd")]
        source = next((c for c in candidates if c.is_file()), None)
        if source is None:
            raise MkosiError("FirmwareVariables=microsoft: no variable store with Microsoft's keys found "
                             f"next to {code}")
    elif fv is not None:
        source = Path(fv)
        if not source.is_file():
            raise MkosiError(f"FirmwareVariables=: '{source}' does not exist")
    else:
        _, source = find_ovmf(config.architecture, secure_boot=secure_boot)
    shutil.copyfile(source, dest)
    dest.chmod(0o600)
    return dest


@dataclasses.dataclass(frozen=True)
class Drive:
    id: str
    size: int
    directory: Path
    options: str
    file_id: str
    persist: bool


def parse_drives(config: Config) -> list[Drive]:
    drives = []
    for spec in config.drives:
        parts = spec.split(":") + [""] * 6
        drive_id, size, directory, options, file_id, flags = parts[:6]
        drives.append(Drive(id=drive_id, size=parse_size(size), directory=Path(directory) if directory else DRIVES_DIR,
                            options=options, file_id=file_id or drive_id,
                            persist="persist" in flags.split(",")))
    return drives


@contextlib.contextmanager
def drive_files(drives: Sequence[Drive], machine: str) -> Iterator[list[str]]:
    """Drives=: a sparse backing file per file ID (DIRECTORY/mkosi-drive-MACHINE-FILE-ID, size and directory
    of the first drive naming it), removed afterwards unless the drive is persistent; yields the qemu
    options of all drives."""
    files: dict[str, Path] = {}
    keep: set[str] = set()
    made: list[Path] = []
    argv: list[str] = []
    try:
        for d in drives:
            if d.file_id not in files:
                path = d.directory / f"mkosi-drive-{machine}-{d.file_id}"
                if not path.exists():
                    d.directory.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as f:
                        f.truncate(d.size)
                    made.append(path)
                files[d.file_id] = path
            if d.persist:
                keep.add(d.file_id)
            argv += drive_args(d.id, files[d.file_id], d.options)
        yield argv
    finally:
        for file_id, path in files.items():
            if file_id not in keep and path in made:
                path.unlink(missing_ok=True)


def want_tpm(config: Config, boot: BootProtocol) -> bool:
    if config.tpm == Feature.disabled:
        return False
    found = find_tool("swtpm") is not None
    if config.tpm == Feature.enabled:
        if not found:
            raise MkosiError("TPM=yes needs swtpm", hint="install it with: apt-get install swtpm swtpm-tools")
        return True
    return found and boot == BootProtocol.uefi


def vsock_cid(config: Config) -> int | None:
    """VSock=/VSockCID=: a vsock device only where the host has /dev/vhost-vsock."""
    if config.vsock == Feature.disabled:
        return None
    if not (VHOST_VSOCK.exists() and os.access(VHOST_VSOCK, os.R_OK | os.W_OK)):
        if config.vsock == Feature.enabled:
            raise MkosiError("VSock=yes, but this host has no usable /dev/vhost-vsock",
                             hint="load the vhost_vsock module, or use VSock=auto")
        return None
    if config.vsock_cid == "hash":
        assert config.output is not None
        digest = int(hashlib.sha256(os.fspath(config.output.resolve()).encode()).hexdigest(), 16)
        return 3 + digest % (0xFFFFFFFF - 3)
    if config.vsock_cid == "auto":
        return random.randrange(3, 0xFFFFFFFF)
    return int(config.vsock_cid)


def swtpm_argv(swtpm: str, state: Path, sock: Path) -> list[str]:
    return [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={state}", "--ctrl", f"type=unixio,path={sock}"]


def find_virtiofsd() -> str:
    found = find_first_tool(("virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd", "/usr/lib/qemu/virtiofsd"))
    if found:
        return found
    raise MkosiError("RuntimeTrees= with the vm verb needs virtiofsd",
                     hint="install it (Debian: virtiofsd, or qemu-system-common's /usr/lib/qemu/virtiofsd)")


def virtiofsd_argv(virtiofsd: str, sock: Path, directory: Path) -> list[str]:
    """The Rust virtiofsd takes --shared-dir; the older C one (shipped with qemu up to 7.2) -o source=."""
    if virtiofsd.endswith("/qemu/virtiofsd"):
        return [virtiofsd, f"--socket-path={sock}", "-o", f"source={directory}", "-o", "cache=auto"]
    sandbox = "chroot" if os.getuid() == 0 else "none"
    return [virtiofsd, f"--socket-path={sock}", f"--shared-dir={directory}", "--cache=auto",
            f"--sandbox={sandbox}"]


def virtiofs_tag(i: int) -> str:
    return f"mkosi-tree-{i}"


def fstab_extra(mounts: Sequence[tuple[Path, str]]) -> str:
    """The fstab.extra credential that makes the guest mount the shared directories."""
    return "".join(f"{virtiofs_tag(i)} {target} virtiofs defaults 0 0\n" for i, (_, target) in enumerate(mounts))


def vm_tap(config: Config) -> bool:
    return config.netdev or config.runtime_network == RuntimeNetwork.interface


def vm_user_net(config: Config) -> bool:
    """qemu's user-mode network: with RuntimeNetwork=user; beside a tap link (the classic Netdev=yes, or
    RuntimeNetwork=interface) only to carry the forwarded ssh port."""
    if vm_tap(config):
        return config.ssh
    return config.runtime_network == RuntimeNetwork.user


def qemu_argv(args: Args, config: Config, tmp: Path, *, ssh_port: int | None = None,
              devices: Sequence[str] = (), vsock: int | None = None) -> list[str]:

    assert config.output is not None
    if config.output_compression:
        raise MkosiError("qemu cannot boot a compressed image", hint="build without CompressOutput=")
    boot, secure_boot, with_initrd = vm_firmware(config)
    kernel = initrd = None
    cmdline = None
    if boot == BootProtocol.linux:
        kernel = Path(config.linux) if config.linux else artifacts.path(config, artifacts.LINUX_KERNEL)
        initrd = artifacts.path(config, artifacts.LINUX_INITRD) if with_initrd else None
        if not kernel.exists():
            raise MkosiError(f"'{kernel}' is missing", hint="build with BootProtocols=linux")
        cmdline_file = artifacts.path(config, artifacts.LINUX_CMDLINE)
        cmdline = cmdline_file.read_text().strip() if cmdline_file.exists() else ""
        words = [*config.kernel_command_line_extra, *args.cmdline]
        if words:
            cmdline += " " + " ".join(words)
    image: Path | None = config.output
    if config.format.row.name == "uki":
        # A UKI boots as the kernel OVMF loads (-kernel), without a disk; its own .cmdline applies unless
        # the qemu verb is given a command line.
        kernel, image, boot = config.output, None, BootProtocol.uefi
        cmdline = " ".join(args.cmdline) if args.cmdline else None
    tap = None
    if vm_tap(config):

        # A link on the host that systemd-networkd configures (its 80-vm-vt.network), like nspawn's veth.
        if os.getuid() != 0 or not os.access("/dev/net/tun", os.R_OK | os.W_OK):
            raise MkosiError("a network interface for the VM (Netdev=yes, RuntimeNetwork=interface) needs root "
                             "and /dev/net/tun: qemu creates a tap device",
                             hint="run as root, or use RuntimeNetwork=user")
        tap = tap_name(machine_name(config))
    user_net = vm_user_net(config)
    vars_copy = firmware_variables(config, secure_boot, tmp) if boot == BootProtocol.uefi else None
    console = console_mode(config)
    extra_devices = list(devices)
    if boot != BootProtocol.linux:
        extra_devices += kernel_cmdline_extra_args(config.kernel_command_line_extra)
    if vsock is not None:
        extra_devices += vsock_args(vsock)
    if config.cxl:
        extra_devices += cxl_args(config.architecture)
    return scope_prefix(config) + qemu_command(
        image=image, fmt="qcow2" if config.qcow2 else "raw", boot=boot.value, kernel=kernel, initrd=initrd,
        cmdline=cmdline, smp=vm_cpus(config), mem=config.qemu_mem, kvm=use_kvm(config),
        headless=console != "gui", console=console,
        extra_args=config.qemu_args, netdev=user_net, tap=tap, ssh_port=ssh_port if user_net else None,
        guest_ssh_port=config.ssh_port, ovmf_vars_copy=vars_copy, arch=config.architecture,
        secure_boot=secure_boot, devices=extra_devices, maxmem=vm_maxmem(config), removable=config.removable,
    )


def run_vm(args: Args, config: Config) -> int:

    assert config.output is not None
    if config.vmm == Vmm.vmspawn:
        return run_vmspawn(args, config)
    machine = machine_name(config)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkosi-qemu-")))
        cid = vsock_cid(config)
        port = free_port() if config.ssh and vm_user_net(config) else None
        if port is not None:
            # Recorded before the (maybe slow) snapshot and KVM probe, so `mkosi ssh` started right after
            # `mkosi vm` already finds the machine and waits for it.
            record = MachineRecord(machine=machine, kind="vm", host="127.0.0.1", port=port, pid=os.getpid(),
                                   vsock_cid=cid)
            stack.enter_context(recorded_machine(machine_state_path(config.output.parent, machine), record))
            log.info(f"Starting VM '{machine}'; `mkosi ssh` reaches it through 127.0.0.1:{port}")
        if config.ephemeral:
            copy = stack.enter_context(ephemeral_copy(config.output))
            config = dataclasses.replace(config, output=copy)
        assert config.output is not None
        if config.runtime_size:
            grow_image(config.output, config.runtime_size, qcow2=config.qcow2)
        boot, _, _ = vm_firmware(config)
        devices: list[str] = []
        if want_tpm(config, boot):
            state, sock = tmp / "swtpm", tmp / "swtpm.sock"
            state.mkdir()
            swtpm = find_tool("swtpm")
            assert swtpm is not None
            stack.enter_context(background(swtpm_argv(swtpm, state, sock), "swtpm", ready=sock))
            devices += tpm_args(sock, config.architecture)
        devices += stack.enter_context(drive_files(parse_drives(config), machine))
        creds = runtime_credentials(config)
        creds.update(ssh_credentials(config))
        mounts = runtime_mounts(config)
        if config.bind_user:
            # The home directory is shared like RuntimeTrees= at the same path; sysusers makes the user
            # with the host's uid and gid, so that the files keep their owner.
            user = invoking_user()
            mounts.append((user.home, os.fspath(user.home)))
            creds["sysusers.extra"] = creds.get("sysusers.extra", b"") + sysusers_for(user).encode()
        if config.forward_journal is not None:
            jport = vsock_journal_port()
            listen = vm_journal_listen(cid, jport)
            prepare_journal_output(config.forward_journal)
            stack.enter_context(background(journal_remote_argv(find_journal_remote(), config.forward_journal,
                                                               listen), "systemd-journal-remote"))
            creds[FORWARD_CREDENTIAL] = listen.encode()
        if mounts:
            virtiofsd = find_virtiofsd()
            shares = []
            for i, (source, _) in enumerate(mounts):
                sock = tmp / f"virtiofs-{i}.sock"
                stack.enter_context(background(virtiofsd_argv(virtiofsd, sock, source), "virtiofsd", ready=sock))
                shares.append((sock, virtiofs_tag(i)))
            devices += virtiofs_args(shares, config.qemu_mem)
            creds["fstab.extra"] = (creds.get("fstab.extra", b"") + fstab_extra(mounts).encode())
        devices += smbios_credential_args(smbios_credential_files(creds, tmp / "credentials"))
        register_vm(config, machine, cid, port)
        run_qemu(qemu_argv(args, config, tmp, ssh_port=port, devices=devices, vsock=cid))
    return 0


def find_machine(config: Config, wait: float | None = None, interval: float = 0.5) -> tuple[MachineRecord, bool]:
    """The running machine `mkosi ssh` connects to (see running_machine()). When no machine of the image
    runs yet (`mkosi ssh` started right after `mkosi vm`), waits up to `wait` seconds for one, printing one
    line. Returns the record and whether that line was printed."""
    deadline = time.monotonic() + (MACHINE_START_WAIT if wait is None else wait)
    announced = False
    while True:
        assert config.output is not None
        try:
            return running_machine(config), announced
        except MkosiError:
            if running_machines(config.output.parent) or time.monotonic() > deadline:
                raise
        if not announced:
            log.info(f"Waiting for machine '{machine_name(config)}' to start and accept ssh connections…")
            announced = True
        time.sleep(interval)


def running_machine(config: Config) -> MachineRecord:
    """The running machine `mkosi ssh` connects to: Machine= (or the image name), or the only machine of
    this image that runs."""
    assert config.output is not None
    outdir = config.output.parent
    name = machine_name(config)
    record = read_machine(machine_state_path(outdir, name))
    if record is not None:
        return record
    others = running_machines(outdir)
    if config.machine is None and len(others) == 1:
        return others[0]
    if others:
        names = ", ".join(r.machine for r in others)
        raise MkosiError(f"machine '{name}' is not running; running machines of this image: {names}",
                         hint="choose one with --machine=NAME")
    raise MkosiError(f"no running machine '{name}' of this image",
                     hint="start it with `mkosi vm` or `mkosi boot` (built with Ssh=yes) first")


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
    record, announced = find_machine(config)
    wait_for_sshd(record, config.ssh_timeout, quiet=announced)
    argv = ssh_command(record.host, record.port, key if agent is None else None, agent, list(args.cmdline))
    # sshd answers: a few seconds more for the rare connection that still fails while the machine boots.
    return connect_with_retry(argv, 10)


# ---------------------------------------------------------------------------------------------
# VirtualMachineMonitor=vmspawn
# ---------------------------------------------------------------------------------------------


def _bool(value: bool) -> str:
    return "yes" if value else "no"


def vmspawn_argv(args: Args, config: Config, vmspawn: str, *, register: bool,
                 credentials: dict[str, Path], bind_user: str | None = None) -> list[str]:
    """The systemd-vmspawn command line of the vm verb: what mkosi's qemu command line does, in vmspawn's
    options. The words after the verb come after the options (more vmspawn options, then kernel command
    line words), KernelCommandLineExtra= last."""
    assert config.output is not None
    kind = config.format.row.kind
    if kind not in (FormatKind.disk, FormatKind.tree) or config.qcow2 or config.output_compression:
        raise MkosiError("VirtualMachineMonitor=vmspawn boots uncompressed raw disk images and directories only, "
                         f"not '{config.format}'", hint="use VirtualMachineMonitor=qemu")
    for setting, is_set in (("CXL=", config.cxl), ("Drives=", bool(config.drives)),
                            ("FirmwareVariables=", config.firmware_variables is not None),
                            ("QemuArgs=", bool(config.qemu_args))):
        if is_set:
            raise MkosiError(f"{setting} is not passed to systemd-vmspawn", hint="use VirtualMachineMonitor=qemu")
    boot, secure_boot, with_initrd = vm_firmware(config)
    if boot == BootProtocol.bios:
        raise MkosiError("systemd-vmspawn boots with UEFI firmware or a kernel, not BIOS firmware")
    argv = [vmspawn, f"--machine={machine_name(config)}", f"--cpus={vm_cpus(config)}", f"--ram={config.qemu_mem}",
            f"--register={_bool(register)}"]
    if console_mode(config) != "interactive":
        argv.append(f"--console={console_mode(config)}")   # vmspawn 257 and later; interactive is its default
    argv.append(f"--image={config.output}" if kind is FormatKind.disk else f"--directory={config.output}")
    if config.qemu_kvm != QemuKvm.auto:
        argv.append(f"--kvm={_bool(config.qemu_kvm == QemuKvm.yes)}")
    if config.vsock != Feature.auto:
        argv.append(f"--vsock={_bool(config.vsock == Feature.enabled)}")
    if config.vsock != Feature.disabled and config.vsock_cid not in ("auto", "hash"):
        argv.append(f"--vsock-cid={config.vsock_cid}")
    if config.tpm != Feature.auto:
        argv.append(f"--tpm={_bool(config.tpm == Feature.enabled)}")
    if boot == BootProtocol.linux:
        kernel = Path(config.linux) if config.linux else artifacts.path(config, artifacts.LINUX_KERNEL)
        argv.append(f"--linux={kernel}")
        initrd = artifacts.path(config, artifacts.LINUX_INITRD)
        if with_initrd and initrd.exists():
            argv.append(f"--initrd={initrd}")
    elif secure_boot:
        argv.append("--secure-boot=yes")
    if vm_tap(config):
        argv.append("--network-tap")
    elif config.runtime_network == RuntimeNetwork.user:
        argv.append("--network-user-mode")
    for source, target in runtime_mounts(config):
        argv.append(f"--bind={source}:{target}")
    if bind_user is not None:
        argv.append(f"--bind-user={bind_user}")
    for name, path in credentials.items():
        argv.append(f"--load-credential={name}:{path}")
    if config.forward_journal is not None:
        argv.append(f"--forward-journal={config.forward_journal}")
    argv += [f"--property={p}" for p in config.unit_properties]
    return [*argv, *args.cmdline, *config.kernel_command_line_extra]


def find_vmspawn() -> str:
    found = find_tool("systemd-vmspawn")
    if found is None:
        raise MkosiError("VirtualMachineMonitor=vmspawn, but systemd-vmspawn was not found"
                         + (" in the tools tree" if config_has_tools_tree() else ""),
                         hint="install systemd-vmspawn (systemd 256 or later) or use VirtualMachineMonitor=qemu")
    return found


def config_has_tools_tree() -> bool:
    return current_sandbox().tools is not None


def run_vmspawn(args: Args, config: Config) -> int:
    assert config.output is not None
    vmspawn = find_vmspawn()
    register = want_register(config)
    if config.ssh:
        log.warn("mkosi ssh does not reach machines started by systemd-vmspawn (no forwarded port); "
                 "use vmspawn's own ssh access or VirtualMachineMonitor=qemu")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkosi-vmspawn-")))
        if config.ephemeral:
            copy = stack.enter_context(ephemeral_copy(config.output))
            config = dataclasses.replace(config, output=copy)
        assert config.output is not None
        if config.runtime_size and config.format.row.kind is FormatKind.disk:
            grow_image(config.output, config.runtime_size)
        creds = runtime_credentials(config)
        creds.update(ssh_credentials(config))
        paths = write_credentials(creds, tmp / "credentials") if creds else {}
        bind_user = invoking_user().name if config.bind_user else None
        if config.forward_journal is not None:
            prepare_journal_output(config.forward_journal)
        run_qemu(vmspawn_argv(args, config, vmspawn, register=register, credentials=paths, bind_user=bind_user))
    return 0
