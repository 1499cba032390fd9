"""Which files a build writes, so `clean` and the overwrite check agree on them."""

from __future__ import annotations

from pathlib import Path

from mkosi.config.settings import Config
from mkosi.context import Phase

OUTPUT_SUFFIXES = (".xz", ".zst", ".gz", ".raw", ".qcow2", ".tar", ".cpio")


def output_stem(config: Config) -> str:
    """The output's name without format and compression suffixes: image_7.8.raw.xz -> image_7.8."""
    assert config.output is not None
    stem = config.output.name
    while True:
        for suffix in OUTPUT_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem


def output_paths(config: Config) -> list[Path]:
    """Every artifact a build of this configuration may leave in the output directory."""
    candidates = [
        config.output, config.output_bmap, config.output_nspawn_settings, config.output_sshkey,
        config.output_root_hash, config.output_root_hash_p7s, config.output_manifest_json, config.output_changelog,
        config.output_manifest_spdx, config.output_manifest_cyclonedx,
        config.output_split_root, config.output_split_verity, config.output_split_kernel,
        config.output_split_verity_sig,
    ]
    if config.checksum:
        candidates.append(config.output_checksum)
    if config.sign:
        candidates.append(config.output_signature)
    if config.output_sshkey is not None:
        candidates.append(Path(str(config.output_sshkey) + ".pub"))
    if config.output is not None:
        stem = output_stem(config)
        for extra in (".vmlinuz", ".initrd", ".cmdline"):
            candidates.append(config.output.parent / f"{stem}{extra}")
    return [p for p in candidates if p is not None]


def existing_outputs(config: Config) -> list[Path]:
    return [p for p in output_paths(config) if p.exists() or p.is_symlink()]


def _cache_base(config: Config) -> Path:
    assert config.output is not None
    return config.output.parent / output_stem(config)


def cached_image_path(config: Config, phase: Phase) -> Path:
    return Path(f"{_cache_base(config)}.cache-{phase.value}")


def cached_initrd_path(config: Config) -> Path:
    """The initrd of the last bootable build with -i; its key is next to it (`.key`)."""
    return Path(f"{_cache_base(config)}.cache-initrd")


def output_key_path(config: Config) -> Path:
    return Path(f"{_cache_base(config)}.cache-output.key")


def incremental_cache_paths(config: Config) -> list[Path]:
    """Everything incremental mode keeps between builds (removed by -ff and clean -f)."""
    paths = []
    for phase in Phase:
        image = cached_image_path(config, phase)
        paths += [image, Path(f"{image}.key")]
    initrd = cached_initrd_path(config)
    return [*paths, initrd, Path(f"{initrd}.key"), output_key_path(config), salt_path(config)]


def salt_path(config: Config) -> Path:
    return Path(f"{_cache_base(config)}.cache-salt")
