"""systemd-repart partition definitions (repart.d(5)) as Format=disk reads them: the files of
RepartDirectories= (or mkosi.repart/) merged by name, checked line by line before systemd-repart
sees them, and the default layout written when there are none.

Only what mkosi itself needs is interpreted (the partition type, Verity=, Encrypt=, SplitName=); the
files are handed to systemd-repart unchanged. Nothing here runs a command, so the artifact table and
`summary` may ask which split partitions a configuration writes."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi.errors import MkosiError
from mkosi.output.gpt import ARCH_ROLES, GENERIC_TYPES, normalize_arch, role_of_type

# The keys of a [Partition] section that systemd-repart 257 reads.
PARTITION_KEYS = frozenset({
    "Type", "Label", "UUID", "Priority", "Weight", "PaddingWeight", "SizeMinBytes", "SizeMaxBytes",
    "PaddingMinBytes", "PaddingMaxBytes", "CopyBlocks", "Format", "CopyFiles", "ExcludeFiles",
    "ExcludeFilesTarget", "MakeDirectories", "MakeSymlinks", "Subvolumes", "DefaultSubvolume", "Encrypt",
    "Verity", "VerityMatchKey", "VerityDataBlockSizeBytes", "VerityHashBlockSizeBytes", "FactoryReset", "Flags",
    "NoAuto", "ReadOnly", "GrowFileSystem", "SplitName", "Minimize", "MountPoint", "EncryptedVolume",
    "Compression", "CompressionLevel", "SupplementFor",
})

_BOOLS = ("1", "yes", "true", "on", "y", "0", "no", "false", "off", "n")
CHOICES: dict[str, tuple[str, ...]] = {
    "Verity": ("off", "data", "hash", "signature"),
    "Encrypt": ("off", "key-file", "tpm2", "key-file+tpm2", *_BOOLS),
    "Minimize": ("off", "best", "guess", *_BOOLS),
}

# The partition types whose split files the artifact table knows (the Discoverable Partitions
# Specification's, without the secondary-architecture ones); "root" stands for root-ARCH.
SPLIT_TYPES = (*ARCH_ROLES, *(t for t in GENERIC_TYPES if t != "bios-boot"))

# Where mkosi puts the boot loader and the unified kernel images while systemd-repart fills the ESP:
# an ESP definition copies them with CopyFiles=/efi:/.
ESP_SOURCE = "/efi"

_ARCH_IDS = ("x86-64", "x86", "arm64", "arm", "riscv64", "riscv32", "ppc64-le", "ppc64", "ppc", "s390x", "s390",
             "loongarch64", "alpha", "arc", "ia64", "mips-le", "mips64-le", "parisc", "tilegx")
_ARCH_RE = "|".join(map(re.escape, _ARCH_IDS))
_TYPE_RE = re.compile(rf"^(root|usr)(?:-secondary|-({_ARCH_RE}))?(-verity(?:-sig)?)?$")


@dataclasses.dataclass(frozen=True)
class Value:
    text: str
    path: Path
    line: int

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Definition:
    """One definition file: its [Partition] assignments in order (a key may repeat)."""

    path: Path
    values: tuple[tuple[str, Value], ...]

    def get(self, key: str) -> Optional[Value]:
        found = [v for k, v in self.values if k == key]
        return found[-1] if found else None

    def all(self, key: str) -> list[Value]:
        return [v for k, v in self.values if k == key]

    @property
    def type(self) -> str:
        t = self.get("Type")
        assert t is not None
        return t.text

    @property
    def verity(self) -> str:
        v = self.get("Verity")
        return v.text if v is not None else "off"

    @property
    def encrypt(self) -> str:
        v = self.get("Encrypt")
        if v is None or v.text.lower() in ("0", "no", "false", "off", "n"):
            return "off"
        return "key-file" if v.text.lower() in _BOOLS else v.text

    def role(self, arch: str) -> Optional[str]:
        """The partition type as this image's split files name it: root, usr-verity, esp, ...; None for a
        type of another architecture or one the specification does not define."""
        return type_role(self.type, arch)


def type_role(value: str, arch: str) -> Optional[str]:
    """A Type= value (identifier or UUID) as a role of SPLIT_TYPES on `arch` (e.g. root-x86-64 -> root)."""
    v = value.strip().lower()
    if v in GENERIC_TYPES:
        return v
    m = _TYPE_RE.match(v)
    if m is not None:
        if m.group(2) is not None and m.group(2) != normalize_arch(arch):
            return None
        if "-secondary" in v:
            return None
        return m.group(1) + (m.group(3) or "")
    try:
        found = role_of_type(uuid.UUID(v))
    except ValueError:
        return None
    if found is None:
        return None
    role, type_arch = found
    return role if type_arch is None or type_arch == normalize_arch(arch) else None


def type_identifier(role: str, arch: str) -> str:
    """What systemd-repart calls a role's type on `arch` (its JSON "type", the default SplitName=):
    root -> root-x86-64, usr-verity -> usr-x86-64-verity, esp -> esp."""
    if role in GENERIC_TYPES:
        return role
    base, _, rest = role.partition("-")
    return f"{base}-{normalize_arch(arch)}" + (f"-{rest}" if rest else "")


def _valid_type(value: str) -> bool:
    v = value.strip().lower()
    if v in GENERIC_TYPES or _TYPE_RE.match(v):
        return True
    try:
        uuid.UUID(v)
    except ValueError:
        return False
    return True


def parse_definition(path: Path, text: str) -> Definition:
    """One file; a line systemd-repart would reject (or that mkosi cannot honour) is an error naming it."""
    values: list[tuple[str, Value]] = []
    section: Optional[str] = None
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{path}:{n}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise MkosiError(f"{where}: invalid section header '{line}'")
            section = line[1:-1].strip()
            if section != "Partition":
                raise MkosiError(f"{where}: unknown section [{section}], partition definitions have only [Partition]")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise MkosiError(f"{where}: expected KEY=VALUE, got '{line}'")
        if section is None:
            raise MkosiError(f"{where}: '{key}=' stands before the [Partition] section")
        if key not in PARTITION_KEYS:
            raise MkosiError(f"{where}: unknown setting '{key}=' in [Partition]")
        if key in CHOICES and value.lower() not in CHOICES[key]:
            raise MkosiError(f"{where}: invalid {key}={value}, expected one of: "
                             f"{', '.join(c for c in CHOICES[key] if c not in _BOOLS)} or a boolean"
                             if key != "Verity" else f"{where}: invalid Verity={value}, expected one of: "
                             f"{', '.join(CHOICES[key])}")
        if key == "Type" and not _valid_type(value):
            raise MkosiError(f"{where}: unknown partition type '{value}' (a repart.d type identifier or a UUID)")
        if key == "SplitName" and value not in ("%t", "-"):
            raise MkosiError(f"{where}: SplitName={value}: split names other than %t (the default) and - "
                             "are not implemented yet")
        values.append((key, Value(value, path, n)))
    d = Definition(path, tuple(values))
    if d.get("Type") is None:
        raise MkosiError(f"{path}: no Type= in [Partition]: every partition definition needs one")
    return d


def merged_files(directories: Sequence[Path]) -> list[Path]:
    """The *.conf files of the directories by file name, a later directory's file replacing an earlier
    one of the same name (as RepartDirectories= says), in the order systemd-repart reads them."""
    files: dict[str, Path] = {}
    for d in directories:
        if not d.is_dir():
            raise MkosiError(f"RepartDirectories=: '{d}' is not a directory")
        for f in d.iterdir():
            if f.name.endswith(".conf") and (f.is_file() or f.is_symlink()):
                files[f.name] = f
    return [files[name] for name in sorted(files)]


def read_definitions(directories: Sequence[Path]) -> list[Definition]:
    defs = []
    for f in merged_files(directories):
        try:
            text = f.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise MkosiError(f"{f}: cannot read the partition definition: {e}")
        defs.append(parse_definition(f, text))
    if not defs:
        raise MkosiError(f"no partition definitions (*.conf) in {', '.join(map(str, directories))}")
    check_verity(defs)
    return defs


def check_verity(defs: Sequence[Definition]) -> None:
    """What systemd-repart demands of Verity= (a data and a hash partition per VerityMatchKey=), with the
    file and line named, before it runs."""
    keys: dict[str, dict[str, list[Definition]]] = {}
    for d in defs:
        if d.verity == "off":
            continue
        v = d.get("Verity")
        assert v is not None
        key = d.get("VerityMatchKey")
        if key is None:
            raise MkosiError(f"{v.origin}: Verity={d.verity} needs VerityMatchKey= to find its sibling partitions")
        if d.encrypt != "off":
            raise MkosiError(f"{v.origin}: Verity= cannot be combined with Encrypt=")
        keys.setdefault(key.text, {}).setdefault(d.verity, []).append(d)
    for match_key, kinds in keys.items():
        for kind in ("data", "hash"):
            if len(kinds.get(kind, [])) != 1:
                files = [str(d.path) for k in kinds.values() for d in k]
                raise MkosiError(f"VerityMatchKey={match_key} needs exactly one Verity={kind} partition "
                                 f"({len(kinds.get(kind, []))} in {', '.join(files)})")


def default_definitions(*, bootable: bool, root_fs: str) -> dict[str, str]:
    """The layout used without RepartDirectories= and mkosi.repart/: file name -> contents."""
    files: dict[str, str] = {}
    if bootable:
        files["00-esp.conf"] = (
            "[Partition]\nType=esp\nFormat=vfat\n"
            f"CopyFiles={ESP_SOURCE}:/\n"
            "SizeMinBytes=512M\nSizeMaxBytes=512M\n")
    files["10-root.conf"] = (
        "[Partition]\nType=root\n"
        f"Format={root_fs}\n"
        "CopyFiles=/\n"
        # The ESP's mount point stays, its contents (while the ESP is filled) do not go into the root.
        f"ExcludeFilesTarget={ESP_SOURCE}/\n"
        "Minimize=guess\n")
    return files


def split_roles(defs: Sequence[Definition], arch: str) -> list[str]:
    """The roles of SPLIT_TYPES that `--split=yes` writes a file for: every partition not marked
    SplitName=- (a role appearing twice would write one file twice; the first is kept)."""
    found: list[str] = []
    for d in defs:
        name = d.get("SplitName")
        if name is not None and name.text == "-":
            continue
        role = d.role(arch)
        if role is not None and role in SPLIT_TYPES and role not in found:
            found.append(role)
    return found


def definitions_for(directories: Sequence[Path], *, bootable: bool, root_fs: str) -> list[Definition]:
    """The definitions a build uses: those of the directories, else the default layout."""
    if directories:
        return read_definitions(directories)
    return [parse_definition(Path(name), text)
            for name, text in default_definitions(bootable=bootable, root_fs=root_fs).items()]
