"""PackageDirectories= / VolatilePackageDirectories=: gathering, indexing and the repository definitions."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from mkosi.cache import build_key, image_cache_key
from mkosi.config import load_args
from mkosi.config.enums import Distribution
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.dependencies import host_tools
from mkosi.errors import MkosiError
from mkosi.installers import dnf, localrepo, pacman, zypper
from mkosi.installers.apt import AptConfig, parse_dpkg_plan
from mkosi.installers.apt.hostapt import LOCAL_LIST, LOCAL_PREFERENCES, drop_local_lists, setup_apt
from mkosi.installers.apt.repositories import uri_to_filename
from mkosi.installers.apt.unpack import Decompressor
from mkosi.installers.dnf import DnfConfig, RpmRepo
from mkosi.installers.pacman import PacmanConfig, PacmanRepo
from mkosi.installers.zypper import ZypperConfig
from mkosi.scripts import PACKAGEDIR_IN_IMAGE, _packagedir
from mkosi.summary import not_implemented
from tests.unit.conftest import write


def make_deb(directory: Path, name: str = "mkosi-local-test", version: str = "1.0", compressor: str = "gzip") -> Path:
    """A real, tiny .deb built with dpkg-deb."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    tree = directory / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share" / name).mkdir(parents=True)
    (tree / "usr/share" / name / "hello").write_text("hello from a local package\n")
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <test@example.org>\n"
        f"Description: a local test package\n")
    deb = directory / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compressor}", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return deb


def apt_config(tmp_path: Path, **kwargs: object) -> AptConfig:
    return AptConfig(root=tmp_path / "root", workspace=tmp_path / "ws", distribution="debian", release="bookworm",
                     mirror="http://deb.debian.org/debian", components=["main"], extra_repositories=[],
                     architecture="amd64", **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- package files and gathering


def test_package_kind() -> None:
    assert localrepo.package_kind(Path("a_1_all.deb")) == "deb"
    assert localrepo.package_kind(Path("a-1-1.x86_64.rpm")) == "rpm"
    assert localrepo.package_kind(Path("a-1-1.src.rpm")) is None
    assert localrepo.package_kind(Path("a-1-1-x86_64.pkg.tar.zst")) == "pacman"
    assert localrepo.package_kind(Path("a-1-1-x86_64.pkg.tar.zst.sig")) is None
    assert localrepo.package_kind(Path("Packages")) is None


def test_gather_links_package_files_flat(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "sub").mkdir(parents=True)
    two.mkdir()
    (one / "a_1_all.deb").write_text("a")
    (one / "sub/b-1-1.noarch.rpm").write_text("b")
    (one / "README").write_text("not a package")
    (two / "a_1_all.deb").write_text("a from two")
    dest = tmp_path / "packages"
    found = localrepo.gather([one, two], dest)
    assert [p.name for p in found] == ["a_1_all.deb", "b-1-1.noarch.rpm"]
    assert (dest / "a_1_all.deb").read_text() == "a from two"   # the later directory wins
    assert not (dest / "README").exists()
    # Gathering again (the same files) changes nothing.
    assert localrepo.gather([one, two], dest) == found


def test_gather_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match=r"package directory .*nope does not exist"):
        localrepo.gather([tmp_path / "nope"], tmp_path / "packages")


def test_prepare_without_packages_of_the_kind(tmp_path: Path) -> None:
    (tmp_path / "a-1-1.noarch.rpm").write_text("")
    assert localrepo.prepare(tmp_path, "deb") is None
    assert localrepo.prepare(None, "deb") is None


# ---------------------------------------------------------------- indexes


@pytest.mark.skipif(shutil.which("dpkg-scanpackages") is None and shutil.which("apt-ftparchive") is None,
                    reason="neither dpkg-scanpackages nor apt-ftparchive is installed")
def test_index_deb_on_a_real_package(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    deb = make_deb(repo)
    assert localrepo.prepare(repo, "deb") == repo.absolute()
    index = (repo / "Packages").read_bytes()
    text = index.decode()
    assert "Package: mkosi-local-test\n" in text
    assert "Version: 1.0\n" in text
    assert f"Filename: ./{deb.name}\n" in text
    assert hashlib.sha256(deb.read_bytes()).hexdigest() in text
    release = (repo / "Release").read_text()
    assert f"Origin: {localrepo.APT_ORIGIN}\n" in release
    assert f" {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n" in release


def test_missing_indexer_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localrepo, "find_tool", lambda *a, **k: None)
    with pytest.raises(MkosiError, match="dpkg-scanpackages") as e:
        localrepo.index_deb(tmp_path)
    assert "dpkg-dev" in str(e.value) + str(getattr(e.value, "hint", ""))


