"""Build images of the RPM distributions (dnf: Fedora; zypper: openSUSE), Arch (pacman) and Gentoo
(stage3 + emerge) from small local repositories made here, since the real mirrors are not
reachable: RPMs with rpmbuild and createrepo_c, pacman packages with makepkg (run as nobody) and
repo-add, and a fake stage3 whose `emerge` is a shell script."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration


def sh(*argv: str | Path, **kw: object) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """World-readable scratch space (makepkg runs as nobody; pytest's tmp dirs are private)."""
    d = Path(tempfile.mkdtemp(prefix="mkosi-test-repos-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- RPM repositories

def build_rpm(top: Path, name: str, version: str, *, release: str = "1", epoch: str | None = None,
              files: dict[str, str] | None = None, docs: dict[str, str] | None = None,
              requires: tuple[str, ...] = ()) -> None:
    files = files or {}
    docs = docs or {}
    install = "\n".join(
        f"mkdir -p %{{buildroot}}{os.path.dirname(p)}\nprintf '%s' {json.dumps(c)} > %{{buildroot}}{p}\n"
        f"chmod 755 %{{buildroot}}{p}" for p, c in {**files, **docs}.items())
    spec = textwrap.dedent(f"""\
        Name: {name}
        Version: {version}
        Release: {release}
        {"Epoch: " + epoch if epoch else ""}
        Summary: test package {name}
        License: MIT
        BuildArch: noarch
        AutoReqProv: no
        {"Requires: " + " ".join(requires) if requires else ""}
        %description
        Test package.
        %install
        """) + install + "\n%files\n" + "".join(f"{p}\n" for p in files) + \
        "".join(f"%doc {p}\n" for p in docs)
    specfile = top / f"{name}.spec"
    specfile.write_text(spec)
    sh("rpmbuild", "-bb", "--define", f"_topdir {top}", specfile, env={**os.environ, "HOME": str(top)})


@pytest.fixture(scope="module")
def rpms(scratch: Path) -> Path:
    """Directory of noarch RPMs: filesystem (with an epoch), hello (with docs), bye, extra."""
    top = scratch / "rpmbuild"
    top.mkdir()
    build_rpm(top, "filesystem", "3.18", release="2", epoch="1",
              files={"/etc/filesystem-marker": "fs\n"})
    build_rpm(top, "hello", "1.0", files={"/usr/bin/hello": "#!/bin/sh\necho hello\n"},
              docs={"/usr/share/doc/hello/README": "read me\n"}, requires=("filesystem",))
    build_rpm(top, "bye", "2.0", files={"/usr/bin/bye": "#!/bin/sh\necho bye\n"}, requires=("filesystem",))
    build_rpm(top, "extra", "0.1", files={"/usr/bin/extra": "#!/bin/sh\n"})
    return top / "RPMS/noarch"


def rpm_repo(path: Path, rpms: Path, names: tuple[str, ...]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for n in names:
        for f in rpms.glob(f"{n}-[0-9]*.rpm"):
            shutil.copy(f, path)
    sh("createrepo_c", "--quiet", path)
    return path


@pytest.fixture(scope="module")
def fedora_mirror(scratch: Path, rpms: Path) -> Path:
    m = scratch / "fedora"
    rpm_repo(m / "releases/43/Everything/x86_64/os", rpms, ("filesystem", "hello", "bye"))
    rpm_repo(m / "updates/43/Everything/x86_64", rpms, ())
    rpm_repo(scratch / "rpm-extra", rpms, ("extra",))
    return m


@pytest.fixture(scope="module")
def opensuse_mirror(scratch: Path, rpms: Path) -> Path:
    m = scratch / "opensuse"
    rpm_repo(m / "tumbleweed/repo/oss", rpms, ("filesystem", "hello", "bye"))
    rpm_repo(m / "update/tumbleweed", rpms, ())
    return m


def manifest(d: Path) -> dict[str, tuple[str, str]]:
    data = json.loads((d / "image.manifest").read_text())
    return {p["name"]: (p["type"], p["version"]) for p in data["packages"]}


def rpm_qa(root: Path, dbpath: str) -> set[str]:
    with tempfile.TemporaryDirectory() as home:
        out = sh("rpm", "--root", root, "--dbpath", dbpath, "-qa", "--qf", "%{NAME}\n",
                 env={**os.environ, "HOME": home})
    return set(out.split())


def project(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


def test_fedora_dnf(tmp_path: Path, fedora_mirror: Path, scratch: Path) -> None:
    cache = tmp_path / "cache"
    d = project(tmp_path, "fedora")
    common = ["-d", "fedora", "-r", "43", f"--mirror=file://{fedora_mirror}", "--base-packages=no",
              "-t", "directory", f"--cache={cache}", "--manifest-format=json"]
    proc = run_mkosi(d, *common, "-p", "hello,bye", "--remove-package=bye", "build")
    # mkosi's progress lines from dnf's per-package lines (a log: from a quarter on), not dnf's tables.
    assert re.search(r"^ +Installing [1-3]/3: \S+$", proc.stderr, re.M), proc.stderr
    assert "Removing 1/1: bye-2.0-1.noarch" in proc.stderr, proc.stderr
    assert "Transaction Summary" not in proc.stdout + proc.stderr
    root = d / "image"
    assert (root / "usr/bin/hello").is_file() and (root / "etc/filesystem-marker").is_file()
    assert not (root / "usr/bin/bye").exists()                          # RemovePackages= with dnf
    assert not (root / "usr/share/doc/hello/README").exists()           # WithDocs=no: tsflags=nodocs
    assert not (root / "var/lib/dnf").exists() and not (root / "var/cache/dnf").exists()
    assert not (root / "usr/lib/sysimage/rpm").exists()                 # no rpm in the image: db cleaned
    # ... but the manifest was taken before the database went away
    assert manifest(d) == {"filesystem": ("rpm", "1:3.18-2"), "hello": ("rpm", "1.0-1")}
    assert list((cache / "fedora~43~x86_64/dnf").glob("*.solv"))     # dnf's cache went to Cache=

    # Offline from the cache, with docs, keeping the package metadata.
    run_mkosi(d, *common, "-p", "hello", "--with-docs", "--clean-package-metadata=no", "--with-network=never",
              "-f", "build")
    assert (root / "usr/share/doc/hello/README").is_file()
    assert rpm_qa(root, "/usr/lib/sysimage/rpm") == {"filesystem", "hello"}
    assert os.readlink(root / "var/lib/rpm") == "../../usr/lib/sysimage/rpm"
    assert (root / "var/lib/dnf").is_dir()

    # A disabled repository from mkosi.reposdir/, enabled by naming it in Repositories=.
    (d / "mkosi.reposdir").mkdir()
    (d / "mkosi.reposdir/local.repo").write_text(f"[local-extra]\nname=extra\nbaseurl=file://{scratch}/rpm-extra\n"
                                                 "gpgcheck=0\nenabled=0\n")
    run_mkosi(d, *common, "-p", "extra", "--repositories=local-extra", "-f", "build")
    assert (root / "usr/bin/extra").is_file()


def test_fedora_extra_repository_url(tmp_path: Path, fedora_mirror: Path, scratch: Path) -> None:
    d = project(tmp_path, "fedora-url")
    run_mkosi(d, "-d", "fedora", f"--mirror=file://{fedora_mirror}", "--base-packages=no", "-t", "directory",
              f"--repositories=file://{scratch}/rpm-extra", "-p", "extra", "build")
    assert (d / "image/usr/bin/extra").is_file()


def test_fedora_package_directories(tmp_path: Path, fedora_mirror: Path, rpms: Path) -> None:
    # `extra` is in no repository: only in a PackageDirectories= directory, indexed by createrepo_c.
    d = project(tmp_path, "fedora-pkgdirs")
    local = tmp_path / "local-rpms"
    local.mkdir()
    for f in rpms.glob("extra-[0-9]*.rpm"):
        shutil.copy(f, local)
    run_mkosi(d, "-d", "fedora", "-r", "43", f"--mirror=file://{fedora_mirror}", "--base-packages=no",
              "-t", "directory", f"--package-directory={local}", "-p", "hello,extra", "build")
    assert (d / "image/usr/bin/extra").is_file() and (d / "image/usr/bin/hello").is_file()
    assert not (local / "repodata").exists()        # indexed in the workspace, not in the user's directory


def test_fedora_missing_package_fails_clearly(tmp_path: Path, fedora_mirror: Path) -> None:
    d = project(tmp_path, "fedora-missing")
    proc = run_mkosi(d, "-d", "fedora", f"--mirror=file://{fedora_mirror}", "--base-packages=no",
                     "-t", "directory", "-p", "no-such-package", "build", check=False)
    assert proc.returncode != 0
    assert "dnf" in proc.stderr and "no-such-package" in proc.stderr + proc.stdout


def test_opensuse_zypper(tmp_path: Path, opensuse_mirror: Path) -> None:
    cache = tmp_path / "cache"
    d = project(tmp_path, "opensuse")
    common = ["-d", "opensuse", f"--mirror=file://{opensuse_mirror}", "--base-packages=no", "-t", "directory",
              f"--cache={cache}", "--manifest-format=json"]
    proc = run_mkosi(d, *common, "-p", "hello,bye", "--remove-package=bye", "build")
    assert re.search(r"^ +Installing [1-3]/3: \S+$", proc.stderr, re.M), proc.stderr
    assert "packages are going to be installed" not in proc.stdout + proc.stderr
    root = d / "image"
    assert (root / "usr/bin/hello").is_file() and not (root / "usr/bin/bye").exists()
    assert not (root / "usr/share/doc/hello/README").exists()           # rpm.install.excludedocs
    assert not (root / "var/cache/zypp").exists() and not (root / "var/lib/zypp").exists()
    assert manifest(d) == {"filesystem": ("rpm", "1:3.18-2"), "hello": ("rpm", "1.0-1")}
    assert list((cache / "opensuse~tumbleweed~x86_64/zypp/packages").rglob("hello-1.0-1.noarch.rpm"))

    run_mkosi(d, *common, "-p", "hello", "--with-docs", "--clean-package-metadata=no", "--with-network=never",
              "-f", "build")
    assert (root / "usr/share/doc/hello/README").is_file()
    assert rpm_qa(root, "/usr/lib/sysimage/rpm") == {"filesystem", "hello"}


# ---------------------------------------------------------------- pacman repositories

def makepkg(build: Path, name: str, version: str, *, epoch: str | None = None,
            files: dict[str, str] | None = None, depends: tuple[str, ...] = ()) -> None:
    d = build / name
    d.mkdir(parents=True)
    lines = [f"mkdir -p \"$pkgdir{os.path.dirname(p)}\"\nprintf '%s' {json.dumps(c)} > \"$pkgdir{p}\"\n"
             f"chmod 755 \"$pkgdir{p}\"" for p, c in (files or {}).items()]
    (d / "PKGBUILD").write_text(textwrap.dedent(f"""\
        pkgname={name}
        pkgver={version}
        pkgrel=1
        {"epoch=" + epoch if epoch else ""}
        pkgdesc="test package {name}"
        arch=(any)
        license=(MIT)
        depends=({" ".join(depends)})
        package() {{
        """) + "\n".join(lines) + "\n}\n")
    sh("chown", "-R", "65534:65534", build)
    sh("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
       "env", f"HOME={build}", f"PKGDEST={build}", "PKGEXT=.pkg.tar.gz", "makepkg", "--nodeps", "--noconfirm",
       cwd=d)


@pytest.fixture(scope="module")
def arch_mirror(scratch: Path) -> Path:
    build = scratch / "makepkg"
    build.mkdir()
    makepkg(build, "filesystem", "2024.01", epoch="1", files={"/etc/filesystem-marker": "fs\n"})
    makepkg(build, "hello", "1.0", files={"/usr/bin/hello": "#!/bin/sh\necho hello\n",
                                          "/usr/share/doc/hello/README": "read me\n"}, depends=("filesystem",))
    makepkg(build, "bye", "2.0", files={"/usr/bin/bye": "#!/bin/sh\n"}, depends=("filesystem",))
    makepkg(build, "extra", "0.1", files={"/usr/bin/extra": "#!/bin/sh\n"})
    m = scratch / "arch"
    for repo, names in (("core", ("filesystem", "hello", "bye")), ("extra", ()), ("mine", ("extra",))):
        path = m / repo / "os/x86_64" if repo != "mine" else scratch / "arch-mine"
        path.mkdir(parents=True)
        pkgs = [shutil.copy(f, path) for n in names for f in build.glob(f"{n}-[0-9]*.pkg.tar.gz")]
        sh("repo-add", "--quiet", path / f"{repo}.db.tar.gz", *pkgs)
    return m


def test_arch_pacman(tmp_path: Path, arch_mirror: Path, scratch: Path) -> None:
    cache = tmp_path / "cache"
    d = project(tmp_path, "arch")
    common = ["-d", "arch", f"--mirror=file://{arch_mirror}", "--base-packages=no", "-t", "directory",
              f"--cache={cache}", "--manifest-format=json"]
    proc = run_mkosi(d, *common, "-p", "hello,bye,extra", "--remove-package=bye",
                     f"--repositories=mine::file://{scratch}/arch-mine", "build")
    # pacman's lines are not numbered: mkosi counts them against its "Packages (4)" line.
    assert re.search(r"^ +Installing [1-4]/4: \w+$", proc.stderr, re.M), proc.stderr
    assert "Total Installed Size" not in proc.stdout + proc.stderr
    root = d / "image"
    assert (root / "usr/bin/hello").is_file() and (root / "usr/bin/extra").is_file()
    assert not (root / "usr/bin/bye").exists()                          # pacman -R
    assert not (root / "usr/share/doc/hello/README").exists()           # NoExtract
    assert not (root / "var/lib/pacman").exists()                       # no pacman in the image
    assert manifest(d) == {"filesystem": ("pacman", "1:2024.01-1"), "hello": ("pacman", "1.0-1"),
                           "extra": ("pacman", "0.1-1")}
    assert (cache / "arch~rolling~x86_64/pacman/pkg/hello-1.0-1-any.pkg.tar.gz").is_file()
    assert (cache / "arch~rolling~x86_64/pacman/sync/core.db").is_file()

    # Offline from the cache: no -y; a mkosi.reposdir/ file instead of Repositories=.
    (d / "mkosi.reposdir").mkdir()
    (d / "mkosi.reposdir/mine.conf").write_text(f"[mine]\nSigLevel = Never\nServer = file://{scratch}/arch-mine\n")
    shutil.copy(scratch / "arch-mine/mine.db", cache / "arch~rolling~x86_64/pacman/sync/mine.db")
    run_mkosi(d, *common, "-p", "hello,extra", "--with-docs", "--clean-package-metadata=no",
              "--with-network=never", "-f", "build")
    assert (root / "usr/share/doc/hello/README").is_file()
    assert sorted(p.name for p in (root / "var/lib/pacman/local").iterdir() if p.is_dir()) == \
        ["extra-0.1-1", "filesystem-1:2024.01-1", "hello-1.0-1"]


def test_arch_package_directories(tmp_path: Path, arch_mirror: Path, scratch: Path) -> None:
    # `extra` only in mkosi.packages/: repo-add indexes it, pacman installs it from there.
    d = project(tmp_path, "arch-pkgdirs")
    (d / "mkosi.packages").mkdir()
    for f in (scratch / "makepkg").glob("extra-[0-9]*.pkg.tar.gz"):
        shutil.copy(f, d / "mkosi.packages")
    run_mkosi(d, "-d", "arch", f"--mirror=file://{arch_mirror}", "--base-packages=no", "-t", "directory",
              "-p", "hello,extra", "build")
    assert (d / "image/usr/bin/extra").is_file() and (d / "image/usr/bin/hello").is_file()
    assert sorted(p.name for p in (d / "mkosi.packages").iterdir()) == ["extra-0.1-1-any.pkg.tar.gz"]


# ---------------------------------------------------------------- Gentoo with a fake stage3

FAKE_EMERGE = """\
#!/bin/bash
# Stands in for portage: records its arguments and "installs" every atom it is given.
mkdir -p /var/log
echo "$@" >> /var/log/fake-emerge.args
for a in "$@"; do
    case "$a" in -*) continue ;; esac
    name="${a#*/}"; cat="${a%%/*}"
    mkdir -p "/var/db/pkg/$cat/$name-1.0" /usr/bin
    echo 42 > "/var/db/pkg/$cat/$name-1.0/SIZE"
    printf '#!/bin/bash\\necho %s\\n' "$name" > "/usr/bin/$name"
    chmod 755 "/usr/bin/$name"
done
"""


def fake_stage3(tree: Path) -> None:
    """A root with bash, env and a fake emerge, with the libraries they need copied from the host."""
    for exe in ("/bin/bash", "/usr/bin/env", "/bin/mkdir", "/bin/cat", "/bin/chmod"):
        real = Path(exe).resolve()
        for p in [real, *(Path(line.split()[-2] if "=>" in line else line.split()[0])
                          for line in sh("ldd", real).splitlines() if "/" in line)]:
            dest = tree / str(p).lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        src = tree / link
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tree / target, dirs_exist_ok=True)
            shutil.rmtree(src)
        if not src.exists():
            src.symlink_to(target)
    (tree / "usr/bin/emerge").write_text(FAKE_EMERGE)
    (tree / "usr/bin/emerge").chmod(0o755)
    (tree / "etc/portage").mkdir(parents=True)
    (tree / "etc/portage/make.conf").write_text('COMMON_FLAGS="-O2"\n')


@pytest.fixture(scope="module")
def gentoo_mirror(scratch: Path) -> Path:
    m = scratch / "gentoo"
    stamp = "20240107T170309Z"
    name = f"stage3-amd64-systemd-{stamp}.tar.xz"
    auto = m / "releases/amd64/autobuilds"
    (auto / stamp).mkdir(parents=True)
    tree = scratch / "stage3-tree"
    fake_stage3(tree)
    with tarfile.open(auto / stamp / name, "w:xz") as t:
        t.add(tree, arcname=".")
    data = (auto / stamp / name).read_bytes()
    (auto / stamp / f"{name}.DIGESTS").write_text(f"# SHA512 HASH\n{hashlib.sha512(data).hexdigest()}  {name}\n")
    (auto / "latest-stage3-amd64-systemd.txt").write_text(f"# Latest\n{stamp}/{name} {len(data)}\n")
    snap = scratch / "snapshot/gentoo"
    (snap / "profiles").mkdir(parents=True)
    (snap / "profiles/repo_name").write_text("gentoo\n")
    (m / "snapshots").mkdir()
    with tarfile.open(m / "snapshots/gentoo-latest.tar.xz", "w:xz") as t:
        t.add(snap, arcname="gentoo")
    digest = hashlib.md5((m / "snapshots/gentoo-latest.tar.xz").read_bytes()).hexdigest()
    (m / "snapshots/gentoo-latest.tar.xz.md5sum").write_text(f"{digest}  gentoo-latest.tar.xz\n")
    return m


def test_gentoo_stage3_flow(tmp_path: Path, gentoo_mirror: Path) -> None:
    d = project(tmp_path, "gentoo")
    (d / "mkosi.skeleton/etc/portage").mkdir(parents=True)
    (d / "mkosi.skeleton/etc/portage/make.conf").write_text('COMMON_FLAGS="-O3"\n')
    run_mkosi(d, "-d", "gentoo", f"--mirror=file://{gentoo_mirror}", "--base-packages=no", "-t", "directory",
              f"--cache={tmp_path / 'cache'}", "--manifest-format=json", "-p", "app-misc/hello", "build")
    root = d / "image"
    assert (root / "usr/bin/hello").is_file()
    assert (root / "var/db/repos/gentoo/profiles/repo_name").read_text() == "gentoo\n"
    args = (root / "var/log/fake-emerge.args").read_text()
    assert "--noreplace" in args and "--getbinpkg=y" in args and args.rstrip().endswith("app-misc/hello")
    make_conf = (root / "etc/portage/make.conf").read_text()
    assert make_conf.startswith('COMMON_FLAGS="-O3"')  # the skeleton tree's file was kept
    assert f'GENTOO_MIRRORS="file://{gentoo_mirror}"' in make_conf
    assert manifest(d) == {"app-misc/hello": ("ebuild", "1.0")}
    assert not list((root / "var/cache/distfiles").iterdir())            # the cache mount is gone
