"""The one way mkosi runs commands: argument lists, a logged command line, typed failures."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Optional, Union

from mkosi import log
from mkosi.errors import CommandError, ToolMissingError

PathString = Union[str, "os.PathLike[str]"]

# Which Debian package provides a host tool, for the error shown when it is missing.
HOST_PACKAGES: dict[str, str] = {
    "debootstrap": "debootstrap",
    "mmdebstrap": "mmdebstrap",
    "apt-get": "apt",
    "dpkg": "dpkg",
    "systemd-nspawn": "systemd-container",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.ext4": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "mkfs.btrfs": "btrfs-progs",
    "btrfs": "btrfs-progs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "cryptsetup": "cryptsetup-bin",
    "veritysetup": "cryptsetup-bin",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "sbsign": "sbsigntool",
    "sbverify": "sbsigntool",
    "objcopy": "binutils",
    "grub-mkimage": "grub-pc-bin",
    "gpg": "gnupg",
    "xz": "xz-utils",
    "zstd": "zstd",
    "cpio": "cpio",
    "tar": "tar",
    "git": "git",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "dnf": "dnf",
    "rpm": "rpm",
    "createrepo_c": "createrepo-c",
    "zypper": "zypper",
    "pacman": "pacman-package-manager",
    "pacman-key": "pacman-package-manager",
    "emerge": "portage",
    "mkswap": "util-linux",
    "losetup": "mount",
    "systemd-dissect": "systemd",
    "bmaptool": "bmap-tools",
}

_extra_search_paths: list[str] = []


def set_extra_search_paths(paths: Sequence[str]) -> None:
    _extra_search_paths[:] = [str(p) for p in paths]


def find_tool(name: str) -> Optional[str]:
    for d in _extra_search_paths:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    return shutil.which(name, path=path)


def require_tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise ToolMissingError(name, HOST_PACKAGES.get(name))
    return found


def format_cmdline(argv: Sequence[PathString]) -> str:
    return " ".join(shlex.quote(os.fspath(a)) for a in argv)


def run(
    argv: Sequence[PathString],
    *,
    check: bool = True,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[PathString] = None,
    stdin: Union[int, IO[Any], None] = None,
    stdout: Union[int, IO[Any], None] = None,
    stderr: Union[int, IO[Any], None] = None,
    input: Optional[Union[str, bytes]] = None,
    capture: bool = False,
    text: bool = True,
    log_argv: Optional[Sequence[str]] = None,
) -> subprocess.CompletedProcess[Any]:
    """Run a command. Raises CommandError naming the command on failure.

    `log_argv` replaces the logged command line when argv carries something that must not be
    shown (it never should; secrets go through files or stdin).
    """
    cmd = [os.fspath(a) for a in argv]
    if not cmd:
        raise ValueError("empty command")
    exe = cmd[0]
    if "/" not in exe:
        found = find_tool(exe)
        if found is None:
            raise ToolMissingError(exe, HOST_PACKAGES.get(exe))
        cmd[0] = found
    log.debug("+ " + format_cmdline(log_argv if log_argv is not None else [exe, *cmd[1:]]))

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if capture:
        stdout = subprocess.PIPE if stdout is None else stdout
        stderr = subprocess.PIPE if stderr is None else stderr
    try:
        proc = subprocess.run(
            cmd,
            env=full_env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            stdin=stdin if input is None else None,
            stdout=stdout,
            stderr=stderr,
            input=input.encode() if isinstance(input, str) and not text else input,
            text=text,
            check=False,
        )
    except FileNotFoundError:
        raise ToolMissingError(exe, HOST_PACKAGES.get(os.path.basename(exe)))
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else ""
        if isinstance(proc.stderr, bytes):
            err = proc.stderr.decode(errors="replace")
        raise CommandError(list(log_argv) if log_argv is not None else [exe, *cmd[1:]], proc.returncode, err)
    return proc


def output(argv: Sequence[PathString], **kwargs: Any) -> str:
    """Run a command and return its standard output as text."""
    proc = run(argv, capture=True, **kwargs)
    return str(proc.stdout)
