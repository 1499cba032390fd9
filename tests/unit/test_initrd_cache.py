"""The initrd is rebuilt only when something that shapes it changed, and kept between builds with -i."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from mkosi.boot import bootable
from mkosi.boot.initrd import dracut_flags, initrd_key
from mkosi.config.enums import Distribution, Encrypt, Verity
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.output.artifacts import cached_initrd_path, incremental_cache_paths

VERSION = "6.1.0-10-amd64"
STATUS = """\
Package: linux-image-6.1.0-10-amd64
Status: install ok installed
Architecture: amd64
Version: {kernel}

Package: dracut-core
Status: install ok installed
Architecture: amd64
Version: 059-4
"""


def make_root(root: Path, kernel_package: str = "6.1.38-1") -> Path:
    (root / "boot").mkdir(parents=True)
    (root / f"boot/vmlinuz-{VERSION}").write_bytes(b"MZ kernel")
    modules = root / f"usr/lib/modules/{VERSION}/kernel"
    modules.mkdir(parents=True)
    (modules / "ext4.ko").write_bytes(b"module")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS.format(kernel=kernel_package))
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/dracut").write_text("")
    return root


def key(root: Path, config: Config, packages: tuple[str, ...] = ("dracut-core=059-4",)) -> str:
    return initrd_key(config, root, root / f"boot/vmlinuz-{VERSION}", VERSION, packages)


def test_key_follows_what_shapes_the_initrd(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    base = Config()
    first = key(root, base)
    assert key(root, base) == first
    # The command line goes into the UKI, not the initrd.
    assert key(root, dataclasses.replace(base, kernel_command_line=["quiet"], image_version="2")) == first
    for changed in (dataclasses.replace(base, hostonly_initrd=True), dataclasses.replace(base, verity=Verity.yes),
                    dataclasses.replace(base, encrypt=Encrypt.all), dataclasses.replace(base, usr_only=True)):
        assert key(root, changed) != first
    assert key(root, base, ("dracut-core=059-5",)) != first
    (root / f"boot/vmlinuz-{VERSION}").write_bytes(b"MZ another kernel")
    second = key(root, base)
    assert second != first
    (root / f"usr/lib/modules/{VERSION}/extra.ko").write_bytes(b"dkms")
    third = key(root, base)
    assert third != second
    (root / "etc/dracut.conf.d").mkdir(parents=True)
    (root / "etc/dracut.conf.d/x.conf").write_text('add_dracutmodules+=" lvm "\n')
    assert key(root, base) != third


def test_cache_initrd_ignores_configuration_files(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root")
    config = dataclasses.replace(Config(), cache_initrd=True)
    before = key(root, config)
    (root / "etc/dracut.conf.d").mkdir(parents=True)
    (root / "etc/dracut.conf.d/x.conf").write_text("hostonly=yes\n")
    assert key(root, config) == before
    assert key(root, dataclasses.replace(config, cache_initrd=False)) != before


def context(tmp_path: Path, root: Path, incremental: bool = True) -> Context:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    config = dataclasses.replace(Config(), output=out / "image.raw", distribution=Distribution.debian)
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return Context(dataclasses.replace(Args(), incremental=incremental), config, ws, Phase.final, root, None, ws)


@pytest.fixture
def dracut_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    runs: list[str] = []

    def fake_dracut(root: Path, version: str, output: Path, flags: list[str], keep_unit: object) -> Path:
        runs.append(version)
        output.write_bytes(f"initrd {len(runs)}".encode())
        return output

    monkeypatch.setattr(bootable, "run_dracut", fake_dracut)
    return runs


def test_incremental_build_reuses_the_initrd(tmp_path: Path, dracut_runs: list[str]) -> None:
    root = make_root(tmp_path / "root")
    ctx = context(tmp_path, root)
    kernel = root / f"boot/vmlinuz-{VERSION}"
    first = bootable.image_initrd(ctx, kernel, VERSION)
    assert dracut_runs == [VERSION] and first.read_bytes() == b"initrd 1"
    cached = cached_initrd_path(ctx.config)
    assert cached.read_bytes() == b"initrd 1"
    assert stat.S_IMODE(Path(f"{cached}.key").stat().st_mode) == 0o600
    assert cached in incremental_cache_paths(ctx.config)

    assert bootable.image_initrd(context(tmp_path, root), kernel, VERSION).read_bytes() == b"initrd 1"
    assert dracut_runs == [VERSION]

    # A new kernel package: dracut runs again, and its initrd replaces the cached one.
    (root / "var/lib/dpkg/status").write_text(STATUS.format(kernel="6.1.38-2"))
    assert bootable.image_initrd(context(tmp_path, root), kernel, VERSION).read_bytes() == b"initrd 2"
    assert cached.read_bytes() == b"initrd 2"
    assert len(dracut_runs) == 2


def test_without_incremental_nothing_is_cached(tmp_path: Path, dracut_runs: list[str]) -> None:
    root = make_root(tmp_path / "root")
    ctx = context(tmp_path, root, incremental=False)
    bootable.image_initrd(ctx, root / f"boot/vmlinuz-{VERSION}", VERSION)
    bootable.image_initrd(ctx, root / f"boot/vmlinuz-{VERSION}", VERSION)
    assert len(dracut_runs) == 2
    assert not cached_initrd_path(ctx.config).exists()


def test_no_package_database_no_cache(tmp_path: Path, dracut_runs: list[str]) -> None:
    root = make_root(tmp_path / "root")
    (root / "var/lib/dpkg/status").unlink()
    for _ in range(2):
        bootable.image_initrd(context(tmp_path, root), root / f"boot/vmlinuz-{VERSION}", VERSION)
    assert len(dracut_runs) == 2


def test_dracut_is_reproducible_with_a_source_date_epoch() -> None:
    assert "--reproducible" not in dracut_flags(Config())
    assert "--reproducible" in dracut_flags(Config(source_date_epoch=1700000000))
