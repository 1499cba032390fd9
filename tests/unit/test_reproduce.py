"""Reproducibility: SourceDateEpoch=/Seed=, the clean-up of build records, and the comparison the
--check-reproducible flag reports."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

import pytest

from mkosi import build, reproduce
from mkosi.config import load_args
from mkosi.config.enums import CacheOnly, Distribution, WithNetwork
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import ConfigError
from mkosi.output import filesystems as fs
from mkosi.output.gpt import make_uuid, seed_from_setting
from mkosi.scripts import script_environment
from tests.markers import needs_tools

SEED = "0d3a6f3c-2b1e-4c8f-9a55-6c1f3e4b2a10"


def load(*argv: str) -> Config:
    return load_args([*argv, "summary"])[1][0]


# ---------------------------------------------------------------- settings

def test_seed_setting_file_and_errors(wd: Path, fixed_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert load().seed is None
    assert load(f"--seed={SEED.upper()}").seed == SEED
    assert load("--seed=random").seed == "random"
    (wd / "mkosi.seed").write_text(SEED + "\n")
    assert load().seed == SEED
    assert load("--seed=random").seed == "random", "the setting wins over the file"
    (wd / "mkosi.seed").write_text("not-a-uuid\n")
    with pytest.raises(ConfigError) as e:
        load()
    assert "mkosi.seed" in str(e.value) and "not-a-uuid" in str(e.value)
    (wd / "mkosi.seed").unlink()
    with pytest.raises(ConfigError) as e:
        load("--seed=xyz")
    assert "Seed" in str(e.value) or "--seed" in str(e.value)


def test_source_date_epoch_sources(wd: Path, fixed_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert load().source_date_epoch is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    assert load().source_date_epoch == 1600000000
    assert load("--environment=SOURCE_DATE_EPOCH=1650000000").source_date_epoch == 1650000000
    (wd / "mkosi.default").write_text("[Content]\nSourceDateEpoch=1700000000\n"
                                      "Environment=SOURCE_DATE_EPOCH=1650000000\n")
    assert load().source_date_epoch == 1700000000
    (wd / "mkosi.default").write_text("[Content]\nSourceDateEpoch=yesterday\n")
    with pytest.raises(ConfigError) as e:
        load()
    assert "mkosi.default:2" in str(e.value) and "SourceDateEpoch" in str(e.value)
    (wd / "mkosi.default").unlink()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(ConfigError) as e:
        load()
    assert "$SOURCE_DATE_EPOCH" in str(e.value)


def test_epoch_exported_for_the_build_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    config = dataclasses.replace(Config(), source_date_epoch=1700000000)
    with build.source_date_epoch_environment(config):
        assert os.environ["SOURCE_DATE_EPOCH"] == "1700000000"
    assert os.environ["SOURCE_DATE_EPOCH"] == "5"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    with build.source_date_epoch_environment(config):
        assert os.environ["SOURCE_DATE_EPOCH"] == "1700000000"
    assert "SOURCE_DATE_EPOCH" not in os.environ


def test_scripts_see_the_epoch(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), source_date_epoch=1700000000)
    ctx = Context(Args(), config, tmp_path, Phase.final, tmp_path, None, tmp_path)
    assert script_environment(ctx)["SOURCE_DATE_EPOCH"] == "1700000000"


def test_seed_derives_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a, b = seed_from_setting(SEED), seed_from_setting(SEED)
    assert make_uuid(a, "disk") == make_uuid(b, "disk")
    other = seed_from_setting("11111111-2222-4333-8444-555555555555")
    assert make_uuid(a, "disk") != make_uuid(other, "disk")
    assert make_uuid(seed_from_setting("random"), "disk") != make_uuid(seed_from_setting("random"), "disk")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert make_uuid(seed_from_setting(None), "disk") == make_uuid(seed_from_setting(None), "disk"), \
        "without a seed, UUIDs are derived from the epoch"
    r1, r2 = seed_from_setting("random"), seed_from_setting("random")
    assert make_uuid(r1, "disk") != make_uuid(r2, "disk"), "Seed=random is random even with an epoch"


# ---------------------------------------------------------------- clean-up of build records

def ctx_for(root: Path, **settings: object) -> Context:
    config = dataclasses.replace(Config(), **settings)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    return Context(Args(), config, root.parent, Phase.final, root, None, root.parent / "staging")


def populate(root: Path) -> None:
    for rel in ("var/log/dpkg.log", "var/log/apt/history.log", "var/log/journal/abc/system.journal",
                "var/log/installer/syslog.log", "var/cache/ldconfig/aux-cache", "var/lib/systemd/random-seed",
                "usr/lib/python3/dist-packages/foo/__pycache__/bar.cpython-311.pyc",
                "usr/lib/python3.11/__pycache__/os.cpython-311.pyc", "usr/lib/python3.11/os.py",
                "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/sshd_config",
                "var/log/wtmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/ssh.service").write_text("")
    (root / "etc/shadow").write_text("root:*:20000:0:99999:7:::\nsys:*:19000:0:99999:7:::\n")
    (root / "etc/shadow").chmod(0o640)


def test_cleanup_without_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = ctx_for(tmp_path / "root")
    populate(ctx.root)
    build.reproducibility_cleanup(ctx)
    r = ctx.root
    for gone in ("var/log/dpkg.log", "var/log/apt/history.log", "var/log/journal/abc",
                 "var/cache/ldconfig/aux-cache", "var/lib/systemd/random-seed",
                 "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub"):
        assert not (r / gone).exists(), gone
    # Logs the image's own scripts write stay; only the package managers' are build records.
    for kept in ("var/log/wtmp", "var/log/installer/syslog.log", "etc/ssh/sshd_config", "usr/lib/python3.11/os.py",
                 "usr/lib/python3.11/__pycache__/os.cpython-311.pyc"):
        assert (r / kept).exists(), kept
    dropin = r / "etc/systemd/system/ssh.service.d/mkosi-hostkeys.conf"
    assert "ssh-keygen -A" in dropin.read_text(), "host keys are made at first boot"
    assert "20000" in (r / "etc/shadow").read_text()


def test_cleanup_with_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = ctx_for(tmp_path / "root", source_date_epoch=1700000000)  # day 19675
    populate(ctx.root)
    os.utime(ctx.root / "usr/lib/python3.11/os.py", (2_000_000_000, 2_000_000_000))
    build.reproducibility_cleanup(ctx)
    r = ctx.root
    assert not (r / "usr/lib/python3/dist-packages/foo/__pycache__").exists()
    assert not (r / "usr/lib/python3.11/__pycache__").exists()
    assert (r / "usr/lib/python3.11/os.py").stat().st_mtime == 1700000000
    assert (r / "etc/shadow").read_text() == "root:*:19675:0:99999:7:::\nsys:*:19000:0:99999:7:::\n"
    assert (r / "etc/shadow").stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- comparing two builds

def make_tree(root: Path, date: str = "Mon") -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("box\n")
    (root / "etc/build-date").write_text(date + "\n")
    (root / "etc/link").symlink_to("hostname")
    for p in (root / "etc/hostname", root / "etc/build-date", root / "etc/link", root / "etc", root):
        os.utime(p, (1700000000, 1700000000), follow_symlinks=False)
    return root


def test_identical_trees(tmp_path: Path) -> None:
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b")
    ea, eb = reproduce.tree_entries(a), reproduce.tree_entries(b)
    assert reproduce.diff_trees(ea, eb) == []
    assert reproduce.tree_digest(ea) == reproduce.tree_digest(eb)


def test_differing_trees_name_the_file_and_why(tmp_path: Path) -> None:
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", date="Tuesday")
    (b / "etc/hostname").chmod(0o600)
    os.utime(b / "etc/hostname", (1700000001, 1700000001))
    (b / "etc/new").write_text("")
    (b / "etc/link").unlink()
    (b / "etc/link").symlink_to("build-date")
    for p in (b / "etc/link", b / "etc"):
        os.utime(p, (1700000000, 1700000000), follow_symlinks=False)
    diffs = dict(reproduce.diff_trees(reproduce.tree_entries(a), reproduce.tree_entries(b)))
    assert diffs["/etc/build-date"] == "content (size 4 vs 8)"
    assert diffs["/etc/hostname"] == "mode 0644 vs 0600, mtime 1700000000 vs 1700000001"
    assert diffs["/etc/new"] == "only in the second build"
    assert diffs["/etc/link"] == "symlink target hostname vs build-date"
    assert set(diffs) == {"/etc/build-date", "/etc/hostname", "/etc/new", "/etc/link"}
    assert reproduce.tree_digest(reproduce.tree_entries(a)) != reproduce.tree_digest(reproduce.tree_entries(b))


def test_compare_artifacts(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    same = [tmp_path / n / "image.raw" for n in ("1", "2")]
    for p in same:
        p.write_bytes(b"\0" * 5000)
    diff = [tmp_path / n / "image.manifest" for n in ("1", "2")]
    diff[0].write_bytes(b"a" * 3000 + b"b")
    diff[1].write_bytes(b"a" * 3000 + b"c")
    sig = [tmp_path / n / "SHA256SUMS.gpg" for n in ("1", "2")]
    sig[0].write_bytes(b"1")
    sig[1].write_bytes(b"2")
    result = reproduce.compare_artifacts([same[0], diff[0], sig[0]], [same[1], diff[1], sig[1]])
    assert result.identical == [("image.raw", reproduce.file_sha256(same[0]))]
    assert result.differing == ["image.manifest"]
    assert "offset 3000" in result.details[0]
    assert reproduce.first_difference(same[0], same[1]) is None


def test_listing_is_limited() -> None:
    lines = reproduce.listing([(f"/f{i}", "content") for i in range(30)], limit=5)
    assert lines[:1] == ["  /f0: content"] and lines[-1] == "  ... and 25 more"


def test_fixed_inputs_pin_epoch_and_seed() -> None:
    args, config = dataclasses.replace(Args(), incremental=True), dataclasses.replace(Config(), seed="random")
    fixed_args, fixed = reproduce.fixed_inputs(args, config)
    assert fixed.source_date_epoch is not None and not fixed_args.incremental
    assert fixed.seed is not None and uuid.UUID(fixed.seed)
    _, kept = reproduce.fixed_inputs(Args(), dataclasses.replace(Config(), seed=SEED, source_date_epoch=7))
    assert (kept.seed, kept.source_date_epoch) == (SEED, 7)


def test_the_second_build_uses_the_metadata_of_the_first(tmp_path: Path) -> None:
    cached = dataclasses.replace(Config(), cache_path=tmp_path, distribution=Distribution.debian, release="bookworm",
                                 architecture="x86_64")
    assert reproduce.second_build_config(cached).cache_only == CacheOnly.metadata
    offline = dataclasses.replace(cached, cache_only=CacheOnly.always)
    assert reproduce.second_build_config(offline) is offline
    uncached = Config()   # no package cache: the metadata is not kept, so it is synced again
    assert reproduce.second_build_config(uncached) is uncached


@pytest.mark.parametrize(("cache_only", "with_network", "network", "refresh"), [
    (CacheOnly.auto, WithNetwork.yes, True, True), (CacheOnly.never, WithNetwork.yes, True, True),
    (CacheOnly.metadata, WithNetwork.yes, True, False), (CacheOnly.always, WithNetwork.yes, False, False),
    (CacheOnly.auto, WithNetwork.never, False, False)])
def test_cache_only_and_the_package_managers_network(tmp_path: Path, cache_only: CacheOnly,
                                                     with_network: WithNetwork, network: bool, refresh: bool) -> None:
    config = dataclasses.replace(Config(), cache_only=cache_only, with_network=with_network)
    ctx = Context(Args(), config, tmp_path, Phase.final, tmp_path / "root", None, tmp_path / "staging")
    assert (ctx.network, ctx.refresh_metadata) == (network, refresh)


def test_check_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    with pytest.raises(Exception, match="root"):
        reproduce.check_reproducible(Args(), Config())


def test_ext4_clamp_commands_quote_odd_names(tmp_path: Path) -> None:
    """systemd unit names contain backslashes (system-systemd\\x2dcryptsetup.slice): skipping them left
    their build-time ctime in ext4 images."""
    (tmp_path / "a\\x2db").write_text("")
    (tmp_path / 'q"uote').write_text("")
    (tmp_path / "new\nline").write_text("")
    script, skipped = fs.ext4_clamp_commands(tmp_path, 1000)
    lines = script.splitlines()
    assert skipped == 1
    assert 'sif "/a\\x2db" ctime @1000' in lines
    assert 'sif "/q""uote" ctime @1000' in lines


@needs_tools("mkfs.ext4", "debugfs")
def test_ext4_images_of_trees_made_at_different_times_are_equal(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    images = []
    for n in (1, 2):
        tree = tmp_path / f"tree{n}"
        (tree / "usr/lib/systemd/system").mkdir(parents=True)
        (tree / "usr/lib/systemd/system/system-systemd\\x2dcryptsetup.slice").write_text("[Unit]\n")
        (tree / "etc").mkdir()
        (tree / "etc/hostname").write_text("box\n")
        image = tmp_path / f"{n}.img"
        fs.make_ext4(tree, image, 16 * 1024 * 1024, "root", seed=SEED)
        images.append(image.read_bytes())
        time.sleep(1.1)  # the second tree's ctimes are a second later
    assert images[0] == images[1]


@needs_tools("mkfs.vfat", "mcopy")
def test_vfat_images_of_trees_made_at_different_times_are_equal(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The ESP's directories are made during the build: their times are clamped before mcopy keeps them."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    images = []
    for n in (1, 2):
        tree = tmp_path / f"esp{n}"
        (tree / "EFI/Linux").mkdir(parents=True)
        (tree / "EFI/Linux/image.efi").write_bytes(b"MZ" + bytes(4000))
        (tree / "loader").mkdir()
        (tree / "loader/loader.conf").write_text("timeout 0\n")
        os.utime(tree / "loader/loader.conf", (1600000000, 1600000000))
        image = tmp_path / f"{n}.img"
        fs.make_vfat(image, 64 * 1024 * 1024, "ESP", seed=SEED)
        fs.populate_vfat(image, tree)
        images.append(image.read_bytes())
        time.sleep(2.1)  # FAT times have a resolution of two seconds
    assert images[0] == images[1]
    assert os.stat(tmp_path / "esp1/loader/loader.conf").st_mtime == 1600000000, "older times are kept"
    assert os.stat(tmp_path / "esp1/EFI/Linux").st_mtime == 1700000000
