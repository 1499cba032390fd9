"""The settings of the modern manual: every one is known, typed, defaulted and shown; the classic names
the modern language renamed or moved keep working.

The key list is read from the modern manual (../shared/reference/mkosi-v26.1.md beside the repository);
the tests that need it are skipped with a reason when it is not there."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from mkosi.config import load_args
from mkosi.config.enums import (
    BuildSourcesEphemeral,
    CacheOnly,
    Feature,
    SplitArtifact,
    ToolsTreeProfile,
    UnifiedKernelImages,
    Verb,
    Verity,
)
from mkosi.config.ini import lookup_key
from mkosi.config.modern import parse_drive, parse_key_source, parse_tools_tree, parse_vsock_cid
from mkosi.config.parse import build_parser, parse_command_line
from mkosi.config.settings import SETTINGS, Args, Config, by_dest
from mkosi.config.types import (
    ConfigTree,
    Scope,
    parse_octal_mode,
    parse_relative_tree,
    parse_size,
    parse_tree,
    parse_uuid_or_random,
)
from mkosi.errors import ConfigError
from mkosi.formats import FORMATS
from mkosi.summary import summary_dict, summary_json
from mkosi.trees import install_tree
from tests.unit.conftest import write

REPO = Path(__file__).resolve().parents[2]
# ../shared/reference beside the repository (or beside a directory holding it, for a worktree).
MANUAL = next((p / "shared/reference/mkosi-v26.1.md" for p in REPO.parents
               if (p / "shared/reference/mkosi-v26.1.md").is_file()), REPO / "../shared/reference/mkosi-v26.1.md")
SUMMARY = Args(verb=Verb.summary)
SECTIONS_READ = ("Distribution", "Output", "Content", "Validation", "Build", "Runtime", "Config")

pytestmark = pytest.mark.usefixtures("fixed_host")


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    assert len(configs) == 1
    return configs[0]


def manual_settings() -> list[tuple[str, str, list[str]]]:
    """(section, key, flags) of every setting header of the manual's settings sections."""
    if not MANUAL.is_file():
        pytest.skip(f"the modern manual is not available at {MANUAL}")
    result: list[tuple[str, str, list[str]]] = []
    section = None
    for line in MANUAL.read_text().splitlines():
        m = re.match(r"^### \[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        if line.startswith("## ") or line.startswith("# "):
            section = None
        if section not in SECTIONS_READ or not re.match(r"^`(\w+)=`", line):
            continue
        flags: list[str] = []
        for token in re.findall(r"`([^`]+)`", line):
            if token.startswith("-"):
                flags.append(token.rstrip("="))
            else:
                flags = []
                result.append((section, token.rstrip("="), flags))
    assert len(result) > 150, "the manual parser found too few settings"
    return result


# ---- every setting of the manual is known ----

def test_every_manual_setting_is_a_known_key() -> None:
    missing, renamed, misplaced = [], [], []
    for section, key, _ in manual_settings():
        found = lookup_key(key)
        if found is None:
            missing.append(key)
            continue
        s, legacy = found
        if legacy or s.key != key:
            renamed.append(f"{key}= is known as {s.key}=")
        if s.section != section:
            misplaced.append(f"{key}= is in [{s.section}], the manual says [{section}]")
    assert not missing, f"unknown: {missing}"
    assert not renamed, "\n".join(renamed)
    assert not misplaced, "\n".join(misplaced)


def test_every_manual_flag_sets_its_setting() -> None:
    index = {flag: action for action in build_parser()._actions for flag in action.option_strings}
    problems = []
    for _, key, flags in manual_settings():
        found = lookup_key(key)
        assert found is not None
        for flag in flags:
            if key == "Autologin" and flag == "-a":
                continue  # -a is the classic --all; documented in mkosi.md
            action = index.get(flag)
            if action is None or getattr(action, "setting", None) != found[0]:
                problems.append(f"{flag} does not set {key}=")
    assert not problems, "\n".join(problems)


def test_every_manual_setting_is_in_the_json_summary(wd: Path) -> None:
    c = load()
    [image] = json.loads(summary_json(SUMMARY, [c]))["Images"]
    sections = summary_dict(SUMMARY, c)
    for section, key, _ in manual_settings():
        assert key in image, f"{key}= is not in summary --json"
        assert key in sections[section], f"{key}= is not in the summary's [{section}]"


def test_runtime_settings_are_the_main_images() -> None:
    for s in SETTINGS:
        if s.section == "Runtime":
            assert s.scope == Scope.main, s.key


# ---- the value types ----

@pytest.mark.parametrize("raw,source,target", [
    ("/a", "/a", None),
    ("/a:/usr/share/x", "/a", "/usr/share/x"),
    ("/a:usr/share/x", "/a", "/usr/share/x"),   # the target is always absolute
])
def test_parse_tree(raw: str, source: str, target: str | None) -> None:
    tree = parse_tree(raw)
    assert tree == ConfigTree(Path(source), Path(target) if target else None)


@pytest.mark.parametrize("raw", ["", ":/x", "/a:"])
def test_parse_tree_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_tree(raw)


def test_runtime_tree_target_may_stay_relative() -> None:
    assert parse_relative_tree("/a:dst") == ConfigTree(Path("/a"), Path("dst"))


@pytest.mark.parametrize("raw,expected", [("2G", 2 * 1024**3), ("512M", 512 * 1024**2), ("4K", 4096), ("1024", 1024)])
def test_sizes_with_suffixes(raw: str, expected: int) -> None:
    assert parse_size(raw) == expected


def test_small_parsers() -> None:
    assert parse_octal_mode("0644") == 0o644
    with pytest.raises(ValueError):
        parse_octal_mode("0999")
    assert parse_uuid_or_random("random") == "random"
    assert parse_uuid_or_random("0123456789abcdef0123456789ABCDEF") == "01234567-89ab-cdef-0123-456789abcdef"
    with pytest.raises(ValueError):
        parse_uuid_or_random("xyz")
    assert parse_key_source("engine:pkcs11") == "engine:pkcs11"
    with pytest.raises(ValueError):
        parse_key_source("engine:")
    assert parse_vsock_cid("hash") == "hash" and parse_vsock_cid("0x10") == "16"
    with pytest.raises(ValueError):
        parse_vsock_cid("2")
    assert parse_drive("myfs:1G::::persist") == "myfs:1G::::persist"
    with pytest.raises(ValueError):
        parse_drive("myfs")
    with pytest.raises(ValueError):
        parse_drive("myfs:1G::::sometimes")
    assert parse_tools_tree("yes") == "default" and parse_tools_tree("no") is None


def test_settings_file_with_modern_values(wd: Path) -> None:
    (wd / "extra").mkdir()
    (wd / "mkosi.builddir").mkdir()  # buildcache keeps the sources' overlay there
    write(wd / "mkosi.conf", """
        [Output]
        Format=disk
        SplitArtifacts=uki,partitions
        SectorSize=4K

        [Content]
        Bootable=auto
        ExtraTrees=extra:/usr/share/foo
        SELinuxRelabel=no
        InitrdProfiles=lvm,raid

        [Build]
        CacheOnly=metadata
        BuildSourcesEphemeral=buildcache
        ToolsTreeProfiles=devel,misc
        SandboxTrees=extra

        [Runtime]
        RAM=4G
        CPUs=4
        VSock=yes
        RuntimeSize=8G
        Drives=btrfs:10G ext4:20G
        """)
    c = load()
    assert c.format == "disk"
    assert c.split_artifacts == [SplitArtifact.uki, SplitArtifact.partitions]
    assert c.sector_size == 4096
    assert c.bootable is True                      # auto, on a disk format
    assert c.extra_trees == [ConfigTree(wd / "extra", Path("/usr/share/foo"))]
    assert c.selinux_relabel == Feature.disabled
    assert [str(p) for p in c.initrd_profiles] == ["lvm", "raid"]
    assert c.cache_only == CacheOnly.metadata
    assert c.build_sources_ephemeral == BuildSourcesEphemeral.buildcache
    assert c.tools_tree_profiles == [ToolsTreeProfile.devel, ToolsTreeProfile.misc]
    assert c.sandbox_trees == [ConfigTree(wd / "extra")]
    assert (c.qemu_mem, c.qemu_smp) == ("4G", "4")
    assert c.vsock == Feature.enabled
    assert c.runtime_size == 8 * 1024**3
    assert c.drives == ["btrfs:10G", "ext4:20G"]
    data = summary_dict(SUMMARY, c)
    assert data["Content"]["ExtraTrees"] == [{"Source": str(wd / "extra"), "Target": "/usr/share/foo"}]
    assert data["Output"]["SplitArtifacts"] == ["uki", "partitions"]
    assert "InitrdProfiles" not in data["NotImplemented"]      # dracut modules now
    assert "SELinuxRelabel" not in data["NotImplemented"]
    assert "CacheOnly" not in data["NotImplemented"]


def test_bootable_auto_follows_the_format(wd: Path) -> None:
    assert load("--format=directory", "--bootable=auto").bootable is False
    assert load("--format=gpt_ext4", "--bootable=auto").bootable is True


def test_split_artifacts_booleans(wd: Path) -> None:
    assert load("--format=gpt_ext4", "--split-artifacts").split_artifacts == [SplitArtifact.partitions,
                                                                               SplitArtifact.uki]
    write(wd / "mkosi.conf", "[Output]\nSplitArtifacts=yes\nSplitArtifacts=no\n")
    assert load("--format=gpt_ext4").split_artifacts == []
    with pytest.raises(ConfigError, match="split-artifacts"):
        load("--format=gpt_ext4", "--split-artifacts=kernels")


def test_modern_values_of_classic_settings(wd: Path) -> None:
    c = load("--format=gpt_ext4", "--verity=hash", "--ssh=always", "--unified-kernel-images=none",
             "--machine-id=random", "--root-password=hashed:$6$x", "--incremental=strict")
    assert c.verity == Verity.yes
    assert c.ssh is True
    assert c.with_unified_kernel_images == UnifiedKernelImages.none
    for value, mode in (("signed", "signed"), ("unsigned", "unsigned"), ("auto", "auto"), ("yes", "unsigned"),
                        ("no", "none")):
        assert load("--format=gpt_ext4", f"--unified-kernel-images={value}").with_unified_kernel_images == mode
    assert load("--format=gpt_ext4").with_unified_kernel_images == UnifiedKernelImages.auto
    with pytest.raises(ConfigError, match="none, auto, signed, unsigned"):
        load("--format=gpt_ext4", "--unified-kernel-images=sometimes")
    assert c.machine_id is not None and uuid.UUID(hex=c.machine_id)
    assert (c.password, c.password_is_hashed) == ("$6$x", True)
    args, _ = load_args(["--incremental=strict", "summary"])
    assert args.incremental is True


def test_several_scripts_are_refused_clearly(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Content]\nBuildScripts=a.sh,b.sh\n")
    with pytest.raises(ConfigError) as e:
        load()
    assert "mkosi.conf:2" in str(e.value) and "not implemented yet" in str(e.value)


# ---- defaults as the manual gives them ----

def test_defaults_of_the_manual(wd: Path) -> None:
    c = load()
    assert c.cache_key == "&d~&r~&a~&I" and c.build_key == "&d~&r~&a"
    assert str(c.qemu_kvm) == "auto" and str(c.firmware) == "auto" and str(c.console) == "interactive"
    assert str(c.bootloader) == "systemd-boot" and str(c.bios_bootloader) == "none"
    assert c.kernel_modules_initrd is True and c.repository_key_check is True
    assert c.tools_tree_certificates is True and c.secure_boot_auto_enroll is True
    assert str(c.runtime_network) == "user" and c.vsock_cid == "auto"
    assert c.cache_only == CacheOnly.auto and c.use_subvolumes == Feature.auto
    assert c.tools_tree_profiles == [ToolsTreeProfile.misc, ToolsTreeProfile.package_manager,
                                     ToolsTreeProfile.runtime]
    assert c.repository_key_fetch is False          # debian
    assert load("--distribution=ubuntu").repository_key_fetch is True


def test_source_date_epoch_default(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert load().source_date_epoch is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "100")
    assert load().source_date_epoch == 100
    assert load("--environment=SOURCE_DATE_EPOCH=200").source_date_epoch == 200
    assert load("--source-date-epoch=300").source_date_epoch == 300


def test_path_defaults(wd: Path) -> None:
    (wd / "mkosi.repart").mkdir()
    (wd / "mkosi.sandbox").mkdir()
    (wd / "mkosi.pkgcache").mkdir()
    (wd / "mkosi.cache").mkdir()
    c = load()
    assert c.repart_dirs == [wd / "mkosi.repart"]
    assert c.sandbox_trees == [ConfigTree(wd / "mkosi.sandbox")]
    assert c.cache_path == wd / "mkosi.pkgcache"   # the package cache
    assert c.cache_dir is None                     # a classic tree: -i's caches stay next to the image
    write(wd / "mkosi.conf", "[Output]\nFormat=directory\n")
    c = load()
    assert c.cache_path == wd / "mkosi.pkgcache"
    assert c.cache_dir == wd / "mkosi.cache"       # the incremental cache of a modern tree


def test_passphrase_setting(wd: Path) -> None:
    write(wd / "secret", "pw", 0o600)
    assert load("--passphrase=secret").passphrase_file == wd / "secret"
    write(wd / "open", "pw", 0o644)
    with pytest.raises(ConfigError, match="too permissive"):
        load("--passphrase=open")


# ---- classic names keep working ----

def test_classic_names_and_sections(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", """
        [Output]
        Bootable=yes
        Format=gpt_ext4

        [Content]
        Cache=pkgs
        BuildDirectory=build
        WithNetwork=yes

        [Host]
        QemuMem=3G
        QemuSmp=3
        QemuKvm=no
        Ephemeral=yes
        """)
    c = load()
    assert c.bootable is True
    assert c.cache_path == wd / "pkgs"
    assert c.build_dir == wd / "build"
    assert (c.qemu_mem, c.qemu_smp, str(c.qemu_kvm), c.ephemeral) == ("3G", "3", "no", True)
    err = capsys.readouterr().err
    assert "belongs in" not in err                  # moved settings stand in their classic sections
    assert "QemuMem= is an older name, use RAM=" in err
    assert "Cache= is an older name, use PackageCacheDirectory=" in err


def test_classic_flags_are_accepted(wd: Path) -> None:
    argv = ["--output-dir=out", "--workspace-dir=ws", "--build-dir=bd", "--cache=pc", "--qemu-mem=5G",
            "--extra-search-paths=/opt/bin", "--password=pw", "summary"]
    cli = parse_command_line(argv)
    assert [a.setting.dest for a in cli.assignments] == ["output_dir", "workspace_dir", "build_dir", "cache_path",
                                                         "qemu_mem", "extra_search_paths", "password"]


def test_one_row_per_meaning() -> None:
    # A renamed classic setting is an alias of the modern row, not a row of its own.
    for classic, modern in (("QemuMem", "RAM"), ("Cache", "PackageCacheDirectory"), ("ExtraTree", "ExtraTrees"),
                            ("Settings", "NSpawnSettings"), ("Password", "RootPassword")):
        found = lookup_key(classic)
        assert found is not None and found[1] and found[0].key == modern
    assert by_dest("qemu_mem").key == "RAM"


def test_modern_distributions_are_recognised_but_not_built(wd: Path) -> None:
    assert str(load("--distribution=custom").distribution) == "custom"
    assert str(load("--distribution=rhel-ubi").distribution) == "rhel-ubi"
    with pytest.raises(ConfigError, match="not implemented yet"):
        load_args(["--distribution=kali", "build"])
    load_args(["--distribution=debian", "--format=directory", "build"])  # a distribution with an installer


def test_modern_formats_are_all_built(wd: Path) -> None:
    # Every format of the v26 manual has a maker now: none is refused as not implemented.
    for fmt in ("disk", "uki", "esp", "addon", "sysext", "confext", "portable", "oci", "none"):
        assert str(load(f"--format={fmt}").format) == fmt  # summary shows it
        assert FORMATS[fmt].maker is not None and FORMATS[fmt].status is None
        load_args([f"--format={fmt}", "build"])


def test_host_is_the_older_name_of_runtime(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Host]\nVSock=no\nRAM=2G\n")
    c = load()
    assert (c.vsock, c.qemu_mem) == (Feature.disabled, "2G")
    assert "belongs in" not in capsys.readouterr().err


def test_incremental_in_a_settings_file(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Build]\nIncremental=yes\n")
    args, _ = load_args(["summary"])
    assert args.incremental is True
    [image] = json.loads(summary_json(SUMMARY, [load()]))["Images"]
    assert "Incremental" in image


def test_extra_tree_is_copied_to_its_target(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    write(src / "a/file", "x")
    root = tmp_path / "root"
    root.mkdir()
    tree = parse_tree(f"{src}:/usr/share/foo")
    install_tree(tree.source, root, str(tree.target or "/"))  # as copy_extra_trees does
    assert (root / "usr/share/foo/a/file").read_text() == "x"
    assert not (root / "a").exists()
