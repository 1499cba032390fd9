"""The configuration layer: the settings table, the INI reader, merging, layering, defaults, detection
of mkosi.* files, validation and the summary. No root, no network: every test works in tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mkosi.config import load_args
from mkosi.config.enums import (
    BootProtocol,
    Distribution,
    Encrypt,
    ManifestFormat,
    UnifiedKernelImages,
    Verb,
    Verity,
    WithNetwork,
)
from mkosi.config.ini import Origin, lookup_key, normalize_key, parse_ini
from mkosi.config.parse import build_parser, parse_command_line
from mkosi.config.settings import SECTIONS, SETTINGS, Args, Config, default_value
from mkosi.config.types import ConfigTree, Kind, parse_bool, parse_size
from mkosi.distributions.registry import plugin
from mkosi.errors import ConfigError
from mkosi.output.artifacts import (
    CHANGELOG,
    CHECKSUM,
    MANIFEST,
    NSPAWN_SETTINGS,
    ROOT_HASH,
    ROOT_HASH_P7S,
    SIGNATURE,
    SPLIT_KERNEL,
    SPLIT_ROOT,
    SPLIT_VERITY,
    SPLIT_VERITY_SIG,
    written,
)
from mkosi.summary import summary_dict, summary_json, summary_text
from tests.unit.conftest import write

GiB = 1024**3
MiB = 1024**2


# ---- helpers ----

pytestmark = pytest.mark.usefixtures("fixed_host")


def load_both(*argv: str, verb: str = "summary") -> tuple[Args, Config]:
    args, configs = load_args([*argv, verb])
    assert args.verb == Verb(verb)
    assert len(configs) == 1
    return args, configs[0]


def load(*argv: str, verb: str = "summary") -> Config:
    return load_both(*argv, verb=verb)[1]


SUMMARY = Args(verb=Verb.summary)


def load_error(*argv: str, verb: str = "summary") -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load(*argv, verb=verb)
    return e.value


def ini(tmp_path: Path, text: str) -> dict[str, str]:
    """Parse one file and return {Key: raw value} of its assignments, last one winning."""
    path = write(tmp_path / "mkosi.default", text)
    return {a.setting.key or "": a.raw for a in parse_ini(path).assignments}


# ---- the settings table ----

def test_table_rows_are_complete() -> None:
    assert len(SETTINGS) > 90
    for s in SETTINGS:
        assert s.help.strip(), s.dest
        assert s.long_flag is not None and re.fullmatch(r"--[a-z][a-z0-9-]*", s.long_flag), s.dest
        assert s.flags[0] == s.long_flag, f"{s.dest}: the long flag comes first"
        for f in s.flags[1:]:
            assert re.fullmatch(r"-[A-Za-z]", f), f"{s.dest}: {f}"
        if s.section is None:
            assert s.key is None, s.dest
        else:
            assert s.section in SECTIONS, s.dest
            assert s.key is not None and re.fullmatch(r"[A-Z][A-Za-z0-9]*", s.key), s.dest
        assert (s.kind == Kind.LIST) == isinstance(default_value(s), list), s.dest


def test_table_has_no_duplicates() -> None:
    keys: list[str] = []
    flags: list[str] = []
    for s in SETTINGS:
        if s.key:
            keys += [normalize_key(k) for k in (s.key, *s.aliases)]
        flags += [*s.flags, *s.flag_aliases, *s.negative_flags]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert len(flags) == len(set(flags)), sorted(f for f in flags if flags.count(f) > 1)
    assert "-h" not in flags and "--help" not in flags and "--version" not in flags
    dests = [s.dest for s in SETTINGS]
    assert len(dests) == len(set(dests))


def test_table_choices_parse_to_themselves() -> None:
    for s in SETTINGS:
        for choice in s.choices or ():
            assert str(s.parse(choice)) == choice, (s.dest, choice)
        default = default_value(s)
        if s.choices and default is not None and not isinstance(default, list):
            assert str(default) in s.choices, s.dest


def test_every_table_row_reaches_the_parser() -> None:
    index = {f: a for a in build_parser()._actions for f in a.option_strings}
    for s in SETTINGS:
        for flag in (*s.flags, *s.flag_aliases, *s.negative_flags):
            assert getattr(index[flag], "setting", None) == s, flag
        if s.key:
            assert lookup_key(s.key) == (s, False)
            for alias in s.aliases:
                assert lookup_key(alias) == (s, True)


# ---- value parsers ----

@pytest.mark.parametrize("text,expected", [
    ("1", True), ("yes", True), ("true", True), ("YES", True),
    ("0", False), ("no", False), ("false", False), ("False", False),
])
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


def test_parse_bool_rejects_other_words() -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_bool("maybe")


@pytest.mark.parametrize("text,expected", [
    ("512", 512), ("1K", 1024), ("2M", 2 * MiB), ("3G", 3 * GiB), ("1T", 1024**4), ("8g", 8 * GiB),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "1.5G", "5X", "-1M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# ---- the INI reader ----

def test_ini_sections_and_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "mkosi.default", """
        # a comment
        ; another comment
        [Distribution]
        Distribution=fedora

        [Output]
        Format = gpt_btrfs
        """)
    got = parse_ini(path).assignments
    assert [(a.setting.dest, a.raw, a.origin.line) for a in got] == [
        ("distribution", "fedora", 4), ("format", "gpt_btrfs", 7)]
    assert str(got[1].origin) == f"{path}:7"


def test_ini_continuation_lines_and_inline_comments(tmp_path: Path) -> None:
    values = ini(tmp_path, """
        [Content]
        Packages=vim   # an editor
          httpd,
        # a comment between continuation lines
          openssh-clients  # the client
        [Distribution]
        Mirror=http://example.com/repo#fragment
        """)
    assert values["Packages"].split() == ["vim", "httpd,", "openssh-clients"]
    assert values["Mirror"] == "http://example.com/repo#fragment"


def test_ini_continuation_without_setting_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "mkosi.default", "[Output]\n  Format=tar\n")
    with pytest.raises(ConfigError, match=r"mkosi.default:2: continuation"):
        parse_ini(path)


def test_ini_setting_before_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "mkosi.default", "Format=tar\n")
    with pytest.raises(ConfigError, match=r"mkosi.default:1: .*before any \[Section\]"):
        parse_ini(path)


@pytest.mark.parametrize("line", ["Bootable", "[Output"])
def test_ini_malformed_lines(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "mkosi.default", f"[Output]\n{line}\n")
    with pytest.raises(ConfigError, match=r"mkosi.default:2:"):
        parse_ini(path)


@pytest.mark.parametrize("value,expected", [
    ("1", True), ("yes", True), ("true", True), ("0", False), ("no", False), ("false", False)])
def test_ini_booleans(wd: Path, value: str, expected: bool) -> None:
    write(wd / "mkosi.default", f"[Output]\nBootable={value}\n[Validation]\nChecksum={value}\n")
    args = load()
    assert args.bootable is expected
    assert args.checksum is expected


def test_ini_lists_split_on_commas_and_whitespace(wd: Path) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=a,b c\td ,e\n  f\n[Output]\nManifestFormat=json,changelog\n")
    args = load()
    assert args.packages == ["a", "b", "c", "d", "e", "f"]
    assert args.manifest_format == [ManifestFormat.json, ManifestFormat.changelog]


def test_ini_key_spelling_is_forgiving_but_warns(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[output]\nimage-version=7.8\nimage_id=foo\nformat=tar\n")
    args = load()
    assert (args.image_version, args.image_id, args.format) == ("7.8", "foo", "tar")
    err = capsys.readouterr().err
    assert "mkosi.default:1:" in err and "[Output]" in err
    assert "mkosi.default:2:" in err and "ImageVersion" in err
    assert "mkosi.default:3:" in err and "ImageId" in err


def test_ini_packages_legacy_section(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Packages]\nPackages=vim\nWithDocs=yes\n")
    args = load()
    assert args.packages == ["vim"] and args.with_docs is True
    assert re.search(r"mkosi.default:1: .*\[Packages\].*\[Content\]", capsys.readouterr().err)


@pytest.mark.parametrize("value,expected", [("yes", "xz"), ("1", "xz"), ("no", "no"), ("zstd", "zstd")])
def test_ini_xz_legacy_key(wd: Path, capsys: pytest.CaptureFixture[str], value: str, expected: str) -> None:
    write(wd / "mkosi.default", f"[Output]\nXZ={value}\n")
    assert load().compress_output == expected
    assert "XZ=" in capsys.readouterr().err


def test_ini_nspawn_settings_classic_key(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "test.nspawn", "[Exec]\n")
    write(wd / "mkosi.default", "[Content]\nSettings=test.nspawn\n")
    args = load()
    assert args.nspawn_settings == wd / "test.nspawn"
    assert written(args, NSPAWN_SETTINGS) == wd / "image.nspawn"
    assert re.search(r"mkosi.default:2: Settings=.*NSpawnSettings=", capsys.readouterr().err)


def test_ini_output_split_verify_alias(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nOutputSplitVerify=/tmp/x.verity\n")
    assert load().output_split_verity == Path("/tmp/x.verity")
    assert load("--output-split-verify=/tmp/y.verity").output_split_verity == Path("/tmp/y.verity")


@pytest.mark.parametrize("old,new", [
    ("raw_gpt", "gpt_ext4"), ("raw_btrfs", "gpt_btrfs"),
    ("raw_squashfs", "gpt_squashfs")])
def test_ini_legacy_formats(wd: Path, capsys: pytest.CaptureFixture[str], old: str, new: str) -> None:
    write(wd / "mkosi.default", f"[Output]\nFormat={old}\n")
    assert load().format == new
    assert re.search(rf"mkosi.default:2: .*{old}.*{new}", capsys.readouterr().err)


def test_ini_wrong_section_applies_with_warning(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Content]\nFormat=tar\n")
    assert load().format == "tar"
    assert re.search(r"mkosi.default:2: Format= belongs in \[Output\]", capsys.readouterr().err)


def test_ini_misspelled_section_applies_with_warning(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Outptu]\nFormat=tar\n[Contnet]\nPackages=vim\n")
    args = load()
    assert args.format == "tar" and args.packages == ["vim"]
    err = capsys.readouterr().err
    assert re.search(r"mkosi.default:2: .*\[Outptu\]", err)
    assert re.search(r"mkosi.default:4: .*\[Contnet\]", err)


def test_ini_unknown_setting_warns_with_the_nearest_name(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=vim\nPackagez=emacs\n")
    assert load().packages == ["vim"]
    err = capsys.readouterr().err
    assert "mkosi.default:3: unknown setting 'Packagez'" in err
    assert "did you mean Packages=?" in err


def test_ini_invalid_value_lists_choices(wd: Path) -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\n[Output]\nFormat=floppy\n")
    e = load_error()
    assert str(e).startswith("mkosi.default:4: Format:")
    assert "floppy" in str(e)
    for choice in ("directory", "tar", "gpt_ext4", "gpt_btrfs", "plain_squashfs"):
        assert choice in str(e)


def test_ini_invalid_boolean_names_setting(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nBootable=perhaps\n")
    e = load_error()
    assert e.line == 2 and e.setting == "Bootable" and "perhaps" in str(e)


def test_match_section_selects_dropins(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=fedora\nRelease=40\n[Content]\nBootable=no\n")
    write(wd / "mkosi.conf.d/10-fedora.conf", "[Match]\nDistribution=fedora\n\n[Content]\nPackages=dnf-only\n")
    write(wd / "mkosi.conf.d/20-debian.conf", "[Match]\nDistribution=debian\n\n[Content]\nPackages=apt-only\n")
    write(wd / "mkosi.conf.d/30-not-40.conf", "[Match]\nRelease=!40\n\n[Content]\nPackages=not-forty\n")
    write(wd / "mkosi.conf.d/40-any.conf", "[Match]\nDistribution=arch fedora\nBootable=no\n\n"
                                           "[Content]\nPackages=any-of\n")
    args = load()
    assert args.packages == ["dnf-only", "any-of"]
    assert [p.name for p in args.config_files] == ["mkosi.conf", "10-fedora.conf", "40-any.conf"]
    # The command line counts too: it is what the conditions see.
    assert load("-d", "debian").packages == ["apt-only"]
    assert load("-d", "debian", "-r", "bookworm").packages == ["apt-only", "not-forty"]


def test_match_defaults_to_the_host(wd: Path) -> None:
    write(wd / "mkosi.conf.d/10.conf", "[Match]\nDistribution=debian\nRelease=bookworm\n\n"
                                      "[Content]\nPackages=host-match\n")
    assert load().packages == ["host-match"]
    assert load("-r", "trixie").packages == []


def test_match_refuses_other_settings(wd: Path) -> None:
    write(wd / "mkosi.default", "[Match]\nPackages=foo\n")
    e = load_error()
    assert e.setting == "Packages" and e.line == 2


# ---- merging ----

def test_command_line_wins_for_scalars(wd: Path) -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=fedora\nRelease=24\n[Output]\nFormat=tar\n")
    args = load("-r", "25", "--format=directory")
    assert (args.distribution, args.release, args.format) == (Distribution.fedora, "25", "directory")


def test_lists_append_across_files_and_command_line(wd: Path) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=a\nBuildPackages=make\n")
    write(wd / "mkosi.default.d/10-more.conf", "[Content]\nPackages=b\n")
    args = load("-p", "c,d", "--package=e", "--build-package=gcc")
    assert args.packages == ["a", "b", "c", "d", "e"]
    assert args.build_packages == ["make", "gcc"]


def test_list_bang_removes_an_item(wd: Path) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=apache2,vim\n")
    assert load("-p", "!apache2").packages == ["vim"]
    assert load("-p", "!apache2,httpd").packages == ["vim", "httpd"]


def test_list_bang_star_clears(wd: Path) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=apache2,vim\n")
    write(wd / "mkosi.default.d/50.conf", "[Content]\nBuildPackages=gcc\n")
    assert load("-p", "!*").packages == []
    assert load("-p", "!*,nano").packages == ["nano"]
    assert load("--build-package=!*").build_packages == []


def test_list_clear_in_a_later_file(wd: Path) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=apache2,vim\n[Output]\nBootProtocols=uefi,bios\n")
    write(wd / "mkosi.default.d/50.conf", "[Content]\nPackages=!*\n  nano\n[Output]\nBootProtocols=!uefi\n")
    args = load()
    assert args.packages == ["nano"]
    assert args.boot_protocols == [BootProtocol.bios]


def test_first_assignment_replaces_a_list_default(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nManifestFormat=changelog\n")
    args = load()
    assert args.manifest_format == [ManifestFormat.changelog]
    assert written(args, MANIFEST) is None and written(args, CHANGELOG) == wd / "image.changelog"
    assert load("--manifest-format=json").manifest_format == [ManifestFormat.changelog, ManifestFormat.json]


def test_kernel_command_line_rules(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nKernelCommandLine=console=ttyS0 rw quiet\n")
    assert load().kernel_command_line == ["console=ttyS0", "rw", "quiet"]
    assert load("--kernel-command-line=loglevel=7").kernel_command_line == [
        "console=ttyS0", "rw", "quiet", "loglevel=7"]
    assert load("--kernel-command-line=!* console=tty0 ro").kernel_command_line == ["console=tty0", "ro"]
    assert load("--kernel-command-line=!rw").kernel_command_line == ["console=ttyS0", "quiet"]
    # "!name" also removes "name=value" options; "!name=value" removes exactly that option
    assert load("--kernel-command-line=!console").kernel_command_line == ["rw", "quiet"]
    assert load("--kernel-command-line=!console=tty1").kernel_command_line == ["console=ttyS0", "rw", "quiet"]


def test_environment_is_split_on_whitespace(wd: Path) -> None:
    write(wd / "mkosi.default", "[Content]\nEnvironment=A=1 B=x,y\n  C\n")
    assert load("--environment=D=4").environment == ["A=1", "B=x,y", "C", "D=4"]
    with pytest.raises(ConfigError, match=r"--environment.*1BAD"):
        load("--environment=1BAD=x")


def test_force_counts(wd: Path) -> None:
    assert load_both()[0].force == 0
    assert load_both("-f")[0].force == 1
    assert load_both("-ff")[0].force == 2
    assert load_both("-f", "-f", "-f")[0].force == 3
    write(wd / "mkosi.default", "[Output]\nForce=yes\n")
    assert load_both()[0].force == 1


def test_optional_value_flags_do_not_swallow_the_verb(wd: Path) -> None:
    args, config = load_both("--bootable", verb="summary")
    assert config.bootable is True and args.verb == Verb.summary
    assert load("-b", "no").bootable is False
    assert load("--verity").verity == Verity.yes
    assert load("--verity", "no").verity == Verity.no
    assert load("--with-network", "never").with_network == WithNetwork.never
    assert load("-T").with_tests is False
    assert load("--without-unified-kernel-images").with_unified_kernel_images == UnifiedKernelImages.none


def test_options_after_verb_that_takes_no_arguments() -> None:
    cli = parse_command_line(["summary", "--json", "-d", "fedora"])
    assert cli.verb == Verb.summary
    assert {a.setting.dest for a in cli.assignments} == {"json", "distribution"}
    cli = parse_command_line(["-f", "build", "--some", "args"])
    assert cli.verb == Verb.build and cli.cmdline == ["--some", "args"]
    with pytest.raises(ConfigError, match="takes no argument"):
        parse_command_line(["summary", "stray"])


def test_unknown_option_and_verb() -> None:
    with pytest.raises(ConfigError, match="--frobnicate"):
        parse_command_line(["--frobnicate", "build"])
    with pytest.raises(ConfigError, match=r"unknown verb 'frobnicate'.*build.*summary"):
        parse_command_line(["frobnicate"])


# ---- layering of files ----

def test_default_d_overrides_default(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nImageId=base\nImageVersion=1\n")
    write(wd / "mkosi.default.d/10-x.conf", "[Output]\nImageId=override\n")
    write(wd / "mkosi.default.d/20-y.conf", "[Output]\nImageVersion=2\n")
    args = load()
    assert (args.image_id, args.image_version) == ("override", "2")
    assert args.config_files == [wd / "mkosi.default", wd / "mkosi.default.d/10-x.conf",
                                 wd / "mkosi.default.d/20-y.conf"]


def test_dropins_are_read_in_name_order(wd: Path) -> None:
    write(wd / "mkosi.default.d/20-b.conf", "[Output]\nImageId=b\n")
    write(wd / "mkosi.default.d/10-a.conf", "[Output]\nImageId=a\n")
    write(wd / "mkosi.default.d/.hidden", "[Output]\nImageId=hidden\n")
    assert load().image_id == "b"


def test_per_distribution_subdirectory(wd: Path) -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\n[Content]\nPackages=common\n")
    write(wd / "mkosi.default.d/debian/10.conf", "[Content]\nPackages=apt-only\n")
    write(wd / "mkosi.default.d/fedora/10.conf", "[Content]\nPackages=dnf-only\n")
    args = load()
    assert args.packages == ["common", "apt-only"]
    assert wd / "mkosi.default.d/debian/10.conf" in args.config_files
    # the command line picks the distribution, and so the subdirectory
    args = load("-d", "fedora")
    assert args.packages == ["common", "dnf-only"]
    assert wd / "mkosi.default.d/debian/10.conf" not in args.config_files


def test_per_distribution_subdirectory_uses_host_distribution(wd: Path) -> None:
    write(wd / "mkosi.default.d/debian/10.conf", "[Content]\nPackages=apt-only\n")
    args = load()
    assert args.distribution == Distribution.debian and args.release == "bookworm"
    assert args.packages == ["apt-only"]


def test_conf_and_conf_d(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nImageId=conf\nFormat=tar\n")
    write(wd / "mkosi.conf.d/10.conf", "[Output]\nImageVersion=3\n")
    write(wd / "mkosi.conf.d/fedora/10.conf", "[Content]\nPackages=dnf-only\n")
    args = load()
    assert (args.image_id, args.image_version, args.format) == ("conf", "3", "tar")
    assert args.packages == []
    assert load("-d", "fedora").packages == ["dnf-only"]


def test_default_and_conf_both_read(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Output]\nImageId=default\nImageVersion=1\n")
    write(wd / "mkosi.conf", "[Output]\nImageId=conf\n")
    args = load()
    assert (args.image_id, args.image_version) == ("conf", "1")
    assert "both mkosi.default and mkosi.conf" in capsys.readouterr().err


def test_default_option_replaces_mkosi_default(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nImageId=default\nFormat=tar\n")
    write(wd / "other/custom.conf", "[Output]\nImageId=custom\n")
    args = load("--default=other/custom.conf")
    assert args.image_id == "custom"
    assert args.format == "gpt_ext4"
    assert args.config_files == [wd / "other/custom.conf"]


def test_default_option_missing_file(wd: Path) -> None:
    e = load_error("--default=nope.conf")
    assert "nope.conf" in str(e) and "--default" in str(e)


def test_mkosi_default_symlink(wd: Path) -> None:
    write(wd / "configs/fedora.conf", "[Distribution]\nDistribution=fedora\n[Output]\nImageId=linked\n")
    (wd / "mkosi.default").symlink_to("configs/fedora.conf")
    args = load()
    assert (args.distribution, args.image_id) == (Distribution.fedora, "linked")


def test_all_builds_every_file_of_mkosi_files(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nImageId=ignored\n")
    write(wd / "mkosi.files/mkosi.one", "[Output]\nImageId=one\n")
    write(wd / "mkosi.files/mkosi.two", "[Output]\nImageId=two\n")
    write(wd / "mkosi.files/README", "[Output]\nImageId=not-a-config\n")
    _, configs = load_args(["--all", "--image-version=5", "summary"])
    assert [(c.image_id, c.image_version) for c in configs] == [("one", "5"), ("two", "5")]


def test_directory_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "project/mkosi.default", "[Output]\nImageId=project\n")
    args = load("-C", "project")
    assert args.image_id == "project"
    assert args.output == tmp_path / "project/project.raw"


# ---- defaults ----

def test_default_output_name(wd: Path) -> None:
    args = load()
    assert args.format == "gpt_ext4"
    assert args.output == wd / "image.raw"
    assert args.output_dir == wd
    assert args.compress_output == "no"


@pytest.mark.parametrize("settings,name", [
    ("[Output]\nImageVersion=7.8\nCompressOutput=xz\n", "image_7.8.raw.xz"),
    ("[Output]\nImageVersion=7.8\nCompressOutput=yes\n", "image_7.8.raw.xz"),
    ("[Output]\nCompressOutput=zstd\n", "image.raw.zst"),
    ("[Output]\nImageId=foo\n", "foo.raw"),
    ("[Output]\nImageId=foo\nImageVersion=2\n", "foo_2.raw"),
    ("[Output]\nFormat=tar\n", "image.tar.xz"),
    ("[Output]\nFormat=tar\nCompressOutput=no\n", "image.tar"),
    ("[Output]\nFormat=cpio\nCompressOutput=zstd\n", "image.cpio.zst"),
    ("[Output]\nFormat=tar\nCompressOutput=gzip\n", "image.tar.gz"),
    ("[Output]\nFormat=directory\n", "image"),
    ("[Output]\nFormat=plain_squashfs\n", "image.raw"),
    ("[Output]\nQCow2=yes\n", "image.qcow2"),
    ("[Output]\nCompress=yes\n", "image.raw.xz"),
])
def test_output_names(wd: Path, settings: str, name: str) -> None:
    write(wd / "mkosi.default", settings)
    assert load().output == wd / name


def test_compress_goes_to_the_file_system_for_squashfs_and_btrfs(wd: Path) -> None:
    args = load("--format=gpt_btrfs", "--compress=lz4")
    assert (args.compress_fs, args.compress_output) == ("lz4", "no")
    assert load("--format=gpt_squashfs").compress_fs == "zstd"
    assert load("--format=gpt_btrfs", "--compress-fs").compress_fs == "zstd"


def test_mkosi_output_directory_is_used(wd: Path) -> None:
    (wd / "mkosi.output").mkdir()
    write(wd / "mkosi.default", "[Validation]\nChecksum=yes\n")
    args = load()
    assert args.output_dir == wd / "mkosi.output"
    assert args.output == wd / "mkosi.output/image.raw"
    assert written(args, CHECKSUM) == wd / "mkosi.output/SHA256SUMS"
    # a bare file name goes into the output directory
    assert load("-o", "foo.raw").output == wd / "mkosi.output/foo.raw"
    # a path with a slash is used as it is, and mkosi.output/ is not used at all
    args = load("-o", "sub/foo.raw")
    assert args.output == wd / "sub/foo.raw"
    assert args.output_dir == wd / "sub"
    assert written(args, CHECKSUM) == wd / "sub/SHA256SUMS"


def test_output_directory_setting(wd: Path) -> None:
    args = load("-O", "out", "-o", "x.raw")
    assert (args.output_dir, args.output) == (wd / "out", wd / "out/x.raw")


def test_sizes(wd: Path) -> None:
    args = load()
    assert args.root_size == 3 * GiB
    assert args.esp_size is None
    assert args.gpt_first_lba == 2048
    args = load("--bootable")
    assert args.esp_size == 256 * MiB
    assert args.boot_protocols == [BootProtocol.uefi]
    assert load("--format=directory").root_size is None
    write(wd / "mkosi.default", "[Partitions]\nRootSize=500M\nESPSize=64M\nSwapSize=1G\nHomeSize=512K\nSrvSize=1024\n")
    args = load("--bootable")
    assert (args.root_size, args.esp_size, args.swap_size, args.home_size, args.srv_size) == (
        500 * MiB, 64 * MiB, GiB, 512 * 1024, 1024)


def test_invalid_size_names_setting(wd: Path) -> None:
    write(wd / "mkosi.default", "[Partitions]\nRootSize=lots\n")
    e = load_error()
    assert str(e).startswith("mkosi.default:2: RootSize:") and "lots" in str(e)
    (wd / "mkosi.default").unlink()
    e = load_error("--root-size=5X")
    assert "--root-size" in str(e) and "5X" in str(e)


def test_release_and_mirror_defaults(wd: Path) -> None:
    for dist in (Distribution.fedora, Distribution.ubuntu, Distribution.arch, Distribution.opensuse):
        args = load("-d", dist.value)
        assert args.release == plugin(dist).default_release
        # The distribution's default mirror is the installer's to choose: the configuration leaves it unset,
        # and the repositories summary shows the mirror that is used.
        assert args.mirror is None
        default = plugin(dist).default_mirror(args.architecture)
        assert default and any(default.rstrip("/") in r for r in plugin(dist).repositories(args))
    assert load().release == "bookworm"  # the (fake) host's
    assert load("-d", "fedora", "-r", "38", "-m", "http://m").mirror == "http://m"


def test_other_defaults(wd: Path) -> None:
    args = load()
    assert args.manifest_format == [ManifestFormat.json]
    assert written(args, MANIFEST) == wd / "image.manifest"
    assert args.secure_boot_common_name == "mkosi of %u" and args.secure_boot_valid_days == 730
    assert (args.qemu_smp, args.qemu_mem, args.ssh_port) == ("2", "1G", 22)
    assert args.qemu_boot == BootProtocol.uefi
    assert args.with_tests is True and args.with_docs is False
    assert args.build_source == wd
    assert args.version_file == wd / "mkosi.version"


def test_sign_implies_checksum(wd: Path) -> None:
    args = load("--sign")
    assert args.checksum is True and written(args, SIGNATURE) == wd / "SHA256SUMS.gpg"


def test_split_artifacts_names(wd: Path) -> None:
    write(wd / "mkosi.secure-boot.key", "k")
    write(wd / "mkosi.secure-boot.crt", "c")
    args = load("--split-artifacts", "--verity=signed", "--compress-output=xz")
    assert written(args, SPLIT_ROOT) == wd / "image.root.raw.xz"
    assert written(args, SPLIT_VERITY) == wd / "image.root.verity.xz"
    assert written(args, SPLIT_VERITY_SIG) == wd / "image.root.roothash.p7s.xz"
    plain = load("--split-artifacts", "--verity")
    assert written(plain, SPLIT_ROOT) == wd / "image.root.raw"
    assert written(plain, SPLIT_VERITY) == wd / "image.root.verity"
    usr = load("--split-artifacts", "--verity", "--usr-only", "--image-version=2")
    assert written(usr, SPLIT_ROOT) == wd / "image_2.usr.raw"
    assert written(usr, SPLIT_VERITY) == wd / "image_2.usr.verity"
    assert written(args, SPLIT_KERNEL) is None
    assert written(load("--split-artifacts", "--bootable"), SPLIT_KERNEL) == wd / "image.efi"
    # OutputSplitRoot= and friends replace the table's path.
    assert written(load("--split-artifacts", "--output-split-root=/srv/r"), SPLIT_ROOT) == Path("/srv/r")
    assert written(args, ROOT_HASH) == wd / "image.roothash"
    assert written(args, ROOT_HASH_P7S) == wd / "image.roothash.p7s"
    assert written(load("--verity", "--usr-only"), ROOT_HASH) == wd / "image.usrhash"


# ---- mkosi.* files of the working directory ----

def test_detects_extra_and_skeleton(wd: Path) -> None:
    (wd / "mkosi.extra").mkdir()
    (wd / "mkosi.skeleton.tar").write_bytes(b"")
    args = load()
    assert args.extra_trees == [ConfigTree(wd / "mkosi.extra")]
    assert args.skeleton_trees == [ConfigTree(wd / "mkosi.skeleton.tar")]
    (wd / "mkosi.skeleton").mkdir()
    assert load().skeleton_trees == [ConfigTree(wd / "mkosi.skeleton"), ConfigTree(wd / "mkosi.skeleton.tar")]
    # an explicit setting replaces detection
    (wd / "other").mkdir()
    assert load("--extra-tree=other").extra_trees == [ConfigTree(wd / "other")]


def test_missing_tree_is_an_error(wd: Path) -> None:
    e = load_error("--extra-tree=nowhere")
    assert "--extra-tree" in str(e) and "nowhere" in str(e)


@pytest.mark.parametrize("name,dest,is_dir", [
    ("mkosi.cache", "cache_path", True),
    ("mkosi.builddir", "build_dir", True),
    ("mkosi.includedir", "include_dir", True),
    ("mkosi.installdir", "install_dir", True),
    ("mkosi.workspace", "workspace_dir", True),
    ("mkosi.reposdir", "repository_directory", True),
    ("mkosi.nspawn", "nspawn_settings", False),
    ("mkosi.mksquashfs-tool", "mksquashfs", False),
])
def test_detects_files(wd: Path, name: str, dest: str, is_dir: bool) -> None:
    assert getattr(load(), dest) is None
    if is_dir:
        (wd / name).mkdir()
    else:
        write(wd / name, "x", 0o755)
    assert getattr(load(), dest) == wd / name
    assert load().detected[name] == wd / name


def test_build_script_detection(wd: Path) -> None:
    assert load().build_script is None
    script = write(wd / "mkosi.build", "#!/bin/sh\n", 0o644)
    e = load_error()
    assert "not executable" in str(e) and str(script) in str(e)
    script.chmod(0o755)
    assert load().build_script == script
    assert load("--build-script=").build_script is None
    write(wd / "mkosi.default", "[Content]\nBuildScript=\n")
    assert load().build_script is None


@pytest.mark.parametrize("name,dest", [
    ("mkosi.prepare", "prepare_script"), ("mkosi.postinst", "postinst_script"),
    ("mkosi.finalize", "finalize_script")])
def test_other_scripts_detected(wd: Path, name: str, dest: str) -> None:
    write(wd / name, "#!/bin/sh\n", 0o755)
    assert getattr(load(), dest) == wd / name


def test_rootpw_mode(wd: Path) -> None:
    pw = write(wd / "mkosi.rootpw", "hunter2\n", 0o644)
    e = load_error()
    assert "mkosi.rootpw" in str(e) and "0600" in str(e)
    pw.chmod(0o600)
    assert load().password == "hunter2"
    pw.chmod(0o400)
    assert load().password == "hunter2"
    # an explicit password wins over the file
    assert load("--password=other").password == "other"


def test_missing_passphrase_file_names_where_it_was_set(wd: Path) -> None:
    e = load_error("--passphrase=nope")
    assert str(e).startswith("command line: --passphrase: ") and "nope' does not exist" in str(e)
    write(wd / "mkosi.conf", "[Output]\nPassphrase=gone\n")
    assert "mkosi.conf:2" in str(load_error())


def test_passphrase_mode(wd: Path) -> None:
    pp = write(wd / "mkosi.passphrase", "secret", 0o640)
    e = load_error()
    assert "mkosi.passphrase" in str(e) and "0600" in str(e)
    pp.chmod(0o600)
    assert load().passphrase_file == pp


def test_version_file(wd: Path) -> None:
    write(wd / "mkosi.version", "7.8\n")
    args = load()
    assert args.image_version == "7.8"
    assert args.output == wd / "image_7.8.raw"
    assert load("--image-version=9").image_version == "9"


def test_summary_secret_is_hidden(wd: Path) -> None:
    write(wd / "mkosi.rootpw", "hunter2", 0o600)
    args = load()
    assert "hunter2" not in summary_text(SUMMARY, [args])
    assert "hunter2" not in summary_json(SUMMARY, [args])
    assert summary_dict(SUMMARY, args)["Content"]["RootPassword"] == "(set)"


# ---- contradictions ----

@pytest.mark.parametrize("settings,setting,words", [
    ("[Output]\nFormat=directory\nVerity=yes\n", "Verity", "GPT"),
    ("[Output]\nFormat=directory\nEncrypt=all\n", "Encrypt", "GPT"),
    ("[Output]\nFormat=tar\nQCow2=yes\n", "QCow2", "GPT"),
    ("[Output]\nFormat=tar\n[Partitions]\nHomeSize=1G\n", "HomeSize", "GPT"),
    ("[Output]\nBootable=yes\nSecureBoot=yes\n", "SecureBoot", "key"),
    ("[Output]\nVerity=signed\n", "Verity", "key"),
    ("[Output]\nFormat=gpt_xfs\nMinimize=yes\n", "Minimize", "gpt_ext4"),
    ("[Output]\nCompressOutput=lz4\n", "CompressOutput", "xz"),
    ("[Output]\nFormat=tar\nCompressOutput=lzo\n", "CompressOutput", "gzip"),
    ("[Content]\nSourceFileTransferFinal=mount\n", "SourceFileTransferFinal", "mount"),
    ("[Content]\nPasswordIsHashed=yes\n", "PasswordIsHashed", "password"),
    ("[Output]\nBootable=yes\nBootProtocols=uefi\n[Host]\nQemuBoot=bios\n", "QemuBoot", "BootProtocols"),
    ("[Host]\nSshKey=/nonexistent/key\n", "SshKey", ".pub"),
])
def test_contradictions(wd: Path, settings: str, setting: str, words: str) -> None:
    write(wd / "mkosi.default", settings)
    e = load_error(verb="build")
    assert e.setting == setting, str(e)
    assert e.path == "mkosi.default" and e.line is not None
    assert words in str(e)


def test_ssh_key_needs_no_pub_with_a_certificate(wd: Path) -> None:
    # SshKey= is then the private key of SshCertificate= (mkosi.crt here), whose key the machine accepts.
    write(wd / "key.pem", "private")
    write(wd / "mkosi.default", f"[Host]\nSshKey={wd}/key.pem\n")
    assert load_error(verb="build").setting == "SshKey"
    write(wd / "mkosi.crt", "certificate")
    config = load(verb="build")
    assert config.ssh_key == wd / "key.pem" and config.ssh_certificate == wd / "mkosi.crt"


def test_bootable_verity_usr_only_is_refused_until_implemented(wd: Path) -> None:
    assert load("--bootable", "--verity").verity.value == "yes"
    e = load_error("--bootable", "--verity", "--usr-only")
    assert e.setting == "--verity" and "not implemented yet" in str(e)


@pytest.mark.parametrize("verb", ["summary", "genkey", "cat-config"])
def test_missing_secure_boot_keys_only_matter_for_building(wd: Path, verb: str) -> None:
    # genkey is how the keys get made, and summary only reports.
    write(wd / "mkosi.default", "[Output]\nBootable=yes\nSecureBoot=yes\n")
    assert load(verb=verb).secure_boot


def test_secure_boot_with_keys_is_fine(wd: Path) -> None:
    write(wd / "mkosi.secure-boot.key", "k")
    write(wd / "mkosi.secure-boot.crt", "c")
    args = load("--bootable", "--secure-boot")
    assert args.secure_boot_key == wd / "mkosi.secure-boot.key"
    assert args.secure_boot_certificate == wd / "mkosi.secure-boot.crt"


@pytest.mark.parametrize("verb", ["shell", "boot", "qemu"])
def test_compressed_disk_images_cannot_run(wd: Path, verb: str) -> None:
    e = load_error("--compress-output=xz", "--bootable", verb=verb)
    assert verb in str(e) and e.setting == "--compress-output"


def test_qcow2_cannot_run_in_nspawn(wd: Path) -> None:
    assert "QCOW2" in str(load_error("--qcow2", verb="boot"))
    assert load("--qcow2", "--bootable", verb="qemu").qcow2 is True


def test_qemu_needs_bootable(wd: Path) -> None:
    assert "bootable" in str(load_error(verb="qemu"))


def test_error_from_command_line_names_flag(wd: Path) -> None:
    e = load_error("--format=directory", "--verity")
    assert e.path == "command line" and e.setting == "--verity"


# ---- summary ----

AUTOMAKE_EXAMPLE = """
[Distribution]
Distribution=fedora
Release=24

