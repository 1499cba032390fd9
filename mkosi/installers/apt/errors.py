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


def apt_error_message(text: str, release: Optional[str] = None) -> Optional[str]:
    """Turn apt's output into one line that names the package, mirror or release at fault.

    When several repositories fail, one of `release` itself is reported rather than its -updates or
    -security companions."""
    missing = re.findall(r"^E: Unable to locate package (\S+)", text, re.M)
    missing += re.findall(r"^E: Couldn't find any package by (?:glob|regex|pattern) '([^']+)'", text, re.M)
    if missing:
        names = ", ".join(f"'{m}'" for m in dict.fromkeys(missing))
        noun = "package" if len(missing) == 1 else "packages"
        return f"{noun} {names} not found in the configured repositories"

    m = re.search(r"^E: Package '([^']+)' has no installation candidate", text, re.M)
    if m:
        return (f"package '{m.group(1)}' has no installation candidate in the configured repositories "
                "(other packages refer to it, but no repository provides it)")

    m = re.search(r"^E: Version '([^']+)' for '([^']+)' was not found", text, re.M)
    if m:
        return f"version '{m.group(1)}' of package '{m.group(2)}' not found in the configured repositories"

    m = re.search(r"^E: Release '([^']+)' for '([^']+)' was not found", text, re.M)
    if m:
        return f"package '{m.group(2)}' not found in release '{m.group(1)}'"

    def main_first(matches: Iterable[re.Match[str]],
                   suite_of: Callable[[re.Match[str]], str]) -> list[re.Match[str]]:
        return sorted(matches, key=lambda m: suite_of(m) != release)

    fetch_failures = main_first(re.finditer(r"^E: Failed to fetch (\S+)\s+(.*)$", text, re.M),
                                lambda m: _mirror_and_suite(m.group(1))[1])
    for m in fetch_failures:
        url, reason = m.group(1), " ".join(m.group(2).split())
        mirror, suite = _mirror_and_suite(url)
        reason = re.sub(r"\s*\[IP: [^\]]*\]", "", reason)
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

    m = re.search(r"^E: Release file for (\S+) is expired \(invalid since ([^)]*)\)", text, re.M)
    if m:
        mirror, suite = _mirror_and_suite(m.group(1))
        return (f"the Release file of '{suite}' on mirror {mirror} expired {m.group(2)} ago: "
                "the mirror is out of date, or the clock of this machine is wrong")

    missing_releases = main_first(
        re.finditer(r"^E: The repository '(\S+) (\S+) Release' does not have a Release file", text, re.M),
        lambda m: m.group(2))
    if missing_releases:
        m = missing_releases[0]
        return f"release '{m.group(2)}' not found on mirror {m.group(1)}"

    m = re.search(r"NO_PUBKEY (\w+)", text)
    if m:
        repo = re.search(r"^E: The repository '(\S+) (\S+) \S*Release' is not signed", text, re.M)
        what = f"repository {repo.group(1)} {repo.group(2)}" if repo else "a repository"
        return f"{what} is signed with a key that is not in the configured keyring (NO_PUBKEY {m.group(1)})"

    m = re.search(r"^E: The repository '(\S+) (\S+) \S*Release' is not signed", text, re.M)
    if m:
        return f"repository {m.group(1)} {m.group(2)} is not signed, or not a valid apt repository"

    if re.search(r"following packages have unmet dependencies", text):
        start = text.index("following packages have unmet dependencies")
        problems = []
        for line in text[start:].splitlines()[1:]:
            if line.startswith("E:"):
                break
            if line.strip():
                problems.append(" ".join(line.split()))
        return "unresolvable dependencies: " + "; ".join(problems)

    if re.search(r"^E: Essential packages were removed", text, re.M):
        return "the requested removal would remove essential packages"

    m = re.search(r"^E: (Could not get lock .*)$", text, re.M)
    if m:
        return f"the package cache is in use by another process: {m.group(1)}"

    m = re.search(r"^E: (.*)$", text, re.M)
    if m:
        return m.group(1).strip()
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
