#!/usr/bin/env python3
"""Where a build's time goes: run a command and sample its process tree.

Every 20 ms the script reads /proc, finds the command's descendants and notes which programs are the
leaves of the tree (the processes doing the work at that moment: a maintainer script, ssh-keygen, dpkg
unpacking, mkosi's own Python between them). At the end it prints, for each set of leaves, the wall time
it accounts for (its share of the samples times the total), largest first. The figures are estimates at
the sampling resolution; they add up to the command's wall time.

    benchmarks/where_time_goes.py [--top N] -- python3 -m mkosi -C DIR -f build

Run as root for builds (mkosi needs it); the command's output is discarded.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

INTERVAL = 0.02


def snapshot() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process that can be read."""
    procs: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue   # gone in between
        procs[int(name)] = (int(fields[1]), cmdline[:100])
    return procs


def leaves(root: int, procs: dict[int, tuple[int, str]]) -> str:
    """The command lines of the leaves of root's process tree, as one key."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _) in procs.items():
        children[ppid].append(pid)
    stack, found = [root], set()
    while stack:
        pid = stack.pop()
        if children.get(pid):
            stack.extend(children[pid])
        elif pid in procs and procs[pid][1]:
            found.add(procs[pid][1])
    return " | ".join(sorted(found)) or "(between processes)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=30, help="how many lines to print (default 30)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    counts: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        counts[leaves(proc.pid, snapshot())] += 1
        time.sleep(INTERVAL)
    total = time.monotonic() - start
    samples = sum(counts.values()) or 1
    print(f"{' '.join(command)}: exit status {proc.returncode}, {total:.2f} s wall, {samples} samples")
    for key, n in counts.most_common(args.top):
        print(f"{n / samples * total:7.2f} s  {key[:160]}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
