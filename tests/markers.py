"""Markers of unit tests that need more than Python.

`hosttools`: tests that run real host programs (mkfs, sfdisk, veritysetup, objcopy ...) on files,
without root and without the network. `pytest -m hosttools` runs just them, `pytest -m "not
hosttools"` the pure-Python rest, and a test whose program is not installed is skipped, naming it.

`privileged`: the few unit tests that need root's capabilities (real bubblewrap runs). tools/run-tests
runs the unit tests with every capability dropped, then these with the integration tests as root."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T", bound=Callable[..., object])


CAP_SYS_ADMIN = 21


def privileged() -> bool:
    """Whether this process may mount and make namespaces (root with CAP_SYS_ADMIN: not a uid 0
    whose capabilities were all dropped, as tools/run-tests runs the unit tests)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return False


def needs_tools(*names: str, files: tuple[Path, ...] = ()) -> Callable[[T], T]:
    """Mark a test `hosttools`; skip it when one of the programs (or files, e.g. an EFI stub) is missing."""
    missing = [n for n in names if shutil.which(n) is None] + [str(f) for f in files if not f.exists()]

    def apply(test: T) -> T:
        marked: T = pytest.mark.hosttools(test)
        skipped: T = pytest.mark.skipif(bool(missing), reason="needs " + ", ".join(missing))(marked)
        return skipped

    return apply


def needs_privileges(*names: str) -> Callable[[T], T]:
    """Mark a unit test `privileged` (it mounts or makes namespaces, e.g. real bubblewrap runs): skipped
    in the unprivileged unit test run, run by the root pass of tools/run-tests."""
    missing = [n for n in names if shutil.which(n) is None]

    def apply(test: T) -> T:
        marked: T = pytest.mark.privileged(test)
        reason = "needs root with CAP_SYS_ADMIN" if not privileged() else "needs " + ", ".join(missing)
        skipped: T = pytest.mark.skipif(not privileged() or bool(missing), reason=reason)(marked)
        return skipped

    return apply
