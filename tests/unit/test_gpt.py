"""GPT type table, layout, sfdisk script, deterministic UUIDs, sparse copy, verity signature blob."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Optional

import pytest

from mkosi.errors import MkosiError
from mkosi.output import disk, gpt, verity
from mkosi.run import find_tool
from tests.markers import needs_tools

MiB = 1024 * 1024

# Spot checks against the Discoverable Partitions Specification's table.
SPEC_VALUES = [
    ("root", "x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
    ("usr", "x86-64", "8484680c-9521-48c6-9c11-b0720656f69e"),
    ("root-verity", "x86-64", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
    ("usr-verity", "x86-64", "77ff5f63-e7b6-4633-acf4-1565b864c0e6"),
    ("root-verity-sig", "x86-64", "41092b05-9fc8-4523-994f-2def0408b176"),
    ("usr-verity-sig", "x86-64", "e7bb33fb-06cf-4e81-8273-e543b413e2e2"),
    ("root", "x86", "44479540-f297-41b2-9af7-d131d5f0458a"),
    ("usr-verity-sig", "x86", "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0"),
    ("root", "arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae"),
    ("root-verity", "arm64", "df3300ce-d69f-4c92-978c-9bfb0f38d820"),
    ("root", "arm", "69dad710-2ce4-4e3c-b16c-21a1d49abed3"),
    ("usr", "arm", "7d0359a3-02b3-4f0a-865c-654403e70625"),
    ("root", "riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224"),
    ("root-verity-sig", "riscv64", "efe0f087-ea8d-4469-821a-4c2a96a8386a"),
    ("root", "ppc64-le", "c31c45e6-3f39-412e-80fb-4809c4980599"),
    ("usr-verity", "ppc64-le", "ee2b9983-21e8-4153-86d9-b6901a54d1ce"),
    ("root", "s390x", "5eead9a9-fe09-4a1e-a1d7-520d00531306"),
    ("usr", "s390x", "8a4f5770-50aa-4ed3-874a-99b710db6fea"),
    ("usr-verity-sig", "s390x", "3f324816-667b-46ae-86ee-9b0c0c6c11b4"),
]

GENERIC_VALUES = [
    ("esp", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ("xbootldr", "bc13c2ff-59e6-4262-a352-b275fd6f7172"),
    ("swap", "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
    ("home", "933ac7e1-2eb4-4f13-b844-0e14e2aef915"),
    ("srv", "3b8f8425-20e0-4f3b-907f-1a25a76f98e8"),
    ("bios-boot", "21686148-6449-6e6f-744e-656564454649"),
]


@pytest.mark.parametrize(("role", "arch", "expected"), SPEC_VALUES)
def test_arch_type_uuids(role: str, arch: str, expected: str) -> None:
    assert gpt.type_uuid(role, arch) == uuid.UUID(expected)
    assert gpt.role_of_type(expected) == (role, arch)


@pytest.mark.parametrize(("role", "expected"), GENERIC_VALUES)
def test_generic_type_uuids(role: str, expected: str) -> None:
    assert gpt.type_uuid(role) == uuid.UUID(expected)
    assert gpt.type_uuid(role, "arm64") == uuid.UUID(expected)
    assert gpt.role_of_type(uuid.UUID(expected)) == (role, None)


def test_type_table_is_complete_and_unique() -> None:
    seen: set[uuid.UUID] = set()
    for arch in gpt.ARCHITECTURES:
        for role in gpt.ARCH_ROLES:
            t = gpt.type_uuid(role, arch)
            assert t not in seen
            seen.add(t)
    for role in gpt.GENERIC_TYPES:
        t = gpt.type_uuid(role)
        assert t not in seen
        seen.add(t)
    assert len(seen) == 7 * 6 + len(gpt.GENERIC_TYPES)


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("amd64", "x86-64"),
        ("x86_64", "x86-64"),
        ("i386", "x86"),
        ("i686", "x86"),
        ("arm64", "arm64"),
        ("aarch64", "arm64"),
        ("armhf", "arm"),
        ("armv7l", "arm"),
        ("riscv64", "riscv64"),
        ("ppc64el", "ppc64-le"),
        ("ppc64le", "ppc64-le"),
        ("s390x", "s390x"),
        ("X86-64", "x86-64"),
    ],
)
def test_normalize_arch(name: str, arch: str) -> None:
    assert gpt.normalize_arch(name) == arch


def test_dpkg_name_gives_same_type() -> None:
    assert gpt.type_uuid("root", "amd64") == gpt.type_uuid("root", "x86_64") == gpt.type_uuid("root", "x86-64")


def test_unknown_arch_and_role() -> None:
    with pytest.raises(MkosiError):
        gpt.normalize_arch("mips")
    with pytest.raises(MkosiError):
        gpt.type_uuid("root", "sparc")
    with pytest.raises(MkosiError):
        gpt.type_uuid("nonsense", "x86-64")


# ---------------------------------------------------------------------------------------------
# UUIDs


def test_derive_uuid_is_deterministic_v4() -> None:
    a = gpt.derive_uuid(b"key", "partition", "root")
    b = gpt.derive_uuid(b"key", "partition", "root")
    assert a == b
    assert a.version == 4
    assert a.variant == uuid.RFC_4122
    assert gpt.derive_uuid(b"key", "partition", "home") != a
    assert gpt.derive_uuid(b"other", "partition", "root") != a
    # Parts are separated, so their boundaries matter.
    assert gpt.derive_uuid(b"key", "ab", "c") != gpt.derive_uuid(b"key", "a", "bc")


def test_make_uuid_random_without_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert gpt.resolve_seed(None) is None
    assert gpt.make_uuid(None, "x") != gpt.make_uuid(None, "x")


def test_make_uuid_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = gpt.make_uuid(None, "disk")
    assert a == gpt.make_uuid(None, "disk")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    assert gpt.make_uuid(None, "disk") != a


def test_seed_forms() -> None:
    u = uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100")
    assert gpt.resolve_seed(u) == u.bytes
    assert gpt.resolve_seed(str(u)) == u.bytes
    assert gpt.resolve_seed("plain text") == b"plain text"
    assert gpt.resolve_seed(b"raw") == b"raw"


# ---------------------------------------------------------------------------------------------
# Layout


def test_align_up() -> None:
    assert gpt.align_up(0, MiB) == 0
    assert gpt.align_up(1, MiB) == MiB
    assert gpt.align_up(MiB, MiB) == MiB
    assert gpt.align_up(MiB + 1, 4096) == MiB + 4096


def _parts(tmp_path: Path) -> list[gpt.Partition]:
    src = tmp_path / "root.img"
    with open(src, "wb") as f:
        f.truncate(5 * MiB + 100)
    return [
        gpt.Partition("bios-boot", "bios", size=MiB),
        gpt.Partition("esp", "esp", size=33 * MiB + 1),
        gpt.Partition("root", "root-x86-64", source=src, read_only=True),
        gpt.Partition("swap", "swap", size=8 * MiB),
    ]


@pytest.mark.parametrize("first_lba", [34, 2048, 4096])
def test_plan_alignment(tmp_path: Path, first_lba: int) -> None:
    placed, disk_size = gpt.plan(_parts(tmp_path), first_lba=first_lba, arch="x86-64", seed="s")
    assert [p.number for p in placed] == [1, 2, 3, 4]
    assert placed[0].offset == max(MiB, gpt.align_up(first_lba * 512, MiB))
    prev_end = first_lba * 512
    for p in placed:
        assert p.offset % MiB == 0
        assert p.size % 4096 == 0
        assert p.offset >= prev_end
        prev_end = p.end
    assert placed[1].size == 33 * MiB + 4096
    assert placed[2].size == 5 * MiB + 4096  # the source image, rounded up to 4 KiB
    assert disk_size % MiB == 0
    # Room for the backup GPT (entry array + header) after the last partition.
    assert disk_size - placed[-1].end >= 128 * 128 + 512


def test_plan_types_and_flags(tmp_path: Path) -> None:
    placed, _ = gpt.plan(_parts(tmp_path), arch="arm64", seed="s")
    assert placed[2].type_uuid == uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae")
    assert placed[2].attributes == 1 << 60
    assert placed[0].type_uuid == uuid.UUID("21686148-6449-6e6f-744e-656564454649")
    flags = gpt.Partition("root", "r", size=MiB, read_only=True, growfs=True, no_auto=True).attributes()
    assert flags == (1 << 59) | (1 << 60) | (1 << 63)


def test_plan_deterministic_uuids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a, _ = gpt.plan(_parts(tmp_path), arch="x86-64", seed="seed-1")
    b, _ = gpt.plan(_parts(tmp_path), arch="x86-64", seed="seed-1")
    c, _ = gpt.plan(_parts(tmp_path), arch="x86-64", seed="seed-2")
    d, _ = gpt.plan(_parts(tmp_path), arch="x86-64")
    assert [p.uuid for p in a] == [p.uuid for p in b]
    assert [p.uuid for p in a] != [p.uuid for p in c]
    assert len({p.uuid for p in a}) == len(a)
    assert [p.uuid for p in d] != [p.uuid for p in a]


def test_plan_explicit_uuid_and_type(tmp_path: Path) -> None:
    fixed = uuid.UUID("12345678-1234-4234-8234-123456789abc")
    t = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
    placed, _ = gpt.plan([gpt.Partition("custom", "data", size=MiB, uuid=fixed, type_uuid=t)])
    assert placed[0].uuid == fixed
    assert placed[0].type_uuid == t


def test_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(MkosiError):
        gpt.plan([gpt.Partition("root", "r")], arch="x86-64")
    with pytest.raises(MkosiError):
        gpt.plan([gpt.Partition("root", "x" * 37, size=MiB)], arch="x86-64")
    with pytest.raises(MkosiError):
        gpt.plan([gpt.Partition("root", 'bad"quote', size=MiB)], arch="x86-64")
    with pytest.raises(MkosiError):
        gpt.plan([gpt.Partition("esp", "esp", size=MiB)], first_lba=10)
    src = tmp_path / "big.img"
    src.write_bytes(b"x" * 8192)
    with pytest.raises(MkosiError):
        gpt.plan([gpt.Partition("esp", "esp", source=src, size=4096)])


def test_sfdisk_attrs() -> None:
    assert gpt.sfdisk_attrs(1 << 60) == "GUID:60"
    assert gpt.sfdisk_attrs((1 << 59) | (1 << 60) | (1 << 63)) == "GUID:59,60,63"
    assert gpt.sfdisk_attrs((1 << 2) | (1 << 60)) == "LegacyBIOSBootable GUID:60"
    with pytest.raises(MkosiError):
        gpt.sfdisk_attrs(1 << 10)


def test_sfdisk_script(tmp_path: Path) -> None:
    placed, _ = gpt.plan(_parts(tmp_path), arch="x86-64", seed="s")
    disk = uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    script = gpt.sfdisk_script(placed, disk_uuid=disk, first_lba=2048)
    lines = script.splitlines()
    assert lines[0] == "label: gpt"
    assert "label-id: AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE" in lines
    assert "first-lba: 2048" in lines
    assert "sector-size: 512" in lines
    entries = [line for line in lines if line.startswith("start=")]
    assert len(entries) == 4
    assert entries[0].startswith("start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649")
    assert 'name="root-x86-64"' in entries[2]
    assert 'attrs="GUID:60"' in entries[2]
    assert "attrs" not in entries[1]
    assert f"uuid={str(placed[2].uuid).upper()}" in entries[2]


# ---------------------------------------------------------------------------------------------
# Copying and assembly (no root needed: sfdisk works on plain files)


def _holes_supported(path: Path) -> bool:
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    with open(path, "rb") as f:
        try:
            return os.lseek(f.fileno(), 0, os.SEEK_HOLE) == 0
        except OSError:
            return False


def test_copy_sparse(tmp_path: Path) -> None:
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(6 * MiB)
        f.seek(0)
        f.write(b"A" * 5000)
        f.seek(2 * MiB)
        f.write(bytes(MiB))  # explicit zeros: data extent, but must not be written
        f.seek(3 * MiB + 70000)
        f.write(b"B" * 100)
        f.seek(6 * MiB - 10)
        f.write(b"C" * 10)
    dst = tmp_path / "dst.img"
    with open(dst, "wb") as f:
        f.truncate(10 * MiB)
    fd = os.open(dst, os.O_WRONLY)
    try:
        written = gpt.copy_sparse(src, fd, MiB)
    finally:
        os.close(fd)
    data = dst.read_bytes()
    assert data[MiB : 7 * MiB] == src.read_bytes()
    assert data[:MiB] == bytes(MiB)
    assert written < 4 * 64 * 1024  # only the grains holding non-zero bytes
    if _holes_supported(tmp_path / "probe"):
        assert dst.stat().st_blocks * 512 < 2 * MiB


@needs_tools("sfdisk")
def test_assemble(tmp_path: Path) -> None:
    parts = _parts(tmp_path)
    src = parts[2].source
    assert src is not None
    with open(src, "r+b") as f:
        f.write(b"ROOTDATA")
        f.seek(4 * MiB)
        f.write(b"MORE")
    out = tmp_path / "disk.raw"
    disk = uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    placed = gpt.assemble(out, parts, first_lba=2048, disk_uuid=disk, arch="x86-64", seed="s")
    table = json.loads(subprocess.check_output([str(find_tool("sfdisk")), "--json", str(out)]))
    pt = table["partitiontable"]
    assert pt["label"] == "gpt"
    assert pt["id"].lower() == str(disk)
    assert pt["firstlba"] == 2048
    assert len(pt["partitions"]) == 4
    for entry, p in zip(pt["partitions"], placed):
        assert entry["start"] * 512 == p.offset
        assert entry["size"] * 512 == p.size
        assert uuid.UUID(entry["type"]) == p.type_uuid
        assert uuid.UUID(entry["uuid"]) == p.uuid
        assert entry["name"] == p.label
    assert pt["partitions"][2]["attrs"] == "GUID:60"
    with open(out, "rb") as f:
        f.seek(placed[2].offset)
        assert f.read(8) == b"ROOTDATA"
        f.seek(placed[2].offset + 4 * MiB)
        assert f.read(4) == b"MORE"
    assert out.stat().st_size % MiB == 0


# ---------------------------------------------------------------------------------------------
# Verity root hashes and the signature partition


ROOTHASH = "4f" * 16 + "a1" * 16


def _key_and_cert(tmp_path: Path) -> tuple[Path, Path]:
    from mkosi.boot.signing import generate_secure_boot_keys

    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    generate_secure_boot_keys("mkosi test", 3650, key_path, cert_path)
    return key_path, cert_path


def test_roothash_uuids() -> None:
    first, last = verity.roothash_uuids(ROOTHASH)
    assert first == str(uuid.UUID("4f" * 16))
    assert last == str(uuid.UUID("a1" * 16))
    with pytest.raises(MkosiError):
        verity.roothash_uuids("abc")


def test_signature_blob(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key, cert = _key_and_cert(tmp_path)
    sig = verity.sign_roothash(ROOTHASH, key, cert)
    assert sig[0] == 0x30  # DER SEQUENCE
    blob = verity.signature_partition_blob(ROOTHASH, sig, cert)
    assert len(blob) % 4096 == 0
    text, _, padding = blob.partition(b"\0")
    assert set(padding) <= {0}
    obj = json.loads(text)
    assert set(obj) == {"rootHash", "certificateFingerprint", "signature"}
    assert obj["rootHash"] == ROOTHASH
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert obj["certificateFingerprint"] == hashlib.sha256(der).hexdigest()
    assert base64.b64decode(obj["signature"]) == sig
    assert verity.parse_signature_blob(blob)["rootHash"] == ROOTHASH


def test_signature_blob_padding_boundary(tmp_path: Path) -> None:
    _, cert = _key_and_cert(tmp_path)
    blob = verity.signature_partition_blob(ROOTHASH, b"x" * 3100, cert)
    # The JSON is over 4096 bytes here, so it takes two blocks and still ends in NUL.
    assert len(blob) == 8192
    assert blob.endswith(b"\0")


@needs_tools("openssl")
def test_signature_verifies_with_openssl(tmp_path: Path) -> None:
    key, cert = _key_and_cert(tmp_path)
    sig = tmp_path / "sig.p7s"
    content = tmp_path / "roothash"
    content.write_text(ROOTHASH)
    for include in (False, True):
        sig.write_bytes(verity.sign_roothash(ROOTHASH, key, cert, include_certificate=include))
        argv = [
            "openssl",
            "smime",
            "-verify",
            "-binary",
            "-inform",
            "der",
            "-in",
            str(sig),
            "-content",
            str(content),
            "-certfile",
            str(cert),
            "-noverify",
            "-out",
            os.devnull,
        ]
        subprocess.run(argv, check=True, capture_output=True)
        # A different root hash must not verify.
        content.write_text("00" + ROOTHASH[2:])
        assert subprocess.run(argv, capture_output=True).returncode != 0
        content.write_text(ROOTHASH)


# ---------------------------------------------------------------------------------------------
# Helpers of the disk back end that need no root: xfs protofile, timestamp fixups, passphrase
# files, moving /home and /srv aside.


def _small_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/os-release").write_text("ID=test\n")
    (tree / "tmp").mkdir()
    os.chmod(tree / "tmp", 0o1777)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/su").write_text("x")
    os.chmod(tree / "usr/bin/su", 0o4755)
    os.symlink("usr/bin", tree / "bin")
    os.mkfifo(tree / "fifo", 0o600)
    return tree


@pytest.mark.parametrize("text,version,directory", [
    ("mkfs.xfs version 7.2.0\n", (7, 2, 0), True),  # Debian forky and sid
    ("mkfs.xfs version 7.0.1\n", (7, 0, 1), False),  # -p DIRECTORY, but hard links not yet right
    ("mkfs.xfs version 6.13.0\n", (6, 13, 0), False),  # trixie
    ("mkfs.xfs version 6.1.0\n", (6, 1, 0), False),  # bookworm
    ("mkfs.xfs: no such option\n", (0,), False),
])
def test_parse_mkfs_xfs_version(text: str, version: tuple[int, ...], directory: bool) -> None:
    from mkosi.output import filesystems as fs

    assert fs.parse_mkfs_xfs_version(text) == version
    assert (version >= fs.XFS_DIRECTORY_POPULATION) == directory


@pytest.mark.parametrize("text,version", [
    ("mkfs.btrfs, part of btrfs-progs v7.3\n-EXPERIMENTAL -INJECT +ZSTD\n", (7, 3)),  # sid
    ("mkfs.btrfs, part of btrfs-progs v7.1\n", (7, 1)),  # forky: no DETERMINISTIC_SEED yet
    ("mkfs.btrfs, part of btrfs-progs v6.14\n", (6, 14)),  # trixie
    ("mkfs.btrfs, part of btrfs-progs v6.2\n", (6, 2)),  # bookworm
    ("btrfs-progs v6.6.3\n", (6, 6, 3)),
    ("", (0,)),
])
def test_parse_btrfs_progs_version(text: str, version: tuple[int, ...]) -> None:
    from mkosi.output import filesystems as fs

    assert fs.parse_btrfs_progs_version(text) == version


@needs_tools("mkfs.xfs", "mkfs.btrfs")
def test_mkfs_version_gates_read_the_real_programs() -> None:
    """The host's own mkfs.xfs and mkfs.btrfs print versions the parsers understand, and the gates agree."""
    from mkosi.output import filesystems as fs

    xfs = fs.parse_mkfs_xfs_version(subprocess.run(["mkfs.xfs", "-V"], capture_output=True, text=True).stdout)
    btrfs = fs.parse_btrfs_progs_version(subprocess.run(["mkfs.btrfs", "--version"], capture_output=True,
                                                        text=True).stdout)
    assert xfs != (0,) and btrfs != (0,)
    assert fs.xfs_mkfs_populates_from_directory() == (xfs >= fs.XFS_DIRECTORY_POPULATION)
    assert fs.btrfs_mkfs_is_deterministic() == (btrfs >= fs.BTRFS_DETERMINISTIC)


