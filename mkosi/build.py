"""build_image(): the pipeline of the man page's execution flow, one named step per function."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import gnupg

from mkosi import basetrees, log, selinux
from mkosi.boot.bootable import settle_bootable
from mkosi.boot.initrd import make_initrd_files
from mkosi.boot.kmod import process_kernel_modules
from mkosi.cache import (
    build_key,
    image_cache_key,
    load_cached_image,
    package_cache_dir,
    release_cache_locks,
    save_cached_image,
    write_private,
)
from mkosi.config.enums import BasePackages, BootProtocol, CleanPackageMetadata
from mkosi.config.keys import build_subdir
from mkosi.config.settings import Args, Config
from mkosi.container import install_runtime_generator
from mkosi.context import Context, Phase
from mkosi.dependencies import check_host_tools
from mkosi.distributions.registry import plugin
from mkosi.elf import image_architecture
from mkosi.errors import MkosiError
from mkosi.firstboot import configure_firstboot
from mkosi.formats import FormatKind
from mkosi.installers import localrepo
from mkosi.manifest import write_manifests, write_sboms
from mkosi.mounts import umount_all_below
from mkosi.output import artifacts
from mkosi.output.artifacts import (
    Artifact,
    cached_image_path,
    incremental_cache_paths,
    output_key_path,
    staged,
)
from mkosi.output.extension import write_extension_release
from mkosi.output.make import check_target, make_outputs, maker
from mkosi.preflight import (
    WORKSPACE_PREFIX,
    check_writable,
    discard_in_background,
    keep_workspace,
    mark_workspace,
    output_lock,
    private_mount_namespace,
    recover_interrupted_move,
    remove_in_background,
    remove_stale_workspaces,
)
from mkosi.run import find_tool, run
from mkosi.runtime import certificate_public_key
from mkosi.scripts import (
    copy_build_results,
    copy_build_sources,
    run_build_script,
    run_finalize_script,
    run_host_scripts,
    run_postinst_script,
    run_prepare_script,
)
from mkosi.ssh import generate_ssh_keypair
from mkosi.subvolumes import make_tree
from mkosi.trees import chown_to_invoking_user, copy_into_root, install_tree, resolve_in_root

# ---------------------------------------------------------------- workspace

def workspace_parent(config: Config) -> Path:
    if config.workspace_dir is not None:
        return config.workspace_dir
    return Path(os.environ.get("TMPDIR") or "/var/tmp")


@contextlib.contextmanager
def workspace(config: Config, keep: bool = False) -> Iterator[Path]:
    """A fresh workspace directory, removed afterwards; with `keep` (--debug-workspace) it stays, its
    mounts undone, and its path is printed."""
    parent = workspace_parent(config)
    parent.mkdir(parents=True, exist_ok=True)
    ws = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=parent))
    mark_workspace(ws)
    log.debug(f"workspace {ws}")
    try:
        yield ws
    except BaseException:
        release_cache_locks()
        umount_all_below(ws)
        if keep:
            keep_workspace(ws, failed=True)
            raise
        shutil.rmtree(ws, ignore_errors=True)
        if ws.exists():
            log.warn(f"could not remove the workspace {ws} completely")
        raise
    else:
        release_cache_locks()  # the overlays on cached images are no longer read
        if keep:
            umount_all_below(ws)
            keep_workspace(ws, failed=False)
            return
        # After a successful build the results are in place already: the (possibly large) workspace
        # is deleted in the background instead of keeping the user waiting.
        remove_in_background(ws)


# ---------------------------------------------------------------- steps of one phase

def packages_for(ctx: Context) -> list[str]:
    config = ctx.config
    if config.bootable_auto:
        # Bootable=auto adds no kernel and no boot loader packages: the image is bootable when its own
        # packages bring them (settle_bootable()).
        config = dataclasses.replace(config, bootable=False, bootable_auto=False)
    dist = plugin(config.distribution)
    pkgs: list[str] = []
    if config.base_packages == BasePackages.conditional:
        pkgs += dist.conditional_packages(config)
    elif config.base_packages != BasePackages.no:
        pkgs += dist.base_packages(config)
        if config.ssh and ctx.phase == Phase.final:
            pkgs += dist.ssh_packages
        if config.bootable and BootProtocol.uefi in config.boot_protocols:
            pkgs += dist.uefi_packages
    pkgs += config.packages
    if ctx.phase == Phase.build:
        pkgs += config.build_packages
    return list(dict.fromkeys(pkgs))


def install_volatile_packages(ctx: Context) -> None:
    """VolatilePackages=: into the final image only, after the build script ran and after the cached image
    was saved or reused, so they are never part of a cached image."""
    pkgs = list(dict.fromkeys(ctx.config.volatile_packages))
    if ctx.phase != Phase.final or not pkgs:
        return
    with log.step(f"Installing volatile packages ({', '.join(pkgs)})"):
        plugin(ctx.config.distribution).install(ctx, pkgs)


def copy_skeleton_trees(ctx: Context) -> None:
    for tree in ctx.config.skeleton_trees:
        with log.step(f"Copying skeleton tree {tree}"):
            install_tree(tree.source, ctx.root, str(tree.target or "/"))


# The package managers that can install without checking signatures (RepositoryKeyCheck=no), and
# the ones that can build from a LocalMirror= instead of the distribution's repositories.
KEY_CHECK_OPTIONAL = ("apt-get", "dnf")
LOCAL_MIRROR_SUPPORTED = ("dnf",)
# The package managers that know recommended (weak) dependencies (WithRecommends=).
RECOMMENDS_SUPPORTED = ("apt-get", "dnf", "zypper")


def install_distribution(ctx: Context) -> None:
    pkgs = packages_for(ctx)
    if basetrees.base_sources(ctx.config):
        # The base trees are the distribution: only the packages asked for are added to them.
        pkgs = list(dict.fromkeys([*ctx.config.packages,
                                   *(ctx.config.build_packages if ctx.phase == Phase.build else [])]))
        if not pkgs:
            return
    dist = plugin(ctx.config.distribution)
    if not ctx.config.repository_key_check and dist.package_manager not in KEY_CHECK_OPTIONAL:
        log.warn(f"RepositoryKeyCheck=no is not implemented yet for {dist.package_manager}: "
                 "signatures are checked as usual")
    if ctx.config.local_mirror and dist.package_manager not in LOCAL_MIRROR_SUPPORTED:
        log.warn(f"LocalMirror= is not implemented yet for {dist.package_manager}: the usual repositories are used")
    if ctx.config.snapshot and dist.package_manager not in ("apt-get", "pacman"):
        raise MkosiError(f"Snapshot= is not implemented yet for {ctx.config.distribution.value} "
                         "(only Debian's, Ubuntu's and Arch Linux's snapshot archives are)",
                         hint="remove Snapshot=, or point Mirror= at a snapshot of the repositories")
    if ctx.config.with_recommends and dist.package_manager not in RECOMMENDS_SUPPORTED:
        log.info(f"WithRecommends=yes: {dist.package_manager} has no recommended dependencies; "
                 "nothing more is installed")
    with log.step(f"Installing {ctx.config.distribution.value} {ctx.config.release} ({len(pkgs)} packages requested)"):
        plugin(ctx.config.distribution).install(ctx, pkgs)


def verify_architecture(ctx: Context) -> None:
    """The installed binaries must be built for Architecture=; catches repositories of the wrong one."""

    found = image_architecture(ctx.root)
    if found is not None and found != ctx.config.architecture:
        raise MkosiError(f"the image's binaries are built for {found}, but Architecture= is {ctx.config.architecture}",
                         hint="check Mirror=/Repositories= point at repositories for that architecture")


def copy_extra_trees(ctx: Context) -> None:
    for tree in ctx.config.extra_trees:
        with log.step(f"Copying extra tree {tree}"):
            install_tree(tree.source, ctx.root, str(tree.target or "/"))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def in_image(ctx: Context, path: str) -> Path:
    """Where `path` of the image is on the host: links resolved inside the image, never onto the host."""
    return resolve_in_root(ctx.root, path)


def image_entry(ctx: Context, path: str) -> Path:
    """The entry `path` itself (a link is not followed at the last component), its directory resolved
    inside the image: what to unlink or replace."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return resolve_in_root(ctx.root, parent) / name


