"""History=: the command line of the last build, reused by the verbs that use its image.

After a successful build with History=yes, the settings given on the command line (not the options of
the invocation such as -f or --debug, and no secret setting) are written to HISTORY_FILE below the
directory mkosi ran in. The verbs that use the built image (shell, boot, vm, ssh, ...) without -f and
`-R` put those settings before their own command line, so that `mkosi -O out --history=yes -f` followed
by `mkosi vm` finds the image in out/. A rebuild writes a new history (-R reuses the old one and writes
none); `clean` removes it."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from mkosi import log
from mkosi.config.enums import Verb
from mkosi.config.ini import Assignment, Origin
from mkosi.config.parse import CommandLine, cli_value
from mkosi.config.settings import CONFIG_FIELDS, by_dest
from mkosi.errors import ConfigError

HISTORY_DIR = Path(".mkosi-private/history")
HISTORY_FILE = HISTORY_DIR / "latest.json"
FORMAT_VERSION = 1

# The verbs that use the image of the last build rather than make a new one.
REPLAY_VERBS = (Verb.shell, Verb.boot, Verb.qemu, Verb.vm, Verb.ssh, Verb.serve, Verb.burn, Verb.journalctl,
                Verb.coredumpctl)


def _saved(a: Assignment) -> bool:
    return a.setting.dest in CONFIG_FIELDS and not a.setting.secret


def write_history(cli: CommandLine, directory: Path) -> Path:
    """Save the build's command-line settings (atomically, readable by the owner only)."""
    entries: list[dict[str, Any]] = [
        {"setting": a.setting.dest, "value": a.raw, "base": None if a.base is None else str(a.base)}
        for a in cli.assignments if _saved(a)]
    path = directory / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": FORMAT_VERSION, "cwd": str(directory.absolute()), "assignments": entries}, f,
                  indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_history(directory: Path) -> list[Assignment]:
    path = directory / HISTORY_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown version {data.get('version')!r}")
        out = []
        for entry in data["assignments"]:
            s = by_dest(str(entry["setting"]))
            base = Path(entry["base"]) if entry.get("base") else None
            out.append(Assignment(s, str(entry["value"]), Origin(str(path), None), base))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"the history of the last build is unreadable ({e})", path=str(path),
                          hint="remove it with 'mkosi clean', or rebuild with -f")


def replay(cli: CommandLine, directory: Path) -> CommandLine:
    """The command line with the last build's settings before its own, for the verbs that use its image."""
    rerun = cli.verb == Verb.build and bool(cli_value(cli, "rerun_build_scripts"))
    wanted = rerun or (cli.verb in REPLAY_VERBS and not cli_value(cli, "force"))
    if not wanted or not (directory / HISTORY_FILE).is_file():
        return cli
    saved = read_history(directory)
    if saved:
        log.debug(f"Using the settings of the last build from {HISTORY_FILE}")
    return dataclasses.replace(cli, assignments=[*saved, *cli.assignments])


def remove_history(directory: Path) -> None:
    path = directory / HISTORY_FILE
    if path.exists():
        path.unlink()
        log.info(f"Removed {path}")
