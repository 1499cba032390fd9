"""Reading mkosi.default / mkosi.conf style files into an ordered list of assignments."""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.settings import SECTIONS, SETTINGS
from mkosi.config.types import Setting, try_bool
from mkosi.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Origin:
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

_SECTIONS = {s.lower(): s for s in SECTIONS}
# Older section names: the [Packages] section became [Content], [Host] became [Runtime].
_LEGACY_SECTIONS = {"packages": "Content"}
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
    m = re.search(r"\s#", value)
    return value[: m.start()] if m else value


def matchable() -> list[Setting]:
    return [s for s in SETTINGS if s.match is not None]


def lookup_key(key: str) -> Optional[tuple[Setting, bool]]:
    norm = normalize_key(key)
    return _KEYS.get(norm) or _FLAG_KEYS.get(norm)


def nearest_key(key: str) -> Optional[str]:
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


def parse_ini(path: Path, text: Optional[str] = None, base: Optional[Path] = None) -> ParsedFile:
    """Parse one settings file. Raises ConfigError naming the file, line and setting."""
    if text is None:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read settings file: {e.strerror}", path=str(path))
    name = str(path)

    # First pass: logical lines (continuations joined), with the line number of their start.
    entries: list[tuple[int, str, Optional[str]]] = []  # (lineno, section header or key, value or None)
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.strip() or raw_line.lstrip().startswith(("#", ";")):
            continue
        if raw_line[0].isspace():
            if not entries or entries[-1][2] is None:
                raise ConfigError("continuation line without a setting before it", path=name, line=lineno)
            ln, k, v = entries[-1]
            cont = _strip_inline_comment(raw_line).strip()
            entries[-1] = (ln, k, f"{v}\n{cont}" if v else cont)
            continue
        line = raw_line.strip()
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"malformed section header '{line}'", path=name, line=lineno)
            entries.append((lineno, line[1:-1].strip(), None))
            continue
        if "=" not in line:
            raise ConfigError(f"expected 'Setting=value', got '{line}'", path=name, line=lineno)
        key, value = line.split("=", 1)
        entries.append((lineno, key.strip(), _strip_inline_comment(value).strip()))

    # Second pass: resolve sections and keys.
    base = base or path.absolute().parent
    result = ParsedFile(path, [], [])
    section: Optional[str] = None
    section_raw = ""
    groups: dict[str, int] = {}
    for lineno, key, maybe_value in entries:
        if maybe_value is None:
            section_raw = key
            section = _section(key, name, lineno)
            if section in CONDITION_SECTIONS:
                groups[section] = groups.get(section, -1) + 1
            continue
        origin = Origin(name, lineno)
        if section is None:
            raise ConfigError(f"setting '{key}' appears before any [Section] header", path=name, line=lineno,
                              hint="put it under the section it belongs to, e.g. [Output]")
        if section in CONDITION_SECTIONS:
            result.conditions.append(_condition(key, maybe_value, origin, section, groups[section]))
            continue
        if key.startswith("@"):
            # Older mkosi versions marked a value that later files may override with '@'; every value may be
            # overridden now, so the prefix changes nothing.
            log.warn(f"{origin}: the '@' prefix of {key}= is from older mkosi versions and has no effect; "
                     f"write {key[1:]}=")
            key = key[1:]
        found = lookup_key(key)
        if found is None:
            near = nearest_key(key)
            log.warn(f"{origin}: unknown setting '{key}' in section [{section_raw}], ignored"
                     + (f" (did you mean {near}=?)" if near else ""))
            continue
        value = maybe_value
        s, legacy = found
        if s.key is None:
            # A command-line option written as a key, as mkosi 14 allowed (Incremental=yes).
            log.warn(f"{origin}: {key}= stands for the command-line option {s.long_flag}, as in mkosi 14; "
                     "prefer giving it on the command line")
            result.assignments.append(Assignment(s, value, origin, base))
            continue
        if legacy:
            log.warn(f"{origin}: {key}= is an older name, use {s.key}=")
            value = _rewrite_legacy_value(key, value)
        elif key != s.key:
            log.warn(f"{origin}: setting '{key}' should be written '{s.key}'")
        if section.startswith("?"):
            log.warn(f"{origin}: unknown section [{section[1:]}], applying {s.key}= from [{s.section}]")
        elif section not in (s.section, *s.other_sections):
            log.warn(f"{origin}: {s.key}= belongs in [{s.section}], not [{section}]; applying it anyway")
        result.assignments.append(Assignment(s, value, origin, base))
    return result


def _section(key: str, name: str, lineno: int) -> str:
    low = key.lower()
    if low in _SECTIONS:
        section = _SECTIONS[low]
        if key != section:
            log.warn(f"{name}:{lineno}: section [{key}] should be written [{section}]")
        return section
    if low in _LEGACY_SECTIONS:
        section = _LEGACY_SECTIONS[low]
        log.warn(f"{name}:{lineno}: section [{key}] is an older name, use [{section}]")
        return section
    if low in _CONDITION_SECTIONS:
        return _CONDITION_SECTIONS[low]
    return "?" + key
