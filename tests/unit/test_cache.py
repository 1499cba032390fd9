"""Cache keys: made of setting values, secrets only through a salted HMAC, key files private."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from pathlib import Path

from mkosi.cache import build_key, overlay_suffices, settings_inputs, write_private
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.formats import parse_format
from mkosi.output.artifacts import salt_path


def config_in(tmp_path: Path, **settings: object) -> Config:
    return dataclasses.replace(Config(), output=tmp_path / "image.raw", **settings)  # type: ignore[arg-type]


def test_secret_enters_the_key_only_salted(tmp_path: Path) -> None:
    config = config_in(tmp_path, password="hunter2")
    inputs = settings_inputs(config, only_cache=False)
    text = json.dumps(inputs)
    assert "hunter2" not in text
    assert hashlib.sha256(b"hunter2").hexdigest() not in text
    salt = salt_path(config)
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600
    # The same salt gives the same key; another password another key.
    assert build_key(Args(), config) == build_key(Args(), config)
    assert build_key(Args(), config) != build_key(Args(), config_in(tmp_path, password="hunter3"))


def test_a_new_salt_changes_the_key(tmp_path: Path) -> None:
    config = config_in(tmp_path, password="hunter2")
    first = build_key(Args(), config)
    salt_path(config).unlink()
    assert build_key(Args(), config) != first


def test_unset_secrets_need_no_salt(tmp_path: Path) -> None:
    # Secrets left at their defaults (no password, no credentials) enter the key as they are: the key
    # does not change with the salt, and no salt file is written for them.
    config = config_in(tmp_path)
    inputs = settings_inputs(config, only_cache=False)
    assert inputs["credentials"] == [] and inputs["password"] is None
    assert not salt_path(config).exists()
    first = build_key(Args(), config)
    salt_path(config).parent.mkdir(parents=True, exist_ok=True)
    salt_path(config).write_text("00" * 32 + "\n")
    assert build_key(Args(), config) == first


def test_key_depends_on_setting_values_and_arguments(tmp_path: Path) -> None:
    base = config_in(tmp_path)
    assert build_key(Args(), base) != build_key(Args(), dataclasses.replace(base, hostname="other"))
    assert build_key(Args(), base) != build_key(Args(cmdline=["--x"]), base)


def test_write_private_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_private(path, "abc\n")
    assert path.read_text() == "abc\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_private(path, "def\n")
    assert path.read_text() == "def\n"


def test_an_overlay_on_the_cached_image_when_the_tree_is_only_read(tmp_path: Path) -> None:
    def ctx(fmt: str, phase: Phase) -> Context:
        config = dataclasses.replace(Config(), format=parse_format(fmt))
        return Context(Args(), config, tmp_path, phase, tmp_path / "root", None, tmp_path / "staging")

    assert overlay_suffices(ctx("directory", Phase.build))            # thrown away after the build script
    for fmt in ("tar", "cpio", "gpt_ext4", "plain_squashfs", "oci"):
        assert overlay_suffices(ctx(fmt, Phase.final)), fmt
    for fmt in ("directory", "subvolume"):                            # the output is the tree itself
        assert not overlay_suffices(ctx(fmt, Phase.final)), fmt
