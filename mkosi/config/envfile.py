"""Environment files (EnvironmentFiles=, mkosi.env): lines of NAME=VALUE.

The syntax is the one systemd's EnvironmentFile= reads, with shell-like comments:

- blank lines and lines whose first non-blank character is `#` or `;` are comments; an optional `export `
  before the name is ignored, so that a shell can source the same file;
- a value may be quoted: within '...' nothing is special (a value may span lines), within "..." a
  backslash escapes `"`, `\\`, `$` and a backquote, and a backslash before a line break joins the lines;
- outside quotes a backslash takes the next character literally (before a line break: joins the lines),
  whitespace around the value is dropped, and whitespace followed by `#` starts a comment;
- nothing is expanded: `$OTHER` stays as it is written.

Errors name the file and the line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mkosi.config.types import excerpt
from mkosi.errors import ConfigError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SETTING = "EnvironmentFiles"
_DOUBLE_ESCAPES = '"\\$`'


class EnvFileError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def parse_env_text(text: str) -> list[tuple[str, str, int]]:
    """The assignments of an environment file: (name, value, line number), in the order of the file."""
    result: list[tuple[str, str, int]] = []
    i, line, n = 0, 1, len(text)

    def skip_blanks() -> None:
        nonlocal i
        while i < n and text[i] in " \t":
            i += 1

    while i < n:
        skip_blanks()
        if i >= n:
            break
        if text[i] in "\r\n":
            line += text[i] == "\n"
            i += 1
            continue
        if text[i] in "#;":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start_line = line
        line_start = i
        m = NAME.match(text, i)
        if m and m.group() == "export" and m.end() < n and text[m.end()] in " \t":
            i = m.end()
            skip_blanks()
            m = NAME.match(text, i)
        if m:
            i = m.end()
            skip_blanks()
        if not m or i >= n or text[i] != "=":
            end = text.find("\n", line_start)
            rest = (text[line_start:end] if end >= 0 else text[line_start:]).strip()
            if "=" not in rest:
                raise EnvFileError(f"expected NAME=VALUE, got '{excerpt(rest)}'", start_line)
            word = re.sub(r"^export\s+", "", rest.split("=", 1)[0].strip())
            raise EnvFileError(f"invalid variable name '{excerpt(word)}', expected NAME=VALUE", start_line)
        name = m.group()
        i += 1
        skip_blanks()
        value: list[str] = []
        pending = ""     # unquoted whitespace: kept only if more of the value follows
        while i < n:
            c = text[i]
            if c == "\n":
                break
            if c in " \t\r":
                pending += c
                i += 1
                continue
            if c == "#" and pending:
                while i < n and text[i] != "\n":
                    i += 1
                break
            value.append(pending)
            pending = ""
            if c == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise EnvFileError(f"the single quote of '{name}' is never closed", line)
                chunk = text[i + 1:end]
                line += chunk.count("\n")
                value.append(chunk)
                i = end + 1
            elif c == '"':
                quote_line = line
                i += 1
                while True:
                    if i >= n:
                        raise EnvFileError(f"the double quote of '{name}' is never closed", quote_line)
                    c = text[i]
                    if c == '"':
                        i += 1
                        break
                    if c == "\\" and i + 1 < n and text[i + 1] == "\n":
                        line += 1
                        i += 2
                    elif c == "\\" and i + 1 < n and text[i + 1] in _DOUBLE_ESCAPES:
                        value.append(text[i + 1])
                        i += 2
                    else:
                        line += c == "\n"
                        value.append(c)
                        i += 1
            elif c == "\\":
                if i + 1 >= n:
                    raise EnvFileError(f"the value of '{name}' ends with a lone backslash", line)
                if text[i + 1] == "\n":
                    line += 1
                elif text[i + 1:i + 3] == "\r\n":
                    line += 1
                    i += 1
                else:
                    value.append(text[i + 1])
                i += 2
            else:
                value.append(c)
                i += 1
        joined = "".join(value)
        if "\0" in joined:
            raise EnvFileError(f"the value of '{name}' contains a NUL byte", start_line)
        result.append((name, joined, start_line))
    return result


def read_env_file(path: Path) -> list[tuple[str, str, int]]:
    """An environment file's assignments; a ConfigError naming the file (and line) if it cannot be used."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError("is not valid UTF-8 text", path=str(path), setting=SETTING)
    except FileNotFoundError:
        raise ConfigError("the file does not exist", path=str(path), setting=SETTING)
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror or e}", path=str(path), setting=SETTING)
    try:
        return parse_env_text(text)
    except EnvFileError as e:
        raise ConfigError(str(e), path=str(path), line=e.line, setting=SETTING)


def merged_environment(files: Sequence[Path], explicit: Sequence[str]) -> list[str]:
    """Environment= as the scripts get it: the files' variables first (a later file overrides an earlier
    one), then the Environment= items, which win over the files (a NAME=VALUE item replaces the file's
    variable; a bare NAME passes mkosi's own variable, if it has one, after the file's value)."""
    from_files: dict[str, str] = {}
    for path in files:
        for name, value, _ in read_env_file(path):
            from_files[name] = value
    assigned = {item.partition("=")[0] for item in explicit if "=" in item}
    return [f"{k}={v}" for k, v in from_files.items() if k not in assigned] + list(explicit)
