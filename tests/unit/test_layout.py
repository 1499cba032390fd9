"""The modern configuration layout: mkosi.conf trees, includes, profiles, sub-images, conditions,
specifiers. Each test writes a tree and checks what it resolves to."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import pytest

import mkosi.distributions.facts
import mkosi.verbs
from mkosi.config import load_args
from mkosi.config.enums import Distribution
from mkosi.config.settings import Args, Config
from mkosi.config.types import ConfigTree
from mkosi.config.version import compare_versions, version_condition_holds
from mkosi.errors import ConfigError, MkosiError
from mkosi.preflight import output_lock
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def images(*argv: str) -> tuple[Args, list[Config]]:
    return load_args([*argv, "summary"])


def main_image(*argv: str) -> Config:
    configs = images(*argv)[1]
    assert configs[-1].image == "main"
    return configs[-1]


# ---- where configuration comes from ----

def test_conf_d_files_and_nested_directories(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=fedora\n[Content]\nPackages=a\n")
    write(wd / "mkosi.conf.d/10-b.conf", "[Content]\nPackages=b\n")
    write(wd / "mkosi.conf.d/15-not-conf.txt", "[Content]\nPackages=never\n")
    write(wd / "mkosi.conf.d/20-dir/mkosi.conf", "[Content]\nPackages=c\n")
    write(wd / "mkosi.conf.d/20-dir/mkosi.conf.d/x.conf", "[Content]\nPackages=d\n")
    write(wd / "mkosi.conf.d/30-skipped/mkosi.conf", "[Match]\nDistribution=debian\n[Content]\nPackages=e\n")
    write(wd / "mkosi.conf.d/30-skipped/mkosi.conf.d/y.conf", "[Content]\nPackages=f\n")
    config = main_image()
    assert config.packages == ["a", "b", "c", "d"]
    assert wd / "mkosi.conf.d/30-skipped/mkosi.conf.d/y.conf" not in config.config_files


def test_local_conf_wins_over_files_but_not_over_the_command_line(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nImageId=project\nImageVersion=1\n[Content]\nPackages=a\n")
    write(wd / "mkosi.local.conf", "[Output]\nImageId=mine\n[Content]\nPackages=local\n")
    config = main_image()
    assert (config.image_id, config.image_version) == ("mine", "1")
    assert config.packages == ["a", "local"]
    assert main_image("--image-id=cli").image_id == "cli"


def test_mkosi_subdirectory_holds_the_configuration(wd: Path) -> None:
    write(wd / "mkosi/mkosi.conf", "[Distribution]\nDistribution=arch\n")
    assert main_image().distribution == Distribution.arch


def test_include_files_directories_once_and_relative(wd: Path) -> None:
    write(wd / "shared/common.conf", "[Content]\nPackages=common\n")
    write(wd / "shared/dir/mkosi.conf", "[Content]\nPackages=fromdir\n")
    write(wd / "mkosi.conf", "[Include]\nInclude=shared/common.conf\n        shared/dir\n        shared/common.conf\n"
          "[Content]\nPackages=after\n")
    assert main_image().packages == ["common", "fromdir", "after"]


def test_include_on_the_command_line(wd: Path) -> None:
    write(wd / "extra.conf", "[Content]\nPackages=extra\n")
    write(wd / "mkosi.conf", "[Content]\nPackages=main\n")
    assert main_image("--include=extra.conf").packages == ["extra", "main"]


def test_builtin_vm_configuration(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n[Include]\nInclude=mkosi-vm\n")
    config = main_image()
    assert config.bootable is True
    assert "udev" in config.packages


def test_unknown_builtin_configuration_is_an_error(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Include]\nInclude=mkosi-nonesuch\n")
    with pytest.raises(ConfigError, match=r"mkosi.conf:2.*no built-in configuration 'mkosi-nonesuch'"):
        images()


# ---- profiles ----

def test_profiles_files_and_directories_in_order(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Config]\nProfiles=base\n[Content]\nPackages=main\n")
    write(wd / "mkosi.profiles/base.conf", "[Content]\nPackages=base\n")
    write(wd / "mkosi.profiles/dev/mkosi.conf", "[Content]\nPackages=gdb\n")
    write(wd / "mkosi.conf.d/50-dev.conf", "[Match]\nProfiles=dev\n[Content]\nPackages=dev-only\n")
    assert main_image().packages == ["main", "base"]
    config = main_image("--profile=dev")
    assert config.profiles == ["base", "dev"]
    assert config.packages == ["main", "dev-only", "base", "gdb"]


def test_a_profile_without_a_file_only_selects_matches_and_is_warned_about(
    wd: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # As in v26 (projects select sub-images and drop-ins with such profiles): not an error.
    write(wd / "mkosi.conf", "[Content]\nPackages=main\n")
    write(wd / "mkosi.conf.d/dev.conf", "[Match]\nProfiles=dev\n\n[Content]\nPackages=gdb\n")
    config = main_image("--profile=dev")
    assert config.profiles == ["dev"]
    assert config.packages == ["main", "gdb"]
    err = capsys.readouterr().err
    assert "command line: profile 'dev' has no mkosi.profiles/dev.conf or mkosi.profiles/dev/" in err


# ---- sub-images ----

def test_subimages_inherit_universal_settings_only(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=fedora\nRelease=40\n[Output]\nImageVersion=7\n"
          "[Content]\nPackages=main-only\n")
    write(wd / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\n[Content]\nPackages=systemd\n")
    write(wd / "mkosi.images/app/mkosi.conf", "[Distribution]\nDistribution=debian\n[Output]\nFormat=directory\n")
    _, configs = images()
    by = {c.image: c for c in configs}
    assert [c.image for c in configs][-1] == "main"
    assert set(by) == {"main", "initrd", "app"}
    assert by["initrd"].format == "cpio" and by["initrd"].packages == ["systemd"]
    assert by["initrd"].image_version == "7"  # inherited
    assert (by["app"].distribution, by["app"].release) == (Distribution.fedora, "40")  # universal
    assert "Distribution= is a universal setting" in capsys.readouterr().err
    assert by["initrd"].output is not None and by["initrd"].output.name == "initrd_7.cpio.zst"


def test_dependencies_order_the_images(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=x\n")
    write(wd / "mkosi.images/a.conf", "[Config]\nDependencies=b\n")
    write(wd / "mkosi.images/b.conf", "[Config]\nDependencies=c\n")
    write(wd / "mkosi.images/c.conf", "[Output]\nFormat=tar\n")
    assert [c.image for c in images()[1]] == ["c", "b", "a", "main"]


def test_main_dependencies_select_the_images(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Config]\nDependencies=b\n")
    write(wd / "mkosi.images/a.conf", "[Output]\nFormat=tar\n")
    write(wd / "mkosi.images/b.conf", "[Output]\nFormat=tar\n")
    assert [c.image for c in images()[1]] == ["b", "main"]


def test_dependency_cycle_and_missing_image_are_errors(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=x\n")
    write(wd / "mkosi.images/a.conf", "[Config]\nDependencies=b\n")
    write(wd / "mkosi.images/b.conf", "[Config]\nDependencies=a\n")
    with pytest.raises(ConfigError, match="cycle"):
        images()
    write(wd / "mkosi.images/b.conf", "[Config]\nDependencies=nope\n")
    with pytest.raises(ConfigError, match=r"'nope', which is not in mkosi\.images"):
        images()


def test_image_match_in_a_shared_include(wd: Path) -> None:
    write(wd / "shared.conf", "[Match]\nImage=main\n[Content]\nPackages=only-main\n")
    write(wd / "mkosi.conf", "[Include]\nInclude=shared.conf\n")
    write(wd / "mkosi.images/sub/mkosi.conf", "[Include]\nInclude=../../shared.conf\n[Content]\nPackages=sub\n")
    by = {c.image: c for c in images()[1]}
    assert by["main"].packages == ["only-main"]
    assert by["sub"].packages == ["sub"]


# ---- conditions ----

def test_release_match_sees_the_default_release(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=ubuntu\n")
    write(wd / "mkosi.conf.d/10.conf", "[Match]\nRelease=bookworm\n[Content]\nPackages=bookworm-only\n")
    write(wd / "mkosi.conf.d/20.conf", "[Match]\nRelease=noble\n[Content]\nPackages=noble-only\n")
    config = main_image()
    assert config.release == "noble"
    assert config.packages == ["noble-only"]


def test_triggering_conditions_and_negation(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\n[Output]\nFormat=directory\n")
    write(wd / "mkosi.conf.d/10.conf", "[Match]\nDistribution=|fedora\nDistribution=|debian\nFormat=!tar\n"
          "[Content]\nPackages=yes1\n")
    write(wd / "mkosi.conf.d/20.conf", "[Match]\nDistribution=|fedora\nDistribution=|arch\n[Content]\nPackages=no1\n")
    write(wd / "mkosi.conf.d/30.conf", "[Match]\nFormat=|!directory\nFormat=|tar\n[Content]\nPackages=no2\n")
    assert main_image().packages == ["yes1"]


def test_trigger_match_sections(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=ubuntu\nRelease=noble\n")
    write(wd / "mkosi.conf.d/10.conf", "[TriggerMatch]\nDistribution=debian\nRelease=bookworm\n"
          "[TriggerMatch]\nDistribution=ubuntu\nRelease=noble\n[Content]\nPackages=matched\n")
    write(wd / "mkosi.conf.d/20.conf", "[Match]\nFormat=gpt_ext4\n[TriggerMatch]\nDistribution=debian\n"
          "[Content]\nPackages=not-matched\n")
    assert main_image().packages == ["matched"]


def test_assert_sections_fail_loudly(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Assert]\nDistribution=fedora\n[Content]\nPackages=x\n")
    with pytest.raises(ConfigError, match=r"mkosi.conf.*\[Assert\]"):
        images()


def test_globs_versions_paths_environment(wd: Path) -> None:
    (wd / "marker").write_text("")
    write(wd / "mkosi.conf", "[Output]\nImageId=web-frontend\nImageVersion=1.10\n"
          "[Content]\nEnvironment=MODE=fast\n")
    write(wd / "mkosi.conf.d/1.conf", "[Match]\nImageId=web-*\n[Content]\nPackages=glob\n")
    write(wd / "mkosi.conf.d/2.conf", "[Match]\nImageVersion=>=1.9\n[Content]\nPackages=newer\n")
    write(wd / "mkosi.conf.d/3.conf", "[Match]\nImageVersion=<1.9\n[Content]\nPackages=older\n")
    write(wd / "mkosi.conf.d/4.conf", "[Match]\nPathExists=../marker\n[Content]\nPackages=path\n")
    write(wd / "mkosi.conf.d/5.conf", "[Match]\nEnvironment=MODE=fast\n[Content]\nPackages=env\n")
    write(wd / "mkosi.conf.d/6.conf", "[Match]\nEnvironment=OTHER\n[Content]\nPackages=noenv\n")
    write(wd / "mkosi.conf.d/7.conf", "[Match]\nArchitecture=uefi\nHostArchitecture=x86-64\n[Content]\nPackages=arch\n")
    packages = main_image().packages
    assert packages[:4] == ["glob", "newer", "path", "env"]
    assert not {"older", "noenv"} & set(packages)
    assert ("arch" in packages) == (main_image().architecture == "x86_64" and platform.machine() == "x86_64")


def test_match_on_an_unknown_value_warns(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=x\n")
    write(wd / "mkosi.conf.d/1.conf", "[Match]\nDistribution=plan9\n[Content]\nPackages=never\n")
    assert main_image().packages == ["x"]
    assert "Distribution=plan9 names no known value" in capsys.readouterr().err


def test_match_on_an_untestable_setting_is_an_error(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Match]\nPackages=vim\n")
    with pytest.raises(ConfigError, match=r"\[Match\] cannot test Packages="):
        images()


# ---- specifiers ----

def test_specifiers(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\nRelease=trixie\n"
          "[Output]\nImageId=%d-%r\n[Content]\nEnvironment=WHERE=%C ARCH=%a PCT=100%% IMG=%I FS=%F URL=a%20b\n")
    config = main_image()
    assert config.image_id == "debian-trixie"
    assert config.environment == [f"WHERE={wd}", "ARCH=x86_64" if config.architecture == "x86_64" else
                                  f"ARCH={config.architecture}", "PCT=100%", "IMG=main", "FS=ext4", "URL=a%20b"]


def test_relative_paths_are_relative_to_the_configuration(wd: Path) -> None:
    (wd / "sub/trees/t").mkdir(parents=True)
    write(wd / "mkosi.conf.d/sub/mkosi.conf", "[Content]\nExtraTree=trees/t\n")
    (wd / "mkosi.conf.d/sub/trees/t").mkdir(parents=True)
    assert main_image().extra_trees == [ConfigTree(wd / "mkosi.conf.d/sub/trees/t")]


# ---- versions ----

def test_minimum_version(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Config]\nMinimumVersion=25\n")
    images()
    write(wd / "mkosi.conf", "[Config]\nMinimumVersion=25\n")
    write(wd / "mkosi.conf.d/later.conf", "[Config]\nMinimumVersion=99\n")
    with pytest.raises(ConfigError, match=r"later.conf:2: MinimumVersion: .*needs mkosi 99 or newer"):
        images()


def test_minimum_version_commit_that_is_not_an_ancestor(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Config]\nMinimumVersion=commit:0123456789abcdef0123456789abcdef01234567\n")
    with pytest.raises(ConfigError, match="commit 0123456789abcdef"):
        images()


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1", "1", 0), ("1.10", "1.9", 1), ("252", "252.1", -1), ("1~rc1", "1", -1), ("1^1", "1", 1),
    ("1a", "1b", -1), ("2", "10", -1), ("v26", "v26", 0),
])
def test_compare_versions(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_version_conditions() -> None:
    assert version_condition_holds(">=252", "252")
    assert version_condition_holds("!=252", "253")
    assert version_condition_holds("<253", "252.4")
    assert version_condition_holds("252", "252")
    assert not version_condition_holds(">252", "252")


# ---- building several images ----

def test_independent_images_build_at_the_same_time(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=x\n")
    write(wd / "mkosi.images/a.conf", "[Output]\nFormat=tar\n")
    write(wd / "mkosi.images/b.conf", "[Output]\nFormat=tar\n")
    write(wd / "mkosi.images/c.conf", "[Config]\nDependencies=a\n[Output]\nFormat=tar\n")
    log = wd / "log"

    def fake(args: Args, config: Config) -> int:
        with log.open("a") as f:
            f.write(f"start {config.image} {time.monotonic()}\n")
        time.sleep(0.3)
        with log.open("a") as f:
            f.write(f"end {config.image} {time.monotonic()}\n")
        return 1 if config.image == "b" and (wd / "fail-b").exists() else 0

    monkeypatch.setattr(mkosi.verbs, "run_verb", fake)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    args, configs = load_args(["build"])
    assert mkosi.verbs.build_in_parallel(args, configs) == 0
    events = {(kind, image): float(at) for kind, image, at in (line.split() for line in log.read_text().splitlines())}
    assert events[("start", "c")] >= events[("end", "a")]          # after its dependency
    assert events[("start", "main")] >= max(events[("end", n)] for n in "abc")  # the main image last
    assert events[("start", "b")] < events[("end", "a")]           # a and b at the same time

    log.unlink()
    (wd / "fail-b").touch()
    assert mkosi.verbs.build_in_parallel(args, configs) == 1
    assert "start main" not in log.read_text()


def _events(log: Path) -> dict[tuple[str, str], float]:
    return {(kind, image): float(at) for kind, image, at in (line.split() for line in log.read_text().splitlines())}


def test_a_failed_image_stops_the_one_built_at_the_same_time(wd: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.images/a.conf", "[Output]\nFormat=tar\n")
    write(wd / "mkosi.images/b.conf", "[Output]\nFormat=tar\n")
    log = wd / "log"

    def fake(args: Args, config: Config) -> int:
        with log.open("a") as f:
            f.write(f"start {config.image} {time.monotonic()}\n")
        if config.image == "a":
            time.sleep(0.3)
            raise MkosiError("a broke", hint="fix a")
        try:
            time.sleep(30)
            with log.open("a") as f:
                f.write(f"end {config.image} {time.monotonic()}\n")
        finally:  # what the build's steps do when SIGTERM (taken as Ctrl-C) reaches them
            with log.open("a") as f:
                f.write(f"cleanup {config.image} {time.monotonic()}\n")
        return 0

    monkeypatch.setattr(mkosi.verbs, "run_verb", fake)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    args, configs = load_args(["build"])
    begin = time.monotonic()
    assert mkosi.verbs.build_in_parallel(args, configs) == 1
    assert time.monotonic() - begin < 10
    events = _events(log)
    assert ("end", "b") not in events and ("start", "main") not in events
    assert ("cleanup", "b") in events
    err = capfd.readouterr().err
    assert "[a] Error: a broke" in err and "[a]        Hint: fix a" in err
    assert "building image 'a' failed; stopping the build of 'b'" in err
    assert "[b] Error: interrupted" in err


def test_output_of_images_built_at_the_same_time_carries_their_names(
        wd: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.images/a.conf", "[Output]\nFormat=tar\n")
    write(wd / "mkosi.images/b.conf", "[Output]\nFormat=tar\n")

    def fake(args: Args, config: Config) -> int:
        # A tool writing straight to the inherited descriptors, as a build script's does.
        subprocess.run(["sh", "-c", f"echo out-{config.image}; echo err-{config.image} >&2"], check=True)
        os.write(1, f"last-{config.image}".encode())  # no newline at the end
        return 0

    monkeypatch.setattr(mkosi.verbs, "run_verb", fake)
    args, configs = load_args(["build"])
    assert mkosi.verbs.build_in_parallel(args, configs) == 0
    lines = capfd.readouterr().err.splitlines()
    for image in ("a", "b", "main"):
        for text in ("out", "err", "last"):
            assert f"[{image}] {text}-{image}" in lines


def test_images_sharing_an_output_directory_do_not_wait_for_each_other(wd: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write(wd / "mkosi.images/a.conf", "[Output]\nFormat=tar\n")
    write(wd / "mkosi.images/b.conf", "[Output]\nFormat=tar\n")
    args, configs = load_args(["build"])
    outdir = configs[0].output_dir
    assert outdir is not None and {c.output_dir for c in configs} == {outdir}
    # A move that an interrupted build left half done: finished once, before any image starts.
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / ".mkosi-old-a.tar").write_text("old")
    log = wd / "log"

    def fake(args: Args, config: Config) -> int:
        assert config.output_dir is not None
        with output_lock(config.output_dir) as own:
            with log.open("a") as f:
                f.write(f"start {config.image} {time.monotonic()}\n")
            assert not own
            assert (config.output_dir / "a.tar").read_text() == "old"
            time.sleep(0.5)
            with log.open("a") as f:
                f.write(f"end {config.image} {time.monotonic()}\n")
        return 0

    monkeypatch.setattr(mkosi.verbs, "run_verb", fake)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert mkosi.verbs.build_in_parallel(args, configs) == 0
    events = _events(log)
    assert events[("start", "b")] < events[("end", "a")] and events[("start", "a")] < events[("end", "b")]
    # Afterwards the lock is free again for a build of its own.
    with output_lock(outdir) as own:
        assert own


def test_build_order_follows_dependencies(wd: Path) -> None:
    write(wd / "mkosi.images/base.conf", "[Output]\nFormat=directory\n")
    write(wd / "mkosi.images/ext.conf", "[Config]\nDependencies=base\n[Output]\nFormat=sysext\n")
    write(wd / "mkosi.images/other.conf", "[Output]\nFormat=tar\n")
    _, configs = load_args(["build"])
    assert mkosi.verbs.build_dependencies(configs) == {"base": set(), "ext": {"base"}, "other": set(),
                                                         "main": {"base", "ext", "other"}}


# ---- cases met in public configuration trees ----

def test_a_sysext_sub_image_on_a_directory_base_image(wd: Path) -> None:
    # A sysext sub-image next to a directory base image: summary lists it, and it can be built.
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=fedora\n")
    write(wd / "mkosi.images/base/mkosi.conf", "[Output]\nFormat=directory\n")
    write(wd / "mkosi.images/tools/mkosi.conf", "[Config]\nDependencies=base\n[Output]\nFormat=sysext\n")
    configs = images()[1]
    assert [(c.image, c.format) for c in configs] == [
        ("base", "directory"), ("tools", "sysext"), ("main", "gpt_ext4")]
    assert [str(c.format) for c in load_args(["build"])[1]] == ["directory", "sysext", "gpt_ext4"]


def test_at_prefix_of_older_versions_is_accepted_with_a_warning(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=fedora\nRelease=40\n[Output]\nFormat=tar\n")
    write(wd / "mkosi.conf.d/10-defaults.conf", "[Output]\n@Format=directory\n[Distribution]\n@Release=rawhide\n")
    config = main_image()
    # Every value may be overridden now: the prefixed assignment is an ordinary one, read in its turn.
    assert (config.format, config.release) == ("directory", "rawhide")
    err = capsys.readouterr().err
    assert "mkosi.conf.d/10-defaults.conf:2: the '@' prefix of @Format=" in err
    assert "unknown setting" not in err


def test_match_build_sources_by_target(wd: Path) -> None:
    # "linux:kernel" exists as a directory too, so the test holds whether BuildSources= takes SRC:TARGET pairs
    # or a single path.
    (wd / "linux").mkdir()
    (wd / "linux:kernel").mkdir()
    write(wd / "mkosi.conf", "[Build]\nBuildSources=linux:kernel\n")
    write(wd / "mkosi.conf.d/10-kernel.conf", "[Match]\nBuildSources=kernel\n[Content]\nPackages=kernel-tools\n")
    write(wd / "mkosi.conf.d/11-slash.conf", "[Match]\nBuildSources=/kernel/\n[Content]\nPackages=slash\n")
    write(wd / "mkosi.conf.d/20-other.conf", "[Match]\nBuildSources=systemd\n[Content]\nPackages=never\n")
    assert main_image().packages == ["kernel-tools", "slash"]


def test_match_build_sources_fails_when_none_are_configured(wd: Path) -> None:
    write(wd / "mkosi.conf.d/10-kernel.conf", "[Match]\nBuildSources=kernel\n[Content]\nPackages=never\n")
    write(wd / "mkosi.conf.d/20-not.conf", "[Match]\nBuildSources=!kernel\n[Content]\nPackages=yes\n")
    assert main_image().packages == ["yes"]


def test_match_tools_tree_distribution_falls_back_to_the_host(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(wd / "mkosi.conf.d/10-debian-tools.conf", "[Match]\nToolsTreeDistribution=debian\n"
          "[Content]\nPackages=debian-tools\n")
    write(wd / "mkosi.conf.d/11-release.conf", "[Match]\nToolsTreeRelease=trixie\n[Content]\nPackages=trixie-tools\n")
    write(wd / "mkosi.conf.d/20-fedora-tools.conf", "[Match]\nToolsTreeDistribution=fedora\n"
          "[Content]\nPackages=fedora-tools\n")
    assert main_image().packages == ["debian-tools", "trixie-tools"]
    # An Ubuntu host's tools tree is Debian's, a CentOS host's Fedora's.
    monkeypatch.setattr(mkosi.distributions.facts, "host_distribution", lambda: (Distribution.centos, "9"))
    assert main_image().packages == ["fedora-tools"]


def test_comma_separated_lists_take_one_item_a_line(wd: Path) -> None:
    # Lists split at commas only (trees, search paths) still take an item from every continuation line,
    # with a comment after it, as the tree lists of large projects are written.
    for name in ("extra", "crt", "a", "b", "c"):
        (wd / name).mkdir()
    write(wd / "mkosi.conf", "[Content]\nExtraTree=\n        extra\n        crt # verification key\n"
          "[Host]\nExtraSearchPaths=a\n        b , c\n")
    config = main_image()
    assert [str(getattr(t, "source", t)) for t in config.extra_trees] == [str(wd / "extra"), str(wd / "crt")]
    assert config.extra_search_paths == [wd / "a", wd / "b", wd / "c"]


def test_trees_from_the_outputs_of_other_images_are_not_looked_for_yet(wd: Path) -> None:
    # The main image copies in what a sub-image builds (%O/base); it does not exist until that is built.
    (wd / "out").mkdir()
    write(wd / "mkosi.conf", "[Output]\nOutputDirectory=out\n[Content]\nExtraTree=%O/base\n")
    write(wd / "mkosi.images/base/mkosi.conf", "[Output]\nFormat=directory\n")
    config = main_image()
    assert [str(getattr(t, "source", t)) for t in config.extra_trees] == [str(wd / "out/base")]
    write(wd / "mkosi.conf", "[Output]\nOutputDirectory=out\n[Content]\nExtraTree=missing\n")
    with pytest.raises(ConfigError, match="missing' does not exist"):
        main_image()


def test_match_format_disk_holds_for_the_default_format(wd: Path) -> None:
    # A drop-in for disk images ([Match] Format=disk) applies when no format is set (the default is disk)
    # and for gpt_ext4, which is how disk is built; not for other formats.
    write(wd / "mkosi.conf", "[Content]\nPackages=base\n")
    write(wd / "mkosi.conf.d/vm/mkosi.conf", "[Match]\nFormat=|disk\nFormat=|cpio\n[Content]\nPackages=kernel\n")
    write(wd / "mkosi.conf.d/ext4.conf", "[Match]\nFormat=gpt_ext4\n[Content]\nPackages=e2fsprogs\n")
    assert main_image().packages == ["base", "e2fsprogs", "kernel"]
    assert main_image("--format=disk").packages == ["base", "e2fsprogs", "kernel"]
    assert main_image("--format=gpt_ext4").packages == ["base", "e2fsprogs", "kernel"]
    assert main_image("--format=directory").packages == ["base"]
    assert main_image("--format=gpt_btrfs").packages == ["base"]


def test_an_older_format_name_is_warned_about_once(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=raw_btrfs\n")
    write(wd / "mkosi.conf.d/10-match.conf", "[Match]\nFormat=gpt_btrfs\n[Content]\nPackages=btrfs-progs\n")
    write(wd / "mkosi.images/one.conf", "[Content]\nPackages=a\n")
    write(wd / "mkosi.images/two.conf", "[Content]\nPackages=b\n")
    assert main_image().packages == ["btrfs-progs"]
    assert capsys.readouterr().err.count("Format=raw_btrfs is an older name") == 1


def test_build_sources_take_pairs(wd: Path) -> None:
    (wd / "proj").mkdir()
    (wd / "linux").mkdir()
    write(wd / "mkosi.conf", "[Build]\nBuildSources=proj linux:kernel\n")
    config = main_image()
    assert config.build_source == wd / "proj"
    assert [(t.source, t.target) for t in config.extra_build_sources] == [(wd / "linux", Path("/kernel"))]
    write(wd / "mkosi.conf", "[Build]\nBuildSources=linux:kernel\n")
    assert main_image().build_source == wd / "linux"  # the first one when none goes to the top
    write(wd / "mkosi.conf", "[Content]\nPackages=x\n")
    assert main_image().build_source == wd             # the default: the configuration's directory
