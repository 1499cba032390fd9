"""The artifact table: every file a build can leave behind, declared once.

A row gives the file's name template, when a build of a configuration writes it, whether `clean`
removes it (and at which -f level), whether `summary` lists it, whether CompressOutput= applies to
it and whether it goes into SHA256SUMS. The steps that write artifacts put them at `staged(ctx, row)`;
`collect()` then gathers exactly the rows the configuration declares, and the overwrite check,
checksums, the move into place, `clean`, `summary`, `serve` and the source-tree excludes all read
the same rows. Nothing else knows an artifact's name.

Templates are file names in the output directory (OutputDirectory=, or the image's directory):
  {stem}         the image name without its format and compression suffixes (image_7.8.raw.xz -> image_7.8)
  {compression}  the compression suffix (.xz, .zst, ...) of CompressOutput=
  {hash}         .usrhash with UsrOnly=yes, else .roothash
  {part}         usr with UsrOnly=yes, else root (the split partitions keep mkosi 14's names)
  {link}         the name of the link to the image (Config.output_link, modern trees only)
  {arch}         the image's architecture as systemd-repart names it (x86-64, arm64, ...): Format=disk's
                 split partitions are named after their partition type, as systemd-repart --split=yes does
The image itself is at Output= (IMAGE_TEMPLATE).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.enums import BootProtocol, ManifestFormat, SplitArtifact, Verity
from mkosi.config.keys import cache_location
from mkosi.config.settings import Config
from mkosi.context import Context, Phase
from mkosi.distributions.facts import default_filesystem
from mkosi.errors import MkosiError
from mkosi.formats import Format, FormatKind, compression_suffix, known_suffixes
from mkosi.output.gpt import GENERIC_TYPES, normalize_arch
from mkosi.output.repartdefs import SPLIT_TYPES, Definition, definitions_for, split_roles

IMAGE_TEMPLATE = "{output}"


@dataclasses.dataclass(frozen=True)
class Artifact:
    key: str                                # how summary (and summary --json) names it
    template: str
    when: Callable[[Config], bool]          # whether a build of this configuration writes it
    clean: Optional[int] = 0                # `clean` removes it from this -f level on; None: never
    summary: bool = True
    compressed: bool = False                # CompressOutput= applies to it
    checksummed: bool = True                # listed in SHA256SUMS (when it is a file)
    cache: bool = False                     # written in place by incremental mode, not by the build steps
    setting: Optional[str] = None           # a Config field (a setting) that, when set, is its path
    beside_image: bool = False              # kept next to the image rather than in the output directory
    secret: bool = False                    # never published (serve) nor summed
    link: bool = False                      # a symbolic link to the image, made once it is in place (link_output())


def _fmt(config: Config) -> Format:
    return config.format.row


def _bmap(config: Config) -> bool:
    # The block map of the raw disk, also for a compressed or QCOW2 image (bmaptool decompresses itself).
    return config.bmap and _fmt(config).is_disk


def _ssh_key(config: Config) -> bool:
    # With SshAgent= the agent's keys are authorized and no key is generated.
    return config.ssh and config.ssh_key is None and not config.ssh_agent


def _classic_split(config: Config) -> bool:
    # The split partitions of the gpt_* formats (Format=disk's are named after their types, below).
    return bool(config.split_artifacts) and not _fmt(config).repart


def _repart_definitions(config: Config) -> list[Definition]:
    """Format=disk's partition definitions (none when the build will reject them)."""
    try:
        return definitions_for(config.repart_dirs, bootable=config.bootable,
                               root_fs=default_filesystem(config.distribution))
    except MkosiError:
        return []


def repart_split_roles(config: Config) -> list[str]:
    """The partition types (SPLIT_TYPES) whose files Format=disk with SplitArtifacts=partitions writes,
    read from the partition definitions."""
    if not (_fmt(config).repart and SplitArtifact.partitions in config.split_artifacts):
        return []
    return split_roles(_repart_definitions(config), config.architecture)


def _repart_hash(config: Config, kind: str) -> bool:
    if not (_fmt(config).repart and SplitArtifact.roothash in config.split_artifacts):
        return False
    return any(d.role(config.architecture) == f"{kind}-verity" for d in _repart_definitions(config))


