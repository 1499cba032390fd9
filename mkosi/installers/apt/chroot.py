"""The image's own dpkg, run in a chroot of the root with the API file systems and the package cache mounted."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.config import AptConfig
from mkosi.installers.apt.errors import dpkg_error_message
from mkosi.installers.apt.hostapt import HostApt
from mkosi.installers.apt.plan import DpkgOp
from mkosi.run import find_tool, output, require_tool, run

# Private directory in the root while packages are installed (package cache mount, eatmydata).
HELPER_DIR = ".mkosi-apt"


_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# Options for every dpkg run: no fsync per file (the image is written out later anyway) and keep
# configuration files that are already in the root (e.g. from a skeleton tree) without asking.
_DPKG_OPTIONS = ("--force-unsafe-io", "--force-confdef", "--force-confold")


_POLICY_RC_D = "#!/bin/sh\n# Written by mkosi while packages are installed: start no services.\nexit 101\n"


@lru_cache(maxsize=1)
def _host_architecture() -> Optional[str]:
    if find_tool("dpkg") is None:
        return None
    return output(["dpkg", "--print-architecture"]).strip()


def _host_eatmydata() -> Optional[Path]:
    for pattern in ("usr/lib/*/libeatmydata.so.1", "usr/lib*/libeatmydata.so.1"):
        for p in sorted(Path("/").glob(pattern)):
            if p.exists():
                return p
    return None


def _processes_in(root: Path) -> list[int]:
    target = os.path.realpath(root)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry.name}/root")
        except OSError:
            continue
        if link == target or link.startswith(target + "/"):
            pids.append(int(entry.name))
    return pids


def _kill_processes_in(root: Path) -> None:
    """Stop whatever a maintainer script left running in the chroot (only processes rooted there)."""
    pids = _processes_in(root)
    if not pids:
        return
    log.warn(f"stopping {len(pids)} process(es) left behind in {root}: {', '.join(map(str, pids))}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            pids = _processes_in(root)
            if not pids:
                return
            time.sleep(0.05)


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below path (bind mounts of the same file system included)."""
    prefix = os.path.realpath(path)
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
                result.append(mountpoint)
    return result


def _umount(path: Path) -> None:
    proc = run(["umount", path], check=False, capture=True)
    if proc.returncode != 0:
        log.warn(f"could not unmount {path} ({proc.stderr.strip()}), detaching it lazily")
        run(["umount", "--lazy", path], check=False, capture=True)


class Chroot:
    """Runs the image's own dpkg inside the root; package directories appear under /.mkosi-apt/."""

    def __init__(self, root: Path, package_dirs: dict[Path, str]) -> None:
        self.root = root
        self.package_dirs = package_dirs
        self.chroot = require_tool("chroot")
        self.env = {
            "PATH": _CHROOT_PATH,
            "LC_ALL": "C.UTF-8",
            "HOME": "/root",
            "DEBIAN_FRONTEND": "noninteractive",
            "DEBCONF_NONINTERACTIVE_SEEN": "true",
            "DPKG_COLORS": "never",
        }
        if "SOURCE_DATE_EPOCH" in os.environ:
            self.env["SOURCE_DATE_EPOCH"] = os.environ["SOURCE_DATE_EPOCH"]

    def path_in_root(self, deb: str) -> str:
        p = Path(deb)
        if p.parent not in self.package_dirs:
            raise MkosiError(f"apt planned to install {deb}, which is not in the package cache")
        return f"{self.package_dirs[p.parent]}/{p.name}"

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        envs = [f"{k}={v}" for k, v in self.env.items()]
        return run(["env", "-i", *envs, self.chroot, self.root, *argv], check=check, capture=True)

    def enable_eatmydata(self, architecture: str) -> None:
        lib = _host_eatmydata()
        if lib is None or _host_architecture() != architecture:
            return
        dest = self.root / HELPER_DIR / "libeatmydata.so"
        shutil.copyfile(lib, dest)
        inner = f"/{HELPER_DIR}/libeatmydata.so"
        probe = self.run(["env", f"LD_PRELOAD={inner}", "/bin/true"], check=False)
        if probe.returncode == 0 and not probe.stderr.strip():
            self.env["LD_PRELOAD"] = inner
            log.debug("dpkg runs with libeatmydata preloaded")
        else:
            log.debug(f"not using libeatmydata in the image: {probe.stderr.strip()}")

    def dpkg(self, op: DpkgOp, extra: Sequence[str] = ()) -> None:
        args = [self.path_in_root(a) if op.action in ("unpack", "install") else a for a in op.args]
        argv = ["dpkg", *_DPKG_OPTIONS, *extra, *op.options, f"--{op.action}", *args]
        proc = self.run(argv, check=False)
        text = f"{proc.stdout}\n{proc.stderr}"
        if log.debug_enabled():
            log.debug(text.strip())
        if proc.returncode != 0:
            msg = dpkg_error_message(text) or f"dpkg --{op.action} failed with exit status {proc.returncode}"
            tail = "\n".join(text.strip().splitlines()[-12:])
            raise MkosiError(msg, hint=f"dpkg said:\n{tail}")


def _api_mounts(root: Path, package_dirs: dict[Path, str]) -> list[tuple[list[str], Path]]:
    """What maintainer scripts need mounted (/proc, /sys, /dev) and the package directories, read-only."""
    mounts: list[tuple[list[str], Path]] = [
        (["-t", "proc", "-o", "nosuid,nodev,noexec", "proc"], root / "proc"),
        (["-o", "bind,ro", "/sys"], root / "sys"),
        (["--bind", "/dev"], root / "dev"),
    ]
    mounts += [(["-o", "bind,ro", str(d)], root / inner.lstrip("/")) for d, inner in package_dirs.items()
               if d.is_dir()]
    return mounts


def _cleanup(root: Path, mounted: Sequence[Path], policy: Optional[Path]) -> None:
    """Stop what was left running, unmount, drop the policy-rc.d we wrote and the helper directory."""
    helper = root / HELPER_DIR
    try:
        _kill_processes_in(root)
    finally:
        for dest in reversed(mounted):
            _umount(dest)
        if policy is not None:
            with contextlib.suppress(FileNotFoundError):
                policy.unlink()
        # Never recurse into something still mounted there (the package cache).
        if _mounts_below(helper):
            log.warn(f"{helper} is still mounted, leaving it in place")
        else:
            shutil.rmtree(helper, ignore_errors=True)


@contextlib.contextmanager
def open_chroot(cfg: AptConfig, apt: HostApt) -> Iterator[Chroot]:
    """Mount what maintainer scripts need, forbid service starts; undo all of it whatever happens."""
    root = cfg.root.absolute()
    path = root / "usr/sbin/policy-rc.d"
    policy = None if path.exists() or path.is_symlink() else path  # else the tree brought its own
    mounted: list[Path] = []
    package_dirs = {apt.archives: f"/{HELPER_DIR}/archives", apt.uncompressed: f"/{HELPER_DIR}/uncompressed"}
    try:
        if policy is not None:
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text(_POLICY_RC_D)
            policy.chmod(0o755)
        for args, dest in _api_mounts(root, package_dirs):
            dest.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, dest], capture=True)
            mounted.append(dest)
        chroot = Chroot(root, package_dirs)
        chroot.enable_eatmydata(cfg.architecture)
        yield chroot
    finally:
        _cleanup(root, mounted, policy)
