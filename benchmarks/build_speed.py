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
  sizes       cold and warm directory builds for three package-set sizes (small, medium, large), each
              next to mmdebstrap and to the floor the script measures itself: downloading the same
              .debs (index plus 8 parallel fetches) and extracting them all in parallel (one
              dpkg-deb | tar pipeline per core); warm floor = revalidating the index plus that
              extraction. --rounds interleaved rounds (fresh caches each), medians printed with the
              1-minute load average seen during the runs. --baseline DIR also times another mkosi
              source tree (e.g. an export of main) in the same rounds, for --baseline-sizes.
  incremental a two-phase build with mkosi.build: warm rebuild after touching one source file,
              and a rebuild with nothing changed (both with -i and a filled cache)
  bootable    gpt_ext4 cold and warm, non-bootable and Bootable=yes (same packages otherwise), in
              --rounds interleaved rounds: medians with the load, bootable/non-bootable ratios, and
              the bootable build's main steps
  parallel    two independent sub-images (mkosi.images/a.conf, b.conf: directory, systemd,udev) and a
              main image, warm: one `mkosi build` (a and b at the same time, main after them) versus
              a, b and main built one after the other as three projects; the time the two sub-images
              take together is read from the build's output (when the first [main] line appears)

--drop-caches syncs and drops the page cache before every measured run, of every tool alike.

Run as root. Prints one line per measurement and the ratios the project's targets refer to.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
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


def settle() -> None:
    """With --drop-caches: write out and drop the page cache before a measured run, so that no run
    starts with what the previous one left in memory (on this kind of virtual machine, a run that has to
    allocate fresh memory for its page cache takes up to a quarter longer than one that reuses freed
    memory: the figures then depend on what ran before)."""
    if OPTIONS.get("drop_caches"):
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")


