"""What one setting is, and the value parsers the settings table uses."""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

from mkosi.config.enums import ConfigLanguage

Parser = Callable[[str], Any]


class Scope(enum.Enum):
    """Where a setting may be set when a build has several images (mkosi.images/)."""

    invocation = "invocation"  # Args: the whole run (verb, --force, --debug, ...)
    universal = "universal"    # set by the main configuration, the same for every image
    inherited = "inherited"    # passed down from the main configuration, a sub-image may override it
    main = "main"              # the main image's only, not passed down ([Runtime], MinimumVersion=, ...)
    image = "image"            # each image its own


class MatchKind(enum.Enum):
    """How a [Match] condition compares with the setting's value."""

    equal = "equal"        # the condition's value equals the setting's (one of the list, for lists)
    glob = "glob"          # fnmatch-style globs
    version = "version"    # ==, !=, <, <=, >, >= with UAPI version comparison


class PathRule(enum.Enum):
    """How a path value is read."""

    none = "none"          # not a path
    path = "path"          # relative paths are relative to the directory of the file that sets it
    pair = "pair"          # SRC[:TARGET], SRC relative to that directory, TARGET absolute in the image


class Kind(enum.Enum):
    SCALAR = "scalar"      # last assignment wins (command line is applied last)
    BOOL = "bool"          # scalar boolean; the flag may be given without a value
    LIST = "list"          # items append across files and command line; "!item" removes, "!*" clears
    COUNT = "count"        # -f repeated; in files a number or a boolean


