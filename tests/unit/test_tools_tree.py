"""ToolsTree=default: the tools image's configuration, its cache key, reuse and rebuild, and how the verbs,
summary and clean see it. The build itself is replaced by a fake that writes a tree (the real one is in
tests/integration/test_tools_tree.py)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mkosi.tools_tree
import mkosi.verbs
from mkosi.cache import settings_inputs
from mkosi.config import load_args
from mkosi.config.enums import Distribution, Verb
from mkosi.config.settings import Args, Config
from mkosi.errors import MkosiError
from mkosi.run import current_sandbox, find_tool, missing_tool
from mkosi.sandbox import Sandbox
from mkosi.summary import main_images, summary_dict, summary_json, summary_text
from mkosi.tools_tree import (
    build_tools_tree,
    key_path,
    resolve,
    tools_tree_config,
    tools_tree_key,
    with_tools_tree,
)
from tests.unit.conftest import write
from tests.unit.test_config import load, load_both

BASE = ("systemd", "systemd-repart", "systemd-ukify", "python3-pefile", "systemd-container", "systemd-boot-efi",
        "e2fsprogs", "xfsprogs", "dosfstools", "mtools", "squashfs-tools", "erofs-utils",
        "cryptsetup-bin", "sbsigntool", "openssl", "zstd", "xz-utils", "util-linux", "fdisk", "kmod", "cpio",
        "binutils", "tar", "gnupg", "apt", "dpkg", "debian-archive-keyring")


@pytest.fixture
def project(wd: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Debian bookworm image with ToolsTree=default whose caches are in the test's directory; the host's
    distribution (which decides the tools tree's) is Debian whatever machine runs the tests."""
    monkeypatch.setattr(mkosi.tools_tree, "fallback_tools_tree_distribution", lambda: Distribution.debian)
    write(wd / "mkosi.conf", f"""
        [Distribution]
        Distribution=debian
        Release=bookworm

        [Output]
        Format=directory
        OutputDirectory={wd / 'out'}

        [Build]
        ToolsTree=default
        PackageCacheDirectory={wd / 'cache'}
        """)
    (wd / "out").mkdir()
    return wd


def tools_of(*argv: str) -> Config:
    return tools_tree_config(load(*argv))[1]


class FakeBuild:
    """Stands in for build_command: writes the tools image's output tree (with a usr/) and counts calls."""

    def __init__(self, fail: bool = False) -> None:
        self.built: list[Config] = []
        self.fail = fail

    def __call__(self, args: Args, config: Config) -> bool:
        assert args.verb == Verb.build and config.format.value == "directory"
        assert config.output is not None
        (config.output / "usr/bin").mkdir(parents=True)
        (config.output / "usr/bin/systemd-repart").write_text("#!/bin/sh\necho systemd 257\n")
        (config.output / "usr/bin/systemd-repart").chmod(0o755)
        self.built.append(config)
        if self.fail:
            raise MkosiError("the package manager failed")
        return True


@pytest.fixture(autouse=True)
def release_trees() -> Iterator[None]:
    """The shared locks a test's builds take on their trees are dropped after it."""
    yield
    release()


def release() -> None:
    while mkosi.tools_tree._in_use:
        os.close(mkosi.tools_tree._in_use.pop())


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch) -> FakeBuild:
    fake = FakeBuild()
    monkeypatch.setattr(mkosi.tools_tree, "build_command", fake)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    return fake


# ---- the tools image's configuration ----

def test_defaults_are_debian_trixie_with_the_base_and_the_three_profiles(project: Path) -> None:
    tools = tools_of()
    assert (tools.distribution, tools.release, tools.format.value) == (Distribution.debian, "trixie", "directory")
    assert tools.architecture == load().architecture
    for package in BASE:
        assert package in tools.packages, package
    # trixie's own btrfs-progs (6.14) cannot make a reproducible file system: its backport (7.3) can.
    assert "btrfs-progs/trixie-backports" in tools.packages and "btrfs-progs" not in tools.packages
    assert "backports" in tools.repositories
    for package in ("jq", "strace", "git",                                  # misc
                    "dnf", "pacman-package-manager", "zypper",              # package-manager
                    "swtpm", "virtiofsd", "openssh-client"):                # runtime
        assert package in tools.packages, package
    assert "build-essential" not in tools.packages  # devel is not a default profile
    assert not tools.bootable


