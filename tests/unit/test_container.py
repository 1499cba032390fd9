"""shell/boot: the nspawn command line, without running nspawn."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mkosi import container
from mkosi.config.enums import Verb
from mkosi.config.settings import Args, Config
from mkosi.formats import OutputFormat


def fake_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Replace running nspawn by recording its argv and what it would find in its runtime directory."""
    runtime = tmp_path / "run-nspawn"
    monkeypatch.setattr(container, "NSPAWN_RUNTIME_DIR", runtime)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    calls: list[dict[str, Any]] = []

    def run(argv: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        files = {p.name: p.read_text() for p in runtime.iterdir()} if runtime.exists() else {}
        sandbox = kwargs.get("sandbox")
        full = sandbox.argv(argv, "systemd-nspawn") if sandbox is not None else list(argv)
        calls.append({"argv": [str(a) for a in full], "files": files})
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(container, "run", run)
    return calls


def tree_config(tmp_path: Path, name: str, settings: bool) -> Config:
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    nspawn = None
    if settings:
        nspawn = out / f"{name}.nspawn"
        nspawn.write_text("[Exec]\nEnvironment=FROM_SETTINGS=1\n")
    return dataclasses.replace(Config(), format=OutputFormat("directory"), output=out / name, output_dir=out,
                               nspawn_settings=nspawn)


SHELL = Args(verb=Verb.shell)


@pytest.mark.parametrize("name, machine", [("image", "image"), ("image_1.2", "image-1.2"), ("web_x_7", "web-x-7")])
def test_settings_reach_nspawn_under_the_machine_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
                                                      machine: str) -> None:
    calls = fake_run(monkeypatch, tmp_path)
    assert container.run_container(SHELL, tree_config(tmp_path, name, settings=True), boot=False) == 0
    (call,) = calls
    assert f"--machine={machine}" in call["argv"] and "--settings=trusted" in call["argv"]
    # What nspawn reads: MACHINE.nspawn, with the content of mkosi.nspawn.
    assert call["files"] == {f"{machine}.nspawn": "[Exec]\nEnvironment=FROM_SETTINGS=1\n"}
    assert not list((tmp_path / "run-nspawn").iterdir())  # removed afterwards


def test_no_settings_nothing_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = fake_run(monkeypatch, tmp_path)
    assert container.run_container(SHELL, tree_config(tmp_path, "image_2", settings=False), boot=False) == 0
    assert "--settings=trusted" not in calls[0]["argv"] and calls[0]["files"] == {}


def test_existing_runtime_file_is_left_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    calls = fake_run(monkeypatch, tmp_path)
    runtime = tmp_path / "run-nspawn"
    runtime.mkdir()
    (runtime / "image-3.nspawn").write_text("admin's\n")
    assert container.run_container(SHELL, tree_config(tmp_path, "image_3", settings=True), boot=False) == 0
    assert calls[0]["files"] == {"image-3.nspawn": "admin's\n"}
    assert (runtime / "image-3.nspawn").read_text() == "admin's\n"
    assert "exists already" in capsys.readouterr().err
