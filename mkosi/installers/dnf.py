"""Install RPM distributions with the host's dnf driving rpm into the image root.

Every dnf run is isolated from the host: `--config` points at a generated dnf.conf, `reposdir` at
a generated directory in the workspace (plus RepositoryDirectory=, or the host's /etc/yum.repos.d
with UseHostRepositories=), plugins are off, and rpm's macros come from a private HOME (see
mkosi.installers.rpm). dnf insists on keeping its cache inside the install root, so the package
cache (Cache=, or a workspace directory when there is none) is bind-mounted on ROOT/var/cache/dnf
while dnf runs; keepcache=1 leaves the downloaded packages there for the next build.

Options: no weak dependencies unless WithRecommends=yes (install_weak_deps), `tsflags=nodocs` for WithDocs=no,
`-C` (cache only) for WithNetwork=never, ten parallel downloads (max_parallel_downloads; dnf's default
is 3). Signatures are checked (gpgcheck=1) for every repository except those whose URLs are all local
(file://), which are trusted as part of the host's own file system. /proc, /sys and /dev are mounted in
the root while rpm's scriptlets run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers import localrepo, rpm
from mkosi.installers.base import InstallerConfig, run_package_manager
from mkosi.run import require_tool
from mkosi.sandbox import Mount, Sandbox

HOST_REPOSDIRS = ("/etc/yum.repos.d", "/etc/distro.repos.d")


@dataclasses.dataclass(frozen=True)
class RpmRepo:
    id: str
    name: str
    baseurl: tuple[str, ...] = ()
    mirrorlist: Optional[str] = None
    metalink: Optional[str] = None
    gpgkeys: tuple[str, ...] = ()
    gpgcheck: Optional[bool] = None   # None: check unless every URL is local
    enabled: bool = True
    priority: Optional[int] = None    # dnf's and zypper's: the lower, the more preferred (default 99)
    metadata_expire: Optional[str] = None

    def urls(self) -> list[str]:
        return [u for u in (*self.baseurl, self.mirrorlist, self.metalink) if u]

    def check_signatures(self) -> bool:
        if self.gpgcheck is not None:
            return self.gpgcheck
        return not all(rpm.is_local_url(u) for u in self.urls())

    def summary(self) -> str:
        """One line for `mkosi summary`."""
        return " ".join(self.urls())


def repo_file_text(repos: Sequence[RpmRepo], *, keep_packages: bool = False) -> str:
    """A .repo file (dnf's and zypper's format) defining the repositories."""
    out = ["# Written by mkosi."]
    for r in repos:
        out += ["", f"[{r.id}]", f"name={r.name}"]
        if r.baseurl:
            out.append("baseurl=" + "\n        ".join(r.baseurl))
        if r.mirrorlist:
            out.append(f"mirrorlist={r.mirrorlist}")
        if r.metalink:
            out.append(f"metalink={r.metalink}")
        out.append(f"enabled={int(r.enabled)}")
        if r.priority is not None:
            out.append(f"priority={r.priority}")
        if r.metadata_expire is not None:
            out.append(f"metadata_expire={r.metadata_expire}")
        check = r.check_signatures()
        out.append(f"gpgcheck={int(check)}")
        if check and r.gpgkeys:
            out.append("gpgkey=" + "\n       ".join(r.gpgkeys))
        if keep_packages:
            out.append("keeppackages=1")
        out.append("autorefresh=1" if keep_packages else "skip_if_unavailable=0")
    return "\n".join(out) + "\n"


def url_repos(urls: Sequence[str], prefix: str = "mkosi-extra") -> list[RpmRepo]:
    """Repositories= entries that are URLs, one repository each."""
    return [RpmRepo(id=f"{prefix}-{i}", name=f"Extra repository {u}", baseurl=(u,))
            for i, u in enumerate(urls, start=1)]


def local_repo(repo: Path) -> RpmRepo:
    """The build's local packages (PackageDirectories=): unsigned, preferred, always read afresh."""
    return RpmRepo(id=localrepo.REPO_NAME, name="Local packages (PackageDirectories=)",
                   baseurl=(f"file://{repo.absolute()}",), gpgcheck=False, priority=localrepo.RPM_PRIORITY,
                   metadata_expire="0")


