"""Progress of long steps, read from the machine-readable streams of the tools mkosi drives.

apt-get writes `dlstatus:ITEM:PERCENT:MESSAGE` (and `pmstatus:`, `pmerror:`, `pmconffile:` lines when
it runs dpkg itself) to the file descriptor named by `APT::Status-Fd`; dpkg writes `status: PACKAGE:
STATE` and `processing: ACTION: PACKAGE` lines to the one named by `--status-fd`. Those become one line
that is rewritten in place on a terminal, and a few lines per step in a log (when a quarter of the work
is done, or when nothing was shown for a while), never one per package.

Also here: the exact lines of other tools that say nothing useful and are only shown with --debug.
"""
from __future__ import annotations

import io
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional, TextIO

APT_STATUS_KINDS = ("dlstatus", "pmstatus", "pmerror", "pmconffile", "media-change")

_APT_STATUS = re.compile(r"^(" + "|".join(APT_STATUS_KINDS) + r"):(.*?):(\d+(?:\.\d*)?):(.*)$")


@dataclass(frozen=True)
class AptStatus:
    kind: str       # dlstatus, pmstatus, ...
    item: str       # dlstatus: the number of the file being fetched; pm*: the package (maybe pkg:arch)
    percent: float  # of the whole operation (for downloads: bytes and files together)
    message: str


def parse_apt_status(line: str) -> Optional[AptStatus]:
    """One line of apt's Status-Fd stream, or None for anything else."""
    m = _APT_STATUS.match(line.rstrip("\r\n"))
    if m is None:
        return None
    return AptStatus(kind=m.group(1), item=m.group(2), percent=float(m.group(3)), message=m.group(4))


_FILE_OF = re.compile(r"\bfile (\d+) of (\d+)\b")


def files_of(message: str) -> Optional[tuple[int, int]]:
    """(n, total) from apt's "Retrieving file N of TOTAL" message."""
    m = _FILE_OF.search(message)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class DpkgStatus:
    package: str    # without the architecture qualifier
    state: str      # unpacked, half-configured, installed, ...


_DPKG_STATUS = re.compile(r"^status: ([^\s:]+)(?::[^\s:]+)?: ([a-z-]+)$")


def parse_dpkg_status(line: str) -> Optional[DpkgStatus]:
    """A `status: PACKAGE: STATE` line of dpkg's --status-fd stream (errors and conffile prompts, which
    have more fields, and `processing:` lines give None)."""
    m = _DPKG_STATUS.match(line.rstrip("\r\n"))
    return DpkgStatus(m.group(1), m.group(2)) if m else None


_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}

_SIZE = re.compile(r"^\s*([\d.,]+)\s*([kKMGT]?)B\s*$")


def parse_size(text: str) -> Optional[int]:
    """apt's sizes ("8473 kB", "10.2 MB", "0 B"; decimal units) in bytes."""
    m = _SIZE.match(text)
    if m is None:
        return None
    try:
        return int(float(m.group(1).replace(",", "")) * _UNITS[m.group(2)])
    except ValueError:
        return None


_NEED_TO_GET = re.compile(r"^Need to get (\S+ ?[kKMGT]?B)(?:/\S+ ?[kKMGT]?B)? of archives")


def need_to_get(line: str) -> Optional[int]:
    """The bytes apt is about to download, from its "Need to get X[/Y] of archives." line."""
    m = _NEED_TO_GET.match(line)
    return parse_size(m.group(1)) if m else None


