"""CacheDirectory=, CacheKey=, BuildKey=, UseSubvolumes=, BuildSourcesEphemeral= and History=."""

from __future__ import annotations

import dataclasses
import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

import mkosi.subvolumes
from mkosi.cache import load_cached_image, release_cache_locks, save_cached_image
from mkosi.config import load_args
from mkosi.config.enums import BuildSourcesEphemeral, ConfigLanguage, Distribution, Feature, Verb
from mkosi.config.keys import build_subdir, cache_key, cache_location, expand_key, sources_overlay_dir
from mkosi.config.parse import parse_command_line
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import ConfigError, MkosiError
from mkosi.formats import parse_format
from mkosi.history import HISTORY_FILE, read_history, replay, write_history
from mkosi.output.artifacts import cached_image_path, incremental_cache_paths, salt_path
from mkosi.sandbox import Mount, Sandbox, nspawn_command
from mkosi.scripts import source_mounts
from mkosi.summary import summary_dict
from mkosi.verbs import verb_clean
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

VALUES = {"distribution": Distribution.debian, "release": "sid", "architecture": "x86-64", "image_id": "os",
          "image_version": "1.2", "image": "main"}


def load(*argv: str, verb: str = "summary") -> Config:
    _, configs = load_args([*argv, verb])
    return configs[-1]


def modern(wd: Path, text: str = "") -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=debian\nRelease=sid\n" + text)


# ---- the keys ----

def test_specifiers_expand() -> None:
    assert expand_key("&d~&r~&a~&I", VALUES) == "debian~sid~x86-64~main"
    assert expand_key("&i_&v", VALUES) == "os_1.2"
    assert expand_key("a&&b/&d", VALUES) == "a&b/debian"


@pytest.mark.parametrize("template", ["&x", "abc&", "/abs", "a/../b", "&v", "a//b", "."])
def test_bad_keys_are_refused(template: str) -> None:
    with pytest.raises(ValueError):
        expand_key(template, {**VALUES, "image_version": None})


def test_a_bad_cache_key_names_the_setting(wd: Path) -> None:
    modern(wd, "[Build]\nCacheKey=&q\n")
    with pytest.raises(ConfigError, match=r"mkosi.conf:5.*CacheKey.*unknown specifier '&q'"):
        load()
    modern(wd)
    with pytest.raises(ConfigError, match=r"command line: --build-key: .*parts may not be"):
        load("--build-key=../x")


def test_keys_never_hold_secrets(wd: Path) -> None:
    modern(wd, "[Content]\nRootPassword=hunter2\n[Build]\nCacheKey=&d&r&a&i&v&I\n")
    (wd / "mkosi.cache").mkdir()
    config = load()
    assert "hunter2" not in cache_key(config)
    assert "hunter2" not in str(cache_location(config))


def test_implemented_settings_are_not_listed_as_missing(wd: Path) -> None:
    (wd / "mkosi.builddir").mkdir()
    modern(wd, "[Build]\nCacheDirectory=cache\nCacheKey=k\nBuildKey=b\nUseSubvolumes=no\nHistory=yes\n"
           "BuildSourcesEphemeral=buildcache\n")
    config = load()
    missing = summary_dict(Args(verb=Verb.summary), config)["NotImplemented"]
    for key in ("CacheDirectory", "CacheKey", "BuildKey", "UseSubvolumes", "History", "BuildSourcesEphemeral"):
        assert key not in missing


# ---- CacheDirectory= ----

def test_mkosi_cache_holds_the_cached_images(wd: Path) -> None:
    (wd / "mkosi.cache").mkdir()
    modern(wd)
    config = load()
    assert config.cache_dir == wd / "mkosi.cache"
    where = wd / "mkosi.cache" / f"debian~sid~{config.architecture}~main"
    assert cached_image_path(config, Phase.final) == where / "cache-final"
    assert cached_image_path(config, Phase.build) == where / "cache-build"
    assert salt_path(config) == where / "cache-salt"
    assert all(p.parent == where for p in incremental_cache_paths(config))
    # The package cache in the same directory has another name.
    assert config.cache_path is not None and (config.cache_path / "x").parent == wd / "mkosi.cache"


