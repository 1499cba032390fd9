"""Mounts mkosi makes in its own mount namespace (loop-mounted images, the incremental overlay) and
their removal. Commands that need mounts only while they run get them from their Sandbox instead."""

from __future__ import annotations

from pathlib import Path

from mkosi.run import current_sandbox, run


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
        host = current_sandbox().on_host()
        proc = run(["umount", mp], sandbox=host, check=False, capture=True)
        if proc.returncode != 0:
            run(["umount", "--lazy", mp], sandbox=host, check=False, capture=True)
