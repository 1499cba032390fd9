"""Build a real Debian bookworm root with mkosi.installers.apt (needs root and deb.debian.org).

Run with: MKOSI_INTEGRATION=1 pytest -m integration tests/integration/test_apt_install.py
The package cache persists in $MKOSI_TEST_CACHE (default /var/cache/mkosi-tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi.errors import MkosiError
from mkosi.installers import apt
from mkosi.installers.apt.chroot import HELPER_DIR, open_chroot
from mkosi.installers.apt.hostapt import HostApt

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.getuid() != 0 or os.environ.get("MKOSI_INTEGRATION") != "1",
        reason="needs root and MKOSI_INTEGRATION=1",
    ),
]


def cache_dir() -> Path:
    return Path(os.environ.get("MKOSI_TEST_CACHE", "/var/cache/mkosi-tests"))


def bookworm(root: Path, workspace: Path, **kwargs: object) -> apt.AptConfig:
    workspace.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "root": root,
        "distribution": "debian",
        "release": "bookworm",
        "mirror": "http://deb.debian.org/debian",
        "components": ["main"],
        "extra_repositories": [],
        "architecture": "amd64",
        "cache_dir": cache_dir(),
        "workspace": workspace,
        "with_docs": False,
    }
    values.update(kwargs)
    return apt.AptConfig(**values)  # type: ignore[arg-type]


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


@pytest.fixture(scope="module")
def built_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("apt")
    root = base / "root"
    apt.install(bookworm(root, base / "ws"), ["systemd", "udev"])
    yield root


def test_os_release(built_root: Path) -> None:
    os_release = (built_root / "usr/lib/os-release").read_text()
    assert "VERSION_CODENAME=bookworm" in os_release
    assert (built_root / "etc/os-release").exists()


def test_packages_installed(built_root: Path) -> None:
    packages = {p.name: p for p in apt.installed_packages(built_root)}
    assert "systemd" in packages
    assert "udev" in packages
    assert packages["systemd"].source == "systemd"
    assert packages["systemd"].installed_size > 1024 * 1024
    assert all(p.status == "installed" for p in packages.values())
    # What we chose: the essential set plus the request, no apt and no Priority: required extras.
    assert "apt" not in packages
    assert "usr-is-merged" in packages and "usrmerge" not in packages


def test_maintainer_scripts_ran(built_root: Path) -> None:
    # systemd's postinst creates its system users.
    assert "systemd-network:" in (built_root / "etc/passwd").read_text()
    assert (built_root / "etc/ld.so.cache").exists()


def test_hwdb_compiled_once_at_the_end(built_root: Path) -> None:
    # udev's postinst asks for it during dpkg's runs; mkosi runs it after the last one.
    hwdb = built_root / "usr/lib/udev/hwdb.bin"
    assert hwdb.stat().st_size > 1024 * 1024
    proc = subprocess.run(["systemd-hwdb", "--root", str(built_root), "query", "usb:v1D6Bp0002"],
                          capture_output=True, text=True)
    assert "Linux Foundation" in proc.stdout, proc.stderr


def test_python_standard_library_byte_compiled(tmp_path: Path) -> None:
    """The py_compile runs of python3.11-minimal's and python3.11's postinsts happen in the background, and
    the py3compile runs after the last dpkg run; every file they name is compiled, and the dpkg database
    keeps the postinsts as the packages have them."""
    root = tmp_path / "root"
    apt.install(bookworm(root, tmp_path / "ws"), ["python3"])
    assert all(p.status == "installed" for p in apt.installed_packages(root))
    for package in ("libpython3.11-minimal", "libpython3.11-stdlib"):
        [listing] = (root / "var/lib/dpkg/info").glob(f"{package}*.list")
        sources = [line for line in listing.read_text().splitlines()
                   if line.startswith("/usr/lib/python3.11/") and line.endswith(".py")
                   and not line.endswith("/sitecustomize.py")]   # a symlink into /etc, left out
        assert len(sources) > 100
        missing = [s for s in sources
                   if not (root / s[1:]).parent.joinpath("__pycache__", f"{Path(s).stem}.cpython-311.pyc").is_file()]
        assert missing == []
    # What python3-minimal's and python3's postinsts have py3compile compile (after the last dpkg run).
    debpython = root / "usr/share/python3/debpython"
    compiled = sorted(p.name.split(".")[0] + ".py" for p in (debpython / "__pycache__").iterdir())
    debpython_sources = sorted(p.name for p in debpython.glob("*.py"))
    assert debpython_sources and compiled == debpython_sources
    for name in ("python3.11-minimal", "python3.11"):
        text = (root / f"var/lib/dpkg/info/{name}.postinst").read_text()
        assert "/usr/bin/python3.11 -E -S /usr/lib/python3.11/py_compile.py $files" in text
        assert "mkosi" not in text
    assert not (root / HELPER_DIR).exists()
    proc = subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(root),
                           "python3", "-c", "import json, email.mime.text; print('ok')"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_only_copyright_files_in_docs(built_root: Path) -> None:
    doc = built_root / "usr/share/doc"
    others = [p for p in doc.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "copyright"]
    assert others == []
    assert (doc / "systemd/copyright").is_file()
    assert not any(p.is_file() for p in (built_root / "usr/share/man").rglob("*"))
    assert (built_root / "etc/dpkg/dpkg.cfg.d" / apt.DOCS_CONFIG_NAME).exists()


def test_nothing_left_behind(built_root: Path) -> None:
    assert mounts_below(built_root) == []
    assert not (built_root / ".mkosi-apt").exists()
    assert not (built_root / "usr/sbin/policy-rc.d").exists()
    for d in ("proc", "sys", "dev"):
        assert list((built_root / d).iterdir()) == []


def test_sources_list(built_root: Path) -> None:
    text = (built_root / "etc/apt/sources.list").read_text()
    for line in apt.repository_lines(bookworm(built_root, built_root.parent / "ws")):
        assert line in text


def test_systemd_runs_in_nspawn(built_root: Path) -> None:
    proc = subprocess.run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(built_root),
         "systemctl", "--version"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("systemd 252")


def test_warm_build_downloads_nothing(built_root: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    apt.install(bookworm(tmp_path / "root", tmp_path / "ws"), ["systemd", "udev"])
    err = capsys.readouterr().err
    assert "Need to get 0 B" in err
    assert {p.name for p in apt.installed_packages(tmp_path / "root")} == \
        {p.name for p in apt.installed_packages(built_root)}


def test_offline_build_uses_cached_lists(built_root: Path, tmp_path: Path) -> None:
    apt.install(bookworm(tmp_path / "root", tmp_path / "ws", network=False), ["systemd"])
    assert "systemd" in {p.name for p in apt.installed_packages(tmp_path / "root")}


def test_install_more_and_remove(built_root: Path, tmp_path: Path) -> None:
    cfg = bookworm(built_root, tmp_path / "ws")
    apt.install_more(cfg, ["less"])
    assert (built_root / "usr/bin/less").exists()
    assert "less" in {p.name for p in apt.installed_packages(built_root)}
    apt.remove(cfg, ["less", "not-installed-anyway"])
    assert not (built_root / "usr/bin/less").exists()
    assert "less" not in {p.name for p in apt.installed_packages(built_root)}
    assert mounts_below(built_root) == []


def host_processes(argv: list[str]) -> list[int]:
    wanted = "\0".join(argv).encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == wanted:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_chroot_sandbox_stops_leftovers_and_preloads_eatmydata(built_root: Path) -> None:
    """What a maintainer script leaves running dies with dpkg; libeatmydata is loaded by the root's
    programs when the host has it; ischroot says yes; nothing stays in or mounted on the root."""
    cfg = bookworm(built_root, built_root.parent / "ws")
    hostapt = HostApt(cfg=cfg, conf=Path("/nonexistent"), lists=Path("/nonexistent"),
                      archives=cache_dir() / "apt/archives", uncompressed=cache_dir() / "apt/uncompressed",
                      status=Path("/nonexistent"))
    with open_chroot(cfg, hostapt) as chroot:
        # The sandbox's PID namespace must not make maintainer scripts take it for a booted system.
        assert chroot.run(["sh", "-c", "ischroot"], check=False).returncode == 0
        proc = chroot.run(["sh", "-c", "sleep 4711 >/dev/null 2>&1 & grep -c libeatmydata /proc/self/maps || true"])
        # bubblewrap returns as soon as the command exits; the rest of its PID namespace is killed
        # right after that, asynchronously.
        deadline = time.monotonic() + 5
        while (leftovers := host_processes(["sleep", "4711"])) and time.monotonic() < deadline:
            time.sleep(0.01)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert leftovers == []
        if Path("/usr/lib/x86_64-linux-gnu/libeatmydata.so.1").exists():
            assert proc.stdout.strip() != "0", proc.stderr
        assert proc.stderr == ""
    assert mounts_below(built_root) == []
    assert not (built_root / HELPER_DIR).exists()


def test_unknown_package(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="no-such-package-mkosi"):
        apt.install(bookworm(tmp_path / "root", tmp_path / "ws"), ["systemd", "no-such-package-mkosi"])
    assert mounts_below(tmp_path / "root") == []


def test_unknown_release(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="release 'mkosi-no-such-release' not found on mirror"):
        apt.install(bookworm(tmp_path / "root", tmp_path / "ws", release="mkosi-no-such-release",
                             cache_dir=None), [])
