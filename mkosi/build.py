"""build_image(): the pipeline of the man page's execution flow, one named step per function."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.cache import (
    build_key,
    image_cache_key,
    load_cached_image,
    output_key_path,
    package_cache_dir,
    save_cached_image,
)
from mkosi.config.enums import BasePackages, BootProtocol, CleanPackageMetadata
from mkosi.config.settings import MkosiArgs
from mkosi.context import Context, Phase
from mkosi.distributions import plugin
from mkosi.errors import MkosiError
from mkosi.outputs import existing_outputs
from mkosi.sandbox import umount_all_below
from mkosi.trees import chown_to_invoking_user, install_tree

# ---------------------------------------------------------------- workspace

def workspace_parent(args: MkosiArgs) -> Path:
    if args.workspace_dir is not None:
        return args.workspace_dir
    return Path(os.environ.get("TMPDIR") or "/var/tmp")


@contextlib.contextmanager
def workspace(args: MkosiArgs) -> Iterator[Path]:
    parent = workspace_parent(args)
    parent.mkdir(parents=True, exist_ok=True)
    ws = Path(tempfile.mkdtemp(prefix="mkosi-", dir=parent))
    log.debug(f"workspace {ws}")
    try:
        yield ws
    finally:
        umount_all_below(ws)
        shutil.rmtree(ws, ignore_errors=True)
        if ws.exists():
            log.warn(f"could not remove the workspace {ws} completely")


# ---------------------------------------------------------------- steps of one phase

def packages_for(ctx: Context) -> list[str]:
    args = ctx.args
    dist = plugin(args.distribution)
    pkgs: list[str] = []
    if args.base_packages != BasePackages.no:
        pkgs += dist.base_packages(args)
        if args.ssh and ctx.phase == Phase.final:
            pkgs += dist.ssh_packages
        if args.bootable and BootProtocol.uefi in args.boot_protocols:
            pkgs += dist.uefi_packages
    pkgs += args.packages
    if ctx.phase == Phase.build:
        pkgs += args.build_packages
    return list(dict.fromkeys(pkgs))


def copy_skeleton_trees(ctx: Context) -> None:
    for tree in ctx.args.skeleton_trees:
        with log.step(f"Copying skeleton tree {tree}"):
            install_tree(tree, ctx.root)


def install_distribution(ctx: Context) -> None:
    pkgs = packages_for(ctx)
    with log.step(f"Installing {ctx.args.distribution.value} {ctx.args.release} ({len(pkgs)} packages requested)"):
        plugin(ctx.args.distribution).install(ctx, pkgs)


def verify_architecture(ctx: Context) -> None:
    """The installed binaries must be built for Architecture=; catches repositories of the wrong one."""
    from mkosi.elf import image_architecture

    found = image_architecture(ctx.root)
    if found is not None and found != ctx.args.architecture:
        raise MkosiError(f"the image's binaries are built for {found}, but Architecture= is {ctx.args.architecture}",
                         hint="check Mirror=/Repositories= point at repositories for that architecture")


def copy_extra_trees(ctx: Context) -> None:
    for tree in ctx.args.extra_trees:
        with log.step(f"Copying extra tree {tree}"):
            install_tree(tree, ctx.root)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def configure_hostname(ctx: Context) -> None:
    if ctx.args.hostname:
        _write(ctx.root / "etc/hostname", ctx.args.hostname + "\n")


def configure_os_release(ctx: Context) -> None:
    args = ctx.args
    if not args.image_id and not args.image_version:
        return
    osr = ctx.root / "etc/os-release"
    if osr.is_symlink():
        target = (ctx.root / "etc" / os.readlink(osr)) if not os.readlink(osr).startswith("/") else \
            ctx.root / os.readlink(osr).lstrip("/")
        text = target.read_text() if target.exists() else ""
        osr.unlink()
    else:
        text = osr.read_text() if osr.exists() else ""
    lines = [line for line in text.splitlines() if not line.startswith(("IMAGE_ID=", "IMAGE_VERSION="))]
    if args.image_id:
        lines.append(f"IMAGE_ID={args.image_id}")
    if args.image_version:
        lines.append(f"IMAGE_VERSION={args.image_version}")
    _write(osr, "\n".join(lines) + "\n")


def hash_password(password: str) -> str:
    """SHA-512 crypt(3) hash; the password goes through stdin, never a command line."""
    from mkosi.run import run

    return str(run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture=True,
                   log_argv=["openssl", "passwd", "-6", "-stdin"]).stdout).strip()


def configure_root_password(ctx: Context) -> None:
    args = ctx.args
    shadow = ctx.root / "etc/shadow"
    if not shadow.exists():
        return
    if args.password is None:
        entry = "!*"  # locked; the distributions' default, made explicit
        if ctx.phase == Phase.final:
            _set_shadow_password(shadow, entry, only_if_empty=True)
        return
    hashed = args.password if args.password_is_hashed else hash_password(args.password)
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
    mid = ctx.root / "etc/machine-id"
    if ctx.args.machine_id:
        _write(mid, ctx.args.machine_id + "\n", 0o444)
    elif ctx.phase == Phase.final:
        # No machine ID is shipped: an empty file makes systemd generate one at first boot.
        if mid.exists() or mid.is_symlink():
            mid.unlink()
        _write(mid, "", 0o444)
        dbus = ctx.root / "var/lib/dbus/machine-id"
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
    if not ctx.args.autologin:
        return
    exe = "/sbin/agetty" if (ctx.root / "sbin/agetty").exists() else "/usr/sbin/agetty"
    for unit, tail in AUTOLOGIN_GETTYS.items():
        _write(ctx.root / "etc/systemd/system" / f"{unit}.d" / "autologin.conf",
               f"[Service]\nExecStart=\nExecStart=-{exe} -o '-p -f -- \\\\u' --autologin root {tail}\n")
    pam = ctx.root / "etc/pam.d/login"
    if pam.exists():
        text = pam.read_text()
        rule = "auth sufficient pam_succeed_if.so tty in tty1:ttyS0:pts/0:console user = root quiet\n"
        if rule not in text:
            pam.write_text(rule + text)


def configure_qemu_headless(ctx: Context) -> None:
    if not ctx.args.qemu_headless:
        return
    term = os.environ.get("TERM", "vt220")
    dropin = ctx.root / "etc/systemd/system/serial-getty@ttyS0.service.d/term.conf"
    _write(dropin, f"[Service]\nEnvironment=TERM={term}\n")


def configure_network(ctx: Context) -> None:
    """Ssh=/Netdev=: the image configures its network by itself (DHCP with systemd-networkd)."""
    args = ctx.args
    if ctx.phase != Phase.final or not (args.ssh or args.netdev):
        return
    if not (ctx.root / "usr/lib/systemd/system/systemd-networkd.service").exists():
        log.warn("systemd-networkd is not in the image; its network is left unconfigured")
        return
    _write(ctx.root / "etc/systemd/network/80-mkosi-dhcp.network",
           "[Match]\nName=en* eth*\nType=ether\n\n[Network]\nDHCP=yes\n")
    from mkosi.run import run

    run(["systemctl", "--root", ctx.root, "enable", "systemd-networkd.service"], capture=True)


def configure_ssh(ctx: Context) -> None:
    """Ssh=yes: authorize a generated key (or the agent's keys), listen on SshPort=, fresh host keys per
    machine."""
    args = ctx.args
    if not args.ssh or ctx.phase != Phase.final:
        return
    from mkosi.run import run
    from mkosi.ssh import generate_ssh_keypair

    keys: list[str] = []
    if args.ssh_agent:
        sock = os.environ.get("SSH_AUTH_SOCK") if args.ssh_agent.lower() in ("yes", "true", "1") else args.ssh_agent
        if not sock:
            raise MkosiError("SshAgent=yes but $SSH_AUTH_SOCK is not set", hint="run with sudo -E")
        keys += str(run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": sock}, capture=True).stdout).splitlines()
    elif args.ssh_key is not None:
        keys.append(Path(f"{args.ssh_key}.pub").read_text().strip())
    else:
        assert args.output_sshkey is not None
        private = ctx.staging / args.output_sshkey.name
        pub = generate_ssh_keypair(private, f"mkosi {args.image_id or 'image'}")
        keys.append(pub.read_text().strip())
    auth = ctx.root / "root/.ssh/authorized_keys"
    auth.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth.write_text("\n".join(keys) + "\n")
    auth.chmod(0o600)
    if args.ssh_port != 22:
        _write(ctx.root / "etc/ssh/sshd_config.d/mkosi-port.conf", f"Port {args.ssh_port}\n")
    for key in (ctx.root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Host keys are made on the first boot of each machine, before sshd checks its configuration.
    unit = "ssh.service" if (ctx.root / "usr/lib/systemd/system/ssh.service").exists() else "sshd.service"
    _write(ctx.root / f"etc/systemd/system/{unit}.d/mkosi-hostkeys.conf",
           "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n")


def remove_packages(ctx: Context) -> None:
    args = ctx.args
    if not args.remove_packages:
        return
    if args.clean_package_metadata == CleanPackageMetadata.no:
        log.info("Skipping RemovePackages= because CleanPackageMetadata=no")
        return
    with log.step(f"Removing packages {', '.join(args.remove_packages)}"):
        plugin(args.distribution).remove_packages(ctx, args.remove_packages)


def remove_files(ctx: Context) -> None:
    globs = ctx.args.remove_files
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
    mode = ctx.args.clean_package_metadata
    if mode == CleanPackageMetadata.no:
        return
    dist = plugin(ctx.args.distribution)
    if mode == CleanPackageMetadata.auto and dist.package_manager_present(ctx):
        return
    with log.step("Cleaning package manager metadata"):
        dist.clean_package_metadata(ctx, force=mode == CleanPackageMetadata.yes)


def reproducibility_cleanup(ctx: Context) -> None:
    """Drop files that only record when or on which machine the image was built."""
    for rel in ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log",
                "var/cache/ldconfig/aux-cache", "var/lib/systemd/random-seed", "etc/.pwd.lock",
                "var/lib/dpkg/lock", "var/lib/dpkg/lock-frontend", "var/lib/dpkg/triggers/Lock",
                "var/cache/debconf/config.dat-old", "var/cache/debconf/templates.dat-old",
                "var/lib/dpkg/status-old", "var/lib/dpkg/diversions-old", "etc/passwd-", "etc/group-",
                "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-"):
        p = ctx.root / rel
        if p.is_file() or p.is_symlink():
            p.unlink()
    for d in ("var/log/apt",):
        p = ctx.root / d
        if p.is_dir():
            for child in p.iterdir():
                if child.is_file():
                    child.unlink()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        clamp_mtimes(ctx.root, int(epoch))


def clamp_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if st.st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)


# ---------------------------------------------------------------- outputs

def write_manifest(ctx: Context) -> None:
    from mkosi.manifest import write_manifests

    with log.step("Writing manifests"):
        write_manifests(ctx)


def make_output(ctx: Context) -> list[Path]:
    from mkosi.output.make import make_outputs

    return make_outputs(ctx)


def write_checksums(ctx: Context, artifacts: list[Path]) -> Optional[Path]:
    args = ctx.args
    if not args.checksum:
        return None
    assert args.output_checksum is not None
    out = ctx.staging / args.output_checksum.name
    lines = []
    for a in sorted(artifacts, key=lambda p: p.name):
        if a.is_file():
            h = hashlib.sha256()
            with open(a, "rb") as f:
                for chunk in iter(lambda: f.read(4 * 1024 * 1024), b""):
                    h.update(chunk)
            lines.append(f"{h.hexdigest()} *{a.name}\n")
    out.write_text("".join(lines))
    return out


def sign_checksums(ctx: Context, checksums: Optional[Path]) -> Optional[Path]:
    args = ctx.args
    if not args.sign or checksums is None:
        return None
    import gnupg

    assert args.output_signature is not None
    out = ctx.staging / args.output_signature.name
    gpg = gnupg.GPG(gnupghome=os.environ.get("GNUPGHOME"))
    with open(checksums, "rb") as f:
        result = gpg.sign_file(f, keyid=args.key, detach=True, binary=True, output=str(out))
    if not out.exists() or not result:
        raise MkosiError(f"signing SHA256SUMS with gpg failed: {getattr(result, 'stderr', '').strip()[-300:]}",
                         hint="check that the key given with Key= is in the gpg keyring")
    return out


def move_into_place(args: MkosiArgs, artifacts: list[Path]) -> None:
    """Replace previous outputs only now that everything succeeded."""
    outdir = args.output_dir
    assert outdir is not None and args.output is not None
    outdir.mkdir(parents=True, exist_ok=True)
    for a in artifacts:
        target = args.output if a.name == args.output.name else outdir / a.name
        replace_path(a, target)
        if not args.no_chown:
            chown_to_invoking_user(target)


def replace_path(src: Path, dst: Path) -> None:
    """Atomically (for files) put src at dst, across file systems if need be."""
    tmp = dst.parent / f".mkosi-tmp-{dst.name}"
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
    try:
        os.rename(src, tmp)
    except OSError:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tmp, symlinks=True)
            shutil.rmtree(src)
        else:
            shutil.copy2(src, tmp)
            src.unlink()
    if dst.is_dir() and not dst.is_symlink():
        old = dst.parent / f".mkosi-old-{dst.name}"
        os.rename(dst, old)
        os.rename(tmp, dst)
        _rmtree_any(old)
    else:
        os.replace(tmp, dst)


def _rmtree_any(path: Path) -> None:
    from mkosi.run import find_tool, run

    # A btrfs subvolume output is deleted as a subvolume; anything else with rmtree.
    if find_tool("btrfs") and run(["btrfs", "subvolume", "delete", path], check=False, capture=True).returncode == 0:
        return
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the pipeline

def build_phase(ctx: Context) -> None:
    from mkosi.scripts import copy_build_results, run_finalize_script, run_postinst_script, run_prepare_script

    ctx.root.mkdir(parents=True, exist_ok=True)
    # Everything up to the prepare script is what incremental mode caches.
    key = image_cache_key(ctx, packages_for(ctx)) if ctx.args.incremental else ""
    if not (ctx.args.incremental and load_cached_image(ctx, key)):
        copy_skeleton_trees(ctx)
        install_distribution(ctx)
        verify_architecture(ctx)
        run_prepare_script(ctx)
        if ctx.args.incremental:
            if ctx.args.cache_initrd and ctx.args.bootable and ctx.phase == Phase.final:
                from mkosi.boot import find_kernel
                from mkosi.bootable import build_initrd

                build_initrd(ctx, find_kernel(ctx.root)[1])
            save_cached_image(ctx, key)
    configure_hostname(ctx)
    configure_machine_id(ctx)
    configure_os_release(ctx)
    configure_root_password(ctx)
    configure_autologin(ctx)
    configure_qemu_headless(ctx)
    configure_network(ctx)
    configure_ssh(ctx)
    if ctx.phase == Phase.final:
        copy_build_results(ctx)
    copy_extra_trees(ctx)
    run_postinst_script(ctx)
    if ctx.phase == Phase.final:
        remove_packages(ctx)
        # The manifest lists what is installed before the package databases may be cleaned away.
        write_manifest(ctx)
        remove_files(ctx)
        clean_package_metadata(ctx)
        with log.step("Removing files that only record the build"):
            reproducibility_cleanup(ctx)
    run_finalize_script(ctx)


def build_image(args: MkosiArgs, ws: Path, cleanup: list[Path]) -> list[Path]:
    """Build in the workspace; returns the artifacts waiting in the staging directory."""
    from mkosi.scripts import run_build_script

    staging = ws / "staging"
    staging.mkdir()
    cache = package_cache_dir(args)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    if args.build_script is not None:
        bctx = Context(args, ws, Phase.build, ws / "build-root", cache, staging, cleanup=cleanup)
        with log.step("Building the development image"):
            build_phase(bctx)
            run_build_script(bctx)
        if args.skip_final_phase:
            log.info("Skipping the final phase (SkipFinalPhase=yes)")
            return []
    ctx = Context(args, ws, Phase.final, ws / "root", cache, staging, cleanup=cleanup)
    with log.step("Building the final image"):
        build_phase(ctx)
    made = make_output(ctx)
    # Everything in the staging directory is an artifact (manifests, kernel files, root hashes...).
    artifacts = made + sorted(p for p in staging.iterdir() if p not in made and not p.name.startswith("."))
    sums = write_checksums(ctx, artifacts)
    sig = sign_checksums(ctx, sums)
    return artifacts + [p for p in (sums, sig) if p is not None]


def check_outputs(args: MkosiArgs) -> None:
    existing = existing_outputs(args)
    if existing and args.force == 0:
        raise MkosiError(f"output '{existing[0]}' already exists", hint="use -f to replace it, or 'mkosi clean'")


def drop_caches(args: MkosiArgs) -> None:
    from mkosi.cache import incremental_cache_paths

    if args.force >= 2:
        for p in incremental_cache_paths(args):
            _rmtree_any(p) if p.is_dir() else p.unlink(missing_ok=True)
    if args.force >= 3:
        cache = package_cache_dir(args)
        if cache is not None and cache.exists():
            log.info(f"Removing package cache {cache}")
            shutil.rmtree(cache)


def up_to_date_key(args: MkosiArgs) -> Optional[str]:
    """With -i: the key of this build's inputs, or None when the existing output was built from exactly
    these inputs and nothing needs doing. Without -i: an empty key (nothing is recorded)."""
    if not args.incremental:
        return ""
    key = build_key(args)
    keyfile = output_key_path(args)
    assert args.output is not None
    if (args.output.exists() or args.output.is_symlink()) and keyfile.exists() and \
            keyfile.read_text().strip() == key:
        log.info(f"{args.output} is up to date (no input changed since it was built); nothing to do")
        return None
    return key


def build_command(args: MkosiArgs) -> None:
    if os.getuid() != 0:
        raise MkosiError("'mkosi build' must be run as root", hint="run it with sudo")
    drop_caches(args)
    key = up_to_date_key(args)
    if key is None:
        return
    check_outputs(args)
    from mkosi.output.make import check_subvolume_target

    check_subvolume_target(args)
    cleanup: list[Path] = []
    try:
        with log.step(f"Building {args.output}"), workspace(args) as ws:
            artifacts = build_image(args, ws, cleanup)
            with log.step("Moving the results into place"):
                move_into_place(args, artifacts)
    finally:
        for path in cleanup:
            if path.exists():
                for child in path.iterdir():
                    _rmtree_any(child)
                _rmtree_any(path)
    if key:
        output_key_path(args).write_text(key + "\n")
    if args.auto_bump:
        from mkosi.verbs import verb_bump

        verb_bump(args)
