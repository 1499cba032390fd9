"""Reading mkosi.default / mkosi.conf style files into an ordered list of assignments."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import os
import re
import stat
from pathlib import Path
from typing import NamedTuple, Optional

from mkosi import log
from mkosi.config.settings import SECTIONS, SETTINGS
from mkosi.config.types import Setting, excerpt, try_bool
from mkosi.errors import ConfigError


# A named tuple rather than a frozen dataclass: a settings file of 100k lines makes 100k of them.
class Origin(NamedTuple):
    path: Optional[str]   # None for the command line
    line: Optional[int]

    def __str__(self) -> str:
        if self.path is None:
            return "command line"
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclasses.dataclass(frozen=True)
class Assignment:
    setting: Setting
    raw: str
    origin: Origin
    # Relative paths in the value are relative to this directory (the configuration's), not to the
    # directory mkosi runs in.
    base: Optional[Path] = None


# Sections whose settings are conditions under which the file applies (or, for the Assert kinds, must apply).
CONDITION_SECTIONS = ("Match", "TriggerMatch", "Assert", "TriggerAssert")


@dataclasses.dataclass(frozen=True)
class Condition:
    key: str                  # the condition's name as the manual spells it: Distribution, PathExists, ...
    setting: Optional[Setting]  # the setting it tests, None for conditions on the host or the files
    raw: str
    origin: Origin
    kind: str                 # one of CONDITION_SECTIONS
    group: int                # which section of that kind in the file (conditions are per section)


@dataclasses.dataclass
class ParsedFile:
    path: Path
    assignments: list[Assignment]
    conditions: list[Condition]


@functools.lru_cache(maxsize=4096)
def normalize_key(key: str) -> str:
    return key.strip().lower().replace("-", "").replace("_", "")


_KEYS: dict[str, tuple[Setting, bool]] = {}
for _s in SETTINGS:
    if _s.key is None:
        continue
    _KEYS[normalize_key(_s.key)] = (_s, False)
    for _a in _s.aliases:
        _KEYS[normalize_key(_a)] = (_s, True)

# mkosi 14 turned every key into a flag (BuildDir= into --build-dir, Package= into --package), so keys
# spelled after a setting's flags are accepted too, as older names.
# mkosi 14 read its command-line options from files too; these ones make sense there.
FILE_COMMAND_LINE_OPTIONS = ("incremental", "auto_bump", "debug")
_FLAG_KEYS: dict[str, tuple[Setting, bool]] = {}
for _s in SETTINGS:
    if _s.key is None and _s.dest not in FILE_COMMAND_LINE_OPTIONS:
        continue
    for _f in (*_s.flags, *_s.flag_aliases):
        if _f.startswith("--"):
            _FLAG_KEYS.setdefault(normalize_key(_f), (_s, True))

# Keys that mkosi 14 spelled with other capitals than the modern manual: both spellings are right.
CLASSIC_SPELLINGS: dict[str, tuple[str, ...]] = {"SignExpectedPcr": ("SignExpectedPCR",)}

_SECTIONS = {s.lower(): s for s in SECTIONS}
# Older section names: the [Packages] section became [Content], [Host] became [Runtime].
_LEGACY_SECTIONS = {"packages": "Content"}

# Settings the v26 manual no longer lists, which v26 still reads or reports by name: they are ignored
# with a warning that says what replaced them (rather than "unknown setting").
_RETIRED = {
    key.lower(): (key, note) for key, note in (
        ("KernelModulesInclude", "deprecated by v26: regular expressions, replaced by the globs of KernelModules="),
        ("KernelModulesExclude", "deprecated by v26: regular expressions, replaced by the globs of KernelModules="),
        ("KernelModulesInitrdExclude",
         "deprecated by v26: regular expressions, replaced by the globs of KernelInitrdModules="),
        ("FirmwareInclude", "deprecated by v26: regular expressions, replaced by the globs of FirmwareFiles="),
        ("FirmwareExclude", "deprecated by v26: regular expressions, replaced by the globs of FirmwareFiles="),
        ("RuntimeScratch", "dropped in v26: RuntimeSize= grows the image before booting it instead"),
    )
}
_CONDITION_SECTIONS = {s.lower(): s for s in CONDITION_SECTIONS}

# Conditions that test the host or the file system rather than a setting.
# BuildSources= compares with the targets of the build sources assigned so far; the tools tree conditions compare
# with the tools tree settings when they are known, else with the tools tree mkosi would fall back to.
SPECIAL_CONDITIONS = ("PathExists", "SystemdVersion", "HostArchitecture", "Image", "BuildSources",
                      "ToolsTreeDistribution", "ToolsTreeRelease")


def _rewrite_legacy_value(alias: str, raw: str) -> str:
    if normalize_key(alias) == "xz":
        b = try_bool(raw)
        return "xz" if b else ("no" if b is False else raw)
    return raw


def _strip_inline_comment(value: str) -> str:
    # A '#' starts a comment only when preceded by whitespace, so URLs with fragments survive.
    if "#" not in value:
        return value
    m = re.search(r"\s#", value)
    return value[: m.start()] if m else value


def matchable() -> list[Setting]:
    return [s for s in SETTINGS if s.match is not None]


def lookup_key(key: str) -> Optional[tuple[Setting, bool]]:
    norm = normalize_key(key)
    return _KEYS.get(norm) or _FLAG_KEYS.get(norm)


def nearest_key(key: str) -> Optional[str]:
    if len(key) > 64:  # no setting's name is that long; spare difflib a huge string
        return None
    names = [s.key for s in SETTINGS if s.key]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not close:
        lowered = {n.lower(): n for n in names}
        close = [lowered[c] for c in difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)]
    return close[0] if close else None


def _condition(key: str, value: str, origin: Origin, kind: str, group: int) -> Condition:
    for special in SPECIAL_CONDITIONS:
        if normalize_key(key) == normalize_key(special):
            return Condition(special, None, value, origin, kind, group)
    found = lookup_key(key)
    if found is None or found[0].match is None:
        hint = "it can test " + ", ".join([*(f"{m.key}=" for m in matchable()), *(f"{c}=" for c in SPECIAL_CONDITIONS)])
        name = found[0].key if found else key
        raise ConfigError(f"[{kind}] cannot test {name}=", path=origin.path, line=origin.line, setting=name, hint=hint)
    s = found[0]
    assert s.key is not None
    return Condition(s.key, s, value, origin, kind, group)


def settings_file_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be read as a settings file (a dangling or looping symbolic link, a
    directory, a FIFO that would block, ...), or None when it is a regular file."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if e.errno == errno.ENOENT and path.is_symlink():
            return f"is a dangling symbolic link (to '{excerpt(os.readlink(path), 80)}')"
        return f"cannot be read: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a settings file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


def check_settings_file(path: Path, setting: Optional[str] = None) -> None:
    problem = settings_file_problem(path)
    if problem is not None:
        raise ConfigError(problem, path=str(path), setting=setting)


def read_text(path: Path, what: str = "settings file", setting: Optional[str] = None) -> str:
    """Read a UTF-8 text file; a missing, unreadable or undecodable file is a ConfigError naming it."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror or e}", path=str(path), setting=setting)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{what} is not valid UTF-8 (byte {e.start + 1}: {data[e.start:e.start + 1]!r})",
                          path=str(path), line=line, setting=setting)


