"""Unified kernel images: systemd's EFI stub with the kernel, initrd, command line and os-release
added as PE sections. Works on plain files, so disk images and Format=uki can both use it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.boot.kernel import BootFiles
from mkosi.boot.pcrsig import PcrSigner, pcrpkey_file, sign_sections
from mkosi.boot.pe import PEImage, append_sections, read_pe, stub_version
from mkosi.config.keys import SpecifierError, expand_ampersand
from mkosi.errors import MkosiError

SYSTEMD_BOOT_EFI_DIR = Path("/usr/lib/systemd/boot/efi")
DEFAULT_UKI_STUB = SYSTEMD_BOOT_EFI_DIR / "linuxx64.efi.stub"


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def uki_layout(
    stub: PEImage, sections: Sequence[tuple[str, int]], page_size: int = 4096
) -> list[tuple[str, int]]:
    """Compute the RVA of each new section, in the given order, after everything in the stub.

    Each new section starts at a multiple of the stub's SectionAlignment (and of the page size,
    so firmware can map them with page granularity) and does not overlap anything before it.
    """
    alignment = max(stub.section_alignment, 1)
    alignment = page_size if page_size % alignment == 0 else _align_up(page_size, alignment)
    end = max([stub.size_of_image, *(s.virtual_end for s in stub.sections)])
    result = []
    for name, size in sections:
        if size <= 0:
            raise MkosiError(f"UKI section {name} would be empty")
        rva = _align_up(end, alignment)
        result.append((name, rva))
        end = rva + size
    return result


def uki_file_name(entry_id: str, image_version: str | None, kernel_version: str) -> str:
    """ID_VERSION.efi with an image version, ID-KERNELVERSION.efi without."""
    return f"{entry_id}_{image_version}.efi" if image_version else f"{entry_id}-{kernel_version}.efi"


def _check_inputs(stub: Path, kernel: Path, initrd: Path | None, os_release: Path) -> None:
    if not stub.is_file():
        raise MkosiError(
            f"EFI stub {stub} not found",
            hint="install it with: apt-get install systemd-boot-efi",
        )
    if not kernel.is_file():
        raise MkosiError(f"kernel image {kernel} not found")
    if not os_release.is_file():
        raise MkosiError(f"os-release file {os_release} not found")
    if initrd is not None and not initrd.is_file():
        raise MkosiError(f"initrd {initrd} not found")
    with kernel.open("rb") as f:
        if f.read(2) != b"MZ":
            raise MkosiError(
                f"{kernel} is not an EFI-bootable kernel (no PE header)",
                hint="the kernel must be built with CONFIG_EFI_STUB=y",
            )


def _payloads(
    tmpdir: Path,
    kernel: Path,
    initrd: Path | None,
    cmdline: str,
    os_release: Path,
    uname: str | None,
    extra_sections: Sequence[tuple[str, Path]],
) -> list[tuple[str, Path]]:
    """The sections to add, in order: .osrel, .cmdline, .uname, extras, .initrd, .linux."""
    cmdline_file = tmpdir / "cmdline"
    cmdline_file.write_text(cmdline.strip())
    payloads: list[tuple[str, Path]] = [(".osrel", os_release), (".cmdline", cmdline_file)]
    if uname:
        uname_file = tmpdir / "uname"
        uname_file.write_text(uname)
        payloads.append((".uname", uname_file))
    payloads.extend(extra_sections)
    if initrd is not None:
        payloads.append((".initrd", initrd))
    payloads.append((".linux", kernel))
    return payloads


def _check_payloads(stub: Path, pe: PEImage, payloads: Sequence[tuple[str, Path]]) -> None:
    existing = {s.name for s in pe.sections}
    for name, path in payloads:
        if len(name.encode()) > 8 or not name.startswith("."):
            raise MkosiError(
                f"invalid PE section name {name!r} (at most 8 characters, starting with '.')"
            )
        if name in existing:
            raise MkosiError(f"the EFI stub {stub} already has a {name} section")
        if path.stat().st_size == 0:
            if name == ".initrd":
                raise MkosiError(f"initrd {path} is empty")
            raise MkosiError(f"{path} is empty, cannot add it as {name}")


@dataclasses.dataclass(frozen=True)
class UkiProfile:
    """One profile of a multi-profile UKI: the text of its .profile section (KEY=VALUE lines, ID= first)
    and the command line it boots with ("" keeps the base one)."""

    profile: str
    cmdline: str = ""
    sign_expected_pcr: bool = True     # [UKIProfile] SignExpectedPcr=: its own .pcrsig when PCRs are signed


# The first systemd release whose stub understands .profile sections.
PROFILE_STUB_VERSION = 257


def profile_group(tmpdir: Path, index: int, p: UkiProfile) -> list[tuple[str, Path]]:
    """One profile's sections: its .profile section, then the sections it overrides."""
    text = tmpdir / f"profile-{index}"
    text.write_text(p.profile.strip() + "\n")
    group = [(".profile", text)]
    if p.cmdline.strip():
        cmdline = tmpdir / f"profile-{index}.cmdline"
        cmdline.write_text(p.cmdline.strip())
        group.append((".cmdline", cmdline))
    return group


