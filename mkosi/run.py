"""The one way mkosi runs commands: argument lists, a logged command line, typed failures."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Optional, Union

from mkosi import log
from mkosi.errors import CommandError, MkosiError, ToolMissingError
from mkosi.sandbox import Mode, PathString, Sandbox

__all__ = ["PathString", "Sandbox", "current_sandbox", "find_tool", "output", "require_tool", "run",
           "using_sandbox"]

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
    "dpkg-scanpackages": "dpkg-dev",
    "apt-ftparchive": "apt-utils",
    "repo-add": "pacman-package-manager",
    "zypper": "zypper",
    "pacman": "pacman-package-manager",
    "pacman-key": "pacman-package-manager",
    "emerge": "portage",
    "mkswap": "util-linux",
    "losetup": "mount",
    "systemd-dissect": "systemd-container",
    "systemd-repart": "systemd-repart",
    "ukify": "systemd-ukify",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "mkfs.ext2": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "fsck.vfat": "dosfstools",
    "mkfs.fat": "dosfstools",
    "xfs_repair": "xfsprogs",
    "openssl": "openssl",
    "objdump": "binutils",
    "readelf": "binutils",
    "depmod": "kmod",
    "modprobe": "kmod",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "virtiofsd": "virtiofsd",
    "systemd-measure": "systemd-ukify",
    "bootctl": "systemd-boot-tools",
    "systemd-sysext": "systemd",
    "mount": "mount",
    "umount": "mount",
    "jq": "jq",
    "curl": "curl",
    "strace": "strace",
    "socat": "socat",
    "gpgv": "gpgv",
    "python3": "python3",
    "bmaptool": "bmap-tools",
    "bwrap": "bubblewrap",
    "cp": "coreutils",
    "gzip": "gzip",
    "lz4": "lz4",
    "journalctl": "systemd",
    "coredumpctl": "systemd-coredump",
    "chroot": "coreutils",
}

# The sandbox of commands run without an explicit one: plain host by default; during a verb the
# host sandbox of its image (ExtraSearchPaths=), installed by using_sandbox(). Commands that work on
# an image root (package managers, scripts, containers) pass their sandbox explicitly.
_current: list[Sandbox] = [Sandbox()]


def current_sandbox() -> Sandbox:
    return _current[-1]


@contextlib.contextmanager
def using_sandbox(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Make `sandbox` the default for run() calls that give none, until the block ends."""
    _current.append(sandbox)
    try:
        yield sandbox
    finally:
        _current.pop()


def find_tool(name: str, sandbox: Optional[Sandbox] = None) -> Optional[str]:
    """Where the command `name` is, as seen by a command in `sandbox` (default: current_sandbox())."""
    return (sandbox or current_sandbox()).find(name)


def find_first_tool(candidates: Sequence[str], sandbox: Optional[Sandbox] = None) -> Optional[str]:
    """The first of `candidates` that exists: names are looked up like find_tool(), absolute paths (helpers
    outside $PATH, such as /usr/lib/qemu/virtiofsd) are taken when executable."""
    for candidate in candidates:
        found = find_tool(candidate, sandbox) if "/" not in candidate else (
            candidate if os.access(candidate, os.X_OK) else None)
        if found:
            return found
    return None


def require_tool(name: str, sandbox: Optional[Sandbox] = None) -> str:
    found = find_tool(name, sandbox)
    if found is None:
        raise missing_tool(name, sandbox or current_sandbox())
    return found


def missing_tool(name: str, sandbox: Sandbox) -> MkosiError:
    if sandbox.mode != Mode.host and sandbox.root is not None:
        return MkosiError(f"required tool '{name}' was not found in {sandbox.root}")
    if sandbox.tools is not None:
        package = HOST_PACKAGES.get(os.path.basename(name))
        return MkosiError(f"required tool '{name}' was not found in the tools tree {sandbox.tools}"
                          + (f" (Debian package: {package})" if package else ""),
                          hint=f"install {package} in the tools tree (for the default one: ToolsTreePackages={package})"
                          if package else None)
    return ToolMissingError(name, HOST_PACKAGES.get(name))


