"""Every disk format and disk option, through real `mkosi build` runs of Debian bookworm.

Each configuration is one module-scoped project (one build), inspected afterwards with the tools
that consume such images: sfdisk for the partition table, fsck of every file system, debugfs /
unsquashfs / a read-only loop mount to read files back, systemd-dissect, veritysetup, cryptsetup,
openssl, qemu-img and bmaptool.

The host may have no device-mapper: verity is checked with `veritysetup verify` on extracted
partition files and LUKS with `cryptsetup open --test-passphrase`, neither opens a device.

Needs root and MKOSI_INTEGRATION=1; the package cache of the `package_cache` fixture keeps the
builds warm (about 10 s each). Each build's duration is printed at the end of the module.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import platform
import shutil
import subprocess
import tempfile
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

MiB = 1024 * 1024
ROOT_SIZE = 1024 * MiB

ROOT = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
ROOT_VERITY = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
ROOT_VERITY_SIG = "41092b05-9fc8-4523-994f-2def0408b176"
USR = "8484680c-9521-48c6-9c11-b0720656f69e"
USR_VERITY = "77ff5f63-e7b6-4633-acf4-1565b864c0e6"
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
HOME = "933ac7e1-2eb4-4f13-b844-0e14e2aef915"
SRV = "3b8f8425-20e0-4f3b-907f-1a25a76f98e8"

HOME_TEXT = "alice's file in /home, mkosi-home-marker\n"
SRV_TEXT = "<html>served from /srv, mkosi-srv-marker</html>\n"
PASSPHRASE = "Tr0ub4dor&3 mkosi disk-format passphrase"

DURATIONS: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------
# Helpers


def sh(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_project(d: Path, cache: Path, output: str, partitions: str = "", content: str = "",
                  validation: str = "") -> Path:
    """A bookworm project with the default package set and a small root; /home and /srv get files."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
{output}

[Content]
Cache={cache}
{content}