@dataclasses.dataclass
class Resolving:
    """What a row's default or resolve function sees: the values finalized so far (its `depends` are
    among them), the directory of the configuration, and the mkosi.* files found there."""

    values: dict[str, Any]
    directory: Path
    found: dict[str, Path]
    language: ConfigLanguage = ConfigLanguage.classic   # where the two languages' defaults differ (WithDocs=)

    def __getitem__(self, dest: str) -> Any:
        return self.values[dest]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the settings table. `dest` is the Args or Config field it fills."""

    dest: str
    section: Optional[str]            # INI section; None for command-line-only options
    key: Optional[str]                # INI key; None for command-line-only options
    flags: tuple[str, ...]            # long flag first, then the short one
    kind: Kind
    parse: Parser                     # parses one value (one item, for lists)
    help: str
    metavar: Optional[str] = None
    choices: Optional[tuple[str, ...]] = None
    const: Optional[str] = None       # value when the flag is given without an argument
    negative_flags: tuple[str, ...] = ()  # flags that set the value "no"
    aliases: tuple[str, ...] = ()     # older INI key names, accepted with a warning
    flag_aliases: tuple[str, ...] = ()  # older flags, accepted with a warning
    value_flags: tuple[tuple[str, str], ...] = ()  # older flags that set a fixed value: (flag, value)
    separator: str = r"[,\s]+"        # how a list value splits into items
    remove_by_key: bool = False       # lists: "!name" also removes "name=..." items
    cache: bool = False               # whether it shapes the cached images (incremental mode)
    secret: bool = False              # never printed
    redact: Optional[Callable[[Any], Any]] = None  # the value as summary shows it (a secret part hidden)
    status: Optional[str] = None      # None when implemented; otherwise what is missing
    summary: bool = True
    scope: Scope = Scope.image
    # The default when nothing assigns the setting: `default_fn` computes it from the finalized values of
    # the settings named in `depends` (finalize visits rows in dependency order); else the field's default.
    default_fn: Optional[Callable[[Resolving], Any]] = None
    # Applied to the value (assigned or default) when it depends on other settings: Compress=yes -> xz, ...
    resolve_fn: Optional[Callable[[Any, Resolving], Any]] = None
    depends: tuple[str, ...] = ()
    # mkosi.* files or directories (written with a trailing '/') next to the configuration whose presence
    # sets the setting (the first that exists; every one that exists, for lists).
    path_default: tuple[str, ...] = ()
    match: Optional[MatchKind] = None  # whether and how a [Match] section can test it
    specifier: Optional[str] = None    # the %-specifier that expands to its value
    path_rule: PathRule = PathRule.none
    # Other sections it may stand in without a warning (its classic one, when the modern manual moved it).
    other_sections: tuple[str, ...] = ()
    reject_empty: bool = False        # lists: an empty value is an error (parse("") says why)

    @property
    def long_flag(self) -> Optional[str]:
        longs = [f for f in self.flags if f.startswith("--")]
        return longs[0] if longs else None

    @property
    def short_flag(self) -> Optional[str]:
        shorts = [f for f in self.flags if not f.startswith("--")]
        return shorts[0] if shorts else None

    @property
    def name(self) -> str:
        """How a user refers to it: the INI key, else the long flag."""
        return f"{self.key}=" if self.key else (self.long_flag or self.dest)


def setting(
    *,
    section: Optional[str],
    key: Optional[str],
    flags: Sequence[str] = (),
    kind: Kind = Kind.SCALAR,
    parse: Parser = str,
    default: Any = None,
    default_factory: Optional[Callable[[], Any]] = None,
    help: str,
    **extra: Any,
) -> Any:
    """Declare an Args or Config field together with its row of the settings table."""
    meta = {"setting": dict(section=section, key=key, flags=tuple(flags), kind=kind, parse=parse, help=help, **extra)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---- value parsers: each takes the raw text and returns the value or raises ValueError ----

EXCERPT = 40


def excerpt(value: str, limit: int = EXCERPT) -> str:
    """A value as error messages quote it: control characters escaped, at most `limit` characters."""
    shown = value if len(value) <= limit else value[:limit]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    if len(value) > limit:
        shown += f"… ({len(value)} characters)"
    return shown


_LONG_QUOTE = re.compile("'([^']{" + str(EXCERPT + 1) + ",})'")


def short_message(message: str, limit: int = 240) -> str:
    """An error message with every long quoted value cut to an excerpt (and, as a last resort, the
    whole message cut), so that a hostile value never floods the terminal."""
    if len(message) > limit:
        message = _LONG_QUOTE.sub(lambda m: f"'{excerpt(m.group(1))}'", message)
    message = message.replace("\n", "\\n")
    return message if len(message) <= limit else message[:limit] + "…"


def check_text(value: str) -> None:
    """Reject what no value may contain: NUL bytes and line breaks (which continuation lines of
    lists turn into separators before values are parsed)."""
    if "\0" in value:
        raise ValueError(f"contains a NUL byte: '{excerpt(value)}'")
    if "\n" in value or "\r" in value:
        raise ValueError(f"a value must be on one line: '{excerpt(value)}'")


_ASCII_INT = re.compile(r"[+-]?[0-9]{1,20}")

_TRUE = ("1", "yes", "true", "on", "y")
_FALSE = ("0", "no", "false", "off", "n")


def parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"expected a boolean (1/yes/true or 0/no/false), got '{excerpt(value)}'")


def try_bool(value: str) -> Optional[bool]:
    try:
        return parse_bool(value)
    except ValueError:
        return None


E = TypeVar("E", bound=enum.Enum)


def parse_enum(cls: type[E], legacy: Optional[dict[str, E]] = None) -> Callable[[str], E]:
    def parser(value: str) -> E:
        v = value.strip()
        for member in cls:
            if str(member.value) == v or str(member.value) == v.lower().replace("_", "-") or member.name == v:
                return member
        if legacy and v in legacy:
            return legacy[v]
        valid = ", ".join(str(m.value) for m in cls)
        raise ValueError(f"invalid value '{excerpt(value)}', expected one of: {valid}")

    parser.__name__ = f"parse_{cls.__name__}"
    return parser


def parse_bool_or_enum(cls: type[E], true: E, false: E) -> Callable[[str], E]:
    """For settings taking a boolean or a special value (Verity=signed, WithNetwork=never, ...)."""
    inner = parse_enum(cls)

    def parser(value: str) -> E:
        b = try_bool(value)
        if b is not None:
            return true if b else false
        try:
            return inner(value)
        except ValueError:
            valid = ", ".join(str(m.value) for m in cls)
            raise ValueError(f"invalid value '{excerpt(value)}', expected a boolean or one of: {valid}")

    return parser


PATH_MAX = 4095
NAME_MAX = 255


def check_path_length(path: Path) -> Path:
    """Refuse paths the kernel refuses (ENAMETOOLONG), so that checking them later cannot fail."""
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise ValueError(f"'{excerpt(str(path))}' is not a valid file name")
    if len(encoded) > PATH_MAX:
        raise ValueError(f"path '{excerpt(str(path))}' is too long ({len(encoded)} bytes, at most {PATH_MAX})")
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise ValueError(f"path '{excerpt(str(path))}' has a file name longer than {NAME_MAX} bytes")
    return path


def _expand(v: str) -> Path:
    check_text(v)
    try:
        return check_path_length(Path(v).expanduser())
    except RuntimeError:
        user = v[1:].split("/", 1)[0]
        raise ValueError(f"cannot expand '~{excerpt(user)}': no such user" if user else
                         "cannot expand '~': the home directory is unknown")


def parse_path(value: str) -> Path:
    v = value.strip()
    if not v:
        raise ValueError("empty path")
    return check_path_length(_expand(v).absolute())


_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"([0-9]{1,25}) *([KMGTkmgt]?)(?:i?[Bb])?")
MAX_SIZE = 2**64 - 1


def parse_output_path(value: str) -> Path:
    """Output= keeps a bare file name relative: it is placed in the output directory later."""
    v = value.strip()
    if not v:
        raise ValueError("empty path")
    if v in (".", ".."):
        raise ValueError(f"'{v}' is a directory, not a file name")
    return check_path_length(_expand(v).absolute()) if "/" in v or v.startswith("~") else _expand(v)


def parse_size(value: str) -> int:
    m = _SIZE.fullmatch(value.strip(" \t")) if value.isascii() else None
    if not m:
        raise ValueError(f"invalid size '{excerpt(value)}', expected a number of bytes optionally followed by K, M, "
                         "G or T")
    size = int(m.group(1)) * _SIZE_SUFFIXES[m.group(2).upper()]
    if size > MAX_SIZE:
        raise ValueError(f"size '{excerpt(value)}' is too large (at most 2^64-1 bytes)")
    return size


def parse_int(value: str) -> int:
    """A decimal integer in ASCII digits (Unicode digits, '_' and other spellings int() takes are refused)."""
    v = value.strip(" \t")
    if not _ASCII_INT.fullmatch(v):
        raise ValueError(f"expected an integer, got '{excerpt(value)}'")
    return int(v)


def parse_uint(value: str) -> int:
    n = parse_int(value)
    if n < 0:
        raise ValueError(f"expected a number that is not negative, got '{excerpt(value)}'")
    return n


def parse_positive(value: str) -> int:
    n = parse_int(value)
    if n <= 0:
        raise ValueError(f"expected a number greater than zero, got '{excerpt(value)}'")
    return n


MAX_IMAGE_NAME = 100
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|\.\.")


def parse_image_name(value: str) -> str:
    """ImageId= and ImageVersion= become parts of file names in the output directory: no '/', no
    '..', no control characters."""
    v = value.strip()
    if not v:
        raise ValueError("empty value")
    if len(v) > MAX_IMAGE_NAME:
        raise ValueError(f"'{excerpt(v)}' is too long (at most {MAX_IMAGE_NAME} characters)")
    if _BAD_NAME.search(v) or v.startswith(("-", ".")):
        raise ValueError(f"'{excerpt(v)}' cannot be part of a file name (no '/', '..', control characters, "
                         "or leading '.' or '-')")
    return v


def parse_port(value: str) -> int:
    n = parse_int(value)
    if not 0 < n < 65536:
        raise ValueError(f"port {n} out of range 1-65535" if len(str(n)) < 10 else "port out of range 1-65535")
    return n


def parse_machine_id(value: str) -> str:
    v = value.strip().lower().replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{32}", v):
        raise ValueError(f"invalid machine ID '{excerpt(value)}', expected 32 hexadecimal digits")
    return v


def parse_seed(value: str) -> str:
    """Seed=: a UUID (normalised to its canonical form) or 'random'."""
    v = value.strip().lower()
    if v == "random":
        return v
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise ValueError(f"invalid seed '{value}', expected a UUID or 'random'")


def parse_epoch(value: str) -> int:
    """SourceDateEpoch=: seconds since the UNIX epoch, not negative."""
    v = value.strip()
    if not v.isdigit():
        raise ValueError(f"invalid timestamp '{value}', expected seconds since the UNIX epoch")
    return int(v)


def parse_compression(value: str) -> str:
    """A boolean or an algorithm; 'yes' is resolved to the default algorithm for the format later."""
    b = try_bool(value)
    if b is not None:
        return "yes" if b else "no"
    v = value.strip().lower()
    if v in ("zlib", "gzip", "gz", "lzo", "lz4", "xz", "zstd"):
        return "gzip" if v == "gz" else v
    raise ValueError(f"invalid compression '{excerpt(value)}', expected a boolean or one of: zlib, gzip, lzo, lz4, "
                     "xz, zstd")


def parse_hostname(value: str) -> str:
    v = value.strip()
    if len(v) > 253 or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*", v):
        raise ValueError(f"invalid hostname '{excerpt(value)}'")
    return v


def parse_environment_item(value: str) -> str:
    name = value.split("=", 1)[0]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"invalid environment variable assignment '{excerpt(value)}'")
    return value


def parse_force(value: str) -> int:
    v = value.strip()
    if v == "+1":
        return 1
    if v.isascii() and v.isdigit() and len(v) < 10:
        return int(v)
    return 1 if parse_bool(v) else 0


# The areas --debug accepts: mkosi 14's names, and "all". Every one turns on the same output today.
DEBUG_AREAS = ("run", "build-script", "workspace-command", "disk", "all")


def parse_debug(value: str) -> str:
    v = value.strip()
    if v not in DEBUG_AREAS:
        problem = f"unknown debug area '{v}'" if v else "an empty value is not a debug area"
        raise ValueError(f"{problem}; accepted values: {', '.join(DEBUG_AREAS)}")
    return v


# ---- the value types of the modern settings ----

@dataclasses.dataclass(frozen=True)
class ConfigTree:
    """A SRC[:TARGET] pair: a tree on the host and where it goes (None: the root of the target)."""

    source: Path
    target: Optional[Path] = None

    def __str__(self) -> str:
        return f"{self.source}:{self.target}" if self.target is not None else str(self.source)

    def plain(self) -> dict[str, Optional[str]]:
        return {"Source": str(self.source), "Target": None if self.target is None else str(self.target)}


def resolve_trees(value: list[Any], v: Resolving) -> list[ConfigTree]:
    """Trees found by a row's path_default (mkosi.extra/, mkosi.sandbox/, ...) go to the root."""
    return [t if isinstance(t, ConfigTree) else ConfigTree(Path(t), None) for t in value]


