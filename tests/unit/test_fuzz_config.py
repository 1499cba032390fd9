"""Fuzzing the configuration layer with hypothesis: random settings files (sections and keys from the
settings table, values with hostile bytes), mkosi.rootpw/mkosi.version files and command lines.

Whatever the input, loading either succeeds or raises ConfigError naming where the bad input came
from (a file or "command line") in one short message; nothing else escapes and no example is slow.
The budget is fixed (derandomized, 300 examples) so the test costs the same few seconds in every run;
MKOSI_FUZZ_EXAMPLES=N raises it for a longer local run, MKOSI_FUZZ_REPORT=1 prints the outcomes and
MKOSI_FUZZ_COUNT=1 counts failures per class instead of failing, MKOSI_FUZZ_RANDOM=1 draws new examples.
"""

from __future__ import annotations

import collections
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mkosi.config import load_args
from mkosi.config.enums import Verb
from mkosi.config.ini import CONDITION_SECTIONS, SPECIAL_CONDITIONS, matchable
from mkosi.config.settings import SECTIONS, SETTINGS
from mkosi.config.types import Kind, Setting
from mkosi.errors import ConfigError

pytestmark = pytest.mark.usefixtures("fixed_host")

EXAMPLES = int(os.environ.get("MKOSI_FUZZ_EXAMPLES", "300"))
# MKOSI_FUZZ_COUNT=1: count the failures per class instead of stopping at the first (with the report).
COUNT_ONLY = bool(os.environ.get("MKOSI_FUZZ_COUNT"))
# MKOSI_FUZZ_RANDOM=1: other examples on every run (for long local runs; CI stays derandomized).
RANDOM = bool(os.environ.get("MKOSI_FUZZ_RANDOM"))
MAX_MESSAGE = 400
SLOW = 1.0  # seconds; with MKOSI_FUZZ_COUNT (otherwise hypothesis' deadline applies)
# Options that would make the loader leave the example's directory.
SKIPPED_DESTS = {"directory", "all", "all_directory"}

FILE_SETTINGS = [s for s in SETTINGS if s.key is not None]
FLAG_SETTINGS = [s for s in SETTINGS if s.long_flag is not None and s.dest not in SKIPPED_DESTS]

HOSTILE = ["\0", "\n", "\r", "\r\n", "\x0c", "\x0b", "\x85", "\u2028", "\u2029", "\x1c", "\x1b[31m", "\t",
           "\ufeff", "\u0661", "\uff11", "\u00b2", "~", "~nosuchuser-fuzz", "..", "../", "/", "!", "!*", "#", " #",
           ";", "=", "[", "]", "%", "%u", "\\", "'", '"', "$HOME", "*", ",", ":", "-", "+", "é", "\udcff"]
WORDS = ["yes", "no", "true", "0", "1", "-1", "2048", "3G", "1T", "18446744073709551616", "16777216T", "debian",
         "fedora", "arch", "bookworm", "gpt_ext4", "tar", "directory", "xz", "zstd", "signed", "json", "changelog",
         "uefi", "linux", "bios", "image", "../x", "/tmp", "./rel", "a=b", "A=1", "x86-64", "all", "data", "never",
         "mkosi.rootpw", "/dev/null", "/proc/self/environ", "0" * 40, "ab" * 16]


def _choices(s: Setting) -> list[str]:
    return list(s.choices or ())


def values(s: Optional[Setting] = None) -> st.SearchStrategy[str]:
    """A value: well-formed for the setting, a word of another setting, hostile characters, random
    text, or something long, and combinations of these."""
    pieces = st.one_of(
        st.sampled_from(WORDS + (_choices(s) if s else [])),
        st.sampled_from(HOSTILE),
        st.text(max_size=12),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
    )
    joined = st.lists(pieces, max_size=5).map("".join)
    long = st.tuples(st.sampled_from(["1", " ", "a", "!a ", "9", "\u0661", "x,"]), st.integers(1, 3000)).map(
        lambda t: t[0] * t[1])
    return st.one_of(joined, joined, joined, long)


@st.composite
def entry(draw: st.DrawFn, match: bool = False) -> str:
    if match and draw(st.integers(0, 3)) == 0:
        return f"{draw(st.sampled_from(SPECIAL_CONDITIONS))}={draw(values())}"
    s = draw(st.sampled_from(matchable() if match and draw(st.booleans()) else FILE_SETTINGS))
    key = s.key
    assert key is not None
    key = draw(st.sampled_from([key, key.lower(), *s.aliases, key + draw(st.sampled_from(HOSTILE))]))
    line = f"{key}={draw(values(s))}"
    # Continuation lines, inline comments, odd line ends.
    for cont in draw(st.lists(values(s), max_size=2)):
        indent = draw(st.sampled_from([" ", "\t", "  "]))
        line += f"\n{indent}{cont}"
    if draw(st.booleans()):
        line += draw(st.sampled_from([" # comment", "\t; x", " #\x0cImageId=../evil", "\r"]))
    return line