def test_without_a_cache_directory_the_caches_stay_beside_the_image(wd: Path) -> None:
    modern(wd)
    config = load()
    assert config.cache_dir is None
    assert config.output is not None
    assert cached_image_path(config, Phase.final) == config.output.parent / "image.cache-final"


def test_images_of_one_build_need_their_own_cache_key(wd: Path) -> None:
    modern(wd, "[Build]\nCacheDirectory=cache\nCacheKey=same\n")
    write(wd / "mkosi.images/sub.conf", "[Output]\nFormat=directory\n")
    with pytest.raises(ConfigError, match="same CacheKey= 'same'"):
        load()


def ctx_for(tmp_path: Path, **settings: Any) -> Context:
    config = dataclasses.replace(
        Config(), format=parse_format("directory"), output=tmp_path / "out/image", cache_dir=tmp_path / "cache",
        distribution=Distribution.debian, release="sid", architecture="x86-64", use_subvolumes=Feature.disabled,
        **settings)
    root = tmp_path / "ws/root"
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=debian\n")
    return Context(Args(), config, tmp_path / "ws", Phase.final, root, None, tmp_path / "ws/staging")


def test_saved_cache_is_reused_from_the_cache_directory(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    save_cached_image(ctx, "KEY")
    image = tmp_path / "cache/debian~sid~x86-64~main/cache-final"
    assert (image / "etc/os-release").read_text() == "ID=debian\n"
    keyfile = Path(f"{image}.key")
    assert keyfile.read_text() == "KEY\n" and stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    # No temporaries are left.
    assert sorted(p.name for p in image.parent.iterdir()) == ["cache-final", "cache-final.key", "cache-final.lock"]
    # A second build: a fresh root, filled from the cache.
    (ctx.root / "etc/os-release").unlink()
    assert load_cached_image(ctx, "KEY")
    assert (ctx.root / "etc/os-release").read_text() == "ID=debian\n"
    assert not load_cached_image(ctx, "OTHER")


def test_an_interrupted_save_leaves_no_usable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_for(tmp_path)
    save_cached_image(ctx, "OLD")

    def broken(config: Config, src: Path, dst: Path) -> None:
        dst.mkdir()
        (dst / "half").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr("mkosi.cache.copy_tree", broken)
    with pytest.raises(KeyboardInterrupt):
        save_cached_image(ctx, "NEW")
    where = tmp_path / "cache/debian~sid~x86-64~main"
    # The old key is gone before anything is replaced, and the half copy is removed.
    assert sorted(p.name for p in where.iterdir()) == ["cache-final", "cache-final.lock"]
    assert not load_cached_image(ctx, "OLD") and not load_cached_image(ctx, "NEW")


def test_saving_holds_a_lock_on_the_cached_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_for(tmp_path)
    where = tmp_path / "cache/debian~sid~x86-64~main"
    seen: list[bool] = []
    real = mkosi.subvolumes.copy_tree

    def probe(config: Config, src: Path, dst: Path) -> None:
        # Another process (a new open file description) cannot take the lock meanwhile.
        code = subprocess.run(["flock", "--nonblock", str(where / "cache-final.lock"), "true"]).returncode
        seen.append(code != 0)
        real(config, src, dst)

    monkeypatch.setattr("mkosi.cache.copy_tree", probe)
    save_cached_image(ctx, "KEY")
    assert seen == [True]
    # Released afterwards; a copied (not overlaid) image holds no lock either.
    assert subprocess.run(["flock", "--nonblock", str(where / "cache-final.lock"), "true"]).returncode == 0
    assert load_cached_image(ctx, "KEY")
    assert subprocess.run(["flock", "--nonblock", str(where / "cache-final.lock"), "true"]).returncode == 0


def test_an_overlaid_cached_image_stays_locked_until_the_build_ends(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ctx_for(tmp_path)
    save_cached_image(ctx, "KEY")
    lock = tmp_path / "cache/debian~sid~x86-64~main/cache-final.lock"
    tar = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, format=parse_format("tar")))
    mounted: list[list[str]] = []
    monkeypatch.setattr("mkosi.cache.run", lambda argv, **kw: mounted.append([str(a) for a in argv]))
    assert load_cached_image(tar, "KEY")
    assert mounted and mounted[0][:3] == ["mount", "-t", "overlay"]
    # Others may read it too, but not replace it.
    assert subprocess.run(["flock", "--shared", "--nonblock", str(lock), "true"]).returncode == 0
    assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode != 0
    release_cache_locks()
    assert subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode == 0


