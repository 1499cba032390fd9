"""Bootable=auto, the modern default: a Debian bookworm GPT disk image (Format=gpt_ext4, no tools tree)
made bootable (no ESP, no UKI, no direct kernel boot files although SplitArtifacts=uki and
BootProtocols=linux ask for them when it boots), and the log says why in one warning.

Needs root and MKOSI_INTEGRATION=1.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the platform is checked for x86-64"),
]

ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("bootauto")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_ext4
ImageId=autoimg
OutputDirectory=out
SplitArtifacts=uki
BootProtocols=uefi,linux

[Content]
PackageCacheDirectory={package_cache}
""")
    (d / "out").mkdir()
    summary = run_mkosi(d, "summary").stdout
    assert [line.split() for line in summary.splitlines() if "Bootable=" in line] == [["Bootable", "Bootable=auto"]]
    start = time.monotonic()
    proc = run_mkosi(d, "-f", "build")
    print(f"\nbootauto: mkosi -f build in {time.monotonic() - start:.1f}s")
    return d / "out", proc.stderr


def test_one_warning_says_why(built: tuple[Path, str]) -> None:
    lines = [line for line in built[1].splitlines() if "Bootable=auto" in line]
    assert len(lines) == 1, lines
    assert "no kernel" in lines[0] and "not made bootable" in lines[0]


def test_the_disk_has_no_esp(built: tuple[Path, str]) -> None:
    out = subprocess.run(["sfdisk", "--json", str(built[0] / "autoimg.raw")], capture_output=True, text=True,
                         check=True).stdout
    types = [str(p["type"]).lower() for p in json.loads(out)["partitiontable"]["partitions"]]
    assert types and ESP not in types


def test_no_boot_artifacts(built: tuple[Path, str]) -> None:
    names = sorted(p.name for p in built[0].iterdir())
    assert "autoimg.raw" in names
    assert not [n for n in names if n.endswith((".efi", ".vmlinuz", ".initrd", ".cmdline"))], names
