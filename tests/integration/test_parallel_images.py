"""Two independent sub-images of one build are built at the same time, each in its own workspace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

MAIN = """\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=directory
OutputDirectory={out}

[Build]
PackageCacheDirectory={cache}
WorkspaceDirectory={workspaces}
"""

SUB = """\
[Output]
Format=directory

[Content]
Packages={packages}
"""


def project(base: Path, cache: Path, b_packages: str = "") -> Path:
    d = base / "project"
    (d / "mkosi.images").mkdir(parents=True)
    for sub in ("out", "workspaces"):
        (base / sub).mkdir()
    (d / "mkosi.conf").write_text(MAIN.format(out=base / "out", cache=cache, workspaces=base / "workspaces"))
    (d / "mkosi.images/a.conf").write_text(SUB.format(packages=""))
    (d / "mkosi.images/b.conf").write_text(SUB.format(packages=b_packages))
    return d


def workspaces_removed(d: Path, timeout: float = 60) -> bool:
    """Workspaces are removed by a detached rm after the build: wait for it."""
    end = time.monotonic() + timeout
    while any(d.iterdir()):
        if time.monotonic() > end:
            return False
        time.sleep(0.5)
    return True


def index(lines: list[str], prefix: str, needle: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix) and needle in line)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> tuple[Path, list[str]]:
    base = tmp_path_factory.mktemp("parallel-images")
    d = project(base, package_cache)
    proc = run_mkosi(d, "build")
    return base, proc.stderr.splitlines()


def test_both_sub_images_and_the_main_image_are_built(built: tuple[Path, list[str]]) -> None:
    base, _ = built
    for name in ("a", "b", "image"):
        assert (base / "out" / name / "usr/bin/dpkg").is_file(), name
    assert workspaces_removed(base / "workspaces")


def test_sub_images_build_at_the_same_time_and_their_lines_carry_their_names(built: tuple[Path, list[str]]) -> None:
    _, lines = built
    # Every line of a build's output (its tools' too) starts with the image's name.
    assert all(line.startswith(("[a] ", "[b] ", "[main] ")) for line in lines if line.strip()), lines
    a_start, b_start = index(lines, "[a] ", "‣ Building"), index(lines, "[b] ", "‣ Building")
    a_end = index(lines, "[a] ", "Building the final image done")
    b_end = index(lines, "[b] ", "Building the final image done")
    assert a_start < b_end and b_start < a_end  # neither waited for the other
    main_start = index(lines, "[main] ", "‣ Building")
    assert main_start > max(a_end, b_end)  # the main image after its sub-images
    # Neither waited for the output directory's lock the other holds.
    assert not any("Waiting for another build" in line for line in lines)


def test_a_failing_image_stops_the_other_and_both_clean_up(tmp_path: Path, package_cache: Path) -> None:
    d = project(tmp_path, package_cache, b_packages="mkosi-no-such-package")
    proc = run_mkosi(d, "build", check=False)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "[b] Error:" in err and "mkosi-no-such-package" in err
    assert "building image 'b' failed; stopping the build of 'a'" in err
    assert "[a] Error: interrupted" in err
    assert "[main]" not in err
    assert "Traceback" not in err
    assert workspaces_removed(tmp_path / "workspaces")
    assert not (tmp_path / "out/a").exists() and not (tmp_path / "out/b").exists()
    assert not (tmp_path / "out/image").exists()