@st.composite
def settings_file(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        header = draw(st.sampled_from([*SECTIONS, *CONDITION_SECTIONS, "match", "Packages", "Nonsense", "",
                                       "Output" + "\u2028"]))
        lines.append(draw(st.sampled_from([f"[{header}]", f"[ {header} ]", f"[{header}", header])))
        for _ in range(draw(st.integers(0, 5))):
            lines.append(draw(st.one_of(entry(match=header.lower() in [c.lower() for c in CONDITION_SECTIONS]),
                                        st.sampled_from(["", "# comment", "; comment", "  indented", "=x",
                                                         "# \u2028 Output=../../evil", "\x0c"]),
                                        st.text(max_size=20))))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    data = text.encode("utf-8", errors="surrogateescape" if draw(st.booleans()) else "replace")
    if draw(st.integers(0, 9)) == 0:  # invalid UTF-8 somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + data[at:]
    return data


@st.composite
def command_line(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        s = draw(st.sampled_from(FLAG_SETTINGS))
        flag = s.long_flag
        assert flag is not None
        if s.kind == Kind.COUNT or (s.const is not None and draw(st.booleans())):
            argv.append(flag)
        else:
            value = draw(values(s)).replace("\0", "")  # argv cannot hold NUL bytes
            argv.append(draw(st.sampled_from([f"{flag}={value}", f"{flag}"])))
            if "=" not in argv[-1]:
                argv.append(value)
    if draw(st.integers(0, 5)) == 0:
        argv.append(draw(st.sampled_from(["--no-such-option", "-Z", "--", "---", "-"])))
    argv.append(draw(st.sampled_from(Verb.values())))
    return argv


Files = dict[str, Union[bytes, tuple[bytes, int], None]]


@st.composite
def project(draw: st.DrawFn) -> Files:
    files: Files = {}
    names = ["mkosi.default", "mkosi.conf", "mkosi.conf.d/10.conf", "mkosi.default.d/20.conf",
             "mkosi.conf.d/debian/30.conf"]
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        files[name] = draw(settings_file())
    if draw(st.integers(0, 3)) == 0:
        pw = draw(st.one_of(st.binary(max_size=20), values().map(lambda v: v.encode("utf-8", "surrogateescape"))))
        files["mkosi.rootpw"] = (pw, draw(st.sampled_from([0o600, 0o644, 0o400])))
    if draw(st.integers(0, 3)) == 0:
        files["mkosi.version"] = draw(values()).encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 9)) == 0:
        files[draw(st.sampled_from(["mkosi.conf", "mkosi.default"]))] = None  # a dangling symlink
    return files


OUTCOMES: collections.Counter[str] = collections.Counter()
EXAMPLES_OF: dict[str, str] = {}  # the first problem seen of each failure class


def materialize(root: Path, files: Files) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            if not path.exists():
                path.symlink_to("nowhere")
            continue
        data, mode = content if isinstance(content, tuple) else (content, 0o644)
        path.write_bytes(data)
        path.chmod(mode)


@settings(max_examples=EXAMPLES, derandomize=not RANDOM, database=None,
          deadline=None if COUNT_ONLY else timedelta(seconds=2),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=project(), argv=command_line())
def fuzz_one(files: Files, argv: list[str]) -> None:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="mkosi-fuzz-") as tmp:
        materialize(Path(tmp), files)
        os.chdir(tmp)
        start = time.monotonic()
        try:
            outcome, problem = classify(argv)
        finally:
            os.chdir(cwd)
        if COUNT_ONLY and time.monotonic() - start > SLOW:
            outcome, problem = "failure: slow", f"{time.monotonic() - start:.1f} s"
    OUTCOMES[outcome] += 1
    if problem is not None:
        EXAMPLES_OF.setdefault(outcome, f"{problem} (argv={argv!r}, files={sorted(files)})")
    if COUNT_ONLY:
        return
    assert problem is None, problem


def classify(argv: list[str]) -> tuple[str, Optional[str]]:
    """(what happened, what is wrong with it or None)."""
    try:
        load_args(argv)
        return "loaded", None
    except ConfigError as e:
        message = str(e)
        # Every rejection says where the bad input is: a file or the command line, in one short line.
        if e.path is None:
            return "failure: rejection without origin", message
        if e.path != "command line" and not message.startswith(e.path):
            return "failure: origin not shown", message
        if len(message) >= MAX_MESSAGE:
            return "failure: message too long", message[:MAX_MESSAGE]
        if "\n" in message:
            return "failure: message of several lines", message
        return "rejected: " + ("command line" if e.path == "command line" else "a file"), None
    except Exception as e:  # what must never happen: an internal error
        return f"failure: internal error {type(e).__name__}", f"{type(e).__name__}: {str(e)[:MAX_MESSAGE]}"


def test_fuzz_configuration_layer() -> None:
    OUTCOMES.clear()
    fuzz_one()
    if os.environ.get("MKOSI_FUZZ_REPORT") or COUNT_ONLY:
        print(f"\nfuzz outcomes: {dict(sorted(OUTCOMES.items()))}")
        for outcome, example in sorted(EXAMPLES_OF.items()):
            print(f"  {outcome}: {example[:600]}")
    if COUNT_ONLY:
        return
    # The generators reach both sides: configurations that load and ones rejected from each origin.
    assert OUTCOMES["loaded"] > 0
    assert OUTCOMES["rejected: a file"] > 0 and OUTCOMES["rejected: command line"] > 0
