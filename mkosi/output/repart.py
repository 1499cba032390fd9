"""Format=disk: systemd-repart builds the disk image offline from partition definitions.

The definitions are RepartDirectories= (mkosi.repart/) merged by file name, or the default layout
(mkosi/output/repartdefs.py), copied into the workspace and passed with --definitions=. The image
root is --root= and --copy-source=, so CopyFiles= paths are paths of the image. A bootable image
is made in two runs: the first defers the ESP and reports the partitions (and the verity root
hashes) as JSON; the unified kernel image is then built with them on its command line and the
second run adds the ESP, filled from /efi (where the ESP tree is mounted for that run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.boot.bootable import VerityInfo, prepare_esp
from mkosi.boot.signing import key_reference
from mkosi.config.enums import BootProtocol, SplitArtifact, Verity
from mkosi.config.settings import Config
from mkosi.context import Context
from mkosi.distributions.facts import default_filesystem
from mkosi.errors import MkosiError
from mkosi.output.artifacts import IMAGE, REPART_ROOT_HASH, REPART_USR_HASH, SPLIT_PARTITIONS, output_stem, staged
from mkosi.output.compress import maybe_compress
from mkosi.output.diskimage import bmap_and_convert
from mkosi.output.gpt import derive_uuid, normalize_arch
from mkosi.output.repartdefs import (
    ESP_SOURCE,
    Definition,
    default_definitions,
    definitions_for,
    merged_files,
    read_definitions,
    type_role,
)
from mkosi.run import current_sandbox, run
from mkosi.sandbox import Mount, Sandbox

# --copy-source= came with systemd 255 (--offline= with 254).
MINIMUM_VERSION = 255
DEFERRED = ("esp", "xbootldr")


# ---- the tool ----

def parse_version(text: str) -> Optional[int]:
    """The major version from `systemd-repart --version` ("systemd 257 (257.13-1~deb13u1)")."""
    m = re.match(r"\s*systemd\s+(\d+)", text)
    return int(m.group(1)) if m else None


def repart_version(sandbox: Sandbox) -> int:
    out = run(["systemd-repart", "--version"], sandbox=sandbox, capture=True).stdout
    version = parse_version(str(out))
    if version is None:
        raise MkosiError(f"cannot tell the version of systemd-repart from '{str(out).strip()[:80]}'")
    return version


def check_version(version: int, tools_tree: Optional[str]) -> None:
    if version >= MINIMUM_VERSION:
        return
    where = f"the tools tree {tools_tree}" if tools_tree else "this host"
    raise MkosiError(f"Format=disk needs systemd-repart {MINIMUM_VERSION} or newer (for --offline= and "
                     f"--copy-source=), but {where} has systemd-repart {version}",
                     hint="set ToolsTree= to a tree with a newer systemd (e.g. Debian trixie), "
                     "or use Format=gpt_ext4")


def configured_definitions(config: Config) -> list[Definition]:
    """The definitions of RepartDirectories= (checked: a bad line is an error naming file and line), or
    the default layout."""
    return definitions_for(config.repart_dirs, bootable=config.bootable,
                           root_fs=default_filesystem(config.distribution))


def check_repart(config: Config) -> None:
    """Before the build starts: a new enough systemd-repart, valid definitions, and what the other settings
    need of them."""
    if config.bootable and BootProtocol.bios in config.boot_protocols:
        raise MkosiError("BootProtocols=bios with Format=disk is not implemented yet", hint="use uefi or linux")
    defs = configured_definitions(config)
    check_definitions(config, defs)
    if config.tools_tree != "default":
        # The default tools tree may not be built yet: its systemd-repart is checked when the disk is made.
        check_version(repart_version(Sandbox.for_config(config)), config.tools_tree)


def check_definitions(config: Config, defs: Sequence[Definition]) -> None:
    arch = config.architecture
    roles = [d.role(arch) for d in defs]
    if config.bootable and "esp" not in roles:
        raise MkosiError("Bootable=yes with Format=disk needs an ESP partition definition (Type=esp, "
                         f"CopyFiles={ESP_SOURCE}:/) in RepartDirectories=")
    if config.bootable and "root" not in roles:
        raise MkosiError("Bootable=yes with partition definitions without a root partition (Type=root) "
                         "is not implemented yet")
    signing = [d for d in defs if d.verity == "signature"]
    if signing and verity_keys(config) is None:
        v = signing[0].get("Verity")
        assert v is not None
        raise MkosiError(f"{v.origin}: Verity=signature needs a key and certificate",
                         hint="set VerityKey=/VerityCertificate= or SecureBootKey=/SecureBootCertificate= "
                         "(mkosi genkey)")
    if config.verity == Verity.signed and not signing:
        raise MkosiError("Verity=signed with Format=disk needs a partition definition with Verity=signature "
                         "in RepartDirectories= (the default layout has none)")
    if config.verity == Verity.yes and not any(d.verity != "off" for d in defs):
        log.warn("Verity= has no effect with Format=disk: the partition definitions have no Verity= partitions")
    for d in defs:
        if d.encrypt != "off" and config.passphrase_file is None:
            e = d.get("Encrypt")
            assert e is not None
            log.warn(f"{e.origin}: Encrypt={e.text} without Passphrase=: systemd-repart uses an empty key")


def verity_keys(config: Config) -> Optional[tuple[Path, Path]]:
    key = config.verity_key or config.secure_boot_key
    cert = config.verity_certificate or config.secure_boot_certificate
    return (key, cert) if key is not None and cert is not None else None


# ---- the command line ----

def repart_seed(config: Config) -> str:
    """--seed=: Seed= (a UUID or random); without it one derived from SourceDateEpoch= when set, so that
    such builds are reproducible, else random (never the image's machine ID)."""
    if config.seed is not None:
        return config.seed
    if config.source_date_epoch is not None:
        key = hashlib.sha256(b"mkosi source date epoch " + str(config.source_date_epoch).encode()).digest()
        return str(derive_uuid(key, "systemd-repart"))
    return "random"


@dataclasses.dataclass(frozen=True)
class RepartRun:
    """One invocation of systemd-repart."""

    definitions: Path
    root: Path
    output: Path
    seed: str
    architecture: str
    offline: bool = True
    create: bool = True                  # a new image (--empty=create --size=auto); else add to `output`
    split: bool = False
    sector_size: Optional[int] = None
    key_file: Optional[Path] = None
    private_key: Optional[Path] = None
    private_key_source: str = "file"
    certificate: Optional[Path] = None
    certificate_source: str = "file"
    defer: tuple[str, ...] = ()

    @classmethod
    def for_config(cls, config: Config, defs: Sequence[Definition], definitions: Path, root: Path, output: Path,
                   **changes: Any) -> RepartRun:
        """The run for `config` with the definitions `defs` (copied into the directory `definitions`); the
        verity key is handed over when Verity= is set or a definition signs (Verity=signature)."""
        keys = verity_keys(config)
        signing = keys is not None and (config.verity != Verity.no or any(d.verity == "signature" for d in defs))
        run = cls(definitions=definitions, root=root, output=output, seed=repart_seed(config),
                  architecture=normalize_arch(config.architecture), offline=config.repart_offline,
                  split=SplitArtifact.partitions in config.split_artifacts, sector_size=config.sector_size,
                  key_file=config.passphrase_file,
                  private_key=Path(key_reference(keys[0], config.verity_key_source)) if signing and keys else None,
                  private_key_source=config.verity_key_source,
                  certificate=Path(key_reference(keys[1], config.verity_certificate_source))
                  if signing and keys else None,
                  certificate_source=config.verity_certificate_source)
        return dataclasses.replace(run, **changes)

    def argv(self) -> list[str]:
        argv = ["systemd-repart"]
        if self.create:
            argv += ["--empty=create", "--size=auto"]
        argv += [f"--offline={'yes' if self.offline else 'no'}", "--dry-run=no", "--json=pretty",
                 "--no-pager", f"--definitions={self.definitions}", f"--root={self.root}",
                 f"--copy-source={self.root}", f"--seed={self.seed}", f"--architecture={self.architecture}"]
        if self.split:
            argv.append("--split=yes")
        if self.sector_size is not None:
            argv.append(f"--sector-size={self.sector_size}")
        if self.key_file is not None:
            argv.append(f"--key-file={self.key_file}")
        if self.private_key is not None:
            argv.append(f"--private-key={self.private_key}")
            if self.private_key_source != "file":
                argv.append(f"--private-key-source={self.private_key_source}")
        if self.certificate is not None:
            argv.append(f"--certificate={self.certificate}")
            if self.certificate_source != "file":
                argv.append(f"--certificate-source={self.certificate_source}")
        if self.defer:
            argv.append(f"--defer-partitions={','.join(self.defer)}")
        argv.append(str(self.output))
        return argv


# ---- what it made ----

@dataclasses.dataclass(frozen=True)
class Made:
    """One partition of systemd-repart's JSON report."""

    type: str                      # its type identifier: root-x86-64, usr-x86-64-verity, esp, or a UUID
    label: str
    uuid: str
    partno: int
    file: str                      # the definition file
    offset: Optional[int]          # None for a deferred partition
    size: int
    roothash: Optional[str]
    split_path: Optional[str]
    activity: str

    def role(self, arch: str) -> Optional[str]:
        return type_role(self.type, arch)


def _hash(value: object) -> Optional[str]:
    """A root hash as reported; "TBD" (not computed in this run) and null are none."""
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64,}", value) else None


