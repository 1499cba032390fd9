#!/usr/bin/env python3
"""Time `mkosi summary` of a large modern configuration tree: ten sub-images in mkosi.images/, two
profiles, drop-ins with [Match] sections, includes and specifiers, as a whole process (start-up
included), with the median of several runs.

    python3 benchmarks/config_load.py [--runs N] [--images N]

The target: under 1 s for ten images on the project's 2-core machine. Runs without root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_tree(root: Path, images: int) -> None:
    write(root / "mkosi.conf", "[Distribution]\nDistribution=debian\nRelease=trixie\n\n[Config]\nProfiles=base\n\n"
          "[Output]\nImageVersion=1.%a\nOutputDirectory=out\n\n[Content]\nPackages=systemd\n         udev\n"
          "[Include]\nInclude=shared.conf\n")
    write(root / "shared.conf", "[Match]\nImage=main\n\n[Content]\nPackages=openssh-server\n")
    for i in range(8):
        write(root / f"mkosi.conf.d/{i:02}.conf",
              f"[Match]\nDistribution=|debian\nDistribution=|ubuntu\nRelease=!bookworm\n\n"
              f"[Content]\nPackages=pkg{i}\nEnvironment=N{i}=%d-%r\n")
    write(root / "mkosi.conf.d/50-arch/mkosi.conf", "[Match]\nDistribution=arch\n\n[Content]\nPackages=pacman\n")
    write(root / "mkosi.profiles/base.conf", "[Content]\nPackages=less\n")
    write(root / "mkosi.profiles/dev/mkosi.conf", "[Content]\nPackages=gdb\n")
    for i in range(images):
        deps = f"[Config]\nDependencies=img{i - 1}\n\n" if i else ""
        write(root / f"mkosi.images/img{i}/mkosi.conf",
              f"{deps}[Output]\nFormat=directory\nImageId=img{i}\n\n[Content]\nPackages=busybox\n")
        write(root / f"mkosi.images/img{i}/mkosi.conf.d/10.conf",
              "[Match]\nProfiles=dev\n\n[Content]\nPackages=strace\n")


def time_summary(root: Path, runs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mkosi", "-C", str(root), "--profile=dev", "summary", "--json"]
    times = []
    for _ in range(runs):
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.monotonic() - start)
        if proc.returncode != 0:
            raise SystemExit(f"mkosi summary failed:\n{proc.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--images", type=int, default=10)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mkosi-bench-config-") as tmp:
        root = Path(tmp)
        make_tree(root, opts.images)
        times = time_summary(root, opts.runs)
    load = os.getloadavg()[0]
    print(f"summary of {opts.images} images + main, 2 profiles, {opts.runs} runs: "
          f"min {min(times):.3f} s, median {statistics.median(times):.3f} s, max {max(times):.3f} s "
          f"(load {load:.2f}; target: median < 1 s)")


if __name__ == "__main__":
    main()
