"""EnvironmentFiles= and mkosi.env: the parser of environment files, and how their variables join
Environment= (and reach the scripts)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mkosi import scripts
from mkosi.config import load_args
from mkosi.config.envfile import EnvFileError, merged_environment, parse_env_text, read_env_file
from mkosi.config.settings import Args, Config, by_dest
from mkosi.context import Context, Phase
from mkosi.errors import ConfigError
from mkosi.summary import summary_dict
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[-1]


def parsed(text: str) -> dict[str, str]:
    return {name: value for name, value, _ in parse_env_text(text)}


# ---- the parser ----

def test_plain_assignments_comments_and_blank_lines() -> None:
    text = "# a comment\n; another\n\nA=1\n  B = two \nexport C=3\nEMPTY=\n"
    assert parse_env_text(text) == [("A", "1", 4), ("B", "two", 5), ("C", "3", 6), ("EMPTY", "", 7)]


def test_unquoted_values_keep_inner_spaces_and_end_at_a_comment() -> None:
    assert parsed("A=foo bar  \nB=x # note\nC=x#y\nD=a\\ \\#b\n") == {
        "A": "foo bar", "B": "x", "C": "x#y", "D": "a #b"}


def test_single_quotes_are_literal_and_may_span_lines() -> None:
    result = parse_env_text("A='it''s'\nB='$HOME \\n \" # x'\nC='two\nlines'\nD=after\n")
    assert [(n, v) for n, v, _ in result] == [("A", "its"), ("B", '$HOME \\n " # x'), ("C", "two\nlines"),
                                              ("D", "after")]
    assert result[-1][2] == 5   # line numbers count the lines inside the quotes


def test_double_quotes_and_their_escapes() -> None:
    values = parsed('A="a \\"b\\" \\\\ \\$c \\`d\\` \\n"\nB="x"y\'z\'\nC="one \\\ntwo"\nD="# not a comment" # one\n')
    assert values == {"A": 'a "b" \\ $c `d` \\n', "B": "xyz", "C": "one two", "D": "# not a comment"}


def test_continuation_lines_and_crlf() -> None:
    assert parsed("A=one\\\ntwo\r\nB=3\r\n") == {"A": "onetwo", "B": "3"}


def test_nothing_is_expanded() -> None:
    assert parsed("A=$HOME/${USER}\n") == {"A": "$HOME/${USER}"}


@pytest.mark.parametrize(("text", "line", "message"), [
    ("A=1\nnot an assignment\n", 2, "expected NAME=VALUE, got 'not an assignment'"),
    ("A=1\n1B=x\n", 2, "invalid variable name '1B'"),
    ("A-B=x\n", 1, "invalid variable name 'A-B'"),
    ("\n\nA\n", 3, "expected NAME=VALUE, got 'A'"),
    ("export 9=1\n", 1, "invalid variable name '9'"),
    ("A=1\nB='open\nmore\n", 2, "the single quote of 'B' is never closed"),
    ('A="open\n\n', 1, "the double quote of 'A' is never closed"),
    ("A=x\\", 1, "ends with a lone backslash"),
    ("A=x\0y\n", 1, "NUL byte"),
])
def test_errors_say_which_line(text: str, line: int, message: str) -> None:
    with pytest.raises(EnvFileError) as e:
        parse_env_text(text)
    assert e.value.line == line and message in str(e.value)


def test_read_env_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.env", "A=1\nB='x\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:2: EnvironmentFiles: the single quote"):
        read_env_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_env_file(tmp_path / "missing.env")
    (tmp_path / "binary.env").write_bytes(b"A=\xff\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        read_env_file(tmp_path / "binary.env")


def test_merged_environment_explicit_items_win(tmp_path: Path) -> None:
    one = write(tmp_path / "one.env", "A=1\nB=1\nC=1\n")
    two = write(tmp_path / "two.env", "B=2\n")
    assert merged_environment([one, two], ["C=explicit", "D"]) == ["A=1", "B=2", "C=explicit", "D"]
    assert merged_environment([], ["X=1"]) == ["X=1"]


# ---- the setting ----

def test_mkosi_env_is_found_and_joins_environment(wd: Path) -> None:
    write(wd / "mkosi.env", "FROM_FILE=yes\nBOTH=file\n")
    write(wd / "mkosi.conf", "[Build]\nEnvironment=BOTH=conf OTHER=1\n")
    c = load()
    assert c.environment_files == [wd / "mkosi.env"]
    assert c.environment == ["FROM_FILE=yes", "BOTH=conf", "OTHER=1"]
    assert "EnvironmentFiles" not in summary_dict(Args(), c)["NotImplemented"]
    assert by_dest("environment_files").status is None


def test_listed_files_come_after_mkosi_env(wd: Path) -> None:
    write(wd / "mkosi.env", "A=default\nB=default\n")
    write(wd / "extra.env", "B=extra\n")
    write(wd / "mkosi.conf", "[Build]\nEnvironmentFiles=extra.env\n")
    c = load()
    assert c.environment_files == [wd / "mkosi.env", wd / "extra.env"]
    assert c.environment == ["A=default", "B=extra"]
    write(wd / "mkosi.conf", "[Build]\nEnvironmentFiles=extra.env\nEnvironmentFiles=!*\nEnvironment=X=1\n")
    assert load().environment == ["X=1"]   # the list cleared: no files, mkosi.env neither


def test_environment_files_feed_source_date_epoch(wd: Path) -> None:
    write(wd / "mkosi.env", "SOURCE_DATE_EPOCH=1234\n")
    assert load().source_date_epoch == 1234


def test_a_bad_environment_file_is_a_clear_error(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Build]\nEnvironmentFiles=bad.env\n")
    write(wd / "bad.env", "# fine\nGOOD=1\n2BAD=x\n")
    with pytest.raises(ConfigError, match=r"bad\.env:3: EnvironmentFiles: invalid variable name '2BAD'"):
        load()
    write(wd / "mkosi.conf", "[Build]\nEnvironmentFiles=missing.env\n")
    with pytest.raises(ConfigError, match=r"missing\.env: EnvironmentFiles: the file does not exist"):
        load()


def test_the_scripts_get_the_files_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = write(tmp_path / "vars.env", "GREETING='hello world'\nPASSED=from-file\nOVERRIDDEN=file\n")
    config = dataclasses.replace(Config(), environment=merged_environment([env], ["OVERRIDDEN=conf", "PASSED"]))
    monkeypatch.delenv("PASSED", raising=False)
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "staging").mkdir()
    ctx = Context(Args(), config, tmp_path, Phase.final, root, None, tmp_path / "staging")
    got = scripts.script_environment(ctx)
    assert got["GREETING"] == "hello world" and got["OVERRIDDEN"] == "conf" and got["PASSED"] == "from-file"
    monkeypatch.setenv("PASSED", "from-mkosi")
    assert scripts.script_environment(ctx)["PASSED"] == "from-mkosi"

    # And a finalize script (on the host) really sees them.
    out = tmp_path / "seen"
    script = tmp_path / "mkosi.finalize"
    script.write_text(f'#!/bin/sh\nprintf "%s|%s" "$GREETING" "$OVERRIDDEN" > {out}\n')
    script.chmod(0o755)
    scripts.run_finalize_script(dataclasses.replace(ctx, config=dataclasses.replace(config, finalize_script=script)))
    assert out.read_text() == "hello world|conf"
    assert os.environ.get("GREETING") is None
