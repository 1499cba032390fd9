#!/usr/bin/env python3
"""Time the default tools tree (ToolsTree=default: Debian trixie with the default profiles).

  cold    the tree built with an empty package cache (everything downloaded): `mkosi sandbox -- true`
  warm    the tree built again with the packages cached (the tree itself removed with `mkosi -f clean`)
  reuse   the tree cached: what finding and checking it costs, in the process (loading the tools image's
          configuration, computing its key, reading the key file) and as the difference between
          `mkosi sandbox -- true` with ToolsTree=default and with ToolsTree=no (median of --rounds)

The project's target: reusing a cached tools tree costs under 2 s. Run as root. --cache DIR uses (and
fills) a package cache of your own for the warm and reuse cases; the cold case always starts empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = """\
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
TARGET_REUSE = 2.0


def mkosi(project: Path, *argv: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mkosi", "-C", str(project), *argv], capture_output=True,
                          text=True, env=env)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"mkosi {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc


def project_in(parent: Path, cache: Path) -> Path:
    project = parent / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "mkosi.conf").write_text(CONF.format(cache=cache))
    return project


def tree_of(project: Path) -> Path:
    _, proc = mkosi(project, "--json", "summary")
    return Path(json.loads(proc.stdout)["Images"][-1]["ToolsTreePath"])


def size_of(path: Path) -> str:
    out = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout
    return out.split()[0] if out else "?"


def in_process_reuse(project: Path, rounds: int) -> float:
    """The cost of the hook itself (with_tools_tree on a loaded configuration), in a fresh interpreter."""
    code = f"""
import os, statistics, time
os.chdir({str(project)!r})
from mkosi.config import load_args
from mkosi.tools_tree import with_tools_tree
times = []
for _ in range({rounds}):
    start = time.monotonic()
    args, configs = load_args(["sandbox"])
    loaded = time.monotonic()
    with_tools_tree(configs)
    times.append(time.monotonic() - loaded)
print(statistics.median(times))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="package cache for the warm and reuse cases")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="do not download everything once more")
    opts = parser.parse_args()
    if os.getuid() != 0:
        sys.exit("run this as root (building a tools tree needs it)")

    with tempfile.TemporaryDirectory(prefix="mkosi-tools-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        if not opts.skip_cold:
            cold_cache = work / "cold-cache"
            cold_cache.mkdir()
            cold = project_in(work / "cold", cold_cache)
            seconds, _ = mkosi(cold, "sandbox", "--", "true")
            tree = tree_of(cold)
            print(f"cold   {seconds:7.1f} s  tools tree built with an empty package cache (tree {size_of(tree)}, "
                  f"package cache afterwards {size_of(cold_cache)})")
            mkosi(cold, "-f", "clean")
            if opts.cache is not None:
                shutil.rmtree(cold_cache)

        cache = opts.cache or work / "cold-cache"
        cache.mkdir(parents=True, exist_ok=True)
        project = project_in(work / "warm", cache)
        mkosi(project, "sandbox", "--", "true")          # fills the package cache if needed
        mkosi(project, "-f", "clean")                    # removes the tree, keeps the packages
        seconds, proc = mkosi(project, "sandbox", "--", "true")
        assert "Building the default tools tree" in proc.stderr
        print(f"warm   {seconds:7.1f} s  tools tree built with the packages cached")

        hook = in_process_reuse(project, opts.rounds)
        with_tree, without = [], []
        for _ in range(opts.rounds):
            seconds, proc = mkosi(project, "sandbox", "--", "true")
            assert "Reusing the cached tools tree" in proc.stderr
            with_tree.append(seconds)
            without.append(mkosi(project, "--tools-tree=no", "sandbox", "--", "true")[0])
        reuse = statistics.median(with_tree) - statistics.median(without)
        print(f"reuse  {hook:7.3f} s  finding and checking the cached tree (in the process, median of {opts.rounds})")
        print(f"reuse  {statistics.median(with_tree):7.3f} s  `mkosi sandbox -- true` with the cached tree "
              f"(ToolsTree=no: {statistics.median(without):.3f} s; difference {reuse:.3f} s)")
        verdict = "met" if max(reuse, hook) < TARGET_REUSE else "MISSED"
        print(f"target reusing a cached tools tree costs under {TARGET_REUSE:.0f} s: {verdict}")
        mkosi(project, "-f", "clean")


if __name__ == "__main__":
    main()