@pytest.mark.skipif(shutil.which("createrepo_c") is None or shutil.which("rpmbuild") is None,
                    reason="createrepo_c or rpmbuild is not installed")
def test_index_rpm_on_a_real_package(tmp_path: Path) -> None:
    top = tmp_path / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS/t.spec").write_text(
        "Name: mkosi-local-test\nVersion: 1\nRelease: 1\nSummary: t\nLicense: MIT\nBuildArch: noarch\n"
        "%description\nt\n%files\n")
    subprocess.run(["rpmbuild", "--quiet", "--define", f"_topdir {top}", "-bb", str(top / "SPECS/t.spec")],
                   check=True, capture_output=True)
    repo = tmp_path / "repo"
    localrepo.gather([top / "RPMS"], repo)
    assert localrepo.prepare(repo, "rpm") == repo.absolute()
    assert (repo / "repodata/repomd.xml").exists()


# ---------------------------------------------------------------- repository definitions


def test_apt_gets_a_trusted_pinned_source(tmp_path: Path) -> None:
    repo = tmp_path / "packages"
    repo.mkdir()
    cfg = apt_config(tmp_path, local_repository=repo)
    setup_apt(cfg, tmp_path / "status", Path("/dev/null"))
    etc = tmp_path / "ws/apt/etc"
    assert (etc / "sources.list.d" / LOCAL_LIST).read_text() == f"deb [trusted=yes] file:{repo} ./\n"
    pref = (etc / "preferences.d" / LOCAL_PREFERENCES).read_text()
    assert f"Pin: release o={localrepo.APT_ORIGIN}\n" in pref
    assert "Pin-Priority: 1100\n" in pref
    # The distribution's sources are not touched; without local packages the files go again.
    assert "trusted" not in (etc / "sources.list").read_text()
    setup_apt(apt_config(tmp_path), tmp_path / "status", Path("/dev/null"))
    assert not (etc / "sources.list.d" / LOCAL_LIST).exists()
    assert not (etc / "preferences.d" / LOCAL_PREFERENCES).exists()


def test_apt_local_lists_are_dropped_from_a_shared_cache(tmp_path: Path) -> None:
    repo = tmp_path / "packages"
    repo.mkdir()
    cfg = apt_config(tmp_path, local_repository=repo, cache_dir=tmp_path / "cache")
    apt = setup_apt(cfg, tmp_path / "status", Path("/dev/null"))
    mine = apt.lists / (uri_to_filename(f"{repo}/") + "._Packages")
    other = apt.lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
    mine.write_text("")
    other.write_text("")
    drop_local_lists(apt)
    assert not mine.exists()
    assert other.exists()


def test_dnf_and_zypper_get_an_unsigned_preferred_repository(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnf, "HOST_REPOSDIRS", (str(tmp_path),))
    repo = tmp_path / "packages"
    remote = RpmRepo(id="fedora", name="Fedora", baseurl=("https://m/os/",), gpgkeys=("https://k",))
    cfg = DnfConfig(root=tmp_path / "root", workspace=tmp_path / "ws", release="40", architecture="x86_64",
                    repos=(remote,), local_repository=repo)
    dnf.setup(cfg)
    text = (tmp_path / "ws/dnf/repos.d/mkosi.repo").read_text()
    local = text.split(f"[{localrepo.REPO_NAME}]", 1)[1].split("\n\n")[0]
    assert f"baseurl=file://{repo}" in local
    assert "gpgcheck=0" in local
    assert "priority=1\n" in local
    assert "metadata_expire=0" in local
    assert "[fedora]" in text and "gpgcheck=1" in text
    # UseHostRepositories=yes with Repositories= IDs still enables the local repository.
    argv = dnf.dnf_argv(dataclasses.replace(cfg, use_host_repositories=True, enable_repos=("baseos",)),
                        "install", ["x"])
    assert f"--enablerepo={localrepo.REPO_NAME}" in argv

    zcfg = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "zws", repos=(), local_repository=repo)
    zypper.setup(zcfg)
    ztext = (zypper.reposd_dir(zcfg) / "mkosi.repo").read_text()
    assert f"[{localrepo.REPO_NAME}]" in ztext and "gpgcheck=0" in ztext and "priority=1" in ztext


