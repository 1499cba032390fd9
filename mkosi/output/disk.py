"""Whole disk images: per-partition images built in a workspace, then assembled into one GPT disk.

build_disk() takes a DiskSpec (plain values, no mkosi configuration objects) and produces the
raw disk image plus everything later steps need: the partition layout with offsets, the verity
root hashes and signature, and the per-partition images (kept in the workspace so that split
artifacts can be copied out). qcow2_convert() turns a raw image into qcow2.

No loop devices, device-mapper devices or mounts are left behind: the only loop mount (xfs
trees a protofile cannot describe) is always unmounted, LUKS encryption runs offline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.output import filesystems as fs
from mkosi.output import gpt, luks, verity
from mkosi.output.gpt import Partition, PlacedPartition, SeedLike
from mkosi.run import run
from mkosi.sandbox import resolve_in_root

MiB = 1024 * 1024

ROOT_FILESYSTEMS = ("ext4", "xfs", "btrfs", "squashfs")
DATA_FILESYSTEMS = ("ext4", "xfs", "btrfs")
VERITY_MODES = ("none", "yes", "signed")
ENCRYPT_MODES = ("none", "all", "data")
DEFAULT_ESP_SIZE = 256 * MiB
XBOOTLDR_LABEL = "xbootldr"        # the GPT partition name; the FAT label is XBOOTLDR
BIOS_BOOT_SIZE = 1 * MiB


@dataclasses.dataclass
class DiskSpec:
    """What to put on the disk. Sizes in bytes; None means "work it out" or "no such partition".

    tree: the root file system tree. With home_size/srv_size/var_size/tmp_size set, the tree's
    /home, /srv, /var and /var/tmp go into their own partitions and the root keeps empty mount
    points (the tree is restored afterwards); /var and /var/tmp get /etc/fstab lines (systemd's
    automatic discovery would mount /var only for an image with a fixed machine ID). With usr_only
    only the tree's /usr is put on the disk, as a /usr partition.

    xbootldr_size: an extended boot loader partition (XBOOTLDR, vfat) after the ESP. The tree's
    /boot is copied into it (symbolic links resolved inside the tree: FAT has none) and the root
    keeps an empty /boot mount point, plus an empty /efi for the ESP: systemd's automatic discovery
    mounts XBOOTLDR at /boot and then the ESP at /efi, by their partition types.
    """

    tree: Path
    output: Path
    workspace: Path
    arch: str | None = None
    root_fs: str = "ext4"
    root_size: int | None = None
    usr_only: bool = False
    read_only: bool = False
    growfs: bool = False
    verity: str = "none"
    verity_key: Path | None = None
    verity_cert: Path | None = None
    encrypt: str = "none"
    passphrase_file: Path | None = None
    home_size: int | None = None
    srv_size: int | None = None
    var_size: int | None = None
    tmp_size: int | None = None       # /var/tmp
    data_fs: str | None = None
    swap_size: int | None = None
    esp_size: int | None = None
    esp_tree: Path | None = None
    xbootldr_size: int | None = None
    bios_boot: bool = False
    bios_size: int | None = None      # size of the BIOS boot partition (default BIOS_BOOT_SIZE)
    image_id: str | None = None
    image_version: str | None = None
    first_lba: int = 2048
    sector_size: int = 512
    compress_fs: str | None = None
    minimize: bool = False
    seed: SeedLike | None = None
    mksquashfs_tool: str = "mksquashfs"
    luks_kdf: luks.KdfOptions | None = None


@dataclasses.dataclass
class DiskResult:
    """What build_disk() made.

    images: per-partition image files in the workspace, by role ("root" or "usr", "root-verity",
    "root-verity-sig", "esp", "xbootldr", "home", "srv", "var", "tmp", "swap"); encrypted roles' images are the LUKS
    volumes, exactly as on the disk. filesystems: the file system type of each
    role. mount_options: options the image needs when a role is mounted (for example btrfs
    compression, which mkfs cannot apply here) for the caller's fstab or rootflags=.
    """

    output: Path
    partitions: list[PlacedPartition]
    images: dict[str, Path]
    filesystems: dict[str, str]
    roothash: str | None = None
    usrhash: str | None = None
    signature: bytes | None = None
    luks_uuids: dict[str, str] = dataclasses.field(default_factory=dict)
    mount_options: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    xfs_population: str | None = None

    def partition(self, role: str) -> PlacedPartition | None:
        for p in self.partitions:
            if p.role == role:
                return p
        return None


def qcow2_convert(raw: Path, out: Path) -> Path:
    """Convert a raw disk image to qcow2 with qemu-img (written next to `out`, then renamed)."""
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    with log.step(f"Converting {raw.name} to qcow2"):
        try:
            run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", os.fspath(raw), os.fspath(tmp)])
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------


def _validate(spec: DiskSpec) -> None:
    if spec.root_fs not in ROOT_FILESYSTEMS:
        raise MkosiError(f"unsupported root file system '{spec.root_fs}'", hint="use " + ", ".join(ROOT_FILESYSTEMS))
    if spec.data_fs is not None and spec.data_fs not in DATA_FILESYSTEMS:
        raise MkosiError(f"unsupported file system '{spec.data_fs}' for /home and /srv")
    if spec.verity not in VERITY_MODES:
        raise MkosiError(f"unknown verity mode '{spec.verity}'", hint="use none, yes or signed")
    if spec.verity == "signed" and (spec.verity_key is None or spec.verity_cert is None):
        raise MkosiError("signed verity needs a key and a certificate")
    if spec.encrypt not in ENCRYPT_MODES:
        raise MkosiError(f"unknown encryption mode '{spec.encrypt}'", hint="use none, all or data")
    if spec.encrypt != "none" and spec.passphrase_file is None:
        raise MkosiError("encryption needs a passphrase file")
    if spec.encrypt == "all" and spec.verity != "none":
        raise MkosiError(
            "the root partition cannot be both LUKS encrypted and verity protected",
            hint="use encryption 'data' to encrypt only /home and /srv",
        )
    if not spec.tree.is_dir():
        raise MkosiError(f"image tree {spec.tree} does not exist")
    if spec.usr_only and not (spec.tree / "usr").is_dir():
        raise MkosiError(f"a /usr-only image needs {spec.tree}/usr")
    if spec.esp_tree is not None and not spec.esp_tree.is_dir():
        raise MkosiError(f"ESP tree {spec.esp_tree} does not exist")


def _label_base(spec: DiskSpec) -> str | None:
    if spec.image_id and spec.image_version:
        return f"{spec.image_id}_{spec.image_version}"
    return spec.image_id or None


def main_partition_label(spec: DiskSpec) -> str:
    """The GPT name of the root (or /usr) partition; a kernel finds it with root=PARTLABEL=."""
    arch = gpt.normalize_arch(spec.arch) if spec.arch else gpt.host_arch()
    return _label_base(spec) or f"{'usr' if spec.usr_only else 'root'}-{arch}"


def _squashfs_compression(value: str | None) -> str | None:
    if value is None or value.lower() in ("yes", "true", "1"):
        return "zstd"
    if value.lower() in ("no", "false", "0", "none"):
        return None
    return value


@contextlib.contextmanager
def split_out_dirs(tree: Path, names: Sequence[str], workspace: Path) -> Iterator[dict[str, Path]]:
    """Move tree/NAME aside for each name and leave an empty mount point with the same attributes.

    Yields where each directory's contents now are. Everything is moved back afterwards, also
    on errors. Directories that do not exist yield an empty directory (and get a temporary
    empty mount point in the tree).
    """
    moved: list[tuple[Path, Path]] = []  # (original, stash)
    created: list[Path] = []
    result: dict[str, Path] = {}
    try:
        for name in names:
            orig = tree / name
            if not orig.exists() and not orig.is_symlink():
                empty = workspace / f"empty-{name.replace('/', '-')}"
                empty.mkdir(mode=0o755, exist_ok=True)
                orig.mkdir(mode=0o755)
                created.append(orig)
                result[name] = empty
                continue
            if orig.is_symlink() or not orig.is_dir():
                raise MkosiError(f"{orig} is not a directory, it cannot become its own partition")
            st = orig.stat()
            stash = None
            for parent in (tree.parent, workspace):
                candidate = parent / f".{tree.name}-{name.replace('/', '-')}-mkosi-stash"
                try:
                    os.rename(orig, candidate)
                except OSError as e:
                    if e.errno in (errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS):
                        continue
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise MkosiError(
                            f"{candidate} already exists",
                            hint=f"an earlier build was interrupted; move it back to {orig}",
                        )
                    raise
                stash = candidate
                break
            if stash is None:
                raise MkosiError(
                    f"cannot move {orig} aside on its file system",
                    hint="the tree's parent directory or the workspace must be on the same file system",
                )
            moved.append((orig, stash))
            orig.mkdir()
            os.chown(orig, st.st_uid, st.st_gid)
            os.chmod(orig, st.st_mode & 0o7777)
            os.utime(orig, ns=(st.st_atime_ns, st.st_mtime_ns))
            result[name] = stash
        yield result
    finally:
        for orig, stash in reversed(moved):
            with contextlib.suppress(OSError):
                orig.rmdir()
            os.rename(stash, orig)
        for orig in created:
            with contextlib.suppress(OSError):
                orig.rmdir()


class _Builder:
    def __init__(self, spec: DiskSpec) -> None:
        self.spec = spec
        self.ws = spec.workspace
        self.images: dict[str, Path] = {}
        self.filesystems: dict[str, str] = {}
        self.mount_options: dict[str, list[str]] = {}
        self.luks_uuids: dict[str, str] = {}
        self.xfs_population: str | None = None
        self.learned_kdf: luks.KdfOptions | None = None

    def make_fs(self, role: str, fstype: str, src: Path, size: int | None) -> Path:
        spec = self.spec
        image = self.ws / f"{role}.raw"
        label = role
        self.filesystems[role] = fstype
        compress = spec.compress_fs
        if fstype == "squashfs":
            fs.make_squashfs(src, image, _squashfs_compression(compress), spec.mksquashfs_tool)
        elif fstype == "ext4":
            start = size if size is not None else fs.estimate_size(src, "ext4")
            fs.make_ext4(src, image, start, label, seed=spec.seed)
            if spec.minimize:
                fs.minimize_ext4(image)
        elif fstype == "xfs":
            if spec.minimize:
                log.warn("xfs cannot shrink; Minimize= only picks an estimated size for it")
            start = size if size is not None else fs.estimate_size(src, "xfs")
            self.xfs_population = fs.make_xfs(src, image, start, label, seed=spec.seed)
        elif fstype == "btrfs":
            mkfs_compress = in_place = None
            if compress and compress.lower() not in ("no", "false", "0", "none"):
                alg = "zstd" if compress.lower() in ("yes", "true", "1") else compress
                if fs.btrfs_mkfs_supports_compress():
                    mkfs_compress = alg
                else:
                    # Older mkfs.btrfs: the files are compressed through a loop mount afterwards.
                    in_place = alg
                    self.mount_options.setdefault(role, []).append(f"compress={alg}")
            start = size if size is not None else fs.estimate_size(src, "btrfs")
            fs.make_btrfs(src, image, start, label, shrink=spec.minimize and in_place is None,
                          compress=mkfs_compress, seed=spec.seed)
            if in_place is not None:
                fs.compress_btrfs(image, in_place, shrink=spec.minimize)
        else:
            raise MkosiError(f"unsupported file system '{fstype}'")
        if compress and fstype in ("ext4", "xfs"):
            log.warn(f"{fstype} has no compression; the compression setting is ignored for {role}")
        self.images[role] = image
        return image

    def encrypt(self, role: str, image: Path) -> None:
        spec = self.spec
        assert spec.passphrase_file is not None
        self.luks_uuids[role] = luks.encrypt_image(
            image,
            spec.passphrase_file,
            label=role,
            kdf=spec.luks_kdf or self.learned_kdf,
        )
        if spec.luks_kdf is None and self.learned_kdf is None:
            # cryptsetup benchmarks the key derivation for each volume (several seconds); the
            # other volumes of this disk get the settings it picked for the first one.
            self.learned_kdf = luks.keyslot_kdf(image)


def build_disk(spec: DiskSpec) -> DiskResult:
    """Build the disk image described by `spec` at spec.output; see DiskSpec and DiskResult.

    Partition order: BIOS boot, ESP, XBOOTLDR, root (or /usr), its verity and signature partitions,
    /var/tmp, /var, /home, /srv, swap. Root and verity partition UUIDs are the two halves of the root hash as
    the Discoverable Partitions Specification asks; other UUIDs come from spec.seed (or
    SOURCE_DATE_EPOCH) when set, so equal inputs give equal images.
    """
    _validate(spec)
    arch = gpt.normalize_arch(spec.arch) if spec.arch else gpt.host_arch()
    spec.workspace.mkdir(parents=True, exist_ok=True)
    b = _Builder(spec)
    main = "usr" if spec.usr_only else "root"

    partitions: list[Partition] = []
    if spec.bios_boot:
        partitions.append(Partition("bios-boot", "BIOS boot", size=spec.bios_size or BIOS_BOOT_SIZE))
    if spec.esp_size is not None or spec.esp_tree is not None:
        partitions.append(_esp_partition(spec, b))
    with _boot_split(spec) as boot_contents:
        if boot_contents is not None:
            partitions.append(_xbootldr_partition(spec, b, boot_contents))
        main_image, data_parts = _file_systems(spec, b, main)
    roothash: str | None = None
    signature: bytes | None = None
    if spec.verity != "none":
        verity_parts, roothash, signature = _verity_partitions(spec, b, main, main_image, arch)
        partitions += verity_parts
    else:
        read_only = spec.read_only or spec.root_fs == "squashfs"
        if spec.encrypt == "all":
            b.encrypt(main, main_image)
        partitions.append(Partition(main, main_partition_label(spec), source=main_image, read_only=read_only,
                                    growfs=spec.growfs and not read_only))
    partitions.extend(data_parts)
    if spec.swap_size is not None:
        partitions.append(_swap_partition(spec, b))

    placed = gpt.assemble(spec.output, partitions, first_lba=spec.first_lba, sector=spec.sector_size, arch=arch,
                          seed=spec.seed)
    return DiskResult(
        output=spec.output,
        partitions=placed,
        images=b.images,
        filesystems=b.filesystems,
        roothash=roothash if main == "root" else None,
        usrhash=roothash if main == "usr" else None,
        signature=signature,
        luks_uuids=b.luks_uuids,
        mount_options=b.mount_options,
        xfs_population=b.xfs_population,
    )


def _esp_partition(spec: DiskSpec, b: _Builder) -> Partition:
    esp = spec.workspace / "esp.raw"
    fs.make_vfat(esp, spec.esp_size or DEFAULT_ESP_SIZE, "ESP", seed=spec.seed)
    if spec.esp_tree is not None:
        fs.populate_vfat(esp, spec.esp_tree)
    b.images["esp"] = esp
    b.filesystems["esp"] = "vfat"
    return Partition("esp", "ESP", source=esp)


def copy_boot_tree(tree: Path, dest: Path) -> Path:
    """A copy of the tree's /boot at `dest` for a FAT file system: regular files (hard links where the
    file system allows) and directories; a symbolic link becomes a copy of what it points to inside the
    tree, and one that leads nowhere (or to a directory) is left out with a warning."""
    src = tree / "boot"
    dest.mkdir(parents=True, exist_ok=True)
    if not src.is_dir() or src.is_symlink():
        return dest
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(exist_ok=True)
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            inside = "/boot/" + str(rel / name).removeprefix("./")
            if path.is_symlink():
                target = resolve_in_root(tree, inside)
                if target is None or not target.is_file():
                    log.warn(f"{inside} is a symbolic link that leads to no file inside the image; "
                             "the XBOOTLDR partition (FAT, without links) leaves it out")
                    if name in dirnames:
                        dirnames.remove(name)
                    continue
                shutil.copyfile(target, dest / rel / name)
            elif path.is_file():
                try:
                    os.link(path, dest / rel / name)
                except OSError:
                    shutil.copyfile(path, dest / rel / name)
            elif not path.is_dir():
                log.warn(f"{inside} is neither a file nor a directory; the XBOOTLDR partition leaves it out")
    return dest


@contextlib.contextmanager
def _boot_split(spec: DiskSpec) -> Iterator[Path | None]:
    """With an XBOOTLDR partition: a copy of the tree's /boot, while the root is made with an empty /boot
    (and an empty /efi, unless the tree has one) as mount points."""
    if spec.xbootldr_size is None:
        yield None
        return
    contents = copy_boot_tree(spec.tree, spec.workspace / "xbootldr-tree")
    names = ["boot"]
    if not (spec.tree / "efi").exists() and not (spec.tree / "efi").is_symlink():
        names.append("efi")
    with split_out_dirs(spec.tree, names, spec.workspace):
        yield contents


def _xbootldr_partition(spec: DiskSpec, b: _Builder, contents: Path) -> Partition:
    assert spec.xbootldr_size is not None
    image = spec.workspace / "xbootldr.raw"
    fs.make_vfat(image, spec.xbootldr_size, "XBOOTLDR", seed=spec.seed)
    fs.populate_vfat(image, contents, what="XBOOTLDR partition", setting="XBootLDRSize=")
    b.images["xbootldr"] = image
    b.filesystems["xbootldr"] = "vfat"
    return Partition("xbootldr", XBOOTLDR_LABEL, source=image)


# The directories that can have partitions of their own: (partition role, directory in the tree).
# /var/tmp comes before /var, so that /var's partition keeps an empty /var/tmp mount point.
DATA_PARTITIONS = (("tmp", "var/tmp"), ("var", "var"), ("home", "home"), ("srv", "srv"))
# Those systemd's automatic discovery does not mount on any image: they get an fstab line.
FSTAB_ROLES = ("var", "tmp")


def data_partition_sizes(spec: DiskSpec) -> list[tuple[str, str, int]]:
    sizes = {"tmp": spec.tmp_size, "var": spec.var_size, "home": spec.home_size, "srv": spec.srv_size}
    return [(role, d, size) for role, d in DATA_PARTITIONS if (size := sizes[role]) is not None]


def fstab_lines(roles: Sequence[str], fstype: str) -> list[str]:
    """/etc/fstab lines mounting the partitions by their GPT label (which is their role)."""
    dirs = dict(DATA_PARTITIONS)
    return [f"PARTLABEL={role} /{dirs[role]} {fstype} defaults 0 2" for role in sorted(roles, key=lambda r: dirs[r])
            if role in FSTAB_ROLES]


@contextlib.contextmanager
def extra_fstab_lines(tree: Path, lines: Sequence[str]) -> Iterator[None]:
    """Add lines to the tree's /etc/fstab while the root file system is made, then restore it."""
    if not lines:
        yield
        return
    fstab = resolve_in_root(tree, "etc/fstab")
    if fstab is None:
        raise MkosiError(f"the image's /etc/fstab in {tree} cannot be resolved inside the image")
    before = fstab.read_bytes() if fstab.is_file() else None
    text = (before or b"").decode()
    fstab.parent.mkdir(parents=True, exist_ok=True)
    fstab.write_text(text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(lines) + "\n")
    try:
        yield
    finally:
        if before is None:
            fstab.unlink()
        else:
            fstab.write_bytes(before)


