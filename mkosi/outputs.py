"""Which files a build writes, so `clean` and the overwrite check agree on them."""

from __future__ import annotations

from pathlib import Path

from mkosi.config.settings import MkosiArgs

OUTPUT_SUFFIXES = (".xz", ".zst", ".gz", ".raw", ".qcow2", ".tar", ".cpio")


def output_stem(args: MkosiArgs) -> str:
    """The output's name without format and compression suffixes: image_7.8.raw.xz -> image_7.8."""
    assert args.output is not None
    stem = args.output.name
    while True:
        for suffix in OUTPUT_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem


def output_paths(args: MkosiArgs) -> list[Path]:
    """Every artifact a build of this configuration may leave in the output directory."""
    candidates = [
        args.output, args.output_bmap, args.output_nspawn_settings, args.output_sshkey,
        args.output_root_hash, args.output_root_hash_p7s, args.output_manifest_json, args.output_changelog,
        args.output_split_root, args.output_split_verity, args.output_split_kernel,
    ]
    if args.checksum:
        candidates.append(args.output_checksum)
    if args.sign:
        candidates.append(args.output_signature)
    if args.output_sshkey is not None:
        candidates.append(Path(str(args.output_sshkey) + ".pub"))
    if args.output is not None:
        stem = output_stem(args)
        for extra in (".vmlinuz", ".initrd", ".cmdline"):
            candidates.append(args.output.parent / f"{stem}{extra}")
    return [p for p in candidates if p is not None]


def existing_outputs(args: MkosiArgs) -> list[Path]:
    return [p for p in output_paths(args) if p.exists() or p.is_symlink()]
