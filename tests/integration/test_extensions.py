"""Extension images from Debian bookworm, checked with the tools that use them.

A `directory` base image is built once; on it a sysext (BaseTrees= + Overlay=yes, one package and
one file under /usr), a signed confext (BaseTrees= + Overlay=yes, /etc/marker) and a portable
image (BaseTrees= copied, without Overlay=). systemd-dissect from the tools tree (`mkosi sandbox`
with ToolsTree=, the session's `tools_tree`) must accept each: `--json=short` for the partitions and the release files,
`--list` for the files. This host may have no device-mapper, so systemd-dissect lists the files
without setting up verity; `veritysetup verify` checks the hash partitions instead. The slow test boots a bookworm
VM (qemu, TCG when KVM does not work) with the sysext in /var/lib/extensions and checks that
systemd-sysext merged it. Each build's duration and each image's size is printed at the end.

Needs root and MKOSI_INTEGRATION=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="partition types are checked for x86-64"),
]

ROOT = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_VERITY = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
ROOT_VERITY_SIG = "41092b05-9fc8-4523-994f-2def0408b176"
MARKER = "added by the sysext, mkosi-sysext-marker\n"
ETC_MARKER = "added by the confext, mkosi-confext-marker\n"

TIMES: dict[str, float] = {}
SIZES: dict[str, tuple[int, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    for name, seconds in TIMES.items():
        print(f"build {name}: {seconds:.1f}s", file=sys.stderr)
    for name, (size, blocks) in SIZES.items():
        print(f"image {name}: {size} bytes, {blocks} bytes allocated", file=sys.stderr)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def project(d: Path, cache: Path, output: str, content: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
{output}

[Content]
Cache={cache}
{content}
""")
    return d


def build(name: str, d: Path, *argv: str) -> None:
    start = time.monotonic()
    run_mkosi(d, *argv, "-f", "build", timeout=3000)
    TIMES[name] = time.monotonic() - start