def configure_hostname(ctx: Context) -> None:
    if ctx.config.hostname:
        _write(in_image(ctx, "etc/hostname"), ctx.config.hostname + "\n")


def configure_os_release(ctx: Context) -> None:
    config = ctx.config
    if not config.image_id and not config.image_version:
        return
    osr = in_image(ctx, "etc") / "os-release"
    target = in_image(ctx, "etc/os-release")
    text = target.read_text() if target.is_file() else ""
    if osr.is_symlink():
        osr.unlink()
    lines = [line for line in text.splitlines() if not line.startswith(("IMAGE_ID=", "IMAGE_VERSION="))]
    if config.image_id:
        lines.append(f"IMAGE_ID={config.image_id}")
    if config.image_version:
        lines.append(f"IMAGE_VERSION={config.image_version}")
    _write(osr, "\n".join(lines) + "\n")


def hash_password(password: str) -> str:
    """SHA-512 crypt(3) hash; the password goes through stdin, never a command line."""

    return str(run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture=True,
                   log_argv=["openssl", "passwd", "-6", "-stdin"]).stdout).strip()


def configure_root_password(ctx: Context) -> None:
    config = ctx.config
    shadow = in_image(ctx, "etc/shadow")
    if not shadow.exists():
        return
    if config.password is None:
        entry = "!*"  # locked; the distributions' default, made explicit
        if ctx.phase == Phase.final:
            _set_shadow_password(shadow, entry, only_if_empty=True)
        return
    hashed = config.password if config.password_is_hashed else hash_password(config.password)
    _set_shadow_password(shadow, hashed)


def _set_shadow_password(shadow: Path, hashed: str, only_if_empty: bool = False) -> None:
    lines = shadow.read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            if only_if_empty and fields[1] not in ("", "*"):
                return
            fields[1] = hashed
            lines[i] = ":".join(fields)
    shadow.write_text("\n".join(lines) + "\n")
    shadow.chmod(0o640)


