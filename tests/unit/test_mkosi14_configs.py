"""Real-world mkosi.default trees (tests/unit/data/mkosi14/) summarise like Debian's mkosi 14 reads them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.summary import summary_dict, summary_text

DATA = Path(__file__).parent / "data/mkosi14"
TREES = sorted(p.name for p in DATA.iterdir() if (p / "mkosi.default").is_file())

pytestmark = pytest.mark.usefixtures("fixed_host")


def test_there_are_trees() -> None:
    assert len(TREES) >= 5


@pytest.mark.parametrize("tree", TREES)
def test_tree_summarises_like_mkosi14(tree: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / tree
    shutil.copytree(DATA / tree, work, symlinks=True)
    monkeypatch.chdir(work)
    expected = json.loads((work / "mkosi14-summary.json").read_text())
    args, configs = load_args(["summary"])
    (config,) = configs
    data = summary_dict(args, config)
    assert data["Distribution"]["Distribution"] == expected["distribution"]
    assert data["Distribution"]["Release"] == expected["release"]
    assert data["Output"]["Format"] == expected["format"]
    assert data["Content"]["Packages"] == expected["packages"]
    assert data["Content"]["BuildPackages"] == expected["build_packages"]
    assert summary_text(args, configs)