# ---- BuildKey= ----

def test_build_key_is_the_builddir_subdirectory(wd: Path) -> None:
    (wd / "mkosi.builddir").mkdir()
    modern(wd)
    config = load()
    assert build_subdir(config) == wd / "mkosi.builddir" / f"debian~sid~{config.architecture}"
    assert build_subdir(load("--build-key=-")) == wd / "mkosi.builddir"
    assert build_subdir(load("--build-key=&I")) == wd / "mkosi.builddir/main"


def test_classic_trees_use_the_build_directory_itself(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), build_dir=tmp_path / "b", language=ConfigLanguage.classic)
    assert build_subdir(config) == tmp_path / "b"
    assert build_subdir(dataclasses.replace(config, build_dir=None)) is None


# ---- UseSubvolumes= ----

def test_use_subvolumes_yes_fails_where_none_can_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mkosi.subvolumes, "filesystem_type", lambda p: "ext2/ext3")
    config = dataclasses.replace(Config(), use_subvolumes=Feature.enabled)
    with pytest.raises(MkosiError, match=r"UseSubvolumes=yes.*not btrfs"):
        mkosi.subvolumes.make_tree(config, tmp_path / "root")
    auto = dataclasses.replace(config, use_subvolumes=Feature.auto)
    mkosi.subvolumes.make_tree(auto, tmp_path / "root")
    assert (tmp_path / "root").is_dir()


def test_subvolumes_on_btrfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append([str(a) for a in argv])
        if argv[:3] == ["btrfs", "subvolume", "create"]:
            Path(argv[3]).mkdir()
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(mkosi.subvolumes, "filesystem_type", lambda p: "btrfs")
    monkeypatch.setattr(mkosi.subvolumes, "find_tool", lambda name: "/usr/bin/btrfs")
    monkeypatch.setattr(mkosi.subvolumes, "run", fake_run)
    monkeypatch.setattr(mkosi.subvolumes, "is_subvolume", lambda p: p.name == "root")
    config = dataclasses.replace(Config(), use_subvolumes=Feature.auto)
    mkosi.subvolumes.make_tree(config, tmp_path / "root")
    assert calls[-1] == ["btrfs", "subvolume", "create", str(tmp_path / "root")]
    mkosi.subvolumes.copy_tree(config, tmp_path / "root", tmp_path / "cache")
    assert calls[-1] == ["btrfs", "subvolume", "snapshot", str(tmp_path / "root"), str(tmp_path / "cache")]
    calls.clear()
    mkosi.subvolumes.copy_tree(dataclasses.replace(config, use_subvolumes=Feature.disabled),
                               tmp_path / "root", tmp_path / "copy")
    assert [c[:2] for c in calls] == [["cp", "--archive"]]


# ---- BuildSourcesEphemeral= ----

def sources_ctx(tmp_path: Path, mode: BuildSourcesEphemeral) -> Context:
    config = dataclasses.replace(Config(), build_sources_ephemeral=mode, build_dir=tmp_path / "b",
                                 language=ConfigLanguage.modern, distribution=Distribution.debian, release="sid",
                                 architecture="x86-64")
    return Context(Args(), config, tmp_path, Phase.build, tmp_path / "root", None, tmp_path / "staging")


def test_sources_are_bound_when_not_ephemeral(tmp_path: Path) -> None:
    mounts = source_mounts(sources_ctx(tmp_path, BuildSourcesEphemeral.no), [(tmp_path, "/root/src")], build=True)
    assert mounts == [Mount(tmp_path, "/root/src")]


