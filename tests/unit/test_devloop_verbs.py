"""The verbs documentation, completion, latest-snapshot, sysupdate and help."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi import verbs
from mkosi.config.enums import Verb
from mkosi.config.parse import VERB_HELP
from tests.unit.conftest import run_main as run
from tests.unit.conftest import write

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("fixed_host")


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.lstrip().startswith("Hint:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- help ----

def test_help_lists_every_verb_with_its_line(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("help") == 0
    out = capsys.readouterr().out
    for verb in Verb:
        assert any(line.split()[:1] == [verb.value] and VERB_HELP[verb] in line for line in out.splitlines()), verb
    for new in ("documentation", "completion", "latest-snapshot", "sysupdate"):
        assert f"\n  {new} " in out


# ---- documentation ----

@pytest.fixture
def manual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package directory with an installed man page and Markdown manual."""
    package = tmp_path / "pkg" / "mkosi"
    write(package / "resources" / "mkosi.1", ".TH MKOSI 1\n.SH NAME\nmkosi\n")
    write(package / "resources" / "mkosi.md", "% mkosi(1)\n\n# NAME\n\nthe packaged manual\n")
    monkeypatch.setattr(verbs, "PACKAGE_DIR", package)
    return package


def fake_man(bindir: Path, log: Path, code: int = 0) -> None:
    executable(bindir / "man", f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\nexit {code}\n')


def test_documentation_uses_man_with_the_installed_page(wd: Path, manual: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    bindir, log = tmp_path / "bin", tmp_path / "man.args"
    fake_man(bindir, log, code=3)
    monkeypatch.setenv("PATH", str(bindir))
    assert run("documentation") == 3   # man's exit status is mkosi's
    assert log.read_text().split() == ["--local-file", str(manual / "resources" / "mkosi.1")]
    assert run("documentation", "mkosi") == 3


def test_documentation_without_man_prints_the_markdown(wd: Path, manual: Path, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run("documentation") == 0
    assert capsys.readouterr().out == (manual / "resources" / "mkosi.md").read_text()


def test_documentation_of_a_checkout_is_its_mkosi_md(wd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # No man page was built here: the Markdown next to the package is shown, even with man installed.
    package = tmp_path / "checkout" / "mkosi"
    package.mkdir(parents=True)
    write(package.parent / "mkosi.md", "# NAME\n\nthe checkout's manual\n")
    monkeypatch.setattr(verbs, "PACKAGE_DIR", package)
    fake_man(tmp_path / "bin", tmp_path / "man.args")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert run("documentation") == 0
    assert "the checkout's manual" in capsys.readouterr().out
    assert not (tmp_path / "man.args").exists()


def test_documentation_of_this_source_tree(wd: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run("documentation") == 0
    assert capsys.readouterr().out == (REPO / "mkosi.md").read_text()


def test_documentation_refuses_other_manuals(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("documentation", "mkosi-initrd") == 1
    assert "not part of this implementation" in one_error(capsys.readouterr().err)
    assert run("documentation", "frobnicate") == 1
    assert "usage: mkosi documentation" in one_error(capsys.readouterr().err)


def test_documentation_without_any_manual(wd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(verbs, "PACKAGE_DIR", tmp_path / "nothing" / "mkosi")
    assert run("documentation") == 1
    assert "the manual is not installed" in one_error(capsys.readouterr().err)


# ---- completion ----

def mkosi_wrapper(bindir: Path) -> Path:
    """A `mkosi` command that runs this source tree, for the shells' completion functions to call."""
    return executable(bindir / "mkosi", f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m mkosi "$@"\n')


def completion_script(shell: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mkosi", "completion", shell], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bash_completion_script_completes_verbs(tmp_path: Path) -> None:
    pytest.importorskip("argcomplete")
    script = tmp_path / "mkosi.bash"
    script.write_text(completion_script("bash"))
    mkosi_wrapper(tmp_path / "bin")
    line = "mkosi latest-"
    probe = f"""
source {script}
complete -p mkosi
COMP_LINE="{line}"; COMP_POINT={len(line)}; COMP_WORDS=(mkosi latest-); COMP_CWORD=1
_python_argcomplete mkosi latest- mkosi
printf 'reply:%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "_python_argcomplete mkosi" in proc.stdout
    assert [r.strip() for r in proc.stdout.split("reply:")[1:]] == ["latest-snapshot"]


def test_zsh_and_fish_scripts_name_mkosi() -> None:
    pytest.importorskip("argcomplete")
    assert completion_script("zsh").startswith("#compdef mkosi")
    assert "complete --command mkosi" in completion_script("fish")


def test_fish_protocol_completes_verbs(tmp_path: Path) -> None:
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    line = "mkosi sysup"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "fish", "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_DFS": "\t",
           "_ARGCOMPLETE_SUPPRESS_SPACE": "1", "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    proc = subprocess.run([sys.executable, "-m", "mkosi"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [c.split("\t")[0] for c in out.read_text().split("\n") if c] == ["sysupdate"]


def test_completion_needs_a_known_shell(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("completion") == 1
    assert "usage: mkosi completion bash|zsh|fish" in one_error(capsys.readouterr().err)
    assert run("completion", "tcsh") == 1
    assert "usage: mkosi completion" in one_error(capsys.readouterr().err)


# ---- latest-snapshot ----

class Snapshots(http.server.BaseHTTPRequestHandler):
    """A stand-in for snapshot.debian.org's machine-readable interface."""

    body = b""
    paths: list[str] = []

    def do_GET(self) -> None:
        Snapshots.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(Snapshots.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def snapshot_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Snapshots)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Snapshots.paths = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def debian(wd: Path, mirror: str) -> None:
    write(wd / "mkosi.default", f"[Distribution]\nDistribution=debian\nRelease=bookworm\nMirror={mirror}\n")


def test_latest_snapshot_of_debian(wd: Path, snapshot_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    Snapshots.body = json.dumps({"_api": "0.3", "result": {
        "debian": ["20240101T000000Z", "20241202T091500Z", "20240615T120000Z", "not-a-stamp"]}}).encode()
    debian(wd, snapshot_server)
    assert run("latest-snapshot") == 0
    assert capsys.readouterr().out == "20241202T091500Z\n"
    assert Snapshots.paths == ["/mr/timestamp/?archive=debian"]


def test_latest_snapshot_with_a_broken_answer(wd: Path, snapshot_server: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    debian(wd, snapshot_server)
    Snapshots.body = b"<html>maintenance</html>"
    assert run("latest-snapshot") == 1
    assert "did not answer with JSON" in one_error(capsys.readouterr().err)
    Snapshots.body = json.dumps({"result": {"debian": []}}).encode()
    assert run("latest-snapshot") == 1
    assert "lists no snapshots" in one_error(capsys.readouterr().err)


def test_latest_snapshot_unreachable_is_a_clear_error(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    debian(wd, f"http://127.0.0.1:{port}")
    assert run("latest-snapshot") == 1
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}/mr/timestamp/" in one_error(err)
    assert "needs network access" in err


def test_latest_snapshot_default_mirror_is_snapshot_debian_org(wd: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    urls: list[str] = []

    def fake_fetch(url: str) -> object:
        urls.append(url)
        return {"result": {"debian": ["20250101T000000Z"]}}

    monkeypatch.setattr(verbs, "fetch_json", fake_fetch)
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\nRelease=bookworm\n")
    assert run("latest-snapshot") == 0
    assert urls == ["https://snapshot.debian.org/mr/timestamp/?archive=debian"]


def test_latest_snapshot_of_other_distributions_is_not_implemented(wd: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=fedora\nRelease=40\n")
    assert run("latest-snapshot") == 1
    assert "not implemented yet for fedora" in one_error(capsys.readouterr().err)


# ---- sysupdate ----

def sysupdate_project(wd: Path, tools: Path) -> None:
    write(wd / "mkosi.default", f"[Output]\nFormat=directory\nOutputDirectory=mkosi.output\n\n"
                                f"[Host]\nExtraSearchPaths={tools}\n")
    (wd / "mkosi.output").mkdir()
    write(wd / "mkosi.sysupdate" / "10-root.transfer", "[Source]\nType=regular-file\nPath=/\n")


def test_sysupdate_runs_systemd_sysupdate_with_the_definitions(wd: Path, tmp_path: Path) -> None:
    tools, log = tmp_path / "tools", tmp_path / "sysupdate.args"
    executable(tools / "systemd-sysupdate", f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\nexit 5\n')
    sysupdate_project(wd, tools)
    assert run("sysupdate", "--", "list", "--json=short") == 5
    assert log.read_text().splitlines() == [f"--transfer-source={wd / 'mkosi.output'}",
                                            f"--definitions={wd / 'mkosi.sysupdate'}", "list", "--json=short"]
    assert run("sysupdate", "list") == 5
    assert log.read_text().splitlines()[2:] == ["list"]


def test_sysupdate_without_the_tool(wd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "empty").mkdir()
    sysupdate_project(wd, tmp_path / "tools")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(verbs, "SYSUPDATE_LIBEXEC", str(tmp_path / "nowhere" / "systemd-sysupdate"))
    monkeypatch.setattr("mkosi.sandbox.SYSTEM_BIN_DIRS", ())
    assert run("sysupdate") == 1
    err = capsys.readouterr().err
    assert "systemd-sysupdate was not found" in one_error(err) and "Hint:" in err


def test_sysupdate_finds_the_libexec_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkosi.sandbox import Sandbox

    tree = tmp_path / "tree"
    executable(tree / "usr/lib/systemd/systemd-sysupdate", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("mkosi.sandbox.SYSTEM_BIN_DIRS", ())
    assert verbs.find_sysupdate(Sandbox(tools=tree)) == "/usr/lib/systemd/systemd-sysupdate"


def test_sysupdate_needs_definitions(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=directory\n")
    assert run("sysupdate") == 1
    assert "SysupdateDirectory=" in one_error(capsys.readouterr().err)