def test_the_profiles_select_the_packages(project: Path) -> None:
    base = tools_of("--tools-tree-profile=")
    assert set(BASE) <= set(base.packages)
    assert not {"jq", "dnf", "swtpm"} & set(base.packages)
    runtime = tools_of("--tools-tree-profile=", "--tools-tree-profile=runtime")
    assert {"swtpm", "qemu-system-x86"} <= set(runtime.packages) and "dnf" not in runtime.packages
    devel = tools_of("--tools-tree-profile=devel")
    assert "build-essential" in devel.packages


def test_only_a_trixie_tools_tree_takes_btrfs_progs_from_backports(project: Path) -> None:
    bookworm = tools_of("--tools-tree-release=bookworm")
    assert "btrfs-progs" in bookworm.packages and "btrfs-progs/trixie-backports" not in bookworm.packages
    assert "backports" not in bookworm.repositories
    noble = tools_of("--tools-tree-distribution=ubuntu")
    assert "btrfs-progs" in noble.packages and "backports" not in noble.repositories


def test_the_runtime_profile_has_the_architecture_s_qemu(project: Path) -> None:
    tools = tools_of("--architecture=arm64", "--tools-tree-profile=", "--tools-tree-profile=runtime")
    assert tools.architecture == "aarch64"
    assert {"qemu-system-arm", "qemu-efi-aarch64"} <= set(tools.packages)
    assert "qemu-system-x86" not in tools.packages


def test_the_tools_tree_settings_reach_the_tools_image(project: Path) -> None:
    tools = tools_of("--tools-tree-distribution=ubuntu", "--tools-tree-release=noble",
                     "--tools-tree-mirror=http://mirror.example/ubuntu", "--tools-tree-repository=universe",
                     "--tools-tree-package=jq,hello", "--tools-tree-package=cowsay")
    assert (tools.distribution, tools.release) == (Distribution.ubuntu, "noble")
    assert tools.mirror == "http://mirror.example/ubuntu"
    assert tools.repositories == ["universe"]
    assert {"hello", "cowsay", "systemd-repart"} <= set(tools.packages)
    # The main image's own settings stay its own.
    main = load("--tools-tree-package=hello")
    assert main.packages == [] and main.distribution == Distribution.debian


def test_the_release_defaults_to_the_tools_distribution_s_default(project: Path) -> None:
    assert tools_of("--tools-tree-distribution=ubuntu").release == "noble"


def test_multiversal_settings_apply_to_the_tools_image(project: Path) -> None:
    tools = tools_of("--repository-key-check=no", "--source-date-epoch=1234", f"--workspace-directory={project}")
    assert tools.cache_path == project / "cache"
    assert tools.repository_key_check is False
    assert tools.source_date_epoch == 1234
    assert tools.workspace_dir == project
    # The tools image is built apart from the main image's output, below the cache.
    assert tools.output is not None and tools.output.is_relative_to(project / "cache")


def test_mkosi_tools_conf_file_and_directory_configure_the_tools_tree(project: Path) -> None:
    write(project / "mkosi.tools.conf", "[Content]\nPackages=from-the-file\n")
    assert "from-the-file" in tools_of().packages
    (project / "mkosi.tools.conf").unlink()
    write(project / "mkosi.tools.conf/mkosi.conf", "[Content]\nPackages=from-the-dir\n")
    write(project / "mkosi.tools.conf/mkosi.conf.d/10-more.conf", "[Content]\nPackages=from-a-dropin\n")
    tools = tools_of()
    assert {"from-the-dir", "from-a-dropin"} <= set(tools.packages)
    # It is the tools tree's configuration only.
    assert "from-the-dir" not in load().packages