def configure_machine_id(ctx: Context) -> None:
    mid = image_entry(ctx, "etc/machine-id")
    if ctx.config.machine_id:
        _write(mid, ctx.config.machine_id + "\n", 0o444)
    elif ctx.phase == Phase.final:
        # No machine ID is shipped: an empty file makes systemd generate one at first boot.
        if mid.exists() or mid.is_symlink():
            mid.unlink()
        _write(mid, "", 0o444)
        dbus = image_entry(ctx, "var/lib/dbus/machine-id")
        if dbus.exists() and not dbus.is_symlink():
            dbus.unlink()


# getty units and the agetty arguments that make each of them log root in without a prompt.
AUTOLOGIN_GETTYS = {
    "getty@tty1.service": "--noclear - $TERM",
    "serial-getty@ttyS0.service": "--keep-baud 115200,57600,38400,9600 - $TERM",
    "container-getty@0.service": "--noclear --keep-baud pts/%I 115200,38400,9600 $TERM",
    "console-getty.service": "--noclear --keep-baud console 115200,38400,9600 $TERM",
}


def configure_autologin(ctx: Context) -> None:
    """Autologin=: root is logged in on tty1, ttyS0 (qemu) and pts/0 (nspawn) without a password."""
    if not ctx.config.autologin:
        return
    exe = "/sbin/agetty" if (in_image(ctx, "sbin/agetty")).exists() else "/usr/sbin/agetty"
    for unit, tail in AUTOLOGIN_GETTYS.items():
        _write(in_image(ctx, f"etc/systemd/system/{unit}.d/autologin.conf"),
               f"[Service]\nExecStart=\nExecStart=-{exe} -o '-p -f -- \\\\u' --autologin root {tail}\n")
    pam = in_image(ctx, "etc/pam.d/login")
    if pam.exists():
        text = pam.read_text()
        rule = "auth sufficient pam_succeed_if.so tty in tty1:ttyS0:pts/0:console user = root quiet\n"
        if rule not in text:
            pam.write_text(rule + text)


def configure_qemu_headless(ctx: Context) -> None:
    if not ctx.config.qemu_headless:
        return
    term = os.environ.get("TERM", "vt220")
    dropin = in_image(ctx, "etc/systemd/system/serial-getty@ttyS0.service.d/term.conf")
    _write(dropin, f"[Service]\nEnvironment=TERM={term}\n")


def configure_network(ctx: Context) -> None:
    """Ssh=/Netdev=: the image configures its network by itself (DHCP with systemd-networkd)."""
    config = ctx.config
    if ctx.phase != Phase.final or not (config.ssh or config.netdev):
        return
    if not (in_image(ctx, "usr/lib/systemd/system/systemd-networkd.service")).exists():
        log.warn("systemd-networkd is not in the image; its network is left unconfigured")
        return
    _write(in_image(ctx, "etc/systemd/network/80-mkosi-dhcp.network"),
           "[Match]\nName=en* eth*\nType=ether\n\n[Network]\nDHCP=yes\n")

    run(["systemctl", "--root", ctx.root, "enable", "systemd-networkd.service"], capture=True)


