"""Distribution plugins and their package manager front ends, without root or network: repository
URLs, generated configuration, option mapping, package databases, error messages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

import mkosi.distributions.facts
import mkosi.distributions.fedora
import mkosi.run
from mkosi.config import load_args
from mkosi.config.enums import CacheOnly, Distribution
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.distributions.registry import plugin
from mkosi.errors import MkosiError, ToolMissingError
from mkosi.installers import dnf, emerge, pacman, rpm, zypper
from mkosi.installers.base import InstallerConfig
from mkosi.installers.dnf import DnfConfig, RpmRepo
from mkosi.installers.pacman import PacmanConfig, PacmanRepo
from mkosi.installers.zypper import ZypperConfig


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = lambda: (Distribution.debian, "bookworm")  # noqa: E731
    monkeypatch.setattr(mkosi.distributions.facts, "host_distribution", fake)
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.chdir(tmp_path)


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[0]


def repos(*argv: str) -> list[str]:
    args = load(*argv)
    return plugin(args.distribution).repositories(args)


# ---------------------------------------------------------------- repository URLs


def test_fedora_urls() -> None:
    assert repos("-d", "fedora", "-r", "43", "--architecture", "x86_64") == [
        "https://dl.fedoraproject.org/pub/fedora/linux/releases/43/Everything/x86_64/os/",
        "https://dl.fedoraproject.org/pub/fedora/linux/updates/43/Everything/x86_64/",
    ]
    assert repos("-d", "fedora", "-r", "rawhide", "--architecture", "aarch64") == [
        "https://dl.fedoraproject.org/pub/fedora/linux/development/rawhide/Everything/aarch64/os/"]
    assert repos("-d", "fedora", "-r", "40", "--architecture", "ppc64le")[0] == \
        "https://dl.fedoraproject.org/pub/fedora-secondary/releases/40/Everything/ppc64le/os/"
    assert repos("-d", "fedora", "-r", "42", "-m", "file:///srv/fedora/", "--architecture", "x86_64") == [
        "file:///srv/fedora/releases/42/Everything/x86_64/os/", "file:///srv/fedora/updates/42/Everything/x86_64/"]


def test_enterprise_linux_urls() -> None:
    assert repos("-d", "centos", "-r", "9", "--architecture", "x86_64") == [
        "https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/",
        "https://mirror.stream.centos.org/9-stream/AppStream/x86_64/os/",
    ]
    assert repos("-d", "centos_epel", "-r", "9-stream", "--architecture", "x86_64") == [
        "https://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/",
        "https://mirror.stream.centos.org/9-stream/AppStream/x86_64/os/",
        "https://mirror.stream.centos.org/9-stream/CRB/x86_64/os/",
        "https://dl.fedoraproject.org/pub/epel/9/Everything/x86_64/",
    ]
    assert repos("-d", "centos_epel", "-r", "8", "--architecture", "x86_64")[2] == \
        "https://vault.centos.org/8-stream/PowerTools/x86_64/os/"
    assert repos("-d", "rocky", "-r", "9", "--architecture", "aarch64") == [
        "https://download.rockylinux.org/pub/rocky/9/BaseOS/aarch64/os/",
        "https://download.rockylinux.org/pub/rocky/9/AppStream/aarch64/os/",
    ]
    assert repos("-d", "rocky_epel", "-r", "9", "--architecture", "x86_64")[2:] == [
        "https://download.rockylinux.org/pub/rocky/9/CRB/x86_64/os/",
        "https://dl.fedoraproject.org/pub/epel/9/Everything/x86_64/",
    ]
    assert repos("-d", "alma", "-r", "9", "--architecture", "x86_64")[0] == \
        "https://repo.almalinux.org/almalinux/9/BaseOS/x86_64/os/"
    assert repos("-d", "alma_epel", "-r", "8", "--architecture", "x86_64")[2:] == [
        "https://repo.almalinux.org/almalinux/8/PowerTools/x86_64/os/",
        "https://dl.fedoraproject.org/pub/epel/8/Everything/x86_64/",
    ]


def test_enterprise_linux_keys() -> None:
    args = load("-d", "centos", "-r", "10", "--architecture", "x86_64")
    keys = {k for r in plugin(args.distribution).repos(args) for k in r.gpgkeys}  # type: ignore[attr-defined]
    assert keys == {"https://www.centos.org/keys/RPM-GPG-KEY-CentOS-Official-SHA256"}
    args = load("-d", "rocky_epel", "-r", "9", "--architecture", "x86_64")
    keys = {k for r in plugin(args.distribution).repos(args) for k in r.gpgkeys}  # type: ignore[attr-defined]
    assert keys == {"https://download.rockylinux.org/pub/rocky/RPM-GPG-KEY-Rocky-9",
                    "https://dl.fedoraproject.org/pub/epel/RPM-GPG-KEY-EPEL-9"}


def test_other_rpm_urls() -> None:
    assert repos("-d", "mageia", "-r", "9", "--architecture", "x86_64") == [
        "https://mirrors.kernel.org/mageia/distrib/9/x86_64/media/core/release/",
        "https://mirrors.kernel.org/mageia/distrib/9/x86_64/media/core/updates/",
    ]
    assert repos("-d", "openmandriva", "-r", "cooker", "--architecture", "x86_64") == [
        "http://abf-downloads.openmandriva.org/cooker/repository/x86_64/main/release/",
        "http://abf-downloads.openmandriva.org/cooker/repository/x86_64/main/updates/",
    ]
    assert repos("-d", "photon", "-r", "5.0", "--architecture", "x86_64") == [
        "https://packages.vmware.com/photon/5.0/photon_release_5.0_x86_64/",
        "https://packages.vmware.com/photon/5.0/photon_updates_5.0_x86_64/",
    ]
    assert repos("-d", "clear", "--architecture", "x86_64") == [
        "https://cdn.download.clearlinux.org/update (version latest)"]


def test_rpm_extra_repositories() -> None:
    lines = repos("-d", "fedora", "-r", "43", "--architecture", "x86_64",
                  "--repositories", "https://example.com/repo,updates-testing")
    assert lines[2:] == ["https://example.com/repo", "repository updates-testing"]
    args = load("-d", "fedora", "--use-host-repositories", "--repositories", "fedora,file:///srv/local")
    lines = plugin(args.distribution).repositories(args)
    assert lines[0] == "host repositories in /etc/yum.repos.d"
    assert "file:///srv/local" in lines and not any("dl.fedoraproject.org" in line for line in lines)


def test_arch_urls() -> None:
    assert repos("-d", "arch", "--architecture", "x86_64") == [
        "core::https://geo.mirror.pkgbuild.com/core/os/x86_64",
        "extra::https://geo.mirror.pkgbuild.com/extra/os/x86_64",
    ]
    assert repos("-d", "arch", "--architecture", "aarch64") == [
        "core::http://mirror.archlinuxarm.org/aarch64/core",
        "extra::http://mirror.archlinuxarm.org/aarch64/extra",
    ]
    assert repos("-d", "arch", "--architecture", "x86_64", "--repositories", "mine::https://myrepo.net")[2] == \
        "mine::https://myrepo.net"
    args = load("-d", "arch", "--repositories", "https://myrepo.net")
    with pytest.raises(MkosiError, match="invalid Arch Linux repository") as e:
        plugin(args.distribution).repositories(args)
    assert "NAME::URL" in (e.value.hint or "")


def test_opensuse_urls() -> None:
    assert repos("-d", "opensuse", "-r", "tumbleweed", "--architecture", "x86_64") == [
        "https://download.opensuse.org/tumbleweed/repo/oss/",
        "https://download.opensuse.org/update/tumbleweed/",
    ]
    assert repos("-d", "opensuse", "-r", "tumbleweed", "--architecture", "aarch64") == [
        "https://download.opensuse.org/ports/aarch64/tumbleweed/repo/oss/"]
    leap = [
        "https://download.opensuse.org/distribution/leap/15.6/repo/oss/",
        "https://download.opensuse.org/update/leap/15.6/oss/",
        "https://download.opensuse.org/update/leap/15.6/sle/",
        "https://download.opensuse.org/update/leap/15.6/backports/",
    ]
    assert repos("-d", "opensuse", "-r", "15.6", "--architecture", "x86_64") == leap
    assert repos("-d", "opensuse", "-r", "leap", "--architecture", "x86_64") == leap
    assert len(repos("-d", "opensuse", "-r", "15.2", "--architecture", "x86_64")) == 2
    args = load("-d", "opensuse", "-r", "42")
    with pytest.raises(MkosiError, match="unknown openSUSE release"):
        plugin(args.distribution).repositories(args)


def test_gentoo_urls() -> None:
    assert repos("-d", "gentoo", "--architecture", "x86_64") == [
        "https://distfiles.gentoo.org/releases/amd64/autobuilds/latest-stage3-amd64-systemd.txt",
        "https://distfiles.gentoo.org/snapshots/gentoo-latest.tar.xz",
    ]
    assert emerge.latest_url("http://m/", "aarch64") == \
        "http://m/releases/arm64/autobuilds/latest-stage3-arm64-systemd.txt"
    with pytest.raises(MkosiError, match="no Gentoo stage3"):
        emerge.latest_url("http://m", "s390x")


def test_base_packages() -> None:
    assert plugin(Distribution.fedora).base_packages(load("-d", "fedora")) == ["systemd"]
    assert plugin(Distribution.fedora).base_packages(load("-d", "fedora", "--bootable")) == \
        ["systemd", "kernel-core", "systemd-udev", "dracut"]
    assert plugin(Distribution.arch).base_packages(load("-d", "arch", "--bootable")) == ["systemd", "linux", "dracut"]
    assert plugin(Distribution.opensuse).base_packages(load("-d", "opensuse")) == ["systemd", "udev"]
    assert "kernel-default" in plugin(Distribution.opensuse).base_packages(load("-d", "opensuse", "--bootable"))
    assert plugin(Distribution.gentoo).base_packages(load("-d", "gentoo")) == ["sys-apps/systemd"]
    # dracut compresses with zstd only when the image has it (gzip otherwise, much slower).
    assert "zstd" in plugin(Distribution.debian).base_packages(load("-d", "debian", "--bootable"))
    assert "zstd" not in plugin(Distribution.debian).base_packages(load("-d", "debian"))


def test_rpmdb_locations() -> None:
    fedora = plugin(Distribution.fedora)
    assert fedora.rpmdb(load("-d", "fedora", "-r", "43")) == rpm.SYSIMAGE_RPMDB  # type: ignore[attr-defined]
    assert fedora.rpmdb(load("-d", "fedora", "-r", "35")) == rpm.LEGACY_RPMDB  # type: ignore[attr-defined]
    centos = plugin(Distribution.centos)
    assert centos.rpmdb(load("-d", "centos", "-r", "9")) == rpm.LEGACY_RPMDB  # type: ignore[attr-defined]
    assert centos.rpmdb(load("-d", "centos", "-r", "10")) == rpm.SYSIMAGE_RPMDB  # type: ignore[attr-defined]


# ---------------------------------------------------------------- dnf


def dnf_config(tmp_path: Path, **kw: object) -> DnfConfig:
    base: dict[str, object] = {
        "root": tmp_path / "root", "workspace": tmp_path / "ws", "release": "43", "architecture": "x86_64",
        "host_architecture": "x86_64",
        "repos": (RpmRepo(id="fedora", name="Fedora", baseurl=("https://m/os/",), gpgkeys=("https://k",)),),
    }
    base.update(kw)
    return DnfConfig(**base)  # type: ignore[arg-type]


def test_repo_file_text() -> None:
    text = dnf.repo_file_text([
        RpmRepo(id="remote", name="Remote", baseurl=("https://m/os/",), gpgkeys=("https://k1", "https://k2")),
        RpmRepo(id="local", name="Local", baseurl=("file:///srv/repo",)),
    ])
    remote, local = text.split("[local]")
    assert "[remote]" in remote and "baseurl=https://m/os/" in remote and "gpgcheck=1" in remote
    assert "gpgkey=https://k1\n       https://k2" in remote
    assert "gpgcheck=0" in local and "gpgkey" not in local
    assert "keeppackages=1" in dnf.repo_file_text([RpmRepo(id="a", name="a", baseurl=("file:///x",))],
                                                   keep_packages=True)


def test_dnf_argv(tmp_path: Path) -> None:
    cfg = dnf_config(tmp_path)
    argv = dnf.dnf_argv(cfg, "install", ["systemd"])
    assert argv[0] == "dnf" and argv[-2:] == ["install", "systemd"]
    assert f"--installroot={tmp_path / 'root'}" in argv
    assert f"--setopt=reposdir={tmp_path / 'ws/dnf/repos.d'}" in argv
    assert "--releasever=43" in argv and "--setopt=keepcache=1" in argv
    assert "--setopt=tsflags=nodocs" in argv and "--setopt=install_weak_deps=0" in argv
    assert "--setopt=max_parallel_downloads=10" in argv
    assert "--cacheonly" not in argv and not any(a.startswith("--forcearch") for a in argv)

    argv = dnf.dnf_argv(dnf_config(tmp_path, with_docs=True, network=False, architecture="aarch64"), "install", [])
    assert "--setopt=tsflags=nodocs" not in argv and "--cacheonly" in argv and "--forcearch=aarch64" in argv

    repodir = tmp_path / "mkosi.reposdir"
    repodir.mkdir()
    argv = dnf.dnf_argv(dnf_config(tmp_path, repository_directory=repodir, enable_repos=("extras",)), "install", [])
    assert f"--setopt=reposdir={tmp_path / 'ws/dnf/repos.d'},{repodir}" in argv
    assert "--enablerepo=extras" in argv and "--disablerepo=*" not in argv

    assert "--disablerepo=*" in dnf.dnf_argv(cfg, "remove", ["x"], offline=True)


def test_dnf_host_repositories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "yum.repos.d"
    host.mkdir()
    monkeypatch.setattr(dnf, "HOST_REPOSDIRS", (str(host), str(tmp_path / "missing")))
    cfg = dnf_config(tmp_path, use_host_repositories=True, repos=(), enable_repos=("fedora", "updates"))
    argv = dnf.dnf_argv(cfg, "install", ["x"])
    assert f"--setopt=reposdir={host},{tmp_path / 'ws/dnf/repos.d'}" in argv
    i = argv.index("--disablerepo=*")
    assert argv[i + 1:i + 3] == ["--enablerepo=fedora", "--enablerepo=updates"]
    monkeypatch.setattr(dnf, "HOST_REPOSDIRS", (str(tmp_path / "missing"),))
    with pytest.raises(MkosiError, match="UseHostRepositories"):
        dnf.dnf_argv(cfg, "install", ["x"])


def test_dnf_setup_writes_config(tmp_path: Path) -> None:
    cfg = dnf_config(tmp_path, rpmdb=rpm.SYSIMAGE_RPMDB)
    dnf.setup(cfg)
    assert "[fedora]" in (tmp_path / "ws/dnf/repos.d/mkosi.repo").read_text()
    macros = (tmp_path / "ws/dnf/home/.rpmmacros").read_text()
    assert "%_dbpath /usr/lib/sysimage/rpm" in macros and "%_excludedocs 1" in macros
    assert dnf.dnf_env(cfg) == {"HOME": str(tmp_path / "ws/dnf/home")}
    assert cfg.cache == tmp_path / "ws/dnf/cache"
    assert dnf_config(tmp_path, cache_dir=tmp_path / "cache").cache == tmp_path / "cache/dnf"


def test_missing_tools_name_debian_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mkosi.run, "find_tool", lambda name, sandbox=None: None)
    monkeypatch.setattr(mkosi.distributions.fedora, "find_tool", lambda name, sandbox=None: None)
    for tool, package in (("dnf", "dnf"), ("zypper", "zypper"), ("pacman", "pacman-package-manager"),
                          ("rpm", "rpm"), ("createrepo_c", "createrepo-c")):
        with pytest.raises(ToolMissingError) as e:
            mkosi.run.require_tool(tool)
        assert e.value.hint == f"install it with: apt-get install {package}"
    with pytest.raises(ToolMissingError, match="'dnf'"):
        dnf.install(dnf_config(tmp_path), ["systemd"])
    with pytest.raises(ToolMissingError, match="'zypper'"):
        zypper.install(ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=()), ["systemd"])


def test_clear_needs_swupd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mkosi.context import Context, Phase

    monkeypatch.setattr(mkosi.run, "find_tool", lambda name, sandbox=None: None)

    monkeypatch.setattr(mkosi.distributions.fedora, "find_tool", lambda name, sandbox=None: None)
    args = load("-d", "clear")
    ctx = Context(Args(), args, tmp_path, Phase.final, tmp_path / "root", None, tmp_path)
    with pytest.raises(MkosiError, match=r"not available on this host.*swupd") as e:
        plugin(Distribution.clear).install(ctx, ["os-core"])
    assert e.value.hint is not None


def test_clear_swupd_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mkosi.context import Context, Phase
    from mkosi.distributions.fedora import Clear

    monkeypatch.setattr(mkosi.run, "find_tool", lambda name, sandbox=None: f"/usr/bin/{name}")

    monkeypatch.setattr(mkosi.distributions.fedora, "find_tool", lambda name, sandbox=None: f"/usr/bin/{name}")
    ctx = Context(Args(), load("-d", "clear", "-r", "41000"), tmp_path, Phase.final, tmp_path / "root",
                  tmp_path / "cache", tmp_path)
    argv = Clear().swupd_argv(ctx, ["os-core", "kernel-native"])
    assert argv[:2] == ["/usr/bin/swupd", "os-install"]
    assert "--version=41000" in argv and "--bundles=os-core,kernel-native" in argv
    assert f"--path={tmp_path / 'root'}" in argv and "--url=https://cdn.download.clearlinux.org/update" in argv


# ---------------------------------------------------------------- zypper


def test_zypper_config(tmp_path: Path) -> None:
    remote = RpmRepo(id="repo-oss", name="oss", baseurl=("https://m/oss/",), gpgkeys=("https://m/oss/key",))
    cfg = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=(remote,))
    argv = zypper.zypper_argv(cfg, "install", ["systemd"])
    assert argv[:3] == ["zypper", "--root", str(tmp_path / "root")]
    assert "--gpg-auto-import-keys" in argv and "--no-refresh" not in argv
    assert argv[-3:] == ["--no-recommends", "--download-in-advance", "systemd"]
    assert "rpm.install.excludedocs = yes" in zypper.zypp_conf_text(cfg)

    local = RpmRepo(id="local", name="local", baseurl=("file:///srv/repo",))
    offline = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=(local,), network=False,
                           with_docs=True)
    argv = zypper.zypper_argv(offline, "install", ["x"])
    assert "--no-refresh" in argv and "--gpg-auto-import-keys" not in argv
    assert "rpm.install.excludedocs = no" in zypper.zypp_conf_text(offline)
    assert "--disable-repositories" in zypper.zypper_argv(offline, "remove", ["x"], offline=True)

    repodir = tmp_path / "mkosi.reposdir"
    repodir.mkdir()
    (repodir / "mine.repo").write_text("[mine]\nbaseurl=file:///x\n")
    cfg = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=(remote,),
                       repository_directory=repodir)
    zypper.setup(cfg)
    assert sorted(p.name for p in (tmp_path / "ws/zypper/repos.d").iterdir()) == ["mine.repo", "mkosi.repo"]
    assert "keeppackages=1" in (tmp_path / "ws/zypper/repos.d/mkosi.repo").read_text()
    env = zypper.zypper_env(cfg)
    assert env["ZYPP_CONF"] == str(tmp_path / "ws/zypper/zypp.conf") and Path(env["HOME"], ".rpmmacros").exists()


def test_opensuse_rejects_non_url_repositories() -> None:
    args = load("-d", "opensuse", "--repositories", "oss")
    with pytest.raises(MkosiError, match="not a URL"):
        plugin(args.distribution).repositories(args)


# ---------------------------------------------------------------- rpm database


def test_parse_rpm_query() -> None:
    text = ("systemd\t(none)\t254.5\t2.fc39\tx86_64\t1234\tsystemd-254.5-2.fc39.src.rpm\n"
            "filesystem\t1\t3.18\t2\tnoarch\t0\tfilesystem-3.18-2.src.rpm\n"
            "gpg-pubkey\t(none)\tabc\tdef\t(none)\t0\t(none)\n"
            "garbage line\n")
    pkgs = rpm.parse_query(text)
    assert [p.name for p in pkgs] == ["filesystem", "systemd"]
    assert pkgs[0].evr == "1:3.18-2" and pkgs[1].evr == "254.5-2.fc39"
    assert (pkgs[1].source, pkgs[1].source_version, pkgs[1].size) == ("systemd", "254.5-2.fc39", 1234)
    assert rpm.split_source_rpm("(none)") == (None, None)
    assert rpm.split_source_rpm("foo-bar-1.0-1.nosrc.rpm") == ("foo-bar", "1.0-1")


def test_rpmdb_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rpm.prepare_rpmdb(root, rpm.SYSIMAGE_RPMDB)
    assert (root / "var/lib/rpm").is_symlink()
    assert (root / "var/lib/rpm").resolve() == (root / "usr/lib/sysimage/rpm").resolve()
    assert rpm.find_rpmdb(root) is None  # empty
    (root / "usr/lib/sysimage/rpm/rpmdb.sqlite").write_text("")
    assert rpm.find_rpmdb(root) == rpm.SYSIMAGE_RPMDB
    other = tmp_path / "other"
    (other / "var/lib/rpm").mkdir(parents=True)
    (other / "var/lib/rpm/Packages").write_text("")
    assert rpm.find_rpmdb(other) == rpm.LEGACY_RPMDB
    assert "%_excludedocs" not in rpm.macros_text("/var/lib/rpm", with_docs=True)


def test_rpm_manifest_survives_cleaning(tmp_path: Path) -> None:
    root, ws = tmp_path / "root", tmp_path / "ws"
    ws.mkdir()
    saved = rpm.RpmPackage("hello", None, "1.0", "1", "noarch", 25, "hello", "1.0-1")
    (ws / "rpm-packages.json").write_text(json.dumps([saved.__dict__]))
    (info,) = rpm.manifest_packages(root, ws)
    assert (info.type, info.name, info.version, info.architecture) == ("rpm", "hello", "1.0-1", "noarch")


def test_dnf_clean_metadata(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for p in ("var/lib/dnf/history.sqlite", "var/cache/dnf/x.solv", "var/log/dnf.log", "usr/lib/sysimage/rpm/db",
              "usr/bin/rpm"):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("")
    dnf.clean_metadata(root, force=False)
    assert not (root / "var/lib/dnf").exists() and not (root / "var/log/dnf.log").exists()
    assert (root / "usr/lib/sysimage/rpm/db").exists()  # rpm is in the image: keep its database
    (root / "usr/bin/rpm").unlink()
    dnf.clean_metadata(root, force=False)
    assert not (root / "usr/lib/sysimage/rpm").exists()
    # dnf in the image: its state stays unless forced
    (root / "usr/bin/dnf").write_text("")
    (root / "var/lib/dnf").mkdir(parents=True)
    dnf.clean_metadata(root, force=False)
    assert (root / "var/lib/dnf").exists()
    dnf.clean_metadata(root, force=True)
    assert not (root / "var/lib/dnf").exists()


# ---------------------------------------------------------------- pacman


def pacman_config(tmp_path: Path, **kw: object) -> PacmanConfig:
    base: dict[str, object] = {
        "root": tmp_path / "root", "workspace": tmp_path / "ws", "architecture": "x86_64",
        "repos": (PacmanRepo("core", ("https://m/core/os/x86_64",)), PacmanRepo("local", ("file:///srv/repo",))),
    }
    base.update(kw)
    return PacmanConfig(**base)  # type: ignore[arg-type]


def test_pacman_conf(tmp_path: Path) -> None:
    cfg = pacman_config(tmp_path)
    text = pacman.pacman_conf_text(cfg)
    assert f"RootDir = {tmp_path / 'root'}\n" in text
    assert f"DBPath = {tmp_path / 'root/var/lib/pacman'}/\n" in text
    assert f"CacheDir = {tmp_path / 'ws/pacman/cache/pkg'}/\n" in text
    assert "Architecture = x86_64\n" in text and "SigLevel = Required DatabaseOptional\n" in text
    assert "NoExtract = usr/share/doc/* usr/share/man/*" in text
    core, local = text.split("[core]")[1].split("[local]")
    assert "SigLevel" not in core and "Server = https://m/core/os/x86_64" in core
    assert "SigLevel = Never" in local and "Server = file:///srv/repo" in local
    assert pacman.needs_keyring(cfg)
    assert not pacman.needs_keyring(pacman_config(tmp_path, repos=(PacmanRepo("l", ("file:///x",)),)))

    docs = pacman.pacman_conf_text(pacman_config(tmp_path, with_docs=True, cache_dir=tmp_path / "cache",
                                                 architecture="aarch64"))
    assert "NoExtract" not in docs and "Architecture = aarch64" in docs
    assert f"CacheDir = {tmp_path / 'cache/pacman/pkg'}/" in docs

    repodir = tmp_path / "mkosi.reposdir"
    repodir.mkdir()
    (repodir / "b.conf").write_text("[b]\nServer = file:///b\n")
    (repodir / "a.conf").write_text("[a]\nServer = file:///a\n")
    (repodir / "notes.txt").write_text("")
    local_only = pacman_config(tmp_path, repository_directory=repodir, repos=())
    text = pacman.pacman_conf_text(local_only)
    assert text.endswith(f"Include = {repodir / 'a.conf'}\n\nInclude = {repodir / 'b.conf'}\n")
    assert not pacman.needs_keyring(local_only)  # both included repositories are file:// ones
    (repodir / "c.conf").write_text("[c]\nServer = https://c\n[d]\nSigLevel = Never\nServer = https://d\n")
    assert pacman.needs_keyring(local_only)
    assert [(r.name, r.effective_siglevel()) for r in pacman.included_repos(repodir / "c.conf")] == \
        [("c", None), ("d", "Never")]


def test_pacman_operations(tmp_path: Path) -> None:
    cfg = pacman_config(tmp_path)
    assert pacman.install_argv(cfg, ["systemd"])[-3:] == ["-Sy", "--needed", "systemd"]
    offline = pacman_config(tmp_path, network=False, cache_dir=tmp_path / "cache",
                            repos=(PacmanRepo("core", ("file:///srv",)),))
    assert pacman.install_argv(offline, ["systemd"])[-3:] == ["-S", "--needed", "systemd"]
    with pytest.raises(MkosiError, match="no package databases are cached"):
        pacman.setup(offline)
    (tmp_path / "cache/pacman/sync").mkdir(parents=True)
    (tmp_path / "cache/pacman/sync/core.db").write_text("db")
    pacman.setup(offline)
    assert (tmp_path / "root/var/lib/pacman/sync/core.db").read_text() == "db"


def test_pacman_parse_repository() -> None:
    assert pacman.parse_repository("mine::https://m/x") == PacmanRepo("mine", ("https://m/x",))
    for bad in ("https://m/x", "::https://m", "a b::http://m"):
        with pytest.raises(MkosiError):
            pacman.parse_repository(bad)


def write_desc(root: Path, name: str, version: str, base: str, size: str) -> None:
    d = root / "var/lib/pacman/local" / f"{name}-{version}"
    d.mkdir(parents=True)
    (d / "desc").write_text(f"%NAME%\n{name}\n\n%VERSION%\n{version}\n\n%BASE%\n{base}\n\n"
                            f"%ARCH%\nx86_64\n\n%SIZE%\n{size}\n\n%DEPENDS%\nglibc\nlibcap\n\n")


def test_pacman_database(tmp_path: Path) -> None:
    root, ws = tmp_path / "root", tmp_path / "ws"
    ws.mkdir()
    write_desc(root, "systemd-libs", "1:255.1-1", "systemd", "4096")
    write_desc(root, "bash", "5.2-2", "bash", "9")
    (root / "var/lib/pacman/sync").mkdir(parents=True)
    pkgs = pacman.installed_packages(root)
    assert [(p.name, p.version, p.base, p.size) for p in pkgs] == [
        ("bash", "5.2-2", "bash", 9), ("systemd-libs", "1:255.1-1", "systemd", 4096)]
    assert pacman.parse_desc("%DEPENDS%\na\nb\n\n%NAME%\nx\n")["DEPENDS"] == ["a", "b"]

    pacman.save_package_list(root, ws)
    pacman.clean_metadata(root, force=False)  # no pacman in the image: everything goes
    assert not (root / "var/lib/pacman").exists()
    assert [p.name for p in pacman.manifest_packages(root, ws)] == ["bash", "systemd-libs"]


def test_pacman_clean_keeps_local_db_with_pacman(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_desc(root, "pacman", "6.1-1", "pacman", "1")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/pacman").write_text("")
    (root / "var/lib/pacman/sync").mkdir(parents=True)
    pacman.clean_metadata(root, force=False)
    assert (root / "var/lib/pacman/local").is_dir() and not (root / "var/lib/pacman/sync").exists()


def test_pacman_mirrorlist(tmp_path: Path) -> None:
    ml = tmp_path / "etc/pacman.d/mirrorlist"
    ml.parent.mkdir(parents=True)
    ml.write_text("#Server = https://x/$repo/os/$arch\n")
    pacman.write_mirrorlist(tmp_path, "https://m/$repo/os/$arch")
    assert ml.read_text().splitlines()[1] == "Server = https://m/$repo/os/$arch"
    pacman.write_mirrorlist(tmp_path, "https://other")
    assert "other" not in ml.read_text()


# ---------------------------------------------------------------- Gentoo

STAGE = "stage3-amd64-systemd-20240107T170309Z.tar.xz"


def make_gentoo_mirror(tmp_path: Path, payload: bytes = b"not really a tarball") -> Path:
    mirror = tmp_path / "mirror"
    auto = mirror / "releases/amd64/autobuilds"
    (auto / "20240107T170309Z").mkdir(parents=True)
    (auto / "20240107T170309Z" / STAGE).write_bytes(payload)
    (auto / "latest-stage3-amd64-systemd.txt").write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
        "# Latest as of Sun, 07 Jan 2024 17:03:09 +0000\n# ts=1704647002\n"
        f"20240107T170309Z/{STAGE} {len(payload)}\n"
        "-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n")
    (auto / "20240107T170309Z" / f"{STAGE}.DIGESTS").write_text(
        f"# BLAKE2B HASH\n{hashlib.blake2b(payload).hexdigest()}  {STAGE}\n"
        f"# SHA512 HASH\n{hashlib.sha512(payload).hexdigest()}  {STAGE}\n"
        f"# SHA512 HASH\n{'0' * 128}  {STAGE}.CONTENTS.gz\n")
    return mirror


def test_gentoo_parsers() -> None:
    text = f"-----BEGIN PGP SIGNED MESSAGE-----\n\n# comment\n20240107T170309Z/{STAGE} 264807004\n"
    assert emerge.parse_latest(text) == (f"20240107T170309Z/{STAGE}", 264807004)
    with pytest.raises(MkosiError):
        emerge.parse_latest("# nothing here\n")
    digests = emerge.parse_digests(f"# SHA512 HASH\n{'a' * 128}  {STAGE}\n{'b' * 64}  other.tar.xz\n"
                                   f"{'c' * 64}  {STAGE}\n", STAGE)
    assert digests == {"sha512": "a" * 128, "sha256": "c" * 64}
    assert emerge.split_pf("systemd-254.5-r1") == ("systemd", "254.5-r1")
    assert emerge.split_pf("gentoo-kernel-bin-6.6.8") == ("gentoo-kernel-bin", "6.6.8")


def test_gentoo_fetch_stage3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emerge, "release_key", lambda: None)
    mirror = make_gentoo_mirror(tmp_path)
    cfg = emerge.EmergeConfig(root=tmp_path / "root", workspace=tmp_path / "ws", mirror=f"file://{mirror}",
                              architecture="x86_64", cache_dir=tmp_path / "cache")
    stage = emerge.fetch_stage3(cfg)
    assert stage == tmp_path / "cache/gentoo/stage3" / STAGE and stage.read_bytes() == b"not really a tarball"
    assert emerge.fetch_stage3(cfg) == stage  # cached and still valid
    offline = emerge.EmergeConfig(root=cfg.root, workspace=cfg.workspace, mirror="http://unreachable.invalid",
                                  architecture="x86_64", cache_dir=tmp_path / "cache", network=False)
    assert emerge.fetch_stage3(offline) == stage
    with pytest.raises(MkosiError, match="no Gentoo stage3 is cached"):
        emerge.fetch_stage3(emerge.EmergeConfig(root=cfg.root, workspace=cfg.workspace, mirror="x",
                                                architecture="x86_64", cache_dir=tmp_path / "empty", network=False))


def test_gentoo_fetch_stage3_rejects_bad_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emerge, "release_key", lambda: None)
    mirror = make_gentoo_mirror(tmp_path)
    (mirror / "releases/amd64/autobuilds/20240107T170309Z" / STAGE).write_bytes(b"not really a tarbalX")
    cfg = emerge.EmergeConfig(root=tmp_path / "root", workspace=tmp_path / "ws", mirror=f"file://{mirror}",
                              architecture="x86_64", cache_dir=tmp_path / "cache")
    with pytest.raises(MkosiError, match="digest mismatch"):
        emerge.fetch_stage3(cfg)
    assert not (tmp_path / "cache/gentoo/stage3" / STAGE).exists()


def test_gentoo_make_conf_and_argv(tmp_path: Path) -> None:
    cfg = emerge.EmergeConfig(root=tmp_path, workspace=tmp_path, mirror="https://distfiles.gentoo.org/",
                              architecture="x86_64")
    text = emerge.make_conf_text(cfg)
    assert 'GENTOO_MIRRORS="https://distfiles.gentoo.org"' in text and "INSTALL_MASK" in text
    assert "-sandbox" in text and "nodoc" in text
    assert "INSTALL_MASK" not in emerge.make_conf_text(emerge.EmergeConfig(
        root=tmp_path, workspace=tmp_path, mirror="m", architecture="x86_64", with_docs=True))
    assert "--getbinpkg=y" in emerge.emerge_argv(cfg, ["sys-apps/systemd"])
    offline = emerge.EmergeConfig(root=tmp_path, workspace=tmp_path, mirror="m", architecture="x86_64",
                                  network=False)
    argv = emerge.emerge_argv(offline, ["sys-apps/systemd"])
    assert "--usepkgonly=y" in argv and "--getbinpkg=y" not in argv and argv[-1] == "sys-apps/systemd"


def test_gentoo_vdb(tmp_path: Path) -> None:
    for cat, pf, size in (("sys-apps", "systemd-254.5-r1", "1000"), ("app-misc", "hello-1.0", "12")):
        d = tmp_path / "var/db/pkg" / cat / pf
        d.mkdir(parents=True)
        (d / "SIZE").write_text(size + "\n")
        (d / "SLOT").write_text("0\n")
    pkgs = emerge.installed_packages(tmp_path)
    assert [(p.atom, p.version, p.size) for p in pkgs] == [("app-misc/hello", "1.0", 12),
                                                            ("sys-apps/systemd", "254.5-r1", 1000)]


def test_repository_key_check_off_for_dnf(tmp_path: Path) -> None:
    assert "--nogpgcheck" not in dnf.dnf_argv(dnf_config(tmp_path), "install", ["systemd"])
    assert "--nogpgcheck" in dnf.dnf_argv(dnf_config(tmp_path, key_check=False), "install", ["systemd"])


def test_cache_only_metadata_in_the_other_package_managers(tmp_path: Path) -> None:
    """Packages may download, the metadata is not synced."""
    argv = dnf.dnf_argv(dnf_config(tmp_path, refresh=False), "install", ["x"])
    assert "--setopt=metadata_expire=never" in argv and "--cacheonly" not in argv
    assert "--setopt=metadata_expire=never" not in dnf.dnf_argv(dnf_config(tmp_path), "install", ["x"])
    local = RpmRepo(id="local", name="local", baseurl=("file:///srv/repo",))
    cfg = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=(local,), refresh=False)
    assert "--no-refresh" in zypper.zypper_argv(cfg, "install", ["x"])
    cached = pacman_config(tmp_path, refresh=False, cache_dir=tmp_path / "cache")
    assert pacman.install_argv(cached, ["systemd"])[-3:] == ["-S", "--needed", "systemd"]
    with pytest.raises(MkosiError, match="CacheOnly=metadata but no package databases are cached"):
        pacman.setup(cached)


def test_every_installer_takes_the_shared_fields_from_the_build(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), with_docs=True, cache_only=CacheOnly.metadata,
                                 repository_directory=tmp_path / "repos")
    ctx = Context(Args(), config, tmp_path / "ws", Phase.final, tmp_path / "root", tmp_path / "cache",
                  tmp_path / "staging")
    for cls, own in ((DnfConfig, {"release": "43", "architecture": "x86_64", "repos": ()}),
                     (ZypperConfig, {"repos": ()}), (PacmanConfig, {"architecture": "x86_64", "repos": ()}),
                     (emerge.EmergeConfig, {"mirror": "m", "architecture": "x86_64"})):
        cfg = cls.for_build(ctx, **own)
        assert isinstance(cfg, InstallerConfig)
        assert (cfg.root, cfg.workspace, cfg.cache_dir) == (tmp_path / "root", tmp_path / "ws", tmp_path / "cache")
        assert cfg.with_docs and cfg.network and not cfg.refresh
        assert cfg.repository_directory == tmp_path / "repos" and cfg.sandbox == ctx.sandbox


def test_debian_backports_is_a_repository_name_not_a_source_line() -> None:
    args = load("--distribution=debian", "--release=trixie", "--repositories=backports,contrib")
    lines = plugin(args.distribution).repositories(args)
    assert lines[0] == "deb http://deb.debian.org/debian trixie main contrib"
    assert lines[-1] == "deb http://deb.debian.org/debian trixie-backports main contrib"
    assert not any("backports" in line for line in
                   plugin(Distribution.debian).repositories(load("--distribution=debian", "--release=trixie")))
