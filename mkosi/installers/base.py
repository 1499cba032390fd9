"""What every installer shares: the record of one installed package, as the package databases tell it
(the manifests and bills of materials are made from these)."""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    type: str                  # "deb", "rpm", "pacman"
    name: str
    version: str
    architecture: str
    size: int                  # installed size in bytes
    source: Optional[str] = None          # source package name
    source_version: Optional[str] = None
    license: Optional[str] = None         # licence statement, when the package database records one
                                          # (rpm's License tag, pacman's %LICENSE%)