def test_pacman_lists_the_local_repository_first(tmp_path: Path) -> None:
    repo = tmp_path / "packages"
    cfg = PacmanConfig(root=tmp_path / "root", workspace=tmp_path / "ws", architecture="x86_64",
                       repos=(PacmanRepo("core", ("https://m/core/os/x86_64",)),), local_repository=repo)
    text = pacman.pacman_conf_text(cfg)
    assert text.index(f"[{localrepo.REPO_NAME}]") < text.index("[core]")
    section = text.split(f"[{localrepo.REPO_NAME}]", 1)[1].split("\n\n")[0]
    assert "SigLevel = Never" in section
    assert f"Server = file://{repo}" in section


# ---------------------------------------------------------------- cache keys, scripts, dependencies


def _ctx(tmp_path: Path, config: Config) -> Context:
    ws = tmp_path / "ws"
    return Context(Args(), config, ws, Phase.final, ws / "root", None, ws / "staging")


def test_package_directories_are_in_the_cache_key_volatile_ones_are_not(tmp_path: Path) -> None:
    pkgs, volatile = tmp_path / "pkgs", tmp_path / "volatile"
    pkgs.mkdir()
    volatile.mkdir()
    (pkgs / "a_1_all.deb").write_text("one")
    (volatile / "b_1_all.deb").write_text("one")
    config = dataclasses.replace(Config(), output=tmp_path / "image", package_directories=[pkgs],
                                 volatile_package_directories=[volatile])
    ctx = _ctx(tmp_path, config)
    key, whole = image_cache_key(ctx, ["a"]), build_key(Args(), config)
    (volatile / "b_1_all.deb").write_text("two")
    assert image_cache_key(ctx, ["a"]) == key
    assert build_key(Args(), config) != whole
    (pkgs / "a_1_all.deb").write_text("two")
    assert image_cache_key(ctx, ["a"]) != key
    # Files that are not packages do not count.
    key = image_cache_key(ctx, ["a"])
    (pkgs / "notes.txt").write_text("x")
    assert image_cache_key(ctx, ["a"]) == key


def test_scripts_see_packagedir(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, Config())
    binds: list[tuple[Path, str]] = []
    env: dict[str, str] = {}
    _packagedir(ctx, binds, env)
    assert binds == [] and env == {}   # no package directory: nothing
    ctx.package_dir.mkdir(parents=True)
    _packagedir(ctx, binds, env)
    assert binds == [(ctx.package_dir, PACKAGEDIR_IN_IMAGE)]
    assert env == {"PACKAGEDIR": PACKAGEDIR_IN_IMAGE}


def test_dependencies_name_the_indexer(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), distribution=Distribution.fedora, package_directories=[tmp_path])
    assert "createrepo_c" in host_tools(config)
    assert "createrepo_c" not in host_tools(dataclasses.replace(config, package_directories=[]))
    arch = dataclasses.replace(config, distribution=Distribution.arch)
    assert "repo-add" in host_tools(arch)


# ---------------------------------------------------------------- the settings


@pytest.mark.usefixtures("fixed_host")
def test_mkosi_packages_is_used_besides_the_named_directories(wd: Path) -> None:
    (wd / "mkosi.packages").mkdir()
    (wd / "more").mkdir()
    write(wd / "mkosi.conf", """
        [Distribution]
        Distribution=debian

        [Content]
        PackageDirectories=more
        VolatilePackageDirectories=more
        """)
    _, configs = load_args(["summary"])
    assert configs[0].package_directories == [wd / "mkosi.packages", wd / "more"]
    assert configs[0].volatile_package_directories == [wd / "more"]
    # Not "not implemented yet" any more.
    assert not {"PackageDirectories", "VolatilePackageDirectories"} & set(not_implemented(configs[0]))


def test_plan_names_flat_repository_packages_normalized() -> None:
    ops = parse_dpkg_plan("/usr/bin/dpkg --status-fd 5 --unpack --auto-deconfigure /ws/packages/./a_1_all.deb "
                          "/c/archives/b_1_amd64.deb\n")
    assert ops[0].args == ("/ws/packages/a_1_all.deb", "/c/archives/b_1_amd64.deb")


def test_local_packages_get_no_uncompressed_copy(tmp_path: Path) -> None:
    repo = tmp_path / "packages"
    repo.mkdir()
    deb = make_deb(repo, compressor="xz")
    store = tmp_path / "uncompressed"
    with Decompressor(store, as_is=[repo]) as d:
        assert d.copies([deb]) == [deb]
    assert not any(store.iterdir())
    with Decompressor(store) as d:   # elsewhere (the package cache) it gets one
        assert d.copies([deb])[0].parent == store
