"""Mutable per-build state: where the workspace and image root are, which phase runs."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Optional

from mkosi.config.enums import CacheOnly, WithNetwork
from mkosi.config.settings import Args, Config
from mkosi.proxy import Proxy
from mkosi.sandbox import Sandbox


class Phase(enum.Enum):
    build = "build"   # the development image, with BuildPackages=, where mkosi.build runs
    final = "final"   # the image that is shipped


@dataclasses.dataclass
class Context:
    args: Args
    config: Config
    workspace: Path
    phase: Phase
    root: Path
    package_cache: Optional[Path]
    staging: Path                      # finished artifacts wait here until the build succeeded
    # Paths outside the workspace to remove when the build ends (e.g. a subvolume being made in place).
    cleanup: list[Path] = dataclasses.field(default_factory=list)
    # Artifacts made outside the staging directory, by artifact key (see mkosi/output/artifacts.py).
    placed: dict[str, Path] = dataclasses.field(default_factory=dict)
    # Where and how the build's commands run (ExtraSearchPaths=, later a tools tree); made once from
    # the configuration. Package managers, scripts and containers derive theirs from it.
    sandbox: Sandbox = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        # Every command of the build learns of the proxy from the usual variables (http_proxy, ...).
        sandbox = Sandbox.for_config(self.config)
        self.sandbox = sandbox.but(env={**sandbox.environment, **self.proxy_environment})

    @property
    def proxy(self) -> Optional[Proxy]:
        return Proxy.from_config(self.config)

    @property
    def proxy_environment(self) -> dict[str, str]:
        proxy = self.proxy
        return proxy.environment() if proxy is not None else {}

    @property
    def network(self) -> bool:
        """Whether the package manager may use the network (WithNetwork=never, CacheOnly=always: not)."""
        return self.config.with_network != WithNetwork.never and self.config.cache_only != CacheOnly.always

    @property
    def refresh_metadata(self) -> bool:
        """Whether the repository metadata is synced (CacheOnly=metadata: the cached metadata is used)."""
        return self.network and self.config.cache_only != CacheOnly.metadata

    @property
    def package_dir(self) -> Path:
        """$PACKAGEDIR: the local packages of PackageDirectories= and what scripts add (shared by both
        phases; filled by localrepo.gather() when the build starts)."""
        return self.workspace / "packages"

    def dir(self, name: str) -> Path:
        path = self.workspace / name
        path.mkdir(parents=True, exist_ok=True)
        return path
