"""Block maps (bmap format 2.0) for sparse image files, as consumed by `bmaptool copy`.

The map lists the blocks of the image that hold data, found with lseek(SEEK_DATA/SEEK_HOLE),
as ranges of block numbers (inclusive), each with the SHA-256 of its bytes. The file's own
checksum is the SHA-256 of the whole bmap text with the checksum value replaced by as many
"0" characters.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from mkosi import log

BLOCK_SIZE = 4096
_READ_CHUNK = 4 * 1024 * 1024
_PLACEHOLDER = "0" * 64


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Byte ranges [start, end) holding data; the whole file when holes cannot be queried."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield (pos, size)
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield (start, end)
        pos = end


def block_ranges(fd: int, size: int, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Inclusive (first, last) block ranges covering every data byte, merged where they touch."""
    ranges: list[tuple[int, int]] = []
    for start, end in data_ranges(fd, size):
        if end <= start:
            continue
        first, last = start // block_size, (end - 1) // block_size
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], last))
        else:
            ranges.append((first, last))
    return ranges


def _range_checksum(fd: int, first: int, last: int, size: int, block_size: int) -> str:
    h = hashlib.sha256()
    pos = first * block_size
    end = min((last + 1) * block_size, size)
    while pos < end:
        buf = os.pread(fd, min(_READ_CHUNK, end - pos), pos)
        if not buf:
            break
        h.update(buf)
        pos += len(buf)
    return h.hexdigest()


def generate_bmap(image: Path, block_size: int = BLOCK_SIZE) -> str:
    """The bmap XML text for `image`."""
    with open(image, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        blocks = (size + block_size - 1) // block_size
        ranges = block_ranges(fd, size, block_size)
        sums = [_range_checksum(fd, a, b, size, block_size) for a, b in ranges]
    mapped = sum(b - a + 1 for a, b in ranges)

    lines = [
        '<?xml version="1.0" ?>',
        f"<!-- Block map of {image.name}: {mapped} of {blocks} blocks of {block_size} bytes hold data. -->",
        '<bmap version="2.0">',
        f"    <ImageSize> {size} </ImageSize>",
        f"    <BlockSize> {block_size} </BlockSize>",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        f"    <BmapFileChecksum> {_PLACEHOLDER} </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for (a, b), digest in zip(ranges, sums):
        span = f"{a}" if a == b else f"{a}-{b}"
        lines.append(f'        <Range chksum="{digest}"> {span} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines)
    own = hashlib.sha256(text.encode()).hexdigest()
    return text.replace(
        f"<BmapFileChecksum> {_PLACEHOLDER} </BmapFileChecksum>",
        f"<BmapFileChecksum> {own} </BmapFileChecksum>",
    )


def write_bmap(image: Path, bmap_path: Path, block_size: int = BLOCK_SIZE) -> None:
    """Write the bmap of `image` to `bmap_path`."""
    with log.step(f"Writing block map {bmap_path.name}"):
        text = generate_bmap(image, block_size)
        tmp = bmap_path.with_name(bmap_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, bmap_path)
