"""Caches: the package cache directory and the incremental cached images (with their keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mkosi.config.settings import MkosiArgs


def package_cache_dir(args: MkosiArgs) -> Optional[Path]:
    """Where downloaded packages are kept between builds (Cache= / mkosi.cache/), per distribution."""
    if args.cache_path is None:
        return None
    return args.cache_path / f"{args.distribution.value}~{args.release}~{args.architecture}"


def incremental_cache_paths(args: MkosiArgs) -> list[Path]:
    """The cached development and final images of incremental mode."""
    from mkosi.outputs import output_stem

    assert args.output is not None
    stem = output_stem(args)
    base = args.output.parent
    return [base / f"{stem}.cache-build", base / f"{stem}.cache-final",
            base / f"{stem}.cache-build.key", base / f"{stem}.cache-final.key"]
