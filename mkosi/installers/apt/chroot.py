"""The image's own dpkg, run in a chroot sandbox of the root with the API file systems and the package cache."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.config import AptConfig
from mkosi.installers.apt.deferred import Deferred
from mkosi.installers.apt.errors import dpkg_error_message
from mkosi.installers.apt.hostapt import HostApt
from mkosi.installers.apt.plan import DpkgOp
from mkosi.progress import InstallProgress
from mkosi.run import find_tool, output, run, run_streaming
from mkosi.sandbox import Mount, Sandbox
from mkosi.trees import resolve_in_root

# Private directory in the root while packages are installed (package cache mount points, eatmydata).
HELPER_DIR = ".mkosi-apt"


# The helper directory's bin comes first: it holds an `ischroot` that says yes. In dpkg's PID namespace
# /proc/1 is the sandbox's own init, rooted in the image, so Debian's ischroot would take the sandbox
# for a booted system, and e.g. libc6's postinst would then try to re-exec init and sleep a second.
_CHROOT_PATH = f"/{HELPER_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_ISCHROOT = "#!/bin/sh\n# Written by mkosi while packages are installed: this is a chroot.\nexit 0\n"


# Options for every dpkg run: no fsync per file (the image is written out later anyway) and keep
# configuration files that are already in the root (e.g. from a skeleton tree) without asking.
_DPKG_OPTIONS = ("--force-unsafe-io", "--force-confdef", "--force-confold")


_POLICY_RC_D = "#!/bin/sh\n# Written by mkosi while packages are installed: start no services.\nexit 101\n"


# libeatmydata is preloaded by its soname, found through a library path that only exists in the root:
# the sandbox tool itself (a host binary, started with the same environment) then finds the host's
# copy instead of failing to preload a path that exists only in the root.
_EATMYDATA = "libeatmydata.so.1"


@lru_cache(maxsize=4)
def _host_architecture(sandbox: Sandbox) -> Optional[str]:
    if find_tool("dpkg", sandbox) is None:
        return None
    return output(["dpkg", "--print-architecture"], sandbox=sandbox).strip()


def _host_eatmydata() -> Optional[Path]:
    for pattern in (f"usr/lib/*/{_EATMYDATA}", f"usr/lib*/{_EATMYDATA}"):
        for p in sorted(Path("/").glob(pattern)):
            if p.exists():
                return p
    return None


def chroot_env() -> dict[str, str]:
    """The whole environment of dpkg and the maintainer scripts (nothing of the host's is passed on)."""
    env = {
        "PATH": _CHROOT_PATH,
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "DPKG_COLORS": "never",
    }
    if "SOURCE_DATE_EPOCH" in os.environ:
        env["SOURCE_DATE_EPOCH"] = os.environ["SOURCE_DATE_EPOCH"]
    return env


def chroot_sandbox(sandbox: Sandbox, root: Path, package_dirs: dict[Path, str]) -> Sandbox:
    """The root as /, with /proc, /sys and /dev, the package directories read-only below HELPER_DIR, a
    clean environment, and a PID namespace of its own: whatever a maintainer script leaves running is
    killed when dpkg exits."""
    mounts = [Mount(d, inner, readonly=True) for d, inner in package_dirs.items() if d.is_dir()]
    return sandbox.chroot(root, env=chroot_env(), clear_env=True, private_pids=True, mounts=mounts)


class Chroot:
    """Runs the image's own dpkg inside the root; package directories appear under /.mkosi-apt/."""

    def __init__(self, root: Path, package_dirs: dict[Path, str], sandbox: Sandbox) -> None:
        self.root = root
        self.package_dirs = package_dirs
        self.host = sandbox
        self.sandbox = chroot_sandbox(sandbox, root, package_dirs)
        # Counts the packages dpkg unpacks and sets up, from its --status-fd stream (None: not shown).
        self.progress: Optional[InstallProgress] = None
        # Slow maintainer script work done after dpkg's runs and in parallel (see deferred.py).
        self.deferred: Optional[Deferred] = None

    def defer_slow_scripts(self) -> None:
        self.deferred = Deferred(self.root, HELPER_DIR, lambda argv: self.run(argv, check=False))

    @contextlib.contextmanager
    def showing_progress(self, total: int) -> Iterator[None]:
        """Show packages done of `total` while the block's dpkg runs go on (one progress line)."""
        with log.progress() as renderer:
            self.progress = InstallProgress(renderer, total)
            try:
                yield
            finally:
                self.progress = None

    def path_in_root(self, deb: str) -> str:
        p = Path(deb)
        if p.parent not in self.package_dirs:
            raise MkosiError(f"apt planned to install {deb}, which is not in the package cache")
        return f"{self.package_dirs[p.parent]}/{p.name}"

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(argv, sandbox=self.sandbox, check=check, capture=True)

    def enable_eatmydata(self, architecture: str) -> None:
        lib = _host_eatmydata()
        if lib is None or _host_architecture(self.host) != architecture:
            return
        shutil.copyfile(lib, self.root / HELPER_DIR / _EATMYDATA)
        env = {**self.sandbox.environment, "LD_PRELOAD": _EATMYDATA, "LD_LIBRARY_PATH": f"/{HELPER_DIR}"}
        preloaded = self.sandbox.but(env=env)
        probe = run(["/bin/true"], sandbox=preloaded, check=False, capture=True)
        if probe.returncode == 0 and not probe.stderr.strip():
            self.sandbox = preloaded
            log.debug("dpkg runs with libeatmydata preloaded")
        else:
            log.debug(f"not using libeatmydata in the image: {probe.stderr.strip()}")

    def dpkg(self, op: DpkgOp, extra: Sequence[str] = (), unpacking_done: bool = False) -> None:
        """One dpkg run; `unpacking_done`: no run after this one unpacks anything (so the files of every
        package are in place)."""
        if self.deferred is not None and op.action == "configure":
            if unpacking_done:
                self.deferred.early_hwdb()
            # Configured first, so that the work their scripts defer runs alongside the others'.
            early = self.deferred.early_configure() if op.args == ("--pending",) else []
            if early:
                first = self._run_dpkg(DpkgOp("configure", ("--no-triggers",), tuple(early)), extra)
                if first.returncode != 0:
                    # The run below configures them with the others and says what went wrong.
                    log.debug(f"configuring {', '.join(early)} first failed: {first.stderr.strip()}")
        proc = self._run_dpkg(op, extra)
        text = f"{proc.stdout}\n{proc.stderr}"
        if proc.returncode != 0:
            msg = dpkg_error_message(text) or f"dpkg --{op.action} failed with exit status {proc.returncode}"
            tail = "\n".join(text.strip().splitlines()[-12:])
            raise MkosiError(msg, hint=f"dpkg said:\n{tail}")

    def _run_dpkg(self, op: DpkgOp, extra: Sequence[str]) -> subprocess.CompletedProcess[str]:
        args = [self.path_in_root(a) if op.action in ("unpack", "install") else a for a in op.args]
        argv = ["dpkg", *_DPKG_OPTIONS, *extra, *op.options, f"--{op.action}", *args]
        with self.deferred.around_dpkg() if self.deferred is not None else contextlib.nullcontext():
            if self.progress is None:
                proc = self.run(argv, check=False)
            else:
                proc = run_streaming(lambda fd: [*argv[:1], f"--status-fd={fd}", *argv[1:]],
                                     sandbox=self.sandbox, on_status=self.progress.status_line)
        if log.debug_enabled():
            log.debug(f"{proc.stdout}\n{proc.stderr}".strip())
        return proc


@contextlib.contextmanager
def open_chroot(cfg: AptConfig, apt: HostApt) -> Iterator[Chroot]:
    """Forbid service starts and make the helper directory; remove both whatever happens. The mounts
    exist only in each dpkg run's own mount namespace, so nothing is ever left mounted in the root."""
    root = cfg.root.absolute()
    # Resolved in the root: a tree's symbolic links never lead mkosi's writes out of it.
    path = resolve_in_root(root, "usr/sbin/policy-rc.d")
    policy = None if path.exists() or path.is_symlink() else path  # else the tree brought its own
    helper = root / HELPER_DIR
    if helper.is_symlink():
        helper.unlink()   # mkosi's private directory, whatever a tree put there
    chroot: Optional[Chroot] = None
    package_dirs = {apt.archives: f"/{HELPER_DIR}/archives", apt.uncompressed: f"/{HELPER_DIR}/uncompressed"}
    if cfg.local_repository is not None:
        # apt installs the packages of a file: repository from where they are (PackageDirectories=).
        package_dirs[cfg.local_repository.absolute()] = f"/{HELPER_DIR}/packages"
    try:
        if policy is not None:
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text(_POLICY_RC_D)
            policy.chmod(0o755)
        (helper / "bin").mkdir(parents=True, exist_ok=True)
        (helper / "bin/ischroot").write_text(_ISCHROOT)
        (helper / "bin/ischroot").chmod(0o755)
        chroot = Chroot(root, package_dirs, cfg.sandbox)
        chroot.enable_eatmydata(cfg.architecture)
        chroot.defer_slow_scripts()
        yield chroot
        if chroot.deferred is not None:
            chroot.deferred.finish()
    finally:
        if chroot is not None and chroot.deferred is not None:
            chroot.deferred.close()
        if policy is not None:
            with contextlib.suppress(FileNotFoundError):
                policy.unlink()
        shutil.rmtree(helper, ignore_errors=True)
