"""The configuration rows of the UKI formats and settings: Format=uki/esp/addon, Bootloader=,
BiosBootloader=, UnifiedKernelImageFormat=, UnifiedKernelImageProfiles=, Initrds=, KernelModulesInitrd=,
and how the qemu verb boots a UKI."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkosi import formats
from mkosi.config import load_args
from mkosi.config.enums import Bootloader, BootProtocol
from mkosi.config.settings import Config, by_dest
from mkosi.errors import ConfigError
from mkosi.formats import FormatKind
from mkosi.output import artifacts
from mkosi.output.make import maker
from mkosi.qemu import qemu_command
from mkosi.summary import summary_dict
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def load(*argv: str, verb: str = "summary") -> Config:
    _, configs = load_args([*argv, verb])
    return configs[-1]


def load_error(*argv: str, verb: str = "build") -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_args([*argv, verb])
    return e.value


@pytest.mark.parametrize("name, kind, suffix, function", [
    ("uki", FormatKind.efi, ".efi", "make_uki_output"),
    ("esp", FormatKind.disk, ".raw", "make_esp_output"),
    ("addon", FormatKind.efi, ".efi", "make_addon_output"),
])
def test_rows_name_their_makers(name: str, kind: FormatKind, suffix: str, function: str) -> None:
    row = formats.FORMATS[name]
    assert (row.kind, row.suffix, row.status) == (kind, suffix, None)
    assert maker(row).__name__ == function
    assert name in formats.implemented_names()


def test_output_names(wd: Path) -> None:
    assert load("--format=uki", "--image-id=img", "--image-version=1.2").output == wd / "img_1.2.efi"
    assert load("--format=addon", "--image-id=cmd").output == wd / "cmd.efi"
    esp = load("--format=esp", "--image-id=boot", "--compress-output=zstd")
    assert esp.output == wd / "boot.raw.zst"
    assert artifacts.output_stem(esp) == "boot"
    assert "output" in artifacts.shown(load("--format=uki"))


def test_uki_outputs_are_not_compressed(wd: Path) -> None:
    assert "uki outputs are not compressed" in str(load_error("--format=uki", "--compress-output=xz"))


def test_esp_is_bootable_by_default_and_takes_bootable(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load("--format=esp").bootable is True
    assert load("--format=esp").boot_protocols == [BootProtocol.uefi]
    assert load("--format=esp", "--bootable=no").bootable is False
    assert load("--format=uki").bootable is False
    assert "Bootable=" not in capsys.readouterr().err
    # Disk-only settings are refused: the ESP is the only partition.
    assert "only applies to GPT disk image formats" in str(load_error("--format=esp", "--verity=yes"))


def test_bootloader_choices(wd: Path) -> None:
    assert load().bootloader == Bootloader.systemd_boot
    assert load("--bootloader=uki").bootloader == Bootloader.uki
    e = load_error("--bootloader=lilo", verb="summary")
    assert "--bootloader" in str(e) and "systemd-boot" in str(e)


@pytest.mark.parametrize("value", ["grub-signed", "uki-signed"])
def test_signed_bootloaders_are_accepted(wd: Path, value: str) -> None:
    assert load("--format=gpt_ext4", "--bootable", f"--bootloader={value}", verb="build").bootloader.value == value


def test_esp_needs_a_boot_loader(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=esp\n[Content]\nBootloader=none\n")
    e = load_error()
    assert "mkosi.conf:4" in str(e) and "Format=esp needs a boot loader" in str(e)


def test_bios_bootloader_grub_adds_bios_boot(wd: Path) -> None:
    assert load("-b", "--bios-bootloader=grub").boot_protocols == [BootProtocol.uefi, BootProtocol.bios]
    assert load("-b").boot_protocols == [BootProtocol.uefi]
    assert load("--bios-bootloader=grub").boot_protocols == []          # not bootable
    assert load("-b", "--bios-bootloader=grub", "--boot-protocols=bios").boot_protocols == [BootProtocol.bios]


def test_uki_format_pattern(wd: Path) -> None:
    assert load("--unified-kernel-image-format=&e-&k").unified_kernel_image_format == "&e-&k"
    # % specifiers are expanded when the configuration file is read, & ones when the UKI is installed.
    write(wd / "mkosi.conf", "[Output]\nImageId=img\n[Content]\nUnifiedKernelImageFormat=%i-&k\n")
    assert load().unified_kernel_image_format == "img-&k"
    assert "unknown specifier '&x'" in str(load_error("--unified-kernel-image-format=&x", verb="summary"))
    assert "without directories" in str(load_error("--unified-kernel-image-format=a/&k", verb="summary"))


def test_uki_profiles_default_directory_and_errors(wd: Path) -> None:
    write(wd / "mkosi.uki-profiles/debug.conf", "[UKIProfile]\nProfile=ID=debug\nCmdline=debug\n")
    assert load().uki_profiles == [wd / "mkosi.uki-profiles"]
    load(verb="build")
    write(wd / "mkosi.uki-profiles/bad.conf", "[UKIProfile]\nProfile=TITLE=x\n")
    e = load_error()
    assert "bad.conf" in str(e) and "has no ID=" in str(e)
    write(wd / "extra.conf", "[UKIProfile]\nProfiles=ID=x\n")
    e = load_error("--uki-profile=extra.conf")
    assert "extra.conf:2" in str(e) and "unknown setting Profiles=" in str(e)


def test_initrds_and_kernel_modules_initrd(wd: Path) -> None:
    write(wd / "my.initrd", "x")
    c = load("--initrd=my.initrd")
    assert c.initrds == [wd / "my.initrd"]
    assert c.kernel_modules_initrd is True
    assert load("--kernel-modules-initrd=no").kernel_modules_initrd is False


def test_summary_shows_them_implemented(wd: Path) -> None:
    args, configs = load_args(["summary"])
    shown = summary_dict(args, configs[-1])
    text = repr(shown)
    for key in ("Bootloader", "BiosBootloader", "UnifiedKernelImageFormat", "UnifiedKernelImageProfiles",
                "Initrds", "KernelModulesInitrd"):
        assert key in text
    for dest in ("bootloader", "bios_bootloader", "unified_kernel_image_format", "uki_profiles", "initrds",
                 "kernel_modules_initrd"):
        assert by_dest(dest).status is None, dest


def test_secure_boot_applies_to_uki_and_addon(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    e = load_error("--format=uki", "--secure-boot")
    assert "needs a Secure Boot key" in str(e)
    capsys.readouterr()
    load("--format=addon", "--secure-boot")
    assert "has no effect" not in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["uki", "esp", "addon"])
def test_container_verbs_refuse_efi_outputs(wd: Path, fmt: str) -> None:
    for verb in ("shell", "boot"):
        e = load_error(f"--format={fmt}", verb=verb)
        assert f"cannot run a {fmt} image in a container" in str(e)


def test_qemu_verb_boots_a_uki_and_refuses_an_addon(wd: Path) -> None:
    load("--format=uki", verb="qemu")
    assert "does not boot by itself" in str(load_error("--format=addon", verb="qemu"))


def test_qemu_command_for_a_uki_has_no_disk(tmp_path: Path) -> None:
    uki = tmp_path / "img.efi"
    code, vars_ = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"")
    vars_.write_bytes(b"")
    argv = qemu_command(image=None, boot="uefi", kernel=uki, kvm=False, ovmf_code=code, ovmf_vars_copy=vars_)
    assert argv[argv.index("-kernel") + 1] == str(uki)
    assert "-append" not in argv and not any("virtio-blk" in a for a in argv)
    argv = qemu_command(image=None, boot="uefi", kernel=uki, cmdline="quiet", kvm=False, ovmf_code=code,
                        ovmf_vars_copy=vars_)
    assert argv[argv.index("-append") + 1] == "quiet"