def profile_payloads(tmpdir: Path, profiles: Sequence[UkiProfile]) -> list[tuple[str, Path]]:
    """After the base sections, each profile: its .profile section, then the sections it overrides."""
    return [payload for i, p in enumerate(profiles) for payload in profile_group(tmpdir, i, p)]


def _signed_payloads(tmpdir: Path, stub: Path, base: list[tuple[str, Path]], profiles: Sequence[UkiProfile],
                     pcr: PcrSigner) -> list[tuple[str, Path]]:
    """SignExpectedPcr=: the base sections plus .pcrpkey and the .pcrsig of what the stub measures when
    it boots them; then each profile's sections, with a .pcrsig of its own (the base sections with those
    the profile overrides replaced, its .profile included) unless the profile says SignExpectedPcr=no.
    An auto signer that cannot sign leaves every signature out."""
    with_key = [*base, (".pcrpkey", pcrpkey_file(pcr, tmpdir))]
    signature = sign_sections(pcr, stub, with_key, tmpdir, "pcrsig")
    if signature is None:
        return [*base, *profile_payloads(tmpdir, profiles)]
    payloads = [*with_key, (".pcrsig", signature)]
    for i, p in enumerate(profiles):
        group = profile_group(tmpdir, i, p)
        if p.sign_expected_pcr:
            names = {name for name, _ in group}
            booted = [s for s in with_key if s[0] not in names] + group
            own = sign_sections(pcr, stub, booted, tmpdir, f"pcrsig-{i}")
            if own is not None:
                group.append((".pcrsig", own))
        payloads += group
    return payloads


def _assemble(stub: Path, pe: PEImage, payloads: Sequence[tuple[str, Path]], output: Path) -> None:
    layout = uki_layout(pe, [(name, path.stat().st_size) for name, path in payloads])
    tmp_output = output.with_name(f".{output.name}.tmp")
    try:
        append_sections(stub, [(name, rva, path) for (name, path), (_, rva) in zip(payloads, layout)], tmp_output)
        os.replace(tmp_output, output)
    finally:
        tmp_output.unlink(missing_ok=True)


def _check_profile_stub(stub: Path) -> None:
    version = stub_version(stub)
    if version is not None and version[0] < PROFILE_STUB_VERSION:
        raise MkosiError(f"the EFI stub {stub} (systemd {'.'.join(map(str, version))}) does not support UKI "
                         f"profiles, systemd {PROFILE_STUB_VERSION} or newer is needed",
                         hint="use a tools tree with a newer systemd (ToolsTree=)")


def build_uki(
    stub: Path,
    kernel: Path,
    initrd: Path | None,
    cmdline: str,
    os_release: Path,
    output: Path,
    uname: str | None = None,
    *,
    extra_sections: Sequence[tuple[str, Path]] = (),
    profiles: Sequence[UkiProfile] = (),
    pcr: Optional[PcrSigner] = None,
) -> Path:
    """Build a unified kernel image: the systemd EFI stub plus .osrel, .cmdline, .uname, any
    extra sections (e.g. .splash), .initrd and .linux, then each profile's .profile and .cmdline
    sections, each placed at a section-aligned virtual address after the stub's own sections. With `pcr`
    (SignExpectedPcr=) also .pcrpkey and .pcrsig sections (see _signed_payloads()); they are part of
    the file before anything signs it for Secure Boot. Returns `output`."""
    _check_inputs(stub, kernel, initrd, os_release)
    pe = read_pe(stub)
    if profiles:
        _check_profile_stub(stub)
    with tempfile.TemporaryDirectory(prefix="mkosi-uki-") as tmp:
        payloads = _payloads(Path(tmp), kernel, initrd, cmdline, os_release, uname, extra_sections)
        _check_payloads(stub, pe, payloads)
        if pcr is not None:
            with log.step("Signing the expected PCR values of the unified kernel image"):
                payloads = _signed_payloads(Path(tmp), stub, payloads, profiles, pcr)
        else:
            payloads += profile_payloads(Path(tmp), profiles)
        output.parent.mkdir(parents=True, exist_ok=True)
        _assemble(stub, pe, payloads, output)
    log.debug(f"built UKI {output} ({output.stat().st_size} bytes)")
    return output