@pytest.mark.parametrize("epoch", ["1700000000", ""])
def test_an_old_mkfs_says_a_reproducible_build_will_not_be(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], epoch: str) -> None:
    from mkosi.output import filesystems as fs

    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    fs.warn_not_reproducible("btrfs", "mkfs.btrfs", "btrfs-progs", (7, 3), "the default tools tree")
    err = capsys.readouterr().err
    if epoch:
        assert "this btrfs file system will not be reproducible" in err
        assert "use btrfs-progs 7.3 or newer, e.g. through the default tools tree" in err
    else:
        assert err == "", "no warning when nobody asked for a reproducible build"


@needs_tools("mkfs.btrfs")
def test_make_btrfs_warns_with_an_epoch_when_its_mkfs_is_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from mkosi.output import filesystems as fs

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    fs.make_btrfs(_small_tree(tmp_path), tmp_path / "fs.img", 256 << 20, "root", seed="0" * 32)
    warned = "this btrfs file system will not be reproducible" in capsys.readouterr().err
    assert warned == (not fs.btrfs_mkfs_is_deterministic())


def test_xfs_protofile(tmp_path: Path) -> None:
    from mkosi.output import filesystems as fs

    tree = _small_tree(tmp_path)
    proto, entries = fs.xfs_protofile(tree)
    lines = proto.splitlines()
    uid, gid = os.getuid(), os.getgid()
    assert lines[0] and lines[1] == "0 0"
    assert lines[2].startswith("d--")
    assert f" bin l--777 {uid} {gid} usr/bin" in lines
    assert f"  os-release ---644 {uid} {gid} ./etc/os-release" in lines
    assert f" fifo p--600 {uid} {gid}" in lines
    assert f"   su -u-755 {uid} {gid} ./usr/bin/su" in lines
    assert f" tmp d--777 {uid} {gid}" in lines  # the sticky bit comes from xfs_db afterwards
    assert lines[-1] == "$"
    assert proto.count("$") == 1 + sum(1 for e in entries if e.rel and stat.S_ISDIR(e.st.st_mode))
    assert [e.rel for e in entries][:3] == ["", "bin", "etc"]

    cmds = fs.xfs_fixup_commands(entries).splitlines()
    i = cmds.index("path /tmp")
    assert cmds[i + 1] == "write core.mode 041777"
    st = os.lstat(tree / "etc/os-release")
    i = cmds.index("path /etc/os-release")
    assert cmds[i + 1] == f"write core.mtime.sec {(st.st_mtime_ns // 10**9 + 2**31) * 10**9 + st.st_mtime_ns % 10**9}"

    clamped = fs.xfs_fixup_commands(entries, epoch=1000).splitlines()
    i = clamped.index("path /etc/os-release")
    assert clamped[i + 1 : i + 5] == [
        f"write core.ctime.sec {(1000 + 2**31) * 10**9}",
        f"write v3.crtime.sec {(1000 + 2**31) * 10**9}",
        f"write core.mtime.sec {(1000 + 2**31) * 10**9}",
        f"write core.atime.sec {(1000 + 2**31) * 10**9}",
    ]