def test_ephemeral_sources_are_a_discarded_overlay(tmp_path: Path) -> None:
    ctx = sources_ctx(tmp_path, BuildSourcesEphemeral.yes)
    mounts = source_mounts(ctx, [(tmp_path / "src", "/root/src")], build=True)
    assert mounts == [Mount(tmp_path / "src", "/root/src", overlay=True, upper=None)]
    argv = Sandbox().nspawn(tmp_path / "root", mounts=mounts).argv(["true"], "systemd-nspawn")
    assert f"--overlay={tmp_path / 'src'}::/root/src" in argv
    assert not any(a.startswith("--bind=") and a.endswith(":/root/src") for a in argv)


def test_buildcache_keeps_the_build_scripts_overlay(tmp_path: Path) -> None:
    ctx = sources_ctx(tmp_path, BuildSourcesEphemeral.buildcache)
    keep = sources_overlay_dir(ctx.config)
    assert keep == tmp_path / "b/debian~sid~x86-64.sources-overlay"
    mounts = source_mounts(ctx, [(tmp_path / "src", "/root/src")], build=True)
    assert mounts == [Mount(tmp_path / "src", "/root/src", overlay=True, upper=keep / "0")]
    assert (keep / "0").is_dir()
    # The prepare script's writes are still thrown away.
    assert source_mounts(ctx, [(tmp_path / "src", "/root/src")], build=False)[0].upper is None


def test_overlay_paths_escape_colons() -> None:
    argv = nspawn_command(Path("/r"), ["true"], overlays=[(Path("/a:b"), None, "/root/src")])
    assert "--overlay=/a\\:b::/root/src" in argv


def test_buildcache_needs_a_build_directory(wd: Path) -> None:
    modern(wd, "[Build]\nBuildSourcesEphemeral=buildcache\n")
    with pytest.raises(ConfigError, match=r"BuildSourcesEphemeral.*build directory"):
        load(verb="build")


# ---- History= ----

def test_history_is_written_without_secrets_and_replayed(wd: Path) -> None:
    cli = parse_command_line(["-O", "out", "--history=yes", "--root-password=hunter2", "-f", "build"])
    path = write_history(cli, wd)
    assert path == wd / ".mkosi-private/history/latest.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "hunter2" not in text and '"force"' not in text
    assert [a.setting.dest for a in read_history(wd)] == ["output_dir", "history"]
    json.loads(text)

    vm = replay(parse_command_line(["vm"]), wd)
    assert [a.setting.dest for a in vm.assignments] == ["output_dir", "history"]
    # The verb's own command line comes after (and wins); -f and builds read no history.
    assert replay(parse_command_line(["-O", "x", "shell"]), wd).assignments[-1].raw == "x"
    assert replay(parse_command_line(["-f", "vm"]), wd).assignments[0].setting.dest == "force"
    assert replay(parse_command_line(["build"]), wd).assignments == []
    assert len(replay(parse_command_line(["-R", "build"]), wd).assignments) == 3
    assert replay(parse_command_line(["summary"]), wd).assignments == []


def test_a_later_verb_finds_the_image_of_the_last_build(wd: Path) -> None:
    modern(wd, "[Output]\nFormat=directory\n")
    write_history(parse_command_line(["-O", "elsewhere", "--history=yes", "build"]), wd)
    _, configs = load_args(["ssh"])
    assert configs[-1].output_dir == wd / "elsewhere"
    assert configs[-1].history


def test_a_damaged_history_is_a_clear_error(wd: Path) -> None:
    modern(wd)
    (wd / HISTORY_FILE).parent.mkdir(parents=True)
    (wd / HISTORY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="history of the last build is unreadable"):
        load_args(["vm"])


def test_clean_removes_the_history(wd: Path) -> None:
    modern(wd)
    write_history(parse_command_line(["--history=yes", "build"]), wd)
    args, configs = load_args(["clean"])
    verb_clean(args, configs[-1])
    assert not (wd / HISTORY_FILE).exists()


def test_a_killed_builds_temporary_copy_is_removed_by_the_next_save(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    where = tmp_path / "cache/debian~sid~x86-64~main"
    (where / ".cache-final.tmp-99999-dead/etc").mkdir(parents=True)
    save_cached_image(ctx, "KEY")
    assert not [p for p in where.iterdir() if ".tmp" in p.name]
    assert load_cached_image(ctx, "KEY")
