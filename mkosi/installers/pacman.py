"""Install Arch Linux with the host's pacman into the image root.

pacman runs with `--config` pointing at a pacman.conf generated in the workspace: RootDir and DBPath
are in the image, CacheDir is the package cache (Cache=, or the workspace), the log stays in the
workspace, GPGDir is a private keyring, and the repositories are the distribution's (core, extra)
plus Repositories= entries (`name::url`) plus an `Include =` line for each *.conf file of
RepositoryDirectory= (those files hold [repo] sections in pacman.conf syntax, SigLevel included).

Signatures: the default is `SigLevel = Required DatabaseOptional`, checked against a keyring made
with pacman-key from the host's Arch keyring (Debian package archlinux-keyring). A repository
whose URL is local (file://) gets `SigLevel = Never`: it is the user's own file system, and local
test repositories are normally unsigned. Anything else that should not be checked has to say so
itself in a RepositoryDirectory= file. When no repository needs the keyring, none is made.

WithDocs=no becomes NoExtract patterns. WithNetwork=never runs `pacman -S` without `-y`: the sync
databases of the previous (networked) build are kept in the package cache and copied into the root.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers import localrepo
from mkosi.installers.base import InstallerConfig, run_package_manager
from mkosi.run import find_tool, require_tool, run
from mkosi.sandbox import Sandbox

ARCH_KEYRING = Path("/usr/share/keyrings/archlinux.gpg")
DOCS_NOEXTRACT = ("usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/gtk-doc/*",
                  "usr/share/help/*")
PACMAN_ARCH = {"arm": "armv7h", "x86": "i686"}


@dataclasses.dataclass(frozen=True)
class PacmanRepo:
    name: str
    servers: tuple[str, ...]
    siglevel: Optional[str] = None   # None: Never for local URLs, the global default otherwise

    def effective_siglevel(self) -> Optional[str]:
        if self.siglevel is not None:
            return self.siglevel
        if self.servers and all(s.startswith("file:") for s in self.servers):
            return "Never"
        return None


def parse_repository(entry: str) -> PacmanRepo:
    """A Repositories= entry: `name::url`."""
    name, sep, url = entry.partition("::")
    if not sep or not name or not url:
        raise MkosiError(f"invalid Arch Linux repository '{entry}'",
                         hint="Arch repositories are given as NAME::URL, e.g. myrepo::https://myrepo.net")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise MkosiError(f"invalid repository name '{name}' in '{entry}'")
    return PacmanRepo(name=name, servers=(url,))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PacmanConfig(InstallerConfig):
    architecture: str
    repos: tuple[PacmanRepo, ...]

    @property
    def conf_dir(self) -> Path:
        return self.workspace / "pacman"

    @property
    def conf(self) -> Path:
        return self.conf_dir / "pacman.conf"

    @property
    def cache(self) -> Path:
        return self.cache_dir / "pacman" if self.cache_dir else self.conf_dir / "cache"

    @property
    def gpgdir(self) -> Path:
        return self.cache / "gnupg" if self.cache_dir else self.conf_dir / "gnupg"

    @property
    def dbpath(self) -> Path:
        return self.root / "var/lib/pacman"


def include_files(cfg: PacmanConfig) -> list[Path]:
    d = cfg.repository_directory
    if d is None:
        return []
    if not d.is_dir():
        raise MkosiError(f"repository directory {d} does not exist")
    return sorted(p.absolute() for p in d.glob("*.conf") if p.is_file())


def included_repos(path: Path) -> list[PacmanRepo]:
    """The [repo] sections of a RepositoryDirectory= file (servers and SigLevel; nested Includes
    count as servers that need signatures)."""
    repos: list[PacmanRepo] = []
    name: Optional[str] = None
    servers: list[str] = []
    siglevel: Optional[str] = None

    def flush() -> None:
        if name is not None and name != "options":
            repos.append(PacmanRepo(name=name, servers=tuple(servers), siglevel=siglevel))

    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            flush()
            name, servers, siglevel = line[1:-1], [], None
        elif "=" in line:
            key, _, value = (x.strip() for x in line.partition("="))
            if key == "Server":
                servers.append(value)
            elif key == "Include":
                servers.append("include:" + value)
            elif key == "SigLevel":
                siglevel = value
    flush()
    return repos


def needs_keyring(cfg: PacmanConfig) -> bool:
    repos = list(cfg.repos) + [r for p in include_files(cfg) for r in included_repos(p)]
    return any("Never" not in (r.effective_siglevel() or "") for r in repos)


def pacman_conf_text(cfg: PacmanConfig) -> str:
    arch = PACMAN_ARCH.get(cfg.architecture, cfg.architecture)
    lines = [
        "# Written by mkosi.",
        "[options]",
        f"RootDir = {cfg.root}",
        f"DBPath = {cfg.dbpath}/",
        f"CacheDir = {cfg.cache / 'pkg'}/",
        f"LogFile = {cfg.conf_dir / 'pacman.log'}",
        f"GPGDir = {cfg.gpgdir}/",
        f"HookDir = {cfg.root / 'etc/pacman.d/hooks'}/",
        f"Architecture = {arch}",
        "SigLevel = Required DatabaseOptional",
        "LocalFileSigLevel = Optional",
        "ParallelDownloads = 5",
    ]
    if not cfg.with_docs:
        lines.append("NoExtract = " + " ".join(DOCS_NOEXTRACT))
    if cfg.local_repository is not None:
        # pacman takes a package from the first repository that has it: the local packages come first.
        lines += ["", *localrepo.pacman_section(cfg.local_repository)]
    for r in cfg.repos:
        lines += ["", f"[{r.name}]"]
        sig = r.effective_siglevel()
        if sig:
            lines.append(f"SigLevel = {sig}")
        lines += [f"Server = {s}" for s in r.servers]
    for p in include_files(cfg):
        lines += ["", f"Include = {p}"]
    return "\n".join(lines) + "\n"


def pacman_argv(cfg: PacmanConfig, operation: Sequence[str], packages: Sequence[str]) -> list[str]:
    return ["pacman", "--config", str(cfg.conf), "--noconfirm", "--noprogressbar", *operation, *packages]


def install_argv(cfg: PacmanConfig, packages: Sequence[str]) -> list[str]:
    return pacman_argv(cfg, ["-Sy" if cfg.network and cfg.refresh else "-S", "--needed"], packages)


def setup_keyring(cfg: PacmanConfig) -> None:
    if (cfg.gpgdir / "pubring.gpg").exists() or (cfg.gpgdir / "pubring.kbx").exists():
        return
    if not ARCH_KEYRING.exists():
        raise MkosiError(f"the Arch Linux keyring {ARCH_KEYRING} is missing on this host",
                         hint="install it with: apt-get install archlinux-keyring")
    require_tool("pacman-key", cfg.sandbox)
    cfg.gpgdir.mkdir(parents=True, exist_ok=True)
    try:
        run(["pacman-key", "--config", cfg.conf, "--gpgdir", cfg.gpgdir, "--init"], sandbox=cfg.sandbox,
            capture=True)
        run(["pacman-key", "--config", cfg.conf, "--gpgdir", cfg.gpgdir, "--populate", "archlinux"],
            sandbox=cfg.sandbox, capture=True)
    finally:
        # pacman-key leaves a gpg-agent running for its home directory.
        if find_tool("gpgconf", cfg.sandbox):
            run(["gpgconf", "--homedir", cfg.gpgdir, "--kill", "gpg-agent"], sandbox=cfg.sandbox, check=False,
                capture=True)


def _sync_cache(cfg: PacmanConfig) -> Path:
    return cfg.cache / "sync"


def setup(cfg: PacmanConfig) -> None:
    cfg.conf_dir.mkdir(parents=True, exist_ok=True)
    (cfg.cache / "pkg").mkdir(parents=True, exist_ok=True)
    (cfg.dbpath / "sync").mkdir(parents=True, exist_ok=True)
    cfg.conf.write_text(pacman_conf_text(cfg))
    if needs_keyring(cfg):
        setup_keyring(cfg)
    if not cfg.network or not cfg.refresh:
        seeded = 0
        if _sync_cache(cfg).is_dir():
            for db in _sync_cache(cfg).glob("*.db"):
                shutil.copy2(db, cfg.dbpath / "sync" / db.name)
                seeded += 1
        if not seeded and not any((cfg.dbpath / "sync").glob("*.db")):
            raise MkosiError(("WithNetwork=never" if not cfg.network else "CacheOnly=metadata") +
                             " but no package databases are cached",
                             hint="build once with network access and a Cache= directory")
    if cfg.local_repository is not None:
        # Without -y pacman reads only the sync databases that are there: put the local one there itself.
        shutil.copyfile(cfg.local_repository / f"{localrepo.REPO_NAME}.db.tar.gz",
                        cfg.dbpath / "sync" / f"{localrepo.REPO_NAME}.db")


def _save_sync_dbs(cfg: PacmanConfig) -> None:
    if cfg.cache_dir is None:
        return
    dest = _sync_cache(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    for db in (cfg.dbpath / "sync").glob("*.db"):
        if db.name != f"{localrepo.REPO_NAME}.db":   # the build's own, made afresh each time
            shutil.copy2(db, dest / db.name)


def pacman_sandbox(cfg: PacmanConfig) -> Sandbox:
    """pacman on the host working on the root (--root), with /proc, /sys and /dev there for the hooks."""
    return cfg.sandbox.in_root(cfg.root)


def _run(cfg: PacmanConfig, argv: list[str]) -> None:
    sandbox = pacman_sandbox(cfg)
    require_tool("pacman", sandbox)
    run_package_manager("pacman", argv, sandbox=sandbox)


def install(cfg: PacmanConfig, packages: Sequence[str]) -> None:
    if not packages:
        raise MkosiError("no packages to install", hint="add some with Packages= or enable BasePackages=")
    setup(cfg)
    _run(cfg, install_argv(cfg, packages))
    if cfg.network and cfg.refresh:
        _save_sync_dbs(cfg)


def remove(cfg: PacmanConfig, packages: Sequence[str]) -> None:
    """Remove packages and everything that depends on them (-Rc), without .pacsave backups (-n)."""
    installed = {p.name for p in installed_packages(cfg.root)}
    wanted = [p for p in packages if p in installed]
    for p in packages:
        if p not in wanted:
            log.debug(f"not removing {p}: it is not installed")
    if not wanted:
        return
    cfg.conf_dir.mkdir(parents=True, exist_ok=True)
    cfg.conf.write_text(pacman_conf_text(cfg))
    _run(cfg, pacman_argv(cfg, ["-Rcn"], wanted))


# ---------------------------------------------------------------------------------------------------
# The local database


@dataclasses.dataclass(frozen=True)
class PacmanPackage:
    name: str
    version: str
    architecture: str
    size: int
    base: Optional[str]
    license: Optional[str] = None   # the %LICENSE% lines, all of which apply


def parse_desc(text: str) -> dict[str, list[str]]:
    """A pacman database `desc` file: %FIELD% headers, each followed by value lines, blank-separated."""
    fields: dict[str, list[str]] = {}
    current: Optional[str] = None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%") and len(line) > 2:
            current = line[1:-1]
            fields[current] = []
        elif not line:
            current = None
        elif current is not None:
            fields[current].append(line)
    return fields


def installed_packages(root: Path) -> list[PacmanPackage]:
    local = root / "var/lib/pacman/local"
    if not local.is_dir():
        return []
    pkgs = []
    for desc in sorted(local.glob("*/desc")):
        f = parse_desc(desc.read_text(errors="replace"))

        def one(key: str, f: dict[str, list[str]] = f) -> str:
            return f.get(key, [""])[0] if f.get(key) else ""

        if not one("NAME"):
            continue
        size = one("SIZE")
        licenses = [v.strip() for v in f.get("LICENSE", []) if v.strip()]
        pkgs.append(PacmanPackage(name=one("NAME"), version=one("VERSION"), architecture=one("ARCH"),
                                  size=int(size) if size.isdigit() else 0, base=one("BASE") or None,
                                  license=" AND ".join(f"({x})" if " " in x and len(licenses) > 1 else x
                                                       for x in licenses) or None))
    return sorted(pkgs, key=lambda p: p.name)


def _saved_list(workspace: Path) -> Path:
    return workspace / "pacman-packages.json"


def save_package_list(root: Path, workspace: Path) -> None:
    _saved_list(workspace).write_text(json.dumps([dataclasses.asdict(p) for p in installed_packages(root)]))


def manifest_packages(root: Path, workspace: Path) -> list[PacmanPackage]:
    if not (root / "var/lib/pacman/local").is_dir() and _saved_list(workspace).exists():
        return [PacmanPackage(**d) for d in json.loads(_saved_list(workspace).read_text())]
    return installed_packages(root)


def pacman_in_root(root: Path) -> bool:
    return (root / "usr/bin/pacman").exists()


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_metadata(root: Path, force: bool) -> None:
    """Sync databases, downloaded packages and the log always; the local database only when pacman is
    not in the image (or when forced)."""
    for rel in ("var/lib/pacman/sync", "var/cache/pacman/pkg", "var/log/pacman.log"):
        _rm(root / rel)
    if force or not pacman_in_root(root):
        _rm(root / "var/lib/pacman")


def write_mirrorlist(root: Path, server: str) -> None:
    """Give the image's own pacman a server if its mirrorlist has none enabled."""
    mirrorlist = root / "etc/pacman.d/mirrorlist"
    if not mirrorlist.is_file():
        return
    text = mirrorlist.read_text()
    if any(line.strip().startswith("Server") for line in text.splitlines()):
        return
    mirrorlist.write_text(f"# Added by mkosi.\nServer = {server}\n\n{text}")