@pytest.mark.parametrize("kind", ["hardlink", "blank", "socket"])
def test_xfs_protofile_unsuitable(tmp_path: Path, kind: str) -> None:
    import socket

    from mkosi.output import filesystems as fs

    tree = _small_tree(tmp_path)
    if kind == "hardlink":
        os.link(tree / "etc/os-release", tree / "etc/os-release.link")
    elif kind == "blank":
        (tree / "etc/a file").write_text("")
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tree / "sock"))
        s.close()
    with pytest.raises(fs.ProtofileUnsuitable):
        fs.xfs_protofile(tree)


def test_ext4_clamp_commands(tmp_path: Path) -> None:
    from mkosi.output import filesystems as fs

    tree = _small_tree(tmp_path)
    os.utime(tree / "etc/os-release", (500, 500))
    script, skipped = fs.ext4_clamp_commands(tree, 1000)
    lines = script.splitlines()
    assert skipped == 0
    assert 'sif "/etc/os-release" atime @500' in lines
    assert 'sif "/etc/os-release" ctime @500' in lines
    assert not any(line.startswith('sif "/etc/os-release" mtime ') for line in lines)
    assert 'sif "/tmp" mtime @1000' in lines  # created now, clamped
    assert 'sif "/" ctime @1000' in lines