def configure_ssh(ctx: Context) -> None:
    """Ssh=yes: authorize a generated key (or the agent's keys), listen on SshPort=, fresh host keys per
    machine."""
    config = ctx.config
    if not config.ssh or ctx.phase != Phase.final:
        return

    keys: list[str] = []
    if config.ssh_agent:
        sock = os.environ.get("SSH_AUTH_SOCK") if config.ssh_agent.lower() in ("yes", "true", "1") else config.ssh_agent
        if not sock:
            raise MkosiError("SshAgent=yes but $SSH_AUTH_SOCK is not set", hint="run with sudo -E")
        keys += str(run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": sock}, capture=True).stdout).splitlines()
    elif config.ssh_key is not None and (Path(f"{config.ssh_key}.pub").is_file() or config.ssh_certificate is None):
        keys.append(Path(f"{config.ssh_key}.pub").read_text().strip())
    elif config.ssh_key is not None and config.ssh_certificate is not None:
        keys.append(certificate_public_key(config.ssh_certificate))
    else:
        pub = generate_ssh_keypair(staged(ctx, artifacts.SSH_KEY), f"mkosi {config.image_id or 'image'}")
        keys.append(pub.read_text().strip())
    auth = in_image(ctx, "root/.ssh/authorized_keys")
    auth.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth.write_text("\n".join(keys) + "\n")
    auth.chmod(0o600)
    if config.ssh_port != 22:
        _write(in_image(ctx, "etc/ssh/sshd_config.d/mkosi-port.conf"), f"Port {config.ssh_port}\n")
    for key in (in_image(ctx, "etc/ssh")).glob("ssh_host_*"):
        key.unlink()
    # Host keys are made on the first boot of each machine, before sshd checks its configuration.
    ssh_hostkeys_at_boot(ctx)


def remove_packages(ctx: Context) -> None:
    config = ctx.config
    if not config.remove_packages:
        return
    if config.clean_package_metadata == CleanPackageMetadata.no:
        log.info("Skipping RemovePackages= because CleanPackageMetadata=no")
        return
    with log.step(f"Removing packages {', '.join(config.remove_packages)}"):
        plugin(config.distribution).remove_packages(ctx, config.remove_packages)


def remove_files(ctx: Context) -> None:
    globs = ctx.config.remove_files
    if not globs:
        return
    with log.step("Removing files"):
        for pattern in globs:
            rel = pattern.lstrip("/")
            for match in sorted(ctx.root.glob(rel), reverse=True):
                if match.is_dir() and not match.is_symlink():
                    shutil.rmtree(match)
                else:
                    match.unlink()
                log.debug(f"removed /{match.relative_to(ctx.root)}")


def clean_package_metadata(ctx: Context) -> None:
    mode = ctx.config.clean_package_metadata
    if mode == CleanPackageMetadata.no:
        return
    dist = plugin(ctx.config.distribution)
    if mode == CleanPackageMetadata.auto and dist.package_manager_present(ctx):
        return
    with log.step("Cleaning package manager metadata"):
        dist.clean_package_metadata(ctx, force=mode == CleanPackageMetadata.yes)


def build_epoch(ctx: Context) -> Optional[int]:
    """SourceDateEpoch=, or SOURCE_DATE_EPOCH when the configuration did not resolve one."""
    if ctx.config.source_date_epoch is not None:
        return ctx.config.source_date_epoch
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else None


PACKAGE_MANAGER_LOGS = ("var/log/dnf.log", "var/log/dnf.librepo.log", "var/log/dnf.rpm.log", "var/log/hawkey.log",
                        "var/log/dnf5.log", "var/log/zypper.log", "var/log/zypp/history", "var/log/pacman.log",
                        "var/log/emerge.log", "var/log/emerge-fetch.log", "var/log/portage/elog/summary.log")


def reproducibility_cleanup(ctx: Context) -> None:
    """Drop files that only record when or on which machine the image was built; with a source date
    epoch also what would make two builds differ by itself (.pyc files, password change dates, mtimes)."""
    for rel in ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log",
                "var/cache/ldconfig/aux-cache", "var/lib/systemd/random-seed", "etc/.pwd.lock",
                "var/lib/dpkg/lock", "var/lib/dpkg/lock-frontend", "var/lib/dpkg/triggers/Lock",
                "var/cache/debconf/config.dat-old", "var/cache/debconf/templates.dat-old",
                "var/cache/debconf/passwords.dat-old",
                "var/lib/dpkg/status-old", "var/lib/dpkg/diversions-old", "etc/passwd-", "etc/group-",
                "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-", "var/lib/systemd/credential.secret"):
        p = image_entry(ctx, rel)
        if p.is_file() or p.is_symlink():
            p.unlink()
    for d in ("var/log/apt", "var/log/journal"):
        p = in_image(ctx, d)
        if p.is_dir():
            for child in p.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    # The logs the package managers write while the image is built (the image's own scripts may keep
    # theirs in /var/log: those stay).
    for rel in PACKAGE_MANAGER_LOGS:
        p = image_entry(ctx, rel)
        if p.is_file() and not p.is_symlink():
            p.unlink()
    remove_ssh_host_keys(ctx)
    epoch = build_epoch(ctx)
    if epoch is not None:
        remove_pyc_files(ctx.root)
        clamp_password_dates(in_image(ctx, "etc/shadow"), epoch)
        if not basetrees.is_overlaid(ctx):
            # Over base trees this would copy every file up: the changes are clamped once they are apart.
            clamp_mtimes(ctx.root, epoch)


def remove_ssh_host_keys(ctx: Context) -> None:
    """Host keys made by the ssh package's scripts would be shared by every machine running the image
    (and differ between builds): they are removed, and made on the first boot instead."""
    keys = sorted(in_image(ctx, "etc/ssh").glob("ssh_host_*"))
    for key in keys:
        key.unlink()
    if keys:
        ssh_hostkeys_at_boot(ctx)


def ssh_hostkeys_at_boot(ctx: Context) -> None:
    unit = "ssh.service" if (in_image(ctx, "usr/lib/systemd/system/ssh.service")).exists() else "sshd.service"
    _write(in_image(ctx, f"etc/systemd/system/{unit}.d/mkosi-hostkeys.conf"),
           "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n")


def remove_pyc_files(root: Path) -> None:
    """Byte-compiled Python files record details of the build; Python rewrites them when needed."""
    for pattern in ("usr/lib/python3*", "usr/lib64/python3*", "usr/local/lib/python3*"):
        for libdir in root.glob(pattern):
            for cache in sorted(libdir.rglob("__pycache__"), reverse=True):
                if cache.is_dir() and not cache.is_symlink():
                    shutil.rmtree(cache)


