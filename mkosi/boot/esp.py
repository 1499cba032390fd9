"""Filling an EFI system partition directory: systemd-boot with a unified kernel image or a Boot
Loader Specification entry, GRUB's configuration for BIOS boot, Secure Boot signatures. Takes the
boot files and options as plain values and writes files; no disk image is involved, so a disk
image's ESP and Format=esp can share it."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.boot.efivars import write_auto_enroll_keys
from mkosi.boot.extras import entry_devicetree
from mkosi.boot.grub import GRUB_EFI_TARGETS, grub_efi_config_text, install_grub_efi, write_grub_config
from mkosi.boot.kernel import BootFiles, efi_arch
from mkosi.boot.pcrsig import PcrSigner, pcr_signer
from mkosi.boot.signed import find_signed_uki, install_grub_signed, install_shim, install_uki_signed
from mkosi.boot.signing import SignTool, sign_efi
from mkosi.boot.systemd_boot import install_bls_entry, install_systemd_boot
from mkosi.boot.uki import UkiProfile, installed_uki_name, make_uki
from mkosi.config.enums import Bootloader, BootProtocol, ShimBootloader, UnifiedKernelImages
from mkosi.config.settings import Config
from mkosi.errors import MkosiError


@dataclasses.dataclass(frozen=True)
class EspOptions:
    protocols: tuple[BootProtocol, ...]
    entry_id: str                    # names the UKI or the Type #1 entry
    title: str
    image_version: Optional[str] = None
    unified_kernel_image: UnifiedKernelImages = UnifiedKernelImages.auto   # UnifiedKernelImages=
    secure_boot_key: Optional[Path] = None      # both set: sign what mkosi puts on the ESP unsigned
    secure_boot_certificate: Optional[Path] = None
    bootloader: Bootloader = Bootloader.systemd_boot
    uki_format: Optional[str] = None            # UnifiedKernelImageFormat=
    profiles: tuple[UkiProfile, ...] = ()
    grub_efi_dirs: tuple[Path, ...] = ()         # where GRUB's EFI modules are looked for (Bootloader=grub)
    image_root: Optional[Path] = None            # where the signed variants' pre-signed binaries are looked for
    shim: ShimBootloader = ShimBootloader.none   # ShimBootloader=
    pcr: Optional[PcrSigner] = None              # SignExpectedPcr=: .pcrsig/.pcrpkey in the UKIs mkosi builds
    sign_tool: SignTool = SignTool()             # SecureBootSignTool= and the key and certificate sources
    auto_enroll: bool = False                    # SecureBootAutoEnroll=: loader/keys/auto/ for systemd-boot

    @classmethod
    def from_config(cls, config: Config, profiles: Sequence[UkiProfile] = (),
                    root: Optional[Path] = None) -> EspOptions:
        sign = config.secure_boot
        return cls(protocols=tuple(config.boot_protocols), entry_id=config.image_id or "linux",
                   title=config.image_id or "Linux", image_version=config.image_version,
                   unified_kernel_image=config.with_unified_kernel_images,
                   secure_boot_key=config.secure_boot_key if sign else None,
                   secure_boot_certificate=config.secure_boot_certificate if sign else None,
                   bootloader=config.bootloader, uki_format=config.unified_kernel_image_format,
                   profiles=tuple(profiles), grub_efi_dirs=grub_efi_dirs(config, root), image_root=root,
                   shim=config.shim_bootloader, pcr=pcr_signer(config), sign_tool=SignTool.from_config(config),
                   auto_enroll=sign and config.secure_boot_auto_enroll)

    def tree(self, needed_for: str, what: str) -> Path:
        """The image tree the distribution's pre-built binaries are taken from; an error naming the setting
        (`needed_for`) and the binaries (`what`) when the caller gave none."""
        if self.image_root is None:
            raise MkosiError(f"{needed_for} needs the image tree to take {what} from")
        return self.image_root

    @property
    def signs(self) -> bool:
        return self.secure_boot_key is not None and self.secure_boot_certificate is not None


def grub_efi_dirs(config: Config, root: Optional[Path]) -> tuple[Path, ...]:
    """GRUB's x86_64-efi (or other EFI) module directory: in the image, the tools tree, the host."""
    target = GRUB_EFI_TARGETS.get(efi_arch(config.architecture), "x86_64-efi")
    tops = [*([root] if root is not None else []),
            *([Path(str(config.tools_tree))] if config.tools_tree not in (None, "default") else []), Path("/")]
    return tuple(top / "usr/lib/grub" / target for top in tops)


