"""Build real Debian images with `mkosi build` and inspect them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

EPOCH = "1700000000"


def write_project(d: Path, cache: Path, extra_settings: str = "") -> None:
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Hostname=mkosi-test
ImageId=testimg
ImageVersion=1.2
ManifestFormat=json,changelog,spdx,cyclonedx

[Content]
Packages=systemd,udev
Cache={cache}
RemoveFiles=/usr/share/bug /etc/skel-remove-me
ExtraTree={d / "mkosi.extra"},{d / "owned.tar"}
{extra_settings}
[Validation]
Checksum=yes
""")
    skel = d / "mkosi.skeleton"
    (skel / "etc").mkdir(parents=True, exist_ok=True)
    (skel / "etc/skel-marker").write_text("from the skeleton\n")
    (skel / "etc/skel-remove-me").write_text("x\n")
    extra = d / "mkosi.extra"
    (extra / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    hello = extra / "usr/local/bin/hello"
    hello.write_text("#!/bin/sh\necho hello from extra\n")
    hello.chmod(0o755)
    os.chown(hello, 1000, 1000)  # a directory tree's files end up owned by root
    # Debian's var/run is a link to /run: this file must land in the image's /run, never the host's.
    (extra / "var/run").mkdir(parents=True, exist_ok=True)
    (extra / "var/run/mkosi-escape-test").write_text("inside\n")
    # A tar archive keeps its owners and modes.
    src = d / "owned"
    (src / "srv/owned").mkdir(parents=True, exist_ok=True)
    f = src / "srv/owned/file"
    f.write_text("owned by 1234\n")
    f.chmod(0o640)
    os.chown(f, 1234, 1234)
    with tarfile.open(d / "owned.tar", "w") as t:
        t.add(src / "srv", arcname="srv")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("debian-project", numbered=True)
    write_project(d, package_cache)
    # Runs in systemd-nspawn, which on this host (PID 1 is not systemd) prints its "propagate" line.
    postinst = d / "mkosi.postinst"
    postinst.write_text("#!/bin/sh\necho \"postinst ran in $container\"\n"
                        "echo \"$MKOSI_CONFIGURED\" > /etc/mkosi-configured\n")
    postinst.chmod(0o755)
    # ConfigureScripts=: the script's change (an Environment= entry) reaches the postinst script.
    configure = d / "mkosi.configure"
    configure.write_text("#!/usr/bin/python3\nimport json, sys\nc = json.load(sys.stdin)\n"
                         "c[\"Environment\"] = c[\"Environment\"] + [\"MKOSI_CONFIGURED=yes\"]\n"
                         "json.dump(c, sys.stdout)\n")
    configure.chmod(0o755)
    # SandboxTrees=: a new file in /etc makes every host-side tool of the build (apt included) run with
    # /etc merged in a tmpfs; the sync script, which runs in that sandbox too, sees the file.
    (d / "mkosi.sandbox/etc").mkdir(parents=True)
    (d / "mkosi.sandbox/etc/mkosi-sandbox-marker").write_text("from the sandbox tree\n")
    sync = d / "mkosi.sync"
    sync.write_text("#!/bin/sh\ncat /etc/mkosi-sandbox-marker > \"$SRCDIR/sandbox-seen\"\n")
    sync.chmod(0o755)
    (d / "mkosi.output").mkdir()
    return d


@pytest.fixture(scope="module")
def directory_build(project: Path) -> subprocess.CompletedProcess[str]:
    return run_mkosi(project, "-t", "directory", "build")


@pytest.fixture(scope="module")
def directory_image(project: Path, directory_build: subprocess.CompletedProcess[str]) -> Path:
    return project / "mkosi.output" / "testimg_1.2"


def dpkg_packages(root: Path) -> dict[str, str]:
    pkgs: dict[str, str] = {}
    name = status = None
    for line in (root / "var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Status: "):
            status = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name and status == "install ok installed":
            pkgs[name] = line.split(": ", 1)[1]
    return pkgs


def _step_lines(log: str, start: str) -> tuple[list[str], float]:
    """The lines logged by the step whose title starts with `start` (not its nested steps' own title
    and done lines), and its duration."""
    lines = log.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(f"‣ {start}"))
    title = lines[first].strip()[2:].rstrip("…")
    last = next(i for i in range(first, len(lines)) if lines[i].strip().startswith(f"{title} done in "))
    duration = float(lines[last].strip().rsplit(" ", 1)[1].rstrip("s"))
    return [line.strip() for line in lines[first + 1:last]], duration


