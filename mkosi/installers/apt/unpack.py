"""Getting packages onto disk fast: uncompressed copies of xz packages, parallel dpkg-deb | tar extraction."""
from __future__ import annotations

import concurrent.futures
import contextlib
import lzma
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.chroot import HELPER_DIR
from mkosi.installers.apt.debs import data_member
from mkosi.installers.apt.hostapt import HostApt
from mkosi.installers.apt.plan import DpkgOp, plan_debs
from mkosi.run import require_tool, run

# Never part of the scaffold: dpkg writes what belongs in the image itself.
_SCAFFOLD_EXCLUDES = ("./usr/share/doc", "./usr/share/man", "./usr/share/info", "./usr/share/locale",
                      "./usr/lib/*/gconv")


def _repack(src: Path, dst: Path) -> None:
    """Copy a .deb with its data.tar.xz member stored uncompressed (control and everything else as is)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with src.open("rb") as f, tmp.open("wb") as out:
            if f.read(8) != b"!<arch>\n":
                raise MkosiError(f"{src} is not a Debian package")
            out.write(b"!<arch>\n")
            while True:
                header = f.read(60)
                if len(header) < 60:
                    break
                name = header[:16].rstrip()
                size = int(header[48:58].decode("ascii").strip())
                if name.rstrip(b"/") != b"data.tar.xz":
                    out.write(header)
                    out.write(f.read(size + (size & 1)))
                    continue
                start = out.tell()
                out.write(header)  # placeholder, the size is only known afterwards
                decompressor = lzma.LZMADecompressor()
                left, written = size, 0
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise MkosiError(f"{src} is truncated")
                    left -= len(chunk)
                    data = decompressor.decompress(chunk)
                    out.write(data)
                    written += len(data)
                if written & 1:
                    out.write(b"\n")
                if size & 1:
                    f.read(1)
                end = out.tell()
                out.seek(start)
                size_field = str(written).encode().ljust(10)
                out.write(b"data.tar".ljust(16) + header[16:48] + size_field + header[58:60])
                out.seek(end)
        st = src.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def uncompressed_copies(debs: Sequence[Path], store: Path) -> dict[Path, Path]:
    """Map each .deb to a copy whose file system tarball is stored uncompressed, made once per package.

    The image needs every essential package decompressed twice (the dpkg-deb scaffold, then dpkg) and all
    others once; with these copies xz runs once per package and cache, in parallel, and never again on
    warm builds. Packages that are not xz-compressed (zstd is fast already) are used as they are.
    """
    store.mkdir(parents=True, exist_ok=True)
    result: dict[Path, Path] = {}
    todo: list[tuple[Path, Path]] = []
    for deb in debs:
        st = deb.stat()
        dst = store / f"{deb.stem}_{st.st_size}.deb"
        result[deb] = dst
        if dst.exists() and dst.stat().st_mtime_ns == st.st_mtime_ns:
            continue
        if data_member(deb) != "data.tar.xz":
            result[deb] = deb
            continue
        todo.append((deb, dst))
    if todo:
        workers = max(1, min(len(todo), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(_repack, src, dst): src for src, dst in todo}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    fut.result()
                except OSError as e:
                    log.warn(f"could not store an uncompressed copy of {futures[fut].name} ({e}), "
                             "using it as it is")
                    result[futures[fut]] = futures[fut]
    return result


def _prune_uncompressed(store: Path, archives: Path) -> None:
    """Drop uncompressed copies whose package is no longer in apt's cache."""
    for p in store.glob("*.deb"):
        if not (archives / (p.name.rsplit("_", 1)[0] + ".deb")).exists():
            with contextlib.suppress(OSError):
                p.unlink()


def extract(debs: Sequence[Path], root: Path, mounted: bool = False) -> None:
    """Unpack the scaffold: several dpkg-deb | tar pipelines in parallel, balanced by package size.

    With `mounted`, the API file systems are mounted in the root and left alone."""
    workers = max(1, min(4, os.cpu_count() or 1, len(debs)))
    buckets: list[list[Path]] = [[] for _ in range(workers)]
    sizes = [0] * workers
    for deb in sorted(debs, key=lambda p: p.stat().st_size, reverse=True):
        i = sizes.index(min(sizes))
        buckets[i].append(deb)
        sizes[i] += deb.stat().st_size
    patterns = [*_SCAFFOLD_EXCLUDES, *(["./proc", "./sys", "./dev", f"./{HELPER_DIR}"] if mounted else [])]
    excludes = " ".join(shlex.quote(f"--exclude={e}") for e in patterns)
    # Existing files (a skeleton tree) are kept; directory symlinks (merged /usr) are followed.
    script = (
        "set -e -o pipefail; "
        'for deb; do dpkg-deb --fsys-tarfile "$deb"; done | '
        f'tar -x --ignore-zeros --keep-directory-symlink --skip-old-files {excludes} -C "$ROOT" -f -'
    )
    require_tool("dpkg-deb")
    require_tool("tar")

    def one(bucket: list[Path]) -> None:
        run(["bash", "-c", script, "extract", *bucket], env={"ROOT": str(root)}, capture=True)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(one, b) for b in buckets if b]:
            fut.result()


def decompress_plan(apt: HostApt, plan: Sequence[DpkgOp]) -> list[DpkgOp]:
    """The plan with each .deb replaced by its copy with an uncompressed file system tarball."""
    debs = plan_debs(plan)
    if not debs:
        return list(plan)
    with log.step("Decompressing packages"):
        mapping = {str(k): str(v) for k, v in uncompressed_copies(debs, apt.uncompressed).items()}
        _prune_uncompressed(apt.uncompressed, apt.archives)
    return [DpkgOp(op.action, op.options, tuple(mapping.get(a, a) for a in op.args)) for op in plan]
