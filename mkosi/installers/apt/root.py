"""The image root before and after dpkg: merged /usr, dpkg's admin directory, docs exclusion, apt state."""
from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from mkosi.errors import MkosiError
from mkosi.installers.apt.config import LIB64_ARCHITECTURES, UNMERGED_RELEASES, AptConfig
from mkosi.installers.apt.debs import installed_packages, parse_deb822
from mkosi.installers.apt.hostapt import HostApt
from mkosi.installers.apt.repositories import extra_lines, list_prefixes, main_lines, write_sources
from mkosi.trees import resolve_in_root

# Patterns for the dpkg configuration that keeps documentation out of the image (WithDocs=no).
DOCS_EXCLUDE = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


# Kept despite the above: copyright files (licences require them) and glibc's locale alias table.
DOCS_INCLUDE = ("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias")


DOCS_CONFIG_NAME = "mkosi-no-docs"


def docs_dpkg_config() -> str:
    lines = ["# Written by mkosi (WithDocs=no): keep documentation and translations out of the image."]
    lines += [f"path-exclude={p}" for p in DOCS_EXCLUDE]
    lines += [f"path-include={p}" for p in DOCS_INCLUDE]
    return "\n".join(lines) + "\n"


# openssh-server's postinst makes the host keys sshd_config names (by default RSA, ECDSA and Ed25519; the
# 3072-bit RSA key alone takes most of a second) unless a file of that name exists. mkosi removes host keys
# before the image is finished and has them made on each machine's first boot (build.remove_ssh_host_keys),
# so making them at all is wasted: empty files stand in for them instead, removed as the keys would be.
SSH_HOST_KEYS = ("ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_ed25519_key")


def stand_in_for_ssh_host_keys(root: Path, packages: Sequence[str]) -> list[Path]:
    """Before dpkg configures openssh-server (one of `packages`): empty files where its postinst would make
    host keys, unless the image has host keys already. Returns the files made."""
    if "openssh-server" not in packages:
        return []
    etc_ssh = resolve_in_root(root, "etc/ssh")
    if etc_ssh.exists() and (not etc_ssh.is_dir() or any(etc_ssh.glob("ssh_host_*"))):
        return []
    etc_ssh.mkdir(mode=0o755, parents=True, exist_ok=True)
    made = []
    for name in SSH_HOST_KEYS:
        key = etc_ssh / name
        key.touch(mode=0o600, exist_ok=False)
        made.append(key)
    return made


def _write_docs_config(root: Path) -> None:
    d = root / "etc/dpkg/dpkg.cfg.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / DOCS_CONFIG_NAME).write_text(docs_dpkg_config())


def _setup_merged_usr(cfg: AptConfig) -> None:
    root = cfg.root
    dirs = ["bin", "sbin", "lib"] + (["lib64"] if cfg.architecture in LIB64_ARCHITECTURES else [])
    for d in dirs:
        target = root / "usr" / d
        target.mkdir(parents=True, exist_ok=True)
        link = root / d
        if link.is_symlink():
            continue
        if link.is_dir():
            # A skeleton tree with a real /bin: move its contents where they belong.
            for entry in link.iterdir():
                dest = target / entry.name
                if dest.exists() or dest.is_symlink():
                    raise MkosiError(f"cannot merge /{d}/{entry.name} into /usr/{d}: it exists in both")
                entry.rename(dest)
            link.rmdir()
        elif link.exists():
            raise MkosiError(f"/{d} in the image root is not a directory")
        link.symlink_to(f"usr/{d}")


def prepare_root(cfg: AptConfig) -> None:
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    if cfg.release not in UNMERGED_RELEASES:
        _setup_merged_usr(cfg)
    if not cfg.with_docs:
        _write_docs_config(root)
    admin = root / "var/lib/dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True, exist_ok=True)
    for f in ("status", "available"):
        (admin / f).touch()


def _apt_in_root(root: Path) -> bool:
    return (root / "usr/bin/apt-get").exists()


def strip_package_spec(spec: str) -> str:
    return re.split(r"[=/:]", spec, maxsplit=1)[0]


def write_extended_states(root: Path, architecture: str, manual: set[str], before: set[str]) -> None:
    """Mark what apt pulled in as automatically installed, so `apt autoremove` works in the image."""
    path = root / "var/lib/apt/extended_states"
    entries: dict[str, dict[str, str]] = {}
    if path.exists():
        for st in parse_deb822(path.read_text()):
            if "Package" in st:
                entries[st["Package"]] = st
    for pkg in installed_packages(root):
        if pkg.name in manual:
            entries.pop(pkg.name, None)
        elif pkg.name not in before and pkg.name not in entries:
            entries[pkg.name] = {"Package": pkg.name, "Architecture": pkg.architecture or architecture,
                                 "Auto-Installed": "1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("".join(f"{k}: {v}\n" for k, v in st.items()) + "\n"
                            for _, st in sorted(entries.items())))


def _copy_lists(apt: HostApt) -> None:
    """Give apt in the image the lists of its repositories, so it works without an update."""
    dest = apt.cfg.root / "var/lib/apt/lists"
    (dest / "partial").mkdir(parents=True, exist_ok=True)
    prefixes = tuple(list_prefixes(main_lines(apt.cfg) + extra_lines(apt.cfg)))
    for p in apt.lists.iterdir():
        # Copies, not hard links: whatever happens to the image's files must not touch the cache.
        if p.is_file() and p.name.startswith(prefixes) and not (dest / p.name).exists():
            shutil.copy2(p, dest / p.name)


def finish(apt: HostApt, manual: Sequence[str], before: set[str], add_sources: bool) -> None:
    cfg = apt.cfg
    if add_sources:
        write_sources(cfg)
    # Written even without apt in the image, so that apt installed later knows what was pulled in
    # automatically; clean_metadata() drops it when apt never got installed.
    write_extended_states(cfg.root, cfg.architecture, {strip_package_spec(p) for p in manual}, before)
    if _apt_in_root(cfg.root):
        _copy_lists(apt)


def status_nonempty(root: Path) -> bool:
    status = root / "var/lib/dpkg/status"
    return status.exists() and status.stat().st_size > 0


def clean_metadata(root: Path) -> None:
    """Drop package manager state an image does not need (CleanPackageMetadata=yes)."""
    def rm(p: Path) -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    for d in ("var/lib/apt/lists", "var/cache/apt"):
        if (root / d).is_dir():
            for entry in (root / d).iterdir():
                rm(entry)
    if not _apt_in_root(root):
        rm(root / "var/lib/apt/extended_states")
    for log_path in ("var/log/apt", "var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log"):
        rm(root / log_path)
    dpkg_db = root / "var/lib/dpkg"
    if not (root / "usr/bin/dpkg").exists():
        rm(dpkg_db)
    elif dpkg_db.is_dir():
        for p in dpkg_db.glob("*-old"):
            rm(p)
