"""What every installer shares: the fields of its configuration that come from the build (where it
installs, its private directory, the package cache, the network, the sandbox), and the record of one
installed package, as the package databases tell it (the manifests and bills of materials are made
from these)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mkosi.sandbox import Sandbox

if TYPE_CHECKING:
    from typing import Self

    from mkosi.context import Context


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstallerConfig:
    """The part of every package manager's configuration that the build gives it. Each installer's
    configuration adds what is its own (repositories, release, rpm database ...)."""

    root: Path
    workspace: Path                        # the installer's private directory (configuration, HOME)
    cache_dir: Optional[Path] = None       # persistent package cache (Cache=), or None
    with_docs: bool = False
    network: bool = True                   # WithNetwork=never, CacheOnly=always: no network at all
    refresh: bool = True                   # sync the repository metadata (CacheOnly=metadata: not)
    repository_directory: Optional[Path] = None
    # How commands run (ExtraSearchPaths=, a tools tree); the installer adds the root and its mounts.
    sandbox: Sandbox = Sandbox()

    @classmethod
    def for_build(cls, ctx: Context, **own: Any) -> Self:
        """The configuration for this build: the shared fields from the context, `own` for the rest."""
        shared: dict[str, Any] = {
            "root": ctx.root.absolute(), "workspace": ctx.workspace.absolute(),
            "cache_dir": ctx.package_cache.absolute() if ctx.package_cache else None,
            "with_docs": ctx.config.with_docs, "network": ctx.network, "refresh": ctx.refresh_metadata,
            "repository_directory": ctx.config.repository_directory, "sandbox": ctx.sandbox,
        }
        return cls(**{**shared, **own})


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
