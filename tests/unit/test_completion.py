"""Shell completion through argcomplete's protocol, as bash and zsh drive it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mkosi.config.enums import Verb

pytest.importorskip("argcomplete")

REPO = Path(__file__).resolve().parents[2]


def complete(tmp_path: Path, line: str, shell: str = "bash") -> list[str]:
    """What `mkosi` offers for the command line `line` with the cursor at its end (the variables are the
    ones the scripts of `register-python-argcomplete --shell bash|zsh mkosi` set)."""
    out = tmp_path / "completions"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": shell, "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
           "_ARGCOMPLETE_SUPPRESS_SPACE": "1" if shell == "zsh" else "0"}
    proc = subprocess.run([sys.executable, "-m", "mkosi"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [c.rstrip(" ") for c in out.read_text().split("\v") if c]


def test_bash_completes_verbs(tmp_path: Path) -> None:
    assert complete(tmp_path, "mkosi su") == ["summary"]
    assert set(complete(tmp_path, "mkosi s")) == {v.value for v in Verb if v.value.startswith("s")}
    assert "cat-config" in complete(tmp_path, "mkosi -d debian -r bookworm ")
    assert complete(tmp_path, "mkosi --format gpt_squashfs bu") == ["build", "bump", "burn"]


def test_bash_completes_options_and_values(tmp_path: Path) -> None:
    assert complete(tmp_path, "mkosi --distrib") == ["--distribution"]
    assert complete(tmp_path, "mkosi --format gpt_e") == ["gpt_ext4"]


def test_zsh_completes_verbs_with_descriptions(tmp_path: Path) -> None:
    got = complete(tmp_path, "mkosi su", shell="zsh")
    assert len(got) == 1 and got[0].startswith("summary:"), got
    assert "builds nothing" in got[0]
