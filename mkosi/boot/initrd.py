"""The initrd: dracut running inside the image (in a container), for the image's kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.enums import Verity
from mkosi.config.settings import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.run import run
from mkosi.sandbox import nspawn_command

# zstd: the kernel unpacks it, and it is much faster than dracut's default gzip -9.
DRACUT_COMPRESS = "--compress=zstd -q -T0 -10"


def dracut_flags(config: Config) -> list[str]:
    """dracut's options for this configuration (besides the kernel version and the output)."""
    flags = ["--hostonly"] if config.hostonly_initrd else ["--no-hostonly", "--no-hostonly-cmdline"]
    if config.verity != Verity.no:
        flags += ["--add", "systemd-veritysetup"]
    return flags


def run_dracut(root: Path, version: str, target: str, flags: list[str], keep_unit: Optional[bool]) -> Path:
    """Run the image's dracut in a container of `root`; `target` is the initrd's path inside the root."""
    if not (root / "usr/bin/dracut").exists():
        raise MkosiError("Bootable=yes needs dracut in the image", hint="add dracut to Packages=")
    with log.step(f"Building the initrd for kernel {version} with dracut"):
        run(nspawn_command(root, ["dracut", "--quiet", "--force", *flags, DRACUT_COMPRESS, "--kver", version, target],
                           keep_unit=keep_unit, network=False))
    return root / target.lstrip("/")


def build_initrd(ctx: Context, version: str) -> Path:
    """dracut inside the image, for the image's kernel, as /boot/initrd.img-VERSION."""
    return run_dracut(ctx.root, version, f"/boot/initrd.img-{version}", dracut_flags(ctx.config),
                      ctx.config.nspawn_keep_unit)