def parse_report(text: str) -> list[Made]:
    """systemd-repart --json=pretty's list of partitions."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MkosiError(f"systemd-repart printed no valid JSON report: {e}")
    if not isinstance(data, list):
        raise MkosiError("systemd-repart's JSON report is not a list of partitions")
    made = []
    for p in data:
        try:
            offset = p.get("offset")
            made.append(Made(type=str(p["type"]), label=str(p.get("label") or ""), uuid=str(p["uuid"]),
                             partno=int(p["partno"]), file=str(p.get("file") or ""),
                             offset=int(offset) if isinstance(offset, int) else None,
                             size=int(p.get("raw_size") or 0), roothash=_hash(p.get("roothash")),
                             split_path=p.get("split_path") or None, activity=str(p.get("activity") or "")))
        except (KeyError, TypeError, ValueError) as e:
            raise MkosiError(f"systemd-repart's JSON report has an unexpected partition entry ({e}): {p}")
    return made


def verity_of(made: Sequence[Made], arch: str, kind: str) -> Optional[VerityInfo]:
    """The root hash of the `kind` (root or usr) partition and the UUIDs of its data and hash partitions."""
    data = next((m for m in made if m.role(arch) == kind and m.roothash), None)
    hashpart = next((m for m in made if m.role(arch) == f"{kind}-verity" and m.roothash), None)
    if data is None or hashpart is None or data.roothash is None:
        return None
    return VerityInfo(data.roothash, data.uuid, hashpart.uuid)


def usr_words(verity: Optional[VerityInfo]) -> list[str]:
    """What the initrd needs to open a verity-protected /usr (found by GPT auto-discovery)."""
    return [f"usrhash={verity.roothash}"] if verity is not None else []


# ---- the maker ----

def write_definitions(config: Config, target: Path) -> list[Definition]:
    """Copy the definitions systemd-repart gets into `target`: the merged RepartDirectories= files, or
    the default layout."""
    if config.repart_dirs:
        for f in merged_files(config.repart_dirs):
            shutil.copyfile(f, target / f.name)
    else:
        for name, text in default_definitions(bootable=config.bootable,
                                              root_fs=default_filesystem(config.distribution)).items():
            (target / name).write_text(text)
    return read_definitions([target])


def mkfs_environment(seed: str) -> dict[str, str]:
    """Extra mkfs options systemd-repart takes from $SYSTEMD_REPART_MKFS_OPTIONS_<FSTYPE>, for what its own
    --seed= does not fix: mkfs.ext4 draws the directory hash seed at random. With a fixed seed it is derived
    from it (one per file system type); an option given in mkosi's own environment is kept as it is."""
    if seed == "random":
        return {}
    key = uuid.UUID(seed).bytes
    env = {}
    for fs in ("ext2", "ext3", "ext4"):
        name = f"SYSTEMD_REPART_MKFS_OPTIONS_{fs.upper()}"
        if name not in os.environ:
            env[name] = f"-E hash_seed={derive_uuid(key, 'repart-hash-seed', fs)}"
    return env


