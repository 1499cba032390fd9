"""Unit tests for mkosi.installers.apt.deferred: maintainer script work done after dpkg, in parallel."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from mkosi.errors import MkosiError
from mkosi.installers.apt import deferred
from mkosi.installers.apt.deferred import DEFER_NAME, HWDB_MARK, Deferred, defer_py_compile

# The byte-compiling part of Debian's python3.11-minimal postinst, as bookworm ships it.
POSTINST = """#! /bin/sh
set -e

case "$1" in
    configure)
    files=$(dpkg -L libpython3.11-minimal:amd64 \\
\t\t| sed -n '/^\\/usr\\/lib\\/python3.11\\/.*\\.py$/p' | $filt)
    if [ -n "$files" ]; then
\t/usr/bin/python3.11 -E -S /usr/lib/python3.11/py_compile.py $files
\tif grep -sq '^byte-compile[^#]*optimize' /etc/python/debian_config; then
\t    /usr/bin/python3.11 -E -S -O /usr/lib/python3.11/py_compile.py $files
\tfi
    else
\techo >&2 "python3.11-minimal: can't get files for byte-compilation"
    fi
esac

exit 0
"""


def test_py_compile_lines_are_run_through_the_defer_command() -> None:
    out = defer_py_compile(POSTINST, "/H/bin/defer")
    assert "\t/H/bin/defer /usr/bin/python3.11 -E -S /usr/lib/python3.11/py_compile.py $files\n" in out
    assert "\t    /H/bin/defer /usr/bin/python3.11 -E -S -O /usr/lib/python3.11/py_compile.py $files\n" in out
    # Nothing else changes.
    assert out.replace("/H/bin/defer ", "") == POSTINST


@pytest.mark.parametrize("line", [
    "/usr/bin/python3.11 -E -S /usr/lib/python3.11/py_compile.py $files || true",   # not the plain form
    "python3.11 -E -S /usr/lib/python3.11/py_compile.py $files",                     # not the absolute path
    "/usr/bin/python3.11 /usr/lib/python3.11/py_compile.py $files",                  # other options
    "py3compile -p python3-minimal /usr/share/python3/",
])
def test_other_lines_are_left_alone(line: str) -> None:
    text = f"#!/bin/sh\nset -e\n{line}\n"
    assert defer_py_compile(text, "/H/bin/defer") == text


def helper_dir(tmp_path: Path) -> str:
    """A helper directory (a path below the root, here /) in tmp_path, so that the scripts run on the host."""
    return str((tmp_path / "helper").relative_to("/"))


def test_defer_script_notes_the_command_line(tmp_path: Path) -> None:
    helper = helper_dir(tmp_path)
    script = tmp_path / "defer"
    script.write_text(deferred.defer_script(helper))
    script.chmod(0o755)
    (tmp_path / "helper/deferred").mkdir(parents=True)
    # The postinst as the chroot runs it: $files split into words, the defer command first.
    postinst = tmp_path / "postinst"
    postinst.write_text(defer_py_compile(POSTINST, str(script)).replace("$(dpkg -L", "$(cat").replace(
        "libpython3.11-minimal:amd64 \\", f"{tmp_path / 'list'} \\").replace("| $filt", ""))
    (tmp_path / "list").write_text("/usr/lib/python3.11/a b.py\n/usr/lib/python3.11/os.py\n/usr/bin/x\n")
    proc = subprocess.run(["sh", str(postinst), "configure"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [job] = (tmp_path / "helper/deferred").iterdir()
    assert job.name.startswith("job.") and job.name.endswith(".cmd")
    assert job.read_bytes().split(b"\0") == [
        b"/usr/bin/python3.11", b"-E", b"-S", b"/usr/lib/python3.11/py_compile.py",
        b"/usr/lib/python3.11/a", b"b.py", b"/usr/lib/python3.11/os.py", b""]


def test_hwdb_script_notes_usr_update_and_runs_the_rest(tmp_path: Path) -> None:
    helper = helper_dir(tmp_path)
    bindir, real = tmp_path / "helper/bin", tmp_path / "real"
    bindir.mkdir(parents=True)
    real.mkdir()
    (tmp_path / "helper/deferred").mkdir()
    (bindir / "systemd-hwdb").write_text(deferred.hwdb_script(helper))
    (bindir / "systemd-hwdb").chmod(0o755)
    (real / "systemd-hwdb").write_text('#!/bin/sh\necho "real $*"\n')
    (real / "systemd-hwdb").chmod(0o755)
    # Without the real one, it is not found, whatever it is asked.
    for argv in (["--usr", "update"], ["query", "x"]):
        proc = subprocess.run(["/bin/sh", "-c", 'systemd-hwdb "$@"', "sh", *argv], capture_output=True, text=True,
                              env={"PATH": f"/{helper}/bin:/nonexistent"})
        assert proc.returncode == 127 and "not found" in proc.stderr
    assert not (tmp_path / "helper/deferred" / HWDB_MARK).exists()
    env = {"PATH": f"/{helper}/bin:{real}:/usr/bin:/bin"}
    for argv in (["--usr", "update"], ["update", "--usr"]):
        proc = subprocess.run(["systemd-hwdb", *argv], env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout == ""
        assert (tmp_path / "helper/deferred" / HWDB_MARK).exists()
        (tmp_path / "helper/deferred" / HWDB_MARK).unlink()
    # Everything else is the real one's: its own PATH no longer leads back to the wrapper.
    proc = subprocess.run(["systemd-hwdb", "query", "usb:v1D6B"], env=env, capture_output=True, text=True)
    assert proc.stdout == "real query usb:v1D6B\n"
    assert not (tmp_path / "helper/deferred" / HWDB_MARK).exists()


class Runner:
    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.fail = fail
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        with self.lock:
            self.calls.append(argv)
        rc = 1 if argv[0] in self.fail else 0
        return subprocess.CompletedProcess(argv, rc, "", "SyntaxError: bad" if rc else "")


def image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    return root


def note(queue: Path, name: str, argv: list[str]) -> None:
    (queue / f"job.{name}.cmd").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


def test_postinsts_are_patched_for_the_run_and_restored(tmp_path: Path) -> None:
    root = image(tmp_path)
    postinst = root / "var/lib/dpkg/info/python3.11-minimal.postinst"
    postinst.write_text(POSTINST)
    postinst.chmod(0o755)
    other = root / "var/lib/dpkg/info/man-db.postinst"
    other.write_text(POSTINST)   # only python3* postinsts are looked at
    runner = Runner()
    queue = Deferred(root, ".helper", runner)
    assert (root / ".helper/bin" / DEFER_NAME).stat().st_mode & 0o111
    compile_argv = ["/usr/bin/python3.11", "-E", "-S", "/usr/lib/python3.11/py_compile.py", "/usr/lib/a.py"]
    with queue.around_dpkg():
        assert f"/.helper/bin/{DEFER_NAME} /usr/bin/python3.11" in postinst.read_text()
        assert other.read_text() == POSTINST
        note(queue.queue, "1", compile_argv)     # what the defer command does in dpkg's run
    assert postinst.read_text() == POSTINST and postinst.stat().st_mode & 0o7777 == 0o755
    assert list(queue.queue.iterdir()) == []
    queue.finish()
    queue.close()
    assert runner.calls == [compile_argv]


def test_hwdb_runs_once_at_the_end(tmp_path: Path) -> None:
    runner = Runner()
    queue = Deferred(image(tmp_path), ".helper", runner)
    for _ in range(3):
        with queue.around_dpkg():
            (queue.queue / HWDB_MARK).touch()
    assert runner.calls == []
    queue.finish()
    queue.close()
    assert runner.calls == [["systemd-hwdb", "--usr", "update"]]


def test_a_failed_compilation_fails_the_installation(tmp_path: Path) -> None:
    runner = Runner(fail=("/usr/bin/python3.11",))
    queue = Deferred(image(tmp_path), ".helper", runner)
    with queue.around_dpkg():
        note(queue.queue, "1", ["/usr/bin/python3.11", "-E", "-S", "/usr/lib/python3.11/py_compile.py", "x.py"])
    with pytest.raises(MkosiError, match="byte-compiling Python files failed") as e:
        queue.finish()
    assert e.value.hint == "SyntaxError: bad"
    queue.close()


def test_a_failed_hwdb_update_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queue = Deferred(image(tmp_path), ".helper", Runner(fail=("systemd-hwdb",)))
    (queue.queue / HWDB_MARK).touch()
    queue.finish()
    queue.close()
    assert "systemd-hwdb --usr update failed" in capsys.readouterr().err


STATUS = """\
Package: libc6
Status: install ok installed
Depends: libgcc-s1

