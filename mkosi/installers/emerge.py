"""Install Gentoo: a stage3 tarball unpacked into the root, then the root's own emerge.

The host needs no portage (Debian does not package it): everything Gentoo-specific runs inside the
stage3 with chroot. The flow:

1. Download MIRROR/releases/ARCH/autobuilds/latest-stage3-FLAVOUR.txt (PGP clear-signed text naming
   the newest stage3 as `DIR/stage3-....tar.xz SIZE`), then that tarball and its .DIGESTS file,
   and check the size and every SHA-512/SHA-256/BLAKE2b digest listed for it. When the host has
   the Gentoo release key (GENTOO_KEY, or $MKOSI_GENTOO_KEY) the .asc signature is checked too,
   otherwise a warning says that only the digests were checked.
2. Unpack the stage3 into the root (tar -xp --numeric-owner --xattrs), keeping files that a
   skeleton tree put there first.
3. Unpack the ebuild repository snapshot (MIRROR/snapshots/gentoo-latest.tar.xz, checked against
   the checksum file published next to it, .sha512sum or .md5sum, when there is one) into
   /var/db/repos/gentoo, unless the stage3 already brought one.
4. Write /etc/portage/make.conf additions (mirror, caches, sandbox features that need
   namespaces off, INSTALL_MASK for WithDocs=no) and run `emerge --noreplace PACKAGES` in a chroot
   with /proc, /sys, /dev mounted, distfiles and binary packages bind-mounted from the package cache.

Stage3 tarballs and snapshots are kept in the package cache; WithNetwork=never uses the newest
cached ones and runs emerge with --usepkgonly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.base import InstallerConfig, run_package_manager
from mkosi.installers.rpm import remove_paths
from mkosi.proxy import Proxy
from mkosi.run import find_tool, run
from mkosi.sandbox import Mount, Sandbox

# Kernel architecture -> (directory under releases/, name in the stage3 file names).
GENTOO_ARCH: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", "amd64"),
    "aarch64": ("arm64", "arm64"),
    "x86": ("x86", "i686"),
    "ppc64le": ("ppc", "ppc64le"),
    "riscv64": ("riscv", "rv64_lp64d"),
}
GENTOO_KEY = Path("/usr/share/openpgp-keys/gentoo-release.asc")
STAGE3_FLAVOUR = "systemd"
HASHES = {"SHA512": "sha512", "SHA256": "sha256", "BLAKE2B": "blake2b"}
DIGEST_LENGTHS = {"sha512": 128, "sha256": 64, "blake2b": 128}


def gentoo_arch(arch: str) -> tuple[str, str]:
    try:
        return GENTOO_ARCH[arch]
    except KeyError:
        raise MkosiError(f"no Gentoo stage3 is known for architecture {arch}",
                         hint="supported: " + ", ".join(sorted(GENTOO_ARCH)))


def autobuilds_url(mirror: str, arch: str) -> str:
    return f"{mirror.rstrip('/')}/releases/{gentoo_arch(arch)[0]}/autobuilds"


def latest_url(mirror: str, arch: str, flavour: str = STAGE3_FLAVOUR) -> str:
    return f"{autobuilds_url(mirror, arch)}/latest-stage3-{gentoo_arch(arch)[1]}-{flavour}.txt"


def snapshot_url(mirror: str) -> str:
    return f"{mirror.rstrip('/')}/snapshots/gentoo-latest.tar.xz"


def parse_latest(text: str) -> tuple[str, int]:
    """The stage3 path (relative to autobuilds/) and size named by a latest-stage3-*.txt file."""
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\S+\.tar\.(?:xz|bz2|gz|zst))\s+(\d+)\s*", line)
        if m and not line.startswith("#"):
            return m.group(1), int(m.group(2))
    raise MkosiError("the latest-stage3 file names no stage3 tarball")


def parse_digests(text: str, filename: str) -> dict[str, str]:
    """Digests listed for `filename` in a .DIGESTS/.sha256 file: {hashlib name: hex}."""
    result: dict[str, str] = {}
    algo: Optional[str] = None
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"#\s*(\w+)\s+HASH", line, re.IGNORECASE)
        if m:
            algo = HASHES.get(m.group(1).upper())
            continue
        if not line or line.startswith(("#", "-----", "Hash:")):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1].lstrip("*").split("/")[-1] != filename:
            continue
        digest = parts[0].lower()
        # Trust the section header only if the digest has that algorithm's length.
        name = algo if algo and len(digest) == DIGEST_LENGTHS[algo] else {64: "sha256", 128: "sha512"}.get(len(digest))
        if name and re.fullmatch(r"[0-9a-f]+", digest):
            result.setdefault(name, digest)
    return result


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(4 * 1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_digests(path: Path, digests: dict[str, str], size: Optional[int] = None) -> None:
    if size is not None and path.stat().st_size != size:
        raise MkosiError(f"{path.name} has {path.stat().st_size} bytes, the mirror announced {size}")
    if not digests:
        raise MkosiError(f"no digest of {path.name} was found to check it against")
    for algo, expected in digests.items():
        actual = file_digest(path, algo)
        if actual != expected:
            raise MkosiError(f"{algo} digest mismatch for {path.name}: expected {expected}, got {actual}")


def url_opener(url: str, proxy: Optional[Proxy]) -> urllib.request.OpenerDirector:
    """What fetches `url`: through ProxyUrl= unless ProxyExclude= names its host; without proxy settings,
    urllib's default (the proxy variables of mkosi's environment)."""
    proxies = proxy.urllib_proxies(url) if proxy is not None else None
    if proxies is None:
        return urllib.request.build_opener()
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies))


def fetch(url: str, dest: Path, proxy: Optional[Proxy] = None) -> Path:
    """Download url (http(s):// or file://) to dest, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.debug(f"fetching {url}")
    try:
        with url_opener(url, proxy).open(url, timeout=60) as resp, tmp.open("wb") as f:
            shutil.copyfileobj(resp, f, 1024 * 1024)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise MkosiError(f"could not download {url}: {getattr(e, 'reason', e)}")
    tmp.replace(dest)
    return dest


def fetch_text(url: str, proxy: Optional[Proxy] = None) -> str:
    with tempfile.TemporaryDirectory(prefix="mkosi-fetch-") as d:
        return fetch(url, Path(d) / "file", proxy).read_text(errors="replace")


def verify_signature(path: Path, signature: Path, key: Path) -> None:
    """Check a detached or clear signature with a throw-away keyring holding only `key`."""
    with tempfile.TemporaryDirectory(prefix="mkosi-gpg-") as home:
        try:
            run(["gpg", "--homedir", home, "--batch", "--quiet", "--import", key], capture=True)
            run(["gpg", "--homedir", home, "--batch", "--verify", signature, path], capture=True)
        finally:
            if find_tool("gpgconf"):
                run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False, capture=True)