def run_repart(ctx: Context, call: RepartRun, sandbox: Sandbox) -> list[Made]:
    env = {"TMPDIR": str(ctx.dir("repart-tmp")), **mkfs_environment(call.seed)}
    if ctx.config.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(ctx.config.source_date_epoch)
    proc = run(call.argv(), sandbox=sandbox, capture=True, env=env)
    if proc.stderr:
        log.debug(str(proc.stderr))
    return parse_report(str(proc.stdout))


def make_repart_disk(ctx: Context) -> None:
    config = ctx.config
    arch = config.architecture
    check_version(repart_version(current_sandbox()), config.tools_tree)
    defs_dir = ctx.dir("repart-definitions")
    defs = write_definitions(config, defs_dir)
    check_definitions(config, defs)
    output = ctx.dir("repart") / f"{output_stem(config)}.raw"
    sandbox = current_sandbox()
    call = RepartRun.for_config(config, defs, defs_dir, ctx.root, output)
    if call.seed == "random":
        # One seed for both runs of a bootable build (the ESP's UUID is derived from it like the others').
        call = dataclasses.replace(call, seed=str(uuid.uuid4()))
    deferred = tuple(t for t in DEFERRED if t in [d.role(arch) for d in defs])
    if config.bootable:
        (ctx.root / ESP_SOURCE.lstrip("/")).mkdir(exist_ok=True)
        # The split files are written by the second run (which splits all partitions; a first --split=yes
        # would leave files the second refuses to overwrite).
        with log.step("Building the disk image with systemd-repart (the ESP deferred)"):
            made = run_repart(ctx, dataclasses.replace(call, defer=deferred, split=False), sandbox)
        esp = bootable_esp(ctx, made)
        # The second run reports the partitions it left alone without their root hashes ("TBD"): those
        # come from the first.
        hashed = made
        with log.step("Adding the EFI system partition with systemd-repart"):
            made = run_repart(ctx, dataclasses.replace(call, create=False),
                              sandbox.with_mounts(Mount(esp, str(ctx.root / ESP_SOURCE.lstrip("/")), readonly=True)))
    else:
        with log.step("Building the disk image with systemd-repart"):
            made = hashed = run_repart(ctx, call, sandbox)
    if config.verity == Verity.signed and not any((m.role(arch) or "").endswith("-verity-sig") for m in made):
        raise MkosiError("Verity=signed, but systemd-repart made no verity signature partition")
    write_root_hashes(ctx, hashed)
    if call.split:
        stage_split_partitions(ctx, made)
    image = bmap_and_convert(ctx, output)
    with log.step("Compressing" if config.output_compression else "Staging the image"):
        maybe_compress(image, config.output_compression, staged(ctx, IMAGE), level=config.compress_level)


