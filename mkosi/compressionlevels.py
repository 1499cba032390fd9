"""CompressLevel=: which levels each CompressOutput= compressor takes, and how its command line says it.

A leaf module (it imports nothing of mkosi): the configuration checks the level against the table when a
configuration is loaded, the output code (mkosi/output/compress.py) builds the command line from it.
"""

from __future__ import annotations

from typing import Optional

# Algorithm -> (lowest, highest) level its command line tool accepts. zlib is written by gzip here. zstd's
# level 0 is its default level (3), as in its library: `zstd -0` takes it.
LEVELS: dict[str, tuple[int, int]] = {
    "xz": (0, 9),
    "zstd": (0, 22),
    "gzip": (1, 9),
    "zlib": (1, 9),
}

# zstd takes the levels above this one only with --ultra.
ZSTD_ULTRA_ABOVE = 19


def level_error(algorithm: str, level: int) -> Optional[str]:
    """Why `level` cannot be used with `algorithm` (None when it can)."""
    bounds = LEVELS.get(algorithm)
    if bounds is None:
        return f"{algorithm} compression takes no level"
    low, high = bounds
    if not low <= level <= high:
        return f"level {level} is out of range for {algorithm} compression, expected {low} to {high}"
    return None


def level_arguments(algorithm: str, level: Optional[int]) -> list[str]:
    """The compressor's options for `level` (none when it is None: the tool's own default)."""
    if level is None:
        return []
    error = level_error(algorithm, level)
    if error is not None:
        raise ValueError(error)
    if algorithm == "zstd" and level > ZSTD_ULTRA_ABOVE:
        return ["--ultra", f"-{level}"]
    return [f"-{level}"]
