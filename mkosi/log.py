"""Step logging: every build step is named and timed; --debug shows each command."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from mkosi.progress import Renderer

_state: dict[str, object] = {"debug": False, "depth": 0, "prefix": ""}


def set_prefix(prefix: str) -> None:
    """Lines logged from now on start with this (the image's name, when several build at once)."""
    _state["prefix"] = prefix


def set_debug(enabled: bool) -> None:
    _state["debug"] = enabled


def debug_enabled() -> bool:
    return bool(_state["debug"])


def _color(code: str, text: str) -> str:
    if sys.stderr.isatty() and "NO_COLOR" not in os.environ:
        return f"\033[{code}m{text}\033[0m"
    return text


def _depth() -> int:
    depth = _state["depth"]
    assert isinstance(depth, int)
    return depth


def info(msg: str) -> None:
    indent = "  " * _depth()
    print(f"{_state['prefix']}{indent}{msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"{_state['prefix']}" + _color("33;1", f"Warning: {msg}"), file=sys.stderr, flush=True)


def error(msg: str) -> None:
    print(f"{_state['prefix']}" + _color("31;1", f"Error: {msg}"), file=sys.stderr, flush=True)


def debug(msg: str) -> None:
    if _state["debug"]:
        print(f"{_state['prefix']}" + _color("2", msg), file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log a named step with its duration; nested steps are indented."""
    info(_color("1", f"‣ {name}…"))
    start = time.monotonic()
    _state["depth"] = _depth() + 1
    try:
        yield
    finally:
        _state["depth"] = _depth() - 1
    info(f"  {name} done in {time.monotonic() - start:.1f}s")


def line_start() -> str:
    """What a line logged now starts with (the image's prefix and the step's indentation)."""
    return f"{_state['prefix']}{'  ' * _depth()}"


@contextlib.contextmanager
def progress() -> Iterator[Renderer]:
    """A progress line for the current step (none with --debug); cleared when the block ends."""
    renderer = Renderer(sys.stderr, tty=sys.stderr.isatty(), prefix=line_start(), enabled=not debug_enabled())
    try:
        yield renderer
    finally:
        renderer.clear()
