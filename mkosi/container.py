"""The shell and boot verbs: run the image in a systemd-nspawn container.

Disk images go to nspawn with --image= when the host runs udev; without udev (containers, CI
machines) nspawn refuses --image=, so mkosi mounts the root partition itself and uses --directory=."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from mkosi import log
from mkosi.config.settings import Args, Config
from mkosi.errors import MkosiError
from mkosi.formats import FormatKind
from mkosi.mounts import umount_all_below
from mkosi.output.artifacts import NSPAWN_SETTINGS, output_stem, written
from mkosi.output.gpt import role_of_type
from mkosi.run import current_sandbox, run
from mkosi.sandbox import Container, valid_machine_name

# nspawn looks for MACHINE.nspawn here first (and trusts what it finds), then next to the image.
NSPAWN_RUNTIME_DIR = Path("/run/systemd/nspawn")

ROOT_TYPES = {
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",  # x86-64 root
    "b921b045-1df0-41c3-af44-4c6f280d3fae",  # arm64 root
    "44479540-f297-41b2-9af7-d131d5f0458a",  # x86 root
}


def host_has_udev() -> bool:
    return Path("/run/udev/control").exists()


def root_partition(image: Path) -> tuple[int, int, bool]:
    """Byte offset and size of the image's root partition, and whether it is marked read-only."""

    table = json.loads(run(["sfdisk", "--json", image], capture=True).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    for part in table["partitions"]:
        role = role_of_type(part["type"])
        if role is not None and role[0] in ("root", "usr"):
            ro = "60" in str(part.get("attrs", ""))
            return int(part["start"]) * sector, int(part["size"]) * sector, ro
    raise MkosiError(f"'{image}' has no root partition")


@contextlib.contextmanager
def mounted_image(image: Path, writable: bool) -> Iterator[Path]:
    offset, size, ro = root_partition(image)
    mnt = Path(tempfile.mkdtemp(prefix="mkosi-mnt-", dir="/var/tmp"))
    opts = f"loop,offset={offset},sizelimit={size}" + (",ro" if ro or not writable else "")
    try:
        run(["mount", "-o", opts, image, mnt])
        yield mnt
    finally:
        umount_all_below(mnt)
        mnt.rmdir()


@contextlib.contextmanager
def ephemeral_copy(path: Path) -> Iterator[Path]:
    """A throw-away copy (reflinked where the file system allows) removed afterwards."""
    holder = Path(tempfile.mkdtemp(prefix=".mkosi-ephemeral-", dir=path.parent))
    copy = holder / path.name
    try:
        run(["cp", "--archive", "--reflink=auto", "--sparse=always", "--no-target-directory", path, copy])
        yield copy
    finally:
        umount_all_below(holder)
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def nspawn_settings_for(machine: str, settings: Path) -> Iterator[None]:
    """Make nspawn find `settings` for `machine`.

    nspawn reads MACHINE.nspawn, named after the machine, not after the image: an image called
    image_1.2.raw runs as the machine image-1.2 (no '_' in machine names), and a disk image mounted
    by mkosi is run from a directory elsewhere, so STEM.nspawn next to the image would not be found.
    The file is put in nspawn's runtime directory under the machine's name while the container runs.
    """
    target = NSPAWN_RUNTIME_DIR / f"{machine}.nspawn"
    if target.exists():
        log.warn(f"{target} exists already; nspawn uses it instead of {settings}")
        yield
        return
    NSPAWN_RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.mkosi-tmp")
    shutil.copyfile(settings, tmp)
    os.replace(tmp, target)
    try:
        yield
    finally:
        target.unlink(missing_ok=True)


def run_container(args: Args, config: Config, boot: bool) -> int:
    cmd = list(args.cmdline)
    assert config.output is not None
    if os.getuid() != 0:
        raise MkosiError(f"'mkosi {args.verb.value}' must be run as root")
    kind = config.format.row.kind
    if kind is FormatKind.disk and (config.output_compression or config.qcow2):
        raise MkosiError(f"the '{args.verb.value}' verb needs an uncompressed raw image")
    if kind not in (FormatKind.disk, FormatKind.tree):
        raise MkosiError(f"the '{args.verb.value}' verb needs a directory, subvolume or disk image, "
                         f"not '{config.format}'")
    extra = []
    machine = valid_machine_name(output_stem(config)) or f"mkosi-{uuid.uuid4().hex[:12]}"
    settings = written(config, NSPAWN_SETTINGS)
    if settings is not None and settings.exists():
        extra.append("--settings=trusted")
    if config.netdev:
        extra.append("--network-veth")
    with contextlib.ExitStack() as stack:
        if settings is not None and settings.exists():
            stack.enter_context(nspawn_settings_for(machine, settings))
        target = config.output
        # nspawn snapshots directories itself; image files are copied here when it cannot use them.
        use_image = kind is FormatKind.disk and host_has_udev()
        ephemeral_by_nspawn = config.ephemeral and (use_image or kind is FormatKind.tree)
        if config.ephemeral and not ephemeral_by_nspawn:
            target = stack.enter_context(ephemeral_copy(target))
        if kind is FormatKind.disk and not use_image:
            log.debug("no udev on this host: mounting the root partition for systemd-nspawn --directory")
            target = stack.enter_context(mounted_image(target, writable=True))
        container = Container(keep_unit=config.nspawn_keep_unit, machine=machine, image=use_image,
                              boot=boot, ephemeral=ephemeral_by_nspawn, extra=tuple(extra))
        sandbox = current_sandbox().nspawn(target, network=True, container=container)
        return run(cmd, sandbox=sandbox, check=False).returncode