def with_local_repo(repos: Sequence[RpmRepo], repo: Optional[Path]) -> tuple[RpmRepo, ...]:
    return (local_repo(repo), *repos) if repo is not None else tuple(repos)


def is_url(entry: str) -> bool:
    return "://" in entry or entry.startswith("/")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DnfConfig(InstallerConfig):
    """The workspace holds dnf.conf, repos.d and HOME."""

    release: str
    architecture: str                   # the kernel's name (x86_64, aarch64, ...)
    repos: tuple[RpmRepo, ...]
    use_host_repositories: bool = False
    enable_repos: tuple[str, ...] = ()  # Repositories= entries that name repositories (IDs), not URLs
    rpmdb: str = rpm.LEGACY_RPMDB
    host_architecture: str = ""
    executable: str = "dnf"
    distribution: str = "fedora"
    key_check: bool = True              # RepositoryKeyCheck=no: install without checking signatures
    proxy_certificates: ClassVar[bool] = True

    @property
    def conf_dir(self) -> Path:
        return self.workspace / "dnf"

    @property
    def home(self) -> Path:
        return self.workspace / "dnf/home"

    @property
    def cache(self) -> Path:
        return self.cache_dir / "dnf" if self.cache_dir else self.workspace / "dnf/cache"


def reposdirs(cfg: DnfConfig) -> list[Path]:
    dirs = [cfg.conf_dir / "repos.d"]
    if cfg.use_host_repositories:
        dirs = [Path(d) for d in HOST_REPOSDIRS if Path(d).is_dir()]
        if not dirs:
            raise MkosiError("UseHostRepositories=yes but the host has no /etc/yum.repos.d",
                             hint="define the repositories with Repositories= or RepositoryDirectory= instead")
        dirs.append(cfg.conf_dir / "repos.d")  # Repositories= URLs, if any
    if cfg.repository_directory is not None:
        if not cfg.repository_directory.is_dir():
            raise MkosiError(f"repository directory {cfg.repository_directory} does not exist")
        dirs.append(cfg.repository_directory.absolute())
    return dirs


def dnf_argv(cfg: DnfConfig, command: str, packages: Sequence[str], *, offline: bool = False) -> list[str]:
    """The dnf command line (without the environment, see `dnf_env`)."""
    argv = [
        cfg.executable,
        f"--installroot={cfg.root}",
        f"--config={cfg.conf_dir / 'dnf.conf'}",
        "--setopt=reposdir=" + ",".join(str(d) for d in reposdirs(cfg)),
        f"--releasever={cfg.release}",
        "--assumeyes",
        "--noplugins",
        "--setopt=keepcache=1",
        f"--setopt=install_weak_deps={int(cfg.with_recommends)}",
        "--setopt=check_config_file_age=0",
        "--setopt=clean_requirements_on_remove=0",
        # dnf fetches three packages at a time by default; a build downloads hundreds.
        "--setopt=max_parallel_downloads=10",
    ]
    arch = rpm.dnf_arch(cfg.architecture)
    if cfg.host_architecture and cfg.architecture != cfg.host_architecture:
        argv.append(f"--forcearch={arch}")
    if not cfg.with_docs:
        argv.append("--setopt=tsflags=nodocs")
    if not cfg.key_check:
        argv.append("--nogpgcheck")
    ids = list(cfg.enable_repos)
    if cfg.use_host_repositories and ids:
        # Only the named host repositories, plus the ones mkosi defined (Repositories= URLs).
        ours = with_local_repo(cfg.repos, cfg.local_repository)
        argv += ["--disablerepo=*", *(f"--enablerepo={i}" for i in ids), *(f"--enablerepo={r.id}" for r in ours)]
    else:
        argv += [f"--enablerepo={i}" for i in ids]
    if offline:
        argv.append("--disablerepo=*")
    elif not cfg.network:
        argv.append("--cacheonly")
    elif not cfg.refresh:
        argv.append("--setopt=metadata_expire=never")  # cached metadata is used; packages may download
    argv += [command, *packages]
    return argv