def _file_systems(spec: DiskSpec, b: _Builder, main: str) -> tuple[Path, list[Partition]]:
    """The root (or /usr) file system image, and the /home, /srv, /var and /var/tmp partitions split
    out of the tree."""
    split = [] if spec.usr_only else data_partition_sizes(spec)
    data_fs = spec.data_fs or (spec.root_fs if spec.root_fs in DATA_FILESYSTEMS else "ext4")
    data_parts: list[Partition] = []
    fstab = fstab_lines([role for role, _, _ in split], data_fs)
    with split_out_dirs(spec.tree, [d for _, d, _ in split], spec.workspace) as moved, \
            extra_fstab_lines(spec.tree, fstab):
        src = spec.tree / "usr" if spec.usr_only else spec.tree
        main_image = b.make_fs(main, spec.root_fs, src, spec.root_size)
        for role, d, size in split:
            dsrc = moved.get(d, spec.tree / d)
            if not dsrc.exists():
                dsrc = spec.workspace / f"empty-{role}"
                dsrc.mkdir(exist_ok=True)
            image = b.make_fs(role, data_fs, dsrc, size)
            if spec.encrypt in ("all", "data"):
                b.encrypt(role, image)
            data_parts.append(Partition(role, role, source=image, growfs=spec.growfs))
    return main_image, data_parts


