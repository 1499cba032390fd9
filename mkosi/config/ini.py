"""Reading mkosi.default / mkosi.conf style files into an ordered list of assignments."""

from __future__ import annotations

import dataclasses
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
    match: bool = False   # a condition of the file's [Match] section, not an assignment


def normalize_key(key: str) -> str:
    return key.strip().lower().replace("-", "").replace("_", "")


_KEYS: dict[str, tuple[Setting, bool]] = {}
for _s in SETTINGS:
    if _s.key is None:
        continue
    _KEYS[normalize_key(_s.key)] = (_s, False)
    for _a in _s.aliases:
        _KEYS[normalize_key(_a)] = (_s, True)

_SECTIONS = {s.lower(): s for s in SECTIONS}
# Older section names: the [Packages] section became [Content].
_LEGACY_SECTIONS = {"packages": "Content"}
# Settings a [Match] section may test: the file applies only when all its conditions hold.
MATCHABLE = ("distribution", "release", "architecture", "format", "image_id", "image_version", "bootable")


def _rewrite_legacy_value(alias: str, raw: str) -> str:
    if normalize_key(alias) == "xz":
        b = try_bool(raw)
        return "xz" if b else ("no" if b is False else raw)
    return raw


def _strip_inline_comment(value: str) -> str:
    # A '#' starts a comment only when preceded by whitespace, so URLs with fragments survive.
    m = re.search(r"\s#", value)
    return value[: m.start()] if m else value


def _matchable() -> list[Setting]:
    return [s for s in SETTINGS if s.dest in MATCHABLE]


def lookup_key(key: str) -> Optional[tuple[Setting, bool]]:
    return _KEYS.get(normalize_key(key))


def parse_ini(path: Path, text: Optional[str] = None) -> list[Assignment]:
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
    result: list[Assignment] = []
    section: Optional[str] = None
    section_raw = ""
    for lineno, key, maybe_value in entries:
        if maybe_value is None:
            section_raw = key
            low = key.lower()
            if low in _SECTIONS:
                section = _SECTIONS[low]
                if key != section:
                    log.warn(f"{name}:{lineno}: section [{key}] should be written [{section}]")
            elif low in _LEGACY_SECTIONS:
                section = _LEGACY_SECTIONS[low]
                log.warn(f"{name}:{lineno}: section [{key}] is an older name, use [{section}]")
            elif low == "match":
                section = "Match"
            else:
                section = "?" + key
            continue
        if section is None:
            raise ConfigError(f"setting '{key}' appears before any [Section] header", path=name, line=lineno,
                              hint="put it under the section it belongs to, e.g. [Output]")
        found = lookup_key(key)
        if found is None:
            raise ConfigError(f"unknown setting '{key}' in section [{section_raw}]", path=name, line=lineno)
        value = maybe_value
        s, legacy = found
        assert s.key is not None
        if section == "Match":
            if s.dest not in MATCHABLE:
                raise ConfigError(f"[Match] cannot test {s.key}=", path=name, line=lineno, setting=s.key,
                                  hint="it can test " + ", ".join(f"{m.key}=" for m in _matchable()))
            result.append(Assignment(s, value, Origin(name, lineno), match=True))
            continue
        if legacy:
            log.warn(f"{name}:{lineno}: {key}= is an older name, use {s.key}=")
            value = _rewrite_legacy_value(key, value)
        elif key != s.key:
            log.warn(f"{name}:{lineno}: setting '{key}' should be written '{s.key}'")
        if section.startswith("?"):
            log.warn(f"{name}:{lineno}: unknown section [{section[1:]}], applying {s.key}= from [{s.section}]")
        elif section != s.section:
            log.warn(f"{name}:{lineno}: {s.key}= belongs in [{s.section}], not [{section}]; applying it anyway")
        result.append(Assignment(s, value, Origin(name, lineno)))
    return result