def _os_release_id(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ID" and value.strip().strip("\"'"):
            return value.strip().strip("\"'")
    return "linux"


def _grub_config(files: BootFiles, options: EspOptions, uki: Path, esp: Path) -> str:
    bios = BootProtocol.bios in options.protocols
    return grub_efi_config_text(options.title, ["/" + str(uki.relative_to(esp))],
                                bios_kernel="/vmlinuz" if bios else None, bios_initrd="/initrd" if bios else None,
                                cmdline=files.cmdline)


def _install_grub(esp: Path, files: BootFiles, options: EspOptions, uki: Path) -> list[Path]:
    """GRUB chainloading the UKI; returns what mkosi may sign (nothing of the pre-signed grub-signed)."""
    if options.bootloader == Bootloader.grub_signed:
        root = options.tree("Bootloader=grub-signed", "the signed GRUB")
        with log.step("Installing the distribution's signed GRUB"):
            install_grub_signed(esp, root, files.efi_arch, _os_release_id(files.os_release),
                                _grub_config(files, options, uki, esp))
        return []
    lib = next((d for d in options.grub_efi_dirs if (d / "normal.mod").is_file()), None)
    if lib is None:
        raise MkosiError("Bootloader=grub: GRUB's EFI modules are in neither the image, the tools tree nor the host",
                         hint="add grub-efi-amd64-bin to Packages=")
    return [install_grub_efi(esp, lib, files.efi_arch, _os_release_id(files.os_release),
                             _grub_config(files, options, uki, esp))]


def uki_path(esp: Path, files: BootFiles, options: EspOptions) -> Path:
    """Where the UKI goes: EFI/BOOT/BOOT<ARCH>.EFI with Bootloader=uki (the firmware starts it), else
    EFI/Linux/ named by UnifiedKernelImageFormat= (systemd-boot finds it there)."""
    if options.bootloader == Bootloader.uki:
        return esp / f"EFI/BOOT/BOOT{files.efi_arch.upper()}.EFI"
    return esp / "EFI/Linux" / installed_uki_name(options.uki_format, options.entry_id, options.image_version,
                                                  files.version, files.cmdline)


def _install_loader(esp: Path, files: BootFiles, options: EspOptions) -> list[Path]:
    """systemd-boot (pre-signed with -signed); returns the binaries mkosi may sign."""
    if options.bootloader == Bootloader.systemd_boot_signed:
        signed = files.efi_dir / f"systemd-boot{files.efi_arch}.efi.signed"
        if not signed.is_file():
            raise MkosiError(f"Bootloader=systemd-boot-signed: the image has no {signed.name}",
                             hint="add the distribution's signed systemd-boot (systemd-boot-efi-amd64-signed on "
                                  "Debian) to Packages=")
        install_systemd_boot(esp, files.efi_arch, source_dir=files.efi_dir, binary_name=signed.name)
        return []
    if not files.systemd_boot.exists():
        raise MkosiError("the image has no systemd-boot EFI binaries", hint="add systemd-boot-efi to Packages=")
    install_systemd_boot(esp, files.efi_arch, source_dir=files.efi_dir)
    _install_enrollment_keys(esp, options)
    return [esp / f"EFI/systemd/systemd-boot{files.efi_arch}.efi", esp / f"EFI/BOOT/BOOT{files.efi_arch.upper()}.EFI"]


def _install_enrollment_keys(esp: Path, options: EspOptions) -> None:
    """SecureBootAutoEnroll=: the certificate as PK, KEK and db in loader/keys/auto/, for systemd-boot to
    enroll on a machine in setup mode (virtual machines, from systemd 253 on)."""
    if not (options.auto_enroll and options.signs):
        return
    assert options.secure_boot_key is not None and options.secure_boot_certificate is not None
    if options.sign_tool.key_source != "file" or options.sign_tool.certificate_source != "file":
        log.warn("SecureBootAutoEnroll=: the enrollment files are signed from a key file only; with "
                 f"SecureBootKeySource={options.sign_tool.key_source} they are left out")
        return
    with log.step("Adding the Secure Boot keys for systemd-boot to enroll"):
        write_auto_enroll_keys(esp / "loader/keys/auto", options.secure_boot_key, options.secure_boot_certificate)


