"""UKI profile files: the [UKIProfile] section of the files UnifiedKernelImageProfiles= names (and of the
*.conf files in mkosi.uki-profiles/). Each file becomes one profile of every UKI the build makes: its
.profile section (Profile=, KEY=VALUE pairs, ID= required) and the command line the profile boots with
(the base command line plus Cmdline=). A leaf: the configuration checks the files when it is read, the
UKI code (mkosi/boot/uki.py) turns them into PE sections."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from mkosi.errors import ConfigError

SECTION = "UKIProfile"
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class UkiProfileFile:
    path: Path
    profile: tuple[tuple[str, str], ...]    # (KEY, VALUE), ID first
    cmdline: tuple[str, ...]                # the extra words of Cmdline=
    sign_expected_pcr: bool = True

    @property
    def id(self) -> str:
        return dict(self.profile)["ID"]

    def profile_text(self) -> str:
        """The .profile section: os-release style KEY=VALUE lines, values with blanks quoted."""
        lines = []
        for key, value in self.profile:
            if re.search(r"[\s\"'\\$`]", value):
                value = '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'
            lines.append(f"{key}={value}")
        return "\n".join(lines) + "\n"


def _bool(value: str, path: Path, lineno: int) -> bool:
    v = value.strip().lower()
    if v in ("1", "yes", "true", "on", "y"):
        return True
    if v in ("0", "no", "false", "off", "n"):
        return False
    raise ConfigError(f"invalid boolean '{value}'", path=str(path), line=lineno, setting="SignExpectedPcr")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with their numbers; an indented line continues the value of the one before it."""
    out: list[tuple[int, str]] = []
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0].isspace() and out and not out[-1][1].startswith("["):
            out[-1] = (out[-1][0], out[-1][1] + "\n" + stripped)
        else:
            out.append((n, stripped))
    return out


def parse_uki_profile(path: Path) -> UkiProfileFile:
    """Read one profile file; errors name the file, line and setting."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the UKI profile: {getattr(e, 'strerror', None) or e}", path=str(path))
    section = None
    profile: dict[str, str] = {}
    cmdline: list[str] = []
    sign = True
    for lineno, line in _logical_lines(text):
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"malformed section header '{line}'", path=str(path), line=lineno)
            section = line[1:-1].strip()
            if section != SECTION:
                raise ConfigError(f"unknown section [{section}], a UKI profile has only [{SECTION}]",
                                  path=str(path), line=lineno)
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got '{line}'", path=str(path), line=lineno)
        if section is None:
            raise ConfigError(f"{key}= outside of a [{SECTION}] section", path=str(path), line=lineno)
        if key == "Profile":
            if not value.strip():
                profile.clear()
            try:
                words = shlex.split(value)
            except ValueError as e:
                raise ConfigError(f"cannot split '{value}': {e}", path=str(path), line=lineno, setting=key)
            for word in words:
                k, eq, val = word.partition("=")
                if not eq or not _KEY_RE.match(k):
                    raise ConfigError(f"'{word}' is not a KEY=VALUE pair with an upper-case KEY", path=str(path),
                                      line=lineno, setting=key)
                profile[k] = val
        elif key == "Cmdline":
            cmdline = [] if not value.strip() else [*cmdline, *value.split()]
        elif key == "SignExpectedPcr":
            sign = _bool(value, path, lineno)
        else:
            raise ConfigError(f"unknown setting {key}= (a UKI profile takes Profile=, Cmdline= and "
                              "SignExpectedPcr=)", path=str(path), line=lineno)
    if not profile.get("ID"):
        raise ConfigError("the profile has no ID= (Profile=ID=...)", path=str(path), setting="Profile")
    ordered = (("ID", profile["ID"]), *((k, v) for k, v in profile.items() if k != "ID"))
    return UkiProfileFile(path, ordered, tuple(cmdline), sign)


def profile_files(paths: Sequence[Path]) -> list[Path]:
    """UnifiedKernelImageProfiles=: files as given, directories (mkosi.uki-profiles/) by their *.conf files."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.name.endswith(".conf") and q.is_file())
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError(f"'{p}' does not exist", setting="UnifiedKernelImageProfiles")
    return out


def load_uki_profiles(paths: Sequence[Path]) -> list[UkiProfileFile]:
    profiles = [parse_uki_profile(p) for p in profile_files(paths)]
    seen: dict[str, Path] = {}
    for p in profiles:
        if p.id in seen:
            raise ConfigError(f"profile ID '{p.id}' is also the ID of {seen[p.id]}", path=str(p.path),
                              setting="Profile")
        seen[p.id] = p.path
    return profiles
