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


def test_a_subimage_whose_mkosi_conf_does_not_match_is_not_built(wd: Path) -> None:
    # An image selected by a profile: without the profile, mkosi.images/NAME/ is skipped whole,
    # its drop-ins included; a NAME.conf file that does not match is skipped the same way.
    write(wd / "mkosi.conf", "[Output]\nFormat=disk\n")
    write(wd / "mkosi.profiles/net.conf", "[Content]\nPackages=curl\n")
    write(wd / "mkosi.images/initrd/mkosi.conf", "[Output]\nFormat=cpio\n")
    write(wd / "mkosi.images/netesp/mkosi.conf", """
        [Match]
        Profiles=net

        [Output]
        Format=esp
    """)
    write(wd / "mkosi.images/netesp/mkosi.conf.d/pkgs.conf", "[Content]\nPackages=systemd-boot\n")
    write(wd / "mkosi.images/extra.conf", "[Match]\nProfiles=net\n\n[Output]\nFormat=sysext\n")
    assert list(load()) == ["initrd", "main"]
    images = load("--profile", "net")
    assert sorted(images) == ["extra", "initrd", "main", "netesp"]
    assert images["netesp"].format == "esp"
    assert images["netesp"].packages == ["systemd-boot"]
    assert images["extra"].format == "sysext"
    assert images["main"].packages == ["curl"]


def test_a_subimage_reads_its_own_profiles_and_skips_the_ones_it_lacks(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Config]\nProfiles=debug\n")
    write(wd / "mkosi.profiles/debug.conf", "[Content]\nPackages=gdb\n")
    write(wd / "mkosi.profiles/small.conf", "[Content]\nPackages=busybox\n")
    write(wd / "mkosi.images/base/mkosi.conf", "[Content]\nPackages=bash\n")
    write(wd / "mkosi.images/base/mkosi.profiles/debug/mkosi.conf", "[Content]\nPackages=strace\n")
    write(wd / "mkosi.images/other/mkosi.conf", "[Content]\nPackages=coreutils\n")
    images = load()
    assert images["main"].packages == ["gdb"]
    assert images["base"].packages == ["bash", "strace"]
    # No mkosi.images/other/mkosi.profiles/debug: not an error for a sub-image, nothing is added.
    assert images["other"].packages == ["coreutils"]
    images = load("--profile", "small")
    assert images["main"].packages == ["gdb", "busybox"]
    assert images["base"].packages == ["bash", "strace"]


def test_a_subimage_output_is_named_after_the_subimage_not_the_image_id(wd: Path) -> None:
    (wd / "out").mkdir()
    write(wd / "mkosi.conf", """
        [Output]
        ImageId=acme
        ImageVersion=3
        OutputDirectory=out
        Format=disk
    """)
    write(wd / "mkosi.images/base/mkosi.conf", "[Output]\nFormat=directory\n")
    write(wd / "mkosi.images/ext/mkosi.conf", "[Config]\nDependencies=base\n\n[Output]\nFormat=sysext\n")
    write(wd / "mkosi.images/initrd/mkosi.conf", "[Output]\nFormat=cpio\nOutput=%i-initrd\n")
    images = load()
    assert images["main"].output == wd / "out/acme_3.raw"
    assert images["base"].output == wd / "out/base_3"
    assert images["ext"].output == wd / "out/ext_3.raw"
    # An explicit Output= still wins, and %i is still the passed-down ImageId=. In a modern tree it is
    # the name's prefix: the format's and compression's suffixes are added (not ImageVersion=), and the
    # output directory gets a link named after the prefix.
    assert images["initrd"].output == wd / "out/acme-initrd.cpio.zst"
    assert images["initrd"].output_link == "acme-initrd"
    assert images["ext"].image_id == "acme"


@pytest.mark.parametrize(("distribution", "release"), [("debian", "bookworm"), ("fedora", "43"), ("ubuntu", "noble")])
def test_a_set_distribution_that_is_the_hosts_defaults_to_the_hosts_release(
    wd: Path, distribution: str, release: str,
) -> None:
    # The host is Debian bookworm (fixed_host): Distribution=debian alone builds bookworm, as on the host.
    write(wd / "mkosi.conf", f"[Distribution]\nDistribution={distribution}\n")
    assert load()["main"].release == release


def test_settings_retired_by_v26_are_ignored_with_a_warning_naming_their_replacement(
    wd: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    write(wd / "mkosi.conf", """
        [Content]
        KernelModulesInitrdExclude=.*
        KernelModulesInitrdInclude=default
        FirmwareExclude=.*
        Packages=systemd

        [Runtime]
        RuntimeScratch=no
    """)
    config = load()["main"]
    assert config.packages == ["systemd"]
    assert config.kernel_initrd_modules == ["default"]
    err = capsys.readouterr().err
    assert "mkosi.conf:2: KernelModulesInitrdExclude= is deprecated by v26" in err
    assert "globs of KernelInitrdModules=; ignored" in err
    assert "mkosi.conf:4: FirmwareExclude= is deprecated by v26" in err
    assert "mkosi.conf:8: RuntimeScratch= is dropped in v26" in err
    assert "unknown setting" not in err
