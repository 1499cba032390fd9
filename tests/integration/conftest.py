"""Shared pieces of the integration tests: they build real images, so they need root, the
Debian archive and MKOSI_INTEGRATION=1 (tools/run-tests sets it when run as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def integration_enabled() -> bool:
    return os.getuid() == 0 and os.environ.get("MKOSI_INTEGRATION") == "1"


def slow_deadline() -> float | None:
    """MKOSI_TEST_SLOW_DEADLINE (seconds since the epoch, set by tools/run-tests from
    MKOSI_TEST_SLOW_BUDGET): slow tests that would start after it are skipped, saying so."""
    value = os.environ.get("MKOSI_TEST_SLOW_DEADLINE")
    return float(value) if value else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the fixtures are set up: a skipped slow test builds nothing.
    deadline = slow_deadline()
    if deadline is not None and item.get_closest_marker("slow") is not None and time.time() > deadline:
        pytest.skip("slow test not started: the run's time budget for slow tests (MKOSI_TEST_SLOW_BUDGET) is spent")


@pytest.fixture(scope="module", autouse=True)
def module_build_directories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The images a module builds (its module-scoped fixtures' directories and its tests' tmp_path) are
    removed when the module is done (autouse: set up before the module's other fixtures, so torn down
    after them): a whole run keeps tens of GB otherwise, and a machine whose disk fills up halfway fails
    every later test. MKOSI_TEST_KEEP_TMP=1 keeps them for a look after the run."""
    base = tmp_path_factory.getbasetemp()
    before = {entry.name for entry in base.iterdir()}
    yield
    if os.environ.get("MKOSI_TEST_KEEP_TMP") == "1":
        return
    for entry in sorted(base.iterdir()):
        # The tools tree's project belongs to a session fixture; the tree itself lives in the cache.
        if entry.name not in before and not entry.name.startswith("tools-tree"):
            remove_tree(entry)


def remove_tree(path: Path) -> None:
    """Remove a test's build directory without crossing into a file system mounted inside it (a mount
    left behind by a failed build must not take the host's files with it)."""
    if path.is_dir() and not path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        path.unlink(missing_ok=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything here is an integration test, marked or not (before `-m` selects by marker).
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and "integration" not in item.keywords:
            item.add_marker(pytest.mark.integration)
    if integration_enabled():
        return
    skip = pytest.mark.skip(reason="integration tests need root and MKOSI_INTEGRATION=1")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def package_cache() -> Path:
    path = Path(os.environ.get("MKOSI_TEST_CACHE", "/var/cache/mkosi-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_mkosi(directory: Path, *argv: str, check: bool = True, env: dict[str, str] | None = None,
              timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mkosi", "-C", str(directory), *argv]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mkosi {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


TOOLS_TREE_CONF = """\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=directory

[Build]
ToolsTree=default
ToolsTreeDistribution=debian
ToolsTreeRelease=trixie
PackageCacheDirectory={cache}
"""


def tools_tree_project(directory: Path, cache: Path, extra: str = "") -> Path:
    """A configuration whose only purpose is its default tools tree (Debian trixie, the default profiles),
    cached in `cache`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mkosi.conf").write_text(TOOLS_TREE_CONF.format(cache=cache) + extra)
    return directory


@pytest.fixture(scope="session")
def tools_tree(package_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tools tree (Debian trixie: systemd-repart, ukify, systemd-dissect, mkfs.*, veritysetup,
    sbsign, qemu ...), built once through mkosi itself (`mkosi sandbox` builds it when it is not cached) and
    kept in the package cache, so later sessions reuse it. MKOSI_TEST_TOOLS_TREE=PATH uses a given tree."""
    given = os.environ.get("MKOSI_TEST_TOOLS_TREE")
    if given:
        return Path(given)
    if not integration_enabled():
        pytest.skip("the tools tree is built by mkosi: needs root and MKOSI_INTEGRATION=1")
    project = tools_tree_project(tmp_path_factory.mktemp("tools-tree"), package_cache)
    run_mkosi(project, "sandbox", "--", "true")
    summary = json.loads(run_mkosi(project, "--json", "summary").stdout)
    path = Path(summary["Images"][-1]["ToolsTreePath"])
    assert (path / "usr/bin/systemd-repart").exists(), path
    return path
