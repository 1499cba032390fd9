"""Work of maintainer scripts that mkosi does later, and on every core, instead of in dpkg's one queue.

dpkg runs maintainer scripts one at a time, so the slow ones hold up every package after them. Three
kinds of work take much of a configure run's time and do not have to happen where dpkg puts them:

* Python's byte-compilation of its standard library (`pythonX.Y-minimal` and `pythonX.Y` compile the
  files of their library packages with `py_compile.py`, about half a second each). Nothing a later
  maintainer script does needs those files compiled (Python compiles what it imports when a file is
  missing), so the compilation runs in the background as soon as the script has asked for it, while
  dpkg goes on with other packages.
* `py3compile -p PACKAGE`, which every Python package's postinst runs (dh_python3). It asks dpkg's
  database for the package's files, which must not happen while dpkg writes it, so it runs after the
  last dpkg run, all of them in parallel.
* udev's `systemd-hwdb --usr update`, which compiles the hardware database from the hwdb.d files of
  every package installed so far, and runs again (a trigger) whenever a later package adds one. It runs
  once, when the files of every package are in place: alongside the last configure run when udev is
  among the packages it sets up and no unpacking follows (its result is kept only if udev's postinst
  then asks for it and no hwdb.d file changed meanwhile), after the last dpkg run otherwise.

How: during each dpkg run whose root has the real `systemd-hwdb` or `py3compile`, the helper directory's
bin (first on the maintainer scripts' PATH) has a stand-in of that name: the hwdb one notes `--usr update`
and passes every other use on, the py3compile one notes its command line. And before each dpkg run, the
`py_compile.py` lines of the python3* postinsts in dpkg's database are prefixed with a command that notes
the command line instead of running it. The postinsts are restored as they were after the run (the
image's dpkg database is what the package installed), and each noted command then runs as it was
written, in the same sandbox. A failing compilation fails the installation as the postinst would have
(it runs under `set -e`); a failing hwdb update is a warning, as the postinst ignores it too. The image
ends up with the same files either way.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.debs import dependency_closure, parse_deb822
from mkosi.trees import resolve_in_root

# Run in a sandbox of the root; returns the finished process (never raises for an exit status).
Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]

DEFER_NAME = "mkosi-defer"
HWDB_MARK = "hwdb-update"
HWDB_ARGV = ["systemd-hwdb", "--usr", "update"]
# What `systemd-hwdb --usr update` reads, and what it writes.
HWDB_SOURCES = ("etc/udev/hwdb.d", "usr/lib/udev/hwdb.d", "lib/udev/hwdb.d")
HWDB_OUTPUT = "usr/lib/udev/hwdb.bin"

# The lines of the pythonX.Y(-minimal) postinsts that byte-compile the standard library ($files is the
# package's list of .py files; -O is the optional second pass).
_PY_COMPILE = re.compile(
    r"^([ \t]*)(/usr/bin/python3\.\d+ -E -S (?:-O )?/usr/lib/python3\.\d+/py_compile\.py \$files)[ \t]*$",
    re.MULTILINE)


def defer_script(helper: str) -> str:
    """Notes its command line (NUL-separated, in a new file of the queue directory) and succeeds; with
    --at-end first, the command runs after the last dpkg run rather than right after this one."""
    return (
        "#!/bin/sh\n"
        "# Written by mkosi while packages are installed: this command runs later, after dpkg's run.\n"
        "set -e\n"
        "kind=job\n"
        "if [ \"$1\" = --at-end ]; then kind=end; shift; fi\n"
        f"job=$(mktemp /{helper}/deferred/$kind.XXXXXXXX)\n"
        "printf '%s\\0' \"$@\" > \"$job.tmp\"\n"
        "mv \"$job.tmp\" \"$job.cmd\"\n"
        "rm -f \"$job\"\n"
    )


def _stand_in_head(helper: str, name: str, comment: str) -> str:
    """The start of a stand-in: its PATH without the helper directory, where the real `name` must be."""
    return (
        "#!/bin/sh\n"
        f"# Written by mkosi while packages are installed: {comment}\n"
        f"PATH=${{PATH#/{helper}/bin:}}\n"
        f"if ! real=$(command -v {name}); then\n"
        "    echo \"$0: not found\" >&2\n"
        "    exit 127\n"
        "fi\n"
    )


def hwdb_script(helper: str) -> str:
    """A systemd-hwdb that notes `--usr update` (done once, at the end) and runs every other use."""
    return _stand_in_head(helper, "systemd-hwdb", "the hardware database is compiled once, after\n"
                          "# the last package.") + (
        "if [ \"$*\" = \"--usr update\" ] || [ \"$*\" = \"update --usr\" ]; then\n"
        f"    : > /{helper}/deferred/{HWDB_MARK}\n"
        "    exit 0\n"
        "fi\n"
        "exec \"$real\" \"$@\"\n"
    )


def py3compile_script(helper: str) -> str:
    """A py3compile that has the real one run after the last dpkg run (it asks dpkg's database for the
    package's files, which must not happen while dpkg writes it)."""
    return _stand_in_head(helper, "py3compile", "Python files are byte-compiled after the last\n"
                          "# package, on every core.") + \
        f"exec /{helper}/bin/{DEFER_NAME} --at-end \"$real\" \"$@\"\n"


# Commands the maintainer scripts find on their PATH: mkosi's stand-in, and where the real one is. A
# stand-in is only there for a dpkg run when the real one is (so `command -v NAME` answers as before).
_STAND_INS = {
    "systemd-hwdb": (hwdb_script, ("usr/bin/systemd-hwdb", "bin/systemd-hwdb")),
    "py3compile": (py3compile_script, ("usr/bin/py3compile", "bin/py3compile")),
}


def defer_py_compile(text: str, defer: str) -> str:
    """The postinst with its py_compile lines run through `defer` (unchanged when it has none)."""
    return _PY_COMPILE.sub(lambda m: f"{m.group(1)}{defer} {m.group(2)}", text)


@dataclass
class _Patched:
    path: Path
    original: bytes
    mode: int


@dataclass
class Deferred:
    """The queue of one chroot: `root` is the image, `helper` the helper directory's name in it."""
    root: Path
    helper: str
    runner: Runner
    pool: concurrent.futures.ThreadPoolExecutor = field(init=False)
    jobs: list[tuple[list[str], concurrent.futures.Future[subprocess.CompletedProcess[str]]]] = field(
        init=False, default_factory=list)
    at_end: list[list[str]] = field(init=False, default_factory=list)   # started by finish()
    # A hwdb update started before udev's postinst asked for it (see early_hwdb()): the job, when it
    # started (ns), and the hwdb.bin it replaces (None: there was none).
    hwdb_early: Optional[tuple[concurrent.futures.Future[subprocess.CompletedProcess[str]], int, Optional[bytes]]] = \
        field(init=False, default=None)

    def __post_init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1))
        base = self.root / self.helper
        for d in ("bin", "deferred"):
            (base / d).mkdir(parents=True, exist_ok=True)
        (base / "bin" / DEFER_NAME).write_text(defer_script(self.helper))
        (base / "bin" / DEFER_NAME).chmod(0o755)

    def _has_real(self, name: str) -> bool:
        return any(resolve_in_root(self.root, p).exists() for p in _STAND_INS[name][1])

    def _unconfigured(self) -> tuple[dict[str, dict[str, str]], set[str]]:
        """dpkg's status stanzas by package name, and the packages unpacked but not configured yet."""
        status = resolve_in_root(self.root, "var/lib/dpkg/status")
        if not status.is_file():
            return {}, set()
        stanzas = {st["Package"]: st for st in parse_deb822(status.read_text(errors="replace")) if "Package" in st}
        pending = {name for name, st in stanzas.items()
                   if st.get("Status", "").split()[-1:] in (["unpacked"], ["half-configured"])}
        return stanzas, pending

    def _place_stand_ins(self) -> None:
        for name, (script, _) in _STAND_INS.items():
            path = self.root / self.helper / "bin" / name   # mkosi's own directory, made afresh
            if self._has_real(name):
                path.write_text(script(self.helper))
                path.chmod(0o755)
            else:
                path.unlink(missing_ok=True)

    @property
    def queue(self) -> Path:
        return self.root / self.helper / "deferred"

    @contextlib.contextmanager
    def around_dpkg(self) -> Iterator[None]:
        """Around one dpkg run: the postinsts defer their compilation; afterwards they are restored and
        what was noted starts."""
        self._place_stand_ins()
        patched = self._patch_postinsts()
        try:
            yield
        finally:
            for p in patched:
                p.path.write_bytes(p.original)
                p.path.chmod(p.mode)
            self._start_noted()

    def _patch_postinsts(self) -> list[_Patched]:
        info = resolve_in_root(self.root, "var/lib/dpkg/info")
        patched = []
        for path in sorted(info.glob("python3*.postinst")):
            if path.is_symlink() or not path.is_file():
                continue
            original = path.read_bytes()
            try:
                text = original.decode()
            except UnicodeDecodeError:
                continue
            new = defer_py_compile(text, f"/{self.helper}/bin/{DEFER_NAME}")
            if new != text:
                mode = path.stat().st_mode & 0o7777
                patched.append(_Patched(path, original, mode))
                path.write_text(new)
                path.chmod(mode)
        return patched

    def early_configure(self) -> list[str]:
        """Before a `--configure --pending` run: the unconfigured packages whose postinst defers work,
        with the unconfigured packages they depend on, to be configured in a run of their own first
        (their work then runs while dpkg configures the others). Empty when that gains nothing."""
        stanzas, pending = self._unconfigured()
        info = resolve_in_root(self.root, "var/lib/dpkg/info")
        roots = []
        for name in sorted(pending):
            postinst = info / f"{name}.postinst"
            if name.startswith("python3") and postinst.is_file() and not postinst.is_symlink() \
                    and _PY_COMPILE.search(postinst.read_text(errors="replace")):
                roots.append(name)
        if not roots:
            return []
        early = dependency_closure(stanzas, roots) & pending
        return [] if early == pending else sorted(early)

    def _start_noted(self) -> None:
        for job in sorted(self.queue.glob("*.cmd"), key=lambda p: p.stat().st_mtime_ns):
            argv = [a.decode() for a in job.read_bytes().split(b"\0")[:-1]]
            job.unlink()
            if not argv:
                continue
            if job.name.startswith("end."):
                self.at_end.append(argv)
            else:
                self._start(argv)

    def _start(self, argv: list[str]) -> None:
        log.debug(f"running in the background: {' '.join(argv[:5])}{' …' if len(argv) > 5 else ''}")
        self.jobs.append((argv, self.pool.submit(self.runner, argv)))

    def early_hwdb(self) -> None:
        """Before a configure run that no unpacking follows: when udev is to be set up in it (its postinst
        asks for the hwdb update), start the update now, alongside dpkg."""
        if self.hwdb_early is not None or not self._has_real("systemd-hwdb") or "udev" not in self._unconfigured()[1]:
            return
        output = resolve_in_root(self.root, HWDB_OUTPUT)
        previous = output.read_bytes() if output.is_file() and not output.is_symlink() else None
        started = time.time_ns()
        self.hwdb_early = (self.pool.submit(self.runner, HWDB_ARGV), started, previous)

    def _hwdb_sources_changed_since(self, ns: int) -> bool:
        # File times come from a coarse clock (a tick behind time.time_ns() at most): with a margin, a
        # change just before the start counts as one after it, never the other way round.
        ns -= 100_000_000
        for d in HWDB_SOURCES:
            base = resolve_in_root(self.root, d)
            if not base.is_dir():
                continue
            if base.stat().st_ctime_ns >= ns or any(p.lstat().st_ctime_ns >= ns for p in base.iterdir()):
                return True
        return False

    def _settle_hwdb(self, asked: bool) -> Optional[concurrent.futures.Future[subprocess.CompletedProcess[str]]]:
        """The hwdb job whose result stands (None: no update was asked for)."""
        if self.hwdb_early is None:
            return self.pool.submit(self.runner, HWDB_ARGV) if asked else None
        job, started, previous = self.hwdb_early
        self.hwdb_early = None
        proc = job.result()
        if asked:
            return job if proc.returncode == 0 and not self._hwdb_sources_changed_since(started) \
                else self.pool.submit(self.runner, HWDB_ARGV)
        # Nobody asked: the image keeps the hwdb.bin it had.
        output = resolve_in_root(self.root, HWDB_OUTPUT)
        if previous is None:
            output.unlink(missing_ok=True)
        else:
            output.write_bytes(previous)
        return None

    def finish(self) -> None:
        """After the last dpkg run: the hwdb update (if asked for) alongside the compilations still
        running; raises if a compilation failed."""
        mark = self.queue / HWDB_MARK
        asked = mark.exists()
        mark.unlink(missing_ok=True)
        hwdb = self._settle_hwdb(asked)
        for argv in self.at_end:
            self._start(argv)
        self.at_end.clear()
        failed = []
        for argv, job in self.jobs:
            proc = job.result()
            if proc.returncode != 0:
                failed.append((argv, proc))
        self.jobs.clear()
        if hwdb is not None:
            proc = hwdb.result()
            if proc.returncode != 0:
                log.warn(f"systemd-hwdb --usr update failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        if failed:
            argv, proc = failed[0]
            tail = "\n".join(f"{proc.stdout}\n{proc.stderr}".strip().splitlines()[-12:])
            raise MkosiError(f"byte-compiling Python files failed: {' '.join(argv[:4])} "
                             f"(asked for by a maintainer script) exited with status {proc.returncode}",
                             hint=tail or None)

    def close(self) -> None:
        """Wait for what is running (nothing may write into the root afterwards); start nothing more."""
        self.pool.shutdown(wait=True, cancel_futures=True)
