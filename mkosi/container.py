"""The shell and boot verbs: run the image in a systemd-nspawn container.

Disk images go to nspawn with --image= when the host runs udev; without udev (containers, CI
machines) nspawn refuses --image=, so mkosi mounts the root partition itself and uses --directory=."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.enums import RuntimeNetwork
from mkosi.config.keys import build_subdir
from mkosi.config.settings import Args, Config
from mkosi.errors import MkosiError
from mkosi.formats import FormatKind
from mkosi.mounts import umount_all_below
from mkosi.output.artifacts import NSPAWN_SETTINGS, output_stem, written
from mkosi.output.gpt import role_of_type
from mkosi.run import current_sandbox, run
from mkosi.runtime import (
    CONTAINER_JOURNAL_SOCKET,
    FORWARD_CREDENTIAL,
    background,
    check_nspawn_properties,
    find_journal_remote,
    invoking_user,
    journal_remote_argv,
    prepare_journal_output,
    property_args,
    ssh_credentials,
    want_register,
)
from mkosi.sandbox import Container, resolve_in_root, valid_machine_name
from mkosi.ssh import MachineRecord, free_port, machine_state_path, recorded_machine

# nspawn looks for MACHINE.nspawn here first (and trusts what it finds), then next to the image.
NSPAWN_RUNTIME_DIR = Path("/run/systemd/nspawn")

ROOT_TYPES = {
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",  # x86-64 root
    "b921b045-1df0-41c3-af44-4c6f280d3fae",  # arm64 root
    "44479540-f297-41b2-9af7-d131d5f0458a",  # x86 root
}


def host_has_udev() -> bool:
    return Path("/run/udev/control").exists()


def root_partition(image: Path) -> tuple[int, int, bool]:
    """Byte offset and size of the image's root partition, and whether it is marked read-only."""

    table = json.loads(run(["sfdisk", "--json", image], capture=True).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    for part in table["partitions"]:
        role = role_of_type(part["type"])
        if role is not None and role[0] in ("root", "usr"):
            ro = "60" in str(part.get("attrs", ""))
            return int(part["start"]) * sector, int(part["size"]) * sector, ro
    raise MkosiError(f"'{image}' has no root partition")


@contextlib.contextmanager
def mounted_image(image: Path, writable: bool) -> Iterator[Path]:
    offset, size, ro = root_partition(image)
    mnt = Path(tempfile.mkdtemp(prefix="mkosi-mnt-", dir="/var/tmp"))
    opts = f"loop,offset={offset},sizelimit={size}" + (",ro" if ro or not writable else "")
    try:
        run(["mount", "-o", opts, image, mnt], sandbox=current_sandbox().on_host())
        yield mnt
    finally:
        umount_all_below(mnt)
        mnt.rmdir()


@contextlib.contextmanager
def ephemeral_copy(path: Path) -> Iterator[Path]:
    """A throw-away copy (reflinked where the file system allows) removed afterwards."""
    holder = Path(tempfile.mkdtemp(prefix=".mkosi-ephemeral-", dir=path.parent))
    copy = holder / path.name
    try:
        run(["cp", "--archive", "--reflink=auto", "--sparse=always", "--no-target-directory", path, copy])
        yield copy
    finally:
        umount_all_below(holder)
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def nspawn_settings_for(machine: str, settings: Path) -> Iterator[None]:
    """Make nspawn find `settings` for `machine`.

    nspawn reads MACHINE.nspawn, named after the machine, not after the image: an image called
    image_1.2.raw runs as the machine image-1.2 (no '_' in machine names), and a disk image mounted
    by mkosi is run from a directory elsewhere, so STEM.nspawn next to the image would not be found.
    The file is put in nspawn's runtime directory under the machine's name while the container runs.
    """
    target = NSPAWN_RUNTIME_DIR / f"{machine}.nspawn"
    if target.exists():
        log.warn(f"{target} exists already; nspawn uses it instead of {settings}")
        yield
        return
    NSPAWN_RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.mkosi-tmp")
    shutil.copyfile(settings, tmp)
    os.replace(tmp, target)
    try:
        yield
    finally:
        target.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# What the container and the virtual machine verbs share
# ---------------------------------------------------------------------------------------------

# Where RuntimeTrees= without a target (or with a relative one) go in the machine.
RUNTIME_TREE_ROOT = "/root/src"


def machine_name(config: Config) -> str:
    """The name of the running machine: Machine=, else the image name made valid as a host name."""
    return (valid_machine_name(config.machine) or valid_machine_name(output_stem(config))
            or f"mkosi-{uuid.uuid4().hex[:12]}")


def runtime_credentials(config: Config) -> dict[str, bytes]:
    """Credentials=: NAME=VALUE items, files (named after the file; an executable file's output is the
    value) and directories of such files. Later items replace earlier ones of the same name."""
    creds: dict[str, bytes] = {}
    for item in config.credentials:
        if "=" in item:
            name, value = item.split("=", 1)
            creds[name] = value.encode()
            continue
        path = Path(item)
        if not path.exists():
            raise MkosiError(f"Credentials=: '{path}' does not exist")
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if os.access(f, os.X_OK):
                creds[f.name] = run([f], capture=True, text=False, stdin=subprocess.DEVNULL).stdout
            else:
                creds[f.name] = f.read_bytes()
    return creds


def write_credentials(creds: dict[str, bytes], directory: Path) -> dict[str, Path]:
    """Each credential in a file of its own (mode 0600 in a 0700 directory), so that values are handed
    to nspawn and qemu by path and never appear on a command line or in a log."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    paths = {}
    for name, value in creds.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(value)
        paths[name] = path
    return paths


def smbios_credential_files(creds: dict[str, bytes], directory: Path) -> list[Path]:
    """The SMBIOS type 11 strings qemu reads for the credentials, one file each (mode 0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = []
    for i, (name, value) in enumerate(creds.items()):
        path = directory / f"smbios-{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"io.systemd.credential.binary:{name}={base64.b64encode(value).decode()}")
        files.append(path)
    return files


def runtime_tree_target(target: Path | None) -> str:
    if target is None:
        return RUNTIME_TREE_ROOT
    if target.is_absolute():
        return os.fspath(target)
    return f"{RUNTIME_TREE_ROOT}/{target}"


def runtime_mounts(config: Config) -> list[tuple[Path, str]]:
    """Host directories shared with the machine (RuntimeTrees=, and with RuntimeBuildSources= the build
    sources and build directory where the build script saw them), as (source, target in the machine)."""
    mounts = []
    for tree in config.runtime_trees:
        if not tree.source.is_dir():
            raise MkosiError(f"RuntimeTrees=: '{tree.source}' is not a directory")
        mounts.append((tree.source, runtime_tree_target(tree.target)))
    if config.runtime_build_sources:
        if config.build_source is not None:
            mounts.append((config.build_source, "/root/src"))
            mounts += [(t.source, f"/root/src/{str(t.target).lstrip('/')}") for t in config.extra_build_sources]
        if (build := build_subdir(config)) is not None and build.is_dir():
            mounts.append((build, "/root/build"))
    return mounts


def grow_image(image: Path, size: int, qcow2: bool = False) -> None:
    """RuntimeSize=: make a disk image at least `size` bytes big before it is booted; the partition table's
    backup header moves to the new end, so that the image's systemd-repart can grow its partitions."""
    if qcow2:
        run(["qemu-img", "resize", "-q", image, str(size)])
        return
    if image.stat().st_size >= size:
        return
    with open(image, "r+b") as f:
        f.truncate(size)
    run(["sfdisk", "--quiet", "--relocate", "gpt-bak-std", image], capture=True)


SSHD_RUNTIME_DROPIN = "/etc/ssh/sshd_config.d/00-mkosi-runtime.conf"


def sshd_runtime_config(port: int) -> str:
    """sshd of a container that shares the host's network: only on the loopback address, on its own port."""
    return f"# Written by mkosi boot for this run only\nPort {port}\nListenAddress 127.0.0.1\n"


# The getty units and agetty arguments the generator logs root in with (as Autologin= does at build time).
_AUTOLOGIN_GETTYS = {
    "getty@tty1.service": "--noclear - $TERM",
    "serial-getty@ttyS0.service": "--keep-baud 115200,57600,38400,9600 - $TERM",
    "container-getty@0.service": "--noclear --keep-baud pts/%I 115200,38400,9600 $TERM",
    "console-getty.service": "--noclear --keep-baud console 115200,38400,9600 $TERM",
}

RUNTIME_GENERATOR_PATH = "etc/systemd/system-generators/mkosi-runtime-generator"

_GENERATOR = r"""#!/bin/sh
# Installed by mkosi: applies runtime credentials at every boot (see "Logging in" in mkosi(1)).
creds=/run/credentials/@system
if [ "$1" = "--set-root-password" ]; then
    if [ -s "$creds/passwd.hashed-password.root" ]; then
        printf 'root:%s\n' "$(cat "$creds/passwd.hashed-password.root")" | chpasswd -e
    elif [ -e "$creds/passwd.plaintext-password.root" ]; then
        printf 'root:%s\n' "$(cat "$creds/passwd.plaintext-password.root")" | chpasswd
    fi
    exit
fi
out="${1:-/tmp}"
[ -d "$creds" ] || exit 0
if [ -e "$creds/passwd.hashed-password.root" ] || [ -e "$creds/passwd.plaintext-password.root" ]; then
    cat >"$out/mkosi-root-password.service" <<EOF
[Unit]
Description=Set the root password from a credential
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service systemd-sysusers.service
Before=sysinit.target systemd-user-sessions.service
ConditionPathIsReadWrite=/etc

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/@SELF@ --set-root-password
EOF
    mkdir -p "$out/sysinit.target.wants"
    ln -sf ../mkosi-root-password.service "$out/sysinit.target.wants/mkosi-root-password.service"
fi
case "$(cat "$creds/mkosi.autologin" 2>/dev/null)" in
1|yes|true|root)
    agetty=$(command -v agetty || echo /sbin/agetty)
    dropin() {
        mkdir -p "$out/$1.d"
        printf '[Service]\nExecStart=\nExecStart=-%s -o %s --autologin root %s\n' \
            "$agetty" "'-p -f -- \\\\u'" "$2" >"$out/$1.d/mkosi-autologin.conf"
    }
@AUTOLOGIN@    ;;
esac
version=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
if [ -e "$creds/fstab.extra" ] && [ "${version:-0}" -lt 254 ]; then
    while read -r what where type opts rest; do
        case "$what" in ''|'#'*) continue ;; esac
        unit=$(systemd-escape --path --suffix=mount "$where")
        printf '[Unit]\nBefore=local-fs.target\n\n[Mount]\nWhat=%s\nWhere=%s\nType=%s\nOptions=%s\n' \
            "$what" "$where" "$type" "${opts:-defaults}" >"$out/$unit"
        mkdir -p "$out/local-fs.target.wants"
        ln -sf "../$unit" "$out/local-fs.target.wants/$unit"
    done <"$creds/fstab.extra"
fi
exit 0
"""


def runtime_generator() -> str:
    """A systemd generator put into images with systemd. At every boot it applies the credentials that
    mkosi documents for logging in, from the machine's system credentials, so that they take effect
    without a rebuild: passwd.hashed-password.root or passwd.plaintext-password.root set root's password
    (through a oneshot service running chpasswd), mkosi.autologin=yes logs root in on the consoles, and
    fstab.extra (how RuntimeTrees= reach a VM) is mounted also by systemd older than 254, which does not
    read it itself."""
    autologin = "".join(f"    dropin '{unit}' '{tail}'\n" for unit, tail in _AUTOLOGIN_GETTYS.items())
    return _GENERATOR.replace("@SELF@", RUNTIME_GENERATOR_PATH).replace("@AUTOLOGIN@", autologin)


def install_runtime_generator(root: Path) -> None:
    """Put the generator of runtime_generator() into an image that has systemd."""
    if not any((root / p).exists() for p in ("usr/lib/systemd/systemd", "lib/systemd/systemd")):
        return
    path = root / RUNTIME_GENERATOR_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(runtime_generator())
    path.chmod(0o755)


def remove_empty_mount_point(path: Path) -> None:
    if path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
        path.unlink()


def container_network(config: Config) -> tuple[bool, list[str]]:
    """RuntimeNetwork= for nspawn: `user` shares the host's network, `interface` (or the classic
    Netdev=yes) gives a veth link, `none` only a loopback device. Returns (shares or owns a network,
    extra nspawn options)."""
    if config.netdev or config.runtime_network == RuntimeNetwork.interface:
        return True, ["--network-veth"]
    if config.runtime_network == RuntimeNetwork.none:
        return False, []
    return True, []


def nspawn_runtime_args(config: Config, tmp: Path,
                        more_credentials: Optional[dict[str, bytes]] = None) -> tuple[list[str], dict[str, Path]]:
    """The nspawn options of Credentials= (one --load-credential= each, the values in files below `tmp`;
    with SshCertificate= the authorized key, and `more_credentials`), RuntimeTrees=/RuntimeBuildSources=
    (--bind=), RuntimeNetwork=, BindUser= (--bind-user=) and UnitProperties= (--property=)."""
    extra = []
    values = runtime_credentials(config) if config.credentials else {}
    values.update(ssh_credentials(config))
    values.update(more_credentials or {})
    creds = write_credentials(values, tmp / "credentials") if values else {}
    for name, path in creds.items():
        extra.append(f"--load-credential={name}:{path}")
    for source, target in runtime_mounts(config):
        extra.append(f"--bind={source}:{target}")
    extra += container_network(config)[1]
    if config.bind_user:
        # nspawn maps the user into the container with a user namespace, which --bind-user= needs; the
        # image's files are mapped with an idmapped mount (never chowned, so the image is not changed).
        extra += ["--private-users=pick", "--private-users-ownership=map", f"--bind-user={invoking_user().name}"]
    extra += property_args(config)
    return extra, creds


def run_container(args: Args, config: Config, boot: bool) -> int:
    cmd = list(args.cmdline)
    assert config.output is not None
    if os.getuid() != 0:
        raise MkosiError(f"'mkosi {args.verb.value}' must be run as root")
    kind = config.format.row.kind
    if kind is FormatKind.disk and (config.output_compression or config.qcow2):
        raise MkosiError(f"the '{args.verb.value}' verb needs an uncompressed raw image")
    if kind not in (FormatKind.disk, FormatKind.tree):
        raise MkosiError(f"the '{args.verb.value}' verb needs a directory, subvolume or disk image, "
                         f"not '{config.format}'")
    if boot:
        # KernelCommandLineExtra=: the container's init takes them like kernel command line options.
        cmd = [*config.kernel_command_line_extra, *cmd]
    machine = machine_name(config)
    settings = written(config, NSPAWN_SETTINGS)
    network, _ = container_network(config)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkosi-nspawn-")))
        register = want_register(config)
        check_nspawn_properties(config, config.nspawn_keep_unit)
        more: dict[str, bytes] = {}
        journal_binds = []
        if config.forward_journal is not None:
            # journald in the container (systemd 256 and later) sends its entries to the socket of a
            # systemd-journal-remote on the host, bound into the container.
            sock = tmp / "journal.sock"
            prepare_journal_output(config.forward_journal)
            argv = journal_remote_argv(find_journal_remote(), config.forward_journal, os.fspath(sock))
            stack.enter_context(background(argv, "systemd-journal-remote", ready=sock))
            journal_binds.append(f"--bind={sock}:{CONTAINER_JOURNAL_SOCKET}")
            more[FORWARD_CREDENTIAL] = CONTAINER_JOURNAL_SOCKET.encode()
        extra, _ = nspawn_runtime_args(config, tmp, more)
        extra += journal_binds
        if settings is not None and settings.exists():
            extra.append("--settings=trusted")
            stack.enter_context(nspawn_settings_for(machine, settings))
        target = config.output
        # nspawn snapshots directories itself; image files are copied here when it cannot use them.
        use_image = kind is FormatKind.disk and host_has_udev()
        ephemeral_by_nspawn = config.ephemeral and (use_image or kind is FormatKind.tree)
        if config.ephemeral and not ephemeral_by_nspawn:
            target = stack.enter_context(ephemeral_copy(target))
        if config.runtime_size and kind is FormatKind.disk:
            if not config.ephemeral:
                log.info(f"Growing {target} to {config.runtime_size} bytes (RuntimeSize=)")
            grow_image(target, config.runtime_size)
        if boot and config.ssh and network and not (config.netdev or
                                                    config.runtime_network == RuntimeNetwork.interface):
            # The container shares the host's network: its sshd gets a free port on the loopback address,
            # recorded for `mkosi ssh`.
            port = free_port()
            dropin = tmp / "sshd-runtime.conf"
            dropin.write_text(sshd_runtime_config(port))
            extra.append(f"--bind-ro={dropin}:{SSHD_RUNTIME_DROPIN}")
            record = MachineRecord(machine=machine, kind="container", host="127.0.0.1", port=port, pid=os.getpid())
            stack.enter_context(recorded_machine(machine_state_path(config.output.parent, machine), record))
        elif boot and config.ssh:
            log.warn("mkosi ssh reaches containers only with RuntimeNetwork=user (the host's network)")
        if kind is FormatKind.disk and not use_image:
            log.debug("no udev on this host: mounting the root partition for systemd-nspawn --directory")
            target = stack.enter_context(mounted_image(target, writable=True))
        if any(a.endswith(":" + SSHD_RUNTIME_DROPIN) for a in extra) and not use_image and not ephemeral_by_nspawn:
            # nspawn makes an empty file in the image to mount the sshd configuration on; not left behind.
            point = resolve_in_root(target, SSHD_RUNTIME_DROPIN)
            if point is not None and not point.exists() and not point.is_symlink():
                stack.callback(remove_empty_mount_point, point)
        container = Container(keep_unit=config.nspawn_keep_unit, machine=machine, image=use_image,
                              boot=boot, ephemeral=ephemeral_by_nspawn, extra=tuple(extra), register=register)
        sandbox = current_sandbox().nspawn(target, network=network, container=container)
        return run(cmd, sandbox=sandbox, check=False).returncode
