"""Splash= and Devicetrees=: what unified kernel images and Type #1 entries carry besides the kernel,
initrd and command line, looked up in the image tree."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi.errors import MkosiError
from mkosi.trees import resolve_in_root


def splash_file(root: Path, splash: Optional[str]) -> Optional[Path]:
    """Splash=: the picture inside the image that becomes the UKI's .splash section. systemd-stub shows
    only BMP pictures, so anything else is refused."""
    if not splash:
        return None
    path = resolve_in_root(root, splash)
    if not path.is_file():
        raise MkosiError(f"Splash={splash}: the image has no such file")
    with path.open("rb") as f:
        if f.read(2) != b"BM":
            raise MkosiError(f"Splash={splash}: not a BMP picture (systemd-stub shows nothing else)",
                             hint="convert it, e.g. with: convert splash.png BMP3:splash.bmp")
    return path


def devicetree_dirs(root: Path, version: str) -> list[Path]:
    """Where kernels' devicetree blobs are installed, in the order they are looked at."""
    dirs = (f"usr/lib/modules/{version}/dtb", f"usr/lib/firmware/{version}/device-tree",
            f"usr/lib/linux-image-{version}")
    return [resolve_in_root(root, d) for d in dirs]


def find_devicetrees(root: Path, version: str, patterns: Sequence[str]) -> list[Path]:
    """Devicetrees=: the .dtb files below the devicetree directories whose path relative to that directory
    matches one of the glob patterns (the first directory that has a file wins for the same path)."""
    if not patterns:
        return []
    found: dict[str, Path] = {}
    for top in devicetree_dirs(root, version):
        if not top.is_dir():
            continue
        for d, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(d, f), top)
                if f.endswith(".dtb") and rel not in found and \
                        any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(rel[:-4], p) for p in patterns):
                    found[rel] = Path(d) / f
    if not found:
        raise MkosiError(f"Devicetrees={','.join(patterns)}: no devicetree of kernel {version} matches",
                         hint="they are looked for below /usr/lib/modules/VERSION/dtb, "
                              "/usr/lib/firmware/VERSION/device-tree and /usr/lib/linux-image-VERSION")
    return [found[k] for k in sorted(found)]


def uki_sections(root: Path, splash: Optional[str], dtbs: Sequence[Path]) -> list[tuple[str, Path]]:
    """The extra sections of a UKI: .splash, then one .dtb (a single devicetree) or a .dtbauto per
    devicetree, which systemd-stub chooses from by the machine's compatible string."""
    sections: list[tuple[str, Path]] = []
    picture = splash_file(root, splash)
    if picture is not None:
        sections.append((".splash", picture))
    if len(dtbs) == 1:
        sections.append((".dtb", dtbs[0]))
    else:
        sections += [(".dtbauto", d) for d in dtbs]
    return sections


def entry_devicetree(dtbs: Sequence[Path], patterns: Sequence[str]) -> Optional[Path]:
    """The devicetree of a Type #1 entry, which names one: an error when the patterns matched several."""
    if len(dtbs) > 1:
        raise MkosiError(f"Devicetrees={','.join(patterns)} matches {len(dtbs)} devicetrees; a boot loader entry "
                         "takes one", hint="narrow the patterns, or boot unified kernel images (.dtbauto sections)")
    return dtbs[0] if dtbs else None
