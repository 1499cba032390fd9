"""GPT partition tables: the Discoverable Partitions type table, layout and assembly of disk images.

A disk image is assembled from ready-made per-partition images (file system images, verity hash
images, signature blobs): the layout is computed here, the partition table is written by sfdisk
onto a sparse image file, and every partition image is copied into the file at its offset
without loop devices, skipping holes and all-zero blocks so the result stays sparse.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import hmac
import os
import platform
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import output as output_of
from mkosi.run import run

MiB = 1024 * 1024
ALIGNMENT = MiB
# Partition sizes are rounded up to this so that every partition holds whole 4 KiB blocks.
SIZE_GRANULARITY = 4096
# A GPT partition entry array has 128 entries of 128 bytes.
GPT_ENTRY_ARRAY_BYTES = 128 * 128

# GPT partition attribute bits (Discoverable Partitions Specification, "Partition Attribute Flags").
GPT_FLAG_GROWFS = 59
GPT_FLAG_READ_ONLY = 60
GPT_FLAG_NO_AUTO = 63

ARCHITECTURES = ("x86-64", "x86", "arm64", "arm", "riscv64", "ppc64-le", "s390x")

# Architecture dependent types, per architecture:
# (root, usr, root-verity, usr-verity, root-verity-sig, usr-verity-sig).
_ARCH_TYPES: dict[str, tuple[str, str, str, str, str, str]] = {
    "x86-64": (
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "8484680c-9521-48c6-9c11-b0720656f69e",
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
        "41092b05-9fc8-4523-994f-2def0408b176",
        "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
    ),
    "x86": (
        "44479540-f297-41b2-9af7-d131d5f0458a",
        "75250d76-8cc6-458e-bd66-bd47cc81a812",
        "d13c5d3b-b5d1-422a-b29f-9454fdc89d76",
        "8f461b0d-14ee-4e81-9aa9-049b6fb97abd",
        "5996fc05-109c-48de-808b-23fa0830b676",
        "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0",
    ),
    "arm64": (
        "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "b0e01050-ee5f-4390-949a-9101b17104e9",
        "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
        "6db69de6-29f4-4758-a7a5-962190f00ce3",
        "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
    ),
    "arm": (
        "69dad710-2ce4-4e3c-b16c-21a1d49abed3",
        "7d0359a3-02b3-4f0a-865c-654403e70625",
        "7386cdf2-203c-47a9-a498-f2ecce45a2d6",
        "c215d751-7bcd-4649-be90-6627490a4c05",
        "42b0455f-eb11-491d-98d3-56145ba9d037",
        "d7ff812f-37d1-4902-a810-d76ba57b975a",
    ),
    "riscv64": (
        "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
        "beaec34b-8442-439b-a40b-984381ed097d",
        "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
        "8f1056be-9b05-47c4-81d6-be53128e5b54",
        "efe0f087-ea8d-4469-821a-4c2a96a8386a",
        "d2f9000a-7a18-453f-b5cd-4d32f77a7b32",
    ),
    "ppc64-le": (
        "c31c45e6-3f39-412e-80fb-4809c4980599",
        "15bb03af-77e7-4d4a-b12b-c0d084f7491c",
        "906bd944-4589-4aae-a4e4-dd983917446a",
        "ee2b9983-21e8-4153-86d9-b6901a54d1ce",
        "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6",
        "c8bfbd1e-268e-4521-8bba-bf314c399557",
    ),
    "s390x": (
        "5eead9a9-fe09-4a1e-a1d7-520d00531306",
        "8a4f5770-50aa-4ed3-874a-99b710db6fea",
        "b325bfbe-c7be-4ab8-8357-139e652d2f6b",
        "31741cc4-1a2a-4111-a581-e00b447d2d06",
        "c80187a5-73a3-491a-901a-017c3fa953e9",
        "3f324816-667b-46ae-86ee-9b0c0c6c11b4",
    ),
}

ARCH_ROLES = ("root", "usr", "root-verity", "usr-verity", "root-verity-sig", "usr-verity-sig")

GENERIC_TYPES: dict[str, str] = {
    "esp": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
    "xbootldr": "bc13c2ff-59e6-4262-a352-b275fd6f7172",
    "swap": "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
    "home": "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
    "srv": "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",
    "var": "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
    "tmp": "7ec6f557-3bc5-4aca-b293-16ef5df639d1",
    "linux-generic": "0fc63daf-8483-4772-8e79-3d69d8477de4",
    "bios-boot": "21686148-6449-6e6f-744e-656564454649",
}

ROLES = ARCH_ROLES + tuple(GENERIC_TYPES)

# Which flags the specification defines for which roles.
_READ_ONLY_ROLES = frozenset({*ARCH_ROLES, "home", "srv", "var", "tmp", "xbootldr"})
_GROWFS_ROLES = frozenset({"root", "usr", "home", "srv", "var", "tmp", "xbootldr"})
_NO_AUTO_ROLES = frozenset({*ARCH_ROLES, "home", "srv", "var", "tmp", "swap", "xbootldr"})

# Architecture names as used by dpkg, uname -m and RPM, mapped to the names used here (systemd's).
_ARCH_ALIASES: dict[str, str] = {
    # dpkg
    "amd64": "x86-64",
    "i386": "x86",
    "arm64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "riscv64": "riscv64",
    "ppc64el": "ppc64-le",
    "s390x": "s390x",
    # uname -m / rpm
    "x86_64": "x86-64",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv7hl": "arm",
    "armv6l": "arm",
    "armv5tel": "arm",
    "arm": "arm",
    "ppc64le": "ppc64-le",
    # ours
    "x86-64": "x86-64",
    "x86": "x86",
    "ppc64-le": "ppc64-le",
}


def normalize_arch(name: str) -> str:
    """Map a dpkg, uname or systemd architecture name to the name used in the type table."""
    key = name.strip().lower()
    arch = _ARCH_ALIASES.get(key)
    if arch is None:
        raise MkosiError(
            f"architecture '{name}' has no Discoverable Partitions type UUIDs here",
            hint="supported: " + ", ".join(ARCHITECTURES),
        )
    return arch


def host_arch() -> str:
    return normalize_arch(platform.machine())


def type_uuid(role: str, arch: str | None = None) -> uuid.UUID:
    """The partition type UUID for a role ("root", "usr-verity", "esp", ...) on an architecture.

    `arch` is only needed (and defaults to the host's) for the architecture dependent roles; it
    may be given in dpkg or uname spelling.
    """
    if role in GENERIC_TYPES:
        return uuid.UUID(GENERIC_TYPES[role])
    if role not in ARCH_ROLES:
        raise MkosiError(f"unknown partition role '{role}'", hint="known roles: " + ", ".join(ROLES))
    a = normalize_arch(arch) if arch is not None else host_arch()
    return uuid.UUID(_ARCH_TYPES[a][ARCH_ROLES.index(role)])


def role_of_type(type_id: Union[uuid.UUID, str]) -> tuple[str, str | None] | None:
    """Reverse lookup: (role, arch) for a known type UUID, arch None for generic types."""
    t = str(uuid.UUID(str(type_id)))
    for role, value in GENERIC_TYPES.items():
        if value == t:
            return (role, None)
    for arch, values in _ARCH_TYPES.items():
        if t in values:
            return (ARCH_ROLES[values.index(t)], arch)
    return None


# ---------------------------------------------------------------------------------------------
# Deterministic UUIDs


SeedLike = Union[str, bytes, uuid.UUID]


def resolve_seed(seed: SeedLike | None = None) -> bytes | None:
    """The key deterministic UUIDs are derived from, or None for random UUIDs.

    An explicit seed wins; otherwise a set SOURCE_DATE_EPOCH makes builds reproducible by
    deriving a key from it. Without either, UUIDs are random.
    """
    if seed is not None:
        if isinstance(seed, uuid.UUID):
            return seed.bytes
        if isinstance(seed, bytes):
            return seed
        try:
            return uuid.UUID(seed).bytes
        except ValueError:
            return seed.encode()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return hashlib.sha256(b"mkosi source date epoch " + epoch.strip().encode()).digest()
    return None


def seed_from_setting(value: str | None) -> SeedLike | None:
    """Seed=: a UUID string is the seed; 'random' a fresh random seed for this build only (so nothing is
    derived from SOURCE_DATE_EPOCH either); unset leaves resolve_seed() to fall back to the epoch."""
    if value is None:
        return None
    if value == "random":
        return uuid.uuid4()
    return uuid.UUID(value)


def derive_uuid(key: bytes, *parts: str) -> uuid.UUID:
    """A version 4 style UUID computed as HMAC-SHA256(key, parts), so equal inputs give equal UUIDs."""
    msg = "\x00".join(parts).encode()
    digest = bytearray(hmac.new(key, msg, hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(digest))


def make_uuid(seed: SeedLike | None, *parts: str) -> uuid.UUID:
    """derive_uuid() when a seed (or SOURCE_DATE_EPOCH) is available, a random UUID otherwise."""
    key = resolve_seed(seed)
    if key is None:
        return uuid.uuid4()
    return derive_uuid(key, *parts)


# ---------------------------------------------------------------------------------------------
# Layout


@dataclasses.dataclass
class Partition:
    """One partition to place on the disk.

    Either `source` (an image file copied into the partition) or `size` (bytes) or both must be
    set; the partition is at least as large as the source. `type_uuid` defaults to the role's
    type on the architecture passed to assemble(); `uuid` to a derived or random one.
    """

    role: str
    label: str
    source: Path | None = None
    size: int | None = None
    type_uuid: uuid.UUID | None = None
    uuid: uuid.UUID | None = None
    read_only: bool = False
    growfs: bool = False
    no_auto: bool = False

    def attributes(self) -> int:
        bits = 0
        if self.read_only:
            bits |= 1 << GPT_FLAG_READ_ONLY
        if self.growfs:
            bits |= 1 << GPT_FLAG_GROWFS
        if self.no_auto:
            bits |= 1 << GPT_FLAG_NO_AUTO
        return bits


@dataclasses.dataclass(frozen=True)
class PlacedPartition:
    """A partition with its final position: `offset` and `size` in bytes, `number` 1-based."""

    number: int
    partition: Partition
    offset: int
    size: int
    type_uuid: uuid.UUID
    uuid: uuid.UUID
    attributes: int

    @property
    def role(self) -> str:
        return self.partition.role

    @property
    def label(self) -> str:
        return self.partition.label

    @property
    def end(self) -> int:
        return self.offset + self.size


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _check_label(label: str) -> None:
    if len(label.encode("utf-16-le")) > 72:
        raise MkosiError(f"partition label '{label}' is longer than the 36 characters GPT allows")
    if any(c in label for c in '"\\\n\r\t') or not label.isprintable():
        raise MkosiError(f"partition label {label!r} contains characters that cannot be used")


def partition_uuid(seed: SeedLike | None, p: Partition, type_id: uuid.UUID, number: int) -> uuid.UUID:
    return make_uuid(seed, "partition", str(type_id), p.label, str(number))


def plan(
    partitions: Sequence[Partition],
    *,
    first_lba: int = 2048,
    sector: int = 512,
    arch: str | None = None,
    seed: SeedLike | None = None,
) -> tuple[list[PlacedPartition], int]:
    """Compute the layout: every partition starts on a 1 MiB boundary after `first_lba`.

    Returns the placed partitions and the size of the disk image in bytes (a multiple of 1 MiB
    that leaves room for the backup GPT).
    """
    if sector not in (512, 1024, 2048, 4096):
        raise MkosiError(f"unsupported sector size {sector}")
    min_first_lba = 2 + GPT_ENTRY_ARRAY_BYTES // sector
    if first_lba < min_first_lba:
        raise MkosiError(f"first LBA {first_lba} is too small, the GPT needs at least {min_first_lba}")

    cursor = first_lba * sector
    placed: list[PlacedPartition] = []
    for number, p in enumerate(partitions, start=1):
        if p.role not in ROLES and p.type_uuid is None:
            raise MkosiError(f"unknown partition role '{p.role}'")
        _check_label(p.label)
        size = p.size
        if p.source is not None:
            src_size = p.source.stat().st_size
            if size is None:
                size = src_size
            elif size < src_size:
                raise MkosiError(f"partition '{p.label}' is {size} bytes but its image {p.source} has {src_size}")
        if size is None or size <= 0:
            raise MkosiError(f"partition '{p.label}' has neither a size nor a source image")
        size = align_up(size, max(SIZE_GRANULARITY, sector))
        for flag, roles, name in (
            (p.read_only, _READ_ONLY_ROLES, "read-only"),
            (p.growfs, _GROWFS_ROLES, "growfs"),
            (p.no_auto, _NO_AUTO_ROLES, "no-auto"),
        ):
            if flag and p.role not in roles:
                log.warn(f"the {name} flag has no defined meaning for {p.role} partition '{p.label}'")
        offset = align_up(cursor, ALIGNMENT)
        tid = p.type_uuid if p.type_uuid is not None else type_uuid(p.role, arch)
        pid = p.uuid if p.uuid is not None else partition_uuid(seed, p, tid, number)
        placed.append(
            PlacedPartition(
                number=number,
                partition=p,
                offset=offset,
                size=size,
                type_uuid=tid,
                uuid=pid,
                attributes=p.attributes(),
            )
        )
        cursor = offset + size

    footer = GPT_ENTRY_ARRAY_BYTES + sector
    disk_size = align_up(cursor + footer, ALIGNMENT)
    return placed, disk_size


def sfdisk_attrs(attributes: int) -> str:
    """sfdisk's spelling of GPT attribute bits: "GUID:59,60" for the type specific bits 48-63."""
    bits = [b for b in range(64) if attributes & (1 << b)]
    named = {0: "RequiredPartition", 1: "NoBlockIOProtocol", 2: "LegacyBIOSBootable"}
    words = [named[b] for b in bits if b in named]
    guid_bits = [str(b) for b in bits if b >= 48]
    other = [b for b in bits if b not in named and b < 48]
    if other:
        raise MkosiError(f"GPT attribute bits {other} cannot be set")
    if guid_bits:
        words.append("GUID:" + ",".join(guid_bits))
    return " ".join(words)


def sfdisk_script(
    placed: Sequence[PlacedPartition],
    *,
    disk_uuid: uuid.UUID,
    first_lba: int = 2048,
    sector: int = 512,
) -> str:
    """The sfdisk input that creates the partition table for a planned layout."""
    lines = [
        "label: gpt",
        f"label-id: {str(disk_uuid).upper()}",
        "unit: sectors",
        f"sector-size: {sector}",
        f"first-lba: {first_lba}",
        "",
    ]
    for pp in placed:
        if pp.offset % sector or pp.size % sector:
            raise MkosiError(f"partition '{pp.label}' is not sector aligned")
        fields = [
            f"start={pp.offset // sector}",
            f"size={pp.size // sector}",
            f"type={str(pp.type_uuid).upper()}",
            f"uuid={str(pp.uuid).upper()}",
            f'name="{pp.label}"',
        ]
        if pp.attributes:
            fields.append(f'attrs="{sfdisk_attrs(pp.attributes)}"')
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Copying


_CHUNK = 1 * MiB
_ZERO_GRAIN = 64 * 1024
_ZEROS = bytes(_CHUNK)


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges holding data, by SEEK_DATA/SEEK_HOLE; the whole file if unsupported."""
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            pos = end
    except OSError:
        return [(0, size)] if size else []
    return extents


def copy_sparse(src: Path, dst_fd: int, offset: int) -> int:
    """Copy `src` into the open file `dst_fd` at `offset`, skipping holes and all-zero blocks.

    The destination must already be zero there (a fresh sparse file). Returns the number of
    bytes actually written.
    """
    written = 0
    with open(src, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        for start, end in _data_extents(fd, size):
            pos = start
            while pos < end:
                n = min(_CHUNK, end - pos)
                buf = os.pread(fd, n, pos)
                if not buf:
                    break
                n = len(buf)
                if buf != _ZEROS[:n]:
                    view = memoryview(buf)
                    # Write maximal runs of non-zero grains, skip zero grains.
                    i = 0
                    while i < n:
                        j = min(i + _ZERO_GRAIN, n)
                        if view[i:j] == _ZEROS[: j - i]:
                            i = j
                            continue
                        k = j
                        while k < n:
                            nk = min(k + _ZERO_GRAIN, n)
                            if view[k:nk] == _ZEROS[: nk - k]:
                                break
                            k = nk
                        os.pwrite(dst_fd, view[i:k], offset + pos + i)
                        written += k - i
                        i = k
                pos += n
    return written


# ---------------------------------------------------------------------------------------------
# Assembly


def write_partition_table(image: Path, script: str, sector: int = 512) -> None:
    """Run sfdisk with `script` on the image file.

    sfdisk (util-linux 2.38) takes the sector size from the device and treats a regular file as
    512-byte sectors, so for other sector sizes the file is attached to a loop device with that
    logical sector size just for the sfdisk run (no partition scanning, always detached).
    """
    argv: list[str] = ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "--quiet"]
    if sector == 512:
        run([*argv, os.fspath(image)], input=script, capture=True)
        return
    dev = output_of(["losetup", "--sector-size", str(sector), "--show", "--find", os.fspath(image)]).strip()
    try:
        run([*argv, dev], input=script, capture=True)
    finally:
        run(["losetup", "--detach", dev], check=False, capture=True)


def assemble(
    output: Path,
    partitions: Sequence[Partition],
    first_lba: int = 2048,
    sector: int = 512,
    disk_uuid: uuid.UUID | None = None,
    *,
    arch: str | None = None,
    seed: SeedLike | None = None,
) -> list[PlacedPartition]:
    """Create the disk image `output` holding `partitions`, in order, each 1 MiB aligned.

    The file is created sparse, the GPT is written by sfdisk and every partition's `source`
    image is copied to its offset. Partitions without a source stay zero (holes). UUIDs are
    derived from `seed` (or SOURCE_DATE_EPOCH) when available, random otherwise.
    """
    placed, disk_size = plan(partitions, first_lba=first_lba, sector=sector, arch=arch, seed=seed)
    did = disk_uuid if disk_uuid is not None else make_uuid(seed, "disk")
    script = sfdisk_script(placed, disk_uuid=did, first_lba=first_lba, sector=sector)

    with log.step(f"Assembling disk image {output.name}"):
        output.unlink(missing_ok=True)
        with open(output, "wb") as f:
            f.truncate(disk_size)
        log.debug(script)
        write_partition_table(output, script, sector)
        fd = os.open(output, os.O_WRONLY)
        try:
            for pp in placed:
                if pp.partition.source is None:
                    continue
                n = copy_sparse(pp.partition.source, fd, pp.offset)
                log.debug(f"partition {pp.number} ({pp.label}): {n} bytes written at offset {pp.offset}")
            os.fsync(fd)
        finally:
            os.close(fd)
    return placed