def _verity_partitions(spec: DiskSpec, b: _Builder, main: str, main_image: Path,
                       arch: str) -> tuple[list[Partition], str, bytes | None]:
    """The data partition, its verity hash partition and, with signed verity, the signature partition."""
    base = _label_base(spec)
    hash_image = spec.workspace / f"{main}.verity"
    roothash = verity.make_verity(main_image, hash_image, seed=spec.seed)
    data_uuid, hash_uuid = verity.roothash_uuids(roothash)
    b.images[f"{main}-verity"] = hash_image
    parts = [
        Partition(main, main_partition_label(spec), source=main_image, uuid=uuid.UUID(data_uuid), read_only=True),
        Partition(f"{main}-verity", base or f"{main}-{arch}-verity", source=hash_image, uuid=uuid.UUID(hash_uuid),
                  read_only=True),
    ]
    if spec.verity != "signed":
        return parts, roothash, None
    assert spec.verity_key is not None and spec.verity_cert is not None
    with log.step(f"Signing the {main} verity root hash"):
        signature = verity.sign_roothash(roothash, spec.verity_key, spec.verity_cert)
        blob = verity.signature_partition_blob(roothash, signature, spec.verity_cert)
    sig_image = spec.workspace / f"{main}.verity-sig"
    sig_image.write_bytes(blob)
    b.images[f"{main}-verity-sig"] = sig_image
    parts.append(Partition(f"{main}-verity-sig", base or f"{main}-{arch}-verity-sig", source=sig_image,
                           uuid=gpt.derive_uuid(bytes.fromhex(roothash), "verity-signature"), read_only=True))
    return parts, roothash, signature


def _swap_partition(spec: DiskSpec, b: _Builder) -> Partition:
    assert spec.swap_size is not None
    swap = spec.workspace / "swap.raw"
    fs.make_swap(swap, spec.swap_size, seed=spec.seed)
    b.images["swap"] = swap
    b.filesystems["swap"] = "swap"
    return Partition("swap", "swap", source=swap)
