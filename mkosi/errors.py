"""Typed errors. Only mkosi.__main__ turns these into an exit code."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Optional


class MkosiError(Exception):
    """An error the user can act on. Printed as one line (plus a hint), never as a traceback."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(MkosiError):
    """Bad configuration: names the file, line and setting where known."""

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        line: Optional[int] = None,
        setting: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"{setting}: " if setting else ""
        super().__init__(f"{where}{what}{message}", hint)
        self.path = path
        self.line = line
        self.setting = setting


class CommandError(MkosiError):
    """A command mkosi ran failed. The message shows the command so it can be re-run by hand."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        cmd = shlex.join(argv)
        msg = f"command failed with exit status {returncode}: {cmd}"
        tail = stderr.strip().splitlines()[-5:] if stderr else []
        if tail:
            msg += "\n" + "\n".join("    " + line for line in tail)
        super().__init__(msg)


class ToolMissingError(MkosiError):
    def __init__(self, tool: str, package: Optional[str] = None) -> None:
        hint = f"install it with: apt-get install {package}" if package else None
        super().__init__(f"required tool '{tool}' was not found on this host", hint)
        self.tool = tool

