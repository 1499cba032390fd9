"""Extension images: system extensions (sysext), configuration extensions (confext) and portable
service images, as disk images of the Discoverable Partitions Specification (DDIs).

An extension image is a GPT disk with one read-only erofs root partition, its dm-verity hash
partition and, when the root hash is signed, the verity signature partition. What the root partition
holds depends on the format:

* sysext: the tree's /usr and /opt, with usr/lib/extension-release.d/extension-release.NAME;
* confext: the tree's /etc, with etc/extension-release.d/extension-release.NAME;
* portable: the whole tree, with its os-release.

NAME is the image's name (the output file name without its suffixes), which is what systemd-sysext
and systemd-confext look for. The disk is assembled by our own GPT writer (output/gpt.py) from file
system and verity images made in the workspace (output/filesystems.py, output/verity.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.context import Context, Phase
from mkosi.errors import MkosiError
from mkosi.output import gpt, verity
from mkosi.output.artifacts import IMAGE, ROOT_HASH, ROOT_HASH_P7S, output_stem, staged
from mkosi.output.diskimage import split_artifacts
from mkosi.output.filesystems import make_erofs
from mkosi.output.gpt import Partition, PlacedPartition, SeedLike

# What of the tree goes into the image, per format (None: all of it).
PAYLOAD: dict[str, Optional[tuple[str, ...]]] = {
    "sysext": ("usr", "opt"),
    "confext": ("etc",),
    "portable": None,
}

# The prefix of the format's own keys in the extension-release file, and where the file goes.
RELEASE_PREFIX = {"sysext": "SYSEXT", "confext": "CONFEXT"}
RELEASE_DIR = {"sysext": "usr/lib/extension-release.d", "confext": "etc/extension-release.d"}
DEFAULT_SCOPE = "initrd system portable"

EXTENSION_FS = "erofs"


def is_extension(fmt: str) -> bool:
    return fmt in PAYLOAD


def release_file(fmt: str, name: str) -> str:
    """The extension-release file of an image named `name`, relative to the image's root."""
    return f"{RELEASE_DIR[fmt]}/extension-release.{name}"


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as os-release(5) writes them (shell quoting, comments, blank lines)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[key.strip()] = " ".join(words)
    return values


def _quote(value: str) -> str:
    return value if value and all(c.isalnum() or c in "._-:/+@%" for c in value) else shlex.quote(value)


def extension_release(fmt: str, os_release: Mapping[str, str], given: Mapping[str, str], *, architecture: str,
                      image_id: Optional[str] = None, image_version: Optional[str] = None,
                      scope: Optional[str] = None) -> str:
    """The extension-release file of a sysext or confext.

    What the tree's own extension-release file says (`given`) stays; the rest comes from the
    os-release of the image it was built from: ID= (`_any` without one), VERSION_ID= and
    SYSEXT_LEVEL=/CONFEXT_LEVEL= (so that it only merges into a matching OS), ARCHITECTURE= (systemd's
    name), SYSEXT_SCOPE=/CONFEXT_SCOPE= (`scope`, by default "initrd system portable") and, from
    ImageId=/ImageVersion=, SYSEXT_ID=/SYSEXT_VERSION_ID= (CONFEXT_... for a confext).
    """
    prefix = RELEASE_PREFIX[fmt]
    values = dict(given)
    derived = {
        "ID": os_release.get("ID") or "_any",
        "VERSION_ID": os_release.get("VERSION_ID"),
        f"{prefix}_LEVEL": os_release.get(f"{prefix}_LEVEL"),
        f"{prefix}_SCOPE": scope or DEFAULT_SCOPE,
        "ARCHITECTURE": gpt.normalize_arch(architecture),
        f"{prefix}_ID": image_id,
        f"{prefix}_VERSION_ID": image_version,
    }
    for key, value in derived.items():
        if key not in values and value:
            values[key] = value
    return "".join(f"{k}={_quote(v)}\n" for k, v in values.items())


