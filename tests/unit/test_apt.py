"""Unit tests for mkosi.installers.apt: no root, no network."""

from __future__ import annotations

import fnmatch
import io
import lzma
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

from mkosi.errors import MkosiError
from mkosi.installers import apt
from mkosi.installers.apt import AptConfig, DpkgOp, unpack
from mkosi.installers.apt import chroot as chroot_module
from mkosi.installers.apt import hostapt as hostapt_module
from mkosi.installers.apt.debs import Archives, data_member, read_control_archive
from mkosi.installers.apt.hostapt import HostApt, setup_apt
from mkosi.installers.apt.plan import essential_unpack_order, format_op, plan_without
from mkosi.installers.apt.repositories import list_prefixes, main_lines, uri_to_filename
from mkosi.installers.apt.root import (
    SSH_HOST_KEYS,
    prepare_root,
    stand_in_for_ssh_host_keys,
    strip_package_spec,
    write_extended_states,
)
from mkosi.installers.apt.unpack import Decompressor, prune_uncompressed, uncompressed_copies
from mkosi.sandbox import Mode, Mount, Sandbox


def config(tmp_path: Path, **kwargs: Any) -> AptConfig:
    values: dict[str, Any] = {
        "root": tmp_path / "root",
        "distribution": "debian",
        "release": "bookworm",
        "mirror": "http://deb.debian.org/debian",
        "components": ["main"],
        "extra_repositories": [],
        "architecture": "amd64",
        "cache_dir": None,
        "workspace": tmp_path / "ws",
        "with_docs": False,
    }
    values.update(kwargs)
    return AptConfig(**values)


# ---------------------------------------------------------------------------------------------------
# repository_lines


def test_debian_stable_has_updates_and_security(tmp_path: Path) -> None:
    assert apt.repository_lines(config(tmp_path)) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://security.debian.org/debian-security bookworm-security main",
    ]


def test_debian_default_mirror_and_components(tmp_path: Path) -> None:
    comps = ["main", "contrib non-free-firmware", "main"]
    cfg = config(tmp_path, mirror="", release="trixie", components=comps)
    assert apt.repository_lines(cfg) == [
        "deb http://deb.debian.org/debian trixie main contrib non-free-firmware",
        "deb http://deb.debian.org/debian trixie-updates main contrib non-free-firmware",
        "deb http://security.debian.org/debian-security trixie-security main contrib non-free-firmware",
    ]


@pytest.mark.parametrize("release", ["sid", "unstable"])
def test_debian_unstable_has_no_updates_or_security(tmp_path: Path, release: str) -> None:
    assert apt.repository_lines(config(tmp_path, release=release)) == [
        f"deb http://deb.debian.org/debian {release} main",
    ]


def test_debian_buster_security_suite(tmp_path: Path) -> None:
    lines = apt.repository_lines(config(tmp_path, release="buster"))
    assert lines[-1] == "deb http://security.debian.org/debian-security buster/updates main"


def test_custom_mirror_trailing_slash(tmp_path: Path) -> None:
    lines = apt.repository_lines(config(tmp_path, mirror="http://mirror.example/debian/"))
    assert lines[0] == "deb http://mirror.example/debian bookworm main"
    assert lines[1] == "deb http://mirror.example/debian bookworm-updates main"


def test_ubuntu_defaults(tmp_path: Path) -> None:
    cfg = config(tmp_path, distribution="ubuntu", release="noble", mirror="")
    assert apt.repository_lines(cfg) == [
        "deb http://archive.ubuntu.com/ubuntu noble main",
        "deb http://archive.ubuntu.com/ubuntu noble-updates main",
        "deb http://security.ubuntu.com/ubuntu noble-security main",
    ]


def test_ubuntu_ports(tmp_path: Path) -> None:
    cfg = config(tmp_path, distribution="ubuntu", release="noble", mirror="", architecture="arm64",
                 components=["main", "universe"])
    assert apt.repository_lines(cfg) == [
        "deb http://ports.ubuntu.com/ubuntu-ports noble main universe",
        "deb http://ports.ubuntu.com/ubuntu-ports noble-updates main universe",
        "deb http://ports.ubuntu.com/ubuntu-ports noble-security main universe",
    ]


def test_ubuntu_custom_mirror_carries_security(tmp_path: Path) -> None:
    cfg = config(tmp_path, distribution="ubuntu", release="jammy", mirror="http://mirror.example/ubuntu")
    assert apt.repository_lines(cfg)[-1] == "deb http://mirror.example/ubuntu jammy-security main"


def test_extra_repositories(tmp_path: Path) -> None:
    cfg = config(tmp_path, extra_repositories=[
        "deb [signed-by=/etc/keys/x.gpg] http://repo.example/debian  bookworm   main extra",
        "http://other.example/debian",
        "",
    ])
    assert apt.repository_lines(cfg)[3:] == [
        "deb [signed-by=/etc/keys/x.gpg] http://repo.example/debian bookworm main extra",
        "deb http://other.example/debian bookworm main",
    ]


def test_invalid_extra_repository(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="invalid repository 'not a repo'"):
        apt.repository_lines(config(tmp_path, extra_repositories=["not a repo"]))


def test_repository_directory(tmp_path: Path) -> None:
    d = tmp_path / "repos"
    d.mkdir()
    (d / "a.list").write_text("# comment\ndeb http://a.example/debian bookworm main\n\n")
    (d / "b.sources").write_text(
        "Types: deb\n"
        "URIs: http://b.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
        "Signed-By: /usr/share/keyrings/b.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://c.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n"
    )
    (d / "ignored.txt").write_text("deb http://ignored.example/ x y\n")
    lines = apt.repository_lines(config(tmp_path, repository_directory=d))
    assert lines[3:] == [
        "deb http://a.example/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/b.gpg] http://b.example/debian bookworm main contrib",
        "deb [signed-by=/usr/share/keyrings/b.gpg] http://b.example/debian bookworm-updates main contrib",
    ]


def test_unknown_distribution(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="cannot install distribution 'fedora'"):
        apt.repository_lines(config(tmp_path, distribution="fedora"))


def test_invalid_release(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="invalid release"):
        apt.repository_lines(config(tmp_path, release="book worm"))