def dnf_env(cfg: DnfConfig) -> dict[str, str]:
    return {"HOME": str(cfg.home)}


def dnf_conf_text(cfg: DnfConfig) -> str:
    """dnf.conf: empty but for the proxy (its URL may hold a password and its key is a secret: they stay
    out of the command line and so out of the log)."""
    text = "# Written by mkosi; the options are passed with --setopt= so that they show in the log,\n" \
           "# but for the proxy's.\n[main]\n"
    options = cfg.proxy.dnf_options() if cfg.proxy is not None else {}
    return text + "".join(f"{k}={v}\n" for k, v in options.items())


def setup(cfg: DnfConfig) -> None:
    """Write dnf.conf, the repository file and rpm's macros into the workspace."""
    repos_d = cfg.conf_dir / "repos.d"
    repos_d.mkdir(parents=True, exist_ok=True)
    conf = cfg.conf_dir / "dnf.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(dnf_conf_text(cfg))
    repos = list(with_local_repo(cfg.repos, cfg.local_repository))
    if repos:
        (repos_d / "mkosi.repo").write_text(repo_file_text(repos))
    for r in repos:
        if r.check_signatures() and not r.gpgkeys:
            log.warn(f"repository {r.id} has no signing key configured: dnf will refuse unsigned or "
                     "unknown packages from it")
    rpm.write_macros_home(cfg.home, cfg.rpmdb, cfg.with_docs)


def dnf_sandbox(cfg: DnfConfig) -> Sandbox:
    """dnf on the host working on the root: /proc, /sys, /dev there for the scriptlets, the package
    cache on ROOT/var/cache/dnf."""
    return cfg.sandbox.in_root(cfg.root).with_mounts(Mount(cfg.cache, str(cfg.root / "var/cache/dnf")))


def _run(cfg: DnfConfig, command: str, packages: Sequence[str], *, offline: bool = False) -> None:
    sandbox = dnf_sandbox(cfg)
    require_tool(cfg.executable, sandbox)
    setup(cfg)
    rpm.prepare_rpmdb(cfg.root, cfg.rpmdb)
    cfg.cache.mkdir(parents=True, exist_ok=True)
    run_package_manager("dnf", dnf_argv(cfg, command, packages, offline=offline), sandbox=sandbox, env=dnf_env(cfg))


def install(cfg: DnfConfig, packages: Sequence[str]) -> None:
    if not packages:
        raise MkosiError("no packages to install", hint="add some with Packages= or enable BasePackages=")
    _run(cfg, "install", packages)


def remove(cfg: DnfConfig, packages: Sequence[str]) -> None:
    """Remove packages (and what requires them); no repository is read."""
    installed = {p.name for p in rpm.installed_packages(cfg.root)}
    wanted = [p for p in packages if p in installed or any(c in p for c in "*?[")]
    for p in packages:
        if p not in wanted:
            log.debug(f"not removing {p}: it is not installed")
    if wanted:
        _run(cfg, "remove", wanted, offline=True)


# State dnf leaves in the root: its history database, caches and logs.
DNF_STATE = ("/var/lib/dnf", "/var/cache/dnf", "/var/log/dnf.log", "/var/log/dnf.librepo.log",
             "/var/log/dnf.rpm.log", "/var/log/hawkey.log", "/var/log/dnf5.log", "/var/lib/tdnf",
             "/var/cache/tdnf", "/var/cache/yum", "/var/lib/yum")


def dnf_in_root(root: Path) -> bool:
    return any((root / "usr/bin" / exe).exists() for exe in ("dnf", "dnf5", "dnf-3", "yum", "tdnf"))


def clean_metadata(root: Path, force: bool) -> None:
    if force or not dnf_in_root(root):
        rpm.remove_paths(root, list(DNF_STATE))
    rpm.clean_rpmdb(root, force)