def clamp_password_dates(shadow: Path, epoch: int) -> None:
    """The 'last password change' field of /etc/shadow (days since 1970) no later than the epoch."""
    if not shadow.is_file():
        return
    day = epoch // 86400
    lines = shadow.read_text().splitlines()
    changed = False
    for i, line in enumerate(lines):
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > day:
            fields[2] = str(day)
            lines[i] = ":".join(fields)
            changed = True
    if changed:
        mode = shadow.stat().st_mode
        shadow.write_text("\n".join(lines) + "\n")
        shadow.chmod(mode & 0o7777)


def clamp_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if st.st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)


# ---------------------------------------------------------------- outputs

def write_manifest(ctx: Context) -> None:

    with log.step("Writing manifests"):
        write_manifests(ctx)


def make_output(ctx: Context) -> None:

    make_outputs(ctx)


Staged = list[tuple[Artifact, Path]]


def write_checksums(ctx: Context, made: Staged) -> Staged:
    """SHA256SUMS of the artifacts the table marks as checksummed (never the private ssh key)."""
    if not artifacts.CHECKSUM.when(ctx.config):
        return []
    out = staged(ctx, artifacts.CHECKSUM)
    lines = []
    for a in sorted((p for art, p in made if art.checksummed), key=lambda p: p.name):
        if a.is_file():
            h = hashlib.sha256()
            with open(a, "rb") as f:
                for chunk in iter(lambda: f.read(4 * 1024 * 1024), b""):
                    h.update(chunk)
            lines.append(f"{h.hexdigest()} *{a.name}\n")
    out.write_text("".join(lines))
    return [(artifacts.CHECKSUM, out)]


def sign_checksums(ctx: Context, checksums: Staged) -> Staged:
    config = ctx.config
    if not artifacts.SIGNATURE.when(config) or not checksums:
        return []

    out = staged(ctx, artifacts.SIGNATURE)
    if config.openpgp_tool != "gpg":
        sop_sign(config.openpgp_tool, config.key, checksums[0][1], out)
        return [(artifacts.SIGNATURE, out)]
    gpg = gnupg.GPG(gnupghome=os.environ.get("GNUPGHOME"))
    with open(checksums[0][1], "rb") as f:
        result = gpg.sign_file(f, keyid=config.key, detach=True, binary=True, output=str(out))
    if not out.exists() or not result:
        raise MkosiError(f"signing SHA256SUMS with gpg failed: {getattr(result, 'stderr', '').strip()[-300:]}",
                         hint="check that the key given with Key= is in the gpg keyring")
    return [(artifacts.SIGNATURE, out)]


def sop_argv(tool: str, key: Path) -> list[str]:
    """A Stateless OpenPGP tool's detached binary signature of standard input with the secret key file."""
    return [tool, "sign", "--as=binary", os.fspath(key)]


def sop_sign(tool: str, key: Optional[str], data: Path, out: Path) -> None:
    """OpenPGPTool= other than gpg: `TOOL sign` (the SOP interface: sqop, rsop, ...) with Key= naming the
    secret key file; the signature of `data` goes to `out`."""
    if not key:
        raise MkosiError(f"Sign=yes with OpenPGPTool={tool} needs Key= naming a file with the secret key",
                         hint="a Stateless OpenPGP tool takes the key as a file, not from a keyring")
    keyfile = Path(key).expanduser()
    if not keyfile.is_file():
        raise MkosiError(f"Key={key}: no such file (OpenPGPTool={tool} takes the secret key from a file)")
    path = find_tool(tool)
    if path is None:
        raise MkosiError(f"OpenPGPTool={tool}: '{tool}' was not found",
                         hint="install a Stateless OpenPGP tool (Debian: sqop), or use OpenPGPTool=gpg")
    with open(data, "rb") as stdin, open(out, "wb") as stdout:
        proc = run(sop_argv(path, keyfile.absolute()), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                   check=False, text=False)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise MkosiError(f"signing SHA256SUMS with {tool} failed (exit status {proc.returncode}): "
                         f"{(proc.stderr or b'').decode(errors='replace').strip()[-300:]}")


def move_into_place(config: Config, made: Staged) -> None:
    """Replace previous outputs only now that everything succeeded."""
    for artifact, staged_path in made:
        target = artifacts.path(config, artifact)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_path(staged_path, target)
        if not config.no_chown:
            chown_to_invoking_user(target)
    # The image is in place: the link named after the output (modern trees) may point at it.
    if any(artifact is artifacts.IMAGE for artifact, _ in made):
        link = artifacts.link_output(config)
        if link is not None and not config.no_chown:
            chown_to_invoking_user(link)


def replace_path(src: Path, dst: Path) -> None:
    """Atomically (for files) put src at dst, across file systems if need be."""
    tmp = dst.parent / f".mkosi-tmp-{dst.name}"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
    try:
        os.rename(src, tmp)
    except OSError:
        _copy_across(src, tmp, dst)
    if dst.is_dir() and not dst.is_symlink():
        old = dst.parent / f".mkosi-old-{dst.name}"
        os.rename(dst, old)
        os.rename(tmp, dst)
        if old.stat().st_ino == BTRFS_SUBVOLUME_INODE:
            _rmtree_any(old)  # perhaps a subvolume: deleted as one, now
        else:
            discard_in_background(old, dst.name)  # the new output is in place: the build need not wait for this
    else:
        os.replace(tmp, dst)