def test_missing_ubuntu_keyring_names_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(apt.KEYRINGS, "ubuntu", (str(tmp_path / "nope.gpg"), "ubuntu-keyring"))
    cfg = config(tmp_path, distribution="ubuntu", release="noble", mirror="")
    with pytest.raises(MkosiError) as e:
        apt.install(cfg, ["systemd"])
    assert "keyring" in str(e.value)
    assert e.value.hint is not None and "ubuntu-keyring" in e.value.hint


def test_list_file_names() -> None:
    assert list_prefixes(["deb http://deb.debian.org/debian bookworm main"]) == [
        "deb.debian.org_debian_dists_bookworm_",
    ]
    assert uri_to_filename("http://user:pw@host.example:8080/a_b~c/") == "host.example:8080_a%5fb%7ec_"


# ---------------------------------------------------------------------------------------------------
# apt's error messages


def test_error_unknown_package() -> None:
    out = "Reading package lists...\nBuilding dependency tree...\nE: Unable to locate package foo\n"
    assert apt.apt_error_message(out) == "package 'foo' not found in the configured repositories"


def test_error_unknown_packages() -> None:
    out = "".join(f"E: Unable to locate package {p}\n" for p in ("foo", "bar", "foo"))
    assert apt.apt_error_message(out) == "packages 'foo', 'bar' not found in the configured repositories"


def test_error_no_candidate() -> None:
    out = ("Package mail-transport-agent is a virtual package provided by:\n"
           "E: Package 'mail-transport-agent' has no installation candidate\n")
    msg = apt.apt_error_message(out)
    assert msg is not None and msg.startswith("package 'mail-transport-agent' has no installation candidate")


def test_error_missing_release_prefers_main_suite() -> None:
    out = (
        "Err:2 http://security.debian.org/debian-security xyzzy-security Release\n"
        "  404  Not Found [IP: 151.101.2.132 80]\n"
        "Err:4 http://deb.debian.org/debian xyzzy Release\n"
        "  404  Not Found [IP: 151.101.2.132 80]\n"
        "E: The repository 'http://security.debian.org/debian-security xyzzy-security Release' "
        "does not have a Release file.\n"
        "E: The repository 'http://deb.debian.org/debian xyzzy Release' does not have a Release file.\n"
    )
    assert apt.apt_error_message(out, "xyzzy") == (
        "release 'xyzzy' not found on mirror http://deb.debian.org/debian"
    )
    assert apt.apt_error_message(out) == (
        "release 'xyzzy-security' not found on mirror http://security.debian.org/debian-security"
    )


def test_error_unresolvable_mirror() -> None:
    out = (
        "Err:1 http://nonexistent.invalid/debian bookworm InRelease\n"
        "  Could not resolve 'nonexistent.invalid'\n"
        "E: Failed to fetch http://nonexistent.invalid/debian/dists/bookworm/InRelease  "
        "Could not resolve 'nonexistent.invalid'\n"
        "E: Some index files failed to download. They have been ignored, or old ones used instead.\n"
    )
    assert apt.apt_error_message(out) == (
        "mirror http://nonexistent.invalid/debian is unreachable: Could not resolve 'nonexistent.invalid'"
    )


def test_error_connection_refused() -> None:
    out = ("E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to "
           "127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n")
    msg = apt.apt_error_message(out)
    assert msg is not None
    assert msg.startswith("mirror http://127.0.0.1:9/debian is unreachable: Could not connect")


def test_error_release_404_on_fetch() -> None:
    out = "E: Failed to fetch http://m.example/debian/dists/nope/InRelease  404  Not Found [IP: 1.2.3.4]\n"
    assert apt.apt_error_message(out) == "release 'nope' not found on mirror http://m.example/debian"


def test_error_bad_mirror_path() -> None:
    out = ("E: Failed to fetch http://deb.debian.org/nodebian/dists/bookworm/InRelease  400  Bad Request "
           "[IP: 1.2.3.4 80]\n"
           "E: The repository 'http://deb.debian.org/nodebian bookworm InRelease' is not signed.\n")
    assert apt.apt_error_message(out) == (
        "could not fetch release 'bookworm' from mirror http://deb.debian.org/nodebian: 400 Bad Request"
    )


def test_error_package_download() -> None:
    out = ("E: Failed to fetch http://deb.debian.org/debian/pool/main/s/systemd/systemd_252_amd64.deb  "
           "Connection failed [IP: 1.2.3.4 80]\n")
    msg = apt.apt_error_message(out)
    assert msg == "mirror http://deb.debian.org/debian is unreachable: Connection failed"


def test_error_expired_release() -> None:
    out = ("E: Release file for http://deb.debian.org/debian/dists/sid/InRelease is expired (invalid since "
           "15d 18h 36min 37s). Updates for this repository will not be applied.\n")
    assert apt.apt_error_message(out) == (
        "the Release file of 'sid' on mirror http://deb.debian.org/debian expired 15d 18h 36min 37s ago: "
        "the mirror is out of date, or the clock of this machine is wrong"
    )


def test_error_no_pubkey() -> None:
    out = (
        "W: GPG error: http://archive.ubuntu.com/ubuntu noble InRelease: The following signatures "
        "couldn't be verified because the public key is not available: NO_PUBKEY 871920D1991BC93C\n"
        "E: The repository 'http://archive.ubuntu.com/ubuntu noble InRelease' is not signed.\n"
    )
    assert apt.apt_error_message(out) == (
        "repository http://archive.ubuntu.com/ubuntu noble is signed with a key that is not in the "
        "configured keyring (NO_PUBKEY 871920D1991BC93C)"
    )


def test_error_unmet_dependencies() -> None:
    out = (
        "Some packages could not be installed. This may mean that you have\n"
        "The following packages have unmet dependencies:\n"
        " systemd-sysv : Conflicts: sysvinit-core but 3.06-4 is to be installed\n"
        " sysvinit-core : Conflicts: systemd-sysv but 252 is to be installed\n"
        "E: Unable to correct problems, you have held broken packages.\n"
    )
    assert apt.apt_error_message(out) == (
        "unresolvable dependencies: systemd-sysv : Conflicts: sysvinit-core but 3.06-4 is to be installed; "
        "sysvinit-core : Conflicts: systemd-sysv but 252 is to be installed"
    )


