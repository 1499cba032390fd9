"""PackageDirectories= through a real Debian bookworm build: local .deb files (made here with dpkg-deb)
in mkosi.packages/ and in a PackageDirectories= directory are installed by Packages=, a dependency
between them is resolved, a local package wins over the archive's newer one of the same name, and
the postinst script sees them in $PACKAGEDIR.

Needs root and MKOSI_INTEGRATION=1; the package cache is the shared one (package_cache).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mkosi.installers.apt import installed_packages
from tests.integration.conftest import run_mkosi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
]


def make_deb(directory: Path, name: str, version: str, depends: str = "") -> Path:
    tree = directory / f".{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share" / name).mkdir(parents=True)
    (tree / "usr/share" / name / "marker").write_text(f"{name} {version} from a local package\n")
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
               f"Description: a local test package\n")
    if depends:
        control += f"Depends: {depends}\n"
    (tree / "DEBIAN/control").write_text(control)
    deb = directory / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return deb


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("pkgdirs")
    (d / "mkosi.packages").mkdir()
    make_deb(d / "mkosi.packages", "mkosi-local-base", "1.0")
    (d / "more").mkdir()
    make_deb(d / "more", "mkosi-local-app", "2.0", depends="mkosi-local-base (>= 1.0)")
    # bookworm's hello is 2.10-3: the local, older one must still be the one installed.
    make_deb(d / "more", "hello", "0.1-local")
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=directory
ImageId=pkgdirs
OutputDirectory=out

[Content]
Packages=mkosi-local-app,hello
PackageDirectories=more

[Build]
PackageCacheDirectory={package_cache}
""")
    (d / "out").mkdir()
    (d / "mkosi.postinst").write_text('#!/bin/sh\nset -e\necho "$PACKAGEDIR" > /usr/share/pkgdir-path\n'
                                      'ls "$PACKAGEDIR" > /usr/share/pkgdir-listing\n')
    (d / "mkosi.postinst").chmod(0o755)
    run_mkosi(d, "build")
    outputs = [p for p in (d / "out").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(outputs) == 1, list((d / "out").iterdir())
    return outputs[0]


def test_local_packages_are_installed(image: Path) -> None:
    packages = {p.name: p for p in installed_packages(image)}
    assert packages["mkosi-local-app"].version == "2.0"
    assert packages["mkosi-local-base"].version == "1.0"   # pulled in as a dependency, from mkosi.packages/
    assert (image / "usr/share/mkosi-local-app/marker").read_text() == "mkosi-local-app 2.0 from a local package\n"
    assert all(packages[n].status == "installed" for n in ("mkosi-local-app", "mkosi-local-base"))


def test_local_package_wins_over_the_archive(image: Path) -> None:
    packages = {p.name: p for p in installed_packages(image)}
    assert packages["hello"].version == "0.1-local"
    assert (image / "usr/share/hello/marker").exists()


def test_scripts_see_packagedir(image: Path) -> None:
    assert (image / "usr/share/pkgdir-path").read_text() == "/root/packages\n"
    listing = (image / "usr/share/pkgdir-listing").read_text().split()
    assert {"mkosi-local-app_2.0_all.deb", "mkosi-local-base_1.0_all.deb", "hello_0.1-local_all.deb"} <= set(listing)


def test_the_local_repository_is_not_left_in_the_image(image: Path) -> None:
    sources = [p for p in (image / "etc/apt").rglob("*") if p.is_file()] if (image / "etc/apt").is_dir() else []
    assert not any("trusted=yes" in p.read_text(errors="replace") for p in sources)
    assert not (image / "root/packages").exists()
    assert not (image / ".mkosi-apt").exists()