# ---- the key ----

def test_the_key_is_stable_and_follows_the_inputs(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tools_tree_key(tools_of())
    assert tools_tree_key(tools_of()) == key
    monkeypatch.setenv("SOME_UNRELATED_VARIABLE", "x")
    assert tools_tree_key(tools_of("--output-directory=" + str(project))) == key
    changed = {
        tools_tree_key(tools_of("--tools-tree-package=jq")),
        tools_tree_key(tools_of("--tools-tree-profile=")),
        tools_tree_key(tools_of("--tools-tree-release=sid")),
        tools_tree_key(tools_of("--tools-tree-mirror=http://mirror.example/debian")),
    }
    assert key not in changed and len(changed) == 4
    write(project / "mkosi.tools.conf", "[Content]\nWithDocs=yes\n")
    with_docs = tools_tree_key(tools_of())
    assert with_docs != key
    write(project / "mkosi.tools.conf", "[Content]\nWithDocs=no\n")
    assert tools_tree_key(tools_of()) not in (with_docs,)


# ---- building, reusing, rebuilding ----

def test_the_tree_is_built_once_and_then_reused(project: Path, fake_build: FakeBuild,
                                               caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    config = load(verb="build")
    tree = build_tools_tree(config)
    assert len(fake_build.built) == 1
    assert tree.parent == project / "cache" and tree.name.startswith("mkosi-tools-")
    assert (tree / "usr/bin/systemd-repart").exists()
    key = tools_tree_key(tools_tree_config(config)[1])
    assert tree.name.endswith(key)
    assert key_path(tree).read_text().strip() == key
    # The temporary build directory is gone.
    assert sorted(p.name for p in (project / "cache").iterdir() if p.name != ".mkosi-tools-lock") == \
        [tree.name, tree.name + ".key"]
    capsys.readouterr()
    assert build_tools_tree(load(verb="build")) == tree
    assert len(fake_build.built) == 1
    assert f"Reusing the cached tools tree {tree}" in capsys.readouterr().err


def test_changed_inputs_build_another_tree(project: Path, fake_build: FakeBuild) -> None:
    first = build_tools_tree(load(verb="build"))
    second = build_tools_tree(load("--tools-tree-package=jq", verb="build"))
    assert first != second and len(fake_build.built) == 2
    assert "jq" in fake_build.built[1].packages
    # Both stay usable: going back to the first inputs builds nothing.
    assert build_tools_tree(load(verb="build")) == first and len(fake_build.built) == 2


def test_a_tree_without_its_key_or_with_another_key_is_rebuilt(project: Path, fake_build: FakeBuild) -> None:
    tree = build_tools_tree(load(verb="build"))
    key_path(tree).unlink()   # an interrupted rename, or a tree copied by hand
    assert build_tools_tree(load(verb="build")) == tree and len(fake_build.built) == 2
    key_path(tree).write_text("something-else\n")
    assert build_tools_tree(load(verb="build")) == tree and len(fake_build.built) == 3
    assert (tree / "usr/bin/systemd-repart").exists()


def test_a_failed_build_leaves_no_tree_and_no_key(project: Path, fake_build: FakeBuild) -> None:
    fake_build.fail = True
    config = load(verb="build")
    with pytest.raises(MkosiError, match="package manager failed"):
        build_tools_tree(config)
    tree = resolve(config).path
    assert tree is not None
    assert not tree.exists() and not key_path(tree).exists()
    assert not (project / "cache" / ".mkosi-tools-build").exists()
    assert not resolve(config).cached


def test_building_needs_root_but_reusing_does_not(project: Path, fake_build: FakeBuild,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    with pytest.raises(MkosiError, match="not built yet and building it needs root"):
        build_tools_tree(load(verb="build"))
    monkeypatch.setattr(os, "getuid", lambda: 0)
    tree = build_tools_tree(load(verb="build"))
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    assert build_tools_tree(load(verb="build")) == tree


def test_the_tree_goes_below_the_cache_directory_first(project: Path, fake_build: FakeBuild) -> None:
    tree = build_tools_tree(load(f"--cache-directory={project / 'other'}", verb="build"))
    assert tree.parent == project / "other"


# ---- the verbs ----

def test_the_built_tree_is_the_tools_tree_of_every_image(project: Path, fake_build: FakeBuild) -> None:
    config = load(verb="build")
    [replaced] = with_tools_tree([config])
    assert replaced.tools_tree == str(resolve(config).path)
    assert Sandbox.for_config(replaced).tools == resolve(config).path
    none = load("--tools-tree=no", verb="build")
    assert with_tools_tree([none]) == [none] and len(fake_build.built) == 1
    # Sub-images and the main image share the one tree (ToolsTree= is universal); `yes` means default.
    sub = load("--tools-tree=yes", verb="build")
    assert sub.tools_tree == "default"
    assert [c.tools_tree for c in with_tools_tree([sub, config])] == [replaced.tools_tree] * 2
    assert len(fake_build.built) == 1


def test_a_build_runs_its_commands_with_the_default_tools_tree(project: Path, fake_build: FakeBuild,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def verb(args: Args, config: Config) -> None:
        seen.append((current_sandbox().tools, find_tool("systemd-repart")))

    monkeypatch.setitem(mkosi.verbs.VERBS, Verb.build, verb)
    args, config = load_both(verb="build")
    assert mkosi.verbs.run_verbs(args, [config]) == 0
    tree = resolve(config).path
    assert seen == [(tree, "/usr/bin/systemd-repart")]
    assert len(fake_build.built) == 1


def test_summary_and_dependencies_do_not_build_the_tree(project: Path, fake_build: FakeBuild,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("summary", "dependencies", "cat-config"):
        args, config = load_both(verb=verb)
        mkosi.verbs.run_verbs(args, [config])
    assert not fake_build.built


def test_summary_says_which_tools_tree_and_why(project: Path, fake_build: FakeBuild) -> None:
    args, config = load_both()
    tree = resolve(config)
    assert tree.path is not None and tree.key is not None
    text = summary_text(args, [config])
    assert f"default (debian trixie), not built yet: will be built at {tree.path}, key {tree.key}" in text
    assert "ToolsTree=default" in text and "not implemented yet" not in text.split("ToolsTree=default")[1][:40]
    build_tools_tree(load(verb="build"))
    assert f"default (debian trixie), cached at {tree.path}, key {tree.key}" in summary_text(args, [config])
    [image] = json.loads(summary_json(args, [config]))["Images"]
    assert f"cached at {tree.path}" in image["ToolsTreeUsed"] and image["ToolsTreePath"] == str(tree.path)
    assert "none: the host's programs are used" in summary_text(*_one(load_both("--tools-tree=no")))
    given = project / "given"
    (given / "usr").mkdir(parents=True)
    assert f"{given} (ToolsTree= as given)" in summary_text(*_one(load_both(f"--tools-tree={given}")))


def _one(both: tuple[Args, Config]) -> tuple[Args, list[Config]]:
    return both[0], [both[1]]


def test_a_mkosi_tools_directory_is_the_tools_tree(project: Path) -> None:
    (project / "mkosi.tools/usr/bin").mkdir(parents=True)
    write(project / "mkosi.conf", (project / "mkosi.conf").read_text().replace("ToolsTree=default\n", ""))
    args, config = load_both(verb="build")
    assert config.tools_tree == str(project / "mkosi.tools")
    assert Sandbox.for_config(config).tools == project / "mkosi.tools"
    assert "(the mkosi.tools/ directory of the configuration)" in summary_text(args, [config])
    # An explicit setting wins over the directory.
    assert load("--tools-tree=no").tools_tree is None


def test_clean_f_removes_the_tree(project: Path, fake_build: FakeBuild) -> None:
    tree = build_tools_tree(load(verb="build"))
    args, config = load_both(verb="clean")
    mkosi.verbs.verb_clean(args, config)
    assert tree.exists()
    args, config = load_both("-f", verb="clean")
    mkosi.verbs.verb_clean(args, config)
    assert not tree.exists() and not key_path(tree).exists()


def test_the_tools_tree_settings_are_implemented(project: Path) -> None:
    config = load("--tools-tree-package=jq", "--tools-tree-profile=devel", "--tools-tree-release=sid",
                  "--tools-tree-mirror=http://m.example/debian", "--tools-tree-repository=contrib",
                  "--tools-tree-distribution=debian")
    notes = mkosi.summary.not_implemented(config)
    for key in ("ToolsTree", "ToolsTreePackages", "ToolsTreeProfiles", "ToolsTreeRelease", "ToolsTreeMirror",
                "ToolsTreeRepositories", "ToolsTreeDistribution"):
        assert key not in notes


def test_a_missing_tool_of_a_tools_tree_names_its_package(tmp_path: Path) -> None:
    error = missing_tool("mkfs.erofs", Sandbox(tools=tmp_path))
    assert "was not found in the tools tree" in str(error) and "(Debian package: erofs-utils)" in str(error)
    assert error.hint is not None and "ToolsTreePackages=erofs-utils" in error.hint
    host = missing_tool("systemd-repart", Sandbox())
    assert host.hint == "install it with: apt-get install systemd-repart"
    assert missing_tool("ukify", Sandbox()).hint == "install it with: apt-get install systemd-ukify"
    assert missing_tool("systemd-dissect", Sandbox()).hint == "install it with: apt-get install systemd-container"


def test_a_distribution_without_tools_packages_is_an_error(project: Path) -> None:
    with pytest.raises(MkosiError, match="no tools tree packages for gentoo"):
        tools_of("--tools-tree-distribution=gentoo")
    assert tools_of("--tools-tree-distribution=gentoo", "--tools-tree-package=sys-apps/systemd").packages == \
        ["sys-apps/systemd"]


def test_the_builtin_profiles_cover_every_profile() -> None:
    from_dir = {p.name for p in (mkosi.tools_tree.TOOLS_CONFIG_DIR / "mkosi.profiles").iterdir()}
    assert from_dir == {"devel", "misc", "package-manager", "runtime"}
    assert os.access(mkosi.tools_tree.TOOLS_CONFIG_DIR / "mkosi.conf", os.R_OK)


def test_the_certificates_of_the_tools_tree_replace_the_host_s(project: Path) -> None:
    tools = project / "tools"
    (tools / "usr/bin").mkdir(parents=True)
    (tools / "etc/ssl/certs").mkdir(parents=True)
    (tools / "etc/pki/ca-trust").mkdir(parents=True)
    sb = Sandbox.for_config(load(f"--tools-tree={tools}"))
    argv = sb.argv(["true"])
    binds = [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--ro-bind"]
    if Path("/etc/ssl").is_dir():
        assert (str(tools / "etc/ssl"), "/etc/ssl") in binds
    # Where the host has no such directory nothing is bound (bwrap would have to create it on the host).
    assert ((str(tools / "etc/pki/ca-trust"), "/etc/pki/ca-trust") in binds) == Path("/etc/pki/ca-trust").is_dir()
    off = Sandbox.for_config(load(f"--tools-tree={tools}", "--tools-tree-certificates=no")).argv(["true"])
    assert not any("etc/ssl" in a or "ca-trust" in a for a in off)


def test_a_setting_at_its_default_is_not_part_of_the_key(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting added to mkosi (left at its default) does not make every cached tree stale."""
    tools = tools_of()
    key = tools_tree_key(tools)
    inputs = settings_inputs(tools, only_cache=False)
    assert inputs["with_docs"] is False
    # As if mkosi had no WithDocs= setting yet: the same key.
    monkeypatch.setattr(mkosi.tools_tree, "settings_inputs",
                        lambda config, only_cache: {k: v for k, v in inputs.items() if k != "with_docs"})
    assert tools_tree_key(tools) == key
    monkeypatch.setattr(mkosi.tools_tree, "settings_inputs",
                        lambda config, only_cache: {**inputs, "with_docs": True})
    assert tools_tree_key(tools) != key


def test_the_least_recently_used_trees_beyond_three_are_removed(project: Path, fake_build: FakeBuild) -> None:
    trees = []
    for n, package in enumerate(("a", "b", "c")):
        trees.append(build_tools_tree(load(f"--tools-tree-package={package}", verb="build")))
        release()
        os.utime(key_path(trees[-1]), (time.time() - 100 + n, time.time() - 100 + n))
    # Using the first again makes the second the least recently used.
    assert build_tools_tree(load("--tools-tree-package=a", verb="build")) == trees[0]
    release()
    fourth = build_tools_tree(load("--tools-tree-package=d", verb="build"))
    assert not trees[1].exists() and not key_path(trees[1]).exists()
    assert all(t.exists() for t in (trees[0], trees[2], fourth))
    # A tree a running mkosi holds (a shared lock on its key file) is never removed.
    release()
    holder = os.open(key_path(trees[2]), os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        os.utime(key_path(trees[2]), (1, 1))
        build_tools_tree(load("--tools-tree-package=e", verb="build"))
        assert trees[2].exists()
    finally:
        os.close(holder)
    assert len(list((project / "cache").glob("mkosi-tools-*.key"))) == 4


def test_sub_images_use_the_main_image_s_tools_tree(project: Path, fake_build: FakeBuild) -> None:
    # The ToolsTree*= settings are the main image's only (not passed down to sub-images), yet the tools
    # tree is the build's: every image shows, and is built with, the one the main image configures.
    write(project / "mkosi.conf.d/tools.conf", """
        [Build]
        ToolsTreeDistribution=debian
        ToolsTreeRelease=forky
        ToolsTreeMirror=http://mirror.example/debian
        ToolsTreeRepositories=contrib
        ToolsTreePackages=jq
        ToolsTreeProfiles=misc,package-manager
        """)
    write(project / "mkosi.tools.conf", "[Content]\nPackages=from-the-tools-conf\n")
    write(project / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\n")
    write(project / "mkosi.images/rootfs/mkosi.conf", "[Output]\nFormat=directory\n")
    args, configs = load_args(["summary"])
    assert [c.image for c in configs] == ["initrd", "rootfs", "main"]
    main = configs[-1]
    tree = resolve(main)
    assert (tree.distribution, tree.release) == ("debian", "forky") and tree.key is not None
    tools = tools_tree_config(main)[1]
    assert tools.mirror == "http://mirror.example/debian" and tools.repositories == ["contrib"]
    assert {"jq", "from-the-tools-conf"} <= set(tools.packages)
    used = f"default (debian forky), not built yet: will be built at {tree.path}, key {tree.key}"
    for config, image_main in zip(configs, main_images(configs)):
        assert image_main is main
        assert summary_dict(args, config, image_main)["ToolsTreeUsed"] == used
    images = json.loads(summary_json(args, configs))["Images"]
    assert [(i["ToolsTreeUsed"], i["ToolsTreePath"]) for i in images] == [(used, str(tree.path))] * 3
    assert summary_text(args, configs).count(f"Tools tree used  {used}") == 3
    # A build gives every image that one tree, built once.
    _, build = load_args(["build"])
    assert [c.tools_tree for c in with_tools_tree(build)] == [str(tree.path)] * 3
    assert len(fake_build.built) == 1 and fake_build.built[0].release == "forky"


def test_main_images_of_several_builds() -> None:
    # --all: one group per file, each group's sub-images first and its main image last.
    configs = [Config(image="a"), Config(image="main"), Config(image="main"), Config(image="b"), Config(image="main")]
    mains = main_images(configs)
    assert [next(i for i, c in enumerate(configs) if c is m) for m in mains] == [1, 1, 2, 4, 4]