def release_key() -> Optional[Path]:

    env = os.environ.get("MKOSI_GENTOO_KEY")
    for p in ([Path(env)] if env else []) + [GENTOO_KEY]:
        if p.is_file():
            return p
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmergeConfig(InstallerConfig):
    mirror: str
    architecture: str

    @property
    def cache(self) -> Path:
        return self.cache_dir / "gentoo" if self.cache_dir else self.workspace / "gentoo"


def _cached_newest(directory: Path, pattern: str) -> Optional[Path]:
    found = sorted(p for p in directory.glob(pattern) if not p.name.endswith((".part", ".DIGESTS", ".asc")))
    return found[-1] if found else None


def fetch_stage3(cfg: EmergeConfig) -> Path:
    """The verified stage3 tarball in the cache, downloading it when needed."""
    stages = cfg.cache / "stage3"
    stages.mkdir(parents=True, exist_ok=True)
    flavour = f"stage3-{gentoo_arch(cfg.architecture)[1]}-{STAGE3_FLAVOUR}-*.tar.*"
    if not cfg.network:
        cached = _cached_newest(stages, flavour)
        if cached is None:
            raise MkosiError("WithNetwork=never but no Gentoo stage3 is cached",
                             hint="build once with network access and a Cache= directory")
        return cached

    text = fetch_text(latest_url(cfg.mirror, cfg.architecture), cfg.proxy)
    rel, size = parse_latest(text)
    base = autobuilds_url(cfg.mirror, cfg.architecture)
    tarball = stages / Path(rel).name
    digests_file = stages / (tarball.name + ".DIGESTS")
    fetch(f"{base}/{rel}.DIGESTS", digests_file, cfg.proxy)
    digests = parse_digests(digests_file.read_text(errors="replace"), tarball.name)
    if tarball.exists():
        try:
            verify_digests(tarball, digests, size)
            log.info(f"Using the cached {tarball.name}")
            return tarball
        except MkosiError:
            tarball.unlink()
    with log.step(f"Downloading {tarball.name} ({size // (1024 * 1024)} MiB)"):
        fetch(f"{base}/{rel}", tarball, cfg.proxy)
    try:
        verify_digests(tarball, digests, size)
        key = release_key()
        if key is not None:
            signature = fetch(f"{base}/{rel}.asc", stages / (tarball.name + ".asc"), cfg.proxy)
            verify_signature(tarball, signature, key)
        else:
            log.warn(f"the Gentoo release key ({GENTOO_KEY}) is not on this host: "
                     f"{tarball.name} was checked against the mirror's digests only")
    except MkosiError:
        tarball.unlink(missing_ok=True)
        raise
    for old in stages.glob(flavour):
        if old != tarball and not old.name.startswith(tarball.name):
            old.unlink()
    return tarball