# The boot loaders that read an XBOOTLDR partition (systemd-boot reads both it and the ESP).
XBOOTLDR_LOADERS = (Bootloader.systemd_boot, Bootloader.systemd_boot_signed)
# The signed boot loaders that boot the distribution's pre-built signed UKI unless UnifiedKernelImages=unsigned.
SIGNED_LOADERS = (Bootloader.systemd_boot_signed, Bootloader.grub_signed)


def takes_prebuilt_uki(options: EspOptions) -> bool:
    """UnifiedKernelImages=auto or signed with a signed boot loader: the distribution's pre-built signed UKI
    (an error when the image has none); unsigned: mkosi builds the UKI (and signs it with SecureBoot=)."""
    return options.bootloader in SIGNED_LOADERS and options.unified_kernel_image in (
        UnifiedKernelImages.auto, UnifiedKernelImages.signed)


def boots_uki(files: BootFiles, options: EspOptions, own_maker: bool = False) -> bool:
    """Whether the entry systemd-boot or GRUB boots is a UKI (else a Type #1 entry): never with
    UnifiedKernelImages=none, always with unsigned and signed; with auto when the EFI stub is there (or the
    distribution's signed UKI is taken, or the caller makes the UKI with a stub of its own), a Type #1 entry
    for systemd-boot when it is not."""
    mode = options.unified_kernel_image
    if mode == UnifiedKernelImages.none:
        return False
    if mode == UnifiedKernelImages.auto and options.bootloader in XBOOTLDR_LOADERS and not own_maker and \
            not takes_prebuilt_uki(options) and not files.stub.is_file():
        log.warn(f"UnifiedKernelImages=auto: the image has no EFI stub ({files.stub.name}), so systemd-boot boots "
                 "a Type #1 entry (kernel, initrd and an entry file) instead of a unified kernel image")
        return False
    return True


def boot_dir(esp: Path, boot: Optional[Path], options: EspOptions) -> Path:
    """$BOOT of the Boot Loader Specification: where the UKI or the Type #1 entry goes. The XBOOTLDR
    partition's directory `boot` when there is one and systemd-boot reads it, else the ESP."""
    if boot is None:
        return esp
    if options.bootloader not in XBOOTLDR_LOADERS:
        log.warn(f"Bootloader={options.bootloader.value} boots from the ESP only: the unified kernel images "
                 "stay there, and the XBOOTLDR partition holds only the image's /boot")
        return esp
    return boot


