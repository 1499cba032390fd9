"""ELF architecture detection with pyelftools, on real binaries of this host and on non-ELF files."""

from __future__ import annotations

import platform
import shutil
import sys
from pathlib import Path

from mkosi.distributions.facts import normalize_architecture
from mkosi.elf import elf_architecture, image_architecture


def test_host_python_is_host_architecture() -> None:
    assert elf_architecture(Path(sys.executable).resolve()) == normalize_architecture(platform.machine())


def test_not_elf(tmp_path: Path) -> None:
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    assert elf_architecture(f) is None
    assert elf_architecture(tmp_path / "missing") is None


def test_image_architecture_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy(Path(sys.executable).resolve(), tmp_path / "usr/bin/dash")
    (tmp_path / "usr/bin/sh").symlink_to("dash")
    assert image_architecture(tmp_path) == normalize_architecture(platform.machine())
    assert image_architecture(tmp_path / "empty") is None
