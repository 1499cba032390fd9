# PYTHON_ARGCOMPLETE_OK
"""Entry point: logging, parsing, dispatch. The only place that turns an error into an exit code."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config import load_config
from mkosi.config.enums import Verb
from mkosi.config.parse import build_completion_parser, format_help, parse_command_line, print_version
from mkosi.config.types import DEBUG_AREAS
from mkosi.errors import MkosiError
from mkosi.history import write_history
from mkosi.verbs import run_verbs


def _debug_requested(argv: Sequence[str]) -> bool:
    """Whether tracebacks are wanted, before the command line is parsed: only for valid --debug= values."""
    def valid(value: str) -> bool:
        areas = value.replace(",", " ").split()
        return bool(areas) and all(a in DEBUG_AREAS for a in areas)

    return any(a == "--debug" or (a.startswith("--debug=") and valid(a[len("--debug="):])) for a in argv)


def run_main(argv: Sequence[str]) -> int:
    try:
        # Optional: completion works when argcomplete is installed, and nothing else depends on it.
        import argcomplete  # noqa: PLC0415

        argcomplete.autocomplete(build_completion_parser())
    except ImportError:
        pass

    cli = parse_command_line(argv)
    if cli.version:
        print_version()
        return 0
    if cli.help:
        print(format_help())
        return 0
    args, configs = load_config(cli)
    log.set_debug(bool(args.debug))
    code = run_verbs(args, configs)
    if code == 0 and args.verb == Verb.build and configs[-1].history and not args.rerun_build_scripts:
        write_history(cli, Path.cwd())
    return code


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM takes the path of Ctrl-C: every step cleans up what it made.
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    signal.signal(signal.SIGTERM, _terminated)
    # The modes of what mkosi creates (outputs, the image's directories) must not depend on the caller's umask.
    os.umask(0o022)
    debug = _debug_requested(argv)
    log.set_debug(debug)
    try:
        code = run_main(argv)
    except MkosiError as e:
        if debug:
            traceback.print_exc()
        log.error(str(e))
        if e.hint:
            print(f"       Hint: {e.hint}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        log.error("interrupted")
        code = 130
    except OSError as e:
        if not isinstance(e, BrokenPipeError):
            if debug:
                traceback.print_exc()
            log.error(f"{e.strerror}: {e.filename}" if e.filename else str(e))
            code = 1
        else:
            code = _broken_pipe()
    except Exception as e:  # a bug in mkosi: say so in one line unless --debug asks for more
        if debug:
            traceback.print_exc()
        log.error(f"internal error: {type(e).__name__}: {e}")
        print("       Hint: run again with --debug for a traceback", file=sys.stderr)
        code = 70
    sys.exit(code)


def _broken_pipe() -> int:
    # Output piped into something that stopped reading (e.g. 'mkosi summary | head').
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    main()

