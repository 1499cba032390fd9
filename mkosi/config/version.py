"""Versions: comparing them the way the UAPI version format specification does, and the version of the
configuration language this mkosi implements (what MinimumVersion= is checked against)."""

from __future__ import annotations

import re

# MinimumVersion= in users' files names versions of upstream mkosi, whose configuration language this
# implementation speaks up to this version.
LANGUAGE_VERSION = "26"

_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")


def _components(version: str) -> list[str]:
    return re.findall(r"[A-Za-z]+|[0-9]+|[~^.+-]", version)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as a is older than, the same as or newer than b. Digits compare as numbers, letters
    alphabetically; '~' sorts before everything (pre-releases), '^' after the end (post-release fixes)."""
    ca, cb = _components(a), _components(b)
    for x, y in zip(ca, cb):
        if x == y:
            continue
        for special in ("~", "^"):
            if x == special or y == special:
                before = -1 if special == "~" else 1
                return before if x == special else -before
        if x.isdigit() and y.isdigit():
            return (int(x) > int(y)) - (int(x) < int(y))
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1  # a number is newer than letters
        if x in ".+-" or y in ".+-":
            return 1 if y in ".+-" else -1
        return (x > y) - (x < y)
    rest_a, rest_b = ca[len(cb):], cb[len(ca):]
    if rest_a:
        return -1 if rest_a[0] == "~" else 1
    if rest_b:
        return 1 if rest_b[0] == "~" else -1
    return 0


def version_condition_holds(condition: str, version: str) -> bool:
    """A condition like '>=252', '!=1.2' or '7' (equality) against a version."""
    op = next((o for o in _OPERATORS if condition.startswith(o)), "==")
    wanted = condition[len(op):] if condition.startswith(op) else condition
    c = compare_versions(version, wanted.strip())
    return {"==": c == 0, "!=": c != 0, ">=": c >= 0, "<=": c <= 0, ">": c > 0, "<": c < 0}[op]
