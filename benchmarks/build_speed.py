#!/usr/bin/env python3
"""Time mkosi builds against the reference tools, on this machine, in one run.

Cases (pick with --cases, default all):
  directory   cold and warm `mkosi -t directory build` of Debian bookworm with Packages=systemd,udev,
              next to `mmdebstrap --variant=minbase --include=systemd,udev bookworm`
  gpt_ext4    cold `mkosi -t gpt_ext4 build` of the same, next to Debian's packaged mkosi 14
              (apt-get install mkosi) building the same mkosi.default with --nspawn-keep-unit
  incremental a two-phase build with mkosi.build: warm rebuild after touching one source file,
              and a rebuild with nothing changed (both with -i and a filled cache)

Run as root. Prints one line per measurement and the ratios the project's targets refer to.
"""

from __future__ import annotations

import argparse
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

[Output]
Format={fmt}

[Content]
Packages=systemd,udev
"""


def mkosi(directory: Path, *argv: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "mkosi", "-C", str(directory), *argv], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - start


def timed(argv: list[str], cwd: Path | None = None) -> float:
    start = time.monotonic()
    subprocess.run(argv, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def project(base: Path, name: str, fmt: str, cache: bool) -> Path:
    d = base / name
    d.mkdir()
    (d / "mkosi.default").write_text(DEFAULT.format(fmt=fmt))
    if cache:
        (d / "mkosi.cache").mkdir()
    return d


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


def case_gpt(base: Path) -> None:
    d = project(base, "gpt", "gpt_ext4", cache=True)
    cold = mkosi(d, "build")
    report("mkosi gpt_ext4, cold", cold)
    packaged = Path("/usr/bin/mkosi")
    if not packaged.exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "mkosi"], check=True, stdout=subprocess.DEVNULL)
    ref_dir = base / "mkosi14"
    ref_dir.mkdir()
    (ref_dir / "mkosi.default").write_text(DEFAULT.format(fmt="gpt_ext4"))
    ref = timed(["/usr/bin/python3", str(packaged), "--nspawn-keep-unit", "build"], cwd=ref_dir)
    report("Debian's mkosi 14, gpt_ext4, cold", ref)
    print(f"speed-up vs mkosi 14  = {ref / cold:.2f}x (target >= 1.5x)")


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