def _copy_across(src: Path, tmp: Path, dst: Path) -> None:
    """Copy src to tmp (another file system). When it fails, the partial copy goes: a full disk must not
    stay full of half an output, and the error names the destination, in one line."""
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tmp, symlinks=True)
            shutil.rmtree(src)
        else:
            shutil.copy2(src, tmp)
            src.unlink()
    except OSError as e:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise MkosiError(f"no space left on the file system of {dst.parent} for {dst.name}",
                             hint="free some space there, or choose another OutputDirectory=")
        raise MkosiError(f"cannot write {dst}: {_first_reason(e)}")


def _no_space(e: OSError) -> bool:
    # shutil.copytree raises one Error listing every file that failed: (src, dst, reason) triples.
    if e.errno == errno.ENOSPC:
        return True
    return isinstance(e, shutil.Error) and any("No space left" in str(why) for *_, why in e.args[0])


def _first_reason(e: OSError) -> str:
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        return str(e.args[0][0][-1])[:200]
    return (e.strerror or str(e))[:200]


# The root directory of a btrfs subvolume always has this inode number.
BTRFS_SUBVOLUME_INODE = 256


def _rmtree_any(path: Path) -> None:

    # A btrfs subvolume output is deleted as a subvolume; anything else with rmtree.
    if find_tool("btrfs") and run(["btrfs", "subvolume", "delete", path], check=False, capture=True).returncode == 0:
        return
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the pipeline

def build_phase(ctx: Context, rerun: bool = False) -> None:
    """The steps of one phase. With `rerun` (-R) the cached development image is used whatever its
    inputs are now; its absence is an error (checked before the build starts, see check_rerun())."""
    make_tree(ctx.config, ctx.root)  # UseSubvolumes=: a subvolume, whose snapshots make the cache cheap
    # Everything up to the prepare script is what incremental mode caches (not the base trees).
    incremental = ctx.args.incremental and not basetrees.base_sources(ctx.config)
    if ctx.args.incremental and not incremental:
        log.info("Not caching the image: it is built on base trees")
    key = image_cache_key(ctx, packages_for(ctx)) if incremental or rerun else ""
    if rerun:
        if not load_cached_image(ctx, key, stale_ok=True):
            raise MkosiError(no_cached_image_message(ctx.config))
    elif not (incremental and load_cached_image(ctx, key)):
        copy_skeleton_trees(ctx)
        install_distribution(ctx)
        verify_architecture(ctx)
        run_prepare_script(ctx)
        if incremental:
            save_cached_image(ctx, key)
    configure_hostname(ctx)
    configure_machine_id(ctx)
    configure_os_release(ctx)
    configure_root_password(ctx)
    configure_autologin(ctx)
    if ctx.phase == Phase.final:
        install_runtime_generator(ctx.root)   # credentials for logging in, applied at boot
    configure_qemu_headless(ctx)
    configure_network(ctx)
    configure_ssh(ctx)
    if ctx.phase == Phase.final:
        install_volatile_packages(ctx)
        copy_build_results(ctx)
    else:
        copy_build_sources(ctx)
    copy_extra_trees(ctx)
    run_postinst_script(ctx)
    if ctx.phase == Phase.final:
        # After the extra trees and the postinst script, as systemd-firstboot runs: these settings win.
        configure_firstboot(ctx)
        remove_packages(ctx)
        # The manifest lists what is installed before the package databases may be cleaned away.
        write_manifest(ctx)
        remove_files(ctx)
        process_kernel_modules(ctx.root, ctx.config.kernel_modules, ctx.config.firmware_files,
                               ctx.config.nspawn_keep_unit)
        clean_package_metadata(ctx)
        with log.step("Removing files that only record the build"):
            reproducibility_cleanup(ctx)
        write_extension_release(ctx)
        if ctx.config.make_initrd:
            with log.step("Making the image an initrd (/init, /etc/initrd-release)"):
                make_initrd_files(ctx.root)
        selinux.relabel(ctx.root, ctx.config.selinux_relabel, ctx.sandbox)
    run_finalize_script(ctx)


def gather_packages(config: Config, ws: Path) -> None:
    """$PACKAGEDIR for both phases: the package files of PackageDirectories= and
    VolatilePackageDirectories= (the build script may add its own)."""
    directories = [*config.package_directories, *config.volatile_package_directories]
    dest = ws / "packages"
    if directories:
        with log.step("Collecting the local packages (PackageDirectories=)"):
            found = localrepo.gather(directories, dest)
        log.info(f"{len(found)} local package(s) in {len(directories)} directory(ies)")
    else:
        dest.mkdir(parents=True, exist_ok=True)