Package: media-types
Status: install ok unpacked

Package: libpython3.11-stdlib
Status: install ok unpacked
Depends: libc6 (>= 2.36), media-types | mime-support

Package: python3.11
Status: install ok unpacked
Depends: libpython3.11-stdlib (= 3.11.2-6), python3.11-minimal (= 3.11.2-6)

Package: python3.11-minimal
Status: install ok installed

Package: man-db
Status: install ok unpacked
Depends: libc6
"""


def test_deferring_packages_are_configured_first_with_what_they_need(tmp_path: Path) -> None:
    root = image(tmp_path)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    queue = Deferred(root, ".helper", Runner())
    assert queue.early_configure() == []           # no postinst defers anything
    (root / "var/lib/dpkg/info/python3.11.postinst").write_text(POSTINST)
    assert queue.early_configure() == ["libpython3.11-stdlib", "media-types", "python3.11"]
    # When they are all that is pending, a run of their own gains nothing.
    (root / "var/lib/dpkg/status").write_text(STATUS.replace("Package: man-db\nStatus: install ok unpacked",
                                                             "Package: man-db\nStatus: install ok installed"))
    assert queue.early_configure() == []
    queue.close()


class HwdbRunner(Runner):
    """systemd-hwdb in the root: writes hwdb.bin (numbered, to tell the runs apart)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        proc = super().__call__(argv)
        (self.root / "usr/lib/udev/hwdb.bin").write_text(f"run {len(self.calls)}")
        return proc


