"""GPT disk outputs: the image root becomes partitions (root or /usr, verity, /home, /srv, swap,
ESP), then the image is post-processed: split artifacts, root hash files, QCOW2, compression, bmap."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mkosi import log
from mkosi.config.enums import BootProtocol, Verity
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.output.artifacts import (
    BMAP,
    IMAGE,
    ROOT_HASH,
    ROOT_HASH_P7S,
    SPLIT_ROOT,
    SPLIT_VERITY,
    SPLIT_VERITY_SIG,
    staged,
)
from mkosi.output.compress import maybe_compress

if TYPE_CHECKING:
    from mkosi.output.disk import DiskResult
from mkosi.boot.bootable import VerityInfo, install_bios_boot, prepare_esp
from mkosi.output.bmap import write_bmap
from mkosi.output.disk import DiskSpec, build_disk, main_partition_label, qcow2_convert
from mkosi.output.filesystems import populate_vfat
from mkosi.output.gpt import copy_sparse, seed_from_setting
from mkosi.output.verity import roothash_uuids, verity_key_files
from mkosi.run import run


def passphrase_file(ctx: Context) -> Optional[Path]:
    """mkosi.passphrase, or ask on the terminal and keep the answer in a 0600 workspace file."""
    config = ctx.config
    if config.encrypt is None:
        return None
    if config.passphrase_file is not None:
        return config.passphrase_file
    if not sys.stdin.isatty():
        raise MkosiError("Encrypt= needs a passphrase: create mkosi.passphrase (mode 0600) or run interactively")
    first = getpass.getpass("LUKS passphrase: ")
    if first != getpass.getpass("LUKS passphrase (again): "):
        raise MkosiError("the passphrases do not match")
    path = ctx.dir("secrets") / "passphrase"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(first)
    return path


def make_disk_image(ctx: Context) -> None:

    config = ctx.config
    assert config.output is not None
    fs = config.format.row.root_fs
    assert fs is not None
    spec = DiskSpec(
        tree=ctx.root,
        output=ctx.workspace / "disk.raw",
        workspace=ctx.dir("disk"),
        arch=config.architecture,
        root_fs=fs,
        root_size=config.root_size,
        usr_only=config.usr_only,
        read_only=config.read_only,
        verity={Verity.no: "none", Verity.yes: "yes", Verity.signed: "signed"}[config.verity],
        verity_key=verity_key_files(config)[0],
        verity_cert=verity_key_files(config)[1],
        encrypt=config.encrypt.value if config.encrypt else "none",
        passphrase_file=passphrase_file(ctx),
        home_size=config.home_size,
        srv_size=config.srv_size,
        var_size=config.var_size,
        tmp_size=config.tmp_size,
        swap_size=config.swap_size,
        esp_size=config.esp_size if config.bootable else None,
        xbootldr_size=config.xbootldr_size if config.bootable else None,
        bios_boot=config.bootable and BootProtocol.bios in config.boot_protocols,
        bios_size=config.bios_size,
        image_id=config.image_id,
        image_version=config.image_version,
        first_lba=config.gpt_first_lba or 2048,
        compress_fs=None if config.compress_fs in ("no", "none") else config.compress_fs,
        minimize=config.minimize,
        mksquashfs_tool=str(config.mksquashfs_tool) if config.mksquashfs_tool else "mksquashfs",
        seed=seed_from_setting(config.seed),
    )
    with log.step(f"Assembling {fs} GPT disk image"):
        result = build_disk(spec)
    if config.bootable:
        # The ESP is filled once the root partition exists: with verity, the kernel command line in
        # the unified kernel image carries the root hash.
        fill_esp(ctx, result, main_partition_label(spec))
    if config.bootable and BootProtocol.bios in config.boot_protocols:

        install_bios_boot(ctx, result.output)

    compression = config.output_compression

    roothash = result.usrhash or result.roothash
    if roothash and ROOT_HASH.when(config):
        staged(ctx, ROOT_HASH).write_text(roothash + "\n")
    if result.signature and ROOT_HASH_P7S.when(config):
        staged(ctx, ROOT_HASH_P7S).write_bytes(result.signature)

    if config.split_artifacts:
        split_artifacts(ctx, result.images, compression)

    image = bmap_and_convert(ctx, result.output)
    with log.step("Compressing" if compression else "Staging the image"):
        maybe_compress(image, compression, staged(ctx, IMAGE), level=config.compress_level)


def bmap_and_convert(ctx: Context, raw: Path) -> Path:
    """Write the block map of the raw disk (BMap=), then convert it to QCOW2 (QCow2=).

    The bmap always describes the raw disk: that is what bmaptool writes to a device, also when it
    reads the image compressed (bmaptool decompresses on the fly and checks the uncompressed blocks).
    Returns the image to stage."""

    config = ctx.config
    if BMAP.when(config):

        write_bmap(raw, staged(ctx, BMAP))
    image = raw
    if config.qcow2:
        qcow = ctx.workspace / "disk.qcow2"
        with log.step("Converting to QCOW2"):
            qcow2_convert(raw, qcow)
        raw.unlink()
        image = qcow
    return image


def fill_esp(ctx: Context, result: DiskResult, root_label: str) -> None:

    verity = None
    if result.roothash:
        data_uuid, hash_uuid = roothash_uuids(result.roothash)
        verity = VerityInfo(result.roothash, data_uuid, hash_uuid)
    xbootldr = result.partition("xbootldr") is not None
    boot_tree = ctx.dir("xbootldr") if xbootldr else None
    esp_tree = prepare_esp(ctx, root_label, verity, boot=boot_tree)
    with log.step("Writing the EFI system partition"):
        write_vfat_partition(result, "esp", esp_tree)
    if boot_tree is not None:
        # The partition holds the image's /boot already (build_disk()); the entries are added to it.
        with log.step("Writing the XBOOTLDR partition"):
            write_vfat_partition(result, "xbootldr", boot_tree, what="XBOOTLDR partition", setting="XBootLDRSize=")


def write_vfat_partition(result: DiskResult, role: str, tree: Path, what: str = "ESP",
                         setting: str = "ESPSize=") -> None:
    """Copy `tree` into the FAT image of partition `role` and that image into the disk again."""
    placed = result.partition(role)
    assert placed is not None
    image = result.images[role]
    populate_vfat(image, tree, what=what, setting=setting)
    run(["fallocate", "--punch-hole", "--keep-size", "--offset", str(placed.offset), "--length",
         str(placed.size), result.output])
    fd = os.open(result.output, os.O_WRONLY)
    try:
        copy_sparse(image, fd, placed.offset)
    finally:
        os.close(fd)


def split_artifacts(ctx: Context, images: dict[str, Path], compression: Optional[str]) -> None:
    """The root (or /usr) partition and its verity partition as files of their own; the unified kernel
    image is split out by prepare_esp() (mkosi/boot/bootable.py)."""
    config = ctx.config
    root_role = "usr" if config.usr_only else "root"
    for src, artifact in ((images.get(root_role), SPLIT_ROOT), (images.get(f"{root_role}-verity"), SPLIT_VERITY),
                          (images.get(f"{root_role}-verity-sig"), SPLIT_VERITY_SIG)):
        if src is None or not artifact.when(config):
            continue
        dst = staged(ctx, artifact)
        tmp = ctx.workspace / f"split-{dst.name}"
        # Sparse like the partition image (a plain copy would write out every zero block).
        run(["cp", "--sparse=always", "--reflink=auto", src, tmp])
        maybe_compress(tmp, compression, dst, level=config.compress_level)
