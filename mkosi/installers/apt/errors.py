"""apt's and dpkg's failure output turned into one line naming the package, mirror or release at fault."""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Optional


def _mirror_and_suite(url: str) -> tuple[str, str]:
    if "/dists/" in url:
        mirror, _, rest = url.partition("/dists/")
        return mirror, rest.split("/")[0]
    if "/pool/" in url:
        return url.partition("/pool/")[0], ""
    return url.rsplit("/", 1)[0], ""


_NETWORK_FAILURES = ("Could not resolve", "Temporary failure resolving", "Could not connect",
                     "Connection failed", "Connection timed out", "timed out", "Network is unreachable",
                     "No route to host", "Connection refused")

# Each checker looks for one kind of failure: (apt's output, the release asked for) -> message or None.
_Checker = Callable[[str, Optional[str]], Optional[str]]


def _main_first(matches: Iterable[re.Match[str]], suite_of: Callable[[re.Match[str]], str],
                release: Optional[str]) -> list[re.Match[str]]:
    """Failures of `release` itself before those of its -updates or -security companions."""
    return sorted(matches, key=lambda m: suite_of(m) != release)


def _missing_packages(text: str, release: Optional[str]) -> Optional[str]:
    missing = re.findall(r"^E: Unable to locate package (\S+)", text, re.M)
    missing += re.findall(r"^E: Couldn't find any package by (?:glob|regex|pattern) '([^']+)'", text, re.M)
    if not missing:
        return None
    names = ", ".join(f"'{m}'" for m in dict.fromkeys(missing))
    noun = "package" if len(missing) == 1 else "packages"
    return f"{noun} {names} not found in the configured repositories"


def _no_candidate(text: str, release: Optional[str]) -> Optional[str]:
    m = re.search(r"^E: Package '([^']+)' has no installation candidate", text, re.M)
    if m:
        return (f"package '{m.group(1)}' has no installation candidate in the configured repositories "
                "(other packages refer to it, but no repository provides it)")
    return None


def _missing_version(text: str, release: Optional[str]) -> Optional[str]:
    m = re.search(r"^E: Version '([^']+)' for '([^']+)' was not found", text, re.M)
    if m:
        return f"version '{m.group(1)}' of package '{m.group(2)}' not found in the configured repositories"
    m = re.search(r"^E: Release '([^']+)' for '([^']+)' was not found", text, re.M)
    if m:
        return f"package '{m.group(2)}' not found in release '{m.group(1)}'"
    return None


def _fetch_failure(url: str, reason: str) -> str:
    mirror, suite = _mirror_and_suite(url)
    reason = re.sub(r"\s*\[IP: [^\]]*\]", "", " ".join(reason.split()))
    if any(f in reason for f in _NETWORK_FAILURES):
        return f"mirror {mirror} is unreachable: {reason}"
    if "Hash Sum mismatch" in reason or "File has unexpected size" in reason:
        return (f"download of {url} failed ({reason.splitlines()[0]}): the mirror {mirror} "
                "is probably being updated, try again later")
    if suite:
        if reason.startswith("404"):
            return f"release '{suite}' not found on mirror {mirror}"
        return f"could not fetch release '{suite}' from mirror {mirror}: {reason}"
    return f"could not download {url} from mirror {mirror}: {reason}"


def _failed_fetches(text: str, release: Optional[str]) -> Optional[str]:
    failures = _main_first(re.finditer(r"^E: Failed to fetch (\S+)\s+(.*)$", text, re.M),
                           lambda m: _mirror_and_suite(m.group(1))[1], release)
    return _fetch_failure(failures[0].group(1), failures[0].group(2)) if failures else None


def _expired_release(text: str, release: Optional[str]) -> Optional[str]:
    m = re.search(r"^E: Release file for (\S+) is expired \(invalid since ([^)]*)\)", text, re.M)
    if not m:
        return None
    mirror, suite = _mirror_and_suite(m.group(1))
    return (f"the Release file of '{suite}' on mirror {mirror} expired {m.group(2)} ago: "
            "the mirror is out of date, or the clock of this machine is wrong")


def _missing_release(text: str, release: Optional[str]) -> Optional[str]:
    missing = _main_first(
        re.finditer(r"^E: The repository '(\S+) (\S+) Release' does not have a Release file", text, re.M),
        lambda m: m.group(2), release)
    return f"release '{missing[0].group(2)}' not found on mirror {missing[0].group(1)}" if missing else None


def _signature(text: str, release: Optional[str]) -> Optional[str]:
    unsigned = re.search(r"^E: The repository '(\S+) (\S+) \S*Release' is not signed", text, re.M)
    m = re.search(r"NO_PUBKEY (\w+)", text)
    if m:
        what = f"repository {unsigned.group(1)} {unsigned.group(2)}" if unsigned else "a repository"
        return f"{what} is signed with a key that is not in the configured keyring (NO_PUBKEY {m.group(1)})"
    if unsigned:
        return f"repository {unsigned.group(1)} {unsigned.group(2)} is not signed, or not a valid apt repository"
    return None


def _unmet_dependencies(text: str, release: Optional[str]) -> Optional[str]:
    marker = "following packages have unmet dependencies"
    if marker not in text:
        return None
    problems = []
    for line in text[text.index(marker):].splitlines()[1:]:
        if line.startswith("E:"):
            break
        if line.strip():
            problems.append(" ".join(line.split()))
    return "unresolvable dependencies: " + "; ".join(problems)


def _other(text: str, release: Optional[str]) -> Optional[str]:
    if re.search(r"^E: Essential packages were removed", text, re.M):
        return "the requested removal would remove essential packages"
    m = re.search(r"^E: (Could not get lock .*)$", text, re.M)
    if m:
        return f"the package cache is in use by another process: {m.group(1)}"
    m = re.search(r"^E: (.*)$", text, re.M)
    return m.group(1).strip() if m else None


# In this order: the first that recognises something wins.
_CHECKERS: tuple[_Checker, ...] = (_missing_packages, _no_candidate, _missing_version, _failed_fetches,
                                   _expired_release, _missing_release, _signature, _unmet_dependencies, _other)


def apt_error_message(text: str, release: Optional[str] = None) -> Optional[str]:
    """Turn apt's output into one line that names the package, mirror or release at fault.

    When several repositories fail, one of `release` itself is reported rather than its -updates or
    -security companions."""
    for checker in _CHECKERS:
        message = checker(text, release)
        if message is not None:
            return message
    return None


def dpkg_error_message(text: str) -> Optional[str]:
    failed = re.findall(r"^dpkg: error processing (?:archive|package) (\S+)", text, re.M)
    if not failed:
        m = re.search(r"^dpkg: error: (.*)$", text, re.M)
        return f"dpkg: {m.group(1)}" if m else None
    first = re.search(r"^dpkg: error processing .*\n\s*(.*)$", text, re.M)
    detail = f" ({first.group(1).strip()})" if first else ""
    names = ", ".join(dict.fromkeys(os.path.basename(f).rstrip(":").split("_")[0] for f in failed))
    return f"dpkg failed to install {names}{detail}"