def test_error_generic_and_none() -> None:
    assert apt.apt_error_message("W: something\nE: Something else broke\n") == "Something else broke"
    assert apt.apt_error_message("all good\n") is None


def test_dpkg_error_message() -> None:
    out = (
        "Unpacking libpam-modules ...\n"
        "dpkg: error processing archive /.mkosi-apt/uncompressed/libpam-modules_1.5.2-6_amd64_291056.deb "
        "(--unpack):\n"
        " new libpam-modules:amd64 package pre-installation script subprocess returned error exit "
        "status 127\n"
        "Errors were encountered while processing:\n"
    )
    assert apt.dpkg_error_message(out) == (
        "dpkg failed to install libpam-modules (new libpam-modules:amd64 package pre-installation script "
        "subprocess returned error exit status 127)"
    )
    assert apt.dpkg_error_message("dpkg: error: cannot access archive 'x.deb'\n") == (
        "dpkg: cannot access archive 'x.deb'"
    )


# ---------------------------------------------------------------------------------------------------
# dpkg status


STATUS = """\
Package: systemd
Status: install ok installed
Priority: important
Section: admin
Installed-Size: 14532
Maintainer: Debian systemd Maintainers
Architecture: amd64
Multi-Arch: foreign
Version: 252.39-1~deb12u2
Depends: libc6 (>= 2.34),
 mount
Description: system and service manager
 systemd is a system and service manager for Linux.

Package: libsystemd0
Status: install ok installed
Installed-Size: 1003
Architecture: amd64
Multi-Arch: same
Source: systemd (252.39-1~deb12u2)
Version: 252.39-1~deb12u2+b1

Package: libgcc-s1
Status: install ok installed
Installed-Size: 140
Architecture: amd64
Source: gcc-12
Version: 12.2.0-14

Package: oldthing
Status: deinstall ok config-files
Architecture: all
Version: 1.0

Package: halfway
Status: install reinstreq half-installed
Architecture: all
Version: 2.0
"""


def test_parse_status() -> None:
    pkgs = {p.name: p for p in apt.parse_status(STATUS)}
    assert set(pkgs) == {"systemd", "libsystemd0", "libgcc-s1", "halfway"}
    s = pkgs["systemd"]
    assert (s.version, s.architecture, s.installed_size) == ("252.39-1~deb12u2", "amd64", 14532 * 1024)
    assert (s.source, s.source_version) == ("systemd", "252.39-1~deb12u2")
    lib = pkgs["libsystemd0"]
    assert (lib.source, lib.source_version) == ("systemd", "252.39-1~deb12u2")
    assert lib.version == "252.39-1~deb12u2+b1"
    gcc = pkgs["libgcc-s1"]
    assert (gcc.source, gcc.source_version) == ("gcc-12", "12.2.0-14")
    assert pkgs["halfway"].status == "half-installed"


def test_installed_packages(tmp_path: Path) -> None:
    assert apt.installed_packages(tmp_path) == []
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    names = [p.name for p in apt.installed_packages(tmp_path)]
    assert names == ["systemd", "libsystemd0", "libgcc-s1", "halfway"]


def test_parse_deb822_continuation() -> None:
    [st] = apt.parse_deb822("Package: a\nDescription: short\n long one\n .\n more\n")
    assert st["Description"] == "short\nlong one\n.\nmore"


# ---------------------------------------------------------------------------------------------------
# Documentation filter


def dpkg_filter_keeps(config_text: str, path: str) -> bool:
    """dpkg's path filter: the last matching pattern decides (fnmatch, '*' also matches '/')."""
    keep = True
    for line in config_text.splitlines():
        if line.startswith("path-exclude=") and fnmatch.fnmatchcase(path, line.split("=", 1)[1]):
            keep = False
        elif line.startswith("path-include=") and fnmatch.fnmatchcase(path, line.split("=", 1)[1]):
            keep = True
    return keep


def test_docs_config() -> None:
    text = apt.docs_dpkg_config()
    for pattern in ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"):
        assert f"path-exclude={pattern}\n" in text
    assert "path-include=/usr/share/doc/*/copyright\n" in text
    # Includes come after the excludes they punch holes in.
    include = text.index("path-include=/usr/share/doc/*/copyright")
    assert include > text.index("path-exclude=/usr/share/doc/*")

    assert not dpkg_filter_keeps(text, "/usr/share/doc/bash/changelog.gz")
    assert dpkg_filter_keeps(text, "/usr/share/doc/bash/copyright")
    assert not dpkg_filter_keeps(text, "/usr/share/man/man1/ls.1.gz")
    assert not dpkg_filter_keeps(text, "/usr/share/info/coreutils.info.gz")
    assert not dpkg_filter_keeps(text, "/usr/share/locale/de/LC_MESSAGES/coreutils.mo")
    assert dpkg_filter_keeps(text, "/usr/share/locale/locale.alias")
    assert dpkg_filter_keeps(text, "/usr/bin/ls")
    assert dpkg_filter_keeps(text, "/usr/share/doc-base/foo")


