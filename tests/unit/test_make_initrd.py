"""MakeInitrd=: an image that serves as an initrd (/init and /etc/initrd-release), as the built-in
mkosi-initrd configuration makes its sub-image; and the verbs that run an image look at the main image
only, not at such a sub-image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkosi.boot.initrd import link_init, make_initrd_files
from mkosi.config import load_args
from mkosi.config.settings import Config
from mkosi.errors import ConfigError, MkosiError
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def debian_like(root: Path) -> Path:
    """The layout of a Debian tree: /etc/os-release links to /usr/lib/os-release."""
    write(root / "usr/lib/systemd/systemd", "#!/bin/sh\n", mode=0o755)
    write(root / "usr/lib/os-release", "ID=debian\n")
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def test_make_initrd_files_links_init_and_initrd_release(tmp_path: Path) -> None:
    root = debian_like(tmp_path / "root")
    make_initrd_files(root)
    assert os.readlink(root / "init") == "usr/lib/systemd/systemd"
    assert os.readlink(root / "etc/initrd-release") == "../usr/lib/os-release"
    assert (root / "etc/initrd-release").read_text() == "ID=debian\n"
    make_initrd_files(root)   # again: nothing changes, nothing fails
    assert os.readlink(root / "init") == "usr/lib/systemd/systemd"


def test_an_init_and_initrd_release_of_the_image_are_kept(tmp_path: Path) -> None:
    root = debian_like(tmp_path / "root")
    write(root / "init", "#!/bin/sh\nexec /bin/sh\n", mode=0o755)
    write(root / "etc/initrd-release", "ID=custom-initrd\n")
    make_initrd_files(root)
    assert not (root / "init").is_symlink() and "exec /bin/sh" in (root / "init").read_text()
    assert (root / "etc/initrd-release").read_text() == "ID=custom-initrd\n"


def test_without_systemd_or_os_release_it_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="MakeInitrd=yes needs systemd") as e:
        make_initrd_files(tmp_path / "empty")
    assert "systemd" in (e.value.hint or "")
    root = tmp_path / "no-os-release"
    write(root / "usr/lib/systemd/systemd", "", mode=0o755)
    with pytest.raises(MkosiError, match="no os-release"):
        make_initrd_files(root)
    with pytest.raises(MkosiError, match="Format=uki needs systemd"):
        link_init(tmp_path / "other", "Format=uki")


def test_an_etc_link_out_of_the_image_is_resolved_inside_it(tmp_path: Path) -> None:
    outside = tmp_path / "host-etc"
    outside.mkdir()
    root = tmp_path / "root"
    write(root / "usr/lib/systemd/systemd", "", mode=0o755)
    write(root / "usr/lib/os-release", "ID=debian\n")
    (root / "etc").symlink_to(outside)          # absolute: inside the image it means /host-etc...
    make_initrd_files(root)
    assert list(outside.iterdir()) == []        # ...so nothing is written to the host's directory
    assert (root / os.fspath(outside).lstrip("/") / "initrd-release").is_symlink()


def images(*argv: str) -> dict[str, Config]:
    return {c.image: c for c in load_args(list(argv))[1]}


def test_the_builtin_initrd_configuration_makes_an_initrd(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n[Content]\nBootable=yes\n"
                             "Initrds=%O/initrd\n")
    write(wd / "mkosi.images/initrd.conf", "[Include]\nInclude=mkosi-initrd\n")
    found = images("summary")
    assert found["initrd"].make_initrd is True and found["initrd"].bootable is False
    assert found["main"].make_initrd is False


def test_vm_runs_the_main_image_whatever_the_sub_images_are(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n[Content]\nBootable=yes\n")
    write(wd / "mkosi.images/initrd.conf", "[Include]\nInclude=mkosi-initrd\n")
    for verb in ("vm", "qemu"):
        assert images(verb)["main"].bootable is True     # the initrd sub-image (Bootable=no) is no error
    # Without Bootable= a modern tree's disk image is Bootable=auto: vm may try it.
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n")
    assert images("vm")["main"].bootable_auto is True
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n[Content]\nBootable=no\n")
    with pytest.raises(ConfigError, match="needs a bootable image"):
        images("vm")