def _split_partition(role: str) -> Artifact:
    name = role if role in GENERIC_TYPES else role.replace("root", "root-{arch}", 1).replace("usr", "usr-{arch}", 1)
    return Artifact(f"output_split_partition_{role.replace('-', '_')}", f"{{stem}}.{name}.raw{{compression}}",
                    lambda c: role in repart_split_roles(c), compressed=True)


def _split_kernel(config: Config) -> bool:
    return (bool(config.split_artifacts) and config.bootable and config.with_unified_kernel_images.enabled
            and BootProtocol.uefi in config.boot_protocols)


def _linux_boot(config: Config) -> bool:
    return config.bootable and BootProtocol.linux in config.boot_protocols


def _always(config: Config) -> bool:
    return True


IMAGE = Artifact("output", IMAGE_TEMPLATE, _always)
# In modern trees: OutputDirectory/NAME -> the image (image -> image_7.8.raw.xz), for %O/NAME references.
# It is never staged nor summed, never blocks a build, replaces only a link and `clean` removes only a link.
OUTPUT_LINK = Artifact("output_link", "{link}", lambda c: c.output_link is not None, checksummed=False, link=True)
CHECKSUM = Artifact("output_checksum", "SHA256SUMS", lambda c: c.checksum, checksummed=False)
SIGNATURE = Artifact("output_signature", "SHA256SUMS.gpg", lambda c: c.sign, checksummed=False)
BMAP = Artifact("output_bmap", "{stem}.bmap", _bmap)
NSPAWN_SETTINGS = Artifact("output_nspawn_settings", "{stem}.nspawn", lambda c: c.nspawn_settings is not None)
SSH_KEY = Artifact("output_sshkey", "id_ed25519", _ssh_key, checksummed=False, secret=True)
ROOT_HASH = Artifact("output_root_hash", "{stem}{hash}", lambda c: c.verity != Verity.no and not _fmt(c).repart)
ROOT_HASH_P7S = Artifact("output_root_hash_p7s", "{stem}{hash}.p7s",
                         lambda c: c.verity == Verity.signed and not _fmt(c).repart)
# Format=disk with SplitArtifacts=roothash: the root hashes systemd-repart reports for the verity
# partitions of the definitions.
REPART_ROOT_HASH = Artifact("output_repart_root_hash", "{stem}.roothash", lambda c: _repart_hash(c, "root"))
REPART_USR_HASH = Artifact("output_repart_usr_hash", "{stem}.usrhash", lambda c: _repart_hash(c, "usr"))
MANIFEST = Artifact("output_manifest_json", "{stem}.manifest", lambda c: ManifestFormat.json in c.manifest_format)
SPDX = Artifact("output_manifest_spdx", "{stem}.spdx.json", lambda c: ManifestFormat.spdx in c.manifest_format)
CYCLONEDX = Artifact("output_manifest_cyclonedx", "{stem}.cdx.json",
                     lambda c: ManifestFormat.cyclonedx in c.manifest_format)
CHANGELOG = Artifact("output_changelog", "{stem}.changelog", lambda c: ManifestFormat.changelog in c.manifest_format)
SPLIT_ROOT = Artifact("output_split_root", "{stem}.{part}.raw{compression}", _classic_split,
                      compressed=True, setting="output_split_root")
SPLIT_VERITY = Artifact("output_split_verity", "{stem}.{part}.verity{compression}",
                        lambda c: _classic_split(c) and c.verity != Verity.no, compressed=True,
                        setting="output_split_verity")
SPLIT_VERITY_SIG = Artifact("output_split_verity_sig", "{stem}.{part}.{part}hash.p7s{compression}",
                            lambda c: _classic_split(c) and c.verity == Verity.signed, compressed=True,
                            setting="output_split_verity_sig")
# Format=disk: one file per partition type systemd-repart splits out (image.root-x86-64.raw, image.esp.raw, ...).
SPLIT_PARTITIONS = {role: _split_partition(role) for role in SPLIT_TYPES}
SPLIT_KERNEL = Artifact("output_split_kernel", "{stem}.efi", _split_kernel, setting="output_split_kernel")
SSH_PUBLIC_KEY = Artifact("output_sshkey_public", "id_ed25519.pub", _ssh_key)
LINUX_KERNEL = Artifact("output_linux_kernel", "{stem}.vmlinuz", _linux_boot)
LINUX_INITRD = Artifact("output_linux_initrd", "{stem}.initrd", _linux_boot)
LINUX_CMDLINE = Artifact("output_linux_cmdline", "{stem}.cmdline", _linux_boot)


