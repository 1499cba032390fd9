"""Format=oci: the image tree as an OCI image layout directory (OCI image specification 1.1).

The directory holds `oci-layout`, `index.json` and `blobs/sha256/`: one layer (a tar of the whole tree,
gzip- or zstd-compressed, or plain), the image configuration and the manifest, each stored under the
SHA-256 of its bytes. With SourceDateEpoch= every byte is fixed: the tar's times are clamped to it, gzip
leaves out names and times, the JSON documents are written with sorted keys and `created` is the epoch.

The layout writer (`make_layer`, `write_layout`) takes plain values; only `make_oci` and `check_oci`
read the configuration.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.config.settings import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.output.artifacts import IMAGE, staged
from mkosi.output.compress import compressor_argv
from mkosi.run import PathString, run

LAYOUT_VERSION = "1.0.0"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES: dict[Optional[str], str] = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

# The annotation keys the image specification predefines that mkosi fills in.
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
REF_NAME = "org.opencontainers.image.ref.name"

# Container engines set this when an image names no PATH; it is written so that every engine agrees.
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_TAG = "latest"

# Architecture= (mkosi's names) -> (GOARCH, variant), the names the image specification uses.
PLATFORMS: dict[str, tuple[str, Optional[str]]] = {
    "x86_64": ("amd64", None), "x86": ("386", None), "aarch64": ("arm64", None), "arm": ("arm", "v7"),
    "ppc64le": ("ppc64le", None), "ppc64": ("ppc64", None), "riscv64": ("riscv64", None),
    "s390x": ("s390x", None), "s390": ("s390", None), "loongarch64": ("loong64", None),
    "mips64el": ("mips64le", None), "mips64-le": ("mips64le", None), "mipsel": ("mipsle", None),
    "mips-le": ("mipsle", None),
}

# A reference name (the tag) as the image layout specification allows it.
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """What points at a blob: its media type, digest and size."""

    media_type: str
    digest: str      # "sha256:<hex>"
    size: int

    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What the configuration says about the image, as the OCI documents need it."""

    architecture: str                       # GOARCH name (amd64, arm64, ...)
    created: str                            # RFC 3339, UTC
    ref_name: str = DEFAULT_TAG             # the tag in index.json
    variant: Optional[str] = None
    env: tuple[str, ...] = (DEFAULT_PATH,)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)  # manifest annotations
    labels: dict[str, str] = dataclasses.field(default_factory=dict)       # config labels

    @property
    def platform(self) -> dict[str, str]:
        return {"architecture": self.architecture, "os": "linux",
                **({"variant": self.variant} if self.variant else {})}


@dataclasses.dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str      # "sha256:<hex>" of the uncompressed tar