def udev_root(tmp_path: Path, udev_status: str = "unpacked") -> Path:
    root = image(tmp_path)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/systemd-hwdb").touch()
    (root / "usr/lib/udev/hwdb.d").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(f"Package: udev\nStatus: install ok {udev_status}\n")
    # Older than the margin within which a change of hwdb.d counts as one made during the early run.
    time.sleep(0.15)
    return root


def early_hwdb_run(root: Path, new_hwdb_file: bool) -> HwdbRunner:
    """The hwdb update started early, then a configure run in which udev's postinst asks for it (and,
    with `new_hwdb_file`, a hwdb.d file appears meanwhile)."""
    runner = HwdbRunner(root)
    queue = Deferred(root, ".helper", runner)
    queue.early_hwdb()
    with queue.around_dpkg():
        if new_hwdb_file:
            (root / "usr/lib/udev/hwdb.d/70-new.hwdb").write_text("usb:v1234*\n ID_X=1\n")
        (queue.queue / HWDB_MARK).touch()          # udev's postinst asks for it
    queue.finish()
    queue.close()
    return runner


def test_hwdb_starts_alongside_the_last_configure_run(tmp_path: Path) -> None:
    root = udev_root(tmp_path)
    runner = early_hwdb_run(root, new_hwdb_file=False)
    assert runner.calls == [["systemd-hwdb", "--usr", "update"]]
    assert (root / "usr/lib/udev/hwdb.bin").read_text() == "run 1"


def test_hwdb_runs_again_when_its_sources_changed_meanwhile(tmp_path: Path) -> None:
    root = udev_root(tmp_path)
    runner = early_hwdb_run(root, new_hwdb_file=True)
    assert len(runner.calls) == 2 and (root / "usr/lib/udev/hwdb.bin").read_text() == "run 2"


