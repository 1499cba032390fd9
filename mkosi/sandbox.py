"""Running commands inside the image: systemd-nspawn for scripts, chroot for package managers,
and the API file systems they need. Every mount made here is undone in a finally block."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.run import PathString, run


def host_has_systemd() -> bool:
    """Whether systemd runs as PID 1 with a system bus, so nspawn can register and create scopes."""
    return Path("/run/systemd/system").is_dir() and Path("/run/dbus/system_bus_socket").exists()


def nspawn_executable() -> str:
    return os.environ.get("MKOSI_NSPAWN_EXECUTABLE") or "systemd-nspawn"


def nspawn_base_args(keep_unit: Optional[bool]) -> list[str]:
    """Flags every nspawn call needs on this host. Without systemd/bus: --register=no --keep-unit."""
    argv = [nspawn_executable()]
    systemd = host_has_systemd()
    if not systemd:
        argv.append("--register=no")
    if keep_unit or (keep_unit is None and not systemd):
        argv.append("--keep-unit")
    return argv


def valid_machine_name(name: Optional[str]) -> Optional[str]:
    """nspawn takes host-name-like machine names only (letters, digits, '-' and '.', at most 64
    characters): image_1.2 becomes image-1.2. None when nothing usable is left."""
    if not name:
        return None
    cleaned = re.sub(r"[^A-Za-z0-9.-]+", "-", name)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:64].strip(".-")
    return cleaned or None


def nspawn_command(
    root: Path,
    cmd: Sequence[PathString],
    *,
    keep_unit: Optional[bool] = None,
    network: bool = False,
    env: Optional[Mapping[str, str]] = None,
    binds: Sequence[tuple[PathString, str]] = (),
    ro_binds: Sequence[tuple[PathString, str]] = (),
    chdir: Optional[str] = None,
    ephemeral: bool = False,
    image: bool = False,
    boot: bool = False,
    extra: Sequence[str] = (),
    machine: Optional[str] = None,
) -> list[str]:
    argv = nspawn_base_args(keep_unit)
    argv += ["--quiet", f"--machine={valid_machine_name(machine) or 'mkosi-' + uuid.uuid4().hex[:12]}"]
    argv += [f"--image={root}"] if image else [f"--directory={root}"]
    if not boot:
        argv.append("--as-pid2")
    if not network:
        argv.append("--private-network")
    if ephemeral:
        argv.append("--ephemeral")
    for name, value in (env or {}).items():
        argv.append(f"--setenv={name}={value}")
    for src, dst in binds:
        argv.append(f"--bind={os.fspath(src)}:{dst}")
    for src, dst in ro_binds:
        argv.append(f"--bind-ro={os.fspath(src)}:{dst}")
    if chdir:
        argv.append(f"--chdir={chdir}")
    argv += list(extra)
    if boot:
        argv.append("--boot")
    if cmd:
        argv += ["--", *[os.fspath(c) for c in cmd]]
    return argv


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below path, deepest first."""
    prefix = str(path.resolve())
    points = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == prefix or mp.startswith(prefix + "/"):
                    points.append(mp)
    except OSError:
        return []
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def umount_all_below(path: Path) -> None:
    for mp in mounts_below(path):
        proc = run(["umount", mp], check=False, capture=True)
        if proc.returncode != 0:
            run(["umount", "--lazy", mp], check=False, capture=True)


@contextlib.contextmanager
def api_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev in root for chrooted package managers and maintainer scripts."""
    try:
        for fs, target, opts in (("proc", "proc", []), ("sysfs", "sys", ["-o", "ro"])):
            (root / target).mkdir(parents=True, exist_ok=True)
            run(["mount", "-t", fs, *opts, fs, root / target])
        (root / "dev").mkdir(parents=True, exist_ok=True)
        run(["mount", "--rbind", "/dev", root / "dev"])
        run(["mount", "--make-rslave", root / "dev"])
        yield
    finally:
        for target in ("dev", "sys", "proc"):
            umount_all_below(root / target)
        log.debug(f"unmounted API file systems of {root}")