def fetch_snapshot(cfg: EmergeConfig) -> Path:
    snapshots = cfg.cache / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    dest = snapshots / "gentoo-latest.tar.xz"
    if not cfg.network:
        if not dest.exists():
            raise MkosiError("WithNetwork=never but no Gentoo repository snapshot is cached",
                             hint="build once with network access and a Cache= directory")
        return dest
    url = snapshot_url(cfg.mirror)
    fetch(url, dest, cfg.proxy)
    # The snapshot directory publishes checksum files next to each tarball.
    for suffix in (".sha512sum", ".md5sum"):
        try:
            text = fetch_text(url + suffix, cfg.proxy)
        except MkosiError:
            continue
        digests = parse_digests(text, dest.name)
        if suffix == ".md5sum" and not digests:
            m = re.search(r"\b([0-9a-f]{32})\b", text)
            digests = {"md5": m.group(1)} if m else {}
        if digests:
            verify_digests(dest, digests)
            break
    else:
        log.warn(f"no checksum was published for {url}; it was not verified")
    return dest


def unpack(tarball: Path, dest: Path, strip: int = 0, keep_existing: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    argv: list[str | Path] = ["tar", "--extract", "--preserve-permissions", "--numeric-owner", "--xattrs",
                              "--xattrs-include=*.*", f"--file={tarball}", f"--directory={dest}"]
    if keep_existing:
        argv.append("--skip-old-files")  # files of SkeletonTree= win over the stage3's
    if strip:
        argv.append(f"--strip-components={strip}")
    run(argv)


def make_conf_text(cfg: EmergeConfig) -> str:
    features = ["-sandbox", "-usersandbox", "-ipc-sandbox", "-network-sandbox", "-pid-sandbox",
                "parallel-install"]
    lines = ["", "# Added by mkosi.",
             f'GENTOO_MIRRORS="{cfg.mirror.rstrip("/")}"',
             'DISTDIR="/var/cache/distfiles"',
             'PKGDIR="/var/cache/binpkgs"']
    if not cfg.with_docs:
        features += ["nodoc", "noman", "noinfo"]
        lines.append('INSTALL_MASK="${INSTALL_MASK} /usr/share/doc /usr/share/man /usr/share/info '
                     '/usr/share/gtk-doc"')
    lines.insert(2, f'FEATURES="${{FEATURES}} {" ".join(features)}"')
    return "\n".join(lines) + "\n"


def emerge_argv(cfg: EmergeConfig, packages: Sequence[str]) -> list[str]:
    argv = ["emerge", "--quiet", "--noreplace", "--verbose=n", "--autounmask-continue=y", "--with-bdeps=n"]
    argv += ["--usepkg=y", "--getbinpkg=y"] if cfg.network else ["--usepkgonly=y"]
    return argv + list(packages)


# The whole environment of commands in the stage3 chroot.
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}


def chroot_sandbox(cfg: EmergeConfig) -> Sandbox:
    """The stage3 as /, with /proc, /sys, /dev, distfiles and binary packages from the package cache,
    and nothing of the host's environment."""
    proxy = cfg.proxy.environment() if cfg.proxy is not None else {}
    return cfg.sandbox.chroot(
        cfg.root, env={**CHROOT_ENV, **proxy}, clear_env=True, network=cfg.network,
        mounts=[Mount(cfg.cache / "distfiles", "/var/cache/distfiles"),
                Mount(cfg.cache / "binpkgs", "/var/cache/binpkgs")])


@contextlib.contextmanager
def _resolv_conf(cfg: EmergeConfig) -> Iterator[None]:
    """The host's resolv.conf in the root while emerge may download."""
    resolv = cfg.root / "etc/resolv.conf"
    backup = None
    if cfg.network and Path("/etc/resolv.conf").exists():
        if resolv.exists() or resolv.is_symlink():
            backup = cfg.workspace / "gentoo-resolv.conf"
            shutil.move(str(resolv), backup)
        shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        yield
    finally:
        if backup is not None:
            resolv.unlink(missing_ok=True)
            shutil.move(str(backup), resolv)


