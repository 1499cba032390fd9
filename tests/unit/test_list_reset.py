"""An empty assignment of a list setting: in the modern language (mkosi.conf trees) it clears what was
assigned before, the default included; in the classic language (mkosi.default trees) it changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.config.enums import ConfigLanguage
from mkosi.config.ini import Assignment, Origin
from mkosi.config.parse import merge
from mkosi.config.settings import Config, by_dest
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def main_image(*argv: str) -> Config:
    configs = load_args([*argv, "summary"])[1]
    assert configs[-1].image == "main"
    return configs[-1]


def test_empty_assignment_clears_earlier_items_in_one_file(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=a b\nPackages=\nPackages=c\n")
    assert main_image().packages == ["c"]


def test_empty_assignment_in_a_dropin_clears_the_files_before_it(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=a\nRemoveFiles=/x\nKernelCommandLine=quiet\n")
    write(wd / "mkosi.conf.d/10-reset.conf", "[Content]\nPackages=\nRemoveFiles=\nKernelCommandLine=\n")
    write(wd / "mkosi.conf.d/20-more.conf", "[Content]\nPackages=b\nRemoveFiles=/y\n")
    config = main_image()
    assert config.packages == ["b"]
    assert config.remove_files == ["/y"]
    assert config.kernel_command_line == []


def test_empty_cli_value_clears_the_files_values(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=a b\n")
    assert main_image("--package=", "--package=vim").packages == ["vim"]
    assert main_image("--package=vim").packages == ["a", "b", "vim"]


def test_empty_profile_on_the_cli_replaces_the_configured_profiles(wd: Path) -> None:
    # as rpi-mkosi's CI runs it: mkosi --profile= --profile=disk --profile=release
    write(wd / "mkosi.conf", "[Config]\nProfiles=disk dev\n")
    for name in ("disk", "dev", "release"):
        write(wd / f"mkosi.profiles/{name}.conf", f"[Content]\nPackages={name}-pkg\n")
    config = main_image("--profile=", "--profile=disk", "--profile=release")
    assert [str(p) for p in config.profiles] == ["disk", "release"]
    assert config.packages == ["disk-pkg", "release-pkg"]


def test_empty_assignment_overrides_a_non_empty_default() -> None:
    s = by_dest("manifest_format")
    raw = [Assignment(s, "", Origin(None, None))]
    assert merge(raw, ConfigLanguage.modern).values["manifest_format"] == []


def test_removals_still_work_in_the_modern_language(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=a b c\nPackages=!b\n")
    assert main_image().packages == ["a", "c"]
    assert main_image("--package=!*", "--package=d").packages == ["d"]


def test_empty_assignment_leaves_out_the_mkosi_file_default(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=a\n")
    (wd / "mkosi.packages").mkdir()
    (wd / "mkosi.extra").mkdir()
    config = main_image()
    assert (wd / "mkosi.packages") in [Path(p).absolute() for p in config.package_directories]
    assert [t.source for t in config.extra_trees] == [wd / "mkosi.extra"]
    config = main_image("--package-directory=", "--extra-tree=")
    assert config.package_directories == []
    assert config.extra_trees == []


def test_classic_language_ignores_empty_list_assignments(wd: Path) -> None:
    write(wd / "mkosi.default",
          "[Distribution]\nDistribution=debian\n[Packages]\nPackages=a b\nPackages=\nPackages=c\n")
    assert main_image().packages == ["a", "b", "c"]
    assert main_image("--package=", "--package=vim").packages == ["a", "b", "c", "vim"]
    assert main_image("--package=!*", "--package=vim").packages == ["vim"]
    assert main_image("--package=!a").packages == ["b", "c"]


def test_mkosi_file_default_stays_out_after_a_reset_and_more_entries(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackageDirectories=\nPackageDirectories=other\n"
                             "[Build]\nEnvironmentFiles=\n")
    (wd / "mkosi.packages").mkdir()
    (wd / "other").mkdir()
    write(wd / "mkosi.env", "A=1\n")
    config = main_image()
    assert [Path(p).absolute() for p in config.package_directories] == [wd / "other"]
    assert config.environment_files == []


def test_empty_assignment_in_a_subimage_clears_the_inherited_items(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nKernelCommandLine=quiet\n")
    write(wd / "mkosi.images/sub.conf", "[Content]\nKernelCommandLine=\nKernelCommandLine=rw\n")
    configs = load_args(["summary"])[1]
    by_name = {c.image: c for c in configs}
    assert by_name["main"].kernel_command_line == ["quiet"]
    assert by_name["sub"].kernel_command_line == ["rw"]