@pytest.mark.parametrize("previous", [None, "the image's own"])
def test_hwdb_nobody_asked_for_leaves_the_image_as_it_was(tmp_path: Path, previous: str) -> None:
    root = udev_root(tmp_path)
    hwdb = root / "usr/lib/udev/hwdb.bin"
    if previous is not None:
        hwdb.write_text(previous)
    queue = Deferred(root, ".helper", HwdbRunner(root))
    queue.early_hwdb()
    with queue.around_dpkg():
        pass                                        # this udev's postinst does not ask
    queue.finish()
    queue.close()
    assert (hwdb.read_text() if hwdb.exists() else None) == previous


@pytest.mark.parametrize("status", ["installed", "absent", "no-tool"])
def test_hwdb_is_not_started_early_without_udev_to_set_up(tmp_path: Path, status: str) -> None:
    root = udev_root(tmp_path, "installed" if status == "installed" else "unpacked")
    if status == "absent":
        (root / "var/lib/dpkg/status").write_text("Package: less\nStatus: install ok unpacked\n")
    if status == "no-tool":
        (root / "usr/bin/systemd-hwdb").unlink()
    runner = HwdbRunner(root)
    queue = Deferred(root, ".helper", runner)
    queue.early_hwdb()
    queue.close()
    assert runner.calls == []


def test_defer_script_at_end_notes_a_command_for_after_the_last_run(tmp_path: Path) -> None:
    helper = helper_dir(tmp_path)
    bindir = tmp_path / "helper/bin"
    bindir.mkdir(parents=True)
    (tmp_path / "helper/deferred").mkdir()
    (bindir / DEFER_NAME).write_text(deferred.defer_script(helper))
    (bindir / DEFER_NAME).chmod(0o755)
    real = tmp_path / "real"
    real.mkdir()
    (real / "py3compile").write_text("#!/bin/sh\nexit 3\n")
    (real / "py3compile").chmod(0o755)
    (bindir / "py3compile").write_text(deferred.py3compile_script(helper))
    (bindir / "py3compile").chmod(0o755)
    # dh_python3's postinst snippet, as the chroot runs it (the helper's bin first on PATH).
    snippet = "set -e\nif command -v py3compile >/dev/null 2>&1; then\n\tpy3compile -p python3-foo\nfi\n"
    proc = subprocess.run(["sh", "-c", snippet], env={"PATH": f"/{helper}/bin:{real}:/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [job] = (tmp_path / "helper/deferred").iterdir()
    assert job.name.startswith("end.") and job.name.endswith(".cmd")
    assert job.read_bytes() == f"{real}/py3compile\0-p\0python3-foo\0".encode()


def test_stand_ins_are_there_only_when_the_real_command_is(tmp_path: Path) -> None:
    root = image(tmp_path)
    queue = Deferred(root, ".helper", Runner())
    bindir = root / ".helper/bin"
    with queue.around_dpkg():
        assert not (bindir / "py3compile").exists() and not (bindir / "systemd-hwdb").exists()
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/py3compile").symlink_to("../share/python3/py3compile")   # resolved in the root
    (root / "usr/share/python3").mkdir(parents=True)
    (root / "usr/share/python3/py3compile").touch()
    with queue.around_dpkg():
        assert (bindir / "py3compile").stat().st_mode & 0o111
        assert "--at-end" in (bindir / "py3compile").read_text()
        assert not (bindir / "systemd-hwdb").exists()
    (root / "usr/share/python3/py3compile").unlink()
    with queue.around_dpkg():
        assert not (bindir / "py3compile").exists()
    queue.close()


def test_commands_for_the_end_start_after_the_last_run(tmp_path: Path) -> None:
    runner = Runner()
    queue = Deferred(image(tmp_path), ".helper", runner)
    with queue.around_dpkg():
        (queue.queue / "end.1.cmd").write_bytes(b"/usr/bin/py3compile\0-p\0python3-foo\0")
    with queue.around_dpkg():
        note(queue.queue, "2", ["/usr/bin/python3.11", "-E", "-S", "/usr/lib/python3.11/py_compile.py", "a.py"])
    [(_, started)] = queue.jobs
    started.result()
    assert runner.calls == [["/usr/bin/python3.11", "-E", "-S", "/usr/lib/python3.11/py_compile.py", "a.py"]]
    queue.finish()
    queue.close()
    assert runner.calls[1:] == [["/usr/bin/py3compile", "-p", "python3-foo"]]
