"""Reproducible builds: each format built twice with the same epoch and seed (the second build with the
warm package cache and `--cache-only=metadata`, as --check-reproducible does) gives byte-identical
artifacts, and --check-reproducible finds a file that a postinst script makes differ."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mkosi.output.filesystems import (
    BTRFS_DETERMINISTIC,
    XFS_DIRECTORY_POPULATION,
    parse_btrfs_progs_version,
    parse_mkfs_xfs_version,
)
from mkosi.output.gpt import make_uuid, seed_from_setting
from mkosi.reproduce import artifact_digest, diff_trees, file_sha256, first_difference, listing, tree_entries
from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

EPOCH = "1700000000"
SEED = "5b7f0c1e-8d2a-4e3b-9f60-1a2b3c4d5e6f"
KERNEL_PACKAGES = ("--package=linux-image-amd64", "--package=systemd", "--package=udev")

# The order the module builds them in: cheap formats first. The host's tools make the first six; the
# others take the tools tree (systemd-repart, ukify and the systemd stub, newer mkfs.xfs and mkfs.btrfs).
HOST_FORMATS = ("directory", "tar", "cpio", "plain_squashfs", "gpt_ext4", "gpt_squashfs")
# gpt_btrfs: the default tools tree takes btrfs-progs 7.3 from trixie-backports (deterministic mkfs.btrfs).
TOOLS_FORMATS = ("disk", "gpt_btrfs")
KERNEL_FORMATS = ("uki", "esp")
OUTPUT_NAME = {"directory": "repro", "tar": "repro.tar.zst", "cpio": "repro.cpio.zst", "uki": "repro.efi"}
# zstd instead of the default xz for the archives: xz takes minutes over a whole tree on two cores.
FORMAT_ARGV = {"tar": ("--compress-output=zstd",), "cpio": ("--compress-output=zstd",)}


def write_project(d: Path, cache: Path, extra: str = "") -> Path:
    (d / "mkosi.output").mkdir(parents=True, exist_ok=True)
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
ImageId=repro
ManifestFormat=json,spdx,cyclonedx
Seed={SEED}

[Content]
PackageCacheDirectory={cache}
SourceDateEpoch={EPOCH}
{extra}
[Validation]
Checksum=yes
""")
    return d


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    return write_project(tmp_path_factory.mktemp("repro-project"), package_cache)


def sha256(path: Path) -> str:
    return file_sha256(path)  # read in pieces: the xfs and btrfs images are gigabytes (sparse)


@dataclass
class Twice:
    """The artifacts of two builds of one format, each set moved aside into a directory of its own."""
    first: Path
    second: Path
    seconds: tuple[float, float]
    logs: tuple[str, str] = ("", "")


@dataclass
class Builds:
    """Builds each format twice, once per module, on first use."""
    project: Path
    tmp: pytest.TempPathFactory
    done: dict[str, Twice] = field(default_factory=dict)

    def build(self, fmt: str, *argv: str) -> tuple[Path, float, str]:
        start = time.monotonic()
        proc = run_mkosi(self.project, "-f", "-t", fmt, *FORMAT_ARGV.get(fmt, ()), *argv, "build", timeout=3000)
        seconds = time.monotonic() - start
        keep = self.tmp.mktemp(f"{fmt}-build")
        for p in (self.project / "mkosi.output").iterdir():
            shutil.move(str(p), keep / p.name)
        (keep.parent / f"{keep.name}.log").write_text(proc.stdout + proc.stderr)
        return keep, seconds, proc.stdout + proc.stderr

    def twice(self, fmt: str, *argv: str, key: str | None = None) -> Twice:
        """Two builds of `fmt`, made on the first call for `key` (default: the format)."""
        key = key or fmt
        if key not in self.done:
            first, s1, log1 = self.build(fmt, *argv)
            # The second build uses the metadata the first one synced, as --check-reproducible does:
            # Debian's mirrors publish several times a day, and a push in between would change packages.
            second, s2, log2 = self.build(fmt, "--cache-only=metadata", *argv)
            self.done[key] = Twice(first, second, (s1, s2), (log1, log2))
        return self.done[key]


