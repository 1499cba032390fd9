"""Unified kernel images: systemd's EFI stub with the kernel, initrd, command line and os-release
added as PE sections. Works on plain files, so disk images and Format=uki can both use it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mkosi import log
from mkosi.boot.kernel import BootFiles
from mkosi.boot.pe import PEImage, read_pe
from mkosi.errors import MkosiError
from mkosi.run import require_tool, run

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


def _objcopy(stub: Path, pe: PEImage, payloads: Sequence[tuple[str, Path]], output: Path) -> None:
    layout = uki_layout(pe, [(name, path.stat().st_size) for name, path in payloads])
    argv: list[str] = [require_tool("objcopy")]
    for (name, path), (_, rva) in zip(payloads, layout):
        argv += [
            "--add-section", f"{name}={path}",
            "--set-section-flags", f"{name}=data,readonly",
            "--change-section-vma", f"{name}={pe.image_base + rva:#x}",
        ]  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_output = output.with_name(f".{output.name}.tmp")
    argv += [os.fspath(stub), os.fspath(tmp_output)]
    try:
        run(argv)
        os.replace(tmp_output, output)
    finally:
        tmp_output.unlink(missing_ok=True)


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
) -> Path:
    """Build a unified kernel image: the systemd EFI stub plus .osrel, .cmdline, .uname, any
    extra sections (e.g. .splash), .initrd and finally .linux, each placed at a section-aligned
    virtual address after the stub's own sections. Returns `output`."""
    require_tool("objcopy")
    _check_inputs(stub, kernel, initrd, os_release)
    pe = read_pe(stub)
    with tempfile.TemporaryDirectory(prefix="mkosi-uki-") as tmp:
        payloads = _payloads(Path(tmp), kernel, initrd, cmdline, os_release, uname, extra_sections)
        _check_payloads(stub, pe, payloads)
        _objcopy(stub, pe, payloads, output)
    log.debug(f"built UKI {output} ({output.stat().st_size} bytes)")
    return output


def make_uki(files: BootFiles, output: Path) -> Path:
    """A unified kernel image of `files`, with the stub the root tree ships."""
    return build_uki(files.stub, files.kernel, files.initrd, files.cmdline, files.os_release, output,
                     uname=files.version)
