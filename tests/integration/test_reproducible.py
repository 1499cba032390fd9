"""Reproducible builds: each format built twice with the same epoch and seed is byte-identical, and
--check-reproducible finds a file that a postinst script makes differ."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mkosi.output.gpt import make_uuid, seed_from_setting
from mkosi.reproduce import first_difference
from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

EPOCH = "1700000000"
SEED = "5b7f0c1e-8d2a-4e3b-9f60-1a2b3c4d5e6f"


def write_project(d: Path, cache: Path, extra: str = "") -> Path:
    (d / "mkosi.output").mkdir(parents=True, exist_ok=True)
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
ImageId=repro
ManifestFormat=json,spdx,cyclonedx
Seed={SEED}

[Content]
Cache={cache}
SourceDateEpoch={EPOCH}
{extra}
[Validation]
Checksum=yes
""")
    return d


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    return write_project(tmp_path_factory.mktemp("repro-project"), package_cache)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def gpt_ext4_twice(project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """Two plain builds of the disk image, the first one's artifacts kept aside."""
    keep = tmp_path_factory.mktemp("first-build")
    start = time.monotonic()
    run_mkosi(project, "-f", "-t", "gpt_ext4", "build")
    for p in (project / "mkosi.output").iterdir():
        shutil.move(str(p), keep / p.name)
    # The second build uses the metadata the first one synced, as --check-reproducible does: Debian's
    # mirrors publish several times a day, and a push between the two builds would change packages.
    run_mkosi(project, "-f", "-t", "gpt_ext4", "--cache-only=metadata", "build")
    # The second build is kept aside too: later tests build into the same output directory.
    second = tmp_path_factory.mktemp("second-build")
    for p in (project / "mkosi.output").iterdir():
        shutil.move(str(p), second / p.name)
    return keep, second, time.monotonic() - start


def explain_difference(a: Path, b: Path) -> str:
    """How two versions of an artifact differ: a diff of text, the first differing byte otherwise."""
    if a.suffix in (".json", ".manifest") or a.name == "SHA256SUMS":
        diff = difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(), lineterm="", n=1)
        return "\n".join(list(diff)[:60])
    return f"first difference at byte {first_difference(a, b)}"


def test_gpt_ext4_is_byte_identical(gpt_ext4_twice: tuple[Path, Path, float]) -> None:
    first, second, seconds = gpt_ext4_twice
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert "repro.raw" in names and "repro.spdx.json" in names
    differing = [name for name in names if sha256(first / name) != sha256(second / name)]
    assert not differing, "differ between two builds: " + ", ".join(differing) + "\n" + "\n".join(
        f"--- {name}: {explain_difference(first / name, second / name)}" for name in differing)
    print(f"gpt_ext4: reproducible, sha256 {sha256(first / 'repro.raw')}, two builds in {seconds:.0f}s")


def test_gpt_uuids_come_from_the_seed(gpt_ext4_twice: tuple[Path, Path, float]) -> None:
    first, _, _ = gpt_ext4_twice
    table = json.loads(subprocess.run(["sfdisk", "--json", str(first / "repro.raw")], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["id"].lower() == str(make_uuid(seed_from_setting(SEED), "disk"))


def test_check_reproducible_tar(project: Path) -> None:
    start = time.monotonic()
    proc = run_mkosi(project, "-f", "-t", "tar", "--compress-output=zstd", "--check-reproducible", "build")
    seconds = time.monotonic() - start
    m = re.search(r"^reproducible: repro\.tar\.zst sha256 ([0-9a-f]{64})$", proc.stdout, re.MULTILINE)
    assert m, proc.stdout + proc.stderr
    assert sha256(project / "mkosi.output/repro.tar.zst") == m.group(1), "the first build is moved into place"
    print(f"tar: reproducible, sha256 {m.group(1)}, check took {seconds:.0f}s")


def test_check_reports_a_file_a_postinst_script_makes_differ(tmp_path: Path, package_cache: Path) -> None:
    d = write_project(tmp_path / "dated", package_cache)
    script = d / "mkosi.postinst"
    script.write_text("#!/bin/sh\ndate +%s.%N > /etc/build-date\n")
    script.chmod(0o755)
    proc = run_mkosi(d, "-t", "directory", "--check-reproducible", "build", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "not reproducible" in proc.stdout
    assert re.search(r"^  /etc/build-date: content", proc.stdout, re.MULTILINE), proc.stdout
    assert "Traceback" not in proc.stderr
    assert "not reproducible" in proc.stderr, "the error line says so too"
    assert not (d / "mkosi.output/repro").exists(), "a failed check leaves no output"