def test_read_passphrase(tmp_path: Path) -> None:
    from mkosi.output import luks

    f = tmp_path / "pass"
    f.write_bytes(b"secret\n")
    os.chmod(f, 0o600)
    assert luks.read_passphrase(f) == b"secret"
    f.write_bytes(b"secret\r\n")
    assert luks.read_passphrase(f) == b"secret"
    f.write_bytes(b"two\nlines\n")
    assert luks.read_passphrase(f) == b"two\nlines"
    f.write_bytes(b"\n")
    with pytest.raises(MkosiError):
        luks.read_passphrase(f)
    assert luks.KdfOptions(pbkdf="pbkdf2", force_iterations=1000).argv() == [
        "--pbkdf=pbkdf2",
        "--pbkdf-force-iterations=1000",
    ]


def test_split_out_dirs(tmp_path: Path) -> None:
    from mkosi.output import disk

    tree = _small_tree(tmp_path)
    (tree / "home/user").mkdir(parents=True)
    (tree / "home/user/file").write_text("hi")
    os.chmod(tree / "home", 0o711)
    ws = tmp_path / "ws"
    ws.mkdir()
    with disk.split_out_dirs(tree, ["home", "srv"], ws) as moved:
        assert (moved["home"] / "user/file").read_text() == "hi"
        assert list((tree / "home").iterdir()) == []
        assert stat.S_IMODE(os.stat(tree / "home").st_mode) == 0o711
        assert (tree / "srv").is_dir() and list(moved["srv"].iterdir()) == []
    assert (tree / "home/user/file").read_text() == "hi"
    assert not (tree / "srv").exists()
    assert not [p for p in tmp_path.iterdir() if "stash" in p.name]

    with pytest.raises(RuntimeError), disk.split_out_dirs(tree, ["home"], ws):
        raise RuntimeError("build failed")
    assert (tree / "home/user/file").read_text() == "hi"