def test_build_log_shows_progress_and_hides_tool_noise(directory_build: subprocess.CompletedProcess[str]) -> None:
    """Not a terminal: a few progress lines per step (never one per package), no in-place rewriting, and
    none of the known noise of the tools (nspawn's "propagate" line, dracut's firmware_class line)."""
    log = directory_build.stderr
    assert "\r" not in log and "\033[K" not in log
    install_steps = list(re.finditer(r"‣ (Installing \d+ (?:essential|more) packages)…", log))
    assert len(install_steps) == 2, log
    for m in install_steps:
        lines, duration = _step_lines(log, m.group(1))
        total = int(m.group(1).split()[1])
        progress = [line for line in lines if line.startswith("Packages: ")]
        assert 1 <= len(progress) <= 3 + int(duration // 30), (m.group(1), lines)
        counts = []
        for line in progress:
            pm = re.fullmatch(r"Packages: (\d+)/(\d+) unpacked, (\d+)/(\d+) set up", line)
            assert pm is not None, line
            unpacked, t1, configured, t2 = map(int, pm.groups())
            assert t1 == t2 == total and configured <= unpacked <= total
            counts.append(unpacked + configured)
        assert counts == sorted(counts) and counts[-1] < 2 * total   # the 100% line is the "done" line
    lines, duration = _step_lines(log, "Resolving and downloading packages")
    need = next(line for line in lines if line.startswith("Need to get "))
    downloads = [line for line in lines if line.startswith("Downloading: ")]
    if need.startswith("Need to get 0 B"):
        assert downloads == [], lines
    else:
        assert 1 <= len(downloads) <= 3 + int(duration // 30), lines
        for line in downloads:
            assert re.fullmatch(r"Downloading: [\d.]+ [kMG]?B of [\d.]+ [kMG]?B(, [\d.]+ [kMG]?B/s)?, "
                                r"file \d+ of \d+", line), line
        assert any(line.startswith("Fetched ") for line in lines), lines
    assert "postinst ran in systemd-nspawn" in directory_build.stdout + log
    assert "propagate" not in log and "propagate" not in directory_build.stdout
    assert "firmware_class" not in log


def test_configure_script_and_sandbox_tree(project: Path, directory_image: Path) -> None:
    assert (directory_image / "etc/mkosi-configured").read_text() == "yes\n"
    assert (project / "sandbox-seen").read_text() == "from the sandbox tree\n"
    assert not Path("/etc/mkosi-sandbox-marker").exists()
    assert not (directory_image / "etc/mkosi-sandbox-marker").exists()


def test_directory_os_release_and_hostname(directory_image: Path) -> None:
    osr = (directory_image / "etc/os-release").read_text()
    assert 'VERSION_CODENAME=bookworm' in osr
    assert "IMAGE_ID=testimg" in osr and "IMAGE_VERSION=1.2" in osr
    assert (directory_image / "etc/hostname").read_text().strip() == "mkosi-test"


def test_directory_packages(directory_image: Path) -> None:
    pkgs = dpkg_packages(directory_image)
    for p in ("systemd", "udev", "dbus", "base-files", "dpkg"):
        assert p in pkgs, p
    # WithRecommends=no (the default): what systemd and bash only recommend is not there.
    assert "systemd-timesyncd" not in pkgs and "bash-completion" not in pkgs


def test_firstboot_settings_and_recommends(project: Path, tmp_path: Path) -> None:
    """Locale=, LocaleMessages=, Keymap=, Timezone=, RootShell= and WithRecommends=yes in a real image
    (a build of its own, into another output directory: the shared image stays as it is)."""
    out = tmp_path / "out"
    out.mkdir()
    proc = run_mkosi(project, "-f", "-t", "directory", f"--output-dir={out}", "-p", "tzdata", "--with-recommends",
                     "--locale=de_DE.UTF-8", "--locale-messages=C.UTF-8", "--keymap=de-latin1",
                     "--timezone=Europe/Berlin", "--root-shell=/bin/bash", "build")
    assert "Applying first boot settings" in proc.stderr
    image = out / "testimg_1.2"
    assert (image / "etc/locale.conf").read_text() == "LANG=de_DE.UTF-8\nLC_MESSAGES=C.UTF-8\n"
    assert "KEYMAP=de-latin1\n" in (image / "etc/vconsole.conf").read_text()
    assert os.readlink(image / "etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert (image / "etc/localtime").read_bytes().startswith(b"TZif")
    root = next(line for line in (image / "etc/passwd").read_text().splitlines() if line.startswith("root:"))
    assert root.split(":")[6] == "/bin/bash"
    assert (image / "usr/lib/credstore/firstboot.timezone").read_text() == "Europe/Berlin"
    pkgs = dpkg_packages(image)
    # Recommended by systemd and by bash (essential): installed with WithRecommends=yes.
    assert "systemd-timesyncd" in pkgs and "bash-completion" in pkgs, sorted(pkgs)
    # --timezone=off: nspawn would otherwise give the container the host's time zone.
    proc2 = subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--timezone=off",
                            "-D", str(image), "sh", "-c", "date +%Z; getent passwd root"],
                           capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    zone, entry = proc2.stdout.split()[:2]
    assert zone in ("CET", "CEST") and entry.endswith(":/bin/bash"), proc2.stdout


def test_directory_trees(directory_image: Path) -> None:
    assert (directory_image / "etc/skel-marker").read_text() == "from the skeleton\n"
    hello = directory_image / "usr/local/bin/hello"
    st = hello.stat()
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert st.st_mode & 0o777 == 0o755
    owned = (directory_image / "srv/owned/file").stat()
    assert (owned.st_uid, owned.st_gid, owned.st_mode & 0o777) == (1234, 1234, 0o640)


def test_directory_no_docs_and_removed_files(directory_image: Path) -> None:
    docs = [p for p in (directory_image / "usr/share/doc").rglob("*") if p.is_file()]
    assert docs, "copyright files are kept"
    assert all(p.name == "copyright" for p in docs), [str(p) for p in docs if p.name != "copyright"][:5]
    assert not any((directory_image / "usr/share/man").rglob("*.gz"))
    assert not (directory_image / "usr/share/bug").exists()
    assert not (directory_image / "etc/skel-remove-me").exists()


def test_directory_root_locked_and_no_machine_id(directory_image: Path) -> None:
    root = next(line for line in (directory_image / "etc/shadow").read_text().splitlines()
                if line.startswith("root:"))
    assert root.split(":")[1].startswith(("!", "*"))
    assert (directory_image / "etc/machine-id").read_text() == ""


def test_directory_manifests(project: Path, directory_image: Path) -> None:
    manifest = json.loads((project / "mkosi.output/testimg_1.2.manifest").read_text())
    assert manifest["config"]["distribution"] == "debian"
    by_name = {p["name"]: p for p in manifest["packages"]}
    installed = dpkg_packages(directory_image)
    assert set(by_name) == set(installed)
    assert by_name["systemd"]["version"] == installed["systemd"]
    assert by_name["systemd"]["architecture"] == "amd64"
    assert by_name["systemd"]["size"] > 0
    changelog = (project / "mkosi.output/testimg_1.2.changelog").read_text()
    assert f"systemd {installed['systemd']}" in changelog


def test_directory_sboms(project: Path, directory_image: Path, tmp_path: Path) -> None:
    installed = dpkg_packages(directory_image)
    spdx_path = project / "mkosi.output/testimg_1.2.spdx.json"
    assert validate_full_spdx_document(parse_file(str(spdx_path))) == []
    spdx = json.loads(spdx_path.read_text())
    by_name = {p["name"]: p for p in spdx["packages"][1:]}
    assert set(by_name) == set(installed)
    assert by_name["systemd"]["versionInfo"] == installed["systemd"]
    assert "LGPL-2.1-or-later" in by_name["systemd"]["licenseDeclared"], "read from its DEP-5 copyright file"
    assert "checksums" not in spdx["packages"][0], "a directory has no checksum"
    cdx_text = (project / "mkosi.output/testimg_1.2.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(cdx_text) is None
    cdx = json.loads(cdx_text)
    assert {c["name"] for c in cdx["components"]} == set(installed)
    udev = next(c for c in cdx["components"] if c["name"] == "udev")
    assert {"name": "mkosi:package:source", "value": "systemd"} in udev["properties"]


def test_directory_checksums(project: Path, directory_image: Path) -> None:
    sums = (project / "mkosi.output/SHA256SUMS").read_text().splitlines()
    names = {line.split("*", 1)[1]: line.split()[0] for line in sums}
    manifest = project / "mkosi.output/testimg_1.2.manifest"
    assert names["testimg_1.2.manifest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_directory_runs_in_nspawn(directory_image: Path) -> None:
    proc = subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(directory_image),
                           "systemctl", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("systemd ")


def test_refuses_to_overwrite(project: Path, directory_image: Path) -> None:
    proc = run_mkosi(project, "-t", "directory", "build", check=False)
    assert proc.returncode != 0
    assert "already exists" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (directory_image / "etc/os-release").exists()


def test_unknown_package_fails_clearly_and_keeps_output(project: Path, directory_image: Path) -> None:
    proc = run_mkosi(project, "-f", "-t", "directory", "-p", "no-such-package-mkosi", "build", check=False)
    assert proc.returncode != 0
    assert "no-such-package-mkosi" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (directory_image / "etc/os-release").exists(), "the previous output must survive a failed build"


def _tar_build(project: Path) -> bytes:
    run_mkosi(project, "-f", "-t", "tar", "build", env={"SOURCE_DATE_EPOCH": EPOCH})
    return (project / "mkosi.output/testimg_1.2.tar.xz").read_bytes()


def test_tar_output_and_reproducibility(project: Path, directory_image: Path, tmp_path: Path) -> None:
    first = _tar_build(project)
    out = tmp_path / "image.tar"
    out.write_bytes(first)
    with tarfile.open(out) as t:
        names = t.getnames()
        assert "./etc/os-release" in names
        owned = t.getmember("./srv/owned/file")
        assert (owned.uid, owned.gid, owned.mode & 0o777) == (1234, 1234, 0o640)
        assert owned.mtime <= int(EPOCH)
    second = _tar_build(project)
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    spdx = json.loads((project / "mkosi.output/testimg_1.2.spdx.json").read_text())
    assert spdx["packages"][0]["checksums"][0]["checksumValue"] == hashlib.sha256(second).hexdigest()
    assert spdx["packages"][0]["packageFileName"] == "testimg_1.2.tar.xz"


def test_cpio_output(project: Path, directory_image: Path, tmp_path: Path) -> None:
    # With CompressLevel=, OutputExtension= and OutputMode= as well: xz's preset 0 has a 256 KiB dictionary
    # (the default, 6, 8 MiB), the name's suffix is .initramfs.xz, the file is 0640.
    run_mkosi(project, "-f", "-t", "cpio", "--compress-level=0", "--output-extension=initramfs",
              "--output-mode=0640", "build")
    out = project / "mkosi.output/testimg_1.2.initramfs.xz"
    info = subprocess.run(["xz", "--robot", "-vv", "--list", str(out)], capture_output=True, text=True, check=True)
    assert "CRC32" in info.stdout, "the kernel only unpacks xz initrds with CRC32 checks"
    assert "--lzma2=dict=256KiB" in info.stdout, info.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    sums = (project / "mkosi.output/SHA256SUMS").read_text()
    assert f"{hashlib.sha256(out.read_bytes()).hexdigest()} *testimg_1.2.initramfs.xz" in sums.splitlines()
    manifest = project / "mkosi.output/testimg_1.2.manifest"
    assert manifest.is_file() and stat.S_IMODE(manifest.stat().st_mode) == 0o640
    listing = subprocess.run(f"xz -dc {out} | cpio -t --quiet", shell=True, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert "etc/hostname" in listing
    assert "usr/lib/systemd/systemd" in listing or "lib/systemd/systemd" in listing


def test_plain_squashfs_output(project: Path, directory_image: Path) -> None:
    run_mkosi(project, "-f", "-t", "plain_squashfs", "--compress-fs=xz", "build")
    out = project / "mkosi.output/testimg_1.2.raw"
    listing = subprocess.run(["unsquashfs", "-l", str(out)], capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/etc/os-release" in listing
    stats = subprocess.run(["unsquashfs", "-s", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Compression xz" in stats


def _start_build_and_wait_for_install(project: Path, ws: Path) -> subprocess.Popen[str]:
    import sys

    from tests.integration.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "mkosi", "-C", str(project), "-f", "-t", "directory",
                             f"--workspace-dir={ws}", "build"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Interrupt while packages are being installed into the image (mounts are active then).
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Installing" in line and "essential" in line:
            break
    time.sleep(0.5)
    return proc


def _host_mounts_below(path: Path) -> list[str]:
    """Mounts, and loop devices backed by files, below path that the host still has."""
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]
    loops = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], capture_output=True,
                           text=True, check=False).stdout.splitlines()
    return mounts + [line for line in loops if str(path) in line]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_build_leaves_nothing_behind(project: Path, directory_image: Path, tmp_path: Path,
                                                 signum: int) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    proc = _start_build_and_wait_for_install(project, ws)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert list(ws.iterdir()) == [], "the workspace is removed"
    assert _host_mounts_below(ws) == []
    assert (directory_image / "etc/os-release").exists(), "the previous output survives"


def test_killed_build_leaks_no_mount_and_its_workspace_is_removed_later(project: Path, directory_image: Path,
                                                                       tmp_path: Path) -> None:
    from mkosi.preflight import remove_stale_workspaces

    ws = tmp_path / "ws"
    ws.mkdir()
    proc = _start_build_and_wait_for_install(project, ws)
    proc.kill()
    proc.communicate(timeout=60)
    time.sleep(1)  # let the kernel tear down the build's mount namespace
    assert _host_mounts_below(ws) == [], "mounts lived only in the build's own namespace"
    assert (directory_image / "etc/os-release").exists(), "the previous output survives"
    assert list(ws.iterdir()), "a killed build cannot remove its workspace itself"
    remove_stale_workspaces(ws)  # what the next build does first
    assert list(ws.iterdir()) == []


def test_signed_checksums(project: Path, directory_image: Path, tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    try:
        subprocess.run(["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                        "mkosi-test@example.org", "ed25519", "sign", "never"], env={**os.environ, **env},
                       check=True, capture_output=True)
        run_mkosi(project, "-f", "-t", "tar", "--sign", "--key=mkosi-test@example.org", "build", env=env)
        out = project / "mkosi.output"
        verify = subprocess.run(["gpg", "--verify", str(out / "SHA256SUMS.gpg"), str(out / "SHA256SUMS")],
                                env={**os.environ, **env}, capture_output=True, text=True)
    finally:
        # The keyring's agent (started by gpg for the key, and by mkosi's signing) is the test's to stop.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)
    assert verify.returncode == 0, verify.stderr
    assert "testimg_1.2.tar.xz" in (out / "SHA256SUMS").read_text()


def test_shell_ephemeral_leaves_image_untouched(project: Path, directory_image: Path) -> None:
    proc = run_mkosi(project, "-t", "directory", "--ephemeral", "shell", "sh", "-c",
                     "touch /ephemeral-marker && test -e /ephemeral-marker && exit 3", check=False)
    assert proc.returncode == 3, proc.stderr
    assert not (directory_image / "ephemeral-marker").exists()
    proc = run_mkosi(project, "-t", "directory", "shell", "sh", "-c", "touch /persistent-marker")
    assert (directory_image / "persistent-marker").exists()
    (directory_image / "persistent-marker").unlink()


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", path], check=False)


def test_read_only_output_directory_fails_before_installing(project: Path, directory_image: Path,
                                                            tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as out:
        start = time.monotonic()
        proc = run_mkosi(project, "-f", "-t", "tar", f"--output-dir={out}", "build", check=False)
        took = time.monotonic() - start
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "read-only" in proc.stderr and str(out) in proc.stderr, proc.stderr
    assert "Installing" not in proc.stderr, "the check comes before the package installation"
    print(f"read-only output refused after {took:.1f}s")


def test_full_output_disk_leaves_nothing_and_names_the_destination(project: Path, directory_image: Path,
                                                                   tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with _tmpfs(tmp_path / "small", "size=2m") as out:
        proc = run_mkosi(project, "-f", "-t", "directory", f"--output-dir={out}", f"--workspace-dir={ws}", "build",
                         check=False)
        left = sorted(p.name for p in out.iterdir())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: no space left on the file system of {out} for testimg_1.2"], proc.stderr[-2000:]
    assert left == [], "the partial copy is removed"
    assert _host_mounts_below(ws) == []
    assert (directory_image / "etc/os-release").exists(), "the previous output survives"


def test_umask_000_makes_no_world_writable_files(project: Path, directory_image: Path, tmp_path: Path) -> None:
    import sys

    from tests.integration.conftest import REPO

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", sys.executable, "-m", "mkosi", "-C",
                           str(project), "-f", "-t", "directory", f"--output-dir={out}", "build"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = out / "testimg_1.2"
    for rel in (".", "etc", "usr/bin", "var/lib/dpkg", "etc/os-release"):
        mode = (image / rel).stat().st_mode
        assert not mode & stat.S_IWOTH, f"{rel} is world-writable: {oct(mode)}"
    assert not (image / "tmp").stat().st_mode & stat.S_IWOTH or (image / "tmp").stat().st_mode & stat.S_ISVTX


def test_concurrent_builds_of_one_output_take_turns(project: Path, directory_image: Path, tmp_path: Path) -> None:
    import sys

    from tests.integration.conftest import REPO

    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mkosi", "-C", str(project), "-f", "-t", "tar", f"--output-dir={out}", "build"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err1 = first.communicate(timeout=1800)
    _, err2 = second.communicate(timeout=1800)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 0, err2[-2000:]
    assert "Waiting for another build" in err1 + err2
    with tarfile.open(out / "testimg_1.2.tar.xz") as tf:
        assert "./usr/bin/bash" in tf.getnames() or "usr/bin/bash" in tf.getnames()


def test_extra_tree_through_an_absolute_link_stays_in_the_image(directory_image: Path) -> None:
    assert os.readlink(directory_image / "var/run") == "/run"
    assert (directory_image / "run/mkosi-escape-test").read_text() == "inside\n"
    assert not Path("/run/mkosi-escape-test").exists(), "written onto the host"


def test_cache_directory_holds_the_cached_image_and_a_second_build_reuses_it(project: Path,
                                                                             tmp_path: Path) -> None:
    # CacheDirectory= keeps -i's cached image in its CacheKey= directory, not next to the output; a build
    # into another output directory starts from it.
    cache = tmp_path / "image-cache"
    common = ("-i", "-t", "tar", f"--cache-directory={cache}", "--cache-key=&d~&r~&I")
    first = run_mkosi(project, *common, f"--output-dir={tmp_path / 'out1'}", "build")
    assert "Saving the cached final image" in first.stderr + first.stdout
    where = cache / "debian~bookworm~main"
    assert (where / "cache-final/etc/skel-marker").read_text() == "from the skeleton\n"
    assert stat.S_IMODE((where / "cache-final.key").stat().st_mode) == 0o600
    assert not [p for p in where.iterdir() if ".tmp" in p.name]
    assert not list((tmp_path / "out1").glob("*.cache-*"))
    second = run_mkosi(project, *common, f"--output-dir={tmp_path / 'out2'}", "build")
    log = second.stderr + second.stdout
    assert "Reusing the cached final image" in log
    with tarfile.open(tmp_path / "out2/testimg_1.2.tar.xz") as t:
        assert t.getmember("./etc/skel-marker").isfile()
    # clean -f removes the caches from the cache directory.
    run_mkosi(project, *common, f"--output-dir={tmp_path / 'out2'}", "-f", "clean")
    assert not (where / "cache-final").exists() and not (where / "cache-final.key").exists()