def split_lines(text: str) -> list[str]:
    """Lines end at '\n' (and '\r\n') only: form feeds, NEL and U+2028 in comments or values do not
    split them the way str.splitlines() would."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_ini(path: Path, text: Optional[str] = None, base: Optional[Path] = None) -> ParsedFile:
    """Parse one settings file. Raises ConfigError naming the file, line and setting."""
    if text is None:
        check_settings_file(path)
        text = read_text(path)
    name = str(path)

    # First pass: logical lines (continuations joined), with the line number of their start.
    # Continuation lines are collected in lists and joined once, so that loading stays linear.
    entries: list[tuple[int, str, Optional[list[str]]]] = []  # (lineno, section header or key, value parts)
    for lineno, raw_line in enumerate(split_lines(text), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if raw_line[0] in " \t":
            parts = entries[-1][2] if entries else None
            if parts is None:
                raise ConfigError("continuation line without a setting before it", path=name, line=lineno)
            cont = _strip_inline_comment(raw_line).strip()
            if cont:
                parts.append(cont)
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise ConfigError(f"malformed section header '{excerpt(line)}'", path=name, line=lineno)
            entries.append((lineno, line[1:-1].strip(), None))
            continue
        if "=" not in line:
            raise ConfigError(f"expected 'Setting=value', got '{excerpt(line)}'", path=name, line=lineno)
        key, value = line.split("=", 1)
        first = _strip_inline_comment(value).strip()
        entries.append((lineno, key.strip(), [first] if first else []))

    # Second pass: resolve sections and keys.
    base = base or path.absolute().parent
    result = ParsedFile(path, [], [])
    section: Optional[str] = None
    section_raw = ""
    groups: dict[str, int] = {}
    for lineno, key, maybe_parts in entries:
        if maybe_parts is None:
            section_raw = key
            section = _section(key, name, lineno)
            if section in CONDITION_SECTIONS:
                groups[section] = groups.get(section, -1) + 1
            continue
        origin = Origin(name, lineno)
        if section is None:
            raise ConfigError(f"setting '{excerpt(key)}' appears before any [Section] header", path=name, line=lineno,
                              hint="put it under the section it belongs to, e.g. [Output]")
        value = "\n".join(maybe_parts)
        if section in CONDITION_SECTIONS:
            result.conditions.append(_condition(key, value, origin, section, groups[section]))
            continue
        if key.startswith("@"):
            # Older mkosi versions marked a value that later files may override with '@'; every value may be
            # overridden now, so the prefix changes nothing.
            log.warn(f"{origin}: the '@' prefix of {key}= is from older mkosi versions and has no effect; "
                     f"write {key[1:]}=")
            key = key[1:]
        found = lookup_key(key)
        if found is None and key.lower() in _RETIRED:
            name_, note = _RETIRED[key.lower()]
            log.warn(f"{origin}: {name_}= is {note}; ignored")
            continue
        if found is None:
            near = nearest_key(key)
            log.warn(f"{origin}: unknown setting '{excerpt(key)}' in section [{excerpt(section_raw)}], ignored"
                     + (f" (did you mean {near}=?)" if near else ""))
            continue
        s, legacy = found
        if s.key is None:
            # A command-line option written as a key, as mkosi 14 allowed (Incremental=yes).
            log.warn(f"{origin}: {key}= stands for the command-line option {s.long_flag}, as in mkosi 14; "
                     "prefer giving it on the command line")
            result.assignments.append(Assignment(s, value, origin, base))
            continue
        if legacy:
            log.warn(f"{origin}: {excerpt(key)}= is an older name, use {s.key}=")
            value = _rewrite_legacy_value(key, value)
        elif key != s.key and key not in CLASSIC_SPELLINGS.get(s.key or "", ()):
            log.warn(f"{origin}: setting '{excerpt(key)}' should be written '{s.key}'")
        if section.startswith("?"):
            log.warn(f"{origin}: unknown section [{excerpt(section[1:])}], applying {s.key}= from [{s.section}]")
        elif section not in (s.section, *s.other_sections):
            log.warn(f"{origin}: {s.key}= belongs in [{s.section}], not [{section}]; applying it anyway")
        result.assignments.append(Assignment(s, value, origin, base))
    return result


def _section(key: str, name: str, lineno: int) -> str:
    low = key.lower()
    if low in _SECTIONS:
        section = _SECTIONS[low]
        if key != section:
            log.warn(f"{name}:{lineno}: section [{excerpt(key)}] should be written [{section}]")
        return section
    if low in _LEGACY_SECTIONS:
        section = _LEGACY_SECTIONS[low]
        log.warn(f"{name}:{lineno}: section [{excerpt(key)}] is an older name, use [{section}]")
        return section
    if low in _CONDITION_SECTIONS:
        return _CONDITION_SECTIONS[low]
    return "?" + key
