"""Disk images built for real: every root file system, verity, signed verity, LUKS, split /home and
/srv, swap, ESP, bmap and qcow2, checked with the tools that would consume them.

Needs root and MKOSI_INTEGRATION=1. Works in /var/tmp. Device-mapper is not needed: LUKS
volumes are checked by opening the key slot (--test-passphrase) and decrypting the payload
offline with the volume key; verity with `veritysetup verify` (userspace).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mkosi.output import bmap, disk, gpt, luks, verity
from mkosi.output.gpt import PlacedPartition

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or os.environ.get("MKOSI_INTEGRATION") != "1",
        reason="needs root and MKOSI_INTEGRATION=1",
    ),
]

MiB = 1024 * 1024
OS_RELEASE = "ID=mkosi-test\nVERSION_ID=1\n"
HOME_FILE = "hello from /home\n"
SRV_FILE = "srv data\n"
ARCH = "x86-64"
PASSPHRASE = "correct horse battery staple"


def sh(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kwargs)


def tool(name: str) -> str:
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    pytest.skip(f"{name} not installed")


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mkosi-test-disk-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _make_tree(root: Path) -> Path:
    tree = root / "tree"
    for d in ("etc", "usr/bin", "usr/lib", "home/user", "srv", "tmp", "var/log", "dev", "run"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc/os-release").write_text(OS_RELEASE)
    os.utime(tree / "etc/os-release", (1600000000, 1600000000))
    (tree / "usr/lib/os-release").write_text(OS_RELEASE)
    (tree / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chown(tree / "etc/shadow", 0, 42)
    os.chmod(tree / "etc/shadow", 0o640)
    shutil.copy2("/bin/true", tree / "usr/bin/true")
    (tree / "usr/bin/su").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(tree / "usr/bin/su", 0o4755)
    os.symlink("usr/bin", tree / "bin")
    os.chmod(tree / "tmp", 0o1777)
    (tree / "home/user/file").write_text(HOME_FILE)
    os.chmod(tree / "home/user/file", 0o600)
    for p in (tree / "home/user", tree / "home/user/file"):
        os.chown(p, 1000, 1000)
    (tree / "srv/x").write_text(SRV_FILE)
    (tree / "var/log/app.log").write_text("log\n")
    os.chown(tree / "var/log/app.log", 0, 4)
    os.mknod(tree / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(tree / "run/fifo", 0o600)
    return tree


@pytest.fixture(scope="module")
def tree(base_dir: Path) -> Path:
    return _make_tree(base_dir)


@pytest.fixture(scope="module")
def esp_tree(base_dir: Path) -> Path:
    esp = base_dir / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ fake efi binary")
    (esp / "loader").mkdir()
    (esp / "loader/loader.conf").write_text("timeout 3\n")
    return esp


@pytest.fixture(scope="module")
def signing(base_dir: Path) -> tuple[Path, Path]:
    from mkosi.boot.signing import generate_secure_boot_keys

    key_path, cert_path = base_dir / "verity.key", base_dir / "verity.crt"
    generate_secure_boot_keys("mkosi integration test", 3650, key_path, cert_path)
    return key_path, cert_path


def _spec(base_dir: Path, tree: Path, name: str, **kwargs: Any) -> disk.DiskSpec:
    return disk.DiskSpec(
        tree=tree,
        output=base_dir / f"{name}.raw",
        workspace=base_dir / f"ws-{name}",
        arch=ARCH,
        seed=f"seed-{name}",
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def sfdisk_partitions(image: Path) -> list[dict[str, Any]]:
    table = json.loads(sh(tool("sfdisk"), "--json", str(image)).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    parts: list[dict[str, Any]] = table["partitions"]
    return parts


def check_table(image: Path, placed: list[PlacedPartition]) -> list[dict[str, Any]]:
    parts = sfdisk_partitions(image)
    assert len(parts) == len(placed)
    for entry, p in zip(parts, placed):
        assert entry["start"] * 512 == p.offset
        assert entry["start"] % 2048 == 0
        assert entry["size"] * 512 == p.size
        assert uuid.UUID(entry["type"]) == p.type_uuid
        assert uuid.UUID(entry["uuid"]) == p.uuid
        assert entry["name"] == p.label
    return parts


def extract(image: Path, p: PlacedPartition, dest: Path) -> Path:
    """Copy one partition out of the disk image (sparse)."""
    dest.unlink(missing_ok=True)
    with open(image, "rb") as src, open(dest, "wb") as out:
        out.truncate(p.size)
        pos = 0
        while pos < p.size:
            n = min(4 * MiB, p.size - pos)
            src.seek(p.offset + pos)
            buf = src.read(n)
            if buf.count(0) != len(buf):
                out.seek(pos)
                out.write(buf)
            pos += n
    return dest


def debugfs(image: Path, request: str) -> str:
    return sh(tool("debugfs"), "-R", request, str(image)).stdout


def e2fsck_ok(image: Path) -> None:
    sh(tool("e2fsck"), "-fn", str(image))


def blkid_type(image: Path) -> str:
    return sh(tool("blkid"), "-p", "-o", "value", "-s", "TYPE", str(image)).stdout.strip()


class RoLoopMount:
    """A read-only loop mount that is always unmounted."""

    def __init__(self, image: Path, fstype: str) -> None:
        self.image = image
        self.fstype = fstype
        self.mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=image.parent))

    def __enter__(self) -> Path:
        sh("mount", "-t", self.fstype, "-o", "ro,loop", str(self.image), str(self.mnt))
        return self.mnt

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False)
        self.mnt.rmdir()


def check_tree_in_mount(mnt: Path, *, with_home: bool = True) -> None:
    assert (mnt / "etc/os-release").read_text() == OS_RELEASE
    assert os.lstat(mnt / "etc/os-release").st_mtime == 1600000000
    st = os.lstat(mnt / "etc/shadow")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 42)
    assert stat.S_IMODE(os.lstat(mnt / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(mnt / "tmp").st_mode) == 0o1777
    assert os.readlink(mnt / "bin") == "usr/bin"
    dev = os.lstat(mnt / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1 and os.minor(dev.st_rdev) == 3
    assert stat.S_ISFIFO(os.lstat(mnt / "run/fifo").st_mode)
    assert os.lstat(mnt / "var/log/app.log").st_gid == 4
    if with_home:
        f = mnt / "home/user/file"
        assert f.read_text() == HOME_FILE
        st = os.lstat(f)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1000, 1000)


def loops_for(image: Path) -> list[str]:
    out = sh("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").stdout
    return [line for line in out.splitlines() if str(image) in line]


def luks_decrypt(image: Path, keyfile: Path, out: Path) -> None:
    """Decrypt the ext4 file system in a LUKS2 aes-xts-plain64 volume offline with the volume key.

    No device-mapper needed: the volume key is dumped with the key file and every sector is
    decrypted with AES-XTS, the tweak being the sector number (plain64). Only as many bytes as
    the ext4 superblock says the file system has are decrypted.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    vk = out.with_suffix(".vk")
    sh(
        "cryptsetup", "luksDump", "--batch-mode", "--dump-volume-key",
        "--volume-key-file", str(vk), "--key-file", str(keyfile), str(image),
    )  # fmt: skip
    dump = json.loads(sh("cryptsetup", "luksDump", "--dump-json-metadata", str(image)).stdout)
    segment = dump["segments"]["0"]
    assert segment["encryption"] == "aes-xts-plain64"
    offset = int(segment["offset"])
    sector = int(segment["sector_size"])
    aes = algorithms.AES(vk.read_bytes())
    vk.unlink()

    def decrypt(src: Any, first_sector: int, nbytes: int) -> bytes:
        src.seek(offset + first_sector * sector)
        data = src.read(nbytes)
        plain = bytearray()
        for i in range(0, len(data), sector):
            # plain64: the IV is the little-endian sector number, counted in the segment's sector size.
            iv = (first_sector + i // sector).to_bytes(16, "little")
            dec = Cipher(aes, modes.XTS(iv)).decryptor()
            plain += dec.update(data[i : i + sector]) + dec.finalize()
        return bytes(plain)

    with open(image, "rb") as src, open(out, "wb") as dst:
        head = decrypt(src, 0, 4096)
        assert head[1024 + 56 : 1024 + 58] == b"\x53\xef", "no ext4 superblock inside the LUKS volume"
        blocks = int.from_bytes(head[1024 + 4 : 1024 + 8], "little")
        block_size = 1024 << int.from_bytes(head[1024 + 24 : 1024 + 28], "little")
        fs_size = blocks * block_size
        pos = 0
        while pos < fs_size:
            n = min(MiB, fs_size - pos)
            dst.write(decrypt(src, pos // sector, n))
            pos += n


# ---------------------------------------------------------------------------------------------
# ext4 with everything around it


@pytest.fixture(scope="module")
def ext4_disk(base_dir: Path, tree: Path, esp_tree: Path) -> disk.DiskResult:
    spec = _spec(
        base_dir,
        tree,
        "ext4",
        root_fs="ext4",
        root_size=64 * MiB,
        home_size=32 * MiB,
        srv_size=32 * MiB,
        swap_size=16 * MiB,
        esp_size=64 * MiB,
        esp_tree=esp_tree,
        bios_boot=True,
        growfs=True,
        image_id="testos",
        image_version="1.2",
    )
    return disk.build_disk(spec)


def test_ext4_layout(ext4_disk: disk.DiskResult) -> None:
    parts = check_table(ext4_disk.output, ext4_disk.partitions)
    roles = [p.role for p in ext4_disk.partitions]
    assert roles == ["bios-boot", "esp", "root", "home", "srv", "swap"]
    types = [uuid.UUID(e["type"]) for e in parts]
    assert types == [
        uuid.UUID("21686148-6449-6e6f-744e-656564454649"),
        uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
        uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        uuid.UUID("933ac7e1-2eb4-4f13-b844-0e14e2aef915"),
        uuid.UUID("3b8f8425-20e0-4f3b-907f-1a25a76f98e8"),
        uuid.UUID("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
    ]
    assert parts[0]["size"] * 512 == MiB
    assert parts[2]["name"] == "testos_1.2"
    assert parts[2].get("attrs") == "GUID:59"  # growfs, writable
    assert parts[3].get("attrs") == "GUID:59"
    assert "attrs" not in parts[5]
    assert parts[2]["size"] * 512 == 64 * MiB
    assert parts[3]["size"] * 512 == 32 * MiB


def test_ext4_contents(ext4_disk: disk.DiskResult, base_dir: Path, tree: Path) -> None:
    out = ext4_disk.output
    root = extract(out, ext4_disk.partitions[2], base_dir / "x-root.ext4")
    e2fsck_ok(root)
    assert debugfs(root, "cat /etc/os-release") == OS_RELEASE
    shadow = debugfs(root, "stat /etc/shadow")
    assert "Mode:  0640" in shadow and "Group:    42" in shadow
    assert "Mode:  04755" in debugfs(root, "stat /usr/bin/su")
    assert "Mode:  01777" in debugfs(root, "stat /tmp")
    assert 'Fast link dest: "usr/bin"' in debugfs(root, "stat /bin")
    # /home and /srv are empty mount points in the root.
    for d in ("/home", "/srv"):
        entries = debugfs(root, f"ls -p {d}").split()  # "/inode/mode/uid/gid/name/size/"
        assert {e.split("/")[5] for e in entries} == {".", ".."}

    home = extract(out, ext4_disk.partitions[3], base_dir / "x-home.ext4")
    e2fsck_ok(home)
    assert debugfs(home, "cat /user/file") == HOME_FILE
    assert "User:  1000" in debugfs(home, "stat /user/file")
    srv = extract(out, ext4_disk.partitions[4], base_dir / "x-srv.ext4")
    e2fsck_ok(srv)
    assert debugfs(srv, "cat /x") == SRV_FILE

    swap = extract(out, ext4_disk.partitions[5], base_dir / "x-swap")
    assert blkid_type(swap) == "swap"

    esp = extract(out, ext4_disk.partitions[1], base_dir / "x-esp.vfat")
    assert blkid_type(esp) == "vfat"
    sh(tool("fsck.vfat"), "-n", str(esp))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    assert sh("mtype", "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI", env=env).stdout == "MZ fake efi binary"
    assert sh("mtype", "-i", str(esp), "::/loader/loader.conf", env=env).stdout == "timeout 3\n"

    # The tree is back as it was, nothing stashed is left behind.
    assert (tree / "home/user/file").read_text() == HOME_FILE
    assert (tree / "srv/x").read_text() == SRV_FILE
    assert not [p for p in tree.parent.iterdir() if "mkosi-stash" in p.name]
    assert ext4_disk.images["root"].exists() and ext4_disk.images["esp"].exists()


def test_ext4_systemd_dissect(ext4_disk: disk.DiskResult) -> None:
    proc = sh(tool("systemd-dissect"), "--no-pager", "--no-legend", str(ext4_disk.output))
    text = proc.stdout
    assert "ID=mkosi-test" in text
    for designator in ("root", "home", "srv", "esp", "swap"):
        assert any(line.split()[1:2] == [designator] for line in text.splitlines() if line.strip()), designator
    assert not loops_for(ext4_disk.output)


def test_bmaptool_copy(ext4_disk: disk.DiskResult, base_dir: Path) -> None:
    bmap_path = base_dir / "ext4.bmap"
    bmap.write_bmap(ext4_disk.output, bmap_path)
    copy = base_dir / "ext4-copy.raw"
    sh(tool("bmaptool"), "copy", "--bmap", str(bmap_path), str(ext4_disk.output), str(copy))
    sh("cmp", str(ext4_disk.output), str(copy))
    copy.unlink()


def test_qcow2(ext4_disk: disk.DiskResult, base_dir: Path) -> None:
    q = disk.qcow2_convert(ext4_disk.output, base_dir / "ext4.qcow2")
    info = json.loads(sh(tool("qemu-img"), "info", "--output=json", str(q)).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == ext4_disk.output.stat().st_size
    sh(tool("qemu-img"), "compare", "-f", "raw", "-F", "qcow2", str(ext4_disk.output), str(q))
    q.unlink()


def test_reproducible(base_dir: Path, tree: Path, esp_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = []
    uuids = []
    for n in (1, 2):
        spec = disk.DiskSpec(
            tree=tree,
            output=base_dir / f"repro{n}.raw",
            workspace=base_dir / f"ws-repro{n}",
            arch=ARCH,
            root_size=64 * MiB,
            home_size=32 * MiB,
            esp_size=64 * MiB,
            esp_tree=esp_tree,
        )
        r = disk.build_disk(spec)
        uuids.append([p.uuid for p in r.partitions])
        digests.append(hashlib.sha256(r.output.read_bytes()).hexdigest())
        r.output.unlink()
    assert uuids[0] == uuids[1]
    assert digests[0] == digests[1]


def test_sector_size_4096(base_dir: Path, tree: Path) -> None:
    spec = _spec(base_dir, tree, "s4k", root_fs="squashfs", esp_size=64 * MiB, sector_size=4096, first_lba=256)
    r = disk.build_disk(spec)
    dev = sh("losetup", "--sector-size", "4096", "--show", "--find", str(r.output)).stdout.strip()
    try:
        table = json.loads(sh(tool("sfdisk"), "--json", dev).stdout)["partitiontable"]
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
    assert table["sectorsize"] == 4096
    assert table["firstlba"] == 256
    for entry, p in zip(table["partitions"], r.partitions):
        assert entry["start"] * 4096 == p.offset
        assert uuid.UUID(entry["type"]) == p.type_uuid


# ---------------------------------------------------------------------------------------------
# xfs


def test_xfs_protofile(base_dir: Path, tree: Path) -> None:
    r = disk.build_disk(_spec(base_dir, tree, "xfs", root_fs="xfs", root_size=320 * MiB))
    assert r.xfs_population == "protofile"
    check_table(r.output, r.partitions)
    root = extract(r.output, r.partitions[0], base_dir / "x-root.xfs")
    sh(tool("xfs_repair"), "-n", str(root))
    with RoLoopMount(root, "xfs") as mnt:
        check_tree_in_mount(mnt)
    assert not loops_for(root)


def test_xfs_loop_fallback(base_dir: Path) -> None:
    tree = _make_tree(base_dir / "hardlinks")
    os.link(tree / "usr/bin/true", tree / "usr/bin/also-true")
    r = disk.build_disk(_spec(base_dir, tree, "xfs-hl", root_fs="xfs", root_size=320 * MiB))
    assert r.xfs_population == "loop-mount"
    root = extract(r.output, r.partitions[0], base_dir / "x-root-hl.xfs")
    sh(tool("xfs_repair"), "-n", str(root))
    with RoLoopMount(root, "xfs") as mnt:
        check_tree_in_mount(mnt)
        assert os.lstat(mnt / "usr/bin/true").st_ino == os.lstat(mnt / "usr/bin/also-true").st_ino
    assert not loops_for(r.images["root"])
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(base_dir) in line]


# ---------------------------------------------------------------------------------------------
# btrfs


def test_btrfs(base_dir: Path, tree: Path) -> None:
    r = disk.build_disk(_spec(base_dir, tree, "btrfs", root_fs="btrfs", compress_fs="zstd", minimize=True))
    check_table(r.output, r.partitions)
    assert r.filesystems["root"] == "btrfs"
    from mkosi.output.filesystems import btrfs_mkfs_supports_compress

    if not btrfs_mkfs_supports_compress():
        assert r.mount_options["root"] == ["compress=zstd"]
    root = extract(r.output, r.partitions[0], base_dir / "x-root.btrfs")
    sh(tool("btrfs"), "check", "--readonly", str(root))
    with RoLoopMount(root, "btrfs") as mnt:
        check_tree_in_mount(mnt)


# ---------------------------------------------------------------------------------------------
# squashfs with signed verity


def test_squashfs_signed_verity(base_dir: Path, tree: Path, signing: tuple[Path, Path]) -> None:
    key, cert = signing
    r = disk.build_disk(
        _spec(base_dir, tree, "sqfs", root_fs="squashfs", verity="signed", verity_key=key, verity_cert=cert)
    )
    parts = check_table(r.output, r.partitions)
    assert [p.role for p in r.partitions] == ["root", "root-verity", "root-verity-sig"]
    assert [uuid.UUID(e["type"]) for e in parts] == [
        gpt.type_uuid("root", ARCH),
        gpt.type_uuid("root-verity", ARCH),
        gpt.type_uuid("root-verity-sig", ARCH),
    ]
    assert all(e.get("attrs") == "GUID:60" for e in parts)
    roothash = r.roothash
    assert roothash is not None and len(roothash) == 64
    assert uuid.UUID(parts[0]["uuid"]) == uuid.UUID(roothash[:32])
    assert uuid.UUID(parts[1]["uuid"]) == uuid.UUID(roothash[32:])

    data = extract(r.output, r.partitions[0], base_dir / "x-root.sqfs")
    hashes = extract(r.output, r.partitions[1], base_dir / "x-root.verity")
    # The partition is larger than the squashfs image; verity covers the image's blocks.
    sh(tool("veritysetup"), "verify", str(r.images["root"]), str(hashes), roothash)
    sh(tool("veritysetup"), "verify", str(data), str(hashes), roothash)
    bad = "0" * 64
    assert subprocess.run([tool("veritysetup"), "verify", str(data), str(hashes), bad]).returncode != 0

    listing = sh(tool("unsquashfs"), "-lls", str(data)).stdout
    assert "squashfs-root/etc/os-release" in listing
    assert sh(tool("unsquashfs"), "-cat", str(data), "etc/os-release").stdout == OS_RELEASE
    assert sh(tool("unsquashfs"), "-cat", str(data), "home/user/file").stdout == HOME_FILE

    blob = extract(r.output, r.partitions[2], base_dir / "x-root.verity-sig").read_bytes()
    assert len(blob) % 4096 == 0
    obj = verity.parse_signature_blob(blob)
    assert obj["rootHash"] == roothash
    assert obj["certificateFingerprint"] == verity.certificate_fingerprint(cert)
    assert r.signature is not None
    sig = base_dir / "roothash.p7s"
    sig.write_bytes(r.signature)
    content = base_dir / "roothash.txt"
    content.write_text(roothash)
    sh(
        "openssl", "smime", "-verify", "-binary", "-inform", "der", "-in", str(sig),
        "-content", str(content), "-certfile", str(cert), "-noverify", "-out", os.devnull,
    )  # fmt: skip


def test_usr_only_verity(base_dir: Path, tree: Path) -> None:
    r = disk.build_disk(_spec(base_dir, tree, "usr", root_fs="ext4", usr_only=True, verity="yes", minimize=True))
    parts = check_table(r.output, r.partitions)
    assert [uuid.UUID(e["type"]) for e in parts] == [gpt.type_uuid("usr", ARCH), gpt.type_uuid("usr-verity", ARCH)]
    assert r.usrhash is not None and r.roothash is None
    data = extract(r.output, r.partitions[0], base_dir / "x-usr.ext4")
    hashes = extract(r.output, r.partitions[1], base_dir / "x-usr.verity")
    sh(tool("veritysetup"), "verify", str(r.images["usr"]), str(hashes), r.usrhash)
    sh(tool("veritysetup"), "verify", str(data), str(hashes), r.usrhash)
    img = r.images["usr"]
    e2fsck_ok(img)
    assert debugfs(img, "cat /lib/os-release") == OS_RELEASE
    assert "Mode:  04755" in debugfs(img, "stat /bin/su")
    assert img.stat().st_size < 32 * MiB  # minimized


# ---------------------------------------------------------------------------------------------
# LUKS


def test_luks(base_dir: Path, tree: Path) -> None:
    passfile = base_dir / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")  # the trailing newline is not part of the passphrase
    os.chmod(passfile, 0o600)
    keyfile = base_dir / "keyfile"
    keyfile.write_text(PASSPHRASE)
    wrong = base_dir / "wrong"
    wrong.write_text("wrong")
    r = disk.build_disk(
        _spec(
            base_dir,
            tree,
            "luks",
            root_fs="ext4",
            root_size=48 * MiB,
            home_size=32 * MiB,
            encrypt="all",
            passphrase_file=passfile,
            luks_kdf=luks.KdfOptions(pbkdf="pbkdf2", force_iterations=1000),
        )
    )
    check_table(r.output, r.partitions)
    assert set(r.luks_uuids) == {"root", "home"}
    checks = {"root": ("/etc/os-release", OS_RELEASE), "home": ("/user/file", HOME_FILE)}
    for p in r.partitions:
        part = extract(r.output, p, base_dir / f"x-luks-{p.role}")
        sh("cryptsetup", "isLuks", str(part))
        assert sh("cryptsetup", "luksUUID", str(part)).stdout.strip() == r.luks_uuids[p.role]
        sh("cryptsetup", "open", "--test-passphrase", "--key-file", str(keyfile), str(part))
        bad = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", str(wrong), str(part)])
        assert bad.returncode != 0
        plain = base_dir / f"x-luks-{p.role}.plain"
        luks_decrypt(part, keyfile, plain)
        e2fsck_ok(plain)
        path, content = checks[p.role]
        assert debugfs(plain, f"cat {path}") == content
        if "device-mapper" in Path("/proc/misc").read_text():
            name = f"mkosi-test-{p.role}-{os.getpid()}"
            sh("cryptsetup", "open", "--readonly", "--key-file", str(keyfile), str(part), name)
            try:
                e2fsck_ok(Path(f"/dev/mapper/{name}"))
            finally:
                subprocess.run(["cryptsetup", "close", name], check=False)


def test_luks_data_only(base_dir: Path, tree: Path) -> None:
    passfile = base_dir / "passphrase-data"
    passfile.write_text(PASSPHRASE)
    os.chmod(passfile, 0o600)
    r = disk.build_disk(
        _spec(
            base_dir,
            tree,
            "luks-data",
            root_fs="squashfs",
            home_size=32 * MiB,
            srv_size=32 * MiB,
            encrypt="data",
            passphrase_file=passfile,
            luks_kdf=luks.KdfOptions(pbkdf="pbkdf2", force_iterations=1000),
        )
    )
    assert [p.role for p in r.partitions] == ["root", "home", "srv"]
    assert set(r.luks_uuids) == {"home", "srv"}
    root = extract(r.output, r.partitions[0], base_dir / "x-luks-data-root")
    assert blkid_type(root) == "squashfs"
    for p in r.partitions[1:]:
        part = extract(r.output, p, base_dir / f"x-luks-data-{p.role}")
        assert blkid_type(part) == "crypto_LUKS"
        sh("cryptsetup", "open", "--test-passphrase", "--key-file", str(passfile), str(part))


# ---------------------------------------------------------------------------------------------
# /var and /var/tmp partitions (VarSize=, TmpSize=)


@pytest.fixture(scope="module")
def var_disk(base_dir: Path) -> tuple[disk.DiskResult, Path]:
    tree = _make_tree(base_dir / "var-tree")
    (tree / "var/tmp").mkdir()
    (tree / "var/tmp/scratch").write_text("scratch\n")
    (tree / "etc/fstab").write_text("# the image's own line\n/dev/sdz1 /mnt ext4 noauto 0 0")
    spec = _spec(base_dir, tree, "var", root_fs="ext4", root_size=64 * MiB, var_size=48 * MiB, tmp_size=32 * MiB)
    return disk.build_disk(spec), tree


def test_var_and_var_tmp_partitions(var_disk: tuple[disk.DiskResult, Path], base_dir: Path) -> None:
    result, tree = var_disk
    parts = check_table(result.output, result.partitions)
    by_role = {p.role: p for p in result.partitions}
    assert [p.role for p in result.partitions] == ["root", "tmp", "var"]
    types = {p["name"]: uuid.UUID(p["type"]) for p in parts}
    assert types["var"] == uuid.UUID("4d21b016-b534-45c2-a9fb-5c16e091fd2d")
    assert types["tmp"] == uuid.UUID("7ec6f557-3bc5-4aca-b293-16ef5df639d1")
    assert by_role["var"].size == 48 * MiB and by_role["tmp"].size == 32 * MiB

    root = extract(result.output, by_role["root"], base_dir / "x-var-root.ext4")
    e2fsck_ok(root)
    # The root keeps an empty /var mount point and an fstab that mounts both by their labels.
    assert {e.split("/")[5] for e in debugfs(root, "ls -p /var").split()} == {".", ".."}
    assert debugfs(root, "cat /etc/fstab").splitlines() == [
        "# the image's own line", "/dev/sdz1 /mnt ext4 noauto 0 0",
        "PARTLABEL=var /var ext4 defaults 0 2", "PARTLABEL=tmp /var/tmp ext4 defaults 0 2"]
    var = extract(result.output, by_role["var"], base_dir / "x-var.ext4")
    e2fsck_ok(var)
    assert debugfs(var, "cat /log/app.log") == "log\n"
    assert {e.split("/")[5] for e in debugfs(var, "ls -p /tmp").split()} == {".", ".."}
    tmp = extract(result.output, by_role["tmp"], base_dir / "x-var-tmp.ext4")
    e2fsck_ok(tmp)
    assert debugfs(tmp, "cat /scratch") == "scratch\n"
    # The tree is as it was.
    assert (tree / "var/tmp/scratch").read_text() == "scratch\n" and (tree / "var/log/app.log").is_file()
    assert (tree / "etc/fstab").read_text() == "# the image's own line\n/dev/sdz1 /mnt ext4 noauto 0 0"
    assert not any(p.name.endswith("-mkosi-stash") for p in base_dir.iterdir())
