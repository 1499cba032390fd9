"""Bootable=auto: its default in each language, what summary shows, and the build-time decision
(settle_bootable()) on fake image trees with and without a kernel and boot loader binaries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mkosi.boot.bootable import settle_bootable, unbootable_reason
from mkosi.build import packages_for
from mkosi.config import load_args
from mkosi.config.enums import Bootloader, Verb
from mkosi.config.settings import Args, Config, by_dest
from mkosi.context import Context, Phase
from mkosi.dependencies import host_tools
from mkosi.output import artifacts
from mkosi.summary import summary_json, summary_text
from tests.unit.conftest import write


def load(*argv: str) -> tuple[Args, Config]:
    args, configs = load_args(list(argv))
    return args, configs[0]


def modern(wd: Path, content: str = "") -> None:
    write(wd / "mkosi.conf", f"[Distribution]\nDistribution=debian\n{content}")


def classic(wd: Path, content: str = "") -> None:
    write(wd / "mkosi.default", f"[Distribution]\nDistribution=debian\n{content}")


def test_classic_default_is_no(wd: Path) -> None:
    classic(wd)
    config = load()[1]
    assert (config.bootable, config.bootable_auto) == (False, False)
    assert config.setting_value(by_dest("bootable")) is False


def test_modern_default_is_auto_on_disk_formats(wd: Path) -> None:
    modern(wd)
    config = load()[1]
    assert (config.bootable, config.bootable_auto) == (True, True)
    assert config.setting_value(by_dest("bootable")) == "auto"


@pytest.mark.parametrize("fmt", ["directory", "tar", "cpio"])
def test_modern_auto_is_not_bootable_for_trees(wd: Path, fmt: str) -> None:
    modern(wd, f"[Output]\nFormat={fmt}\n")
    config = load()[1]
    assert (config.bootable, config.bootable_auto) == (False, False)


def test_explicit_values_in_both_languages(wd: Path) -> None:
    modern(wd, "[Content]\nBootable=yes\n")
    assert (load()[1].bootable, load()[1].bootable_auto) == (True, False)
    modern(wd, "[Content]\nBootable=no\n")
    assert (load()[1].bootable, load()[1].bootable_auto) == (False, False)
    (wd / "mkosi.conf").unlink()
    classic(wd, "[Output]\nBootable=auto\n")
    assert (load()[1].bootable, load()[1].bootable_auto) == (True, True)
    assert load("--bootable=no")[1].bootable is False


def test_summary_shows_auto(wd: Path) -> None:
    modern(wd)
    summary_args = Args(verb=Verb.summary)
    config = load()[1]
    assert '"Bootable": "auto"' in summary_json(summary_args, [config])
    lines = [line.split() for line in summary_text(summary_args, [config]).splitlines() if "Bootable=" in line]
    assert lines == [["Bootable", "Bootable=auto"]]
    modern(wd, "[Content]\nBootable=yes\n")
    assert '"Bootable": true' in summary_json(summary_args, [load()[1]])


def test_auto_adds_no_kernel_and_needs_no_boot_tools_up_front(wd: Path) -> None:
    modern(wd)
    args, auto = load()
    yes = dataclasses.replace(auto, bootable_auto=False)
    ctx = Context(args, auto, wd / "ws", Phase.final, wd / "root", None, wd / "staging")
    assert not any(p.startswith("linux-image") or p == "systemd-boot-efi" for p in packages_for(ctx))
    ctx.config = yes
    assert "linux-image-amd64" in packages_for(ctx) and "systemd-boot-efi" in packages_for(ctx)
    assert "mkfs.vfat" in host_tools(auto, runtime=False)           # what `mkosi dependencies` lists
    assert "mkfs.vfat" not in host_tools(auto, runtime=False, sure=True)
    assert "mkfs.vfat" in host_tools(yes, runtime=False, sure=True)


def fake_root(root: Path, *, kernel: bool, loader: bool, stub: bool) -> Path:
    if kernel:
        write(root / "usr/lib/modules/6.1.0-1-amd64/vmlinuz", "MZ")
    efi = root / "usr/lib/systemd/boot/efi"
    if loader:
        write(efi / "systemd-bootx64.efi", "MZ")
    if stub:
        write(efi / "linuxx64.efi.stub", "MZ")
    return root


def auto_config(wd: Path, *argv: str) -> Config:
    modern(wd)
    config = load("--architecture=x86_64", *argv)[1]
    assert config.bootable_auto
    return config


def test_decision_without_a_kernel(wd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = auto_config(wd)
    root = fake_root(tmp_path / "root", kernel=False, loader=True, stub=True)
    assert "no kernel" in (unbootable_reason(config, root) or "")
    settled = settle_bootable(config, root)
    assert (settled.bootable, settled.bootable_auto) == (False, False)
    err = capsys.readouterr().err
    assert err.count("Bootable=auto") == 1 and "no kernel" in err and "not made bootable" in err


def test_settled_config_declares_no_boot_artifacts(wd: Path, tmp_path: Path) -> None:
    # SplitArtifacts=uki and QEMU's direct kernel boot files: declared while auto may boot, not once the
    # build found no kernel, so collect() misses none of them.
    config = auto_config(wd, "--split-artifacts=uki", "--boot-protocols=uefi,linux")
    assert artifacts.SPLIT_KERNEL.when(config) and artifacts.LINUX_KERNEL.when(config)
    settled = settle_bootable(config, fake_root(tmp_path / "root", kernel=False, loader=True, stub=True))
    assert not artifacts.SPLIT_KERNEL.when(settled) and not artifacts.LINUX_KERNEL.when(settled)
    assert artifacts.SPLIT_KERNEL not in artifacts.declared(settled)


def test_decision_without_systemd_boot(wd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = auto_config(wd)
    root = fake_root(tmp_path / "root", kernel=True, loader=False, stub=True)
    assert "systemd-boot" in (unbootable_reason(config, root) or "")
    assert settle_bootable(config, root).bootable is False
    err = capsys.readouterr().err
    assert "systemd-bootx64.efi" in err and "systemd-boot-efi in Packages=" in err   # Debian's package


def test_decision_uki_loader_needs_the_stub(wd: Path, tmp_path: Path) -> None:
    config = auto_config(wd, "--bootloader=uki")
    assert config.bootloader == Bootloader.uki
    root = fake_root(tmp_path / "root", kernel=True, loader=False, stub=False)
    assert "EFI stub" in (unbootable_reason(config, root) or "")
    fake_root(root, kernel=False, loader=False, stub=True)
    assert unbootable_reason(config, root) is None


def test_decision_with_everything_keeps_it_bootable(wd: Path, tmp_path: Path) -> None:
    config = auto_config(wd)
    root = fake_root(tmp_path / "root", kernel=True, loader=True, stub=True)
    assert unbootable_reason(config, root) is None
    settled = settle_bootable(config, root)
    assert settled.bootable is True                      # the boot tools (mkfs.vfat, mcopy) are on this host


def test_yes_is_left_alone(wd: Path, tmp_path: Path) -> None:
    modern(wd, "[Content]\nBootable=yes\n")
    config = load()[1]
    root = fake_root(tmp_path / "root", kernel=False, loader=False, stub=False)
    assert settle_bootable(config, root) is config        # its build fails in find_kernel(), as before


def test_auto_with_verity_and_usr_only_is_not_bootable(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    modern(wd, "[Output]\nVerity=yes\nUsrOnly=yes\n")
    config = load()[1]
    assert (config.bootable, config.bootable_auto) == (False, False)
    assert "Bootable=auto" in capsys.readouterr().err
