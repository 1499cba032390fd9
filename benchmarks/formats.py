#!/usr/bin/env python3
"""Build each modern output format from Debian bookworm, cold and warm, and have a real tool accept it.

For each format the script prints the command, the size of the output, the cold build time (an empty
package cache of its own, nothing downloaded before), the warm build time (`-f build` again with the
packages cached), and the tool that checked the result:

  disk      Format=disk (systemd-repart, default layout)    systemd-dissect --json=short (tools tree)
  uki       Format=uki (the whole image as initrd)           ukify inspect (tools tree)
  esp       Format=esp (systemd-boot and that UKI)           sfdisk --json, mdir
  addon     Format=addon (a command line)                    objdump -h
  oci       Format=oci                                       skopeo inspect oci:...
  sysext    Format=sysext on a directory base tree           systemd-dissect --json=short (tools tree)
  confext   Format=confext                                   systemd-dissect --json=short (tools tree)
  portable  Format=portable                                  systemd-dissect --json=short (tools tree)

All builds share one default tools tree (ToolsTree=default, Debian trixie), built first and not
counted. Run as root; --formats picks some; --workdir holds the scratch trees.
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

BASE = """\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
{output}

[Content]
{content}
PackageCacheDirectory={cache}

[Build]
ToolsTree={tools}
"""

KERNEL = "Packages=linux-image-amd64\n         systemd\n         udev\n         systemd-boot"

FORMATS: dict[str, tuple[str, str]] = {
    "disk": ("Format=disk\nImageId=disk", "Packages=systemd"),
    "uki": ("Format=uki\nImageId=uki", KERNEL),
    "esp": ("Format=esp\nImageId=esp", KERNEL),
    "addon": ("Format=addon\nImageId=addon", "BasePackages=no\nKernelCommandLine=quiet"),
    "oci": ("Format=oci\nImageId=oci", "Packages=bash"),
    "sysext": ("Format=sysext\nImageId=sysext\nOverlay=yes", "BaseTrees={base}\nPackages=hello"),
    "confext": ("Format=confext\nImageId=confext\nOverlay=yes", "BaseTrees={base}"),
    "portable": ("Format=portable\nImageId=portable", "Packages=systemd"),
}
OUTPUTS = {"disk": "disk.raw", "uki": "uki.efi", "esp": "esp.raw", "addon": "addon.efi", "oci": "oci",
           "sysext": "sysext.raw", "confext": "confext.raw", "portable": "portable.raw"}


def mkosi(project: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mkosi", "-C", str(project), *argv], capture_output=True,
                          text=True, env=env)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"mkosi {' '.join(argv)} in {project} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size


def accept(fmt: str, project: Path, output: Path, tools: Path) -> str:
    """Run the tool a user of this format would use on it; return what it said, briefly."""
    def in_tools(*argv: str, env: dict[str, str] | None = None) -> str:
        return mkosi(project, f"--tools-tree={tools}", "sandbox", "--", *argv, env=env)[1]

    if fmt in ("disk", "sysext", "confext", "portable"):
        # No device-mapper here: dissect without setting up verity.
        no_verity = {"SYSTEMD_DISSECT_VERITY_SIDECAR": "0", "SYSTEMD_DISSECT_VERITY_SIGNATURE": "0",
                     "SYSTEMD_DISSECT_VERITY_EMBEDDED": "0"}
        out = in_tools("systemd-dissect", "--json=short", str(output), env=no_verity)
        return f"systemd-dissect: {len(out)} bytes of JSON"
    if fmt == "uki":
        out = in_tools("ukify", "inspect", str(output))
        return "ukify inspect: sections " + ",".join(line.split(":")[0] for line in out.splitlines()
                                                     if line.startswith("."))
    if fmt == "esp":
        out = subprocess.run(["sfdisk", "--json", str(output)], capture_output=True, text=True, check=True).stdout
        return f"sfdisk: {out.lower().count('c12a7328-f81f-11d2-ba4b-00a0c93ec93b')} ESP partition(s)"
    if fmt == "addon":
        out = subprocess.run(["objdump", "-h", str(output)], capture_output=True, text=True, check=True).stdout
        return "objdump -h: .cmdline" if ".cmdline" in out else "objdump -h: no .cmdline!"
    if fmt == "oci":
        proc = subprocess.run(["skopeo", "inspect", f"oci:{output}"], capture_output=True, text=True)
        return "skopeo inspect: ok" if proc.returncode == 0 else f"skopeo inspect failed: {proc.stderr[-200:]}"
    raise AssertionError(fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated formats")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--tools-cache", type=Path, default=Path(os.environ.get("MKOSI_TEST_CACHE",
                                                                                "/var/cache/mkosi-tests")),
                        help="package cache in which the default tools tree is (or gets) cached")
    opts = parser.parse_args()
    if os.getuid() != 0:
        sys.exit("formats.py builds images: run it as root")
    work = Path(tempfile.mkdtemp(prefix="mkosi-formats-", dir=opts.workdir))
    try:
        # The tools tree, once, outside the figures.
        setup = work / "setup"
        setup.mkdir()
        (setup / "mkosi.conf").write_text(BASE.format(output="Format=directory", content="", cache=opts.tools_cache,
                                                      tools="default"))
        mkosi(setup, "sandbox", "--", "true")
        tools = Path(json.loads(mkosi(setup, "--json", "summary")[1])["Images"][-1]["ToolsTreePath"])
        print(f"tools tree: {tools}", flush=True)
        base = work / "base"
        base.mkdir()
        (base / "mkosi.conf").write_text(BASE.format(output="Format=directory\nOutput=tree",
                                                     content="Packages=systemd", cache=work / "base-cache",
                                                     tools=tools))
        mkosi(base, "build")
        print(f"{'format':<9} {'size':>12} {'cold':>8} {'warm':>8}  accepted by", flush=True)
        for fmt in opts.formats.split(","):
            output, content = FORMATS[fmt]
            d = work / fmt
            d.mkdir()
            cache = work / f"cache-{fmt}"
            cache.mkdir()
            (d / "mkosi.conf").write_text(BASE.format(output=output, content=content.format(base=base / "tree"),
                                                      cache=cache, tools=tools))
            cold, _ = mkosi(d, "build")
            warm, _ = mkosi(d, "-f", "build")
            out = d / OUTPUTS[fmt]
            verdict = accept(fmt, d, out, tools)
            print(f"{fmt:<9} {size_of(out):>12} {cold:>7.1f}s {warm:>7.1f}s  {verdict}", flush=True)
            print(f"          mkosi -C {fmt}/ build   ({' '.join(output.split())})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
