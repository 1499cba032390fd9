"""Configuration trees of the kinds public projects ship, written for these tests: each is loaded as
`mkosi summary` would load it on a Debian bookworm host and checked field by field against what the
modern manual says it resolves to (distribution, release, format, packages, profiles, images and their
order)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.config.enums import Distribution
from mkosi.config.settings import Config
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def load(*argv: str) -> dict[str, Config]:
    """Every image of the tree in the current directory, by name, in the order they would be built."""
    configs = load_args([*argv, "summary"])[1]
    return {c.image: c for c in configs}


def tree_sources(config: Config) -> list[str]:
    return [str(getattr(t, "source", t)) for t in config.extra_trees]


# ---- an OS image with an initrd, a base tree and extensions in mkosi.images/, and a tools tree config ----

def os_with_subimages(wd: Path) -> None:
    (wd / "out").mkdir()
    write(wd / "mkosi.conf", """
        [Distribution]
        Distribution=fedora
        Release=42

        [Output]
        ImageId=acme
        ImageVersion=7
        OutputDirectory=out

        [Config]
        Dependencies=extension

        [Content]
        ExtraTree=%O/base
        Packages=kernel-core
                 systemd-boot
    """)
    # The tools tree's own settings: read for the tools tree only, never for the images.
    write(wd / "mkosi.tools.conf", "[Content]\nPackages=never-in-an-image\n")
    write(wd / "mkosi.images/initrd/mkosi.conf", """
        [Include]
        Include=mkosi-initrd

        [Content]
        Packages=lvm2
    """)
    write(wd / "mkosi.images/base/mkosi.conf", """
        [Output]
        Format=directory

        [Content]
        Packages=bash
                 coreutils
    """)
    write(wd / "mkosi.images/extension.conf", """
        [Config]
        Dependencies=base
                     initrd

        [Output]
        Format=sysext

        [Content]
        Packages=strace
    """)


def test_subimages_build_in_dependency_order_and_the_main_image_last(wd: Path) -> None:
    os_with_subimages(wd)
    images = load()
    # The main image's Dependencies= selects the extension, which pulls in the base and the initrd.
    assert list(images) == ["base", "initrd", "extension", "main"]


def test_subimages_share_the_universal_settings_and_keep_their_own(wd: Path) -> None:
    os_with_subimages(wd)
    images = load()
    for config in images.values():
        assert (config.distribution, config.release) == (Distribution.fedora, "42")
        assert config.output_dir == wd / "out"
        # ImageId= and ImageVersion= are passed down to the sub-images.
        assert (config.image_id, config.image_version) == ("acme", "7")
        assert "never-in-an-image" not in config.packages
    assert images["base"].format == "directory"
    assert images["base"].packages == ["bash", "coreutils"]
    assert images["extension"].format == "sysext"
    assert images["extension"].packages == ["strace"]
    # No Format= given: the default, an ext4 GPT image.
    assert images["main"].format == "gpt_ext4"
    assert images["main"].packages == ["kernel-core", "systemd-boot"]
    # %O is the output directory: the base image's output, looked for only when the main image is built.
    assert tree_sources(images["main"]) == [str(wd / "out/base")]


def test_the_initrd_subimage_is_the_builtin_initrd_plus_its_own_packages(wd: Path) -> None:
    os_with_subimages(wd)
    initrd = load()["initrd"]
    assert initrd.format == "cpio"
    assert initrd.bootable is False
    # The built-in initrd's Fedora packages come first (the Include= stands before Packages=), then the
    # image's own.
    assert initrd.packages[0] == "systemd"
    assert initrd.packages[-1] == "lvm2"
    assert "systemd-udev" in initrd.packages


# ---- a profile-driven tree ----

def profile_tree(wd: Path) -> None:
    write(wd / "mkosi.conf", """
        [Config]
        Profiles=base

        [Distribution]
        Distribution=debian
        Release=trixie

        [Output]
        Format=directory

        [Content]
        Packages=systemd
    """)
    write(wd / "mkosi.conf.d/50-desktop-extras.conf", """
        [Match]
        Profiles=desktop

        [Content]
        Packages=flatpak
    """)
    write(wd / "mkosi.profiles/base.conf", "[Content]\nPackages=less\n")
    write(wd / "mkosi.profiles/desktop/mkosi.conf", """
        [Output]
        Format=disk

        [Content]
        Packages=gnome-shell
    """)
    write(wd / "mkosi.profiles/desktop/mkosi.conf.d/fedora.conf", """
        [Match]
        Distribution=fedora

        [Content]
        Packages=fedora-workstation-repositories
    """)
    write(wd / "mkosi.profiles/server/mkosi.conf", "[Content]\nPackages=openssh-server\n")


def test_profiles_from_the_configuration(wd: Path) -> None:
    profile_tree(wd)
    main = load()["main"]
    assert main.profiles == ["base"]
    assert (main.distribution, main.release, main.format) == (Distribution.debian, "trixie", "directory")
    assert main.packages == ["systemd", "less"]


def test_profiles_from_the_command_line_in_their_order(wd: Path) -> None:
    profile_tree(wd)
    main = load("--profile=desktop", "--profile=server")["main"]
    # The command line's profiles come after the configured ones; each is read after mkosi.conf.d/, and
    # [Match] Profiles= in mkosi.conf.d/ already sees the command line's.
    assert main.profiles == ["base", "desktop", "server"]
    assert main.format == "disk"
    assert main.packages == ["systemd", "flatpak", "less", "gnome-shell", "openssh-server"]
    assert "fedora-workstation-repositories" not in main.packages


# ---- '|' matches on the distribution ----

def family_tree(wd: Path) -> None:
    write(wd / "mkosi.conf", """
        [Output]
        Format=tar

        [Content]
        Packages=bash
    """)
    write(wd / "mkosi.conf.d/10-deb.conf", """
        [Match]
        Distribution=|debian
        Distribution=|ubuntu

        [Content]
        Packages=apt
    """)
    write(wd / "mkosi.conf.d/10-rpm.conf", """
        [Match]
        Distribution=|centos
        Distribution=|fedora

        [Content]
        Packages=dnf
    """)
    write(wd / "mkosi.conf.d/20-boot.conf", """
        [TriggerMatch]
        Distribution=debian
        Release=!bullseye

        [TriggerMatch]
        Distribution=ubuntu
        Release=!jammy

        [Match]
        Architecture=uefi

        [Content]
        Packages=systemd-boot
    """)
    write(wd / "mkosi.conf.d/30-fedora/mkosi.conf", """
        [Match]
        Distribution=fedora

        [Distribution]
        Release=rawhide
    """)
    write(wd / "mkosi.conf.d/30-fedora/mkosi.conf.d/kernel.conf", "[Content]\nPackages=kernel-core\n")


def test_distribution_defaults_to_the_host_and_its_release(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mkosi.distributions.facts.host_architecture", lambda: "x86_64")
    family_tree(wd)
    main = load()["main"]
    assert (main.distribution, main.release, main.format) == (Distribution.debian, "bookworm", "tar")
    assert main.packages == ["bash", "apt", "systemd-boot"]


@pytest.mark.parametrize("argv,release,packages", [
    (("-d", "fedora"), "rawhide", ["bash", "dnf", "kernel-core"]),
    (("-d", "centos"), "9", ["bash", "dnf"]),
    (("-d", "ubuntu", "-r", "jammy"), "jammy", ["bash", "apt"]),
    (("-d", "ubuntu"), "noble", ["bash", "apt", "systemd-boot"]),
    (("-d", "arch"), "rolling", ["bash"]),
])
def test_distribution_families(wd: Path, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], release: str,
                               packages: list[str]) -> None:
    monkeypatch.setattr("mkosi.distributions.facts.host_architecture", lambda: "x86_64")
    family_tree(wd)
    main = load(*argv)["main"]
    assert (main.release, main.packages) == (release, packages)


# ---- the built-in configurations ----

def test_builtin_vm_configuration_makes_a_bootable_image(wd: Path) -> None:
    write(wd / "mkosi.conf", """
        [Distribution]
        Distribution=debian

        [Include]
        Include=mkosi-vm

        [Content]
        Packages=vim
    """)
    main = load()["main"]
    assert (main.distribution, main.release, main.format) == (Distribution.debian, "bookworm", "gpt_ext4")
    assert main.bootable is True
    assert main.packages[-1] == "vim"
    assert "systemd" in main.packages and "udev" in main.packages


def test_builtin_initrd_and_tools_configurations(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=arch\n")
    write(wd / "mkosi.images/initrd.conf", "[Include]\nInclude=mkosi-initrd\n")
    write(wd / "mkosi.images/tools.conf", "[Include]\nInclude=mkosi-tools\n")
    images = load()
    assert list(images) == ["initrd", "tools", "main"]
    assert (images["initrd"].format, images["initrd"].bootable) == ("cpio", False)
    assert images["initrd"].packages[:2] == ["systemd", "kmod"]
    assert images["tools"].format == "directory"
    assert all(c.distribution == Distribution.arch for c in images.values())


# ---- nested drop-in directories ----

def test_nested_dropin_directories(wd: Path) -> None:
    # The configuration lives in mkosi/ below the project's top directory, as in projects that keep
    # their sources at the top.
    top = wd / "mkosi"
    write(top / "mkosi.conf", "[Content]\nPackages=base\n")
    # A directory whose mkosi.conf holds only a [Match]: its drop-ins apply only when it holds.
    write(top / "mkosi.conf.d/20-debian-ubuntu/mkosi.conf", "[Match]\nDistribution=|debian\nDistribution=|ubuntu\n")
    write(top / "mkosi.conf.d/20-debian-ubuntu/mkosi.conf.d/shim.conf", """
        [Content]
        Packages=
                shim-signed
                # only Debian and Ubuntu have this package
    """)
    write(top / "mkosi.conf.d/20-centos-fedora/mkosi.conf", "[Match]\nDistribution=|centos\nDistribution=|fedora\n")
    write(top / "mkosi.conf.d/20-centos-fedora/mkosi.conf.d/shim.conf", "[Content]\nPackages=shim\n")
    # A directory without mkosi.conf is read like a top-level one; one named like a file too.
    write(top / "mkosi.conf.d/30-vm/mkosi.conf.d/kernel.conf", "[Content]\nPackages=linux-image-amd64\n")
    write(top / "mkosi.conf.d/40-tools.conf/mkosi.conf", "[Match]\nImageId=tools\n[Content]\nPackages=gdb\n")
    # Older releases' '@' prefix: an ordinary assignment now.
    write(top / "mkosi.conf.d/50-defaults.conf", "[Output]\n@Format=directory\n")
    main = load()["main"]
    # No distribution is set: the host's, Debian bookworm.
    assert (main.distribution, main.release, main.format) == (Distribution.debian, "bookworm", "directory")
    assert main.packages == ["base", "shim-signed", "linux-image-amd64"]
    assert load("--image-id=tools")["main"].packages == ["base", "shim-signed", "linux-image-amd64", "gdb"]
    fedora = load("-d", "fedora")["main"]
    assert (fedora.release, fedora.packages) == ("43", ["base", "shim", "linux-image-amd64"])