def chroot_run(cfg: EmergeConfig, argv: Sequence[str]) -> None:
    for d in ("distfiles", "binpkgs"):
        (cfg.cache / d).mkdir(parents=True, exist_ok=True)
    with _resolv_conf(cfg):
        run_package_manager("emerge", argv, sandbox=chroot_sandbox(cfg))


def bootstrap(cfg: EmergeConfig) -> None:
    """Steps 1 to 3: stage3 and ebuild repository in the root, make.conf amended."""
    if find_tool("tar") is None:
        raise MkosiError("required tool 'tar' was not found on this host", hint="apt-get install tar")
    stage3 = fetch_stage3(cfg)
    with log.step(f"Unpacking {stage3.name}"):
        unpack(stage3, cfg.root, keep_existing=True)
    if not (cfg.root / "var/db/repos/gentoo/profiles").is_dir():
        snapshot = fetch_snapshot(cfg)
        with log.step("Unpacking the Gentoo ebuild repository"):
            unpack(snapshot, cfg.root / "var/db/repos/gentoo", strip=1)
    make_conf = cfg.root / "etc/portage/make.conf"
    if make_conf.is_dir():
        make_conf = make_conf / "mkosi.conf"
    make_conf.parent.mkdir(parents=True, exist_ok=True)
    with make_conf.open("a") as f:
        f.write(make_conf_text(cfg))


def emerge(cfg: EmergeConfig, packages: Sequence[str]) -> None:
    if not (cfg.root / "usr/bin/emerge").exists():
        raise MkosiError(f"{cfg.root} has no emerge: the stage3 was not unpacked")
    if packages:
        chroot_run(cfg, emerge_argv(cfg, packages))


def install(cfg: EmergeConfig, packages: Sequence[str]) -> None:
    bootstrap(cfg)
    emerge(cfg, packages)


def remove(cfg: EmergeConfig, packages: Sequence[str]) -> None:
    installed = {p.atom for p in installed_packages(cfg.root)} | {p.name for p in installed_packages(cfg.root)}
    wanted = [p for p in packages if p in installed]
    if wanted:
        chroot_run(cfg, ["emerge", "--quiet", "--unmerge", *wanted])


# ---------------------------------------------------------------------------------------------------
# The installed-package database (/var/db/pkg/CATEGORY/NAME-VERSION/)


@dataclasses.dataclass(frozen=True)
class EbuildPackage:
    category: str
    name: str
    version: str
    size: int
    slot: str = ""

    @property
    def atom(self) -> str:
        return f"{self.category}/{self.name}"


def split_pf(pf: str) -> tuple[str, str]:
    """'systemd-254.5-r1' -> ('systemd', '254.5-r1')."""
    m = re.fullmatch(r"(.+?)-(\d[^-]*(?:-r\d+)?)", pf)
    if not m:
        return pf, ""
    return m.group(1), m.group(2)


def installed_packages(root: Path) -> list[EbuildPackage]:
    vdb = root / "var/db/pkg"
    if not vdb.is_dir():
        return []
    pkgs = []
    for d in sorted(vdb.glob("*/*")):
        if not d.is_dir() or d.name.startswith((".", "-MERGING-")):
            continue
        name, version = split_pf(d.name)

        def read(f: str, d: Path = d) -> str:
            p = d / f
            return p.read_text(errors="replace").strip() if p.is_file() else ""

        size = read("SIZE")
        pkgs.append(EbuildPackage(category=d.parent.name, name=name, version=version,
                                  size=int(size) if size.isdigit() else 0, slot=read("SLOT")))
    return pkgs


def _saved_list(workspace: Path) -> Path:
    return workspace / "gentoo-packages.json"


def manifest_packages(root: Path, workspace: Path) -> list[EbuildPackage]:
    """The root's packages, or the list saved before CleanPackageMetadata= removed the database."""

    if not (root / "var/db/pkg").is_dir() and _saved_list(workspace).exists():
        return [EbuildPackage(**d) for d in json.loads(_saved_list(workspace).read_text())]
    return installed_packages(root)


def clean_metadata(root: Path, force: bool, workspace: Optional[Path] = None) -> None:


    if workspace is not None:
        _saved_list(workspace).write_text(json.dumps([dataclasses.asdict(p) for p in installed_packages(root)]))

    remove_paths(root, ["/var/cache/distfiles/*", "/var/cache/binpkgs/*", "/var/tmp/portage",
                        "/var/log/emerge.log", "/var/log/emerge-fetch.log", "/var/log/portage"])
    if force or not (root / "usr/bin/emerge").exists():
        remove_paths(root, ["/var/db/repos/gentoo", "/var/db/pkg", "/var/lib/portage"])
