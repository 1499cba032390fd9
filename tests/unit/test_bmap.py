"""bmap generation for sparse files (no root needed)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from mkosi.output import bmap
from tests.markers import needs_tools

MiB = 1024 * 1024


def _holes_supported(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(4 * MiB)
    try:
        with open(probe, "rb") as f:
            return os.lseek(f.fileno(), 0, os.SEEK_HOLE) == 0
    except OSError:
        return False
    finally:
        probe.unlink()


def _make_image(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(10 * MiB + 123)  # the last block is partial
        f.seek(0)
        f.write(b"boot" * 100)
        f.seek(MiB)
        f.write(os.urandom(8192))
        f.seek(10 * MiB + 100)
        f.write(b"tail")


def _parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def _ranges(root: ET.Element) -> list[tuple[int, int, str]]:
    out = []
    for r in root.iter("Range"):
        assert r.text is not None
        span = r.text.strip()
        a, _, b = span.partition("-")
        out.append((int(a), int(b or a), r.attrib["chksum"]))
    return out


def test_bmap_fields(tmp_path: Path) -> None:
    img = tmp_path / "image.raw"
    _make_image(img)
    text = bmap.generate_bmap(img)
    root = _parse(text)
    assert root.tag == "bmap"
    assert root.attrib["version"] == "2.0"

    def field(name: str) -> str:
        el = root.find(name)
        assert el is not None and el.text is not None
        return el.text.strip()

    size = 10 * MiB + 123
    assert int(field("ImageSize")) == size
    assert int(field("BlockSize")) == 4096
    assert int(field("BlocksCount")) == (size + 4095) // 4096
    assert field("ChecksumType") == "sha256"

    ranges = _ranges(root)
    assert sum(b - a + 1 for a, b, _ in ranges) == int(field("MappedBlocksCount"))
    data = img.read_bytes()
    for a, b, digest in ranges:
        assert hashlib.sha256(data[a * 4096 : min((b + 1) * 4096, size)]).hexdigest() == digest
    covered = {n for a, b, _ in ranges for n in range(a, b + 1)}
    assert {0, 256, 257, (size - 1) // 4096} <= covered
    if _holes_supported(tmp_path):
        assert int(field("MappedBlocksCount")) < 20
        assert 100 not in covered


def test_bmap_file_checksum(tmp_path: Path) -> None:
    img = tmp_path / "image.raw"
    _make_image(img)
    out = tmp_path / "image.bmap"
    bmap.write_bmap(img, out)
    text = out.read_text()
    root = _parse(text)
    el = root.find("BmapFileChecksum")
    assert el is not None and el.text is not None
    digest = el.text.strip()
    assert len(digest) == 64
    zeroed = text.replace(digest, "0" * 64)
    assert hashlib.sha256(zeroed.encode()).hexdigest() == digest


def test_block_ranges_merge(tmp_path: Path) -> None:
    img = tmp_path / "image.raw"
    with open(img, "wb") as f:
        f.write(b"x" * 5000)  # blocks 0-1
    with open(img, "rb") as f:
        assert bmap.block_ranges(f.fileno(), 5000) == [(0, 1)]


def test_empty_and_fully_sparse(tmp_path: Path) -> None:
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    root = _parse(bmap.generate_bmap(empty))
    assert root.findtext("BlocksCount", "").strip() == "0"
    assert _ranges(root) == []

    hole = tmp_path / "hole.raw"
    with open(hole, "wb") as f:
        f.truncate(MiB)
    root = _parse(bmap.generate_bmap(hole))
    assert root.findtext("BlocksCount", "").strip() == "256"
    if _holes_supported(tmp_path):
        assert _ranges(root) == []


@needs_tools("bmaptool")
def test_bmaptool_accepts_it(tmp_path: Path) -> None:
    img = tmp_path / "image.raw"
    _make_image(img)
    out = tmp_path / "image.bmap"
    bmap.write_bmap(img, out)
    copy = tmp_path / "copy.raw"
    subprocess.run(["bmaptool", "copy", "--bmap", str(out), str(img), str(copy)], check=True, capture_output=True)
    assert copy.read_bytes() == img.read_bytes()


@needs_tools("qemu-img")
def test_bmap_describes_the_raw_disk_not_the_qcow2(tmp_path: Path) -> None:
    import dataclasses

    from mkosi.config.settings import Args, Config
    from mkosi.context import Context, Phase
    from mkosi.output.diskimage import bmap_and_convert

    config = dataclasses.replace(Config(), bmap=True, qcow2=True, output=tmp_path / "out/image.qcow2",
                                 output_dir=tmp_path / "out")
    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = Context(Args(), config, tmp_path, Phase.final, tmp_path / "root", None, staging)
    raw = tmp_path / "disk.raw"
    _make_image(raw)
    raw_size = raw.stat().st_size
    raw_sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    image = bmap_and_convert(ctx, raw)
    assert image.read_bytes()[:4] == b"QFI\xfb"
    assert [p.name for p in staging.iterdir()] == ["image.bmap"]
    root = _parse((staging / "image.bmap").read_text())
    assert root.findtext("ImageSize", "").strip() == str(raw_size)
    # The ranges' checksums are those of the raw disk's blocks.
    first = _ranges(root)[0]
    block = int(root.findtext("BlockSize", "4096").strip())
    assert first[0] == 0
    assert raw_sha != hashlib.sha256(image.read_bytes()).hexdigest()
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(tmp_path / "back.raw")],
                   check=True)
    data = (tmp_path / "back.raw").read_bytes()
    assert hashlib.sha256(data[first[0] * block:(first[1] + 1) * block]).hexdigest() == first[2]
