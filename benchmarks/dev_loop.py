#!/usr/bin/env python3
"""Time the developer's inner loop: a bootable two-phase Debian image with a small C program.

The project is a bootable gpt_ext4 image of Debian bookworm whose build script (mkosi.build) compiles
hello.c with make in $BUILDDIR (mkosi.builddir/, kept between builds) and installs it into $DESTDIR.
The script times, on this machine:

  first     `mkosi -i build`: everything, the cached images made
  -i        one line of hello.c changed, `mkosi -i -f build` (a full image from the cached ones)
  -R        another one-line change, `mkosi -R` (the build script again in the cached development
            image; no image is written)
  -i again  `mkosi -i -f build` to put that change into the image, then once more with nothing
            changed (the up-to-date check)

and says whether the incremental rebuild made the initrd again. Then (unless --no-vm) it boots the
image: the time from `mkosi vm` to the first `mkosi ssh` command that works (TCG when KVM does not),
and two machines at once (`--machine=one`, `--machine=two`, each with its own forwarded port) each
reached with `mkosi ssh`. Run as root; the package cache is
$MKOSI_TEST_CACHE (default /var/cache/mkosi-tests) and the scratch directory --workdir (default
/var/tmp). It needs the Debian archive, unless the package cache holds every package already.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIG = """\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=gpt_ext4
Bootable=yes
ImageId=devloop

[Content]
Packages=systemd,udev
BuildPackages=gcc,libc6-dev,make
Cache={cache}

[Host]
Ssh=yes
QemuHeadless=yes
"""

BUILD_SCRIPT = """\
#!/bin/sh
set -e
make -C "$SRCDIR" -f "$SRCDIR/Makefile" O="$BUILDDIR" DESTDIR="$DESTDIR" install
"""

MAKEFILE = """\
O ?= .
$(O)/hello: hello.c
\tcc -O2 -o $@ $<
install: $(O)/hello
\tinstall -D -m 0755 $(O)/hello $(DESTDIR)/usr/bin/hello
.PHONY: install
"""

HELLO = '#include <stdio.h>\nint main(void) {{ puts("{greeting}"); return 0; }}\n'


def make_project(base: Path, cache: Path) -> Path:
    d = base / "devloop"
    d.mkdir()
    (d / "mkosi.default").write_text(CONFIG.format(cache=cache))
    (d / "mkosi.build").write_text(BUILD_SCRIPT)
    (d / "mkosi.build").chmod(0o755)
    (d / "Makefile").write_text(MAKEFILE)
    (d / "hello.c").write_text(HELLO.format(greeting="hello, version 1"))
    for sub in ("mkosi.output", "mkosi.builddir"):
        (d / sub).mkdir()
    return d


def mkosi(d: Path, *argv: str) -> tuple[float, str]:
    """Run mkosi, return its wall-clock time and its output; on failure show the end of the output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mkosi", "-C", str(d), *argv], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        sys.exit(f"mkosi {' '.join(argv)} failed ({proc.returncode}) after {elapsed:.1f} s:\n{tail}")
    return elapsed, proc.stdout


def initrd_rebuilt(log: str) -> bool:
    """Whether the build made an initrd (dracut ran) rather than reusing a cached one."""
    return bool(re.search(r"Building the initrd .* with dracut", log))


def start_vm(d: Path, machine: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "mkosi", "-C", str(d), f"--machine={machine}", "--ephemeral",
                                 "--console=read-only", "vm"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_vms(d: Path, vms: dict[str, subprocess.Popen[bytes]]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for machine in vms:
        subprocess.run([sys.executable, "-m", "mkosi", "-C", str(d), f"--machine={machine}", "ssh", "systemctl",
                        "--no-block", "poweroff"], env=env, capture_output=True, timeout=120, check=False)
    for vm in vms.values():
        try:
            vm.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(vm.pid, 9)
            vm.wait()


def time_vms(d: Path) -> None:
    """mkosi vm -> working mkosi ssh, one machine and then two at once."""
    vms: dict[str, subprocess.Popen[bytes]] = {}
    try:
        start = time.monotonic()
        vms["one"] = start_vm(d, "one", d / "vm-one.log")
        mkosi(d, "--machine=one", "ssh", "cat /etc/os-release")
        report("mkosi vm -> working mkosi ssh (one VM)", time.monotonic() - start)
        start = time.monotonic()
        vms["two"] = start_vm(d, "two", d / "vm-two.log")
        _, two = mkosi(d, "--machine=two", "ssh", "echo reached-two")
        _, one = mkosi(d, "--machine=one", "ssh", "echo reached-one")
        ok = "reached-two" in two and "reached-one" in one
        report("second VM started -> ssh reaches both", time.monotonic() - start,
               "(both answered)" if ok else "(a machine did not answer!)")
    finally:
        stop_vms(d, vms)


def report(label: str, seconds: float, note: str = "") -> None:
    print(f"{label:<44} {seconds:7.1f} s{'  ' + note if note else ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="scratch location")
    parser.add_argument("--keep", action="store_true", help="keep the project directory afterwards")
    parser.add_argument("--no-vm", action="store_true", help="do not boot the image (the vm -> ssh timing)")
    opts = parser.parse_args()
    if os.getuid() != 0:
        sys.exit("dev_loop.py builds images: run it as root")
    cache = Path(os.environ.get("MKOSI_TEST_CACHE", "/var/cache/mkosi-tests"))
    cache.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="mkosi-devloop-", dir=opts.workdir))
    try:
        d = make_project(base, cache)
        first, _ = mkosi(d, "-i", "build")
        report("first build (-i, caches made)", first)

        (d / "hello.c").write_text(HELLO.format(greeting="hello, version 2"))
        incremental, log = mkosi(d, "-i", "-f", "build")
        report("one-line change, mkosi -i -f build", incremental,
               "(initrd rebuilt)" if initrd_rebuilt(log) else "(initrd reused)")

        (d / "hello.c").write_text(HELLO.format(greeting="hello, version 3"))
        rerun, _ = mkosi(d, "-R")
        built = d / "mkosi.builddir" / "hello"
        report("one-line change, mkosi -R", rerun,
               "(program rebuilt in mkosi.builddir/)" if built.exists() else "(no program in mkosi.builddir/!)")

        after, _ = mkosi(d, "-i", "-f", "build")
        report("the change of -R into the image, -i -f build", after)
        unchanged, _ = mkosi(d, "-i", "-f", "build")
        report("nothing changed, mkosi -i -f build", unchanged)
        print(f"goal: one-line change with -i under 10 s ({incremental:.1f} s); -R {rerun:.1f} s", flush=True)
        if not opts.no_vm:
            time_vms(d)
    finally:
        if opts.keep:
            print(f"project kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
