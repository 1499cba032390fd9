#!/usr/bin/env python3
"""Time mkosi builds against the reference tools, on this machine, in one run.

Cases (pick with --cases, default all):
  directory   cold and warm `mkosi -t directory build` of Debian bookworm with Packages=systemd,udev,
              next to `mmdebstrap --variant=minbase --include=systemd,udev bookworm`
  gpt_ext4    cold `mkosi -t gpt_ext4 build` of the same, next to Debian's packaged mkosi 14
              (apt-get install mkosi) building the same mkosi.default with --nspawn-keep-unit
              (PID 1 is not always systemd here). mkosi 14 runs as `/usr/bin/python3 -m mkosi`
              from dist-packages; its /usr/bin/mkosi wrapper is diverted out of PATH
              (dpkg-divert) so that `mkosi` never means the old one. Both use the same mirror
              and an empty package cache; our build's main steps are printed with their times.
  incremental a two-phase build with mkosi.build: warm rebuild after touching one source file,
              and a rebuild with nothing changed (both with -i and a filled cache)

Run as root. Prints one line per measurement and the ratios the project's targets refer to.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
DEFAULT = """\
[Distribution]
Distribution=debian
Release=bookworm
Mirror={mirror}

[Output]
Format={fmt}

[Content]
Packages=systemd,udev
"""

# Debian's mkosi 14: its Python package in dist-packages, for the system interpreter only.
PACKAGED_PYTHON = "/usr/bin/python3"
PACKAGED_WRAPPER = Path("/usr/bin/mkosi")
DIVERTED_WRAPPER = Path("/usr/lib/mkosi-14/mkosi")

LAST_LOG: list[str] = []


def run_timed(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Run a build, return its wall-clock time; on failure show the end of its output."""
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace")
    elapsed = time.monotonic() - start
    LAST_LOG[:] = proc.stdout.splitlines()
    if proc.returncode != 0:
        tail = "\n".join(LAST_LOG[-40:])
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}) after {elapsed:.1f} s:\n{tail}")
    return elapsed


def mkosi(directory: Path, *argv: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return run_timed([sys.executable, "-m", "mkosi", "-C", str(directory), *argv], env=env)


def timed(argv: list[str], cwd: Path | None = None) -> float:
    return run_timed(argv, cwd=cwd)


def project(base: Path, name: str, fmt: str, cache: bool) -> Path:
    d = base / name
    d.mkdir()
    (d / "mkosi.default").write_text(DEFAULT.format(fmt=fmt, mirror=MIRROR))
    if cache:
        (d / "mkosi.cache").mkdir()
    return d


def print_steps(max_depth: int = 5) -> None:
    """Our build's outer steps with their durations (from the last mkosi run's log)."""
    for line in LAST_LOG:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        if " done in " in line and depth <= max_depth:
            print(f"    {line}")


def report(name: str, seconds: float) -> None:
    print(f"{name:<44} {seconds:7.1f} s", flush=True)


def case_directory(base: Path) -> None:
    d = project(base, "dir", "directory", cache=True)
    cold = mkosi(d, "build")
    report("mkosi directory, cold (empty package cache)", cold)
    warm = mkosi(d, "-f", "build")
    report("mkosi directory, warm (package cache filled)", warm)
    target = base / "mmdebstrap-root"
    ref = timed(["mmdebstrap", "--quiet", "--variant=minbase", "--include=systemd,udev", "bookworm", str(target),
                 MIRROR])
    report("mmdebstrap --variant=minbase, same packages", ref)
    print(f"ratio cold/mmdebstrap = {cold / ref:.2f}   (target <= 1.1)")
    print(f"ratio warm/cold       = {warm / cold:.2f}   (target <= 0.6)")


def packaged_installed() -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "mkosi"], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.endswith(" installed")