def install_uefi(esp: Path, files: BootFiles, options: EspOptions,
                 make: Optional[Callable[[Path], Path]] = None, with_uki: bool = True,
                 boot: Optional[Path] = None) -> Optional[Path]:
    """What Bootloader= puts on the ESP for UEFI: systemd-boot plus a UKI in EFI/Linux (or a Type #1 entry
    with UnifiedKernelImages=no), the UKI alone as the firmware's default binary (uki), or nothing
    (none). `make` writes the UKI to the path it is given (default: from `files`); with_uki=False leaves
    it out. With `boot` (an XBOOTLDR directory) systemd-boot stays on the ESP and the UKI or entry goes
    to `boot` (boot_dir()). Signs what it wrote unsigned when options carry a key. Returns the UKI."""
    if options.bootloader == Bootloader.none:
        if boot is not None:
            log.warn("Bootloader=none: nothing is installed, the XBOOTLDR partition holds only the image's /boot")
        return None
    target = boot_dir(esp, boot, options)
    if options.bootloader == Bootloader.uki_signed:
        # The distribution's own signed UKI; mkosi builds and signs none.
        root = options.tree("Bootloader=uki-signed", "the signed UKI")
        with log.step("Installing the distribution's signed unified kernel image"):
            signed_uki = install_uki_signed(esp, root, files.efi_arch)
        return _install_shim(esp, files, options, signed_uki)
    to_sign: list[Path] = []
    grub = options.bootloader in (Bootloader.grub, Bootloader.grub_signed)
    uki_wanted = with_uki and boots_uki(files, options, own_maker=make is not None)
    if grub and not uki_wanted:
        raise MkosiError(f"Bootloader={options.bootloader.value} without unified kernel images is not implemented yet",
                         hint="use UnifiedKernelImages=yes or Bootloader=systemd-boot")
    if options.bootloader not in (Bootloader.uki, Bootloader.grub, Bootloader.grub_signed):
        to_sign += _install_loader(esp, files, options)
    uki = None
    if with_uki and options.bootloader != Bootloader.uki and not uki_wanted:
        install_bls_entry(target, f"{options.entry_id}-{files.version}", options.title, files.kernel, files.initrd,
                          files.cmdline, version=files.version,
                          devicetree=entry_devicetree(files.devicetrees, files.devicetree_patterns))
    elif with_uki:
        uki = uki_path(target, files, options)
        uki.parent.mkdir(parents=True, exist_ok=True)
        if takes_prebuilt_uki(options):
            # Signed by the distribution: neither built nor signed again here.
            root = options.tree(f"Bootloader={options.bootloader.value}", "the signed UKI")
            with log.step("Installing the distribution's signed unified kernel image"):
                shutil.copyfile(find_signed_uki(root, options.bootloader.value,
                                                "set UnifiedKernelImages=unsigned to have mkosi build one"), uki)
        else:
            with log.step("Building the unified kernel image"):
                if make is not None:
                    make(uki)
                else:
                    make_uki(files, uki, options.profiles, options.pcr)
            to_sign.append(uki)
        if grub:
            with log.step("Installing GRUB for UEFI"):
                to_sign += _install_grub(esp, files, options, uki)
    if options.signs:
        assert options.secure_boot_key is not None and options.secure_boot_certificate is not None
        with log.step("Signing EFI binaries for Secure Boot"):
            for binary in to_sign:
                sign_efi(binary, options.secure_boot_key, options.secure_boot_certificate, how=options.sign_tool)
    return _install_shim(esp, files, options, uki)


def _install_shim(esp: Path, files: BootFiles, options: EspOptions, uki: Optional[Path]) -> Optional[Path]:
    """ShimBootloader=: shim in front of the boot loader (after signing, so the moved binary keeps its
    signature); returns where the UKI is now (it moves when it was the default binary)."""
    if options.shim == ShimBootloader.none:
        return uki
    root = options.tree("ShimBootloader=", "shim")
    default = esp / f"EFI/BOOT/BOOT{files.efi_arch.upper()}.EFI"
    with log.step(f"Installing the distribution's {options.shim.value} shim"):
        unsigned = install_shim(esp, root, files.efi_arch, options.shim == ShimBootloader.signed)
    if options.signs:
        assert options.secure_boot_key is not None and options.secure_boot_certificate is not None
        for binary in unsigned:
            sign_efi(binary, options.secure_boot_key, options.secure_boot_certificate, how=options.sign_tool)
    if uki == default:
        return esp / f"EFI/BOOT/grub{files.efi_arch}.efi"
    return uki


def _install_bios(esp: Path, files: BootFiles, title: str) -> None:
    """The kernel, initrd and grub.cfg that GRUB's core image (in the BIOS boot partition) loads."""
    shutil.copyfile(files.kernel, esp / "vmlinuz")
    shutil.copyfile(files.initrd, esp / "initrd")
    write_grub_config(esp / "grub", title=title, kernel="/vmlinuz", initrd="/initrd", cmdline=files.cmdline,
                      serial=True)


def populate_esp(esp: Path, files: BootFiles, options: EspOptions, boot: Optional[Path] = None) -> Optional[Path]:
    """Fill the directory `esp` for the boot protocols of `options`; returns the UKI if one was made. With
    `boot`, the directory of an XBOOTLDR partition, the UKI or Type #1 entry goes there (UEFI with
    systemd-boot); GRUB's files for BIOS stay on the ESP."""
    uki = None
    if BootProtocol.uefi in options.protocols:
        uki = install_uefi(esp, files, options, boot=boot)
    if BootProtocol.bios in options.protocols:
        _install_bios(esp, files, options.title)
        if uki is not None and options.bootloader in (Bootloader.grub, Bootloader.grub_signed):
            # One grub.cfg for both: chainload the UKI on UEFI, the kernel and initrd on BIOS.
            (esp / "grub/grub.cfg").write_text(_grub_config(files, options, uki, esp))
    return uki
