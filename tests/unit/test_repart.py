"""Format=disk without running systemd-repart: the definitions (default layout, mkosi.repart/ checks),
the command line each setting gives, the reading of the JSON report and the split files' names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.config.enums import Distribution
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.dependencies import host_tools
from mkosi.errors import ConfigError, MkosiError
from mkosi.output import artifacts, repart
from mkosi.output.repart import RepartRun, parse_report, verity_of
from mkosi.output.repartdefs import (
    default_definitions,
    definitions_for,
    parse_definition,
    read_definitions,
    split_roles,
    type_identifier,
    type_role,
)
from mkosi.sandbox import Sandbox
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

ESP = "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/efi:/\nSizeMinBytes=64M\nSizeMaxBytes=64M\n"
ROOT = "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nExcludeFiles=/usr/\nMinimize=guess\n"
USR = "[Partition]\nType=usr\nFormat=erofs\nCopyFiles=/usr:/\nVerity=data\nVerityMatchKey=usr\nMinimize=best\n"
USR_VERITY = "[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=best\n"
USR_SIG = "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n"


def load(*argv: str) -> Config:
    _, configs = load_args(["--architecture=x86_64", *argv, "summary"])
    return configs[0]


def repart_dir(wd: Path, **files: str) -> Path:
    d = wd / "mkosi.repart"
    for name, text in files.items():
        write(d / f"{name}.conf", text)
    return d


def usr_layout(wd: Path, *, signed: bool = False) -> Path:
    extra = {"22-usr-verity-sig": USR_SIG} if signed else {}
    return repart_dir(wd, **{"00-esp": ESP, "10-root": ROOT, "20-usr": USR, "21-usr-verity": USR_VERITY}, **extra)


# ---- the default layout ----

def test_the_default_layout_has_an_esp_only_when_bootable_and_the_distributions_file_system() -> None:
    plain = default_definitions(bootable=False, root_fs="ext4")
    assert list(plain) == ["10-root.conf"]
    assert "Type=root\n" in plain["10-root.conf"] and "Format=ext4\n" in plain["10-root.conf"]
    assert "CopyFiles=/\n" in plain["10-root.conf"] and "Minimize=guess\n" in plain["10-root.conf"]
    boot = default_definitions(bootable=True, root_fs="btrfs")
    assert list(boot) == ["00-esp.conf", "10-root.conf"]
    esp = boot["00-esp.conf"]
    assert "Type=esp\n" in esp and "Format=vfat\n" in esp and "CopyFiles=/efi:/\n" in esp
    assert "SizeMinBytes=512M\n" in esp and "SizeMaxBytes=512M\n" in esp
    # The ESP's contents are not copied into the root as well.
    assert "Format=btrfs\n" in boot["10-root.conf"] and "ExcludeFilesTarget=/efi/\n" in boot["10-root.conf"]
    # What mkosi writes passes its own checks.
    defs = definitions_for([], bootable=True, root_fs="btrfs")
    assert [d.role("x86_64") for d in defs] == ["esp", "root"]


def test_the_workspace_gets_the_default_layout_or_the_merged_directories(wd: Path) -> None:
    config = load("--format=disk", "--distribution=fedora", "--bootable")
    target = wd / "defs"
    target.mkdir()
    repart.write_definitions(config, target)
    assert sorted(p.name for p in target.iterdir()) == ["00-esp.conf", "10-root.conf"]
    assert "Format=btrfs" in (target / "10-root.conf").read_text()
    # RepartDirectories=: files merged by name, a later directory's file wins.
    write(wd / "a/10-root.conf", ROOT)
    write(wd / "a/20-usr.conf", "[Partition]\nType=usr\n")
    write(wd / "b/20-usr.conf", "[Partition]\nType=usr\nFormat=xfs\n")
    config = load("--format=disk", "--repart-directory=a", "--repart-directory=b")
    assert config.repart_dirs == [wd / "a", wd / "b"]
    target2 = wd / "defs2"
    target2.mkdir()
    repart.write_definitions(config, target2)
    assert sorted(p.name for p in target2.iterdir()) == ["10-root.conf", "20-usr.conf"]
    assert "Format=xfs" in (target2 / "20-usr.conf").read_text()


def test_mkosi_repart_is_found_and_replaces_the_default_layout(wd: Path) -> None:
    usr_layout(wd)
    config = load("--format=disk")
    assert config.repart_dirs == [wd / "mkosi.repart"]
    roles = [d.role("x86_64") for d in repart.configured_definitions(config)]
    assert roles == ["esp", "root", "usr", "usr-verity"]


# ---- bad definition files ----

@pytest.mark.parametrize("text,line,message", [
    ("[Partition]\nType=root\nFormat\n", 3, "expected KEY=VALUE"),
    ("[Partition]\nType=root\nSizeMinByte=1G\n", 3, "unknown setting 'SizeMinByte='"),
    ("# comment\n[Partiton]\nType=root\n", 2, "unknown section [Partiton]"),
    ("Type=root\n", 1, "stands before the [Partition] section"),
    ("[Partition]\nType=rootfs\n", 2, "unknown partition type 'rootfs'"),
    ("[Partition]\nType=root\nVerity=yes\n", 3, "invalid Verity=yes"),
    ("[Partition]\nType=root\nMinimize=maybe\n", 3, "invalid Minimize=maybe"),
    ("[Partition]\nType=root\nSplitName=%t.%U\n", 3, "not implemented yet"),
    ("[Partition]\nType=root\nVerity=data\n", 3, "needs VerityMatchKey="),
])
def test_a_bad_definition_names_its_file_and_line(wd: Path, text: str, line: int, message: str) -> None:
    d = repart_dir(wd, **{"10-root": text})
    with pytest.raises(MkosiError) as e:
        read_definitions([d])
    assert f"{d / '10-root.conf'}:{line}: " in str(e.value)
    assert message in str(e.value)


def test_definitions_without_type_or_verity_siblings_are_errors(wd: Path) -> None:
    with pytest.raises(MkosiError, match=r"x\.conf: no Type="):
        parse_definition(Path("x.conf"), "[Partition]\nFormat=ext4\n")
    d = repart_dir(wd, **{"20-usr": USR})
    with pytest.raises(MkosiError, match="VerityMatchKey=usr needs exactly one Verity=hash partition"):
        read_definitions([d])
    (wd / "empty").mkdir()
    with pytest.raises(MkosiError, match="no partition definitions"):
        read_definitions([wd / "empty"])


def test_the_build_stops_before_it_starts_on_a_bad_mkosi_repart_file(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repart_dir(wd, **{"10-root": "[Partition]\nType=root\nCopyFile=/\n"})
    config = load("--format=disk")
    monkeypatch.setattr(repart, "repart_version", lambda sandbox: 257)
    with pytest.raises(MkosiError, match=r"mkosi.repart/10-root.conf:3: unknown setting 'CopyFile='"):
        repart.check_repart(config)


def test_partition_types_by_identifier_and_uuid() -> None:
    assert type_role("root", "x86_64") == "root"
    assert type_role("root-x86-64-verity", "x86_64") == "root-verity"
    assert type_role("usr-arm64", "x86_64") is None          # another architecture's
    assert type_role("usr-arm64", "aarch64") == "usr"
    assert type_role("4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "x86_64") == "root"
    assert type_role("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "x86_64") == "esp"
    assert type_role("root-secondary", "x86_64") is None
    assert type_identifier("usr-verity-sig", "x86_64") == "usr-x86-64-verity-sig"
    assert type_identifier("esp", "x86_64") == "esp"


# ---- systemd-repart's version ----

def test_an_old_systemd_repart_is_refused_with_its_version_and_a_hint() -> None:
    assert repart.parse_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT") == 252
    assert repart.parse_version("nonsense") is None
    with pytest.raises(MkosiError) as e:
        repart.check_version(252, None)
    assert "systemd-repart 255 or newer" in str(e.value) and "this host has systemd-repart 252" in str(e.value)
    assert e.value.hint is not None and "ToolsTree=" in e.value.hint
    with pytest.raises(MkosiError, match="the tools tree /t has systemd-repart 254"):
        repart.check_version(254, "/t")
    repart.check_version(257, None)


def test_the_version_comes_from_the_tools_tree(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    exe = write(tools / "usr/bin/systemd-repart", "#!/bin/sh\necho 'systemd 257 (257.13-1)'\n", mode=0o755)
    assert exe.exists()
    assert repart.repart_version(Sandbox(search_paths=(tools / "usr/bin",))) == 257


# ---- the command line ----

def argv(config: Config, **changes: object) -> list[str]:
    defs = repart.configured_definitions(config)
    return RepartRun.for_config(config, defs, Path("/ws/defs"), Path("/ws/root"), Path("/ws/out/image.raw"),
                                **changes).argv()


def test_the_command_line_of_a_plain_build(wd: Path) -> None:
    config = load("--format=disk", "--seed=0e9a6fe0-68f6-408c-bbeb-136054d20445")
    assert argv(config) == [
        "systemd-repart", "--empty=create", "--size=auto", "--offline=yes", "--dry-run=no", "--json=pretty",
        "--no-pager", "--definitions=/ws/defs", "--root=/ws/root", "--copy-source=/ws/root",
        "--seed=0e9a6fe0-68f6-408c-bbeb-136054d20445", "--architecture=x86-64", "/ws/out/image.raw"]
    # The second run of a bootable build adds the deferred ESP to the existing image.
    second = argv(config, create=False)
    assert "--empty=create" not in second and "--size=auto" not in second
    assert "--defer-partitions=esp,xbootldr" in argv(config, defer=("esp", "xbootldr"))


def test_each_setting_on_the_command_line(wd: Path) -> None:
    write(wd / "mkosi.passphrase", "secret", mode=0o600)
    write(wd / "mkosi.secure-boot.key", "KEY")
    write(wd / "mkosi.secure-boot.crt", "CRT")
    usr_layout(wd, signed=True)
    config = load("--format=disk", "--split-artifacts=partitions", "--sector-size=4K", "--repart-offline=no",
                  "--seed=random", "--verity=signed", "--architecture=aarch64")
    got = argv(config)
    assert "--split=yes" in got and "--sector-size=4096" in got and "--offline=no" in got
    assert "--seed=random" in got and "--architecture=arm64" in got
    assert f"--key-file={wd / 'mkosi.passphrase'}" in got
    assert f"--private-key={wd / 'mkosi.secure-boot.key'}" in got
    assert f"--certificate={wd / 'mkosi.secure-boot.crt'}" in got
    assert not any(a.startswith("--private-key-source") for a in got)
    # VerityKey= and a key source.
    write(wd / "v.key", "K")
    write(wd / "v.crt", "C")
    config = load("--format=disk", "--verity-key=v.key", "--verity-certificate=v.crt",
                  "--verity-key-source=engine:pkcs11")
    got = argv(config)
    assert f"--private-key={wd / 'v.key'}" in got and f"--certificate={wd / 'v.crt'}" in got
    assert "--private-key-source=engine:pkcs11" in got
    # Without a signature partition (and Verity=), no key is handed over; nor without the settings.
    (wd / "mkosi.repart/22-usr-verity-sig.conf").unlink()
    got = argv(load("--format=disk"))
    assert not any(a.startswith(("--private-key", "--certificate", "--split", "--sector-size")) for a in got)


def test_the_seed_follows_seed_then_the_source_date_epoch(wd: Path) -> None:
    assert repart.repart_seed(load("--format=disk")) == "random"
    a = repart.repart_seed(load("--format=disk", "--source-date-epoch=1700000000"))
    assert a == repart.repart_seed(load("--format=disk", "--source-date-epoch=1700000000"))
    assert a != repart.repart_seed(load("--format=disk", "--source-date-epoch=1700000001"))
    assert len(a) == 36
    write(wd / "mkosi.seed", "0e9a6fe0-68f6-408c-bbeb-136054d20445\n")
    assert repart.repart_seed(load("--format=disk")) == "0e9a6fe0-68f6-408c-bbeb-136054d20445"


def test_the_ext4_hash_seed_is_derived_from_a_fixed_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    for fs in ("EXT2", "EXT3", "EXT4"):
        monkeypatch.delenv(f"SYSTEMD_REPART_MKFS_OPTIONS_{fs}", raising=False)
    seed = "0e9a6fe0-68f6-408c-bbeb-136054d20445"
    env = repart.mkfs_environment(seed)
    assert env == repart.mkfs_environment(seed), "the same seed gives the same options"
    assert env != repart.mkfs_environment("5b7f0c1e-8d2a-4e3b-9f60-1a2b3c4d5e6f")
    option = env["SYSTEMD_REPART_MKFS_OPTIONS_EXT4"]
    assert option.startswith("-E hash_seed=") and len(option.split("=", 1)[1]) == 36
    assert repart.mkfs_environment("random") == {}, "a random seed leaves mkfs.ext4 its random hash seed"
    monkeypatch.setenv("SYSTEMD_REPART_MKFS_OPTIONS_EXT4", "-E stride=4")
    assert "SYSTEMD_REPART_MKFS_OPTIONS_EXT4" not in repart.mkfs_environment(seed), "the caller's own options win"


# ---- the settings around it ----

def test_format_disk_takes_and_refuses(wd: Path) -> None:
    config = load("--format=disk", "--sector-size=512")
    assert config.format == "disk" and config.format.row.repart and config.sector_size == 512
    assert config.output == wd / "image.raw"
    for flag in ("--encrypt=all", "--usr-only", "--home-size=1G"):
        with pytest.raises(ConfigError, match="cannot be used with Format=disk"):
            load("--format=disk", flag)
    with pytest.raises(ConfigError, match="expected 512, 1024, 2048 or 4096"):
        load("--format=disk", "--sector-size=3000")


def test_verity_and_keys_are_checked_against_the_definitions(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repart, "repart_version", lambda sandbox: 257)
    usr_layout(wd, signed=True)
    with pytest.raises(MkosiError, match=r"22-usr-verity-sig.conf:3: Verity=signature needs a key"):
        repart.check_repart(load("--format=disk"))
    (wd / "mkosi.repart/22-usr-verity-sig.conf").unlink()
    write(wd / "mkosi.secure-boot.key", "KEY")
    write(wd / "mkosi.secure-boot.crt", "CRT")
    with pytest.raises(MkosiError, match="Verity=signed with Format=disk needs a partition definition"):
        repart.check_repart(load("--format=disk", "--verity=signed"))
    repart.check_repart(load("--format=disk", "--bootable"))
    (wd / "mkosi.repart/00-esp.conf").unlink()
    with pytest.raises(MkosiError, match="needs an ESP partition definition"):
        repart.check_repart(load("--format=disk", "--bootable"))
    with pytest.raises(MkosiError, match="BootProtocols=bios with Format=disk is not implemented yet"):
        repart.check_repart(load("--format=disk", "--bootable", "--boot-protocols=uefi,bios"))


# ---- the JSON report ----

REPORT = [
    {"type": "esp", "label": "esp", "uuid": "cb96a8e9-addc-4be7-b68e-69b6d1ea59cb", "partno": 0,
     "file": "/ws/defs/00-esp.conf", "node": "/ws/out/image.raw1", "offset": 1048576, "old_size": 0,
     "raw_size": 67108864, "activity": "create", "roothash": None, "split_path": "/ws/out/image.esp.raw"},
    {"type": "root-x86-64", "label": "root-x86-64", "uuid": "9a914a15-37a6-422c-a924-0380869e7ede", "partno": 1,
     "file": "/ws/defs/10-root.conf", "offset": 68157440, "raw_size": 33554432, "activity": "create",
     "roothash": None, "split_path": "/ws/out/image.root-x86-64.raw"},
    {"type": "usr-x86-64", "label": "usr-x86-64", "uuid": "89611ff5-8a6c-2ccb-cc44-881d3cf05c3a", "partno": 2,
     "file": "/ws/defs/20-usr.conf", "offset": 101711872, "raw_size": 4096, "activity": "create",
     "roothash": "89611ff58a6c2ccbcc44881d3cf05c3a6889a04521f47e8c3b4abe9ffbf1086a",
     "split_path": "/ws/out/image.usr-x86-64.raw"},
    {"type": "usr-x86-64-verity", "label": "usr-x86-64-verity", "uuid": "6889a045-21f4-7e8c-3b4a-be9ffbf1086a",
     "partno": 3, "file": "/ws/defs/21-usr-verity.conf", "offset": 101715968, "raw_size": 4096,
     "activity": "create", "roothash": "89611ff58a6c2ccbcc44881d3cf05c3a6889a04521f47e8c3b4abe9ffbf1086a",
     "split_path": "/ws/out/image.usr-x86-64-verity.raw"},
]


def test_the_json_report_is_read_into_partitions() -> None:
    made = parse_report(json.dumps(REPORT, indent="\t"))
    assert [m.role("x86_64") for m in made] == ["esp", "root", "usr", "usr-verity"]
    assert made[1].label == "root-x86-64" and made[1].offset == 68157440 and made[1].size == 33554432
    assert made[0].roothash is None and made[0].split_path == "/ws/out/image.esp.raw"
    usr = verity_of(made, "x86_64", "usr")
    assert usr is not None
    assert usr.roothash.startswith("89611ff5") and usr.data_partuuid == made[2].uuid
    assert usr.hash_partuuid == made[3].uuid
    assert verity_of(made, "x86_64", "root") is None
    assert repart.usr_words(usr) == [f"usrhash={usr.roothash}"]
    # A partition left alone by a second run has its root hash as "TBD".
    again = parse_report(json.dumps([{**REPORT[2], "roothash": "TBD", "activity": "unchanged"}, REPORT[3]]))
    assert again[0].roothash is None and verity_of(again, "x86_64", "usr") is None
    # A deferred partition has no offset.
    deferred = parse_report(json.dumps([{**REPORT[0], "offset": None}]))
    assert deferred[0].offset is None


@pytest.mark.parametrize("text,message", [
    ("not json", "no valid JSON report"),
    ('{"type": "esp"}', "not a list"),
    ('[{"type": "esp"}]', "unexpected partition entry"),
])
def test_a_report_that_cannot_be_read_is_an_error(text: str, message: str) -> None:
    with pytest.raises(MkosiError, match=message):
        parse_report(text)


# ---- split partitions in the artifact table ----

def test_split_partitions_are_named_after_their_types(wd: Path) -> None:
    usr_layout(wd)
    config = load("--format=disk", "--split-artifacts=partitions,roothash", "--compress-output=zstd",
                  "--image-id=os")
    names = sorted(p.name for p in artifacts.paths(config))
    for name in ("os.esp.raw.zst", "os.root-x86-64.raw.zst", "os.usr-x86-64.raw.zst",
                 "os.usr-x86-64-verity.raw.zst", "os.usrhash"):
        assert name in names, names
    # The classic formats' split names are not written by Format=disk, nor its by them.
    assert "os.root.raw.zst" not in names and "os.roothash" not in names
    classic = load("--format=gpt_ext4", "--split-artifacts=partitions", "--image-id=os")
    classic_names = [p.name for p in artifacts.paths(classic)]
    assert "os.root.raw" in classic_names and not any("x86-64" in n for n in classic_names)
    # Without SplitArtifacts=partitions, or with SplitName=- for a partition, there is no file.
    assert not any("x86-64" in p.name for p in artifacts.paths(load("--format=disk", "--image-id=os")))
    write(wd / "mkosi.repart/10-root.conf", ROOT + "SplitName=-\n")
    config = load("--format=disk", "--split-artifacts=partitions", "--image-id=os")
    assert "os.root-x86-64.raw" not in [p.name for p in artifacts.paths(config)]
    assert split_roles(read_definitions([wd / "mkosi.repart"]), "x86_64") == ["esp", "usr", "usr-verity"]


def test_the_default_layouts_split_files(wd: Path) -> None:
    config = load("--format=disk", "--split-artifacts=partitions", "--bootable", "--image-id=os",
                  "--distribution=debian")
    assert config.distribution == Distribution.debian
    names = [p.name for p in artifacts.paths(config)]
    assert "os.esp.raw" in names and "os.root-x86-64.raw" in names
    assert "os.efi" in names  # the unified kernel image, split out as for the gpt_* formats


def test_split_files_are_staged_under_their_rows(wd: Path) -> None:
    usr_layout(wd)
    config = load("--format=disk", "--split-artifacts=partitions", "--image-id=os")
    staging, out = wd / "staging", wd / "out"
    staging.mkdir()
    out.mkdir()
    report = []
    for p in REPORT:
        split = out / Path(str(p["split_path"])).name
        split.write_text(str(p["type"]))
        report.append({**p, "split_path": str(split)})
    # A partition of a type the table has no name for is dropped (with a warning).
    odd = out / "image.0fc63daf-8483-4772-8e79-3d69d8477de5.raw"
    odd.write_text("x")
    report.append({**REPORT[1], "type": "0fc63daf-8483-4772-8e79-3d69d8477de5", "split_path": str(odd)})
    ctx = Context(Args(), config, wd, Phase.final, wd / "root", None, staging)
    repart.stage_split_partitions(ctx, parse_report(json.dumps(report)))
    assert sorted(p.name for p in staging.iterdir()) == [
        "os.esp.raw", "os.root-x86-64.raw", "os.usr-x86-64-verity.raw", "os.usr-x86-64.raw"]
    assert (staging / "os.usr-x86-64-verity.raw").read_text() == "usr-x86-64-verity"
    assert not odd.exists()


def test_root_hashes_are_written_from_the_report(wd: Path) -> None:
    usr_layout(wd)
    config = load("--format=disk", "--split-artifacts=roothash", "--image-id=os")
    staging = wd / "staging"
    staging.mkdir()
    ctx = Context(Args(), config, wd, Phase.final, wd / "root", None, staging)
    repart.write_root_hashes(ctx, parse_report(json.dumps(REPORT)))
    assert (staging / "os.usrhash").read_text() == f"{REPORT[2]['roothash']}\n"
    assert not (staging / "os.roothash").exists()
    with pytest.raises(MkosiError, match="no root hash for the usr partition"):
        repart.write_root_hashes(ctx, parse_report(json.dumps(REPORT[:2])))


def test_the_uki_command_line_gets_the_root_partition_and_the_verity_root_hashes(
        wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, object, list[str], object]] = []

    def fake_prepare_esp(ctx: Context, label: str, verity: object = None) -> Path:
        seen.append((label, verity, list(ctx.config.kernel_command_line), ctx.config.verity))
        return wd / "esp"

    monkeypatch.setattr(repart, "prepare_esp", fake_prepare_esp)
    config = load("--format=disk", "--bootable", "--kernel-command-line=quiet", "--verity=yes")
    ctx = Context(Args(), config, wd, Phase.final, wd / "root", None, wd)
    # A verity-protected /usr: usrhash= joins the command line; the root has no hash (Verity= is
    # off for prepare_esp(), which would otherwise ask for the root's).
    assert repart.bootable_esp(ctx, parse_report(json.dumps(REPORT))) == wd / "esp"
    label, verity, cmdline, verity_setting = seen[-1]
    assert label == "root-x86-64" and verity is None and str(verity_setting) == "no"
    assert cmdline == ["quiet", f"usrhash={REPORT[2]['roothash']}"]
    assert ctx.config is config  # the configuration is the build's again
    # A verity-protected root: its hash and the data and hash partition UUIDs.
    root_hash = "a" * 64
    report = [{**REPORT[0]},
              {**REPORT[1], "roothash": root_hash, "uuid": "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"},
              {**REPORT[3], "type": "root-x86-64-verity", "roothash": root_hash,
               "uuid": "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"}]
    # Without Verity= too: the definitions protect the root, so it is mounted read-only.
    ctx.config = config = load("--format=disk", "--bootable", "--kernel-command-line=quiet")
    repart.bootable_esp(ctx, parse_report(json.dumps(report)))
    label, verity, cmdline, verity_setting = seen[-1]
    assert cmdline == ["quiet"] and str(verity_setting) == "yes"
    assert verity is not None
    assert (verity.roothash, verity.data_partuuid, verity.hash_partuuid) == (  # type: ignore[attr-defined]
        root_hash, "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa", "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb")
    with pytest.raises(MkosiError, match="without a root partition is not implemented yet"):
        repart.bootable_esp(ctx, parse_report(json.dumps([REPORT[0], REPORT[2], REPORT[3]])))


def test_disk_images_need_systemd_repart_not_sfdisk(wd: Path) -> None:
    tools = host_tools(load("--format=disk", "--qcow2"), runtime=False)
    assert "systemd-repart" in tools and "qemu-img" in tools and "sfdisk" not in tools
    assert "sfdisk" in host_tools(load("--format=gpt_ext4"), runtime=False)


def test_the_version_is_checked_before_the_build_unless_the_default_tools_tree_is_yet_to_be_built(
        wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Sandbox] = []

    def old(sandbox: Sandbox) -> int:
        asked.append(sandbox)
        return 252

    monkeypatch.setattr(repart, "repart_version", old)
    (wd / "tools/usr").mkdir(parents=True)
    with pytest.raises(MkosiError, match=f"the tools tree {wd / 'tools'} has systemd-repart 252"):
        repart.check_repart(load("--format=disk", f"--tools-tree={wd / 'tools'}"))
    assert asked[-1].tools == wd / "tools"
    repart.check_repart(load("--format=disk", "--tools-tree=default"))
    assert len(asked) == 1