def ensure_packaged_mkosi() -> list[str]:
    """Install Debian's mkosi 14 if needed and keep its wrapper out of PATH; returns its command."""
    if not packaged_installed():
        subprocess.run(["apt-get", "install", "-y", "-qq", "mkosi"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if PACKAGED_WRAPPER.exists() and not DIVERTED_WRAPPER.exists():
        DIVERTED_WRAPPER.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-divert", "--quiet", "--local", "--rename", "--divert", str(DIVERTED_WRAPPER),
                        "--add", str(PACKAGED_WRAPPER)], check=True)
    argv = [PACKAGED_PYTHON, "-m", "mkosi"]
    version = subprocess.run([*argv, "--version"], capture_output=True, text=True, cwd="/",
                             env=packaged_env()).stdout.strip()
    if not version.startswith("mkosi 14"):
        sys.exit(f"expected Debian's mkosi 14 from {PACKAGED_PYTHON} -m mkosi, got {version!r}")
    return argv


def packaged_env() -> dict[str, str]:
    # Nothing of ours on its path: the system interpreter finds mkosi 14 in dist-packages.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def case_gpt(base: Path) -> None:
    packaged = ensure_packaged_mkosi()
    d = project(base, "gpt", "gpt_ext4", cache=True)
    cold = mkosi(d, "build")
    report("mkosi gpt_ext4, cold", cold)
    print_steps()
    ref_dir = project(base, "mkosi14", "gpt_ext4", cache=True)
    # PID 1 of this machine need not be systemd: nspawn must not register a scope unit.
    ref = run_timed([*packaged, "--nspawn-keep-unit", "build"], cwd=ref_dir, env=packaged_env())
    report("Debian's mkosi 14, gpt_ext4, cold", ref)
    print(f"speed-up vs mkosi 14  = {ref / cold:.2f}x (target >= 1.5x)")
    # mkosi 14 bootstraps debootstrap's minbase (apt, tzdata, e2fsprogs...), so its image holds more
    # packages than ours for the same file: build ours once more with exactly its package list.
    manifest = ref_dir / "image.raw.manifest"
    if manifest.exists():
        names = sorted({p["name"] for p in json.loads(manifest.read_text())["packages"]})
        same = project(base, "gpt-same", "gpt_ext4", cache=True)
        with open(same / "mkosi.default", "a") as f:
            f.write(f"Packages={','.join(names)}\n")
        equal = mkosi(same, "build")
        report(f"mkosi gpt_ext4, cold, mkosi 14's {len(names)} packages", equal)
        print(f"speed-up, same packages = {ref / equal:.2f}x")


BUILD_SCRIPT = """#!/bin/sh
set -e
cd "$SRCDIR"
mkdir -p "$DESTDIR/usr/bin"
gcc -O2 -o "$DESTDIR/usr/bin/hello" hello.c
"""


def case_incremental(base: Path) -> None:
    d = project(base, "incr", "directory", cache=True)
    with open(d / "mkosi.default", "a") as f:
        f.write("BuildPackages=gcc,libc6-dev\n")
    (d / "mkosi.build").write_text(BUILD_SCRIPT)
    (d / "mkosi.build").chmod(0o755)
    (d / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    first = mkosi(d, "-i", "build")
    report("incremental: first build (caches made)", first)
    (d / "hello.c").write_text('#include <stdio.h>\nint main(void) { puts("hello again"); return 0; }\n')
    touched = mkosi(d, "-i", "-f", "build")
    report("incremental: one source file changed", touched)
    unchanged = mkosi(d, "-i", "-f", "build")
    report("incremental: nothing changed", unchanged)
    print(f"targets: one-file change <= 10 s ({touched:.1f}), nothing changed <= 2 s ({unchanged:.1f})")


CASES = {"directory": case_directory, "gpt_ext4": case_gpt, "incremental": case_incremental}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--workdir", default="/var/tmp", help="where to build (default /var/tmp)")
    opts = parser.parse_args()
    if os.getuid() != 0:
        sys.exit("run this benchmark as root")
    base = Path(tempfile.mkdtemp(prefix="mkosi-bench-", dir=opts.workdir))
    try:
        for name in opts.cases.split(","):
            CASES[name](base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