[Partitions]
RootSize={ROOT_SIZE // MiB}M
{partitions}

[Validation]
{validation}
""")
    extra = d / "mkosi.extra"
    (extra / "home/alice").mkdir(parents=True, exist_ok=True)
    (extra / "home/alice/notes.txt").write_text(HOME_TEXT)
    (extra / "srv/www").mkdir(parents=True, exist_ok=True)
    (extra / "srv/www/index.html").write_text(SRV_TEXT)
    (d / "mkosi.output").mkdir(exist_ok=True)
    return d / "mkosi.output"


def build(name: str, d: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = run_mkosi(d, *argv, "build", env=env)
    DURATIONS[name] = time.monotonic() - start
    print(f"[{name}] mkosi build took {DURATIONS[name]:.1f} s", flush=True)
    return proc


@pytest.fixture(scope="module", autouse=True)
def report_durations(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print each build's duration and the module's total at its end (past pytest's capture)."""
    start = time.monotonic()
    yield
    total = time.monotonic() - start
    lines = ["", "test_disk_formats durations:"]
    lines += [f"  {name:<32} {secs:6.1f} s" for name, secs in DURATIONS.items()]
    lines.append(f"  {'whole module':<32} {total:6.1f} s")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: images are big, and /var/tmp is where mkosi builds them anyway.
    d = Path(tempfile.mkdtemp(prefix="mkosi-test-disk-formats-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def partition_table(image: Path) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(sh("sfdisk", "--json", str(image)).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    assert table.get("sectorsize", 512) == 512
    return table


def partitions(image: Path) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = partition_table(image)["partitions"]
    return parts


def by_type(image: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in partitions(image):
        t = p["type"].lower()
        assert t not in out, f"two partitions of type {t}"
        out[t] = p
    return out


def read_only(part: dict[str, Any]) -> bool:
    return "GUID:60" in str(part.get("attrs", ""))


def extract(image: Path, part: dict[str, Any], dest: Path) -> Path:
    """Copy one partition out of the image into a (sparse) file."""
    sh("dd", f"if={image}", f"of={dest}", "bs=1M", "iflag=skip_bytes,count_bytes",
       f"skip={part['start'] * 512}", f"count={part['size'] * 512}", "conv=sparse", "status=none")
    assert dest.stat().st_size == part["size"] * 512
    return dest


def decompress(path: Path, dest: Path) -> Path:
    tool = {".xz": "xz", ".zst": "zstd"}[path.suffix]
    with open(dest, "wb") as out:
        subprocess.run([tool, "-dc", str(path)], stdout=out, check=True)
    return dest


def same_content(a: Path, b: Path) -> bool:
    return sh("cmp", "--quiet", str(a), str(b), check=False).returncode == 0


def debugfs_cat(fs_image: Path, path: str) -> str:
    return sh("debugfs", "-R", f"cat {path}", str(fs_image)).stdout


def debugfs_ls(fs_image: Path, path: str) -> list[str]:
    out = sh("debugfs", "-R", f"ls -l {path}", str(fs_image)).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


@contextlib.contextmanager
def loop_mounted(fs_image: Path, fstype: str) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="mkosi-test-mnt-", dir="/var/tmp"))
    try:
        sh("mount", "-t", fstype, "-o", "ro,loop", str(fs_image), str(mnt))
        try:
            yield mnt
        finally:
            sh("umount", str(mnt))
    finally:
        mnt.rmdir()


def e2fsck(fs_image: Path) -> None:
    proc = sh("e2fsck", "-fn", str(fs_image), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def luks_opens(volume: Path, keyfile: Path) -> bool:
    proc = sh("cryptsetup", "open", "--test-passphrase", f"--key-file={keyfile}", str(volume), check=False)
    return proc.returncode == 0


# ---------------------------------------------------------------------------------------------
# gpt_ext4 with /home, /srv and swap partitions, split artifacts, a bmap and checksums


@pytest.fixture(scope="module")
def ext4(base: Path, package_cache: Path) -> Path:
    d = base / "ext4"
    out = write_project(
        d, package_cache,
        output="Format=gpt_ext4\nImageId=dfimg\nImageVersion=3.1\nSplitArtifacts=yes\nHostname=formats",
        partitions="HomeSize=64M\nSrvSize=48M\nSwapSize=16M",
        validation="BMap=yes\nChecksum=yes",
    )
    build("gpt_ext4", d)
    return out


@pytest.fixture(scope="module")
def ext4_parts(ext4: Path) -> dict[str, Path]:
    image = ext4 / "dfimg_3.1.raw"
    parts = by_type(image)
    return {name: extract(image, parts[t], ext4.parent / f"part-{name}.img")
            for name, t in (("root", ROOT), ("home", HOME), ("srv", SRV), ("swap", SWAP))}


def test_ext4_outputs(ext4: Path) -> None:
    names = sorted(p.name for p in ext4.iterdir())
    assert names == sorted(["dfimg_3.1.raw", "dfimg_3.1.root.raw", "dfimg_3.1.bmap", "dfimg_3.1.manifest",
                            "SHA256SUMS"]), names
    lines = (ext4 / "SHA256SUMS").read_text().splitlines()
    sums = {name: digest for digest, name in (line.split(" *", 1) for line in lines)}
    h = hashlib.sha256((ext4 / "dfimg_3.1.bmap").read_bytes()).hexdigest()
    assert sums["dfimg_3.1.bmap"] == h
    assert "dfimg_3.1.raw" in sums and "dfimg_3.1.root.raw" in sums


def test_ext4_partition_table(ext4: Path) -> None:
    image = ext4 / "dfimg_3.1.raw"
    table = partition_table(image)
    assert table["firstlba"] == 2048
    parts = table["partitions"]
    assert [p["type"].lower() for p in parts] == [ROOT, HOME, SRV, SWAP]
    root, home, srv, swap = parts
    assert root["name"] == "dfimg_3.1", "the root label is ImageId_ImageVersion"
    assert root["size"] * 512 == ROOT_SIZE
    assert home["size"] * 512 == 64 * MiB
    assert srv["size"] * 512 == 48 * MiB
    assert swap["size"] * 512 == 16 * MiB
    assert not any(read_only(p) for p in parts), "ReadOnly= is off"
    assert root["start"] == 2048
    ends = [p["start"] + p["size"] for p in parts]
    assert all(end <= nxt["start"] for end, nxt in zip(ends, parts[1:])), "partitions overlap"
    assert all(p["start"] % 2048 == 0 for p in parts), "partitions are 1 MiB aligned"
    assert len({p["uuid"] for p in parts}) == len(parts)


def test_ext4_fsck_and_content(ext4_parts: dict[str, Path]) -> None:
    for name in ("root", "home", "srv"):
        e2fsck(ext4_parts[name])
    root = ext4_parts["root"]
    osr = debugfs_cat(root, "/etc/os-release")
    assert "VERSION_CODENAME=bookworm" in osr
    assert "IMAGE_ID=dfimg" in osr and "IMAGE_VERSION=3.1" in osr
    assert debugfs_cat(root, "/etc/hostname").strip() == "formats"
    # /home and /srv moved to their own partitions; the root keeps empty mount points.
    assert set(debugfs_ls(root, "/home")) <= {".", ".."}
    assert set(debugfs_ls(root, "/srv")) <= {".", ".."}
    assert debugfs_cat(ext4_parts["home"], "/alice/notes.txt") == HOME_TEXT
    assert debugfs_cat(ext4_parts["srv"], "/www/index.html") == SRV_TEXT
    assert b"mkosi-home-marker" not in root.read_bytes()


def test_ext4_swap(ext4_parts: dict[str, Path]) -> None:
    blkid = sh("blkid", "-p", "-o", "export", str(ext4_parts["swap"])).stdout
    assert "TYPE=swap" in blkid
    with open(ext4_parts["swap"], "rb") as f:
        f.seek(4096 - 10)
        assert f.read(10) == b"SWAPSPACE2"


def test_ext4_split_root_is_the_partition(ext4: Path, ext4_parts: dict[str, Path]) -> None:
    split = ext4 / "dfimg_3.1.root.raw"
    assert same_content(split, ext4_parts["root"])
    st = split.stat()
    assert st.st_blocks * 512 < st.st_size // 2, "the split root is sparse, like the image"


def test_ext4_bmap_copy(ext4: Path) -> None:
    image = ext4 / "dfimg_3.1.raw"
    bmap_text = (ext4 / "dfimg_3.1.bmap").read_text()
    assert "<bmap version=" in bmap_text
    copy = ext4.parent / "bmap-copy.raw"
    try:
        sh("bmaptool", "copy", "--bmap", str(ext4 / "dfimg_3.1.bmap"), str(image), str(copy))
        assert same_content(image, copy)
    finally:
        copy.unlink(missing_ok=True)


def test_ext4_systemd_dissect(ext4: Path) -> None:
    proc = sh("systemd-dissect", "--json=short", str(ext4 / "dfimg_3.1.raw"), timeout=120)
    info = json.loads(proc.stdout)
    assert "ID=debian" in info["osRelease"]
    designators = {m["designator"] for m in info["mounts"]}
    assert {"root", "home", "srv", "swap"} <= designators
    root = next(m for m in info["mounts"] if m["designator"] == "root")
    assert root["fstype"] == "ext4" and root["architecture"] == "x86-64"


def test_ext4_shell_runs_command_and_returns_status(ext4: Path) -> None:
    d = ext4.parent
    proc = run_mkosi(d, "shell", "cat", "/etc/os-release", timeout=300)
    assert "IMAGE_ID=dfimg" in proc.stdout
    assert "VERSION_CODENAME=bookworm" in proc.stdout
    proc = run_mkosi(d, "shell", "sh", "-c", "exit 7", check=False, timeout=300)
    assert proc.returncode == 7, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# The legacy raw_gpt name: ext4 with ReadOnly=, Minimize=, GPTFirstLBA=34 and QCow2=


@pytest.fixture(scope="module")
def ext4_qcow2(base: Path, package_cache: Path) -> Path:
    d = base / "ext4-qcow2"
    out = write_project(d, package_cache,
                        output="Format=raw_gpt\nImageId=mini\nReadOnly=yes\nMinimize=yes\nQCow2=yes\nGPTFirstLBA=34")
    build("raw_gpt minimize qcow2", d)
    return out


def test_qcow2_output(ext4_qcow2: Path) -> None:
    image = ext4_qcow2 / "mini.qcow2"
    assert image.exists(), sorted(p.name for p in ext4_qcow2.iterdir())
    assert not (ext4_qcow2 / "mini.raw").exists()
    info = json.loads(sh("qemu-img", "info", "--output=json", str(image)).stdout)
    assert info["format"] == "qcow2"
    proc = run_mkosi(ext4_qcow2.parent, "shell", "true", check=False)
    assert proc.returncode != 0
    assert "qcow2" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_minimized_read_only_ext4(ext4_qcow2: Path) -> None:
    raw = ext4_qcow2.parent / "mini-converted.raw"
    sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(ext4_qcow2 / "mini.qcow2"), str(raw))
    table = partition_table(raw)
    assert table["firstlba"] == 34
    (root,) = table["partitions"]
    assert root["type"].lower() == ROOT
    assert root["name"] == "mini"
    assert read_only(root), "ReadOnly=yes sets GPT attribute 60"
    size = root["size"] * 512
    assert size < ROOT_SIZE // 2, f"Minimize=yes left a root partition of {size // MiB} MiB"
    fs = extract(raw, root, ext4_qcow2.parent / "mini-root.img")
    e2fsck(fs)
    assert "ID=debian" in debugfs_cat(fs, "/etc/os-release")
    # Minimized, but not overfull: the file system has some room left.
    df = sh("dumpe2fs", "-h", str(fs)).stdout
    free = int(next(line for line in df.splitlines() if line.startswith("Free blocks:")).split(":")[1])
    assert free > 0


# ---------------------------------------------------------------------------------------------
# gpt_xfs with a /home partition, zstd-compressed output


@pytest.fixture(scope="module")
def xfs(base: Path, package_cache: Path) -> Path:
    d = base / "xfs"
    out = write_project(d, package_cache, output="Format=gpt_xfs\nImageId=xfsimg\nCompressOutput=zstd",
                        partitions="HomeSize=320M")
    build("gpt_xfs zstd", d)
    return out


def test_xfs_compressed_output_name(xfs: Path) -> None:
    assert (xfs / "xfsimg.raw.zst").exists(), sorted(p.name for p in xfs.iterdir())
    assert not (xfs / "xfsimg.raw").exists()


def test_xfs_image(xfs: Path) -> None:
    raw = decompress(xfs / "xfsimg.raw.zst", xfs.parent / "xfsimg.raw")
    parts = by_type(raw)
    assert set(parts) == {ROOT, HOME}
    assert parts[ROOT]["name"] == "xfsimg"
    root = extract(raw, parts[ROOT], xfs.parent / "root.xfs")
    home = extract(raw, parts[HOME], xfs.parent / "home.xfs")
    for fs in (root, home):
        proc = sh("xfs_repair", "-n", "-f", str(fs), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    with loop_mounted(root, "xfs") as mnt:
        assert "ID=debian" in (mnt / "etc/os-release").read_text()
        assert list((mnt / "home").iterdir()) == []
    with loop_mounted(home, "xfs") as mnt:
        assert (mnt / "alice/notes.txt").read_text() == HOME_TEXT


def test_shell_refuses_compressed_image(xfs: Path) -> None:
    proc = run_mkosi(xfs.parent, "shell", "true", check=False)
    assert proc.returncode != 0
    assert "compress" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# gpt_btrfs, minimized and zstd-compressed


@pytest.fixture(scope="module")
def btrfs(base: Path, package_cache: Path) -> Path:
    d = base / "btrfs"
    out = write_project(d, package_cache, output="Format=gpt_btrfs\nImageId=btr\nMinimize=yes\nCompressFs=zstd")
    build("gpt_btrfs minimize zstd", d)
    return out


def test_btrfs_image(btrfs: Path) -> None:
    raw = btrfs / "btr.raw"
    (root,) = partitions(raw)
    assert root["type"].lower() == ROOT and root["name"] == "btr"
    size = root["size"] * 512
    assert size < ROOT_SIZE // 2, f"Minimize=yes left a root partition of {size // MiB} MiB"
    fs = extract(raw, root, btrfs.parent / "root.btrfs")
    proc = sh("btrfs", "check", "--readonly", str(fs), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with loop_mounted(fs, "btrfs") as mnt:
        assert "ID=debian" in (mnt / "etc/os-release").read_text()
        assert (mnt / "home/alice/notes.txt").read_text() == HOME_TEXT
        # The files are stored compressed, and new files inherit the compression.
        dump = sh("btrfs", "inspect-internal", "dump-tree", "-t", "fs", str(fs)).stdout
        assert "compression 3" in dump, "no zstd-compressed extent in the file system"
        prop = sh("btrfs", "property", "get", str(mnt), "compression").stdout
        assert "zstd" in prop


# ---------------------------------------------------------------------------------------------
# gpt_squashfs with signed verity (keys from mkosi genkey), split artifacts, xz output


@pytest.fixture(scope="module")
def squashfs(base: Path, package_cache: Path) -> Path:
    d = base / "squashfs"
    out = write_project(d, package_cache,
                        output="Format=gpt_squashfs\nImageId=sq\nImageVersion=7\nVerity=signed\n"
                               "SplitArtifacts=yes\nCompressFs=zstd\nCompressOutput=xz")
    run_mkosi(d, "genkey")
    assert (d / "mkosi.secure-boot.key").exists() and (d / "mkosi.secure-boot.crt").exists()
    build("gpt_squashfs signed verity xz", d)
    return out


@pytest.fixture(scope="module")
def squashfs_raw(squashfs: Path) -> Path:
    return decompress(squashfs / "sq_7.raw.xz", squashfs.parent / "sq_7.raw")


def test_squashfs_outputs(squashfs: Path) -> None:
    names = sorted(p.name for p in squashfs.iterdir())
    assert names == sorted(["sq_7.raw.xz", "sq_7.root.raw.xz", "sq_7.root.verity.xz", "sq_7.root.roothash.p7s.xz",
                            "sq_7.roothash", "sq_7.roothash.p7s", "sq_7.manifest"]), names


def test_squashfs_partition_table(squashfs_raw: Path) -> None:
    parts = partitions(squashfs_raw)
    assert [p["type"].lower() for p in parts] == [ROOT, ROOT_VERITY, ROOT_VERITY_SIG]
    assert all(p["name"] == "sq_7" for p in parts), [p["name"] for p in parts]
    assert all(read_only(p) for p in parts), "squashfs and verity imply the read-only flag"


def test_squashfs_content(squashfs: Path, squashfs_raw: Path) -> None:
    root = extract(squashfs_raw, by_type(squashfs_raw)[ROOT], squashfs.parent / "root.squashfs")
    listing = sh("unsquashfs", "-l", str(root)).stdout
    assert "squashfs-root/etc/os-release" in listing
    assert "squashfs-root/home/alice/notes.txt" in listing
    assert "IMAGE_ID=sq" in sh("unsquashfs", "-cat", str(root), "etc/os-release").stdout
    assert "Compression zstd" in sh("unsquashfs", "-s", str(root)).stdout


def test_squashfs_split_artifacts(squashfs: Path, squashfs_raw: Path) -> None:
    parts = by_type(squashfs_raw)
    for suffix, t in ((".root.raw.xz", ROOT), (".root.verity.xz", ROOT_VERITY),
                      (".root.roothash.p7s.xz", ROOT_VERITY_SIG)):
        part = extract(squashfs_raw, parts[t], squashfs.parent / f"part{suffix}.img")
        split = decompress(squashfs / f"sq_7{suffix}", squashfs.parent / f"split{suffix}.img")
        assert same_content(split, part), suffix


def test_squashfs_verity(squashfs: Path, squashfs_raw: Path) -> None:
    roothash = (squashfs / "sq_7.roothash").read_text().strip()
    assert len(roothash) == 64 and int(roothash, 16) >= 0
    parts = by_type(squashfs_raw)
    data = extract(squashfs_raw, parts[ROOT], squashfs.parent / "verity-data.img")
    hashes = extract(squashfs_raw, parts[ROOT_VERITY], squashfs.parent / "verity-hash.img")
    sh("veritysetup", "verify", str(data), str(hashes), roothash)
    # The partition UUIDs are the halves of the root hash.
    assert parts[ROOT]["uuid"].lower().replace("-", "") == roothash[:32]
    assert parts[ROOT_VERITY]["uuid"].lower().replace("-", "") == roothash[32:]
    assert sh("veritysetup", "verify", str(data), str(hashes), "0" * 64, check=False).returncode != 0


def test_squashfs_roothash_signature(squashfs: Path, squashfs_raw: Path) -> None:
    d = squashfs.parent
    roothash = (squashfs / "sq_7.roothash").read_text().strip()
    content = d / "roothash.txt"
    content.write_text(roothash)  # exactly the hex string, no newline
    # Like the kernel's keyring check, the signature carries no certificate: it is given here.
    crt = str(d / "mkosi.secure-boot.crt")
    verify = ["openssl", "smime", "-verify", "-binary", "-inform", "der", "-in", str(squashfs / "sq_7.roothash.p7s"),
              "-content", str(content), "-certfile", crt, "-CAfile", crt, "-purpose", "any", "-out", "/dev/null"]
    sh(*verify)
    content.write_text(roothash[::-1])
    assert sh(*verify, check=False).returncode != 0, "the signature must not verify a different root hash"

    sig = extract(squashfs_raw, by_type(squashfs_raw)[ROOT_VERITY_SIG], d / "verity-sig.img")
    blob = sig.read_bytes()
    assert len(blob) % 4096 == 0
    obj = json.loads(blob.rstrip(b"\0"))
    assert obj["rootHash"] == roothash
    assert base64.b64decode(obj["signature"]) == (squashfs / "sq_7.roothash.p7s").read_bytes()
    der = subprocess.run(["openssl", "x509", "-in", str(d / "mkosi.secure-boot.crt"), "-outform", "der"],
                         capture_output=True, check=True).stdout
    assert obj["certificateFingerprint"] == hashlib.sha256(der).hexdigest()


# ---------------------------------------------------------------------------------------------
# UsrOnly=yes: a minimized ext4 /usr partition with verity and a .usrhash


@pytest.fixture(scope="module")
def usr(base: Path, package_cache: Path) -> Path:
    d = base / "usr"
    out = write_project(d, package_cache,
                        output="Format=gpt_ext4\nImageId=usronly\nUsrOnly=yes\nVerity=yes\nMinimize=yes")
    build("gpt_ext4 usr-only verity", d)
    return out


def test_usr_only(usr: Path) -> None:
    raw = usr / "usronly.raw"
    parts = partitions(raw)
    assert [p["type"].lower() for p in parts] == [USR, USR_VERITY]
    assert all(read_only(p) for p in parts)
    assert not (usr / "usronly.roothash").exists()
    usrhash = (usr / "usronly.usrhash").read_text().strip()
    assert parts[0]["name"] == "usronly"
    assert parts[0]["size"] * 512 < ROOT_SIZE // 2
    data = extract(raw, parts[0], usr.parent / "usr.ext4")
    hashes = extract(raw, parts[1], usr.parent / "usr.verity")
    sh("veritysetup", "verify", str(data), str(hashes), usrhash)
    e2fsck(data)
    assert "ID=debian" in debugfs_cat(data, "/lib/os-release"), "the partition holds /usr's contents"
    top = set(debugfs_ls(data, "/"))
    assert {"bin", "lib", "share"} <= top and not {"etc", "home", "usr"} & top, top


# ---------------------------------------------------------------------------------------------
# LUKS: Encrypt=data (with verity on the root) and Encrypt=all


def write_passphrase(d: Path, mode: int) -> Path:
    p = d / "mkosi.passphrase"
    p.write_text(PASSPHRASE + "\n")  # the trailing newline is not part of the passphrase
    p.chmod(mode)
    key = d / "keyfile"
    key.write_text(PASSPHRASE)
    return key


@pytest.fixture(scope="module")
def luks_data(base: Path, package_cache: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    d = base / "luks-data"
    out = write_project(d, package_cache, output="Format=gpt_ext4\nImageId=crypt\nEncrypt=data\nVerity=yes",
                        partitions="HomeSize=64M\nSrvSize=64M")
    write_passphrase(d, 0o600)
    proc = build("gpt_ext4 encrypt=data verity", d, "--debug")
    return out, proc


def test_luks_data(luks_data: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = luks_data
    d = out.parent
    assert PASSPHRASE not in proc.stdout + proc.stderr, "the passphrase leaked into mkosi's output"
    raw = out / "crypt.raw"
    parts = by_type(raw)
    assert set(parts) == {ROOT, ROOT_VERITY, HOME, SRV}
    root = extract(raw, parts[ROOT], d / "root.img")
    assert sh("cryptsetup", "isLuks", str(root), check=False).returncode != 0, "Encrypt=data leaves root clear"
    e2fsck(root)
    hashes = extract(raw, parts[ROOT_VERITY], d / "root.verity")
    sh("veritysetup", "verify", str(root), str(hashes), (out / "crypt.roothash").read_text().strip())
    for t, marker in ((HOME, b"mkosi-home-marker"), (SRV, b"mkosi-srv-marker")):
        vol = extract(raw, parts[t], d / f"{t}.luks")
        sh("cryptsetup", "isLuks", str(vol))
        assert luks_opens(vol, d / "keyfile")
        if t == HOME:
            wrong = d / "wrong-key"
            wrong.write_text("not the passphrase")
            assert not luks_opens(vol, wrong)
        assert marker not in vol.read_bytes(), "the partition's content is not encrypted"


def test_luks_passphrase_mode_checked(base: Path, package_cache: Path) -> None:
    d = base / "luks-mode"
    write_project(d, package_cache, output="Format=gpt_ext4\nEncrypt=all")
    write_passphrase(d, 0o644)
    proc = run_mkosi(d, "build", check=False)
    assert proc.returncode != 0
    assert "mkosi.passphrase" in proc.stderr and "600" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert PASSPHRASE not in proc.stdout + proc.stderr
    assert not any((d / "mkosi.output").iterdir())


@pytest.fixture(scope="module")
def luks_all(base: Path, package_cache: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    d = base / "luks-all"
    out = write_project(d, package_cache, output="Format=gpt_ext4\nImageId=cryptall\nEncrypt=all",
                        partitions="HomeSize=64M")
    write_passphrase(d, 0o600)
    proc = build("gpt_ext4 encrypt=all", d, "--debug")
    return out, proc


def test_luks_all(luks_all: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = luks_all
    d = out.parent
    assert PASSPHRASE not in proc.stdout + proc.stderr, "the passphrase leaked into mkosi's output"
    raw = out / "cryptall.raw"
    parts = by_type(raw)
    assert set(parts) == {ROOT, HOME}
    for t, marker in ((ROOT, b"VERSION_CODENAME=bookworm"), (HOME, b"mkosi-home-marker")):
        vol = extract(raw, parts[t], d / f"{t}.luks")
        sh("cryptsetup", "isLuks", str(vol))
        assert luks_opens(vol, d / "keyfile")
        assert marker not in vol.read_bytes()


# ---------------------------------------------------------------------------------------------
# plain_squashfs and subvolume


def test_plain_squashfs(base: Path, package_cache: Path) -> None:
    d = base / "plain-squashfs"
    out = write_project(d, package_cache, output="Format=plain_squashfs\nImageId=plain\nCompressFs=zstd")
    build("plain_squashfs", d)
    image = out / "plain.raw"
    assert sh("sfdisk", "--json", str(image), check=False).returncode != 0, "no partition table"
    assert "Compression zstd" in sh("unsquashfs", "-s", str(image)).stdout
    assert sh("unsquashfs", "-cat", str(image), "home/alice/notes.txt").stdout == HOME_TEXT
    assert "ID=debian" in sh("unsquashfs", "-cat", str(image), "etc/os-release").stdout


def test_subvolume_needs_btrfs(base: Path, package_cache: Path) -> None:
    d = base / "subvolume-ext4"
    write_project(d, package_cache, output="Format=subvolume\nImageId=sub")
    start = time.monotonic()
    proc = run_mkosi(d, "build", check=False)
    DURATIONS["subvolume refused"] = time.monotonic() - start
    assert proc.returncode != 0
    assert "btrfs" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any((d / "mkosi.output").iterdir())


@pytest.fixture
def btrfs_dir() -> Iterator[Path]:
    holder = Path(tempfile.mkdtemp(prefix="mkosi-test-btrfs-", dir="/var/tmp"))
    image = holder / "fs.btrfs"
    mnt = holder / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(3 * 1024 * MiB)
    sh("mkfs.btrfs", "-q", str(image))
    sh("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        sh("umount", str(mnt), check=False)
        shutil.rmtree(holder, ignore_errors=True)


def test_subvolume(base: Path, package_cache: Path, btrfs_dir: Path) -> None:
    d = base / "subvolume"
    write_project(d, package_cache, output=f"Format=subvolume\nImageId=sub\nOutputDirectory={btrfs_dir}")
    build("subvolume", d)
    out = btrfs_dir / "sub"
    show = sh("btrfs", "subvolume", "show", str(out)).stdout
    assert "Name:" in show and "sub" in show
    assert "ID=debian" in (out / "etc/os-release").read_text()
    assert (out / "home/alice/notes.txt").read_text() == HOME_TEXT
    for nested in ("var", "home", "srv", "var/tmp"):
        assert sh("btrfs", "subvolume", "show", str(out / nested), check=False).returncode == 0, \
            f"/{nested} is its own subvolume"
    assert (out / "var/tmp").stat().st_mode & 0o7777 == 0o1777
    assert (out / "var/lib/dpkg/status").exists()
    # A rebuild with -f replaces the subvolume.
    build("subvolume rebuild", d, "-f")
    assert "ID=debian" in (out / "etc/os-release").read_text()
    assert not [p.name for p in btrfs_dir.iterdir() if p.name.startswith(".mkosi")]
