"""What every installer shares: the fields of its configuration that come from the build (where it
installs, its private directory, the package cache, the network, the sandbox), and the record of one
installed package, as the package databases tell it (the manifests and bills of materials are made
from these)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from mkosi import log
from mkosi.errors import CommandError
from mkosi.progress import PackageProgress
from mkosi.proxy import Proxy
from mkosi.run import run, run_streaming
from mkosi.sandbox import PathString, Sandbox

if TYPE_CHECKING:
    from typing import Self

    from mkosi.context import Context


_warned: list[bool] = []


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstallerConfig:
    """The part of every package manager's configuration that the build gives it. Each installer's
    configuration adds what is its own (repositories, release, rpm database ...)."""

    root: Path
    workspace: Path                        # the installer's private directory (configuration, HOME)
    cache_dir: Optional[Path] = None       # persistent package cache (Cache=), or None
    with_docs: bool = False
    with_recommends: bool = False          # WithRecommends=: weak dependencies too, where the manager has them
    network: bool = True                   # WithNetwork=never, CacheOnly=always: no network at all
    refresh: bool = True                   # sync the repository metadata (CacheOnly=metadata: not)
    repository_directory: Optional[Path] = None
    # The build's indexed local packages (PackageDirectories=, $PACKAGEDIR, see localrepo.py), or None.
    local_repository: Optional[Path] = None
    # How commands run (ExtraSearchPaths=, a tools tree); the installer adds the root and its mounts. In a
    # build its variables include the proxy's (http_proxy, ...).
    sandbox: Sandbox = Sandbox()
    # ProxyUrl= and the rest, for the installers that configure a proxy explicitly (apt, dnf).
    proxy: Optional[Proxy] = None
    # Whether the package manager is given ProxyPeerCertificate=, ProxyClientCertificate= and ProxyClientKey=.
    proxy_certificates: ClassVar[bool] = False

    @classmethod
    def for_build(cls, ctx: Context, **own: Any) -> Self:
        """The configuration for this build: the shared fields from the context, `own` for the rest."""
        shared: dict[str, Any] = {
            "root": ctx.root.absolute(), "workspace": ctx.workspace.absolute(),
            "cache_dir": ctx.package_cache.absolute() if ctx.package_cache else None,
            "with_docs": ctx.config.with_docs,
            "with_recommends": ctx.config.with_recommends, "network": ctx.network, "refresh": ctx.refresh_metadata,
            "repository_directory": ctx.config.repository_directory, "sandbox": ctx.sandbox,
            "proxy": ctx.proxy,
        }
        cfg = cls(**{**shared, **own})
        cfg.warn_unused_proxy_certificates()
        return cfg

    def warn_unused_proxy_certificates(self) -> None:
        """Once per run: the proxy's certificates are set, but this package manager takes none."""
        if self.proxy is not None and self.proxy.has_certificates and not self.proxy_certificates \
                and not _warned:
            _warned.append(True)
            log.warn("ProxyPeerCertificate=, ProxyClientCertificate= and ProxyClientKey= are only used by dnf; "
                     "this image's package manager does not get them")


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


def run_package_manager(tool: str, argv: Sequence[PathString], *, sandbox: Sandbox,
                        env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run dnf, zypper, pacman or emerge (`tool` names its line formats in mkosi.progress) with one progress
    line made of its per-package lines instead of its whole output; what it writes to stderr is shown as it
    comes. A failure raises CommandError with the last lines it wrote. With --debug its output is shown as
    it is."""
    if log.debug_enabled():
        return run(argv, sandbox=sandbox, env=env)
    with log.progress() as renderer:
        progress = PackageProgress(renderer, tool)

        def stderr_line(line: str) -> None:
            if line.strip():
                renderer.above(line.rstrip("\r"))

        proc = run_streaming(argv, sandbox=sandbox, env=env, on_stdout=progress.stdout_line, on_stderr=stderr_line)
    if proc.returncode != 0:
        raise CommandError([os.fspath(a) for a in argv], proc.returncode, f"{proc.stdout}\n{proc.stderr}")
    return proc
