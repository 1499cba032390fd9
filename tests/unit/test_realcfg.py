"""Loader rules found by loading public projects' configuration trees (recreated outside the repository
and measured with `mkosi summary`); each test here is a small tree of our own that shows one rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.config.settings import Config
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def load(*argv: str) -> dict[str, Config]:
    configs = load_args([*argv, "summary"])[1]
    return {c.image: c for c in configs}


def test_a_relative_tree_with_the_root_as_target_keeps_its_target(wd: Path) -> None:
    # "SRC:/" in a file: SRC is relative to the file's directory, the "/" target must survive that.
    (wd / "sub/pkgtree").mkdir(parents=True)
    (wd / "extra").mkdir()
    write(wd / "mkosi.conf", "[Include]\nInclude=sub/inc.conf\n")
    write(wd / "sub/inc.conf", """
        [Build]
        SandboxTrees=pkgtree:/

        [Content]
        ExtraTrees=../extra:/opt/x/
    """)
    config = load()["main"]
    assert [(t.source, t.target) for t in config.sandbox_trees] == [(wd / "sub/pkgtree", Path("/"))]
    assert [(t.source.resolve(), t.target) for t in config.extra_trees] == [(wd / "extra", Path("/opt/x"))]
