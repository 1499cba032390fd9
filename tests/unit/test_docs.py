"""mkosi.md documents the settings table, and the table covers the specification's man page.

The spec checks read /work/shared/seeds (found as ../shared/seeds next to the repository root) and are
skipped with a reason when it is not there.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path
from typing import Optional

import pytest

from mkosi.config.enums import Verb
from mkosi.config.ini import lookup_key
from mkosi.config.parse import build_parser
from mkosi.config.settings import SETTINGS, default_value
from mkosi.config.types import Kind, Setting

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "mkosi.md"
# ../shared/seeds beside the repository (or beside a directory holding it, for a worktree).
SEEDS = next((p / "shared/seeds" for p in REPO.parents if (p / "shared/seeds").is_dir()),
             (REPO / "../shared/seeds").resolve())

# A definition header: only back-quoted items separated by commas, e.g. "`Format=`, `--format=`, `-t`".
HEADER = re.compile(r"^`[^`]+`(?:, `[^`]+`)*\s*$")


# ---- reading mkosi.md ----

@dataclasses.dataclass
class Entry:
    tokens: list[str]          # the back-quoted items of the header line
    heading: str               # the nearest "#" heading above it
    text: str                  # header and description, up to the next header or heading


def doc_entries() -> list[Entry]:
    entries: list[Entry] = []
    heading = ""
    current: Optional[Entry] = None
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            current = None
            continue
        if HEADER.match(line):
            current = Entry(re.findall(r"`([^`]+)`", line), heading, line + "\n")
            entries.append(current)
        elif current is not None:
            current.text += line + "\n"
    return entries


def flat(text: str) -> str:
    """The text with line breaks and runs of spaces made single spaces, lower case."""
    return " ".join(text.split()).lower()


def flag_token(flag: str) -> set[str]:
    return {flag, f"{flag}="}


def find_entry(entries: list[Entry], token: str) -> Entry:
    found = [e for e in entries if token in e.tokens]
    assert len(found) == 1, f"mkosi.md: expected exactly one entry headed by `{token}`, found {len(found)}"
    return found[0]


def shown_default(s: Setting) -> Optional[str]:
    value = default_value(s)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, list) and len(value) == 1:
        return str(value[0].value if isinstance(value[0], enum.Enum) else value[0])
    return None


def test_doc_exists() -> None:
    assert DOC.is_file(), "mkosi.md is missing"
    assert len(doc_entries()) > len(SETTINGS)


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.key], ids=lambda s: s.key)
def test_setting_is_documented(s: Setting) -> None:
    assert s.key is not None and s.long_flag is not None
    entry = find_entry(doc_entries(), f"{s.key}=")
    tokens = set(entry.tokens)
    assert tokens & flag_token(s.long_flag), f"`{s.key}=`: the header lacks `{s.long_flag}`"
    for flag in (*s.flags[1:], *s.negative_flags):
        assert flag in tokens or f"{flag}=" in tokens, f"`{s.key}=`: the header lacks `{flag}`"
    assert entry.heading == f"[{s.section}] Section", f"`{s.key}=` is documented under '{entry.heading}'"
    assert "default" in flat(entry.text), f"`{s.key}=`: no default is given"
    for choice in s.choices or ():
        assert f"`{choice}`" in entry.text, f"`{s.key}=`: the value `{choice}` is not described"
    shown = shown_default(s)
    if shown is not None:
        assert f"`{shown}`" in entry.text, f"`{s.key}=`: the default `{shown}` is not given"
    if s.status:
        assert flat(s.status) in flat(entry.text), f"`{s.key}=`: must say '{s.status}'"


@pytest.mark.parametrize("s", [s for s in SETTINGS if not s.key], ids=lambda s: s.long_flag or s.dest)
def test_command_line_option_is_documented(s: Setting) -> None:
    assert s.long_flag is not None
    entries = doc_entries()
    found = [e for e in entries if set(e.tokens) & flag_token(s.long_flag)]
    assert len(found) == 1, f"mkosi.md: `{s.long_flag}` needs exactly one entry"
    entry = found[0]
    assert entry.heading == "COMMAND-LINE-ONLY OPTIONS", f"`{s.long_flag}` is documented under '{entry.heading}'"
    for flag in s.flags[1:]:
        assert flag in entry.tokens, f"`{s.long_flag}`: the header lacks `{flag}`"


def test_help_and_version_are_documented() -> None:
    entries = doc_entries()
    assert "-h" in find_entry(entries, "--help").tokens
    find_entry(entries, "--version")


def test_older_names_are_documented() -> None:
    text = DOC.read_text()
    for s in SETTINGS:
        for alias in s.aliases:
            assert f"`{alias}=`" in text, f"the older name `{alias}=` of `{s.key}=` is not documented"
        for flag in s.flag_aliases:
            assert f"`{flag}" in text, f"the older flag `{flag}` is not documented"
    for old in ("raw_gpt", "raw_btrfs", "raw_squashfs", "[Packages]"):
        assert f"`{old}`" in text


def test_every_verb_is_documented() -> None:
    from mkosi.verbs import VERBS, verb_not_yet

    entries = [e for e in doc_entries() if e.heading == "VERBS"]
    for verb in Verb:
        found = [e for e in entries if verb.value in e.tokens]
        assert len(found) == 1, f"mkosi.md: the verb `{verb.value}` needs exactly one entry under VERBS"
        if VERBS.get(verb) is verb_not_yet:
            assert "not implemented yet" in flat(found[0].text), f"the verb `{verb.value}` is not written yet: say so"


def test_every_format_is_documented() -> None:
    fmt = next(s for s in SETTINGS if s.key == "Format")
    section = DOC.read_text().split("# OUTPUT FORMATS", 1)[1].split("\n# ", 1)[0]
    for choice in fmt.choices or ():
        assert f"`{choice}`" in section, f"OUTPUT FORMATS does not describe `{choice}`"


def test_every_detected_file_is_documented() -> None:
    from mkosi.config.finalize import detected_names

    section = DOC.read_text().split("\n# FILES", 1)[1].split("\n# ", 1)[0]
    for name, is_dir in detected_names().items():
        shown = f"`{name}/`" if is_dir else f"`{name}`"
        assert shown in section, f"FILES does not describe {shown}"


def test_doc_sections() -> None:
    headings = re.findall(r"^# (.+)$", DOC.read_text(), re.MULTILINE)
    for required in ("VERBS", "HOW A BUILD RUNS", "OUTPUT FORMATS", "CONFIGURATION", "SETTINGS",
                     "COMMAND-LINE-ONLY OPTIONS", "FILES", "BUILD PHASES", "CACHING", "ENVIRONMENT",
                     "DECISIONS", "EXAMPLES", "REQUIREMENTS"):
        assert required in headings, f"mkosi.md lacks the section '# {required}'"


# ---- the specification's man page ----

@dataclasses.dataclass
class SeedEntry:
    file: str
    line: int
    section: Optional[str]          # None for the command-line-only options
    key: Optional[str]              # without "="
    flags: list[str]                # without "="


_TOKEN = re.compile(r"[A-Z][A-Za-z0-9]*=?|--?[A-Za-z][A-Za-z0-9-]*=?")


def seed_entries(path: Path) -> list[SeedEntry]:
    """The setting headers of one version of the man page: "`Key=`, `--flag=`, `-x`" lines (Markdown)
    or "Key=, --flag=, -x" lines (rendered text). One line may hold several keys, each followed by its
    flags."""
    result: list[SeedEntry] = []
    section: Optional[str] = None
    in_settings = False
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        m = re.search(r"\[(\w+)\] Section", line)
        if m:
            section, in_settings = m.group(1), True
            continue
        if "Commandline-only Options" in line:
            section, in_settings = None, True
            continue
        if not in_settings:
            continue
        if line.startswith("#") or line.startswith(("Environment Variables", "Supported distributions")):
            if section is None and not line.startswith("### Commandline"):
                in_settings = False
            continue
        tokens = [t.strip().strip("`") for t in line.split(",")]
        if not tokens or not all(_TOKEN.fullmatch(t) for t in tokens):
            continue
        if not any("=" in t or t.startswith("-") for t in tokens):
            continue
        current: Optional[SeedEntry] = None
        for t in tokens:
            if t.startswith("-"):
                if current is None:
                    current = SeedEntry(path.name, lineno, section, None, [])
                    result.append(current)
                current.flags.append(t.rstrip("="))
            else:
                current = SeedEntry(path.name, lineno, section, t.rstrip("="), [])
                result.append(current)
    return result


def seed_files() -> list[Path]:
    if not SEEDS.is_dir():
        pytest.skip(f"the specification is not available at {SEEDS} (../shared/seeds beside the repository)")
    files = sorted(SEEDS.glob("001_*.txt")) + sorted(SEEDS.glob("000_*.txt"))
    if not files:
        pytest.skip(f"no man page (001_*.txt or 000_*.txt) in {SEEDS}")
    return files


def all_seed_entries() -> list[SeedEntry]:
    entries = [e for f in seed_files() for e in seed_entries(f)]
    assert len([e for e in entries if e.key]) > 90, "the man page parser found too few settings"
    return entries


def test_seed_parser_sees_known_lines() -> None:
    md = [f for f in seed_files() if f.name.startswith("001_")]
    if not md:
        pytest.skip("001_*.txt is not available")
    entries = {e.key: e for e in seed_entries(md[0]) if e.key}
    assert entries["Distribution"].flags == ["--distribution", "-d"]
    assert entries["Distribution"].section == "Distribution"
    assert entries["WithTests"].flags == ["--without-tests", "-T"]
    assert entries["OutputSplitVerify"].flags == ["--output-split-verity"]
    assert entries["QemuArgs"].flags == []
    assert entries["RepositoryDirectory"].flags == ["--repository-directory"]
    cli_only = [e for e in seed_entries(md[0]) if e.key is None]
    assert ["--directory", "-C"] in [e.flags for e in cli_only]


def test_seed_settings_are_in_the_table() -> None:
    missing = []
    misplaced = []
    for e in all_seed_entries():
        if e.key is None:
            continue
        found = lookup_key(e.key)
        if found is None:
            missing.append(f"{e.file}:{e.line}: {e.key}=")
            continue
        s, _legacy = found
        if e.section not in (s.section, *s.other_sections):
            misplaced.append(f"{e.file}:{e.line}: {e.key}= is in [{e.section}], the table says [{s.section}]")
    assert not missing, "settings of the man page missing from the table:\n" + "\n".join(missing)
    assert not misplaced, "\n".join(misplaced)


def test_seed_flags_are_accepted_by_the_parser() -> None:
    index = {flag: action for action in build_parser()._actions for flag in action.option_strings}
    problems = []
    for e in all_seed_entries():
        found = lookup_key(e.key) if e.key else None
        for flag in e.flags:
            action = index.get(flag)
            if action is None:
                problems.append(f"{e.file}:{e.line}: {flag} is not accepted")
                continue
            if found is not None and getattr(action, "setting", None) != found[0]:
                problems.append(f"{e.file}:{e.line}: {flag} does not set {e.key}=")
    assert not problems, "\n".join(problems)


def test_seed_flags_parse() -> None:
    """Each long flag of the man page really parses, with a value where it takes one."""
    from mkosi.config.parse import parse_command_line

    for e in all_seed_entries():
        for flag in e.flags:
            if not flag.startswith("--") or flag in ("--help", "--version"):
                continue
            found = lookup_key(e.key) if e.key else None
            s = found[0] if found else next(x for x in SETTINGS if flag in x.flags)
            argv = [flag] if s.kind in (Kind.BOOL, Kind.COUNT) or s.const is not None or \
                flag in s.negative_flags else [flag, "x"]
            cli = parse_command_line([*argv, "summary"])
            assert cli.verb == Verb.summary, flag
            assert [a.setting for a in cli.assignments] == [s], flag


def test_seed_verbs_exist() -> None:
    words: set[str] = set()
    for f in seed_files():
        text = f.read_text()
        words |= set(re.findall(r"^`mkosi \[options…\] ([a-z-]+)", text, re.MULTILINE))
    verbs = set(Verb.values())
    assert words, "no verbs found in the man page synopsis"
    assert words <= verbs, f"verbs of the man page missing: {sorted(words - verbs)}"
    modern = sorted(SEEDS.glob("003_*.txt"))
    if modern:
        for verb in ("vm", "burn", "cat-config"):
            assert verb in modern[0].read_text() and verb in verbs


def test_c_build_examples_install_the_c_library_headers() -> None:
    """Recommended packages are never installed, and Debian's gcc only recommends libc6-dev: an example
    that compiles C with gcc must list the headers, or its build fails on a missing stdio.h."""
    found = 0
    for doc in (REPO / "README.md", DOC):
        for value in re.findall(r"^BuildPackages=(.*)$", doc.read_text(), re.MULTILINE):
            pkgs = set(value.split(","))
            if "gcc" in pkgs:
                found += 1
                assert pkgs & {"libc6-dev", "build-essential"}, f"{doc.name}: BuildPackages={value}"
    assert found >= 2
