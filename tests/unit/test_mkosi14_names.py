"""Every setting and flag name Debian's mkosi 14 accepts is accepted here, with the same meaning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.config.enums import Verb
from mkosi.config.ini import lookup_key
from mkosi.config.parse import build_parser
from mkosi.config.settings import Args, Config, by_dest
from mkosi.distributions.registry import plugin
from mkosi.summary import summary_text
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

# The long flags of mkosi 14's command line (its create_parser()).
_FLAGS = """
--all --all-directory --architecture --auto-bump --autologin --base-packages --bios-size --bmap --boot-protocols
--bootable --build-dir --build-directory --build-environment --build-package --build-script --build-sources --cache
--cache-initrd --checksum --clean-package-metadata --compress --compress-fs --compress-output --config --debug
--default --directory --distribution --encrypt --environment --ephemeral --esp-size --extra-search-path
--extra-search-paths --extra-tree --finalize-script --force --format --gpt-first-lba --help --home-size --hostname
--hostonly-initrd --image-id --image-version --include-directory --incremental --install-directory
--kernel-command-line --kernel-commandline --key --local-mirror --machine-id --manifest-format --minimize --mirror
--mksquashfs --netdev --network-veth --no-chown --nspawn-keep-unit --output --output-dir --output-split-kernel
--output-split-root --output-split-verity --output-split-verity-sig --package --password --password-is-hashed
--postinst-script --prepare-script --qcow2 --qemu-args --qemu-boot --qemu-headless --qemu-kvm --qemu-mem --qemu-smp
--read-only --release --remove-files --remove-package --repositories --repository-directory --repository-key-check
--root-size --secure-boot --secure-boot-certificate --secure-boot-common-name --secure-boot-key
--secure-boot-valid-days --settings --sign --sign-expected-pcr --skeleton-tree --skip-final-phase
--source-file-transfer --source-file-transfer-final --source-resolve-symlinks --source-resolve-symlinks-final
--split-artifacts --srv-size --ssh --ssh-agent --ssh-key --ssh-port --ssh-timeout --swap-size
--tar-strip-selinux-context --tmp-size --use-host-repositories --usr-only --var-size --verity --version --with-docs
--with-network --with-tests --with-unified-kernel-images --without-tests --without-unified-kernel-images
--workspace-dir --xbootldr-size --xz
"""
MKOSI14_FLAGS = _FLAGS.split()
_SHORT = "-B -C -E -M -O -T -a -b -d -f -h -i -m -o -p -r -t"
MKOSI14_SHORT = _SHORT.split()
# Flags that only exist on mkosi 14's command line (no key in its settings files).
COMMAND_LINE_ONLY = {"--all", "--all-directory", "--config", "--default", "--directory", "--help", "--version",
                     "--without-tests", "--without-unified-kernel-images", "--xz"}
# Keys mkosi 14 maps to flags by name, and the usual spellings real configurations use.
_KEYS = """
QCow2 OutputDirectory WorkspaceDirectory XZ NSpawnSettings ESPSize CheckSum BMap Packages RemovePackages ExtraTrees
SkeletonTrees BuildPackages PostInstallationScript GPTFirstLBA TarStripSELinuxContext MachineID SignExpectedPCR
NetworkVeth OutputDir XBootLDRSize VarSize TmpSize BIOSSize LocalMirror RepositoryKeyCheck BuildDir
"""
MKOSI14_KEYS = _KEYS.split()


def camel(flag: str) -> str:
    return "".join(part.capitalize() for part in flag[2:].split("-"))


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[0]


def test_every_mkosi14_flag_is_accepted() -> None:
    known = {flag for action in build_parser()._actions for flag in action.option_strings}
    missing = [f for f in MKOSI14_FLAGS + MKOSI14_SHORT if f not in known]
    assert not missing


@pytest.mark.parametrize("key", sorted({camel(f) for f in MKOSI14_FLAGS if f not in COMMAND_LINE_ONLY}
                                       | set(MKOSI14_KEYS)))
def test_every_mkosi14_key_is_accepted(key: str) -> None:
    assert lookup_key(key) is not None, key


@pytest.mark.parametrize("old, dest, raw, value", [
    ("NetworkVeth", "netdev", "yes", True),
    ("OutputDir", "output_dir", "out", "out"),
    ("BuildDir", "build_dir", "bld", "bld"),
    ("Package", "packages", "vim", ["vim"]),
    ("ExtraSearchPath", "extra_search_paths", "/opt/bin", [Path("/opt/bin")]),
    ("BuildEnvironment", "environment", "A=1", ["A=1"]),
])
def test_older_keys_have_their_mkosi14_meaning(wd: Path, capsys: pytest.CaptureFixture[str], old: str, dest: str,
                                               raw: str, value: object) -> None:
    write(wd / "mkosi.default", f"[Distribution]\nDistribution=debian\n[Content]\n{old}={raw}\n")
    got = getattr(load(), dest)
    if isinstance(value, str):
        assert isinstance(got, Path) and got.name == value
    else:
        assert got == value
    err = capsys.readouterr().err
    new = by_dest(dest).key
    assert re.search(rf"mkosi.default:4: {old}= is an older name, use {new}=", err), err


@pytest.mark.parametrize("argv, dest, value, new", [
    (["--network-veth"], "netdev", True, "--netdev"),
    (["--build-directory", "b"], "build_dir", "b", "--build-directory"),
    (["--build-dir", "b"], "build_dir", "b", "--build-directory"),
    (["--extra-search-path", "/opt/bin"], "extra_search_paths", [Path("/opt/bin")], "--extra-search-path"),
    (["--extra-search-paths", "/opt/bin"], "extra_search_paths", [Path("/opt/bin")], "--extra-search-path"),
    (["--build-environment", "A=1"], "environment", ["A=1"], "--environment"),
    (["--kernel-commandline", "quiet"], "kernel_command_line", ["quiet"], "--kernel-command-line"),
    (["--xz"], "compress_output", "xz", "--compress-output=xz"),
])
def test_older_flags_have_their_mkosi14_meaning(wd: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                dest: str, value: object, new: str) -> None:
    got = getattr(load("-d", "debian", *argv), dest)
    if dest == "build_dir":
        assert isinstance(got, Path) and got.name == value
    else:
        assert got == value
    err = capsys.readouterr().err
    if argv[0] == "--xz":
        assert f"command line: {argv[0]} is an older name, use {new}" in err
    else:
        # Other spellings of a flag are accepted without a warning.
        assert "older name" not in err


def test_short_flags_of_mkosi14(wd: Path) -> None:
    args = load("-d", "debian", "-M", "-E", "A=1")
    assert args.minimize and args.environment == ["A=1"]


def test_config_flag_reads_that_file(wd: Path) -> None:
    write(wd / "other.conf", "[Distribution]\nDistribution=fedora\n")
    assert load("--config", "other.conf").distribution.value == "fedora"


def test_new_settings_and_what_summary_says(wd: Path) -> None:
    write(wd / "mkosi.default", """
        [Distribution]
        Distribution=debian
        LocalMirror=http://localhost/debian
        RepositoryKeyCheck=no
        [Output]
        SignExpectedPCR=yes
        [Partitions]
        XBootLDRSize=100M
        VarSize=1G
        TmpSize=200M
        BIOSSize=2M
    """)
    args = load()
    assert args.local_mirror == "http://localhost/debian"
    assert args.repository_key_check is False
    assert (args.xbootldr_size, args.var_size, args.tmp_size, args.bios_size) == (100 << 20, 1 << 30, 200 << 20,
                                                                                    2 << 20)
    text = summary_text(Args(verb=Verb.summary), [args])
    for key in ("XBootLDRSize", "VarSize", "TmpSize"):
        line = next(line for line in text.splitlines() if f"  {key}=" in line)
        assert "not implemented" not in line, line
    assert plugin(args.distribution).apt_config(args).key_check is False  # type: ignore[attr-defined]
    bios = next(line for line in text.splitlines() if "  BIOSSize=" in line)
    assert "not implemented" not in bios


def test_local_mirror_replaces_the_rpm_repositories(wd: Path) -> None:
    args = load("-d", "fedora", "-r", "40", "--local-mirror=file:///srv/mirror", "--repositories=https://extra/x")
    repos = plugin(args.distribution).repos(args)  # type: ignore[attr-defined]
    assert [r.baseurl for r in repos] == [("file:///srv/mirror",), ("https://extra/x",)]
    assert not repos[0].check_signatures()
    assert "file:///srv/mirror" in " ".join(plugin(args.distribution).repositories(args))


def test_command_line_options_in_a_file(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\n[Output]\nIncremental=yes\nAutoBump=yes\n")
    args, _ = load_args(["summary"])
    assert args.incremental is True and args.auto_bump is True
    assert "AutoBump= stands for the command-line option --auto-bump" in capsys.readouterr().err


def test_verb_is_unchanged_by_aliases(wd: Path) -> None:
    cli, _ = load_args(["--network-veth", "summary"])
    assert cli.verb == Verb.summary