# The caller's Python environment (a virtual environment, its module path) is not the tools tree's.
TOOLS_TREE_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def tools_tree_environment(sandbox: Sandbox) -> dict[str, str]:
    """With a tools tree, programs are looked up in ExtraSearchPaths= and the tree's /usr only: the
    caller's $PATH may name a virtual environment or /usr/local programs built against the host's
    libraries, and a script's `#!/usr/bin/env python3` must find the tree's interpreter."""
    return {"PATH": ":".join([*(os.fspath(p) for p in sandbox.search_paths), "/usr/bin", "/usr/sbin"])}


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (one of another user's counts: signalling it is refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_cmdline(argv: Sequence[PathString]) -> str:
    return " ".join(shlex.quote(os.fspath(a)) for a in argv)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A command as it is started: the sandbox's wrapper and options around it, its environment."""
    argv: list[str]
    env: dict[str, str]
    cwd: Optional[str]
    exe: str            # argv[0] as the caller gave it
    shown: list[str]    # what is logged and named in errors


def prepare(argv: Sequence[PathString], *, sandbox: Optional[Sandbox] = None, env: Optional[Mapping[str, str]] = None,
            cwd: Optional[PathString] = None, log_argv: Optional[Sequence[str]] = None) -> Prepared:
    """argv translated for its sandbox (default: current_sandbox()); see run()."""
    sb = sandbox if sandbox is not None else current_sandbox()
    cmd = [os.fspath(a) for a in argv]
    if not cmd and sb.mode != Mode.nspawn:   # nspawn without a command: a shell, or init with boot
        raise ValueError("empty command")
    exe = cmd[0] if cmd else ""
    found = sb.find(exe) if cmd else exe
    if found is None:
        raise missing_tool(exe, sb)
    full_argv = [found, *cmd[1:]] if cmd else []
    shown = cmd if log_argv is None else list(log_argv)
    wrapper = sb.wrapper_name()
    if wrapper is not None:
        host = Sandbox(search_paths=sb.search_paths)
        wrapper_path = host.find(wrapper)
        if wrapper_path is None:
            raise ToolMissingError(wrapper, HOST_PACKAGES.get(wrapper))
        full_argv = sb.argv(full_argv, wrapper_path)
        shown = sb.argv(shown, wrapper)
        for point in sb.mount_points():
            point.mkdir(parents=True, exist_ok=True)
    elif sb.chdir is not None and cwd is None:
        cwd = sb.chdir
    log.debug("+ " + format_cmdline(shown))

    full_env = {} if sb.clear_env else dict(os.environ)
    if sb.mode == Mode.host and sb.tools is not None:
        full_env.update(tools_tree_environment(sb))
        for name in TOOLS_TREE_DROPPED_ENV:
            full_env.pop(name, None)
    full_env.update(sb.environment)
    if env:
        full_env.update(env)
    return Prepared(full_argv, full_env, os.fspath(cwd) if cwd is not None else None, exe, shown)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """Stop a helper started with spawn(): SIGTERM, then SIGKILL if it is still there after `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spawn(argv: Sequence[PathString], *, sandbox: Optional[Sandbox] = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a long-running helper (swtpm, virtiofsd) in its sandbox, like run() but without waiting."""
    prepared = prepare(argv, sandbox=sandbox)
    try:
        return subprocess.Popen(prepared.argv, env=prepared.env, cwd=prepared.cwd, **popen)
    except FileNotFoundError:
        raise ToolMissingError(prepared.exe, HOST_PACKAGES.get(os.path.basename(prepared.exe)))


def run(
    argv: Sequence[PathString],
    *,
    sandbox: Optional[Sandbox] = None,
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
    """Run a command in a sandbox (default: current_sandbox()). Raises CommandError naming the command
    on failure.

    argv[0] is looked up as the sandbox sees it (ExtraSearchPaths= and $PATH on the host, the tools
    tree's /usr, or the image root). The sandbox's variables and `env` are added to the environment of
    the process (not put on its command line). `log_argv` replaces the logged command when argv itself
    carries something that must not be shown (it never should; secrets go through files or stdin).
    """
    prepared = prepare(argv, sandbox=sandbox, env=env, cwd=cwd, log_argv=log_argv)
    exe, shown = prepared.exe, prepared.shown
    if capture:
        stdout = subprocess.PIPE if stdout is None else stdout
        stderr = subprocess.PIPE if stderr is None else stderr
    try:
        proc = subprocess.run(
            prepared.argv,
            env=prepared.env,
            cwd=prepared.cwd,
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
        raise CommandError(shown, proc.returncode, err)
    return proc


def output(argv: Sequence[PathString], **kwargs: Any) -> str:
    """Run a command and return its standard output as text."""
    proc = run(argv, capture=True, **kwargs)
    return str(proc.stdout)


LineHandler = Callable[[str], None]


def run_streaming(
    argv: Union[Sequence[PathString], Callable[[int], Sequence[PathString]]],
    *,
    sandbox: Optional[Sandbox] = None,
    env: Optional[Mapping[str, str]] = None,
    on_stdout: Optional[LineHandler] = None,
    on_stderr: Optional[LineHandler] = None,
    on_status: Optional[LineHandler] = None,
    tick: Optional[Callable[[], None]] = None,
    tick_interval: float = 1.0,
    capture_stdout: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command, handing each line of its output to a callback as it comes; never raises for a
    non-zero exit (the caller explains failures, it knows the tool).

    With `on_status`, argv is a function of a file descriptor number: the tool writes its machine-readable
    status stream there (apt-get -o APT::Status-Fd=N, dpkg --status-fd N); the sandbox passes it on.
    stdout (unless `capture_stdout` is false) and stderr are returned as the text they were, besides.
    `tick` is called every `tick_interval` seconds while the command runs.
    """
    status_r = status_w = -1
    if on_status is not None:
        status_r, status_w = os.pipe()
    try:
        cmd = argv(status_w) if callable(argv) else argv
        prepared = prepare(cmd, sandbox=sandbox, env=env)
        try:
            proc = subprocess.Popen(prepared.argv, env=prepared.env, cwd=prepared.cwd,
                                    stdout=subprocess.PIPE if capture_stdout else None, stderr=subprocess.PIPE,
                                    pass_fds=(status_w,) if status_w >= 0 else ())
        except FileNotFoundError:
            raise ToolMissingError(prepared.exe, HOST_PACKAGES.get(os.path.basename(prepared.exe)))
    finally:
        if status_w >= 0:
            os.close(status_w)
    texts: dict[str, list[str]] = {"stdout": [], "stderr": [], "status": []}
    handlers: dict[str, Optional[LineHandler]] = {"stdout": on_stdout, "stderr": on_stderr, "status": on_status}
    partial = dict.fromkeys(texts, b"")
    sel = selectors.DefaultSelector()
    if proc.stdout is not None:
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
    assert proc.stderr is not None
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
    if status_r >= 0:
        sel.register(status_r, selectors.EVENT_READ, "status")

    def emit(name: str, data: bytes) -> None:
        line = data.decode(errors="replace")
        texts[name].append(line)
        handler = handlers[name]
        if handler is not None:
            handler(line.rstrip("\n"))

    try:
        while sel.get_map():
            events = sel.select(timeout=tick_interval if tick is not None else None)
            if tick is not None:
                tick()
            for key, _ in events:
                name = str(key.data)
                fd = key.fd
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    if partial[name]:
                        emit(name, partial[name])
                        partial[name] = b""
                    continue
                data = partial[name] + chunk
                *lines, partial[name] = data.split(b"\n")
                for line in lines:
                    emit(name, line + b"\n")
        proc.wait()
    finally:
        sel.close()
        if status_r >= 0:
            os.close(status_r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return subprocess.CompletedProcess(prepared.argv, proc.returncode, "".join(texts["stdout"]),
                                       "".join(texts["stderr"]))
