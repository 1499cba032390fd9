"""Format=oci through a real build of Debian bookworm, checked with the tools that consume OCI images:
`skopeo inspect` and `skopeo copy` read the layout, `umoci unpack` turns it into a runtime bundle, and
podman (with runc) runs a command in it, without network. A second build with the same
SourceDateEpoch= is byte-identical.

Needs root and MKOSI_INTEGRATION=1; skopeo, umoci, podman and runc come from tools/install-host-deps.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the platform is checked for x86-64"),
]

EPOCH = "1700000000"
MARKER = "written by mkosi.extra, mkosi-oci-marker\n"
NAME = "ocitest_1.0"
TAG = "1.0"


def sh(*argv: str | Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_project(d: Path, cache: Path) -> Path:
    (d / "mkosi.extra/usr/share").mkdir(parents=True)
    (d / "mkosi.extra/usr/share/mkosi-oci-marker").write_text(MARKER)
    (d / "mkosi.conf").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=oci
ImageId=ocitest
ImageVersion={TAG}
OutputDirectory=out

[Content]
SourceDateEpoch={EPOCH}

[Build]
PackageCacheDirectory={cache}
Environment=GREETING=hello-from-mkosi
""")
    (d / "out").mkdir()
    return d


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    return write_project(tmp_path_factory.mktemp("oci-project"), package_cache)


@pytest.fixture(scope="module")
def layout(project: Path) -> Path:
    start = time.monotonic()
    run_mkosi(project, "-f", "build")
    seconds = time.monotonic() - start
    out = project / "out" / NAME
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"\noci: mkosi -f build in {seconds:.1f}s, {size / 2**20:.1f} MiB")
    return out


def digest_tree(path: Path) -> dict[str, tuple[str, int, int]]:
    """Every file's digest, mode and modification time (the directories' too, without a digest)."""
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "",
                                       p.stat().st_mode, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def test_the_output_is_the_layout_directory(project: Path, layout: Path) -> None:
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    # The compression is inside (gzip layers), not in the directory's name.
    # And the link named after the bare output name (a modern tree): ocitest -> ocitest_1.0.
    assert sorted(p.name for p in (project / "out").iterdir()) == sorted([NAME, f"{NAME}.manifest", "ocitest"])
    assert os.readlink(project / "out/ocitest") == NAME


def test_skopeo_inspects_the_image(layout: Path) -> None:
    info = json.loads(sh("skopeo", "inspect", f"oci:{layout}:{TAG}").stdout)
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Created"] == "2023-11-14T22:13:20Z"
    assert "GREETING=hello-from-mkosi" in info["Env"]
    assert any(e.startswith("PATH=") for e in info["Env"])
    assert info["Labels"] == {"org.opencontainers.image.title": "ocitest", "org.opencontainers.image.version": TAG}
    assert len(info["Layers"]) == 1
    manifest = json.loads(sh("skopeo", "inspect", "--raw", f"oci:{layout}:{TAG}").stdout)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert manifest["annotations"]["org.opencontainers.image.version"] == TAG


def test_skopeo_copies_the_image_and_its_digests_hold(layout: Path, tmp_path: Path) -> None:
    sh("skopeo", "copy", f"oci:{layout}:{TAG}", f"dir:{tmp_path / 'copy'}")
    manifest = json.loads((tmp_path / "copy/manifest.json").read_text())
    for descriptor in (manifest["config"], *manifest["layers"]):
        copied = tmp_path / "copy" / descriptor["digest"].removeprefix("sha256:")
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == descriptor["digest"].removeprefix("sha256:")


def test_umoci_unpacks_debian_with_the_extra_tree(layout: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    sh("umoci", "unpack", "--image", f"{layout}:{TAG}", bundle)
    os_release = (bundle / "rootfs/etc/os-release").read_text()
    assert "ID=debian" in os_release and "VERSION_CODENAME=bookworm" in os_release
    assert (bundle / "rootfs/usr/share/mkosi-oci-marker").read_text() == MARKER
    # The runtime configuration umoci derives carries the image's environment.
    runtime = json.loads((bundle / "config.json").read_text())
    assert "GREETING=hello-from-mkosi" in runtime["process"]["env"]


def podman_run(layout: Path, scratch: Path, *command: str) -> str:
    """Run a command in the image with podman: private storage, no network; runc copes with hybrid
    cgroup hierarchies, and the rlimits are lowered because raising them needs CAP_SYS_RESOURCE, which
    a build host in a container may not have."""
    # podman wants a short run root (at most 50 characters).
    runroot = Path(tempfile.mkdtemp(prefix="mkosi-oci-", dir="/tmp"))
    podman: list[str | Path] = ["podman", "--root", scratch / "storage", "--runroot", runroot,
                                "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--events-backend=none",
                                "--runtime=runc"]
    try:
        return sh(*podman, "run", "--rm", "--network=none", "--ulimit=nofile=1024:1024", "--ulimit=nproc=4096:4096",
                  f"oci:{layout}:{TAG}", *command, timeout=300).stdout
    finally:
        # The vfs driver leaves read-only copies behind; podman removes its own storage.
        subprocess.run([*map(str, podman), "system", "reset", "--force"], capture_output=True)
        shutil.rmtree(scratch / "storage", ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def test_podman_runs_a_command_from_the_image(layout: Path, tmp_path: Path) -> None:
    out = podman_run(layout, tmp_path, "sh", "-c", 'cat /usr/share/mkosi-oci-marker; echo "$GREETING"; /bin/true')
    assert out == MARKER + "hello-from-mkosi\n"


@pytest.fixture(scope="module")
def zstd_layout(project: Path, layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oci-zstd")
    start = time.monotonic()
    run_mkosi(project, "-f", "--compress-output=zstd", f"--output-dir={out}", "build")
    print(f"\noci: zstd build in {time.monotonic() - start:.1f}s")
    return out / NAME


def test_a_zstd_layer_is_read_by_skopeo_and_run_by_podman(zstd_layout: Path, layout: Path, tmp_path: Path) -> None:
    manifest = json.loads(sh("skopeo", "inspect", "--raw", f"oci:{zstd_layout}:{TAG}").stdout)
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    # The same tree: the uncompressed layer's digest does not change with the compression.
    def diff_ids(d: Path) -> list[str]:
        return list(json.loads(sh("skopeo", "inspect", "--config", f"oci:{d}:{TAG}").stdout)["rootfs"]["diff_ids"])
    assert diff_ids(zstd_layout) == diff_ids(layout)
    assert podman_run(zstd_layout, tmp_path, "cat", "/usr/share/mkosi-oci-marker") == MARKER


def test_a_second_build_is_byte_identical(project: Path, layout: Path, tmp_path: Path) -> None:
    first = digest_tree(layout)
    start = time.monotonic()
    run_mkosi(project, "-f", f"--output-dir={tmp_path}", "build")
    print(f"\noci: second build (warm) in {time.monotonic() - start:.1f}s")
    assert digest_tree(tmp_path / NAME) == first
