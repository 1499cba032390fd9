"""The artifact table: clean, summary, the overwrite check, checksums and the move into place read
the same rows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkosi.build import check_outputs, move_into_place, write_checksums
from mkosi.config import load_args
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import MkosiError
from mkosi.output import artifacts
from mkosi.summary import outputs
from tests.unit.conftest import run_main as run
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

# Everything on that a build without a package manager can be asked for.
FULL = """\
[Output]
ImageId=foo
ImageVersion=3
Bootable=yes
BootProtocols=uefi,linux
SplitArtifacts=yes
ManifestFormat=json,changelog
[Validation]
Checksum=yes
BMap=yes
[Host]
Ssh=yes
"""

FULL_NAMES = {
    "foo_3.raw", "SHA256SUMS", "foo_3.bmap", "foo_3.nspawn", "id_ed25519", "id_ed25519.pub", "foo_3.manifest",
    "foo_3.changelog", "foo_3.root.raw", "foo_3.efi", "foo_3.vmlinuz", "foo_3.initrd", "foo_3.cmdline",
}
CACHE_NAMES = {"foo_3.cache-build", "foo_3.cache-build.key", "foo_3.cache-final", "foo_3.cache-final.key",
               "foo_3.cache-build.lock", "foo_3.cache-final.lock",
               "foo_3.cache-initrd", "foo_3.cache-initrd.key", "foo_3.cache-output.key", "foo_3.cache-salt"}


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[0]


def full(wd: Path) -> Config:
    write(wd / "mkosi.default", FULL)
    write(wd / "mkosi.nspawn", "[Exec]\n")
    (wd / "mkosi.output").mkdir(exist_ok=True)
    return load()


def names(paths: list[Path]) -> set[str]:
    return {p.name for p in paths}


def test_the_table_names_every_file_of_a_full_build(wd: Path) -> None:
    config = full(wd)
    assert names(artifacts.paths(config)) == FULL_NAMES
    assert names(artifacts.incremental_cache_paths(config)) == CACHE_NAMES
    assert {p.parent for p in artifacts.paths(config)} == {wd / "mkosi.output"}


def test_clean_removes_exactly_the_clean_rows(wd: Path) -> None:
    config = full(wd)
    outdir = wd / "mkosi.output"
    for name in FULL_NAMES | CACHE_NAMES | {"unrelated.txt", "foo_3.roothash"}:
        (outdir / name).write_text("x")
    assert run("clean") == 0
    # Everything the table lets plain `clean` remove, nothing else: no caches, no roothash (no Verity=).
    assert names(list(outdir.iterdir())) == CACHE_NAMES | {"unrelated.txt", "foo_3.roothash"}
    assert names(artifacts.to_clean(config, 0)) == FULL_NAMES
    assert run("-f", "clean") == 0
    assert names(list(outdir.iterdir())) == {"unrelated.txt", "foo_3.roothash"}


def test_summary_lists_what_a_build_writes(wd: Path) -> None:
    config = full(wd)
    shown = outputs(config)
    assert shown.pop("output_dir") == str(wd / "mkosi.output")
    assert names([Path(p) for p in shown.values()]) == FULL_NAMES
    assert list(shown)[:3] == ["output", "output_checksum", "output_bmap"]


def test_summary_leaves_out_what_a_build_would_not_write(wd: Path) -> None:
    # SshAgent= generates no key; no UKI without UEFI; the block map is the raw disk's, also when compressed.
    config = load("--bmap", "--compress-output=zstd", "--ssh", "--ssh-agent=/run/agent", "--split-artifacts",
                  "--bootable", "--boot-protocols=bios")
    shown = names([Path(p) for p in outputs(config).values()])
    assert shown == {"image.raw.zst", "image.bmap", "image.manifest", "image.root.raw.zst", wd.name}
    # Not a disk: no block map.
    assert "output_bmap" not in outputs(load("--bmap", "--format=tar"))
    assert artifacts.written(config, artifacts.SPLIT_KERNEL) is None


def _staged_build(wd: Path, config: Config) -> Context:
    """A build's staging directory as the steps leave it: one file per declared artifact."""
    staging = wd / "ws/staging"
    staging.mkdir(parents=True)
    ctx = Context(Args(), config, wd / "ws", Phase.final, wd / "ws/root", None, staging)
    for a in artifacts.declared(config):
        if a not in artifacts.SUMS:
            artifacts.staged(ctx, a).write_text(f"{a.key}\n")
    return ctx


def test_checksums_leave_out_the_private_ssh_key(wd: Path) -> None:
    config = full(wd)
    ctx = _staged_build(wd, config)
    made = artifacts.collect(ctx)
    [(row, sums)] = write_checksums(ctx, made)
    assert row is artifacts.CHECKSUM and sums == ctx.staging / "SHA256SUMS"
    listed = {line.split("*", 1)[1] for line in sums.read_text().splitlines()}
    assert listed == FULL_NAMES - {"SHA256SUMS", "id_ed25519"}
    assert "id_ed25519.pub" in listed


def test_collect_refuses_a_missing_declared_artifact(wd: Path) -> None:
    config = full(wd)
    ctx = _staged_build(wd, config)
    (ctx.staging / "foo_3.changelog").unlink()
    with pytest.raises(MkosiError, match=r"did not write foo_3\.changelog"):
        artifacts.collect(ctx)
    # An undeclared file in staging is not an artifact.
    (ctx.staging / "foo_3.changelog").write_text("x")
    (ctx.staging / "stray").write_text("x")
    assert "stray" not in names([p for _, p in artifacts.collect(ctx)])


def test_the_move_into_place_and_the_overwrite_check_use_the_table(wd: Path) -> None:
    config = full(wd)
    ctx = _staged_build(wd, config)
    move_into_place(config, artifacts.collect(ctx))
    assert names(list((wd / "mkosi.output").iterdir())) == FULL_NAMES - {"SHA256SUMS"}
    assert os.listdir(ctx.staging) == []
    with pytest.raises(MkosiError, match="already exists"):
        check_outputs(Args(), config)
    check_outputs(Args(force=1), config)