def build_image(args: Args, config: Config, ws: Path, cleanup: list[Path],
                extra: Optional[list[Path]] = None) -> Staged:
    """Build in the workspace; returns the artifacts waiting in the staging directory. What the
    postoutput scripts add to the staging directory is appended to `extra` (move_extra_outputs())."""

    staging = ws / "staging"
    staging.mkdir()
    cache = package_cache_dir(config)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    gather_packages(config, ws)
    if config.build_script is not None:
        bctx = Context(args, config, ws, Phase.build, ws / "build-root", cache, staging, cleanup=cleanup)
        with log.step("Building the development image"), basetrees.layered(bctx):
            build_phase(bctx)
            run_build_script(bctx)
        if config.format.row.kind is FormatKind.nothing:
            # Format=none: the build script was the point; its maker writes nothing.
            maker(config.format.row)(bctx)
            return []
        if config.skip_final_phase:
            log.info("Skipping the final phase (SkipFinalPhase=yes)")
            return []
    ctx = Context(args, config, ws, Phase.final, ws / "root", cache, staging, cleanup=cleanup)
    with log.step("Building the final image"):
        with basetrees.layered(ctx):
            build_phase(ctx)
        # Bootable=auto: now that the tree is complete, bootable or not (the artifacts follow ctx.config).
        ctx.config = settle_bootable(ctx.config, ctx.root)
        epoch = build_epoch(ctx)
        if basetrees.uses_overlay(config) and epoch is not None:
            clamp_mtimes(ctx.root, epoch)
    make_output(ctx)
    write_sboms(ctx)
    # Exactly the artifacts the table declares for this configuration, each checked to be there.
    made = artifacts.collect(ctx)
    sums = write_checksums(ctx, made)
    made = made + sums + sign_checksums(ctx, sums)
    artifacts.apply_output_mode(ctx.config, made)
    added = run_postoutput_scripts(ctx)
    if extra is not None:
        extra += added
    return made


def run_postoutput_scripts(ctx: Context) -> list[Path]:
    """PostOutputScripts=: with the finished outputs in the staging directory ($OUTPUTDIR), before they
    are moved into the output directory; returns what they added there (moved along later)."""
    if not ctx.config.postoutput_scripts:
        return []
    before = {p.name for p in ctx.staging.iterdir()}
    run_host_scripts(ctx.args, ctx.config, "postoutput", outputdir=ctx.staging, workspace=ctx.workspace)
    return sorted(p for p in ctx.staging.iterdir() if p.name not in before)


def move_extra_outputs(config: Config, extra: list[Path]) -> None:
    """The files the postoutput scripts added to the staging directory go to the output directory."""
    assert config.output_dir is not None
    for staged_path in extra:
        target = config.output_dir / staged_path.name
        replace_path(staged_path, target)
        if not config.no_chown:
            chown_to_invoking_user(target)


def run_sync_scripts(args: Args, config: Config) -> None:
    """SyncScripts=: before anything is built (and before -i decides whether the output is up to date,
    since they may change the sources); $CACHED says whether a cached final image is there."""
    if not config.sync_scripts:
        return
    image = cached_image_path(config, Phase.final)
    cached = args.incremental and image.is_dir() and Path(f"{image}.key").exists()
    run_host_scripts(args, config, "sync", cached=cached)


def check_outputs(args: Args, config: Config) -> None:
    existing = artifacts.existing(config)
    if existing and args.force == 0:
        raise MkosiError(f"output '{existing[0]}' already exists", hint="use -f to replace it, or 'mkosi clean'")


def drop_caches(args: Args, config: Config) -> None:
    if args.force >= 2:
        for p in incremental_cache_paths(config):
            _rmtree_any(p) if p.is_dir() else p.unlink(missing_ok=True)
    if args.force >= 3:
        cache = package_cache_dir(config)
        if cache is not None and cache.exists():
            log.info(f"Removing package cache {cache}")
            shutil.rmtree(cache)


def up_to_date_key(args: Args, config: Config) -> Optional[str]:
    """With -i: the key of this build's inputs, or None when the existing output was built from exactly
    these inputs and nothing needs doing. Without -i: an empty key (nothing is recorded)."""
    if not args.incremental:
        return ""
    key = build_key(args, config)
    keyfile = output_key_path(config)
    assert config.output is not None
    if (config.output.exists() or config.output.is_symlink()) and keyfile.exists() and \
            keyfile.read_text().strip() == key:
        log.info(f"{config.output} is up to date (no input changed since it was built); nothing to do")
        return None
    return key


def remove_cleanup_paths(cleanup: list[Path]) -> None:
    """Remove what a build made outside its workspace (e.g. a subvolume being made in place)."""
    for path in cleanup:
        if path.exists():
            for child in path.iterdir():
                _rmtree_any(child)
            _rmtree_any(path)