def format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Renderer:
    """One progress line: rewritten in place on a terminal (at most `interval` apart). Otherwise (a log)
    a line is printed when a further quarter of the work is done or `every` seconds passed since the last
    line, but none in the first `quiet` seconds (a short step needs none) and none at 100%."""

    def __init__(self, stream: TextIO, tty: bool, prefix: str = "", clock: Callable[[], float] = time.monotonic,
                 interval: float = 0.2, every: float = 30.0, quiet: float = 0.0, enabled: bool = True,
                 columns: Optional[int] = None) -> None:
        self.columns = columns                 # the terminal's width (None: asked each time)
        self.enabled = enabled                 # off with --debug: the tools' own output is shown instead
        self.stream, self.tty, self.prefix, self.clock = stream, tty, prefix, clock
        self.interval, self.every, self.quiet = interval, every, quiet
        self.shown: Optional[str] = None       # what the terminal line shows now
        self.rendered = ""                     # the same, as written (with the prefix, cut to the width)
        self.last_at: Optional[float] = None   # when a line was last written
        self.last_text: Optional[str] = None
        self.quarter = 0                       # quarters of the work already logged (not a terminal)
        self.lines = 0                         # lines written (not a terminal)
        self.created = clock()

    def update(self, text: str, fraction: Optional[float] = None, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.tty:
            if text == self.shown:
                return
            if not force and self.last_at is not None and now - self.last_at < self.interval \
                    and not (fraction is not None and fraction >= 1):
                return
            # A line longer than the terminal would wrap, and only its last row would be rewritten.
            width = self.columns if self.columns is not None else self._width()
            self.rendered = (self.prefix + text)[:max(width - 1, 1)]
            self.stream.write(f"\r\033[K{self.rendered}")
            self.stream.flush()
            self.shown, self.last_at = text, now
            return
        quarter = math.floor(min(max(fraction, 0.0), 1.0) * 4) if fraction is not None else 0
        if fraction is not None and fraction >= 1:
            return  # the step's "done" line says as much
        due = quarter > self.quarter or now - (self.last_at if self.last_at is not None else self.created) >= self.every
        self.quarter = max(self.quarter, quarter)
        if not due or text == self.last_text or now - self.created < self.quiet:
            return
        self.stream.write(f"{self.prefix}{text}\n")
        self.stream.flush()
        self.last_at, self.last_text = now, text
        self.lines += 1

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return shutil.get_terminal_size().columns

    def above(self, line: str) -> None:
        """Print a line of a tool's output without garbling the progress line."""
        if self.tty and self.shown is not None:
            self.stream.write(f"\r\033[K{line}\n{self.rendered}")
        else:
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self.shown is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.shown = None


class DownloadProgress:
    """apt-get's downloads: bytes done of the total (from "Need to get"), the rate, and files done."""

    def __init__(self, renderer: Renderer, what: str = "Downloading") -> None:
        self.renderer, self.what = renderer, what
        self.total: Optional[int] = None
        self.started: Optional[float] = None

    def stdout_line(self, line: str) -> None:
        size = need_to_get(line)
        if size is not None:
            self.total = size

    def status_line(self, line: str) -> None:
        st = parse_apt_status(line)
        if st is None or st.kind != "dlstatus":
            return
        now = self.renderer.clock()
        if self.started is None:
            self.started = now
        fraction = min(st.percent / 100, 1.0)
        self.renderer.update(self.text(fraction, now - self.started, files_of(st.message)), fraction)

    def text(self, fraction: float, elapsed: float, files: Optional[tuple[int, int]]) -> str:
        parts = []
        if self.total:
            done = fraction * self.total
            parts.append(f"{format_size(done)} of {format_size(self.total)}")
            if elapsed > 0.5:
                parts.append(f"{format_size(done / elapsed)}/s")
        else:
            parts.append(f"{fraction * 100:.0f}%")
        if files is not None:
            parts.append(f"file {files[0]} of {files[1]}")
        return f"{self.what}: " + ", ".join(parts)


class InstallProgress:
    """dpkg's --status-fd stream: packages unpacked and configured of the total."""

    def __init__(self, renderer: Renderer, total: int) -> None:
        self.renderer, self.total = renderer, total
        self.unpacked: set[str] = set()
        self.configured: set[str] = set()

    def status_line(self, line: str) -> None:
        st = parse_dpkg_status(line)
        if st is None:
            return
        if st.state == "unpacked":
            self.unpacked.add(st.package)
        elif st.state == "installed" and st.package in self.unpacked:
            # Only what this step unpacked: trigger processing sets up packages of earlier steps again.
            self.configured.add(st.package)
        else:
            return
        self._show()

    def _show(self) -> None:
        total = max(self.total, len(self.unpacked))
        u, c = min(len(self.unpacked), total), min(len(self.configured), total)
        fraction = (u + c) / (2 * total) if total else 1.0
        self.renderer.update(f"Packages: {u}/{total} unpacked, {c}/{total} set up", fraction)


class Ticker:
    """Elapsed time of a step whose tool says nothing machine-readable (dracut)."""

    def __init__(self, renderer: Renderer, what: str) -> None:
        self.renderer, self.what = renderer, what
        self.started = renderer.clock()

    def tick(self) -> None:
        self.renderer.update(f"{self.what}: {self.renderer.clock() - self.started:.0f}s")


# Lines of the tools mkosi drives that are noise in a build; shown with --debug only. Exact patterns:
# anything else they print is shown as it is.
NOISE = {
    # systemd-nspawn without systemd as PID 1 cannot clean up its mount propagation directory.
    "nspawn-propagate": re.compile(
        r'^Attempted to remove disk file system under "/run/systemd/nspawn/propagate/[^"/]+", '
        r"and we can't allow that\.$"),
    # dracut reads the firmware search path of the kernel's firmware loader, which has no
    # parameters on kernels that build it in without them.
    "dracut-firmware_class": re.compile(
        r"^\S*dracut(?:\.sh)?: line \d+: /sys/module/firmware_class/parameters/path: "
        r"No such file or directory$"),
}


def is_noise(line: str, patterns: Iterable[str] = tuple(NOISE)) -> bool:
    text = line.rstrip("\r\n")
    return any(NOISE[p].match(text) for p in patterns)


# ---- dnf, zypper, pacman and emerge: their plain-text lines when stdout is not a terminal ----

@dataclass(frozen=True)
class PackageStep:
    phase: str                  # "download", "install", "remove", "verify", "build" ...
    index: Optional[int]        # the package's number in the phase (None: the tool does not count)
    total: Optional[int]        # packages in the phase (None: not said on this line)
    name: str = ""


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    phase: Optional[str]        # None: the phase is the regex's "phase" group, lowercased


def _p(regex: str, phase: Optional[str] = None) -> _Pattern:
    return _Pattern(re.compile(regex), phase)


# What each tool prints per package when its output is not a terminal (captured from dnf 4.14, zypper 1.14
# and pacman 6.0 with --noprogressbar; emerge's are portage's ">>> Emerging (N of M)" lines, not captured
# here: the Gentoo test's emerge is a stand-in). A line that matches none of these is not a step.
PACKAGE_LINES: dict[str, tuple[_Pattern, ...]] = {
    "dnf": (
        _p(r"^\((?P<i>\d+)/(?P<n>\d+)\): (?P<name>\S+)", "download"),
        _p(r"^\s+(?P<phase>Installing|Upgrading|Reinstalling|Downgrading|Erasing|Removing|Obsoleting|Cleanup"
           r"|Verifying)\s*: (?P<name>\S+)\s+(?P<i>\d+)/(?P<n>\d+)\s*$"),
    ),
    "zypper": (
        _p(r"^Retrieving package (?P<name>\S+) \((?P<i>\d+)/(?P<n>\d+)\)", "download"),
        _p(r"^\((?P<i>\d+)/(?P<n>\d+)\) (?P<phase>Installing|Removing):? (?P<name>\S+)"),
    ),
    "pacman": (
        _p(r"^Packages \((?P<n>\d+)\) ", "plan"),
        _p(r"^ (?P<name>\S+) downloading\.\.\.$", "download"),
        _p(r"^(?P<phase>installing|upgrading|reinstalling|downgrading|removing) (?P<name>\S+)\.\.\.$"),
    ),
    "emerge": (
        _p(r"^>>> (?P<phase>Emerging|Installing)(?: binary)? \((?P<i>\d+) of (?P<n>\d+)\) (?P<name>\S+)"),
    ),
}

# The same phase under the tools' names.
_PHASES = {"upgrading": "install", "reinstalling": "install", "downgrading": "install", "installing": "install",
           "erasing": "remove", "removing": "remove", "obsoleting": "remove", "cleanup": "remove",
           "verifying": "verify", "emerging": "build"}


def parse_package_line(tool: str, line: str) -> Optional[PackageStep]:
    text = line.rstrip("\r\n")
    for pattern in PACKAGE_LINES[tool]:
        m = pattern.regex.match(text)
        if m is None:
            continue
        groups = m.groupdict()
        phase = pattern.phase or _PHASES.get(groups["phase"].lower(), groups["phase"].lower())
        return PackageStep(phase=phase,
                           index=int(groups["i"]) if groups.get("i") else None,
                           total=int(groups["n"]) if groups.get("n") else None,
                           name=groups.get("name") or "")
    return None


# How far along the whole run a phase starts, and its share of it.
_SHARES: dict[str, dict[str, tuple[float, float]]] = {
    "dnf": {"download": (0.0, 0.3), "install": (0.3, 0.6), "remove": (0.3, 0.6), "verify": (0.9, 0.1)},
    "zypper": {"download": (0.0, 0.3), "install": (0.3, 0.7), "remove": (0.0, 1.0)},  # --download-in-advance
    "pacman": {"download": (0.0, 0.3), "install": (0.3, 0.7), "remove": (0.3, 0.7)},
    "emerge": {"build": (0.0, 1.0), "install": (0.0, 1.0)},
}

_LABELS = {"download": "Downloading", "install": "Installing", "remove": "Removing", "verify": "Verifying",
           "build": "Building"}


class PackageProgress:
    """A package manager's own per-package lines (on stdout) as one progress line: "Installing 12/40: name".
    pacman does not number its lines: the count is kept here, of the total its "Packages (N)" line said."""

    def __init__(self, renderer: Renderer, tool: str) -> None:
        self.renderer, self.tool = renderer, tool
        self.planned: Optional[int] = None
        self.counts: dict[str, int] = {}

    def stdout_line(self, line: str) -> None:
        step = parse_package_line(self.tool, line)
        if step is None:
            return
        if step.phase == "plan":
            self.planned = step.total
            return
        if self.tool == "pacman" and step.phase == "download" and self.planned is None:
            # Before its plan pacman only fetches the repositories' databases.
            self.renderer.update(f"Refreshing: {step.name}")
            return
        index = step.index
        if index is None:
            index = self.counts.get(step.phase, 0) + 1
        self.counts[step.phase] = index
        total = step.total if step.total is not None else self.planned
        offset, share = _SHARES[self.tool].get(step.phase, (0.0, 1.0))
        if total:
            fraction: Optional[float] = offset + share * min(index / total, 1.0)
            counted = f" {index}/{total}"
        else:
            fraction, counted = None, f" {index}"
        label = _LABELS.get(step.phase, step.phase.capitalize())
        self.renderer.update(f"{label}{counted}: {step.name}" if step.name else f"{label}{counted}", fraction)
