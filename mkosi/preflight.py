"""What a build makes sure of before it starts, so that failures come early and nothing is lost:

* it holds a lock on the output directory, so two builds of one configuration take turns instead of
  breaking each other's outputs and caches;
* it finishes or rolls back a move of results that an earlier, interrupted build left half done, and
  removes previous outputs whose removal in the background (see discard_in_background()) was cut short;
* it removes the workspaces of builds that died (after unmounting what they left, never recursing
  through a mount);
* it checks that the output directory and the workspace can be written to;
* it runs in a mount namespace of its own, so that even a killed build leaves no mount on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.mounts import mounts_below, umount_all_below
from mkosi.run import current_sandbox, pid_alive, run

WORKSPACE_PREFIX = "mkosi-"
PID_FILE = ".mkosi-pid"
OLD_PREFIX = ".mkosi-old-"
TMP_PREFIX = ".mkosi-tmp-"
TRASH_PREFIX = ".mkosi-trash-"
CLONE_NEWNS = 0x00020000


# Output directories whose lock the build of several images holds for all of them (see images_locked()):
# the image builds it forks inherit this and neither wait for that lock nor recover interrupted moves.
_HELD: set[Path] = set()


@contextlib.contextmanager
def output_lock(outdir: Path) -> Iterator[bool]:
    """Hold the output directory's lock (an flock on the directory itself, so no file is left there); a
    second build of the same outputs waits with a message. Yields whether this call took the lock: False
    when the build of several images holds it for all of them, whose builds must then not touch what
    belongs to another image (recover_interrupted_move() ran once, before any of them started)."""
    outdir.mkdir(parents=True, exist_ok=True)
    if outdir.resolve() in _HELD:
        yield False
        return
    fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"Waiting for another build that writes to {outdir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def images_locked(outdirs: Iterable[Path]) -> Iterator[None]:
    """For the images of one build that run at the same time: take each output directory's lock once, for
    all of them, and finish interrupted moves there before any image starts. Without this the images
    sharing an output directory would wait for each other's lock, one after the other."""
    with contextlib.ExitStack() as stack:
        held: list[Path] = []
        try:
            for outdir in sorted({d.resolve() for d in outdirs if not d.exists() or d.is_dir()}):
                stack.enter_context(output_lock(outdir))
                recover_interrupted_move(outdir)
                _HELD.add(outdir)
                held.append(outdir)
            yield
        finally:
            _HELD.difference_update(held)


def recover_interrupted_move(outdir: Path) -> None:
    """An interrupted "moving the results into place" leaves NAME's previous version as .mkosi-old-NAME
    and the new one as .mkosi-tmp-NAME: keep NAME if it is there, else put the previous version back."""
    if not outdir.is_dir():
        return
    for entry in sorted(outdir.iterdir()):
        if entry.name.startswith(OLD_PREFIX):
            target = outdir / entry.name.removeprefix(OLD_PREFIX)
            if target.exists() or target.is_symlink():
                log.info(f"Removing {entry.name}, left behind by an interrupted build")
                remove_tree(entry)
            else:
                log.info(f"Restoring {target.name} from an interrupted build")
                os.rename(entry, target)
    for entry in sorted(outdir.iterdir()):
        if entry.name.startswith(TMP_PREFIX):
            log.info(f"Removing {entry.name}, left behind by an interrupted build")
            remove_tree(entry)
        elif entry.name.startswith(TRASH_PREFIX) and entry.is_dir() and not entry.is_symlink():
            _remove_trash(entry)