@contextlib.contextmanager
def source_date_epoch_environment(config: Config) -> Iterator[None]:
    """SourceDateEpoch= is exported as SOURCE_DATE_EPOCH for the build (the tools mkosi runs, the package
    managers and the output writers read it there), and the previous value is put back afterwards."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    if config.source_date_epoch is not None:
        os.environ["SOURCE_DATE_EPOCH"] = str(config.source_date_epoch)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


def prepare_to_build(config: Config) -> None:
    """What every build does once its outputs may be written: check the target directories, remove
    workspaces of killed builds, and make its mounts private."""

    assert config.output_dir is not None
    check_target(config)
    check_host_tools(config)
    check_writable(config.output_dir, "output directory")
    check_writable(workspace_parent(config), "workspace directory")
    remove_stale_workspaces(workspace_parent(config))
    private_mount_namespace()


def check_build_only(config: Config) -> None:
    """Format=none runs the build script and nothing else: without one there is nothing to do."""
    if config.format.row.kind is FormatKind.nothing and config.build_script is None:
        raise MkosiError("Format=none only runs the build script, and no build script is configured",
                         hint="add a mkosi.build script (BuildScript=), or choose another Format=")


def wipe_build_dir(args: Args, config: Config) -> None:
    """--wipe-build-dir: this image's build directory (BuildDirectory=, below it BuildKey=) is emptied (the
    directory itself stays)."""
    if not args.wipe_build_dir:
        return
    directory = build_subdir(config)
    if directory is None:
        log.warn("--wipe-build-dir: no BuildDirectory= is configured (nor mkosi.builddir/); nothing to wipe")
        return
    if not directory.is_dir():
        return
    with log.step(f"Wiping the build directory {directory}"):
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def no_cached_image_message(config: Config) -> str:
    return (f"there is no cached development image to rerun the build script against "
            f"({cached_image_path(config, Phase.build)} does not exist): build once with -i first")


def check_rerun(config: Config) -> None:
    """-R needs a build script and the development image an earlier -i build cached."""
    if config.build_script is None:
        raise MkosiError("--rerun-build-scripts: no build script is configured (mkosi.build, BuildScript=)")
    if not cached_image_path(config, Phase.build).is_dir():
        raise MkosiError(no_cached_image_message(config), hint="run 'mkosi -i build' once, then 'mkosi -R'")


def build_command(args: Args, config: Config) -> bool:
    """Build the image; False when -i found the output up to date and nothing was built."""
    if os.getuid() != 0:
        raise MkosiError("'mkosi build' must be run as root", hint="run it with sudo")
    assert config.output_dir is not None
    if args.rerun_build_scripts:
        if config.build_script is None and config.image != "main":
            log.info(f"Image '{config.image}' has no build script; nothing to rerun")
            return False
        check_rerun(config)
    with output_lock(config.output_dir) as own, source_date_epoch_environment(config):
        if own:
            recover_interrupted_move(config.output_dir)
        if args.rerun_build_scripts:
            _rerun_locked(args, config)
            return True
        return _build_locked(args, config)


def _rerun_locked(args: Args, config: Config) -> None:
    """-R: the build script runs again in (an overlay on) the cached development image, with the current
    sources; no image is built. A directory output gets the new results copied over its old content."""
    assert config.output_dir is not None
    check_host_tools(config)
    check_writable(workspace_parent(config), "workspace directory")
    remove_stale_workspaces(workspace_parent(config))
    private_mount_namespace()
    wipe_build_dir(args, config)
    with log.step("Rerunning the build script"), workspace(config, keep=args.debug_workspace) as ws:
        staging = ws / "staging"
        staging.mkdir()
        gather_packages(config, ws)
        bctx = Context(args, config, ws, Phase.build, ws / "build-root", package_cache_dir(config), staging)
        build_phase(bctx, rerun=True)
        run_build_script(bctx)
        results = ws / "build-results"
        kind = config.format.row.kind
        assert config.output is not None
        if kind is FormatKind.tree and config.output.is_dir() and not config.output.is_symlink():
            with log.step(f"Copying the build results into {config.output}"):
                # The output no longer is what the recorded inputs of -i made: the next -i build runs.
                output_key_path(config).unlink(missing_ok=True)
                copy_into_root(results, config.output, keep_owner=True)
        elif config.install_dir is not None:
            log.info(f"The image is not rebuilt; the build script's results are in {config.install_dir}")
        else:
            log.info("The image is not rebuilt; set InstallDirectory= to keep the build script's results "
                     "(BuildDirectory= keeps its build state)")


def _build_locked(args: Args, config: Config) -> bool:
    assert config.output_dir is not None
    check_build_only(config)
    drop_caches(args, config)
    if args.force > 0:
        # -f cleans the previous outputs (they are replaced at the end): the clean scripts run first, as
        # with `clean`.
        run_host_scripts(args, config, "clean", outputdir=config.output_dir, tools=False)
    run_sync_scripts(args, config)
    key = up_to_date_key(args, config)
    if key is None:
        return False
    check_outputs(args, config)
    prepare_to_build(config)
    wipe_build_dir(args, config)
    cleanup: list[Path] = []
    extra: list[Path] = []
    try:
        with log.step(f"Building {config.output}"), workspace(config, keep=args.debug_workspace) as ws:
            made = build_image(args, config, ws, cleanup, extra)
            with log.step("Moving the results into place"):
                move_into_place(config, made)
                move_extra_outputs(config, extra)
    finally:
        remove_cleanup_paths(cleanup)
    if key and config.format.row.kind is not FormatKind.nothing:
        write_private(output_key_path(config), key + "\n")
    return True
