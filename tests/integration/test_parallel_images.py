"""Two independent sub-images of one build are built at the same time, each in its own workspace; the
main image is built on one of them through the link to its output (BaseTrees=%O/a, a modern tree)."""

from __future__ import annotations

import os
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

[Content]
BaseTrees=%O/a

[Build]
PackageCacheDirectory={cache}
WorkspaceDirectory={workspaces}
"""

SUB = """\
[Output]
Format=directory
{output}

[Content]
Packages={packages}
"""


def project(base: Path, cache: Path, b_packages: str = "") -> Path:
    d = base / "project"
    (d / "mkosi.images").mkdir(parents=True)
    for sub in ("out", "workspaces"):
        (base / sub).mkdir()
    (d / "mkosi.conf").write_text(MAIN.format(out=base / "out", cache=cache, workspaces=base / "workspaces"))
    # a is a_1, with the link a -> a_1 that the main image's BaseTrees=%O/a goes through; its less
    # shows in the main image. b (no version) is b itself.
    (d / "mkosi.images/a.conf").write_text(SUB.format(output="ImageVersion=1", packages="less"))
    (d / "mkosi.images/b.conf").write_text(SUB.format(output="", packages=b_packages) + "WithDocs=no\n")
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
    for name in ("a_1", "b", "image"):
        assert (base / "out" / name / "usr/bin/dpkg").is_file(), name
    assert workspaces_removed(base / "workspaces")


def test_the_link_to_a_sub_image_is_what_percent_o_references_resolve_through(built: tuple[Path, list[str]]) -> None:
    base, _ = built
    out = base / "out"
    # a's output is a_1; the bare name links to it (relatively). b and the main image need no link.
    assert (out / "a").is_symlink() and os.readlink(out / "a") == "a_1"
    assert not (out / "b").is_symlink() and not (out / "image").is_symlink()
    assert sorted(p.name for p in out.iterdir() if p.is_symlink()) == ["a"]
    # The main image is built on a (BaseTrees=%O/a): a's package is in it, b has none.
    assert (out / "a_1/usr/bin/less").exists()
    assert (out / "image/usr/bin/less").exists()
    assert not (out / "b/usr/bin/less").exists()


def test_modern_images_keep_documentation_unless_told(built: tuple[Path, list[str]]) -> None:
    base, _ = built
    out = base / "out"
    # WithDocs= defaults to yes in modern trees: less's man page and changelog are there; b says no.
    assert (out / "a_1/usr/share/man/man1/less.1.gz").is_file()
    assert (out / "a_1/usr/share/doc/less/changelog.Debian.gz").is_file()
    assert not (out / "b/usr/share/man/man1").exists() or not any((out / "b/usr/share/man/man1").iterdir())
    assert (out / "b/usr/share/doc").is_dir()   # copyright files stay with WithDocs=no


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
    assert not (tmp_path / "out/a").is_symlink() and not (tmp_path / "out/a_1").exists()
    assert not (tmp_path / "out/image").exists()
