"""What a packager ships: the version, the man page made from mkosi.md, the wheel and the sdist."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

from mkosi import __version__
from tests.markers import needs_tools

TOP = Path(__file__).resolve().parents[2]


def md2man() -> ModuleType:
    spec = importlib.util.spec_from_file_location("md2man", TOP / "tools" / "md2man.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version_scheme_is_not_an_upstream_release() -> None:
    # Upstream mkosi's releases are plain integers 1, 2, ... (and 15.0.0-like spellings of them); ours is 0.N.
    assert re.fullmatch(r"0\.[1-9][0-9]*", __version__), __version__
    pyproject = (TOP / "pyproject.toml").read_text()
    # Written in one place: pyproject reads it from mkosi/__init__.py.
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.MULTILINE)
    assert 'version = { attr = "mkosi.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.MULTILINE)


def test_md2man_constructs() -> None:
    page = md2man().convert(
        "% tool(8)\n% someone\n% 2026\n\n# NAME\n\ntool - does `a-b` *it*\n\n## Sub\n\n"
        "`Key=`, `-k`\n\n: Body **bold**\n  more.\n\n  * `x`: one\n  * y\n\n  After.\n\n"
        "| a | b |\n|---|---|\n| `c` | d |\n\n```sh\n.dot\n  x\\y\n```\n\n1. first\n2. second\n",
        "0.1",
    )
    assert page.startswith("'\\\" t\n.TH \"TOOL\" \"8\" \"2026\" \"tool 0.1\"")
    assert '.SH "NAME"' in page and '.SS "Sub"' in page
    assert "tool \\- does \\fBa\\-b\\fR \\fIit\\fR" in page
    assert ".TP\n\\fBKey=\\fR, \\fB\\-k\\fR\nBody \\fBbold\\fR more." in page
    assert ".RS\n.IP \\(bu 4\n\\fBx\\fR: one\n.IP \\(bu 4\ny\n.RE\n.IP\nAfter." in page
    assert ".TS" in page and "\\fBc\\fR" in page and ".TE" in page
    assert ".nf\n\\&.dot\n  x\\ey\n.fi" in page
    assert ".IP 1. 4\nfirst\n.IP 2. 4\nsecond" in page


@needs_tools("groff")
def test_man_page_renders_without_errors(tmp_path: Path) -> None:
    man = tmp_path / "mkosi.1"
    man.write_text(md2man().convert((TOP / "mkosi.md").read_text(), __version__))
    proc = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-ww", "-z", str(man)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    # Only line-breaking hints of narrow table cells are acceptable.
    problems = [line for line in proc.stderr.splitlines() if "can't break line" not in line]
    assert not problems, problems
    text = subprocess.run(["groff", "-t", "-man", "-Tutf8", str(man)], capture_output=True, text=True,
                          check=True).stdout
    text = re.sub(r".\x08", "", text)
    assert "SecureBootKey=" in text and "mkosi — make bespoke" in text


def copy_source(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.pyc")
    shutil.copytree(TOP, target, ignore=ignore)
    return target


def build(src: Path, kind: str, out: Path) -> Path:
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out / proc.stdout.strip().splitlines()[-1]


def test_wheel_and_sdist(tmp_path: Path) -> None:
    src = copy_source(tmp_path / "src")
    (src / "mkosi" / "resources" / "mkosi.1").unlink(missing_ok=True)
    (src / "mkosi" / "resources" / "mkosi.md").unlink(missing_ok=True)
    # The man page must follow the manual being packaged, not a page made earlier.
    with (src / "mkosi.md").open("a") as f:
        f.write("\n# PACKAGING CHECK\n\nThis paragraph exists only in this copy.\n")
    expected = md2man().convert((src / "mkosi.md").read_text(), __version__)
    wheel = build(src, "wheel", tmp_path / "dist")
    sdist = build(src, "sdist", tmp_path / "dist")
    assert wheel.name == f"mkosi-{__version__}-py3-none-any.whl"
    assert sdist.name == f"mkosi-{__version__}.tar.gz"

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"mkosi-{__version__}.dist-info/METADATA").decode()
    assert f"mkosi-{__version__}.data/data/share/man/man1/mkosi.1" in names
    assert "mkosi/__main__.py" in names and "mkosi/resources/mkosi.1" in names
    # The Markdown manual, which `mkosi documentation` shows where man is missing.
    assert "mkosi/resources/mkosi.md" in names
    # The built-in configurations, with the profiles of the default tools tree.
    assert "mkosi/resources/builtin/mkosi-tools/mkosi.conf.d/10-debian.conf" in names
    assert "mkosi/resources/builtin/mkosi-tools/mkosi.profiles/runtime/mkosi.conf.d/10-debian.conf" in names
    assert f"Version: {__version__}\n" in metadata
    assert "Classifier: Programming Language :: Python :: 3.11" in metadata
    assert "Requires-Python:" in metadata

    with tarfile.open(sdist) as tf:
        members = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    for wanted in ("mkosi.md", "MANIFEST.in", "docs/architecture.md", "tools/md2man.py",
                   "tools/install-host-deps", "tests/unit/test_packaging.py", "tests/unit/conftest.py",
                   "mkosi/resources/mkosi.1", "pyproject.toml", "setup.py", "LICENSE"):
        assert wanted in members, wanted
    assert not any("__pycache__" in m for m in members)

    # Installing either puts mkosi(1) where man finds it.
    for artifact in (wheel, sdist):
        prefix = tmp_path / f"prefix-{artifact.suffix}"
        # --ignore-installed: the same version may be installed in this environment already (CI installs it).
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                               "--ignore-installed", "--no-index", "--prefix", str(prefix), str(artifact)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert (prefix / "share/man/man1/mkosi.1").read_text() == expected