def _cache(key: str, template: str) -> Artifact:
    return Artifact(key, template, _always, clean=1, summary=False, checksummed=False, cache=True, beside_image=True)


CACHE_IMAGES = {phase: _cache(f"cache_{phase.value}", f"{{stem}}.cache-{phase.value}") for phase in Phase}
CACHE_KEYS = {phase: _cache(f"cache_{phase.value}_key", f"{{stem}}.cache-{phase.value}.key") for phase in Phase}
CACHE_LOCKS = {phase: _cache(f"cache_{phase.value}_lock", f"{{stem}}.cache-{phase.value}.lock") for phase in Phase}
CACHE_INITRD = _cache("cache_initrd", "{stem}.cache-initrd")
CACHE_INITRD_KEY = _cache("cache_initrd_key", "{stem}.cache-initrd.key")
OUTPUT_KEY = _cache("cache_output_key", "{stem}.cache-output.key")
SALT = _cache("cache_salt", "{stem}.cache-salt")

ARTIFACTS: tuple[Artifact, ...] = (
    IMAGE, OUTPUT_LINK, CHECKSUM, SIGNATURE, BMAP, NSPAWN_SETTINGS, SSH_KEY, ROOT_HASH, ROOT_HASH_P7S, REPART_ROOT_HASH,
    REPART_USR_HASH, MANIFEST, CHANGELOG,
    SPDX, CYCLONEDX,
    SPLIT_ROOT, SPLIT_VERITY, SPLIT_KERNEL, SPLIT_VERITY_SIG, *SPLIT_PARTITIONS.values(), SSH_PUBLIC_KEY,
    LINUX_KERNEL, LINUX_INITRD,
    LINUX_CMDLINE, *(a for phase in Phase for a in (CACHE_IMAGES[phase], CACHE_KEYS[phase], CACHE_LOCKS[phase])),
    CACHE_INITRD, CACHE_INITRD_KEY, OUTPUT_KEY, SALT,
)

# SHA256SUMS and its signature are written over the other artifacts, after all of them.
SUMS = (CHECKSUM, SIGNATURE)


def _repart_arch(config: Config) -> str:
    try:
        return normalize_arch(config.architecture)
    except MkosiError:
        return str(config.architecture)


def output_stem(config: Config) -> str:
    """The output's name without format and compression suffixes: image_7.8.raw.xz -> image_7.8. With
    OutputExtension=img the name's own suffix is .img (image_7.8.img.xz -> image_7.8)."""
    assert config.output is not None
    stem = config.output.name
    if config.output_extension and _fmt(config).writes_file:
        own = _fmt(config).file_suffix(config.output_compression, config.qcow2, config.output_extension)
        if stem.endswith(own) and stem != own:
            return stem[: -len(own)]
    suffixes = known_suffixes()
    while True:
        for suffix in suffixes:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem


def default_output(name: str, fmt: Format, compression: Optional[str], qcow2: bool,
                   extension: Optional[str] = None) -> str:
    """The image's file name when Output= is not given."""
    return name + fmt.file_suffix(compression, qcow2, extension)


def path(config: Config, artifact: Artifact) -> Path:
    """Where the artifact lives once built (whether or not this configuration writes it)."""
    assert config.output is not None
    if artifact.setting is not None and getattr(config, artifact.setting) is not None:
        return Path(getattr(config, artifact.setting))
    if artifact.template == IMAGE_TEMPLATE:
        return config.output
    name = artifact.template.format(
        stem=output_stem(config), compression=compression_suffix(config.output_compression),
        hash=".usrhash" if config.usr_only else ".roothash", part="usr" if config.usr_only else "root",
        link=config.output_link or "",
        arch=_repart_arch(config) if "{arch}" in artifact.template else "")
    if artifact.cache and (location := cache_location(config)) is not None:
        # CacheDirectory=: the caches are named by CacheKey= (a directory of their own), not by the image.
        return location / artifact.template.format(stem="").lstrip(".")
    return (config.output.parent if artifact.beside_image else config.output_dir or config.output.parent) / name


def written(config: Config, artifact: Artifact) -> Optional[Path]:
    """The artifact's path when a build of this configuration writes it, else None."""
    return path(config, artifact) if artifact.when(config) else None