@pytest.fixture(scope="module")
def builds(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(project, tmp_path_factory)


def explain_difference(a: Path, b: Path) -> str:
    """How two versions of an artifact differ: the differing paths of a tree, a diff of text, the first
    differing byte otherwise."""
    if a.is_dir():
        return "\n".join(listing(diff_trees(tree_entries(a), tree_entries(b))))
    if a.suffix in (".json", ".manifest") or a.name == "SHA256SUMS":
        diff = difflib.unified_diff(a.read_text().splitlines(), b.read_text().splitlines(), lineterm="", n=1)
        return "\n".join(list(diff)[:60])
    return f"first difference at byte {first_difference(a, b)} of {a.stat().st_size}"


def same(a: Path, b: Path) -> bool:
    if a.is_dir() and not a.is_symlink():
        return b.is_dir() and tree_entries(a) == tree_entries(b)
    return sha256(a) == sha256(b)


def assert_identical(fmt: str, twice: Twice, label: str | None = None) -> None:
    label = label or fmt
    names = sorted(p.name for p in twice.first.iterdir())
    assert names == sorted(p.name for p in twice.second.iterdir())
    output = OUTPUT_NAME.get(fmt, "repro.raw")
    assert output in names and "repro.spdx.json" in names, names
    differing = [name for name in names if not same(twice.first / name, twice.second / name)]
    assert not differing, f"{label}: differ between two builds: " + ", ".join(differing) + "\n" + "\n".join(
        f"--- {name}: {explain_difference(twice.first / name, twice.second / name)}" for name in differing)
    # For a directory, the digest --check-reproducible prints: over the tree's paths, metadata and contents.
    shown = artifact_digest(twice.first / output)
    print(f"{label}: reproducible, sha256 {shown}, builds took {twice.seconds[0]:.0f}s and "
          f"{twice.seconds[1]:.0f}s", file=sys.stderr)


@pytest.mark.parametrize("fmt", HOST_FORMATS)
def test_format_is_byte_identical(builds: Builds, fmt: str) -> None:
    assert_identical(fmt, builds.twice(fmt))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", TOOLS_FORMATS)
def test_format_with_the_tools_tree_is_byte_identical(builds: Builds, tools_tree: Path, fmt: str) -> None:
    twice = builds.twice(fmt, f"--tools-tree={tools_tree}")
    assert not any("will not be reproducible" in log for log in twice.logs), twice.logs
    assert_identical(fmt, twice)


# A root that is read-only and verified: erofs data, its dm-verity hash tree, the root hash reported.
EROFS_VERITY_DEFINITIONS = {
    "10-root.conf": "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/\nVerity=data\nVerityMatchKey=root\n"
                    "Minimize=best\n",
    "20-root-verity.conf": "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n",
}


@pytest.mark.slow
def test_disk_with_an_erofs_root_and_verity_is_byte_identical(builds: Builds, tools_tree: Path,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """Format=disk with an erofs root and its verity partition: the image, and the root hash (which names
    every byte of the root), are the same in both builds."""
    definitions = tmp_path_factory.mktemp("erofs-verity-repart")
    for name, text in EROFS_VERITY_DEFINITIONS.items():
        (definitions / name).write_text(text)
    twice = builds.twice("disk", f"--tools-tree={tools_tree}", f"--repart-directory={definitions}",
                         "--split-artifacts=roothash", key="disk erofs verity")
    hashes = [(d / "repro.roothash").read_text().strip() for d in (twice.first, twice.second)]
    assert re.fullmatch(r"[0-9a-f]{64}", hashes[0]) and hashes[0] == hashes[1], hashes
    table = json.loads(subprocess.run(["sfdisk", "--json", str(twice.first / "repro.raw")], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    types = [p["type"].lower() for p in table["partitions"]]
    # root-x86-64 and root-x86-64-verity (UAPI Discoverable Partitions); the verity data/hash partition UUIDs
    # are the two halves of the root hash.
    assert types == ["4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"], types
    uuids = [p["uuid"].lower().replace("-", "") for p in table["partitions"]]
    assert uuids == [hashes[0][:32], hashes[0][32:]], (uuids, hashes[0])
    start = table["partitions"][0]["start"] * table.get("sectorsize", 512)
    image = twice.first / "repro.raw"
    magic = subprocess.run(["blkid", "-p", "-O", str(start), "-s", "TYPE", "-o", "value", str(image)],
                           capture_output=True, text=True).stdout.strip()
    assert magic == "erofs", magic
    assert_identical("disk", twice, label=f"disk (erofs root, verity, roothash {hashes[0]})")


def first_partition(image: Path) -> dict[str, int]:
    """The start and size (in sectors) of the first partition of a GPT image."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    return {"start": int(table["partitions"][0]["start"]), "size": int(table["partitions"][0]["size"])}


def partition(image: Path, workdir: Path) -> Path:
    """The first partition of a GPT image, copied out (sparse) for tools that read a file system from offset 0."""
    part = first_partition(image)
    out = workdir / f"{image.parent.name}.part"
    subprocess.run(["dd", f"if={image}", f"of={out}", "bs=512", f"skip={part['start']}", f"count={part['size']}",
                    "conv=sparse", "status=none"], check=True)
    return out


@pytest.mark.slow
def test_gpt_xfs_is_filled_through_a_mount_and_differs(builds: Builds, tools_tree: Path) -> None:
    """Not reproducible even with the tools tree's mkfs.xfs (xfsprogs 6.13): Debian's tree has hard links,
    which a protofile cannot describe, so the file system is filled through a loop mount, where the kernel
    chooses inode numbers and writes its log and times. When this test fails, mkosi.md's table needs
    updating."""
    twice = builds.twice("gpt_xfs", f"--tools-tree={tools_tree}")
    assert all("populating xfs through a loop mount" in log and "hard linked" in log for log in twice.logs)
    uuids = [subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", "-O",
                             str(first_partition(d / "repro.raw")["start"] * 512), str(d / "repro.raw")],
                            capture_output=True, text=True, check=True).stdout.strip()
             for d in (twice.first, twice.second)]
    assert uuids[0] == uuids[1] != "", "the file system UUID comes from the seed"
    assert all("this xfs file system will not be reproducible" in log for log in twice.logs), "mkosi says so"
    assert sha256(twice.first / "repro.raw") != sha256(twice.second / "repro.raw")
    print(f"gpt_xfs: not reproducible (filled through a loop mount), sha256 {sha256(twice.first / 'repro.raw')} "
          f"vs {sha256(twice.second / 'repro.raw')}", file=sys.stderr)


# The first xfsprogs whose mkfs draws nothing at random (see mkosi.md, REPRODUCIBLE BUILDS), from Debian sid;
# trixie has no backport of it.
NEW_MKFS_PACKAGES = ("xfsprogs", "libicu78")


@pytest.fixture(scope="module")
def new_mkfs_tools_tree(tools_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tools tree (btrfs-progs 7.3 from trixie-backports) with Debian sid's xfsprogs (7.1 or
    newer) unpacked over it: a sid tools tree cannot be built from this machine's mirror, whose sid Release file
    has expired, but the packages can be fetched. The copy lives in the module's temporary directory."""
    work = tmp_path_factory.mktemp("new-mkfs")
    tree = work / "tree"
    subprocess.run(["cp", "-a", "--reflink=auto", str(tools_tree), str(tree)], check=True)
    apt = work / "apt"
    for d in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / d).mkdir(parents=True)
    (apt / "sources.list").write_text("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                                      "http://deb.debian.org/debian sid main\n")
    (apt / "apt.conf").write_text(f'''Dir::Etc::SourceList "{apt}/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "{apt}/lists";
Dir::Cache "{apt}/cache";
Acquire::Check-Valid-Until "false";
APT::Sandbox::User "root";
''')
    env = {**os.environ, "APT_CONFIG": str(apt / "apt.conf")}
    try:
        subprocess.run(["apt-get", "-q", "update"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "-q", "download", *NEW_MKFS_PACKAGES], env=env, check=True,
                       capture_output=True, cwd=apt / "debs")
    except subprocess.CalledProcessError as e:
        # sid moves (a library's soname in NEW_MKFS_PACKAGES changes): say so rather than fail mkosi's tests.
        pytest.skip(f"Debian sid's {', '.join(NEW_MKFS_PACKAGES)} could not be fetched: "
                    f"{e.stderr.decode(errors='replace')[-300:]}")
    for deb in sorted((apt / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    versions = subprocess.run(["chroot", str(tree), "sh", "-c", "mkfs.xfs -V; mkfs.btrfs --version"],
                              capture_output=True, text=True, check=True).stdout
    assert parse_mkfs_xfs_version(versions) >= XFS_DIRECTORY_POPULATION, versions
    assert parse_btrfs_progs_version(versions) >= BTRFS_DETERMINISTIC, versions
    shown = [line for line in versions.splitlines() if "version" in line or "btrfs-progs" in line]
    print(f"new mkfs tools tree: {' / '.join(shown)}", file=sys.stderr)
    return tree


@pytest.mark.slow
def test_gpt_xfs_with_xfsprogs_7_is_byte_identical(builds: Builds, new_mkfs_tools_tree: Path) -> None:
    """With xfsprogs 7.1+, mkfs.xfs copies the tree itself (hard links included, no loop mount) with
    DETERMINISTIC_SEED=1 and SOURCE_DATE_EPOCH: two builds give the same image."""
    twice = builds.twice("gpt_xfs", f"--tools-tree={new_mkfs_tools_tree}", key="gpt_xfs new mkfs")
    assert not any("populating xfs through a loop mount" in log for log in twice.logs)
    assert_identical("gpt_xfs", twice, label="gpt_xfs (xfsprogs 7)")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", KERNEL_FORMATS)
def test_bootable_format_is_byte_identical(builds: Builds, tools_tree: Path, fmt: str) -> None:
    assert_identical(fmt, builds.twice(fmt, f"--tools-tree={tools_tree}", *KERNEL_PACKAGES))


@pytest.mark.slow
def test_bootable_gpt_ext4_is_byte_identical(builds: Builds, tools_tree: Path) -> None:
    """Bootable=yes: an ESP with systemd-boot and a UKI whose initrd dracut builds in the image."""
    twice = builds.twice("gpt_ext4", f"--tools-tree={tools_tree}", "--bootable=yes", *KERNEL_PACKAGES,
                         "--package=dracut", key="bootable gpt_ext4")
    assert_identical("gpt_ext4", twice, label="bootable gpt_ext4")


def test_directory_tree_keeps_times_owners_and_modes(builds: Builds) -> None:
    """The compared tree is a real one: clamped times, root and non-root owners, set-uid programs."""
    entries = tree_entries(builds.twice("directory").first / "repro")
    assert max(e.mtime for e in entries.values()) <= int(EPOCH) * 10**9
    assert any(e.uid != 0 or e.gid != 0 for e in entries.values())
    assert any(e.mode & 0o4000 for e in entries.values())


def test_gpt_uuids_come_from_the_seed(builds: Builds) -> None:
    image = builds.twice("gpt_ext4").first / "repro.raw"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["id"].lower() == str(make_uuid(seed_from_setting(SEED), "disk"))


def test_check_reproducible_tar(project: Path, builds: Builds) -> None:
    one_build = builds.twice("tar").seconds[0]
    start = time.monotonic()
    proc = run_mkosi(project, "-f", "-t", "tar", *FORMAT_ARGV["tar"], "--check-reproducible", "build")
    seconds = time.monotonic() - start
    m = re.search(r"^reproducible: repro\.tar\.zst sha256 ([0-9a-f]{64})$", proc.stdout, re.MULTILINE)
    assert m, proc.stdout + proc.stderr
    assert sha256(project / "mkosi.output/repro.tar.zst") == m.group(1), "the first build is moved into place"
    assert m.group(1) == sha256(builds.twice("tar").first / "repro.tar.zst"), "the check builds the same bytes"
    print(f"tar: --check-reproducible took {seconds:.0f}s, one build {one_build:.0f}s "
          f"({seconds / one_build:.1f}x)", file=sys.stderr)
    for p in (project / "mkosi.output").iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def test_check_reports_a_file_a_postinst_script_makes_differ(tmp_path: Path, package_cache: Path) -> None:
    d = write_project(tmp_path / "dated", package_cache)
    script = d / "mkosi.postinst"
    script.write_text("#!/bin/sh\ndate +%s.%N > /etc/build-date\n")
    script.chmod(0o755)
    proc = run_mkosi(d, "-t", "directory", "--check-reproducible", "build", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "not reproducible" in proc.stdout
    assert re.search(r"^  /etc/build-date: content", proc.stdout, re.MULTILINE), proc.stdout
    assert "Traceback" not in proc.stderr
    assert "not reproducible" in proc.stderr, "the error line says so too"
    assert not (d / "mkosi.output/repro").exists(), "a failed check leaves no output"