def os_release_of(root: Path) -> dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = root / rel
        with contextlib.suppress(OSError):
            if path.is_symlink():
                target = os.readlink(path)
                path = root / (target.lstrip("/") if target.startswith("/") else os.path.join(os.path.dirname(rel),
                                                                                               target))
            return parse_env_file(path.read_text())
    return {}


def environment_value(items: list[str], name: str) -> Optional[str]:
    """The value Environment= gives a variable (NAME=VALUE, or a bare NAME passing mkosi's own), last wins."""
    found: Optional[str] = None
    for item in items:
        key, eq, value = item.partition("=")
        if key == name:
            found = value if eq else os.environ.get(name)
    return found


def write_extension_release(ctx: Context) -> None:
    """A build step of the final phase: the sysext's or confext's extension-release file in the tree
    (kept as it is where the tree has one already, completed from its os-release)."""
    fmt = str(ctx.config.format)
    if ctx.phase != Phase.final or fmt not in RELEASE_DIR:
        return
    name = output_stem(ctx.config)
    target = ctx.root / release_file(fmt, name)
    given = parse_env_file(target.read_text()) if target.is_file() else {}
    text = extension_release(fmt, os_release_of(ctx.root), given, architecture=ctx.config.architecture,
                             image_id=ctx.config.image_id, image_version=ctx.config.image_version,
                             scope=environment_value(ctx.config.environment, f"{RELEASE_PREFIX[fmt]}_SCOPE"))
    if target.is_symlink():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o644)
    log.debug(f"/{release_file(fmt, name)}:\n{text}")


# ---------------------------------------------------------------- the disk image


def partition_roles(verity_mode: str) -> list[str]:
    """The partitions of an extension image, in order: the root, its verity hash partition unless
    verity is off, the signature partition when it is signed."""
    roles = ["root"]
    if verity_mode != "no":
        roles.append("root-verity")
    if verity_mode == "signed":
        roles.append("root-verity-sig")
    return roles


def partition_label(role: str, arch: str) -> str:
    """systemd-repart's default labels: the type's name with the architecture, e.g. root-x86-64-verity."""
    suffix = role[len("root"):]
    return f"root-{gpt.normalize_arch(arch)}{suffix}"


def partition_types(verity_mode: str, arch: str) -> dict[str, uuid.UUID]:
    """Role -> type UUID of the extension image's partitions on the architecture."""
    return {role: gpt.type_uuid(role, arch) for role in partition_roles(verity_mode)}


@dataclasses.dataclass(frozen=True)
class ExtensionSpec:
    """Plain values for build_extension_image(): no configuration objects."""

    fmt: str
    tree: Path
    output: Path
    workspace: Path
    arch: str
    verity: str = "yes"                 # no, yes (hash partition) or signed
    key: Optional[Path] = None
    certificate: Optional[Path] = None
    compression: Optional[str] = None   # erofs compressor (CompressFs=)
    seed: Optional[SeedLike] = None
    epoch: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ExtensionResult:
    output: Path
    partitions: list[PlacedPartition]
    images: dict[str, Path]
    roothash: Optional[str]
    signature: Optional[bytes]


@contextlib.contextmanager
def payload_tree(fmt: str, tree: Path, workspace: Path) -> Iterator[Path]:
    """A directory holding what the format puts into the image: the tree itself for a portable image,
    else a directory the tree's /usr and /opt (sysext) or /etc (confext) are moved into for the time
    the file system is made (they are moved back afterwards)."""
    names = PAYLOAD[fmt]
    if names is None:
        yield tree
        return
    top = workspace / "payload"
    top.mkdir(parents=True)
    st = tree.stat()
    os.chown(top, st.st_uid, st.st_gid)
    top.chmod(st.st_mode & 0o7777)
    moved: list[str] = []
    try:
        for name in names:
            src = tree / name
            if src.is_symlink():
                raise MkosiError(f"/{name} of the image is a symbolic link; a {fmt} needs it as a directory")
            if src.is_dir():
                os.rename(src, top / name)
                moved.append(name)
        if not moved:
            raise MkosiError(f"the image has no {' or '.join('/' + n for n in names)}: the {fmt} would be empty")
        yield top
    finally:
        for name in moved:
            os.rename(top / name, tree / name)
        with contextlib.suppress(OSError):
            top.rmdir()