def test_prepare_root_writes_docs_config_first(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    prepare_root(cfg)
    root = cfg.root
    assert (root / "etc/dpkg/dpkg.cfg.d/mkosi-no-docs").read_text() == apt.docs_dpkg_config()
    for d in ("bin", "sbin", "lib", "lib64"):
        assert (root / d).is_symlink() and str((root / d).readlink()) == f"usr/{d}"
    assert (root / "var/lib/dpkg/status").read_text() == ""

    with_docs = config(tmp_path, root=tmp_path / "root2", with_docs=True, architecture="arm64")
    prepare_root(with_docs)
    assert not (with_docs.root / "etc/dpkg/dpkg.cfg.d/mkosi-no-docs").exists()
    assert not (with_docs.root / "lib64").exists()


def test_merged_usr_moves_skeleton_content(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (cfg.root / "bin").mkdir(parents=True)
    (cfg.root / "bin/hello").write_text("hi")
    prepare_root(cfg)
    assert (cfg.root / "bin").is_symlink()
    assert (cfg.root / "usr/bin/hello").read_text() == "hi"


# ---------------------------------------------------------------------------------------------------
# Packages and plans


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def tar_bytes(files: dict[str, bytes], compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    return lzma.compress(raw) if compress == "xz" else raw


def make_deb(path: Path, control: str, data: dict[str, bytes],
             scripts: Optional[dict[str, bytes]] = None) -> bytes:
    data_tar = tar_bytes(data)
    control_files = {"./control": control.encode(), **(scripts or {})}
    path.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n")
                     + ar_member("control.tar.xz", tar_bytes(control_files, "xz"))
                     + ar_member("data.tar.xz", lzma.compress(data_tar)))
    return data_tar


def test_read_control_and_repack(tmp_path: Path) -> None:
    deb = tmp_path / "hello_1.0_amd64.deb"
    data_tar = make_deb(deb, "Package: hello\nVersion: 1.0\nEssential: yes\n",
                        {"./usr/bin/hello": b"#!/bin/sh\necho hello\n"}, {"./preinst": b"#!/bin/sh\n"})
    control, members = read_control_archive(deb)
    assert control["Package"] == "hello" and control["Essential"] == "yes"
    assert {"control", "preinst"} <= members
    assert apt.read_control(deb) == control

    store = tmp_path / "store"
    mapping = uncompressed_copies([deb], store)
    copy = mapping[deb]
    assert copy.parent == store and copy != deb
    assert data_member(copy) == "data.tar"
    assert apt.read_control(copy) == control
    # The copy carries the same file system tarball, uncompressed.
    raw = copy.read_bytes()
    assert data_tar in raw
    assert copy.stat().st_mtime_ns == deb.stat().st_mtime_ns
    # Made once: a second call reuses it.
    before = copy.stat().st_ino
    assert uncompressed_copies([deb], store)[deb].stat().st_ino == before
    # Dropped once apt's copy is gone.
    prune_uncompressed(store, tmp_path)
    assert copy.exists()
    deb.unlink()
    prune_uncompressed(store, tmp_path)
    assert not copy.exists()



def test_decompressor_gives_dpkg_the_copies(tmp_path: Path) -> None:
    deb = tmp_path / "hello_1.0_amd64.deb"
    make_deb(deb, "Package: hello\nVersion: 1.0\n", {"./usr/bin/hello": b"hi\n"})
    with Decompressor(tmp_path / "store") as decompressor:
        op = DpkgOp("unpack", ("--no-triggers",), (str(deb),))
        mapped = decompressor.map_op(op)
        copy = Path(mapped.args[0])
        assert mapped.options == op.options and copy.parent == tmp_path / "store"
        assert data_member(copy) == "data.tar"
        configure = DpkgOp("configure", (), ("--pending",))
        assert decompressor.map_op(configure) == configure
    # A later build finds the copy at once, without a job.
    with Decompressor(tmp_path / "store") as decompressor:
        decompressor.submit(deb)
        assert decompressor.jobs[deb].done() and decompressor.jobs[deb].result() == copy


def test_decompressor_makes_the_essential_copies_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debs = []
    for name in ("a", "b", "c", "d"):
        debs.append(tmp_path / f"{name}_1.0_amd64.deb")
        make_deb(debs[-1], f"Package: {name}\nVersion: 1.0\n", {f"./{name}": b"x"})
    order: list[str] = []
    started, release = threading.Event(), threading.Event()

    def recording(deb: Path, dst: Path) -> Path:
        started.set()
        release.wait(10)
        order.append(deb.name[0])
        return deb

    monkeypatch.setattr(unpack, "_make_copy", recording)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with Decompressor(tmp_path / "store") as decompressor:
        for deb in debs:
            decompressor.submit(deb)
        started.wait(10)
        decompressor.first([debs[3], debs[2]])
        release.set()
        assert decompressor.copies(debs) == debs
    # "a" was being made already; the others in the order asked for, then the rest.
    assert order == ["a", "d", "c", "b"]


def test_decompressor_uses_packages_without_xz_as_they_are(tmp_path: Path) -> None:
    deb = tmp_path / "plain_1.0_all.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("data.tar", tar_bytes({})))
    with Decompressor(tmp_path / "store") as decompressor:
        assert decompressor.copies([deb]) == [deb]
    assert not list((tmp_path / "store").iterdir())


def test_decompressor_watches_downloads(tmp_path: Path) -> None:
    """Packages apt completes while the body runs are decompressed; those already cached are not."""
    archives = tmp_path / "archives"
    (archives / "partial").mkdir(parents=True)
    old = archives / "old_1.0_amd64.deb"
    make_deb(old, "Package: old\nVersion: 1.0\n", {"./old": b"x"})
    new = archives / "new_1.0_amd64.deb"
    with Decompressor(tmp_path / "store") as decompressor:
        with decompressor.watching(archives, interval=0.01):
            make_deb(archives / "partial" / new.name, "Package: new\nVersion: 1.0\n", {"./new": b"y"})
            (archives / "partial" / new.name).rename(new)
        assert set(decompressor.jobs) == {new}
        assert decompressor.copies([new])[0].parent == tmp_path / "store"


PLAN = """\
Reading package lists...
/usr/bin/dpkg --status-fd 16 --no-triggers --unpack --auto-deconfigure /c/archives/libc6_2.36_amd64.deb \
/c/archives/dash_0.5_amd64.deb
/usr/bin/dpkg --status-fd 16 --no-triggers --configure libc6:amd64
/usr/bin/dpkg --status-fd 16 --no-triggers --unpack --auto-deconfigure /c/archives/libssl3_3_amd64.deb
/usr/bin/dpkg --status-fd 16 --no-triggers --unpack --auto-deconfigure /c/archives/mount_2_amd64.deb
/usr/bin/dpkg --status-fd 16 --no-triggers --configure libssl3:amd64
/usr/bin/dpkg --status-fd 16 --no-triggers --unpack --auto-deconfigure /c/archives/systemd_252_amd64.deb
/usr/bin/dpkg --status-fd 16 --configure --pending
Fetched 47.5 MB in 2s (19.5 MB/s)
"""


def test_parse_dpkg_plan() -> None:
    ops = apt.parse_dpkg_plan(PLAN)
    assert ops[0] == DpkgOp("unpack", ("--no-triggers", "--auto-deconfigure"),
                            ("/c/archives/libc6_2.36_amd64.deb", "/c/archives/dash_0.5_amd64.deb"))
    assert ops[1] == DpkgOp("configure", ("--no-triggers",), ("libc6:amd64",))
    assert ops[-1] == DpkgOp("configure", (), ("--pending",))
    assert len(ops) == 7
    # What is saved in the cache reads back the same.
    assert apt.parse_dpkg_plan("\n".join(format_op(op) for op in ops)) == ops


def test_parse_dpkg_plan_of_apt_3() -> None:
    """apt 3 (Debian trixie, as in a tools tree) names its dpkg database; that is apt's side, not the plan."""
    text = ("/usr/bin/dpkg --admindir /w/apt/apt/ --status-fd 13 --no-triggers --unpack --auto-deconfigure "
            "/w/apt/apt/archives/libc6_2.36_amd64.deb\n"
            "/usr/bin/dpkg --admindir=/w/apt/apt/ --status-fd 13 --no-triggers --configure libc6:amd64\n")
    assert apt.parse_dpkg_plan(text) == [
        DpkgOp("unpack", ("--no-triggers", "--auto-deconfigure"), ("/w/apt/apt/archives/libc6_2.36_amd64.deb",)),
        DpkgOp("configure", ("--no-triggers",), ("libc6:amd64",))]


def test_plan_without_installed_packages() -> None:
    ops = apt.parse_dpkg_plan(PLAN)
    debs = [a for op in ops if op.action == "unpack" for a in op.args]
    controls = {a: {"Package": Path(a).name.split("_")[0]} for a in debs}
    rest = plan_without(ops, {"libc6", "dash"}, controls)
    assert rest == [
        DpkgOp("unpack", ("--no-triggers", "--auto-deconfigure"),
               ("/c/archives/libssl3_3_amd64.deb", "/c/archives/mount_2_amd64.deb")),
        DpkgOp("configure", ("--no-triggers",), ("libssl3:amd64",)),
        DpkgOp("unpack", ("--no-triggers", "--auto-deconfigure"), ("/c/archives/systemd_252_amd64.deb",)),
        DpkgOp("configure", (), ("--pending",)),
    ]


def test_parse_relations() -> None:
    relations = "libc6 (>= 2.34), usrmerge | usr-is-merged, perl:any, foo [amd64] <!nocheck>"
    assert apt.parse_relations(relations) == [
        ["libc6"], ["usrmerge", "usr-is-merged"], ["perl"], ["foo"],
    ]
    assert apt.parse_relations("") == []


def test_essential_closure() -> None:
    controls = {
        "a": {"Package": "base-files", "Essential": "yes", "Depends": "libc6"},
        "b": {"Package": "init-system-helpers", "Essential": "yes", "Depends": "usrmerge | usr-is-merged"},
        "c": {"Package": "libc6", "Depends": "libgcc-s1"},
        "d": {"Package": "libgcc-s1"},
        "e": {"Package": "usr-is-merged"},
        "f": {"Package": "systemd", "Pre-Depends": "libc6", "Depends": "libssl3"},
        "g": {"Package": "libssl3"},
        "h": {"Package": "sh-provider", "Provides": "sh-virtual (= 1)"},
        "i": {"Package": "dash", "Essential": "yes", "Pre-Depends": "sh-virtual"},
    }
    assert apt.essential_closure(controls) == {
        "base-files", "init-system-helpers", "libc6", "libgcc-s1", "usr-is-merged", "dash", "sh-provider",
    }
    assert apt.dependency_closure(controls, ["systemd"]) == {"systemd", "libc6", "libgcc-s1", "libssl3"}


def test_essential_unpack_order(tmp_path: Path) -> None:
    debs = [tmp_path / f"{n}.deb" for n in ("libpam", "libc6", "coreutils", "perl-base", "sed")]
    archives: Archives = {
        str(debs[0]): ({"Package": "libpam"}, {"control", "preinst"}),
        str(debs[1]): ({"Package": "libc6"}, {"control", "preinst"}),
        str(debs[2]): ({"Package": "coreutils", "Essential": "yes"}, {"control"}),
        str(debs[3]): ({"Package": "perl-base", "Essential": "yes"}, {"control", "preinst"}),
        str(debs[4]): ({"Package": "sed", "Essential": "yes"}, {"control", "postinst"}),
    }
    order = [p.name for p in essential_unpack_order(debs, archives)]
    assert order == ["coreutils.deb", "sed.deb", "perl-base.deb", "libpam.deb", "libc6.deb"]


def test_package_spec_names() -> None:
    assert strip_package_spec("systemd") == "systemd"
    assert strip_package_spec("systemd=252-1") == "systemd"
    assert strip_package_spec("systemd/bookworm-backports") == "systemd"
    assert strip_package_spec("libc6:amd64") == "libc6"


# ---------------------------------------------------------------------------------------------------
# clean_metadata


def test_clean_metadata(tmp_path: Path) -> None:
    root = tmp_path
    for d in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/log/apt",
              "var/lib/dpkg/info", "usr/bin"):
        (root / d).mkdir(parents=True)
    for f in ("var/lib/apt/lists/x_Packages", "var/cache/apt/pkgcache.bin", "var/log/apt/history.log",
              "var/log/dpkg.log", "var/log/alternatives.log", "var/lib/dpkg/status",
              "var/lib/dpkg/status-old",
              "var/lib/apt/extended_states", "usr/bin/dpkg"):
        (root / f).write_text("x")

    apt.clean_metadata(root)
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert list((root / "var/cache/apt").iterdir()) == []
    for gone in ("var/log/apt", "var/log/dpkg.log", "var/log/alternatives.log", "var/lib/dpkg/status-old",
                 "var/lib/apt/extended_states"):
        assert not (root / gone).exists()
    assert (root / "var/lib/dpkg/status").exists()

    (root / "usr/bin/dpkg").unlink()
    apt.clean_metadata(root)
    assert not (root / "var/lib/dpkg").exists()


def test_clean_metadata_keeps_extended_states_with_apt(tmp_path: Path) -> None:
    (tmp_path / "var/lib/apt").mkdir(parents=True)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/apt-get").write_text("")
    (tmp_path / "var/lib/apt/extended_states").write_text("")
    apt.clean_metadata(tmp_path)
    assert (tmp_path / "var/lib/apt/extended_states").exists()


def test_extended_states(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    write_extended_states(tmp_path, "amd64", manual={"systemd"}, before=set())
    stanzas = apt.parse_deb822((tmp_path / "var/lib/apt/extended_states").read_text())
    assert {s["Package"] for s in stanzas} == {"libsystemd0", "libgcc-s1", "halfway"}
    assert all(s["Auto-Installed"] == "1" for s in stanzas)


def test_repository_key_check_off_for_apt(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"k")
    status = tmp_path / "status"
    status.write_text("")
    checked = setup_apt(config(tmp_path / "a"), status, keyring).conf.read_text()
    unchecked = setup_apt(config(tmp_path / "b", key_check=False), status, keyring).conf.read_text()
    for option in ("Acquire::AllowInsecureRepositories", "APT::Get::AllowUnauthenticated"):
        assert option not in checked
        assert f'{option} "true";' in unchecked


def test_keys_are_found_in_trusted_parts_only(tmp_path: Path) -> None:
    # apt 2.9 (trixie, the tools tree's) warns about every repository when Dir::Etc::Trusted is set:
    # the keys are read from the TrustedParts directory alone.
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"k")
    status = tmp_path / "status"
    status.write_text("")
    host = setup_apt(config(tmp_path / "a"), status, keyring)
    conf = host.conf.read_text()
    assert "Dir::Etc::Trusted " not in conf and 'Dir::Etc::Trusted "' not in conf
    parts = next(line for line in conf.splitlines() if line.startswith("Dir::Etc::TrustedParts "))
    assert (Path(parts.split('"')[1]) / "keyring.gpg").read_bytes() == b"k"


# ---------------------------------------------------------------------------------------------------
# The chroot sandbox of dpkg and the sandbox of the host tools


class Recorder:
    """Stands in for mkosi.run.run (and run_streaming): records each command with its sandbox."""

    def __init__(self, stderr: str = "") -> None:
        self.calls: list[tuple[list[str], Sandbox]] = []
        self.stderr = stderr

    def __call__(self, argv: Any, *, sandbox: Sandbox, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if callable(argv):   # run_streaming's argv of the status file descriptor
            argv = argv(99)
        self.calls.append(([str(a) for a in argv], sandbox))
        return subprocess.CompletedProcess(argv, 0, "", self.stderr)


def apt_dirs(tmp_path: Path) -> HostApt:
    archives, uncompressed = tmp_path / "cache/archives", tmp_path / "cache/uncompressed"
    archives.mkdir(parents=True)
    uncompressed.mkdir(parents=True)
    return HostApt(cfg=config(tmp_path), conf=tmp_path / "apt.conf", lists=tmp_path / "lists",
                   archives=archives, uncompressed=uncompressed, status=tmp_path / "status")


def test_dpkg_runs_in_a_chroot_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Sandbox(search_paths=(tmp_path / "bin",))
    cfg = config(tmp_path, sandbox=host)
    cfg.root.mkdir()
    hostapt = apt_dirs(tmp_path)
    recorder = Recorder()
    monkeypatch.setattr(chroot_module, "run", recorder)
    monkeypatch.setattr(chroot_module, "_host_eatmydata", lambda: None)
    with chroot_module.open_chroot(cfg, hostapt) as chroot:
        chroot.dpkg(DpkgOp("unpack", (), (str(hostapt.uncompressed / "a.deb"),)))
        chroot.dpkg(DpkgOp("configure", (), ("--pending",)))
    [(unpack_argv, sb), (configure_argv, _)] = recorder.calls
    # The command line is dpkg's alone: no chroot, no env -i, no mounts.
    assert unpack_argv[0] == "dpkg" and unpack_argv[-1] == "/.mkosi-apt/uncompressed/a.deb"
    assert configure_argv[-2:] == ["--configure", "--pending"]
    assert sb.mode == Mode.chroot and sb.root == cfg.root.absolute()
    assert sb.api_filesystems and sb.private_pids and sb.clear_env
    assert sb.search_paths == host.search_paths
    env = sb.environment
    assert env["PATH"].startswith("/.mkosi-apt/bin:/usr/local/sbin")
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert "LD_PRELOAD" not in env
    assert set(sb.mounts) == {Mount(hostapt.archives, "/.mkosi-apt/archives", readonly=True),
                              Mount(hostapt.uncompressed, "/.mkosi-apt/uncompressed", readonly=True)}
    argv = sb.argv(["dpkg"])
    assert argv[:4] == ["bwrap", "--bind", str(cfg.root.absolute()), "/"]
    assert "--unshare-pid" in argv and "--proc" in argv
    assert ["--ro-bind", str(hostapt.archives), "/.mkosi-apt/archives"] == \
        argv[argv.index(str(hostapt.archives)) - 1:argv.index(str(hostapt.archives)) + 2]


def test_python_and_what_it_needs_are_configured_before_the_rest(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Before `--configure --pending`, a run of its own configures the packages whose postinst defers
    its byte-compilation (and their unconfigured dependencies); its failure is left to the main run."""
    cfg = config(tmp_path)
    info = cfg.root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (cfg.root / "var/lib/dpkg/status").write_text(
        "Package: python3.11\nStatus: install ok unpacked\nDepends: media-types\n\n"
        "Package: media-types\nStatus: install ok unpacked\n\n"
        "Package: less\nStatus: install ok unpacked\n")
    (info / "python3.11.postinst").write_text(
        "#!/bin/sh\nset -e\n/usr/bin/python3.11 -E -S /usr/lib/python3.11/py_compile.py $files\n")
    calls: list[list[str]] = []

    def dpkg(argv: Any, *, sandbox: Sandbox, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append([str(a) for a in argv])
        # While dpkg runs, the postinst runs its compilation through mkosi's defer command.
        assert "/.mkosi-apt/bin/mkosi-defer /usr/bin/python3.11" in (info / "python3.11.postinst").read_text()
        return subprocess.CompletedProcess(argv, 1 if "--pending" not in argv else 0, "", "")

    monkeypatch.setattr(chroot_module, "run", dpkg)
    monkeypatch.setattr(chroot_module, "_host_eatmydata", lambda: None)
    with chroot_module.open_chroot(cfg, apt_dirs(tmp_path)) as chroot:
        chroot.dpkg(DpkgOp("configure", (), ("--pending",)))
    assert [c[-4:] for c in calls] == [["--no-triggers", "--configure", "media-types", "python3.11"],
                                       ["--force-confdef", "--force-confold", "--configure", "--pending"]]
    assert "mkosi-defer" not in (info / "python3.11.postinst").read_text()


def test_chroot_cleans_up_after_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path)
    cfg.root.mkdir()
    recorder = Recorder()
    monkeypatch.setattr(chroot_module, "run", recorder)
    monkeypatch.setattr(chroot_module, "_host_eatmydata", lambda: None)
    policy = cfg.root / "usr/sbin/policy-rc.d"
    with pytest.raises(MkosiError), chroot_module.open_chroot(cfg, apt_dirs(tmp_path)) as chroot:
        assert policy.read_text().endswith("exit 101\n") and policy.stat().st_mode & 0o111
        # Maintainer scripts asking ischroot are told that this is a chroot.
        ischroot = cfg.root / ".mkosi-apt/bin/ischroot"
        assert ischroot.read_text().endswith("exit 0\n") and ischroot.stat().st_mode & 0o111
        chroot.dpkg(DpkgOp("unpack", (), (str(tmp_path / "elsewhere/a.deb"),)))
    assert not policy.exists() and not (cfg.root / ".mkosi-apt").exists()
    assert recorder.calls == []


def test_chroot_writes_nothing_outside_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree whose /usr/sbin and helper directory are symbolic links out of it (absolute ones, as a
    hostile skeleton tree could have them) gets mkosi's files inside the root all the same."""
    cfg = config(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (cfg.root / "usr").mkdir(parents=True)
    (cfg.root / "usr/sbin").symlink_to(outside)
    (cfg.root / ".mkosi-apt").symlink_to(outside)
    (cfg.root / "var/lib/dpkg").mkdir(parents=True)
    (cfg.root / "var/lib/dpkg/info").symlink_to(outside)
    (outside / "python3.11.postinst").write_text(
        "#!/bin/sh\n/usr/bin/python3.11 -E -S /usr/lib/python3.11/py_compile.py $files\n")
    monkeypatch.setattr(chroot_module, "run", Recorder())
    monkeypatch.setattr(chroot_module, "_host_eatmydata", lambda: None)
    with chroot_module.open_chroot(cfg, apt_dirs(tmp_path)) as chroot:
        chroot.dpkg(DpkgOp("configure", (), ("--pending",)))
        assert sorted(p.name for p in outside.iterdir()) == ["python3.11.postinst"]
        # The absolute link is taken as the image sees it: relative to the root.
        assert (cfg.root / str(outside).lstrip("/") / "policy-rc.d").read_text().endswith("exit 101\n")
        assert (cfg.root / ".mkosi-apt/bin/ischroot").is_file() and not (cfg.root / ".mkosi-apt").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["python3.11.postinst"]
    assert "mkosi" not in (outside / "python3.11.postinst").read_text()


def test_chroot_keeps_the_trees_own_policy_rc_d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path)
    policy = cfg.root / "usr/sbin/policy-rc.d"
    policy.parent.mkdir(parents=True)
    policy.write_text("#!/bin/sh\nexit 0\n")
    monkeypatch.setattr(chroot_module, "_host_eatmydata", lambda: None)
    with chroot_module.open_chroot(cfg, apt_dirs(tmp_path)):
        assert policy.read_text() == "#!/bin/sh\nexit 0\n"
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


@pytest.mark.parametrize("probe_stderr", ["", "ERROR: ld.so: object cannot be preloaded"])
def test_eatmydata_through_the_sandbox_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   probe_stderr: str) -> None:
    lib = tmp_path / "libeatmydata.so.1"
    lib.write_bytes(b"\x7fELF")
    cfg = config(tmp_path)
    cfg.root.mkdir()
    recorder = Recorder(stderr=probe_stderr)
    monkeypatch.setattr(chroot_module, "run", recorder)
    monkeypatch.setattr(chroot_module, "_host_eatmydata", lambda: lib)
    monkeypatch.setattr(chroot_module, "_host_architecture", lambda sandbox: "amd64")
    with chroot_module.open_chroot(cfg, apt_dirs(tmp_path)) as chroot:
        assert (cfg.root / ".mkosi-apt/libeatmydata.so.1").read_bytes() == b"\x7fELF"
        chroot.dpkg(DpkgOp("configure", (), ("--pending",)))
    [(probe, probe_sb), (_, dpkg_sb)] = recorder.calls
    assert probe == ["/bin/true"] and probe_sb.clear_env
    assert probe_sb.environment["LD_PRELOAD"] == "libeatmydata.so.1"
    assert probe_sb.environment["LD_LIBRARY_PATH"] == "/.mkosi-apt"
    assert not any("LD_PRELOAD" in a for a in probe_sb.argv(probe))   # never on the command line
    if probe_stderr:
        assert "LD_PRELOAD" not in dpkg_sb.environment
    else:
        assert dpkg_sb == probe_sb


def test_host_tools_run_in_the_configured_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Sandbox(search_paths=(tmp_path / "bin",))
    hostapt = apt_dirs(tmp_path)
    hostapt.cfg = config(tmp_path, sandbox=host)
    recorder = Recorder()
    monkeypatch.setattr(hostapt_module, "run_streaming", recorder)
    hostapt_module._apt_get(hostapt, ["install", "x"], "installing")
    monkeypatch.setattr(unpack, "run", recorder)
    monkeypatch.setattr(unpack, "require_tool", lambda name, sandbox: name)
    deb = tmp_path / "a.deb"
    deb.write_bytes(b"x")
    unpack.extract([deb], tmp_path / "root", host)
    assert [(argv[0], sb) for argv, sb in recorder.calls] == [("apt-get", host), ("bash", host)]


def test_cache_only_metadata_uses_the_cached_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostapt = apt_dirs(tmp_path)
    hostapt.cfg = config(tmp_path, refresh=False)
    hostapt.lists.mkdir()
    recorder = Recorder()
    monkeypatch.setattr(hostapt_module, "run_streaming", recorder)
    with pytest.raises(MkosiError, match="no cached package lists for debian bookworm"):
        hostapt_module.update(hostapt)
    prefix = list_prefixes(main_lines(hostapt.cfg))[0]
    (hostapt.lists / f"{prefix}_main_binary-amd64_Packages").write_text("")
    hostapt_module.update(hostapt)
    assert recorder.calls == []          # apt-get update never ran
    hostapt.cfg = config(tmp_path)       # CacheOnly=auto/never: synced
    hostapt_module._refreshed.clear()
    (tmp_path / "etc/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/sources.list").write_text("deb x y z\n")
    hostapt_module.update(hostapt)
    assert len(recorder.calls) == 1 and "update" in recorder.calls[0][0]


def test_images_built_at_the_same_time_refresh_a_shared_cache_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hostapt = apt_dirs(tmp_path)
    hostapt.lock_file = tmp_path / "cache/lock"
    hostapt.lists.mkdir()
    (tmp_path / "etc/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/sources.list").write_text("deb x y z\n")
    recorder = Recorder()
    monkeypatch.setattr(hostapt_module, "run_streaming", recorder)
    hostapt_module._refreshed.clear()
    hostapt_module.update(hostapt)                      # image a
    assert len(recorder.calls) == 1
    hostapt_module._refreshed.clear()                   # image b: another process, same invocation
    hostapt_module.update(hostapt)
    assert len(recorder.calls) == 1
    (tmp_path / "etc/sources.list").write_text("deb x y z w\n")
    hostapt_module._refreshed.clear()                   # other sources: refreshed
    hostapt_module.update(hostapt)
    assert len(recorder.calls) == 2
    hostapt_module._refreshed.clear()                   # a later mkosi invocation refreshes again
    monkeypatch.setattr(hostapt_module, "_INVOCATION", "another")
    hostapt_module.update(hostapt)
    assert len(recorder.calls) == 3
    assert (tmp_path / "cache/refreshed").read_text().startswith("another ")


def test_directory_times_after_the_parallel_extraction_are_the_epoch(tmp_path: Path) -> None:
    """The extraction's directory times race between its tar processes; with an epoch they are all the epoch."""
    root = tmp_path / "root"
    (root / "usr/libexec/dpkg").mkdir(parents=True)
    (root / "usr/libexec/dpkg/helper").write_text("#!/bin/sh\n")
    os.utime(root / "usr/libexec/dpkg/helper", (1600000000, 1600000000))
    (root / "proc/1").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    unpack.settle_directory_times(root, 1700000000, skip=("proc",))
    for d in (root, root / "usr", root / "usr/libexec", root / "usr/libexec/dpkg"):
        assert os.stat(d).st_mtime == 1700000000, d
    assert os.stat(root / "proc").st_mtime != 1700000000, "a mount point is left alone"
    assert os.stat(root / "proc/1").st_mtime != 1700000000, "and what is below it"
    assert os.stat(root / "usr/libexec/dpkg/helper").st_mtime == 1600000000, "files keep their packages' times"


# ---------------------------------------------------------------------------------------------------
# Repositories=backports


def test_debian_backports_suite_follows_security(tmp_path: Path) -> None:
    cfg = config(tmp_path, release="trixie", components=["main", "contrib"], backports=True)
    assert apt.repository_lines(cfg) == [
        "deb http://deb.debian.org/debian trixie main contrib",
        "deb http://deb.debian.org/debian trixie-updates main contrib",
        "deb http://security.debian.org/debian-security trixie-security main contrib",
        "deb http://deb.debian.org/debian trixie-backports main contrib",
    ]


@pytest.mark.parametrize("release", ["sid", "unstable", "trixie-backports"])
def test_backports_is_ignored_where_there_is_no_such_suite(tmp_path: Path, release: str) -> None:
    assert apt.repository_lines(config(tmp_path, release=release, backports=True)) == [
        f"deb http://deb.debian.org/debian {release} main",
    ]


def test_ubuntu_backports_pocket_is_on_the_archive(tmp_path: Path) -> None:
    cfg = config(tmp_path, distribution="ubuntu", release="noble", mirror="", backports=True,
                 components=["main", "universe"])
    assert apt.repository_lines(cfg)[-1] == "deb http://archive.ubuntu.com/ubuntu noble-backports main universe"


def test_backports_from_a_snapshot(tmp_path: Path) -> None:
    cfg = config(tmp_path, release="trixie", snapshot="20261101T000000Z", backports=True)
    assert apt.repository_lines(cfg)[-1] == ("deb [check-valid-until=no] https://snapshot.debian.org/archive/"
                                              "debian/20261101T000000Z trixie-backports main")


# ---- no host keys made during the build ----

def test_empty_files_stand_in_for_the_host_keys_openssh_server_would_make(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    made = stand_in_for_ssh_host_keys(tmp_path, ["openssh-client", "openssh-server", "systemd"])
    assert sorted(p.name for p in made) == sorted(SSH_HOST_KEYS)
    for key in made:
        assert key.parent == tmp_path / "etc/ssh" and key.stat().st_size == 0
        assert key.stat().st_mode & 0o777 == 0o600
    # The postinst's test for an existing key (`[ ! -f "$file" ]`) is what these files answer.
    for name in SSH_HOST_KEYS:
        assert subprocess.run(["sh", "-c", f'[ -f "{tmp_path}/etc/ssh/{name}" ]']).returncode == 0


def test_no_stand_ins_without_openssh_server_or_with_keys_already_there(tmp_path: Path) -> None:
    assert stand_in_for_ssh_host_keys(tmp_path, ["openssh-client", "systemd"]) == []
    assert not (tmp_path / "etc/ssh").exists()
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_ed25519_key").write_text("a key the image brought\n")
    assert stand_in_for_ssh_host_keys(tmp_path, ["openssh-server"]) == []
    assert sorted(p.name for p in (tmp_path / "etc/ssh").iterdir()) == ["ssh_host_ed25519_key"]


def test_the_stand_ins_stay_inside_the_image_when_etc_ssh_is_a_link_out_of_it(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (root / "etc/ssh").symlink_to(outside)           # absolute: resolved inside the image
    made = stand_in_for_ssh_host_keys(root, ["openssh-server"])
    assert made and all(p.is_relative_to(root) for p in made)
    assert list(outside.iterdir()) == []