def declared(config: Config, *, cache: Optional[bool] = False) -> list[Artifact]:
    """The rows this configuration writes: build outputs (cache=False), incremental caches (True), or both (None).
    Format=none writes no build outputs at all (only the caches of -i)."""
    nothing = _fmt(config).kind is FormatKind.nothing
    return [a for a in ARTIFACTS
            if (cache is None or a.cache == cache) and a.when(config) and not (nothing and not a.cache)]


def paths(config: Config, *, cache: Optional[bool] = False) -> list[Path]:
    return [path(config, a) for a in declared(config, cache=cache)]


def secrets(config: Config) -> list[Path]:
    """The artifacts of this configuration that must never be published."""
    return [path(config, a) for a in declared(config, cache=None) if a.secret]


def existing(config: Config) -> list[Path]:
    """Build outputs of this configuration that are already there (the overwrite check; the link to the
    image is replaced without asking)."""
    return [path(config, a) for a in declared(config) if not a.link and _present(path(config, a))]


def _present(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def to_clean(config: Config, force: int) -> list[Path]:
    """What `mkosi clean` removes with `force` times -f (the link to the image only if it is a link: a
    file or directory of that name is not the build's)."""
    return [path(config, a) for a in declared(config, cache=None) if a.clean is not None and a.clean <= force
            and (not a.link or path(config, a).is_symlink())]


def shown(config: Config) -> dict[str, Path]:
    """What `summary` lists, by key."""
    return {a.key: path(config, a) for a in declared(config) if a.summary}


# ---- during a build ----

def staged(ctx: Context, artifact: Artifact) -> Path:
    """Where a build step writes the artifact; it is moved to path() once the build succeeded."""
    if artifact.key in ctx.placed:
        return ctx.placed[artifact.key]
    return ctx.staging / path(ctx.config, artifact).name


def place_elsewhere(ctx: Context, artifact: Artifact, where: Path) -> None:
    """Record that an artifact is made outside the staging directory (e.g. a subvolume made on the output
    directory's file system)."""
    ctx.placed[artifact.key] = where


def collect(ctx: Context) -> list[tuple[Artifact, Path]]:
    """The staged build outputs, checking that every declared one was written (SHA256SUMS and its
    signature are written afterwards and not included)."""
    found = []
    for a in declared(ctx.config):
        if a in SUMS or a.link:
            continue
        p = staged(ctx, a)
        if not (p.exists() or p.is_symlink()):
            raise MkosiError(f"the build did not write {path(ctx.config, a).name} (internal error)")
        found.append((a, p))
    return found


def apply_output_mode(config: Config, made: list[tuple[Artifact, Path]]) -> None:
    """OutputMode=: the access mode of the staged output files (the image, its split partitions, manifests,
    SHA256SUMS, ...). Directories (Format=directory, an OCI layout) and links keep theirs, and so do the
    secrets (the generated private ssh key stays readable by its owner only) and the incremental caches."""
    if config.output_mode is None:
        return
    for artifact, staged_path in made:
        if artifact.secret or artifact.cache or artifact.link:
            continue
        if staged_path.is_symlink() or not staged_path.is_file():
            continue
        os.chmod(staged_path, config.output_mode)


def link_output(config: Config) -> Optional[Path]:
    """Once the image is in place: point the link to it (OUTPUT_LINK) at it, relatively, replacing an
    older link atomically. A file or directory of the link's name stays as it is (a warning says so).
    Returns the link, or None when none was made."""
    link = written(config, OUTPUT_LINK)
    if link is None:
        return None
    assert config.output is not None
    if link.exists() and not link.is_symlink():
        log.warn(f"not linking {link} to {config.output.name}: a file or directory of that name is in the way")
        return None
    target = os.path.relpath(config.output, link.parent)
    tmp = link.parent / f".mkosi-tmp-{link.name}"
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


# ---- incremental mode ----

def cached_image_path(config: Config, phase: Phase) -> Path:
    return path(config, CACHE_IMAGES[phase])


def cached_initrd_path(config: Config) -> Path:
    """The initrd of the last bootable build with -i; its key is next to it (`.key`)."""
    return path(config, CACHE_INITRD)


def output_key_path(config: Config) -> Path:
    return path(config, OUTPUT_KEY)


def salt_path(config: Config) -> Path:
    return path(config, SALT)


def incremental_cache_paths(config: Config) -> list[Path]:
    """Everything incremental mode keeps between builds (removed by -ff and clean -f)."""
    return paths(config, cache=True)