def bootable_esp(ctx: Context, made: Sequence[Made]) -> Path:
    """The ESP tree (systemd-boot and the UKI) for the partitions of the first run: root=PARTLABEL= of
    the root partition, and the root hash of a verity-protected root or /usr on the command line."""
    config = ctx.config
    arch = config.architecture
    root = next((m for m in made if m.role(arch) == "root"), None)
    if root is None:
        raise MkosiError("Bootable=yes with partition definitions without a root partition is not implemented yet")
    root_verity = verity_of(made, arch, "root")
    usr_verity = verity_of(made, arch, "usr")
    # prepare_esp() reads the command line and Verity= from the configuration: the root hash of /usr is
    # given to it that way, and Verity= says whether the root is verity-protected (then mounted "ro"),
    # whatever the setting, as the definitions decide that.
    saved = ctx.config
    ctx.config = dataclasses.replace(
        config, kernel_command_line=[*config.kernel_command_line, *usr_words(usr_verity)],
        verity=(Verity.yes if config.verity == Verity.no else config.verity) if root_verity else Verity.no)
    try:
        return prepare_esp(ctx, root.label, root_verity)
    finally:
        ctx.config = saved


def write_root_hashes(ctx: Context, made: Sequence[Made]) -> None:
    """SplitArtifacts=roothash: IMAGE.roothash / IMAGE.usrhash, the root hashes systemd-repart reported."""
    arch = ctx.config.architecture
    for kind, artifact in (("root", REPART_ROOT_HASH), ("usr", REPART_USR_HASH)):
        if not artifact.when(ctx.config):
            continue
        verity = verity_of(made, arch, kind)
        if verity is None:
            raise MkosiError(f"SplitArtifacts=roothash: systemd-repart reported no root hash for the {kind} partition")
        staged(ctx, artifact).write_text(verity.roothash + "\n")


def stage_split_partitions(ctx: Context, made: Sequence[Made]) -> None:
    """The partitions systemd-repart --split=yes wrote, each to its row of the artifact table."""
    config = ctx.config
    for m in made:
        if m.split_path is None or not Path(m.split_path).exists():
            continue
        role = m.role(config.architecture)
        artifact = SPLIT_PARTITIONS.get(role) if role is not None else None
        if artifact is None or not artifact.when(config):
            log.warn(f"systemd-repart split out partition {m.partno} ({m.type}), whose type has no split file "
                     "name here: it is not kept")
            Path(m.split_path).unlink()
            continue
        maybe_compress(Path(m.split_path), config.output_compression, staged(ctx, artifact),
                       level=config.compress_level)
