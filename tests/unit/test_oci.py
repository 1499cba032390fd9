"""Format=oci: the layout writer (digests, media types, the configuration blob, annotations, determinism),
the image's values taken from the configuration, and the format's row (name, compression, checks)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Optional

import pytest

from mkosi.config import load_args
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.errors import ConfigError, MkosiError
from mkosi.output import artifacts
from mkosi.output.make import check_target, make_outputs
from mkosi.output.oci import (
    CONFIG_TYPE,
    DEFAULT_PATH,
    INDEX_TYPE,
    LAYER_TYPES,
    MANIFEST_TYPE,
    ImageSpec,
    check_oci,
    image_spec,
    make_layer,
    rfc3339,
    settle,
    write_layout,
)
from mkosi.reproduce import tree_digest, tree_entries
from mkosi.summary import summary_dict
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

EPOCH = 1700000000


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[0]


def make_tree(root: Path) -> Path:
    write(root / "etc/os-release", "ID=test\n")
    write(root / "usr/bin/hello", "#!/bin/sh\necho hello\n", mode=0o755)
    (root / "usr/lib").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    return root


def build(tmp: Path, compression: Optional[str] = "gzip", epoch: Optional[int] = EPOCH,
          spec: Optional[ImageSpec] = None, name: str = "layout") -> Path:
    root = tmp / "root"
    if not root.exists():
        make_tree(root)
    layout, work = tmp / name, tmp / f"{name}-work"
    layout.mkdir()
    work.mkdir()
    layer = make_layer(root, layout, work, compression, epoch)
    write_layout(layout, spec or ImageSpec("amd64", rfc3339(epoch or 0)), [layer])
    return layout


def blob(layout: Path, descriptor: dict[str, Any]) -> bytes:
    algorithm, _, encoded = str(descriptor["digest"]).partition(":")
    data = (layout / "blobs" / algorithm / encoded).read_bytes()
    # Every descriptor's digest and size are those of the blob it points at.
    assert algorithm == "sha256" and hashlib.sha256(data).hexdigest() == encoded
    assert len(data) == descriptor["size"]
    return data


def documents(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(layout, index["manifests"][0]))
    config = json.loads(blob(layout, manifest["config"]))
    return index, manifest, config


def layer_bytes(layout: Path) -> bytes:
    manifest = documents(layout)[1]
    return blob(layout, manifest["layers"][0])


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_layout_has_its_files_and_every_blob_is_named_by_its_digest(tmp_path: Path) -> None:
    layout = build(tmp_path)
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index, manifest, _ = documents(layout)
    assert index["schemaVersion"] == 2 and index["mediaType"] == INDEX_TYPE
    assert len(index["manifests"]) == 1
    assert index["manifests"][0]["mediaType"] == MANIFEST_TYPE
    assert index["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_TYPES["gzip"]]
    # The blobs are exactly the config, the manifest and the layer; nothing else is left behind.
    digests = {manifest["config"]["digest"], index["manifests"][0]["digest"], manifest["layers"][0]["digest"]}
    assert {f"sha256:{p.name}" for p in (layout / "blobs/sha256").iterdir()} == digests
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert not list((tmp_path / "layout-work").iterdir())


def test_the_configuration_carries_platform_time_environment_and_diff_ids(tmp_path: Path) -> None:
    spec = ImageSpec("arm", rfc3339(EPOCH), variant="v7", env=(DEFAULT_PATH, "LANG=C.UTF-8"),
                     labels={"org.opencontainers.image.title": "demo"})
    layout = build(tmp_path, spec=spec)
    _, _, config = documents(layout)
    assert config["architecture"] == "arm" and config["variant"] == "v7" and config["os"] == "linux"
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["config"] == {"Env": [DEFAULT_PATH, "LANG=C.UTF-8"],
                                "Labels": {"org.opencontainers.image.title": "demo"}}
    # The diff ID is the digest of the uncompressed layer.
    uncompressed = gzip.decompress(layer_bytes(layout))
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]}
    assert config["history"] == [{"created": "2023-11-14T22:13:20Z", "created_by": "mkosi"}]


def test_the_layer_is_the_tree_with_relative_names_and_clamped_times(tmp_path: Path) -> None:
    layout = build(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_bytes(layout)))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["bin", "etc", "etc/os-release", "usr", "usr/bin", "usr/bin/hello", "usr/lib"]
        assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
        assert members["usr/bin/hello"].mode & 0o777 == 0o755
        assert {m.mtime for m in members.values()} == {EPOCH}
        extracted = tar.extractfile("etc/os-release")
        assert extracted is not None and extracted.read() == b"ID=test\n"


@pytest.mark.parametrize("compression,magic", [("gzip", b"\x1f\x8b"), ("zstd", b"\x28\xb5\x2f\xfd"), (None, None)])
def test_the_layer_media_type_follows_the_compression(tmp_path: Path, compression: Optional[str],
                                                       magic: Optional[bytes]) -> None:
    layout = build(tmp_path, compression=compression)
    _, manifest, config = documents(layout)
    assert manifest["layers"][0]["mediaType"] == LAYER_TYPES[compression]
    data = layer_bytes(layout)
    if magic is None:
        # Uncompressed, the layer's digest is its diff ID.
        assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
        assert tarfile.is_tarfile(io.BytesIO(data))
    else:
        assert data.startswith(magic)


def test_a_compression_without_an_oci_media_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="cannot be compressed with xz"):
        build(tmp_path, compression="xz")


def test_two_layouts_of_one_tree_with_one_epoch_are_byte_identical(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        first = build(tmp_path, name="first")
        for p in (tmp_path / "root").rglob("*"):
            os.utime(p, (EPOCH + 5000, EPOCH + 5000), follow_symlinks=False)  # touched again after the epoch
        os.umask(0o077)
        second = build(tmp_path, name="second")
    finally:
        os.umask(old)
    assert tree_bytes(first) == tree_bytes(second)
    # Settled, the directories are also equal the way --check-reproducible compares them (paths, modes,
    # owners, times), whatever the umask was.
    assert tree_digest(tree_entries(first)) != tree_digest(tree_entries(second))
    settle(first, EPOCH)
    settle(second, EPOCH)
    assert tree_digest(tree_entries(first)) == tree_digest(tree_entries(second))
    assert {p.stat().st_mtime for p in first.rglob("*")} == {EPOCH}
    assert (first / "blobs").stat().st_mode & 0o777 == 0o755
    # Another epoch is another image.
    third = build(tmp_path, epoch=EPOCH + 1, name="third")
    assert documents(third)[1]["layers"][0]["digest"] != documents(first)[1]["layers"][0]["digest"]


def test_the_manifest_carries_the_annotations_and_the_index_the_tag(tmp_path: Path) -> None:
    spec = ImageSpec("amd64", rfc3339(EPOCH), ref_name="1.2",
                     annotations={"org.opencontainers.image.version": "1.2"})
    index, manifest, _ = documents(build(tmp_path, spec=spec))
    assert manifest["annotations"] == {"org.opencontainers.image.version": "1.2"}
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "1.2"}


# ---- from the configuration ----

def test_the_image_values_come_from_the_configuration(wd: Path) -> None:
    config = load("--format=oci", "--image-id=demo", "--image-version=1.2", "--source-date-epoch=1700000000",
                  "--architecture=arm64", "--environment=LANG=C.UTF-8", "--environment=TOKEN",
                  "--environment=LANG=en_US.UTF-8")
    spec = image_spec(config)
    assert (spec.architecture, spec.variant, spec.ref_name) == ("arm64", None, "1.2")
    assert spec.created == "2023-11-14T22:13:20Z"
    # The last value of a variable wins; a bare name (the host's value, for the scripts) stays out.
    assert spec.env == (DEFAULT_PATH, "LANG=en_US.UTF-8")
    assert spec.annotations == {"org.opencontainers.image.created": "2023-11-14T22:13:20Z",
                                "org.opencontainers.image.title": "demo",
                                "org.opencontainers.image.version": "1.2"}
    assert spec.labels == {"org.opencontainers.image.title": "demo", "org.opencontainers.image.version": "1.2"}


def test_without_version_the_tag_is_latest_and_environment_may_set_path(wd: Path) -> None:
    spec = image_spec(load("--format=oci", "--environment=PATH=/opt/bin:/usr/bin"), now=EPOCH)
    assert spec.ref_name == "latest" and spec.env == ("PATH=/opt/bin:/usr/bin",)
    assert spec.annotations == {"org.opencontainers.image.created": "2023-11-14T22:13:20Z"} and spec.labels == {}
    assert spec.platform == {"architecture": "amd64", "os": "linux"}


def test_the_output_is_a_directory_named_without_compression(wd: Path) -> None:
    config = load("--format=oci", "--image-id=demo", "--image-version=1.2")
    assert config.output == wd / "demo_1.2"
    assert config.compress_output == "gzip"
    assert load("--format=oci", "--compress-output=zstd").output == wd / "image"
    assert load("--format=oci", "--compress-output=yes").compress_output == "gzip"
    assert load("--format=oci", "--compress").compress_output == "gzip"
    assert load("--format=oci", "--compress-output=no").output_compression is None
    # Summary lists the layout as the output; the other artifacts keep the plain stem.
    assert summary_dict(Args(), config)["Outputs"]["output"] == str(wd / "demo_1.2")
    assert artifacts.path(config, artifacts.MANIFEST) == wd / "demo_1.2.manifest"
    with pytest.raises(ConfigError, match="use gzip or zstd"):
        load("--format=oci", "--compress-output=xz")
    # Disk settings stay refused.
    with pytest.raises(ConfigError, match="not 'oci'"):
        load("--format=oci", "--encrypt=all")


def test_a_version_that_cannot_be_a_tag_and_an_unknown_architecture_stop_the_build_early(wd: Path) -> None:
    with pytest.raises(MkosiError, match="ImageVersion=1~rc1 cannot be the tag of an OCI image"):
        check_target(load("--format=oci", "--image-version=1~rc1"))
    with pytest.raises(MkosiError, match="Architecture=alpha has no name in the OCI image specification"):
        check_oci(load("--format=oci", "--architecture=alpha"))
    check_target(load("--format=oci", "--image-version=1.2+b3"))


def test_the_build_writes_the_layout_at_the_staged_output(wd: Path) -> None:
    write(wd / "mkosi.default", """
        [Output]
        Format=oci
        ImageId=demo
        ImageVersion=3
        ManifestFormat=
        [Content]
        SourceDateEpoch=1700000000
        """)
    config = load()
    root, staging = make_tree(wd / "root"), wd / "staging"
    staging.mkdir()
    ctx = Context(Args(), config, wd, Phase.final, root, None, staging)
    make_outputs(ctx)
    assert artifacts.collect(ctx) == [(artifacts.IMAGE, staging / "demo_3")]
    index, manifest, image = documents(staging / "demo_3")
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "3"
    assert manifest["annotations"]["org.opencontainers.image.title"] == "demo"
    assert image["created"] == "2023-11-14T22:13:20Z"
    assert {p.stat().st_mtime for p in (staging / "demo_3").rglob("*")} == {EPOCH}
    listing = subprocess.run(["tar", "tzf", "-"], input=layer_bytes(staging / "demo_3"), capture_output=True,
                             check=True).stdout.decode().split()
    assert "etc/os-release" in listing