def platform_of(architecture: str) -> tuple[str, Optional[str]]:
    try:
        return PLATFORMS[architecture]
    except KeyError:
        raise MkosiError(f"Architecture={architecture} has no name in the OCI image specification",
                         hint=f"Format=oci supports {', '.join(sorted(PLATFORMS))}") from None


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(document: dict[str, Any]) -> bytes:
    """The same document gives the same bytes, hence the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return layout / "blobs" / algorithm / encoded


def store_file(layout: Path, path: Path, media_type: str) -> Descriptor:
    """Move a file into the layout's blobs under its digest."""
    digest = file_digest(path)
    target = blob_path(layout, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    os.chmod(target, 0o644)
    return Descriptor(media_type, digest, target.stat().st_size)


def store_json(layout: Path, document: dict[str, Any], media_type: str) -> Descriptor:
    data = canonical_json(document)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    target = blob_path(layout, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    os.chmod(target, 0o644)
    return Descriptor(media_type, digest, len(data))


def tar_argv(root: Path, output: Path, epoch: Optional[int]) -> list[PathString]:
    """A tar of everything below root. Entries are named relative to root ("etc/os-release", no "./"),
    owners numeric, xattrs kept (file capabilities matter in containers); no sparse-file records, which
    not every layer reader understands."""
    argv: list[PathString] = [
        "tar", "--create", "--file", output, "--directory", root, "--numeric-owner", "--sort=name",
        "--format=pax", "--pax-option=delete=atime,delete=ctime", "--xattrs", "--xattrs-include=*",
        "--null", "--files-from=-",
    ]
    if epoch is not None:
        argv += [f"--mtime=@{epoch}", "--clamp-mtime"]
    return argv


def make_layer(root: Path, layout: Path, workdir: Path, compression: Optional[str],
               epoch: Optional[int] = None, level: Optional[int] = None) -> Layer:
    """The tree as one layer blob of the layout, compressed at `level` (CompressLevel=); workdir holds the
    uncompressed tar meanwhile."""
    if compression not in LAYER_TYPES:
        raise MkosiError(f"OCI layers cannot be compressed with {compression}",
                         hint=f"use CompressOutput={' or '.join(c for c in LAYER_TYPES if c)} or no")
    tar = workdir / "layer.tar"
    # The top-level entries in byte order; tar sorts what is below them (--sort=name).
    names = sorted(os.fsencode(n) for n in os.listdir(root))
    run(tar_argv(root, tar, epoch), input=b"".join(n + b"\0" for n in names), text=False)
    diff_id = file_digest(tar)
    if compression is None:
        return Layer(store_file(layout, tar, LAYER_TYPES[None]), diff_id)
    packed = workdir / "layer.tar.compressed"
    with open(tar, "rb") as fin, open(packed, "wb") as fout:
        run(compressor_argv(compression, level=level), stdin=fin, stdout=fout, text=False)
    tar.unlink()
    return Layer(store_file(layout, packed, LAYER_TYPES[compression]), diff_id)


def image_config(spec: ImageSpec, layers: list[Layer]) -> dict[str, Any]:
    """The image configuration: what a runtime needs to start a container from the layers."""
    config: dict[str, Any] = {"Env": list(spec.env)}
    if spec.labels:
        config["Labels"] = dict(spec.labels)
    return {
        "created": spec.created,
        **spec.platform,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": spec.created, "created_by": "mkosi"} for _ in layers],
    }


def write_layout(layout: Path, spec: ImageSpec, layers: list[Layer]) -> Descriptor:
    """The configuration, manifest, index.json and oci-layout around layers already in layout's blobs;
    returns the manifest's descriptor."""
    config = store_json(layout, image_config(spec, layers), CONFIG_TYPE)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config.to_json(),
        "layers": [layer.descriptor.to_json() for layer in layers],
    }
    if spec.annotations:
        manifest["annotations"] = dict(spec.annotations)
    described = store_json(layout, manifest, MANIFEST_TYPE)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [described.to_json(platform=spec.platform, annotations={REF_NAME: spec.ref_name})],
    }
    (layout / "index.json").write_bytes(canonical_json(index))
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
    return described


def settle(layout: Path, epoch: Optional[int]) -> None:
    """Fixed modes (whatever the umask) and, with an epoch, fixed times for everything in the layout, so
    that the directory itself compares equal between two builds, not only its files' bytes."""
    paths = [layout, *sorted(layout.rglob("*"))]
    for path in paths:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if epoch is not None:
        for path in reversed(paths):
            os.utime(path, (epoch, epoch))


# ---- from the configuration ----

def image_tag(config: Config) -> str:
    return config.image_version or DEFAULT_TAG


def container_environment(config: Config) -> tuple[str, ...]:
    """The container's variables: PATH (unless Environment= sets it) and every Environment= item with a
    value. A bare name (passing mkosi's own variable to the scripts) stays out: what the host's
    environment holds is no part of a published image."""
    given = [item for item in config.environment if "=" in item]
    names = {item.partition("=")[0] for item in given}
    defaults = () if "PATH" in names else (DEFAULT_PATH,)
    # The last assignment of a name wins, as for the scripts.
    last = {item.partition("=")[0]: item for item in given}
    return (*defaults, *last.values())


def image_spec(config: Config, now: Optional[int] = None) -> ImageSpec:
    epoch = config.source_date_epoch if config.source_date_epoch is not None else (now or int(time.time()))
    architecture, variant = platform_of(config.architecture)
    created = rfc3339(epoch)
    named = {TITLE: config.image_id, VERSION: config.image_version}
    labels = {k: v for k, v in named.items() if v}
    return ImageSpec(architecture=architecture, variant=variant, created=created, ref_name=image_tag(config),
                     env=container_environment(config), annotations={CREATED: created, **labels}, labels=labels)


def check_oci(config: Config) -> None:
    """Before the build: the platform and the tag the configuration gives must be valid OCI names."""
    platform_of(config.architecture)
    if not _REF_NAME.fullmatch(image_tag(config)):
        raise MkosiError(f"ImageVersion={config.image_version} cannot be the tag of an OCI image",
                         hint="use letters and digits, with '.', '_', '-', '+', ':' or '@' between them")


def make_oci(ctx: Context) -> None:
    config = ctx.config
    check_oci(config)
    layout = staged(ctx, IMAGE)
    layout.mkdir()
    workdir = ctx.dir("oci")
    with log.step("Writing the OCI layer"):
        layer = make_layer(ctx.root, layout, workdir, config.output_compression, config.source_date_epoch,
                           config.compress_level)
    write_layout(layout, image_spec(config), [layer])
    settle(layout, config.source_date_epoch)
