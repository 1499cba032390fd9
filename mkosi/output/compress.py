"""Compressing output files (multithreaded), at CompressLevel= when it is set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mkosi.compressionlevels import level_arguments
from mkosi.run import run


def compressor_argv(algorithm: str, for_initrd: bool = False, level: Optional[int] = None) -> list[str]:
    """The command line that compresses stdin to stdout; `level` None is the tool's default level."""
    if algorithm == "xz":
        # The kernel's initrd unpacker only understands CRC32 checks.
        return (["xz", "--threads=0", "--stdout", *(level_arguments(algorithm, level) or ["-6"])]
                + (["--check=crc32"] if for_initrd else []))
    if algorithm == "zstd":
        return ["zstd", "--threads=0", "--stdout", "-q", *level_arguments(algorithm, level), "-"]
    if algorithm in ("gzip", "zlib"):
        return ["gzip", "--stdout", "-n", *level_arguments(algorithm, level)]
    raise ValueError(f"unsupported output compression '{algorithm}'")


def compress_file(src: Path, dst: Path, algorithm: str, for_initrd: bool = False,
                  level: Optional[int] = None) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        run(compressor_argv(algorithm, for_initrd, level), stdin=fin, stdout=fout, text=False)


def maybe_compress(path: Path, algorithm: Optional[str], final_name: Path, for_initrd: bool = False,
                   level: Optional[int] = None) -> Path:
    """Compress path into final_name (removing the uncompressed file), or just rename it."""
    if algorithm is None:
        path.rename(final_name)
    else:
        compress_file(path, final_name, algorithm, for_initrd, level)
        path.unlink()
    return final_name