def test_disk_spec_validation(tmp_path: Path) -> None:
    from mkosi.output import disk

    tree = _small_tree(tmp_path)
    (tmp_path / "etc-only/etc").mkdir(parents=True)

    def spec(tree: Path = tree, **kw: object) -> disk.DiskSpec:
        return disk.DiskSpec(tree=tree, output=tmp_path / "o.raw", workspace=tmp_path / "ws", **kw)  # type: ignore[arg-type]

    for bad in (
        spec(root_fs="ntfs"),
        spec(verity="maybe"),
        spec(verity="signed"),
        spec(encrypt="all"),
        spec(encrypt="all", passphrase_file=tmp_path / "p", verity="yes"),
        spec(tmp_path / "missing"),
        spec(usr_only=True, tree=tmp_path / "etc-only"),
    ):
        with pytest.raises(MkosiError):
            disk.build_disk(bad)


@needs_tools("mksquashfs", "sfdisk")
@pytest.mark.parametrize("bios_size, expected", [(None, 1024**2), (4 * 1024**2, 4 * 1024**2)])
def test_bios_boot_partition_size(tmp_path: Path, bios_size: Optional[int], expected: int) -> None:
    from mkosi.output import disk

    spec = disk.DiskSpec(tree=_small_tree(tmp_path), output=tmp_path / "o.raw", workspace=tmp_path / "ws",
                         root_fs="squashfs", bios_boot=True, bios_size=bios_size)
    result = disk.build_disk(spec)
    part = result.partition("bios-boot")
    assert part is not None and part.size == expected


