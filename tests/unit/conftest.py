"""Fixtures shared by the configuration and verb tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import mkosi.distributions.facts
from mkosi.__main__ import main
from mkosi.config.enums import Distribution


@pytest.fixture
def fixed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the host runs Debian bookworm, so results do not depend on the machine running the tests."""
    fake = lambda: (Distribution.debian, "bookworm")  # noqa: E731
    monkeypatch.setattr(mkosi.distributions.facts, "host_distribution", fake)
    monkeypatch.delenv("SUDO_USER", raising=False)


@pytest.fixture
def wd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    path.chmod(mode)
    return path


def run_main(*argv: str) -> int:
    """mkosi's exit status for a command line (main() always ends with SystemExit)."""

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert isinstance(e.value.code, int)
    return e.value.code