def build_extension_image(spec: ExtensionSpec) -> ExtensionResult:
    """The DDI of `spec.tree` at spec.output: erofs root, verity hash and (signed) signature partition.
    The root and verity partition UUIDs are the halves of the root hash, as the specification asks."""
    arch = gpt.normalize_arch(spec.arch)
    spec.workspace.mkdir(parents=True, exist_ok=True)
    root_image = spec.workspace / "root.raw"
    if spec.fmt == "portable" and not os_release_of(spec.tree):
        raise MkosiError("a portable service image needs an os-release file (/etc/os-release or /usr/lib/os-release)")
    with payload_tree(spec.fmt, spec.tree, spec.workspace) as top:
        make_erofs(top, root_image, spec.compression, seed=spec.seed, epoch=spec.epoch)
    images = {"root": root_image}
    labels = {role: partition_label(role, arch) for role in partition_roles(spec.verity)}
    partitions = [Partition("root", labels["root"], source=root_image, read_only=True)]
    roothash = signature = None
    if spec.verity != "no":
        hash_image = spec.workspace / "root.verity"
        roothash = verity.make_verity(root_image, hash_image, seed=spec.seed)
        data_uuid, hash_uuid = verity.roothash_uuids(roothash)
        partitions[0] = dataclasses.replace(partitions[0], uuid=uuid.UUID(data_uuid))
        partitions.append(Partition("root-verity", labels["root-verity"], source=hash_image,
                                    uuid=uuid.UUID(hash_uuid), read_only=True))
        images["root-verity"] = hash_image
    if spec.verity == "signed":
        assert roothash is not None
        if spec.key is None or spec.certificate is None:
            raise MkosiError("a signed verity root hash needs a key and a certificate")
        with log.step("Signing the verity root hash"):
            signature = verity.sign_roothash(roothash, spec.key, spec.certificate)
            blob = verity.signature_partition_blob(roothash, signature, spec.certificate)
        sig_image = spec.workspace / "root.verity-sig"
        sig_image.write_bytes(blob)
        images["root-verity-sig"] = sig_image
        partitions.append(Partition("root-verity-sig", labels["root-verity-sig"], source=sig_image,
                                    uuid=gpt.derive_uuid(bytes.fromhex(roothash), "verity-signature"),
                                    read_only=True))
    placed = gpt.assemble(spec.output, partitions, arch=arch, seed=spec.seed)
    return ExtensionResult(spec.output, placed, images, roothash, signature)


def make_extension(ctx: Context) -> None:
    """The maker of Format=sysext, confext and portable (see the registry in mkosi/formats.py)."""
    config = ctx.config
    fmt = str(config.format)
    epoch = config.source_date_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").strip().isdigit():
        epoch = int(os.environ["SOURCE_DATE_EPOCH"].strip())
    spec = ExtensionSpec(
        fmt=fmt, tree=ctx.root, output=ctx.workspace / "extension.raw", workspace=ctx.dir("extension"),
        arch=config.architecture, verity=str(config.verity.value), key=verity.verity_key_files(config)[0],
        certificate=verity.verity_key_files(config)[1],
        compression=None if config.compress_fs in ("no", "none") else config.compress_fs,
        seed=gpt.seed_from_setting(config.seed), epoch=epoch)
    with log.step(f"Assembling the {fmt} image"):
        result = build_extension_image(spec)
    if result.roothash and ROOT_HASH.when(config):
        staged(ctx, ROOT_HASH).write_text(result.roothash + "\n")
    if result.signature and ROOT_HASH_P7S.when(config):
        staged(ctx, ROOT_HASH_P7S).write_bytes(result.signature)
    if config.split_artifacts:
        split_artifacts(ctx, result.images, None)
    os.replace(result.output, staged(ctx, IMAGE))