def _remove_trash(entry: Path) -> None:
    """A replaced output whose remover (see discard_in_background()) is gone: finish removing it."""
    try:
        pid = int((entry / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid and pid_alive(pid):
        return
    log.info(f"Removing {entry.name}, the previous output an earlier build did not finish removing")
    umount_all_below(entry)
    if not mounts_below(entry):
        shutil.rmtree(entry, ignore_errors=True)  # a remover that just exited may have taken some already


def discard_in_background(path: Path, name: str) -> None:
    """Remove a directory that was replaced (the previous version of the directory output `name`) without
    waiting: it is renamed to .mkosi-trash-NAME.* next to it and a detached `rm` removes it, its PID
    recorded inside as for workspaces; a later build finishes the job when the remover was killed."""
    trash = path.parent / f"{TRASH_PREFIX}{name}.{os.getpid()}.{time.monotonic_ns()}"
    os.rename(path, trash)
    detached_rm(trash)


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, unmounting whatever is mounted below it first; refuses to
    recurse while anything is still mounted there."""
    if path.is_dir() and not path.is_symlink():
        umount_all_below(path)
        if mounts_below(path):
            raise MkosiError(f"cannot remove '{path}': something is still mounted below it")
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def mark_workspace(ws: Path) -> None:
    (ws / PID_FILE).write_text(f"{os.getpid()}\n")


def keep_workspace(ws: Path, failed: bool) -> None:
    """--debug-workspace: the workspace stays (without its PID file, so no later build takes it for the
    workspace of a killed build and removes it) and its path is printed."""
    (ws / PID_FILE).unlink(missing_ok=True)
    what = "failed build" if failed else "build"
    log.info(f"The workspace of the {what} is kept at {ws} (--debug-workspace); remove it when done")


def remove_in_background(ws: Path) -> None:
    """Unmount what is below the workspace, then remove it with a detached `rm` that stays on the
    workspace's file system. The workspace records the remover's PID, so a later build takes over when
    the remover was killed (or the machine rebooted) before it finished."""
    umount_all_below(ws)
    if mounts_below(ws):
        log.warn(f"the workspace {ws} still has mounts below it; leaving it")
        return
    detached_rm(ws)


def detached_rm(path: Path) -> None:
    """`rm -rf` of a directory in a session of its own, not waited for. Its PID is in the directory's
    PID file before this returns (rm waits for a line on its standard input until then): a build
    starting right after must see the remover's PID there, not the dead one of the build that left the
    directory, or it would take the directory for abandoned and remove it at the same time."""
    proc = subprocess.Popen(["sh", "-c", 'read -r _; exec rm -rf --one-file-system -- "$1"', "sh", os.fspath(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stdin is not None
    try:
        (path / PID_FILE).write_text(f"{proc.pid}\n")  # sh execs rm: the PID stays the remover's
    finally:
        proc.stdin.write(b"\n")
        proc.stdin.close()


def remove_stale_workspaces(parent: Path) -> None:
    """Workspaces whose build process is gone (killed, or its machine rebooted) are removed."""
    if not parent.is_dir():
        return
    for ws in parent.iterdir():
        pid_file = ws / PID_FILE
        if not ws.name.startswith(WORKSPACE_PREFIX) or ws.is_symlink() or not pid_file.is_file():
            continue
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            continue
        log.info(f"Removing the workspace {ws} of a build that no longer runs")
        try:
            remove_tree(ws)
        except (MkosiError, OSError) as e:  # not worth failing this build for
            log.warn(f"could not remove {ws}: {e}")


def check_writable(directory: Path, what: str) -> None:
    """Fail now, not after the package installation, when a directory cannot take files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".mkosi-probe-", dir=directory):
            pass
    except OSError as e:
        reason = "the file system is read-only" if e.errno == errno.EROFS else (e.strerror or str(e))
        raise MkosiError(f"cannot write to the {what} '{directory}': {reason}")


def private_mount_namespace() -> None:
    """Move this process into a mount namespace of its own whose mounts do not propagate to the host:
    when the process ends, however it ends, its mounts are gone with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        log.warn(f"cannot make a private mount namespace ({os.strerror(err)}); a killed build may leave mounts")
        return
    run(["mount", "--make-rslave", "/"], sandbox=current_sandbox().on_host())