def run_timed(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Run a build, return its wall-clock time; on failure show the end of its output."""
    settle()
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace")
    elapsed = time.monotonic() - start
    LAST_LOG[:] = proc.stdout.splitlines()
    if proc.returncode != 0:
        tail = "\n".join(LAST_LOG[-40:])
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}) after {elapsed:.1f} s:\n{tail}")
    return elapsed


def mkosi_env(repo: Path = REPO) -> dict[str, str]:
    """mkosi from `repo`, with its modules byte-compiled once and reused as an installed package's are:
    an environment with PYTHONDONTWRITEBYTECODE would have Python compile every module again on each run
    (about 0.3 s here), which no installed mkosi pays."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(repo)}


def mkosi(directory: Path, *argv: str, repo: Path = REPO) -> float:
    env = mkosi_env(repo)
    # Run from the project: `python -m` puts the working directory first on the module path, so run from a
    # source tree, every `repo` would be that tree's mkosi.
    return run_timed([sys.executable, "-m", "mkosi", "-C", str(directory), *argv], cwd=directory, env=env)


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


def rounds() -> int:
    return int(str(OPTIONS["rounds"]))


def median_line(key: str, values: list[tuple[float, float]]) -> str:
    secs = statistics.median(s for s, _ in values)
    lo = statistics.median(lo for _, lo in values)
    return f"  {key:<34} {secs:6.1f} s  [load {lo:.1f}]  ({', '.join(f'{s:.1f}' for s, _ in values)})"


def case_bootable(base: Path) -> None:
    """Non-bootable and bootable gpt_ext4, cold and warm, interleaved; each cold build from an empty cache."""
    results = Results()
    projects = {"gpt_ext4": project(base, "gpt-plain", "gpt_ext4", cache=True),
                "bootable gpt_ext4": project(base, "gpt-boot", "gpt_ext4", cache=True)}
    with open(projects["bootable gpt_ext4"] / "mkosi.default", "a") as f:
        f.write("Bootable=yes\n")
    for r in range(rounds()):
        print(f"round {r + 1} (load {load():.1f})", flush=True)
        for label, d in projects.items():
            reset_cache(d)
            before = load()
            results.add(f"{label} cold", mkosi(d, "-f", "build"), before)
            if r == 0 and label.startswith("bootable"):
                print_steps()
            before = load()
            results.add(f"{label} warm", mkosi(d, "-f", "build"), before)
    print(f"\ngpt_ext4, Packages=systemd,udev, non-bootable and Bootable=yes (medians of {rounds()} rounds)")
    for key, values in results.items():
        print(median_line(key, values))
    med = {k: statistics.median(s for s, _ in v) for k, v in results.items()}
    print(f"  bootable/non-bootable cold = {med['bootable gpt_ext4 cold'] / med['gpt_ext4 cold']:.2f} (target <= 4)   "
          f"warm = {med['bootable gpt_ext4 warm'] / med['gpt_ext4 warm']:.2f}")


PARALLEL_SUB = """\
[Output]
Format=directory

[Content]
Packages=systemd,udev
"""


def parallel_projects(base: Path) -> tuple[Path, list[Path]]:
    """One project with sub-images a and b (and a main image), and the same three images as three
    projects of their own; all share one package cache."""
    cache = base / "parallel-cache"
    cache.mkdir()
    main_conf = DEFAULT.format(fmt="directory", mirror=MIRROR) + f"\n[Build]\nPackageCacheDirectory={cache}\n"
    together = base / "together"
    (together / "mkosi.images").mkdir(parents=True)
    (together / "mkosi.conf").write_text(main_conf)
    for name in ("a", "b"):
        (together / "mkosi.images" / f"{name}.conf").write_text(PARALLEL_SUB)
    apart = []
    for name in ("a", "b", "main"):
        d = base / f"apart-{name}"
        d.mkdir()
        (d / "mkosi.conf").write_text(main_conf)
        apart.append(d)
    return together, apart


def mkosi_marked(directory: Path, marker: str, *argv: str) -> tuple[float, float]:
    """Run mkosi, returning its wall-clock time and when the first line starting with `marker` came."""
    env = mkosi_env()
    settle()
    start = time.monotonic()
    seen = None
    lines = []
    with subprocess.Popen([sys.executable, "-m", "mkosi", "-C", str(directory), *argv], cwd=directory, env=env,
                          text=True, errors="replace", stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if seen is None and line.startswith(marker):
                seen = time.monotonic() - start
    elapsed = time.monotonic() - start
    LAST_LOG[:] = lines
    if proc.returncode != 0:
        sys.exit(f"mkosi -C {directory} {' '.join(argv)} failed ({proc.returncode}):\n" + "\n".join(lines[-40:]))
    if seen is None:
        sys.exit(f"no line starting with {marker!r} in the output of mkosi -C {directory}")
    return elapsed, seen


def case_parallel(base: Path) -> None:
    """Two independent images at once versus one after the other (warm: the package cache is filled)."""
    together, apart = parallel_projects(base)
    mkosi(apart[0], "build")  # fills the shared package cache
    results = Results()
    for r in range(rounds()):
        print(f"round {r + 1} (load {load():.1f})", flush=True)
        before = load()
        total, two = mkosi_marked(together, "[main] ", "-f", "build")
        results.add("a+b at once", two, before)
        results.add("a+b at once, then main", total, before)
        seq = []
        before = load()
        for d in apart:
            seq.append(mkosi(d, "-f", "build"))
        results.add("a then b", seq[0] + seq[1], before)
        results.add("a then b then main", sum(seq), before)
    print(f"\ntwo directory images (systemd,udev), warm, medians of {rounds()} rounds")
    for key, values in results.items():
        print(median_line(key, values))
    med = {k: statistics.median(s for s, _ in v) for k, v in results.items()}
    print(f"  at once / one after the other: two images = {med['a+b at once'] / med['a then b']:.2f} (target <= 0.7)"
          f"   whole build with main = {med['a+b at once, then main'] / med['a then b then main']:.2f}")


SMALL = "systemd,udev"
MEDIUM = SMALL + ",dbus,kmod,iproute2,iputils-ping,procps,less,vim-tiny,openssh-server,sudo"
LARGE = MEDIUM + ",python3,curl,man-db,rsync"
SIZES = {"small": SMALL, "medium": MEDIUM, "large": LARGE}
OPTIONS: dict[str, object] = {"rounds": 3, "sizes": list(SIZES), "baseline": None, "baseline_sizes": ["small"],
                              "drop_caches": False}


def load() -> float:
    return os.getloadavg()[0]


def list_mirror(list_file: str) -> str:
    """The mirror URL an apt list file name stands for (deb.debian.org_debian_dists_... -> http://...)."""
    return "http://" + list_file.partition("_dists_")[0].replace("_", "/")


def packages_index(lists: Path) -> dict[tuple[str, str, str], str]:
    """(package, version, architecture) -> download URL, from the lists of a build's package cache."""
    urls = {}
    for f in lists.glob("*_Packages"):
        mirror = list_mirror(f.name)
        for stanza in f.read_text(errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^(Package|Version|Architecture|Filename): (\S+)", stanza, re.M))
            if len(fields) == 4:
                urls[(fields["Package"], fields["Version"], fields["Architecture"])] = f"{mirror}/{fields['Filename']}"
    return urls


def cached_debs(cache: Path) -> tuple[Path, list[Path]]:
    """The lists directory and the .debs of a mkosi package cache filled by one cold build."""
    apt_dir = next(cache.glob("*/apt"))
    return apt_dir / "lists", sorted((apt_dir / "archives").glob("*.deb"))


def deb_urls(cache: Path) -> list[str]:
    lists, debs = cached_debs(cache)
    index = packages_index(lists)
    urls = []
    for deb in debs:
        name, version, arch = deb.stem.split("_")
        urls.append(index[(name, version.replace("%3a", ":"), arch)])
    return urls


def index_urls(lists: Path) -> list[str]:
    """What `apt-get update` fetches for these lists: each suite's InRelease and its Packages.xz."""
    urls = []
    for f in lists.glob("*_InRelease"):
        base = list_mirror(f.name) + "/dists/" + f.name.partition("_dists_")[2].removesuffix("_InRelease")
        urls.append(f"{base}/InRelease")
        urls += [f"{list_mirror(p.name)}/dists/{p.name.partition('_dists_')[2].replace('_', '/')}.xz"
                 for p in lists.glob(f.name.removesuffix("InRelease") + "*_Packages")]
    return urls


def curl_parallel(urls: list[str], dest: Path, extra: tuple[str, ...] = ()) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    # Named after the whole URL: every suite has its own InRelease and Packages.xz.
    config = "".join(f'url = "{u}"\noutput = "{dest / u.partition("://")[2].replace("/", "_")}"\n' for u in urls)
    subprocess.run(["curl", "--silent", "--show-error", "--no-progress-meter", "--fail", "--parallel",
                    "--parallel-max", "8", *extra, "--config", "-"], input=config, text=True, check=True)


def extract_parallel(debs: list[Path], root: Path) -> None:
    """Every package's file system tarball extracted to root, one dpkg-deb | tar pipeline per core."""
    workers = os.cpu_count() or 1
    buckets: list[list[Path]] = [[] for _ in range(workers)]
    sizes = [0] * workers
    for deb in sorted(debs, key=lambda p: p.stat().st_size, reverse=True):
        i = sizes.index(min(sizes))
        buckets[i].append(deb)
        sizes[i] += deb.stat().st_size
    root.mkdir(parents=True)
    script = 'for d; do dpkg-deb --fsys-tarfile "$d"; done | tar -x --ignore-zeros -C "$0" -f -'
    def one(bucket: list[Path]) -> None:
        subprocess.run(["sh", "-c", script, str(root), *map(str, bucket)], check=True)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(one, b) for b in buckets if b]:
            fut.result()


def floor_cold(cache: Path, work: Path) -> float:
    """Fetch the index and the same .debs as the cold build did, then extract them all (in parallel)."""
    lists, _ = cached_debs(cache)
    urls = deb_urls(cache)
    settle()
    start = time.monotonic()
    curl_parallel(index_urls(lists), work / "index")
    subprocess.run(["xz", "-d", "-T0", *map(str, (work / "index").glob("*.xz"))], check=True)
    curl_parallel(urls, work / "debs")
    extract_parallel(sorted((work / "debs").glob("*.deb")), work / "root")
    return time.monotonic() - start


def floor_warm(cache: Path, work: Path) -> float:
    """Revalidate the index (conditional requests, as apt does) and extract the downloaded .debs again."""
    lists, _ = cached_debs(cache)
    shutil.rmtree(work / "root", ignore_errors=True)
    settle()
    start = time.monotonic()
    inrelease = [u for u in index_urls(lists) if u.endswith("/InRelease")]
    stamp = str(next(lists.glob("*_InRelease")))
    curl_parallel(inrelease, work / "revalidated", ("-z", stamp))
    extract_parallel(sorted((work / "debs").glob("*.deb")), work / "root")
    return time.monotonic() - start


def sized_project(base: Path, name: str, packages: str) -> Path:
    d = project(base, name, "directory", cache=True)
    text = (d / "mkosi.default").read_text().replace("Packages=systemd,udev", f"Packages={packages}")
    (d / "mkosi.default").write_text(text)
    return d


def reset_cache(d: Path) -> None:
    shutil.rmtree(d / "mkosi.cache")
    (d / "mkosi.cache").mkdir()


class Results(dict[str, list[tuple[float, float]]]):
    """Measurement name -> (seconds, 1-minute load before the run) per round; printed as they come."""

    def add(self, key: str, seconds: float, load_before: float) -> None:
        self.setdefault(key, []).append((seconds, load_before))
        if key != "packages":
            print(f"    {key:<16} {seconds:6.1f} s  [load {load_before:.1f}]", flush=True)


def one_round(base: Path, size: str, results: Results, index: int = 0) -> None:
    """One interleaved round for one package set: every tool once, each cold from an empty cache."""
    packages = SIZES[size]
    trees = {"mkosi": REPO}
    if OPTIONS["baseline"] and size in list(OPTIONS["baseline_sizes"]):  # type: ignore[call-overload]
        trees["baseline"] = Path(str(OPTIONS["baseline"]))
    # With a baseline, every other round times it first: the run after another tool's (whose tree is
    # being written back and deleted) is the slower one, and neither tree may always get that turn.
    order = list(trees.items())
    if index % 2:
        order.reverse()
    for label, tree in order:
        d = base / f"{label}-{size}"
        if not d.exists():
            sized_project(base, f"{label}-{size}", packages)
        reset_cache(d)
        before = load()
        results.add(f"{label} cold", mkosi(d, "-f", "build", repo=tree), before)
        first = len(results[f"{label} cold"]) == 1
        if label == "mkosi" and first:
            print_steps()
        before = load()
        results.add(f"{label} warm", mkosi(d, "-f", "build", repo=tree), before)
        if label == "mkosi" and first:
            print_steps()
    cache = base / f"mkosi-{size}" / "mkosi.cache"
    work = base / f"floor-{size}"
    shutil.rmtree(work, ignore_errors=True)
    before = load()
    results.add("floor cold", floor_cold(cache, work), before)
    before = load()
    results.add("floor warm", floor_warm(cache, work), before)
    shutil.rmtree(work, ignore_errors=True)
    target = base / f"mmdebstrap-{size}"
    shutil.rmtree(target, ignore_errors=True)
    before = load()
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={packages}", "bookworm", str(target), MIRROR]
    results.add("mmdebstrap", timed(argv), before)
    shutil.rmtree(target, ignore_errors=True)
    results.add("packages", float(len(cached_debs(cache)[1])), 0.0)


def median(results: dict[str, list[tuple[float, float]]], key: str) -> tuple[float, float]:
    return (statistics.median(s for s, _ in results[key]), statistics.median(lo for _, lo in results[key]))


def print_size(size: str, results: dict[str, list[tuple[float, float]]]) -> None:
    n = int(median(results, "packages")[0])
    runs = len(results["mkosi cold"])
    print(f"\n{size}: {SIZES[size]} ({n} packages in our image, medians of {runs} rounds, [1-min load])")
    for key in results:
        if key != "packages":
            secs, lo = median(results, key)
            print(f"  {key:<16} {secs:6.1f} s  [{lo:.1f}]")
    cold, warm = median(results, "mkosi cold")[0], median(results, "mkosi warm")[0]
    fcold, fwarm, mm = (median(results, k)[0] for k in ("floor cold", "floor warm", "mmdebstrap"))
    print(f"  cold/floor = {cold / fcold:.2f} (target <= 2)   warm/warm floor = {warm / fwarm:.2f} (target <= 2)   "
          f"cold/mmdebstrap = {cold / mm:.2f} (target <= 0.5)")
    if "baseline cold" in results:
        bcold, bwarm = median(results, "baseline cold")[0], median(results, "baseline warm")[0]
        print(f"  mkosi/baseline: cold = {cold / bcold:.2f}   warm = {warm / bwarm:.2f}")


def case_sizes(base: Path) -> None:
    results: dict[str, Results] = {}
    for r in range(int(str(OPTIONS["rounds"]))):
        for size in list(OPTIONS["sizes"]):  # type: ignore[call-overload]
            print(f"round {r + 1}, {size} (load {load():.1f})", flush=True)
            one_round(base, size, results.setdefault(size, Results()), r)
    for size, res in results.items():
        print_size(size, res)


CASES = {"directory": case_directory, "gpt_ext4": case_gpt, "incremental": case_incremental, "sizes": case_sizes,
         "bootable": case_bootable, "parallel": case_parallel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--workdir", default="/var/tmp", help="where to build (default /var/tmp)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds for 'sizes', 'bootable' and 'parallel' (default 3)")
    parser.add_argument("--sizes", default=",".join(SIZES), help="package sets for 'sizes': " + ", ".join(SIZES))
    parser.add_argument("--baseline", type=Path, help="another mkosi source tree to time in the 'sizes' rounds")
    parser.add_argument("--baseline-sizes", default="small", help="sets to time --baseline with (default small)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="sync and drop the page cache before every measured run (of every tool)")
    opts = parser.parse_args()
    OPTIONS.update(rounds=opts.rounds, sizes=opts.sizes.split(","), baseline=opts.baseline,
                   baseline_sizes=opts.baseline_sizes.split(","), drop_caches=opts.drop_caches)
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