[Output]
Format=gpt_btrfs
Bootable=yes

[Content]
Packages=openssh-clients,httpd
BuildPackages=make,gcc,libcurl-devel
"""


def _summary_line(text: str, key: str) -> str:
    m = re.search(rf"^ *\S.*  {key}=(.*)$", text, re.MULTILINE)
    assert m, f"{key} missing from the summary"
    return m.group(1)


def test_summary_of_the_automake_example(wd: Path) -> None:
    write(wd / "mkosi.default", AUTOMAKE_EXAMPLE)
    args = load()
    text = summary_text(SUMMARY, [args])
    assert _summary_line(text, "Distribution") == "fedora"
    assert _summary_line(text, "Release") == "24"
    assert _summary_line(text, "Format") == "gpt_btrfs"
    assert _summary_line(text, "Bootable") == "yes"
    assert _summary_line(text, "Packages") == "openssh-clients, httpd"
    assert _summary_line(text, "BuildPackages") == "make, gcc, libcurl-devel"
    assert str(wd / "mkosi.default") in text

    [data] = json.loads(summary_json(SUMMARY, [args]))["Images"]
    assert data["Image"] == "main"
    assert data["Distribution"] == "fedora"
    assert data["Release"] == "24"
    assert data["Format"] == "gpt_btrfs"
    assert data["Bootable"] is True
    assert data["Packages"] == ["openssh-clients", "httpd"]
    assert data["BuildPackages"] == ["make", "gcc", "libcurl-devel"]
    assert data["ESPSize"] == 256 * MiB
    assert data["Outputs"]["output"] == str(wd / "image.raw")
    assert data["ConfigFiles"] == [str(wd / "mkosi.default")]


def test_summary_labels_sizes_and_copyable_settings(wd: Path) -> None:
    write(wd / "mkosi.default", """
        [Distribution]
        Distribution=debian
        [Output]
        Format=gpt_ext4
        Bootable=yes
        [Content]
        Packages=vim,less
        [Partitions]
        RootSize=3G
        SwapSize=1536M
        HomeSize=1000000
    """)
    text = summary_text(SUMMARY, [load()])
    lines = text.splitlines()
    assert re.fullmatch(r" +Root partition size  RootSize=3G", lines[lines.index("PARTITIONS:") + 2])
    assert _summary_line(text, "RootSize") == "3G"
    assert _summary_line(text, "SwapSize") == "1536M"
    assert _summary_line(text, "HomeSize") == "1000000"
    assert _summary_line(text, "ESPSize") == "256M"
    assert re.search(r"^ +Output format  Format=gpt_ext4$", text, re.MULTILINE)
    assert re.search(r"^ +Packages  Packages=vim, less$", text, re.MULTILINE)
    # Each setting line, after its label, can be pasted into a settings file as it is.
    for line in lines:
        m = re.fullmatch(r" *(\S.*?)  ([A-Za-z0-9]+)=(.*)", line)
        if m and m.group(2) in ("RootSize", "SwapSize", "Format", "Packages", "Bootable"):
            assert lookup_key(m.group(2)) is not None
            ini_text = f"[Partitions]\n{m.group(2)}={m.group(3)}\n"
            assert parse_ini(wd / "x.conf", ini_text)
    # JSON keeps exact numbers.
    assert summary_dict(SUMMARY, load())["Partitions"]["RootSize"] == 3 * GiB


def test_summary_shows_every_setting(wd: Path) -> None:
    args = load()
    text = summary_text(SUMMARY, [args])
    data = summary_dict(SUMMARY, args)
    for s in SETTINGS:
        if s.key and s.summary:
            assert s.key in data[s.section or ""], s.key
            _summary_line(text, s.key)


def test_summary_marks_settings_not_implemented(wd: Path) -> None:
    pending = [s for s in SETTINGS if s.status and s.key and not s.choices]
    if not pending:
        pytest.skip("every setting is implemented")
    s = pending[0]
    assert s.key is not None and s.status is not None
    assert s.key not in summary_dict(SUMMARY, load())["NotImplemented"]
    value = {Kind.BOOL: "yes", Kind.LIST: "x"}.get(s.kind, "/")
    args = load(f"{s.long_flag}={value}")
    assert summary_dict(SUMMARY, args)["NotImplemented"].get(s.key) == s.status
    assert s.status in _summary_line(summary_text(SUMMARY, [args]), s.key)


def _json_types(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_types(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_summary_dict_is_plain_data(wd: Path) -> None:
    (wd / "mkosi.extra").mkdir()
    args = load("--bootable", "--encrypt=data", "--boot-protocols=uefi,bios")
    data = summary_dict(SUMMARY, args)
    assert _json_types(data)
    assert data["Output"]["Encrypt"] == Encrypt.data.value
    assert data["Output"]["BootProtocols"] == ["uefi", "bios"]
    assert data["Content"]["ExtraTrees"] == [{"Source": str(wd / "mkosi.extra"), "Target": None}]



def test_a_made_up_setting_with_a_computed_default_is_one_row(wd: Path) -> None:
    """The generic finalize pass needs nothing but the row: its default is computed from the settings it
    names, after them, and an assignment wins over it."""
    from mkosi.config.finalize import resolve_all, row_order
    from mkosi.config.parse import Merged
    from mkosi.config.types import Setting

    row = Setting(dest="greeting", section="Content", key="Greeting", flags=("--greeting",), kind=Kind.SCALAR,
                  parse=str, help="made up", default_fn=lambda v: f"hello {v['distribution'].value} {v['release']}",
                  depends=("release", "distribution"))
    rows = row_order([row, *SETTINGS])
    assert rows.index(row) > rows.index(next(s for s in SETTINGS if s.dest == "release"))
    defaults = {s.dest: default_value(s) for s in SETTINGS}
    values = resolve_all(Merged({**defaults, "greeting": None}, {}, set()), wd, {}, rows)
    assert values["greeting"] == "hello debian bookworm"
    assigned = Merged({**defaults, "greeting": "hi"}, {"greeting": Origin("mkosi.conf", 3)}, set())
    assert resolve_all(assigned, wd, {}, rows)["greeting"] == "hi"


@pytest.mark.parametrize(("text", "warning"), [
    ("[Output]\nFormat=tar\nBootable=yes\n", "Bootable= only applies to GPT disk image formats"),
    ("[Output]\nFormat=directory\nSplitArtifacts=yes\n", "SplitArtifacts= only applies to GPT disk image formats"),
    ("[Output]\nSecureBoot=yes\n", "SecureBoot= has no effect without Bootable=yes"),
    ("[Output]\nFormat=gpt_xfs\n[Partitions]\nXBootLDRSize=1G\n", "XBootLDRSize= has no effect without Bootable=yes"),
])
def test_settings_without_effect_on_the_format_warn(wd: Path, text: str, warning: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Upstream accepts these, and real configurations use them: a warning, and the build goes on."""
    write(wd / "mkosi.default", text)
    load()
    assert warning in capsys.readouterr().err