def test_var_and_var_tmp_partitions_get_fstab_lines_in_mount_order() -> None:
    spec = disk.DiskSpec(tree=Path("/t"), output=Path("/o"), workspace=Path("/w"), var_size=1, tmp_size=2, home_size=3)
    assert disk.data_partition_sizes(spec) == [("tmp", "var/tmp", 2), ("var", "var", 1), ("home", "home", 3)]
    assert disk.fstab_lines(["tmp", "home", "var"], "xfs") == [
        "PARTLABEL=var /var xfs defaults 0 2", "PARTLABEL=tmp /var/tmp xfs defaults 0 2"]
    assert disk.fstab_lines(["home", "srv"], "ext4") == []   # found by systemd's discovery


def test_extra_fstab_lines_are_taken_back(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with disk.extra_fstab_lines(tmp_path, ["PARTLABEL=var /var ext4 defaults 0 2"]):
        assert (tmp_path / "etc/fstab").read_text() == "PARTLABEL=var /var ext4 defaults 0 2\n"
    assert not (tmp_path / "etc/fstab").exists()
    (tmp_path / "etc/fstab").write_text("mine")
    with disk.extra_fstab_lines(tmp_path, ["x"]):
        assert (tmp_path / "etc/fstab").read_text() == "mine\nx\n"
    assert (tmp_path / "etc/fstab").read_text() == "mine"
