"""Install openSUSE with the host's zypper driving rpm into the image root.

`zypper --root ROOT` with `--reposd-dir` pointing at .repo files generated in the workspace (plus
RepositoryDirectory=): the image does not get mkosi's repository definitions. zypp's configuration
comes from a generated zypp.conf (ZYPP_CONF): only required dependencies (solver.onlyRequires and
`--no-recommends`; WithRecommends=yes: `--recommends`) and rpm.install.excludedocs for WithDocs=no;
rpm's database path and
%_excludedocs come from a private HOME (see mkosi.installers.rpm). zypper keeps its cache inside
the root, so the package cache (Cache=, or a workspace directory) is bind-mounted on
ROOT/var/cache/zypp while it runs; the repositories have keeppackages=1 so downloaded packages
stay there. WithNetwork=never adds --no-refresh (metadata and packages must be in the cache).

Signatures: local (file://) repositories are not checked; for the others, zypper imports the key
each repository publishes (repodata/repomd.xml.key) with --gpg-auto-import-keys and checks
packages against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import CommandError, MkosiError
from mkosi.installers import rpm
from mkosi.installers.base import InstallerConfig, run_package_manager
from mkosi.installers.dnf import RpmRepo, repo_file_text, with_local_repo
from mkosi.run import require_tool
from mkosi.sandbox import Mount, Sandbox

# zypper exits with 107 when a package's scriptlet failed but the packages were installed.
ZYPPER_EXIT_INF_RPM_SCRIPT_FAILED = 107


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZypperConfig(InstallerConfig):
    repos: tuple[RpmRepo, ...]
    rpmdb: str = rpm.SYSIMAGE_RPMDB

    @property
    def conf_dir(self) -> Path:
        return self.workspace / "zypper"

    @property
    def home(self) -> Path:
        return self.conf_dir / "home"

    @property
    def cache(self) -> Path:
        return self.cache_dir / "zypp" if self.cache_dir else self.conf_dir / "cache"


def zypp_conf_text(cfg: ZypperConfig) -> str:
    return "\n".join([
        "# Written by mkosi.",
        "[main]",
        f"solver.onlyRequires = {'false' if cfg.with_recommends else 'true'}",
        f"rpm.install.excludedocs = {'no' if cfg.with_docs else 'yes'}",
        "download.use_deltarpm = false",
        "",
    ])


def reposd_dir(cfg: ZypperConfig) -> Path:
    return cfg.conf_dir / "repos.d"


def setup(cfg: ZypperConfig) -> None:
    d = reposd_dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.repo"):
        old.unlink()
    repos = with_local_repo(cfg.repos, cfg.local_repository)
    if repos:
        (d / "mkosi.repo").write_text(repo_file_text(repos, keep_packages=True))
    if cfg.repository_directory is not None:
        if not cfg.repository_directory.is_dir():
            raise MkosiError(f"repository directory {cfg.repository_directory} does not exist")
        # zypper reads one repository directory: the user's files are copied next to mkosi's.
        for p in sorted(cfg.repository_directory.glob("*.repo")):
            (d / p.name).write_bytes(p.read_bytes())
    (cfg.conf_dir / "zypp.conf").write_text(zypp_conf_text(cfg))
    rpm.write_macros_home(cfg.home, cfg.rpmdb, cfg.with_docs)


def zypper_env(cfg: ZypperConfig) -> dict[str, str]:
    # zypp's lock file goes below ZYPP_LOCKFILE_ROOT (the host's /run otherwise): one per image, so that
    # builds running side by side do not lock each other out; still wait for it rather than fail.
    return {"HOME": str(cfg.home), "ZYPP_CONF": str(cfg.conf_dir / "zypp.conf"),
            "ZYPP_LOCKFILE_ROOT": str(cfg.root), "ZYPP_LOCK_TIMEOUT": "300"}


def zypper_argv(cfg: ZypperConfig, command: str, packages: Sequence[str], *, offline: bool = False) -> list[str]:
    argv = ["zypper", "--root", str(cfg.root), "--reposd-dir", str(reposd_dir(cfg)), "--non-interactive"]
    if any(r.check_signatures() for r in cfg.repos):
        argv.append("--gpg-auto-import-keys")
    if offline:
        argv.append("--disable-repositories")
    elif not cfg.network or not cfg.refresh:
        argv.append("--no-refresh")
    argv.append(command)
    if command == "install":
        argv += ["--recommends" if cfg.with_recommends else "--no-recommends", "--download-in-advance"]
    argv += list(packages)
    return argv


def zypper_sandbox(cfg: ZypperConfig) -> Sandbox:
    """zypper on the host working on the root, with the package cache on ROOT/var/cache/zypp."""
    return cfg.sandbox.in_root(cfg.root).with_mounts(Mount(cfg.cache, str(cfg.root / "var/cache/zypp")))


def _run(cfg: ZypperConfig, command: str, packages: Sequence[str], *, offline: bool = False) -> None:
    sandbox = zypper_sandbox(cfg)
    require_tool("zypper", sandbox)
    setup(cfg)
    rpm.prepare_rpmdb(cfg.root, cfg.rpmdb)
    cfg.cache.mkdir(parents=True, exist_ok=True)
    try:
        run_package_manager("zypper", zypper_argv(cfg, command, packages, offline=offline), sandbox=sandbox,
                            env=zypper_env(cfg))
    except CommandError as e:
        if e.returncode != ZYPPER_EXIT_INF_RPM_SCRIPT_FAILED:
            raise
        log.warn("zypper installed the packages but a package scriptlet failed")
    finally:
        rpm.remove_paths(cfg.root, ["/run/zypp.pid"])


def install(cfg: ZypperConfig, packages: Sequence[str]) -> None:
    if not packages:
        raise MkosiError("no packages to install", hint="add some with Packages= or enable BasePackages=")
    _run(cfg, "install", packages)


def remove(cfg: ZypperConfig, packages: Sequence[str]) -> None:
    installed = {p.name for p in rpm.installed_packages(cfg.root)}
    wanted = [p for p in packages if p in installed]
    for p in packages:
        if p not in wanted:
            log.debug(f"not removing {p}: it is not installed")
    if wanted:
        _run(cfg, "remove", wanted, offline=True)


ZYPPER_STATE = ("/var/cache/zypp", "/var/lib/zypp", "/var/log/zypp", "/var/log/zypper.log", "/run/zypp.pid")


def zypper_in_root(root: Path) -> bool:
    return (root / "usr/bin/zypper").exists()


def clean_metadata(root: Path, force: bool) -> None:
    if force or not zypper_in_root(root):
        rpm.remove_paths(root, list(ZYPPER_STATE))
    rpm.clean_rpmdb(root, force)
