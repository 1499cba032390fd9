"""Getting packages onto disk fast: uncompressed copies of xz packages, parallel dpkg-deb | tar extraction."""
from __future__ import annotations

import concurrent.futures
import contextlib
import lzma
import os
import shlex
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.chroot import HELPER_DIR
from mkosi.installers.apt.debs import data_member
from mkosi.installers.apt.plan import DpkgOp
from mkosi.run import require_tool, run
from mkosi.sandbox import Sandbox

# Never part of the scaffold: dpkg writes what belongs in the image itself.
_SCAFFOLD_EXCLUDES = ("./usr/share/doc", "./usr/share/man", "./usr/share/info", "./usr/share/locale",
                      "./usr/lib/*/gconv")


def _decompress_member(src: Path, f: BinaryIO, out: BinaryIO, header: bytes, size: int) -> None:
    """Write the xz-compressed ar member at f's position to out, decompressed, with a corrected header."""
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
    out.write(b"data.tar".ljust(16) + header[16:48] + str(written).encode().ljust(10) + header[58:60])
    out.seek(end)


def _repack(src: Path, dst: Path) -> None:
    """Copy a .deb with its data.tar.xz member stored uncompressed (control and everything else as is)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with src.open("rb") as f, tmp.open("wb") as out:
            if f.read(8) != b"!<arch>\n":
                raise MkosiError(f"{src} is not a Debian package")
            out.write(b"!<arch>\n")
            while len(header := f.read(60)) == 60:
                size = int(header[48:58].decode("ascii").strip())
                if header[:16].rstrip().rstrip(b"/") == b"data.tar.xz":
                    _decompress_member(src, f, out, header, size)
                else:
                    out.write(header)
                    out.write(f.read(size + (size & 1)))
        st = src.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy_path(deb: Path, store: Path) -> Path:
    return store / f"{deb.stem}_{deb.stat().st_size}.deb"


def _make_copy(deb: Path, dst: Path) -> Path:
    try:
        _repack(deb, dst)
    except OSError as e:
        log.warn(f"could not store an uncompressed copy of {deb.name} ({e}), using it as it is")
        return deb
    return dst


def _done(path: Path) -> concurrent.futures.Future[Path]:
    fut: concurrent.futures.Future[Path] = concurrent.futures.Future()
    fut.set_result(path)
    return fut


class Decompressor:
    """Keeps a copy of each xz-compressed package with its file system tarball stored uncompressed.

    The image needs every essential package decompressed twice (the dpkg-deb scaffold, then dpkg) and
    all others once; with these copies xz runs once per package and cache, and never again on warm
    builds. Packages that are not xz-compressed (zstd is fast already) are used as they are.

    Copies are made in the background, on all cores, as soon as a package is known (while apt is still
    downloading, see watching()). The essential set is needed first and twice, so its copies come
    first (first()); each dpkg run waits only for the copies of the packages it installs (copies()),
    so the copies of the packages installed later are made while dpkg works on the essential set.
    Every package is decompressed once per cache, never twice in one build."""

    def __init__(self, store: Path, as_is: Sequence[Path] = ()) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.store = store
        # Directories whose packages are used as they are: the build's local repository (PackageDirectories=)
        # has no copies in the shared store, where the pruning of other builds would remove them.
        self.as_is = {p.absolute() for p in as_is}
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1))
        self.jobs: dict[Path, concurrent.futures.Future[Path]] = {}

    def __enter__(self) -> Decompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        # On success every copy was used; after a failure, those not started yet are not needed.
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, deb: Path) -> None:
        if deb in self.jobs:
            return
        if deb.parent.absolute() in self.as_is:
            self.jobs[deb] = _done(deb)
            return
        dst = _copy_path(deb, self.store)
        if dst.exists() and dst.stat().st_mtime_ns == deb.stat().st_mtime_ns:
            self.jobs[deb] = _done(dst)
        elif data_member(deb) != "data.tar.xz":
            self.jobs[deb] = _done(deb)
        else:
            self.jobs[deb] = self.pool.submit(_make_copy, deb, dst)

    def first(self, debs: Sequence[Path]) -> None:
        """Move these packages to the front of the queue (those whose copy is not being made yet)."""
        waiting = [deb for deb, job in self.jobs.items() if job.cancel()]
        wanted = set(debs)
        for deb in waiting:
            del self.jobs[deb]
        for deb in [*(d for d in debs if d in waiting or d not in self.jobs), *(d for d in waiting if d not in wanted)]:
            self.submit(deb)

    def copies(self, debs: Iterable[Path]) -> list[Path]:
        """The copies, waiting for them to be made."""
        debs = list(debs)
        for deb in debs:
            self.submit(deb)
        return [self.jobs[deb].result() for deb in debs]

    def map_op(self, op: DpkgOp) -> DpkgOp:
        """The dpkg run with each .deb replaced by its copy (waiting for those not made yet)."""
        if op.action not in ("unpack", "install"):
            return op
        return DpkgOp(op.action, op.options, tuple(map(str, self.copies(Path(a) for a in op.args))))

    @contextlib.contextmanager
    def watching(self, archives: Path, interval: float = 0.05) -> Iterator[None]:
        """While the body runs (apt downloading), decompress each package apt completes (apt renames a
        download into `archives` once it is complete and verified)."""
        known = {p.name for p in archives.glob("*.deb")}
        stop = threading.Event()

        def poll() -> None:
            while True:
                last = stop.is_set()
                for p in sorted(archives.glob("*.deb")):
                    if p.name not in known:
                        known.add(p.name)
                        self.submit(p)
                if last:
                    return
                stop.wait(interval)

        watcher = threading.Thread(target=poll, name="apt-download-watcher", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()


def uncompressed_copies(debs: Sequence[Path], store: Path) -> dict[Path, Path]:
    """Map each .deb to its copy with an uncompressed file system tarball (see Decompressor)."""
    with Decompressor(store) as decompressor:
        return dict(zip(debs, decompressor.copies(debs)))


def prune_uncompressed(store: Path, archives: Path) -> None:
    """Drop uncompressed copies whose package is no longer in apt's cache."""
    for p in store.glob("*.deb"):
        if not (archives / (p.name.rsplit("_", 1)[0] + ".deb")).exists():
            with contextlib.suppress(OSError):
                p.unlink()


def extract(debs: Sequence[Path], root: Path, sandbox: Sandbox, mounted: bool = False) -> None:
    """Unpack the scaffold: several dpkg-deb | tar pipelines in parallel, balanced by package size, on
    the host (in `sandbox`).

    With `mounted`, the root is in use by dpkg: its API file system mount points and the helper
    directory are left alone."""
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
    require_tool("dpkg-deb", sandbox)
    require_tool("tar", sandbox)

    def one(bucket: list[Path]) -> None:
        run(["bash", "-c", script, "extract", *bucket], sandbox=sandbox, env={"ROOT": str(root)}, capture=True)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(one, b) for b in buckets if b]:
            fut.result()
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        settle_directory_times(root, int(epoch), skip=("proc", "sys", "dev", HELPER_DIR) if mounted else ())


def settle_directory_times(root: Path, epoch: int, skip: Sequence[str] = ()) -> None:
    """Give every directory below `root` the time `epoch`. The parallel extractions race for the times of
    the directories they share (tar sets a directory's time from its archive when it is done with it,
    while another one may still add entries), so without this their times would differ between two
    builds. dpkg, which unpacks over them next, works one package after the other, and the times later
    than the epoch are clamped to it at the end of the build."""
    for dirpath, dirnames, _ in os.walk(root):
        if dirpath == os.fspath(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))
