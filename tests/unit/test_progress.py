"""Progress lines: apt's and dpkg's status streams, the rendering on a terminal and in a log, the noise filters."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from mkosi.progress import (
    NOISE,
    AptStatus,
    DownloadProgress,
    InstallProgress,
    Renderer,
    Ticker,
    files_of,
    format_size,
    is_noise,
    need_to_get,
    parse_apt_status,
    parse_dpkg_status,
    parse_size,
)
from mkosi.run import run_streaming

DATA = Path(__file__).parent / "data/progress"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# Parsing


def test_parse_real_apt_status_lines() -> None:
    # Captured from apt-get 2.6 (-o APT::Status-Fd=3) downloading three packages.
    lines = (DATA / "apt-status-fd.txt").read_text().splitlines()
    parsed = [parse_apt_status(line) for line in lines]
    assert all(p is not None and p.kind == "dlstatus" for p in parsed)
    assert parsed[0] == AptStatus("dlstatus", "1", 0.0, "Retrieving file 1 of 3")
    assert parsed[-1] == AptStatus("dlstatus", "3", 100.0, "Retrieving file 3 of 3")
    percents = [p.percent for p in parsed if p is not None]
    assert percents == sorted(percents)


def test_parse_apt_status_package_with_architecture_and_colons_in_message() -> None:
    st = parse_apt_status("pmstatus:libc6:amd64:20.0000:Installing libc6 (amd64): step 2")
    assert st == AptStatus("pmstatus", "libc6:amd64", 20.0, "Installing libc6 (amd64): step 2")
    assert parse_apt_status("pmerror:/var/cache/x.deb:30:trying to overwrite 'a:b'") == \
        AptStatus("pmerror", "/var/cache/x.deb", 30.0, "trying to overwrite 'a:b'")


@pytest.mark.parametrize("line", ["", "Get:1 http://deb.debian.org/debian bookworm/main", "dlstatus:1:abc:x",
                                  "status: libc6: unpacked", "nostatus:1:2.0:x"])
def test_parse_apt_status_rejects_other_lines(line: str) -> None:
    assert parse_apt_status(line) is None


def test_files_of() -> None:
    assert files_of("Retrieving file 2 of 90 (3s remaining)") == (2, 90)
    assert files_of("Running dpkg") is None


def test_parse_real_dpkg_status_lines() -> None:
    # Captured from dpkg 1.21 (--status-fd 3) upgrading two packages in a Debian root.
    lines = (DATA / "dpkg-status-fd.txt").read_text().splitlines()
    parsed = [parse_dpkg_status(line) for line in lines]
    assert [p for p, line in zip(parsed, lines) if line.startswith("processing:")] == [None] * 5
    states = [(p.package, p.state) for p in parsed if p is not None]
    assert ("libgcc-s1", "unpacked") in states and ("hostname", "installed") in states
    assert parse_dpkg_status("status: /x.deb : error : short read") is None


@pytest.mark.parametrize("text,size", [("0 B", 0), ("8473 kB", 8_473_000), ("34.5 MB", 34_500_000),
                                       ("1,234 kB", 1_234_000), ("2 GB", 2_000_000_000)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_garbage() -> None:
    assert parse_size("lots") is None
    assert parse_size("12 parsecs") is None


def test_need_to_get() -> None:
    assert need_to_get("Need to get 8473 kB of archives.") == 8_473_000
    # Partly cached: what is left to fetch of the whole.
    assert need_to_get("Need to get 2345 kB/10.2 MB of archives.") == 2_345_000
    assert need_to_get("After this operation, 0 B of additional disk space will be used.") is None


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(999) == "999 B"
    assert format_size(34_500_000) == "34.5 MB"
    assert format_size(2_500_000_000) == "2.5 GB"


# Rendering


def test_tty_rewrites_one_line_throttled_and_clears_it() -> None:
    out, clock = io.StringIO(), Clock()
    r = Renderer(out, tty=True, prefix="  ", clock=clock, interval=0.2)
    r.update("a", 0.1)
    clock.now += 0.05
    r.update("b", 0.2)      # too soon: skipped
    clock.now += 0.2
    r.update("c", 0.3)
    clock.now += 0.01
    r.update("done", 1.0)   # the last state is always shown
    r.clear()
    assert out.getvalue() == "\r\033[K  a\r\033[K  c\r\033[K  done\r\033[K"
    assert "\n" not in out.getvalue()


def test_tty_line_is_cut_to_the_terminal_width() -> None:
    out = io.StringIO()
    r = Renderer(out, tty=True, prefix="    ", clock=Clock(), columns=20)
    r.update("Packages: 100/200 unpacked, 50/200 set up", 0.4)
    assert out.getvalue() == "\r\033[K    Packages: 100/2"


def test_tty_line_above_keeps_the_progress_line() -> None:
    out = io.StringIO()
    r = Renderer(out, tty=True, clock=Clock())
    r.update("50%", 0.5)
    r.above("W: something")
    assert out.getvalue().endswith("\r\033[KW: something\n50%")


def test_log_prints_quarters_only_and_nothing_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    r = Renderer(out, tty=False, clock=clock, quiet=5.0, every=30.0)
    clock.now += 6
    for i in range(1, 101):
        r.update(f"{i}/100", i / 100)
        clock.now += 0.01
    r.clear()
    assert out.getvalue().splitlines() == ["25/100", "50/100", "75/100"]


def test_log_prints_nothing_for_a_short_step() -> None:
    out, clock = io.StringIO(), Clock()
    r = Renderer(out, tty=False, clock=clock, quiet=5.0)
    for i in range(1, 100):
        r.update(f"{i}/100", i / 100)
        clock.now += 0.04   # four seconds in all
    assert out.getvalue() == ""


def test_log_prints_a_slow_step_every_interval() -> None:
    out, clock = io.StringIO(), Clock()
    r = Renderer(out, tty=False, clock=clock, quiet=5.0, every=30.0)
    for i in range(100):
        r.update(f"{i}s", 0.001 * i)   # stays in the first quarter
        clock.now += 1
    assert out.getvalue().splitlines() == ["30s", "60s", "90s"]


def test_disabled_renderer_prints_nothing() -> None:
    out = io.StringIO()
    r = Renderer(out, tty=True, clock=Clock(), enabled=False)
    r.update("x", 0.5)
    r.clear()
    assert out.getvalue() == ""


def test_download_progress_bytes_rate_and_files() -> None:
    out, clock = io.StringIO(), Clock()
    d = DownloadProgress(Renderer(out, tty=True, clock=clock, interval=0))
    d.stdout_line("Need to get 34.5 MB of archives.")
    d.status_line("dlstatus:1:0.0000:Retrieving file 1 of 90")
    clock.now += 2
    d.status_line("dlstatus:45:50.0000:Retrieving file 45 of 90 (2s remaining)")
    shown = out.getvalue().split("\r\033[K")
    assert shown[-1] == "Downloading: 17.2 MB of 34.5 MB, 8.6 MB/s, file 45 of 90"


def test_download_progress_without_a_total_shows_percent() -> None:
    out = io.StringIO()
    d = DownloadProgress(Renderer(out, tty=True, clock=Clock(), interval=0), "Fetching lists")
    d.status_line("dlstatus:3:60.0000:Retrieving file 3 of 9")
    d.status_line("pmstatus:dpkg-exec:0.0000:Running dpkg")   # not a download: ignored
    assert out.getvalue().split("\r\033[K")[-1] == "Fetching lists: 60%, file 3 of 9"


def test_install_progress_counts_real_dpkg_stream() -> None:
    out = io.StringIO()
    p = InstallProgress(Renderer(out, tty=True, clock=Clock(), interval=0), total=2)
    for line in (DATA / "dpkg-status-fd.txt").read_text().splitlines():
        p.status_line(line)
    shown = [s for s in out.getvalue().split("\r\033[K") if s]
    assert shown[0] == "Packages: 1/2 unpacked, 0/2 set up"
    assert shown[-1] == "Packages: 2/2 unpacked, 2/2 set up"
    # libc-bin's trigger ran, but this step did not install it.
    assert p.configured == {"libgcc-s1", "hostname"}


def test_install_progress_in_a_log_is_a_few_lines_for_many_packages() -> None:
    out, clock = io.StringIO(), Clock()
    p = InstallProgress(Renderer(out, tty=False, clock=clock), total=400)
    clock.now += 10
    for i in range(400):
        p.status_line(f"status: pkg{i}: unpacked")
        clock.now += 0.02
    for i in range(400):
        p.status_line(f"status: pkg{i}: installed")
        clock.now += 0.02
    lines = out.getvalue().splitlines()
    assert lines == ["Packages: 200/400 unpacked, 0/400 set up", "Packages: 400/400 unpacked, 0/400 set up",
                     "Packages: 400/400 unpacked, 200/400 set up"]


def test_ticker_shows_elapsed_time() -> None:
    out, clock = io.StringIO(), Clock()
    t = Ticker(Renderer(out, tty=True, clock=clock, interval=0), "dracut")
    clock.now += 3.2
    t.tick()
    assert out.getvalue() == "\r\033[Kdracut: 3s"


# Noise filters


def test_nspawn_propagate_line_is_noise() -> None:
    # Printed by systemd-nspawn 252 (with --quiet) on a host whose PID 1 is not systemd.
    line = 'Attempted to remove disk file system under "/run/systemd/nspawn/propagate/bootimg.cache-final", ' \
           "and we can't allow that."
    assert is_noise(line)
    assert is_noise(line + "\n")


def test_dracut_firmware_class_line_is_noise() -> None:
    # dracut 059's /usr/bin/dracut on a kernel without firmware loader parameters.
    assert is_noise("/usr/bin/dracut: line 1056: /sys/module/firmware_class/parameters/path: "
                    "No such file or directory")
    assert is_noise("dracut: line 1056: /sys/module/firmware_class/parameters/path: No such file or directory")


@pytest.mark.parametrize("line", [
    "Failed to mount /etc/resolv.conf (type n/a) on /x/etc/resolv.conf (MS_BIND \"\"): No such file or directory",
    'Attempted to remove disk file system under "/var/lib/machines/x", and we can\'t allow that.',
    "dracut-install: ERROR: installing 'nonexisting'",
    "/usr/bin/dracut: line 1056: /sys/module/firmware_class/parameters/path: Permission denied",
    "dracut: FAILED: /usr/lib/dracut/dracut-install -D /var/tmp/dracut.x",
    "",
])
def test_real_errors_are_not_noise(line: str) -> None:
    assert not is_noise(line)


def test_noise_patterns_can_be_chosen() -> None:
    line = "dracut: line 1: /sys/module/firmware_class/parameters/path: No such file or directory"
    assert not is_noise(line, ["nspawn-propagate"])
    assert set(NOISE) == {"nspawn-propagate", "dracut-firmware_class"}


# Streaming runner


def test_run_streaming_hands_over_lines_and_the_status_fd() -> None:
    got: dict[str, list[str]] = {"out": [], "err": [], "status": []}
    script = ("import os, sys; print('one', flush=True); print('two', file=sys.stderr, flush=True); "
              "os.write({fd}, b'dlstatus:1:50:half\\n'); sys.stdout.write('tail')")
    proc = run_streaming(
        lambda fd: [sys.executable, "-c", script.format(fd=fd)],
        on_stdout=got["out"].append, on_stderr=got["err"].append, on_status=got["status"].append)
    assert proc.returncode == 0
    assert got == {"out": ["one", "tail"], "err": ["two"], "status": ["dlstatus:1:50:half"]}
    assert proc.stdout == "one\ntail" and proc.stderr == "two\n"


def test_run_streaming_reports_failure_and_ticks() -> None:
    ticks: list[int] = []
    proc = run_streaming([sys.executable, "-c", "import time; time.sleep(0.35); raise SystemExit(3)"],
                         tick=lambda: ticks.append(1), tick_interval=0.1)
    assert proc.returncode == 3
    assert len(ticks) >= 2


# dracut: the known noise goes, the rest stays


_FAKE_NSPAWN = """#!/bin/sh
# Stands in for systemd-nspawn running dracut: writes the initrd where dracut would, prints real lines.
for a in "$@"; do case "$a" in --directory=*) root="${a#--directory=}";; esac; done
echo initrd > "$root/var/tmp/mkosi-initrd.img"
# In a real build nspawn hands this line over on its stdout, ended by \r\n.
printf '/usr/bin/dracut: line 1056: /sys/module/firmware_class/parameters/path: No such file or directory\r\n'
echo "dracut: a line on stdout"
echo "dracut-install: Failed to find module 'nosuchmodule'" >&2
echo 'Attempted to remove disk file system under "/run/systemd/nspawn/propagate/root", and we cannot allow that.' >&2
q="'"
p=/run/systemd/nspawn/propagate/root
echo "Attempted to remove disk file system under \\"$p\\", and we can${q}t allow that." >&2
exit ${FAKE_EXIT:-0}
"""


@pytest.mark.parametrize("debug", [False, True])
def test_dracut_noise_is_dropped_unless_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capfd: pytest.CaptureFixture[str], debug: bool) -> None:
    from mkosi import log
    from mkosi.boot.initrd import run_dracut

    nspawn = tmp_path / "nspawn"
    nspawn.write_text(_FAKE_NSPAWN)
    nspawn.chmod(0o755)
    monkeypatch.setenv("MKOSI_NSPAWN_EXECUTABLE", str(nspawn))
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/dracut").write_text("")
    monkeypatch.setattr(log, "_state", {**log._state, "debug": debug})
    out = run_dracut(root, "6.1.0-1-amd64", tmp_path / "initrd", [], keep_unit=True)
    assert out.read_text() == "initrd\n"
    err = capfd.readouterr().err
    assert "Failed to find module 'nosuchmodule'" in err
    assert "dracut: a line on stdout" in err          # stdout is shown as well...
    assert "\r" not in err
    assert "we cannot allow that" in err            # not the exact known line: shown
    assert ("firmware_class" in err) == debug
    assert ("can't allow that" in err) == debug
    assert "done in" in err


def test_dracut_failure_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkosi.boot.initrd import run_dracut
    from mkosi.errors import CommandError

    nspawn = tmp_path / "nspawn"
    nspawn.write_text(_FAKE_NSPAWN)
    nspawn.chmod(0o755)
    monkeypatch.setenv("MKOSI_NSPAWN_EXECUTABLE", str(nspawn))
    monkeypatch.setenv("FAKE_EXIT", "1")
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/dracut").write_text("")
    with pytest.raises(CommandError, match="exit status 1") as e:
        run_dracut(root, "6.1.0-1-amd64", tmp_path / "initrd", [], keep_unit=True)
    assert "nosuchmodule" in str(e.value)


@pytest.mark.parametrize("debug", [False, True])
def test_script_output_loses_the_nspawn_propagate_line_unless_debug(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], debug: bool) -> None:
    from mkosi import log
    from mkosi.sandbox import Sandbox
    from mkosi.scripts import run_script_command

    script = tmp_path / "mkosi.postinst"
    line = "Attempted to remove disk file system under \"{}\", and we can't allow that.\n"
    (tmp_path / "lines").write_text(line.format("/run/systemd/nspawn/propagate/x") + line.format("/srv"))
    script.write_text(f"#!/bin/sh\necho before\ncat {tmp_path / 'lines'} >&2\necho after\n")
    script.chmod(0o755)
    monkeypatch.setattr(log, "_state", {**log._state, "debug": debug})
    run_script_command("postinstall script", script, [script], Sandbox())
    captured = capfd.readouterr()
    assert captured.out.splitlines()[0] == "before" and "after" in captured.out.splitlines()
    assert '"/srv", and we can\'t allow that.' in captured.out          # not the known line: kept
    assert ("nspawn/propagate/x" in captured.out + captured.err) == debug


def test_log_progress_is_off_with_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    from mkosi import log

    monkeypatch.setattr(log, "_state", {**log._state, "debug": True})
    with log.progress() as renderer:
        assert not renderer.enabled
    monkeypatch.setattr(log, "_state", {**log._state, "debug": False, "depth": 2, "prefix": "img: "})
    with log.progress() as renderer:
        assert renderer.enabled and renderer.prefix == "img:     "