def parse_tree(value: str) -> ConfigTree:
    """SRC[:TARGET]; SRC is made absolute, TARGET is always absolute (a relative one is taken from /)."""
    v = value.strip()
    src, sep, target = v.partition(":")
    if not src.strip():
        raise ValueError(f"invalid tree '{value}': the source path is empty (expected SRC[:TARGET])")
    if sep and not target.strip():
        raise ValueError(f"invalid tree '{value}': the target after ':' is empty (expected SRC[:TARGET])")
    return ConfigTree(parse_path(src), Path("/") / target.strip() if sep else None)


def parse_relative_tree(value: str) -> ConfigTree:
    """RuntimeTrees=: like parse_tree, but a relative TARGET stays relative (to /root/src in the machine)."""
    v = value.strip()
    src, sep, target = v.partition(":")
    if not src.strip() or (sep and not target.strip()):
        raise ValueError(f"invalid tree '{value}', expected SRC[:TARGET]")
    return ConfigTree(parse_path(src), Path(target.strip()) if sep else None)


def parse_octal_mode(value: str) -> int:
    v = value.strip()
    if not re.fullmatch(r"0?[0-7]{3,4}", v):
        raise ValueError(f"invalid access mode '{value}', expected an octal mode such as 0644")
    return int(v, 8)


def parse_uuid_or_random(value: str) -> str:
    """A UUID (with or without dashes, kept in the canonical dashed form) or 'random'."""
    v = value.strip().lower()
    if v == "random":
        return v
    hexdigits = v.replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{32}", hexdigits):
        raise ValueError(f"invalid value '{value}', expected a UUID or 'random'")
    return "-".join((hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20], hexdigits[20:]))


def parse_bool_or_auto(value: str) -> Any:
    """A boolean or 'auto' (kept as the string "auto" until the row's resolve function decides)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f"invalid value '{value}', expected a boolean or 'auto'")


def parse_size_or_auto(value: str) -> Optional[int]:
    return None if value.strip().lower() == "auto" else parse_size(value)
