"""Before a build: the output lock, recovery of an interrupted move, stale workspaces, writability."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkosi.errors import MkosiError
from mkosi.preflight import (
    PID_FILE,
    check_writable,
    output_lock,
    recover_interrupted_move,
    remove_stale_workspaces,
)


def test_interrupted_move_is_rolled_back_when_the_new_output_is_missing(tmp_path: Path) -> None:
    old = tmp_path / ".mkosi-old-image"
    old.mkdir()
    (old / "etc").mkdir()
    (tmp_path / ".mkosi-tmp-image").mkdir()
    recover_interrupted_move(tmp_path)
    assert (tmp_path / "image/etc").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image"]


def test_interrupted_move_is_finished_when_the_new_output_is_there(tmp_path: Path) -> None:
    (tmp_path / ".mkosi-old-image.raw").write_text("old")
    (tmp_path / "image.raw").write_text("new")
    recover_interrupted_move(tmp_path)
    assert (tmp_path / "image.raw").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.raw"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_workspaces_of_dead_builds_are_removed(tmp_path: Path) -> None:
    dead, alive, foreign = tmp_path / "mkosi-dead", tmp_path / "mkosi-alive", tmp_path / "mkosi-foreign"
    for ws in (dead, alive, foreign):
        (ws / "root/etc").mkdir(parents=True)
    (dead / PID_FILE).write_text(f"{_dead_pid()}\n")
    (alive / PID_FILE).write_text(f"{os.getpid()}\n")
    remove_stale_workspaces(tmp_path)
    assert not dead.exists()
    assert alive.exists()
    assert foreign.exists()  # not marked by mkosi: never touched


def test_check_writable_names_the_directory(tmp_path: Path) -> None:
    check_writable(tmp_path / "new", "output directory")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MkosiError, match=rf"cannot write to the output directory '{blocker}/sub'"):
        check_writable(blocker / "sub", "output directory")


def _hold(outdir: str, started: multiprocessing.synchronize.Event, seconds: float) -> None:
    with output_lock(Path(outdir)):
        started.set()
        time.sleep(seconds)


def test_a_second_build_waits_for_the_output_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), started, 1.0))
    holder.start()
    assert started.wait(10)
    begin = time.monotonic()
    with output_lock(tmp_path):
        waited = time.monotonic() - begin
    holder.join()
    assert waited > 0.3
    assert "Waiting for another build" in capsys.readouterr().err


def test_a_finished_workspace_is_removed_in_the_background(tmp_path: Path) -> None:
    from mkosi.preflight import remove_in_background

    ws = tmp_path / "mkosi-done"
    (ws / "root/usr/share").mkdir(parents=True)
    for i in range(200):
        (ws / f"root/usr/share/f{i}").write_text("x")
    remove_in_background(ws)
    deadline = time.monotonic() + 30
    while ws.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ws.exists()


def _wait_gone(path: Path, timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_replaced_directory_output_is_removed_without_waiting(tmp_path: Path) -> None:
    from mkosi.build import replace_path

    outdir = tmp_path / "out"
    (outdir / "image/old").mkdir(parents=True)
    (outdir / "image/old/file").write_text("previous\n")
    new = tmp_path / "staging/image"
    new.mkdir(parents=True)
    (new / "file").write_text("new\n")
    replace_path(new, outdir / "image")
    assert (outdir / "image/file").read_text() == "new\n"
    assert not (outdir / "image/old").exists()
    trash = [p for p in outdir.iterdir() if p.name != "image"]
    assert all(p.name.startswith(".mkosi-trash-image.") for p in trash)
    for p in trash:  # the detached remover finishes on its own
        assert _wait_gone(p)
    assert sorted(p.name for p in outdir.iterdir()) == ["image"]


def test_a_replaced_output_whose_remover_died_is_removed_by_the_next_build(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / ".mkosi-trash-image.1.1"
    (orphan / "usr").mkdir(parents=True)
    (orphan / ".mkosi-pid").write_text(f"{dead.pid}\n")
    busy = tmp_path / ".mkosi-trash-image.2.2"
    (busy / "usr").mkdir(parents=True)
    (busy / ".mkosi-pid").write_text(f"{os.getpid()}\n")  # its remover still runs: left to it
    (tmp_path / "image").mkdir()
    recover_interrupted_move(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mkosi-trash-image.2.2", "image"]


def test_a_build_starting_right_after_leaves_a_workspace_being_removed_alone(tmp_path: Path) -> None:
    from mkosi.preflight import remove_in_background

    dead = subprocess.Popen(["true"])
    dead.wait()
    ws = tmp_path / "mkosi-finished"
    for i in range(300):
        (ws / f"root/d{i}").mkdir(parents=True)
        (ws / f"root/d{i}/f").write_text("x")
    (ws / PID_FILE).write_text(f"{dead.pid}\n")  # what the build that just ended recorded
    remove_in_background(ws)
    # When the call returns, the PID file names the live remover, not the build that is gone.
    with contextlib.suppress(FileNotFoundError):
        assert int((ws / PID_FILE).read_text()) != dead.pid
    remove_stale_workspaces(tmp_path)  # a build starting now: no concurrent removal, no error
    assert _wait_gone(ws)