def sizes(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def dissect(tools_tree: Path, image: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    """systemd-dissect of the tools tree (mkosi sandbox with ToolsTree=)."""
    proc = run_mkosi(image.parent, f"--tools-tree={tools_tree}", "sandbox", "--", "systemd-dissect", *argv,
                     str(image), env=env)
    return proc.stdout


def dissect_json(tools_tree: Path, image: Path) -> dict[str, Any]:
    data = json.loads(dissect(tools_tree, image, "--json=short"))
    assert isinstance(data, dict)
    return data


# This host may have no device-mapper: systemd-dissect is told to mount the root partition without
# setting up verity from the .roothash beside the image, the signature partition or the hash partition.
NO_VERITY = {"SYSTEMD_DISSECT_VERITY_SIDECAR": "0", "SYSTEMD_DISSECT_VERITY_SIGNATURE": "0",
             "SYSTEMD_DISSECT_VERITY_EMBEDDED": "0"}


def listing(tools_tree: Path, image: Path) -> list[str]:
    """`systemd-dissect --list`: every file and directory of the image."""
    return [line for line in dissect(tools_tree, image, "--list", env=NO_VERITY).splitlines() if line]


def partitions(image: Path) -> list[dict[str, Any]]:
    table = json.loads(sh("sfdisk", "--json", str(image)).stdout)["partitiontable"]
    return list(table["partitions"])


def verify_verity(image: Path, roothash: str, tmp: Path) -> None:
    """veritysetup verify on the root and hash partitions cut out of the image."""
    parts = partitions(image)
    files = []
    for i, p in enumerate(parts[:2]):
        out = tmp / f"part{i}"
        sh("dd", f"if={image}", f"of={out}", "bs=512", f"skip={p['start']}", f"count={p['size']}", "status=none")
        files.append(out)
    sh("veritysetup", "verify", str(files[0]), str(files[1]), roothash)


# ---------------------------------------------------------------- the images


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = project(tmp_path_factory.mktemp("base"), package_cache, "Format=directory\nOutput=base",
                "Packages=systemd")
    build("base (directory)", d)
    return d / "base"


@pytest.fixture(scope="module")
def sysext(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, base: Path) -> Path:
    d = project(tmp_path_factory.mktemp("sysext"), package_cache, "Format=sysext\nOutput=hello.raw\nOverlay=yes",
                f"BaseTrees={base}\nPackages=hello")
    marker = d / "mkosi.extra/usr/share/mkosi-sysext/marker"
    marker.parent.mkdir(parents=True)
    marker.write_text(MARKER)
    build("sysext", d)
    SIZES["sysext"] = sizes(d / "hello.raw")
    return d / "hello.raw"


@pytest.fixture(scope="module")
def confext(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, base: Path) -> Path:
    d = project(tmp_path_factory.mktemp("confext"), package_cache,
                "Format=confext\nOutput=settings.raw\nOverlay=yes\nImageVersion=1.2\nSplitArtifacts=yes",
                f"BaseTrees={base}")
    (d / "mkosi.extra/etc").mkdir(parents=True)
    (d / "mkosi.extra/etc/marker").write_text(ETC_MARKER)
    run_mkosi(d, "genkey")
    build("confext (signed)", d)
    SIZES["confext"] = sizes(d / "settings.raw")
    return d / "settings.raw"


@pytest.fixture(scope="module")
def portable(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, base: Path) -> Path:
    d = project(tmp_path_factory.mktemp("portable"), package_cache, "Format=portable\nOutput=svc.raw",
                f"BaseTrees={base}\nPackages=hello")
    script = d / "mkosi.finalize"
    script.write_text('#!/bin/sh\necho PORTABLE_PREFIXES=hello >> "$BUILDROOT/usr/lib/os-release"\n')
    script.chmod(0o755)
    build("portable", d)
    SIZES["portable"] = sizes(d / "svc.raw")
    return d / "svc.raw"


# ---------------------------------------------------------------- sysext


def test_sysext_partitions(sysext: Path, tmp_path: Path) -> None:
    parts = partitions(sysext)
    assert [p["type"].lower() for p in parts] == [ROOT, ROOT_VERITY]
    assert [p["name"] for p in parts] == ["root-x86-64", "root-x86-64-verity"]
    roothash = (sysext.parent / "hello.roothash").read_text().strip()
    assert parts[0]["uuid"].lower().replace("-", "") == roothash[:32]
    assert parts[1]["uuid"].lower().replace("-", "") == roothash[32:]
    verify_verity(sysext, roothash, tmp_path)


def test_systemd_dissect_accepts_the_sysext(sysext: Path, tools_tree: Path) -> None:
    data = dissect_json(tools_tree, sysext)
    assert data["useSystemExtension"] is True
    assert data["usePortableService"] is False and data["useBootableContainer"] is False
    release = data["sysextRelease"]
    for line in ("ID=debian", "VERSION_ID=12", "ARCHITECTURE=x86-64", "SYSEXT_SCOPE=initrd system portable"):
        assert line in release, release
    mounts = {m["designator"]: m for m in data["mounts"]}
    assert set(mounts) == {"root", "root-verity"}
    assert mounts["root"]["fstype"] == "erofs" and mounts["root"]["rw"] == "ro"


def test_the_overlay_sysext_holds_only_what_it_adds(sysext: Path, base: Path, tools_tree: Path) -> None:
    entries = listing(tools_tree, sysext)
    files = [e for e in entries if not e.endswith("/")]
    for expected in ("usr/bin/hello", "usr/share/mkosi-sysext/marker",
                     "usr/lib/extension-release.d/extension-release.hello"):
        assert expected in files, entries
    assert all(e.startswith(("usr/", "opt/")) for e in entries), entries
    for f in files:   # all of them new: nothing of the base (the package database, logs) came along
        assert not (base / f).exists() and not (base / f).is_symlink(), f
    # WithDocs= defaults to yes in a modern tree: hello's documentation and translations came along too.
    docs = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/")
    assert "usr/share/doc/hello/copyright" in files and any(f.startswith("usr/share/locale/") for f in files)
    assert len([f for f in files if not f.startswith(docs)]) < 20, files


# ---------------------------------------------------------------- confext


def test_systemd_dissect_accepts_the_signed_confext(confext: Path, tools_tree: Path, tmp_path: Path) -> None:
    parts = partitions(confext)
    verify_verity(confext, (confext.parent / "settings.roothash").read_text().strip(), tmp_path)
    assert [p["type"].lower() for p in parts] == [ROOT, ROOT_VERITY, ROOT_VERITY_SIG]
    assert (confext.parent / "settings.roothash.p7s").stat().st_size > 0
    data = dissect_json(tools_tree, confext)
    assert data["useConfigurationExtension"] is True and data["useSystemExtension"] is False
    release = data["confextRelease"]
    for line in ("ID=debian", "VERSION_ID=12", "CONFEXT_VERSION_ID=1.2", "ARCHITECTURE=x86-64"):
        assert line in release, release
    assert {m["designator"] for m in data["mounts"]} == {"root", "root-verity", "root-verity-sig"}
    sig = json.loads(sh("sh", "-c", f"dd if={confext} bs=512 skip={parts[2]['start']} count={parts[2]['size']}"
                           " status=none | tr -d '\\000'").stdout)
    assert sig["rootHash"] == (confext.parent / "settings.roothash").read_text().strip()
    # SplitArtifacts=yes: the three partitions as files of their own, as they are in the image.
    for part, name in zip(parts, ("settings.root.raw", "settings.root.verity", "settings.root.roothash.p7s")):
        split = (confext.parent / name).read_bytes()
        with open(confext, "rb") as f:
            f.seek(part["start"] * 512)
            assert f.read(len(split)) == split, name
    entries = listing(tools_tree, confext)
    # ImageVersion= writes IMAGE_VERSION= into /etc/os-release: a file that differs from the base's.
    assert sorted(e for e in entries if not e.endswith("/")) == [
        "etc/extension-release.d/extension-release.settings", "etc/marker", "etc/os-release"], entries


# ---------------------------------------------------------------- portable


def test_systemd_dissect_accepts_the_portable_image(portable: Path, tools_tree: Path) -> None:
    data = dissect_json(tools_tree, portable)
    assert data["usePortableService"] is True, data
    assert "ID=debian" in data["osRelease"] and "PORTABLE_PREFIXES=hello" in data["osRelease"]
    assert [p["type"].lower() for p in partitions(portable)] == [ROOT, ROOT_VERITY]
    entries = set(listing(tools_tree, portable))
    # The whole tree: the base's (copied, without Overlay=) and the package added to it.
    assert {"usr/bin/hello", "usr/lib/systemd/systemd", "etc/", "var/"} <= entries


# ---------------------------------------------------------------- merged into a booted system


SYSEXT_REPORT = """\
[Unit]
Description=Report the merged system extensions on the serial console and power off
After=systemd-sysext.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c '{ echo SYSEXT-REPORT-BEGIN; systemd-sysext status; cat /usr/share/mkosi-sysext/marker; \
hello; ls /dev/mapper; echo SYSEXT-REPORT-END; } > /dev/ttyS0 2>&1'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""


@pytest.mark.slow
def test_the_sysext_merges_into_a_booted_bookworm(tmp_path_factory: pytest.TempPathFactory, package_cache: Path,
                                                   sysext: Path) -> None:
    # nspawn gives a container no loop devices, so systemd-sysext cannot attach the image there: the
    # extension is merged in a VM. The image has a verity hash partition and its .roothash next to it
    # (unsigned: the guest's kernel would not trust a test certificate).
    d = project(tmp_path_factory.mktemp("vm"), package_cache,
                "Format=gpt_ext4\nBootable=yes\nBootProtocols=linux\nImageId=sysexthost",
                "ExtraTrees=mkosi.extra")
    with open(d / "mkosi.conf", "a") as f:
        f.write("\n[Host]\nQemuHeadless=yes\n")
    extensions = d / "mkosi.extra/var/lib/extensions"
    extensions.mkdir(parents=True)
    shutil.copy2(sysext, extensions / "hello.raw")
    shutil.copy2(sysext.parent / "hello.roothash", extensions / "hello.roothash")
    units = d / "mkosi.extra/etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "sysinit.target.wants").mkdir()
    (units / "sysinit.target.wants/systemd-sysext.service").symlink_to("/lib/systemd/system/systemd-sysext.service")
    (units / "sysext-report.service").write_text(SYSEXT_REPORT)
    (units / "multi-user.target.wants/sysext-report.service").symlink_to("../sysext-report.service")
    build("bootable host of the sysext", d)
    proc = run_mkosi(d, "--qemu-boot=linux", "qemu", timeout=900)
    out = proc.stdout + proc.stderr
    assert "SYSEXT-REPORT-BEGIN" in out, out[-3000:]
    report = out.split("SYSEXT-REPORT-BEGIN", 1)[1].split("SYSEXT-REPORT-END", 1)[0]
    assert MARKER.strip() in report, report
    assert "Hello, world!" in report, report
    usr = [line for line in report.splitlines() if line.startswith("/usr")]
    assert usr and "hello" in usr[0], report
    # Merged through dm-verity: the device is named after the root hash.
    roothash = (sysext.parent / "hello.roothash").read_text().strip()
    assert f"{roothash}-verity" in report, report


# ---------------------------------------------------------------- the classic BaseImage=


@pytest.mark.parametrize("kind", ["directory", "squashfs"])
def test_base_image_output_holds_only_the_changes(tmp_path_factory: pytest.TempPathFactory, package_cache: Path,
                                                  base: Path, kind: str) -> None:
    source = base
    if kind == "squashfs":   # a file system image: mounted read-only as the lower layer
        source = tmp_path_factory.mktemp("fs") / "base.squashfs"
        sh("mksquashfs", str(base), str(source), "-comp", "lz4", "-no-progress", "-quiet")
    d = project(tmp_path_factory.mktemp(f"baseimage-{kind}"), package_cache, "Format=directory\nOutput=delta",
                f"\n[Partitions]\nBaseImage={source}")
    (d / "mkosi.extra/etc").mkdir(parents=True)
    (d / "mkosi.extra/etc/delta-marker").write_text("only this\n")
    build(f"BaseImage= ({kind})", d)
    out = d / "delta"
    files = sorted(os.fspath(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    assert "etc/delta-marker" in files, files
    assert not (out / "usr/bin").exists() and not (out / "var/lib/dpkg/status").exists(), files
    assert len(files) < 10, files
    # The base is untouched and nothing stays mounted.
    assert (base / "usr/bin/bash").exists() and not (base / "etc/delta-marker").exists()
    assert str(d) not in Path("/proc/self/mountinfo").read_text()


def test_sysext_is_reproducible(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, base: Path) -> None:
    digests = []
    for i in range(2):
        d = project(tmp_path_factory.mktemp(f"repro{i}"), package_cache,
                    "Format=sysext\nOutput=hello.raw\nOverlay=yes\nSeed=0c6b1a56-8c1f-4a4e-a0b4-9b2f57d2c1e4",
                    f"BaseTrees={base}\nPackages=hello\nSourceDateEpoch=1700000000")
        build(f"sysext, reproducible ({i + 1})", d)
        digests.append(hashlib.sha256((d / "hello.raw").read_bytes()).hexdigest())
        digests.append((d / "hello.roothash").read_text())
    assert digests[0] == digests[2] and digests[1] == digests[3]


def test_base_tree_from_a_disk_image(tmp_path_factory: pytest.TempPathFactory, package_cache: Path,
                                     base: Path) -> None:
    # A disk image (here a portable image without verity, which this host can mount without
    # device-mapper) as the base tree: mounted read-only with systemd-dissect for the build.
    disk = project(tmp_path_factory.mktemp("disk-base"), package_cache, "Format=portable\nOutput=disk.raw\nVerity=no",
                   f"BaseTrees={base}")
    build("portable without verity (base of the next)", disk)
    d = project(tmp_path_factory.mktemp("on-disk"), package_cache, "Format=directory\nOutput=delta\nOverlay=yes",
                f"BaseTrees={disk / 'disk.raw'}\nPackages=tree")
    build("directory on a disk image base", d)
    out = d / "delta"
    assert (out / "usr/bin/tree").is_file() and (out / "var/lib/dpkg/info/tree.list").is_file()
    assert not (out / "usr/bin/bash").exists()
    assert str(d) not in Path("/proc/self/mountinfo").read_text()
