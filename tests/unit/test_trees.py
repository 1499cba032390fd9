"""Copies into the image resolve every path inside the image root: nothing is written through a
symbolic link onto the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mkosi.errors import MkosiError
from mkosi.trees import copy_into_root, install_tree, resolve_in_root


def image_with_escapes(tmp_path: Path) -> tuple[Path, Path]:
    """An image root whose links point at absolute paths that, followed on the host, lead to `outside`."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "usr/lib").mkdir(parents=True)
    outside.mkdir()
    (root / "lib").symlink_to("usr/lib")                       # merged /usr: followed inside the image
    (root / "var").mkdir()
    (root / "var/run").symlink_to(f"{outside}/run")            # like var/run -> /run
    (root / "etc").mkdir()
    (root / "etc/environment.link").symlink_to(f"{outside}/environment")  # like 99-environment.conf
    (root / "up").symlink_to("../../../..")
    return root, outside


def test_resolve_in_root(tmp_path: Path) -> None:
    root, outside = image_with_escapes(tmp_path)
    top = root.resolve()
    assert resolve_in_root(root, "lib/x") == top / "usr/lib/x"
    assert resolve_in_root(root, "var/run/lock") == top / f"{outside}/run/lock".lstrip("/")
    assert resolve_in_root(root, "up/etc") == top / "etc"
    assert resolve_in_root(root, "../../etc") == top / "etc"
    (root / "loop").symlink_to("loop")
    with pytest.raises(MkosiError, match="too many levels"):
        resolve_in_root(root, "loop/x")


def test_extra_tree_never_writes_through_absolute_links(tmp_path: Path) -> None:
    root, outside = image_with_escapes(tmp_path)
    extra = tmp_path / "extra"
    (extra / "var/run").mkdir(parents=True)
    (extra / "var/run/pidfile").write_text("mine\n")
    (extra / "etc").mkdir()
    (extra / "etc/environment.link").write_text("FOO=bar\n")
    (extra / "lib").mkdir()
    (extra / "lib/module.so").write_text("elf\n")
    (extra / "usr/bin").mkdir(parents=True)
    (extra / "usr/bin/tool").write_text("#!/bin/sh\n")
    (extra / "usr/bin/tool").chmod(0o755)
    (extra / "usr/bin/alias").symlink_to("tool")
    copy_into_root(extra, root)
    assert list(outside.iterdir()) == []                          # nothing reached the "host"
    inside = root.resolve() / str(outside).lstrip("/")
    assert (inside / "run/pidfile").read_text() == "mine\n"       # the image's view of /run
    link = root / "etc/environment.link"
    assert not link.is_symlink() and link.read_text() == "FOO=bar\n"  # the file replaced the link
    assert (root / "usr/lib/module.so").read_text() == "elf\n"    # merged /usr stays merged
    assert (root / "lib").is_symlink()
    assert os.access(root / "usr/bin/tool", os.X_OK)
    assert os.readlink(root / "usr/bin/alias") == "tool"


def test_tar_tree_never_writes_through_absolute_links(tmp_path: Path) -> None:
    root, outside = image_with_escapes(tmp_path)
    content = tmp_path / "content"
    (content / "var/run").mkdir(parents=True)
    (content / "var/run/x").write_text("from tar\n")
    (content / "evil").symlink_to(str(outside))
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "-C", content, "-cf", archive, "var", "evil"], check=True)
    install_tree(archive, root)
    assert list(outside.iterdir()) == []
    inside = root.resolve() / str(outside).lstrip("/")
    assert (inside / "run/x").read_text() == "from tar\n"
    assert os.readlink(root / "evil") == str(outside)


def test_hostile_archive_with_a_file_below_its_own_link(tmp_path: Path) -> None:
    root, outside = image_with_escapes(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "evil").symlink_to(str(outside))
    (second / "evil").mkdir(parents=True)
    (second / "evil/pwned").write_text("gotcha\n")
    archive = tmp_path / "hostile.tar"
    subprocess.run(["tar", "-C", first, "-cf", archive, "evil"], check=True)
    subprocess.run(["tar", "-C", second, "-rf", archive, "evil/pwned"], check=True)
    try:
        install_tree(archive, root)
    except MkosiError:
        pass  # tar refusing the archive is fine too; writing outside is not
    assert list(outside.iterdir()) == []