def build_addon(stub: Path, output: Path, cmdline: str = "", initrd: Path | None = None) -> Path:
    """A PE addon for unified kernel images: systemd's addon stub with a .cmdline section (appended to
    the UKI's command line by systemd-stub) and/or an .initrd section."""
    if not stub.is_file():
        raise MkosiError(f"EFI addon stub {stub} not found",
                         hint="it ships with systemd-boot 255 or newer (systemd-boot-efi); use ToolsTree=")
    if not cmdline.strip() and initrd is None:
        raise MkosiError("an addon needs a kernel command line (KernelCommandLine=) or files to carry")
    pe = read_pe(stub)
    with tempfile.TemporaryDirectory(prefix="mkosi-addon-") as tmp:
        payloads: list[tuple[str, Path]] = []
        if cmdline.strip():
            f = Path(tmp) / "cmdline"
            f.write_text(cmdline.strip())
            payloads.append((".cmdline", f))
        if initrd is not None:
            payloads.append((".initrd", initrd))
        _check_payloads(stub, pe, payloads)
        output.parent.mkdir(parents=True, exist_ok=True)
        _assemble(stub, pe, payloads, output)
    return output


def concat_initrds(initrds: Sequence[Path], output: Path) -> Path:
    """Several initrds as one file, each padded to 4 bytes (the kernel unpacks them one after the other)."""
    if not initrds:
        raise MkosiError("no initrd to concatenate")
    with output.open("wb") as out:
        for path in initrds:
            with path.open("rb") as f:
                shutil.copyfileobj(f, out)
            out.write(bytes(-out.tell() % 4))
    return output


def make_uki(files: BootFiles, output: Path, profiles: Sequence[UkiProfile] = (),
             pcr: Optional[PcrSigner] = None) -> Path:
    """A unified kernel image of `files`, with the stub the root tree ships."""
    return build_uki(files.stub, files.kernel, files.initrd, files.cmdline, files.os_release, output,
                     uname=files.version, extra_sections=files.extra_sections, profiles=profiles, pcr=pcr)


# ---- UnifiedKernelImageFormat= ----

def expand_uki_format(pattern: str, entry_token: str, kernel_version: str, roothash: str | None = None) -> str:
    """The file name of an installed UKI from UnifiedKernelImageFormat=: &e the entry token, &k the kernel
    version, &h the roothash=/usrhash= value, && a literal &; ".efi" is added."""
    def lookup(spec: str) -> str | None:
        if spec == "h" and not roothash:
            raise MkosiError(f"UnifiedKernelImageFormat={pattern}: &h needs roothash= or usrhash= on the "
                             "kernel command line")
        return {"e": entry_token, "k": kernel_version, "h": roothash}.get(spec)

    try:
        name = expand_ampersand(pattern, lookup)
    except SpecifierError as e:
        if e.spec is None:
            raise MkosiError(f"UnifiedKernelImageFormat={pattern}: '&' at the end (write && for a literal &)")
        raise MkosiError(f"UnifiedKernelImageFormat={pattern}: unknown specifier &{e.spec}",
                         hint="use &e, &k, &h or &&")
    if not name or "/" in name:
        raise MkosiError(f"UnifiedKernelImageFormat={pattern} must give a file name without directories")
    return name if name.endswith(".efi") else name + ".efi"


def installed_uki_name(pattern: str | None, entry_id: str, image_version: str | None, kernel_version: str,
                       cmdline: str) -> str:
    """The UKI's file name in EFI/Linux: UnifiedKernelImageFormat= when set (&h from the command line's
    roothash= or usrhash=), else ID_VERSION.efi or ID-KERNELVERSION.efi (uki_file_name())."""
    if pattern is None:
        return uki_file_name(entry_id, image_version, kernel_version)
    return expand_uki_format(pattern, entry_id, kernel_version, cmdline_hash(cmdline))


def cmdline_hash(cmdline: str) -> str | None:
    for w in cmdline.split():
        if w.startswith(("roothash=", "usrhash=")):
            return w.split("=", 1)[1]
    return None
