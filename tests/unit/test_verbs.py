"""The verbs that need neither root nor the network, run through the real entry point."""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from mkosi import __version__
from mkosi.__main__ import main
from mkosi.config import load_args
from mkosi.config.enums import Verb
from mkosi.config.settings import Config
from mkosi.output.artifacts import BMAP, CHECKSUM, MANIFEST, to_clean, written
from tests.unit.conftest import write

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("fixed_host")


def run(*argv: str) -> int:
    """Run mkosi in this process; returns the exit code."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    code = e.value.code
    assert isinstance(code, int)
    return code


def resolve(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    return configs[0]


def subprocess_mkosi(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "mkosi", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.lstrip().startswith("Hint:")]


# ---- help and version ----

def test_help_lists_every_verb(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    out = capsys.readouterr().out
    for verb in Verb:
        assert re.search(rf"^\s+{re.escape(verb.value)}\s+\S", out, re.MULTILINE), verb
    for flag in ("--distribution", "--format", "--package", "--force", "--default", "--directory"):
        assert flag in out


def test_help_verb_and_short_flag(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    expected = capsys.readouterr().out
    assert run("help") == 0
    assert capsys.readouterr().out == expected
    assert run("-h") == 0
    assert capsys.readouterr().out == expected


def test_version(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--version") == 0
    assert capsys.readouterr().out.strip() == f"mkosi {__version__}"


def test_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess_mkosi(tmp_path, "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"mkosi {__version__}"
    proc = subprocess_mkosi(tmp_path, "--help")
    assert proc.returncode == 0 and "cat-config" in proc.stdout


# ---- summary ----

def test_summary_creates_nothing(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", """
        [Distribution]
        Distribution=fedora
        [Output]
        Bootable=yes
        ImageVersion=1.0
        [Validation]
        Checksum=yes
        BMap=yes
        """)
    write(wd / "mkosi.build", "#!/bin/sh\n", 0o755)
    for d in ("mkosi.output", "mkosi.cache", "mkosi.extra", "mkosi.builddir"):
        (wd / d).mkdir()
    before = listing(wd)
    assert run("summary") == 0
    assert run("summary", "--json") == 0
    assert run("--incremental", "-f", "summary") == 0
    assert listing(wd) == before
    assert "fedora" in capsys.readouterr().out


def test_summary_json_parses(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Content]\nPackages=vim,httpd\n")
    assert run("summary", "--json", "-d", "fedora") == 0
    [data] = json.loads(capsys.readouterr().out)["Images"]
    assert data["Image"] == "main"
    assert data["Distribution"] == "fedora"
    assert data["Packages"] == ["vim", "httpd"]
    assert run("--json", "summary") == 0
    assert json.loads(capsys.readouterr().out)["Images"][0]["Distribution"] == "debian"


# ---- bump ----

def test_bump_increments_last_component(wd: Path) -> None:
    write(wd / "mkosi.version", "1.2.3\n")
    assert run("bump") == 0
    assert (wd / "mkosi.version").read_text().strip() == "1.2.4"
    assert run("bump") == 0
    assert (wd / "mkosi.version").read_text().strip() == "1.2.5"


def test_bump_without_version_starts_at_one(wd: Path) -> None:
    assert run("bump") == 0
    assert (wd / "mkosi.version").read_text().strip() == "1"


def test_bump_uses_the_configured_version(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nImageVersion=41\n")
    assert run("bump") == 0
    assert (wd / "mkosi.version").read_text().strip() == "42"


# ---- genkey ----

def _load_cert(path: Path):  # type: ignore[no-untyped-def]
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def test_genkey(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.x509.oid import NameOID

    monkeypatch.setenv("SUDO_USER", "alice")
    write(wd / "mkosi.default", "[Output]\nSecureBootCommonName=Test key of %u\nSecureBootValidDays=10\n")
    assert run("genkey") == 0
    key, crt = wd / "mkosi.secure-boot.key", wd / "mkosi.secure-boot.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = _load_cert(crt)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "Test key of alice"
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    assert after - before == datetime.timedelta(days=10)
    private = load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.public_key().public_numbers() == cert.public_key().public_numbers()

    # no silent overwrite
    old_key = key.read_bytes()
    assert run("genkey") == 1
    assert key.read_bytes() == old_key
    # the new certificate is accepted by the configuration checks of SecureBoot=
    assert resolve("--bootable", "--secure-boot").secure_boot_key == key
    assert run("-f", "genkey", "--secure-boot-valid-days=20") == 0
    assert key.read_bytes() != old_key
    cert = _load_cert(crt)
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    assert after - before == datetime.timedelta(days=20)


def test_genkey_default_common_name(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.x509.oid import NameOID

    monkeypatch.setenv("SUDO_USER", "bob")
    assert run("genkey") == 0
    cert = _load_cert(wd / "mkosi.secure-boot.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mkosi of bob"


def test_genkey_writes_where_the_settings_say(wd: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    (wd / "keys").mkdir()
    write(wd / "mkosi.default", "[Output]\nSecureBootKey=keys/db.key\nSecureBootCertificate=keys/db.crt\n")
    assert run("genkey") == 0
    assert not (wd / "mkosi.secure-boot.key").exists() and not (wd / "mkosi.secure-boot.crt").exists()
    key = load_pem_private_key((wd / "keys/db.key").read_bytes(), password=None)
    public, certified = key.public_key(), _load_cert(wd / "keys/db.crt").public_key()
    assert isinstance(public, rsa.RSAPublicKey) and isinstance(certified, rsa.RSAPublicKey)
    assert public.public_numbers() == certified.public_numbers()
    assert stat.S_IMODE((wd / "keys/db.key").stat().st_mode) == 0o600
    # The same files are what a Secure Boot build then uses.
    args = resolve("--bootable", "--secure-boot")
    assert args.secure_boot_key == wd / "keys/db.key" and args.secure_boot_certificate == wd / "keys/db.crt"
    assert run("genkey") == 1  # not overwritten without -f
    assert run("--secure-boot-key=elsewhere/k.key", "--secure-boot-certificate=c.crt", "genkey") == 1


def test_genkey_command_line_paths(wd: Path) -> None:
    assert run("--secure-boot-key=a.key", "--secure-boot-certificate=a.crt", "genkey") == 0
    assert (wd / "a.key").is_file() and (wd / "a.crt").is_file()
    assert not (wd / "mkosi.secure-boot.key").exists()


# ---- clean ----

def _touch(paths: Sequence[Path]) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")


def test_clean_removes_outputs(wd: Path) -> None:
    write(wd / "mkosi.default", "[Output]\nImageId=foo\nImageVersion=3\n[Validation]\nChecksum=yes\nBMap=yes\n")
    (wd / "mkosi.output").mkdir()
    args = resolve()
    assert args.output == wd / "mkosi.output/foo_3.raw"
    outputs = [args.output, written(args, CHECKSUM), written(args, BMAP), written(args, MANIFEST)]
    assert all(p is not None for p in outputs)
    assert set(outputs) <= set(to_clean(args, 0))
    _touch([p for p in outputs if p is not None])
    keep = write(wd / "mkosi.output/unrelated.txt", "keep me")
    assert run("clean") == 0
    assert [p for p in outputs if p is not None and p.exists()] == []
    assert keep.exists()
    assert (wd / "mkosi.default").exists()


def test_clean_force_levels(wd: Path) -> None:
    from mkosi.cache import package_cache_dir
    from mkosi.output.artifacts import incremental_cache_paths

    (wd / "mkosi.cache").mkdir()
    args = resolve()
    caches = incremental_cache_paths(args)
    pkg_dir = package_cache_dir(args)
    assert pkg_dir is not None and pkg_dir.is_relative_to(wd / "mkosi.cache")
    _touch([args.output, *caches, pkg_dir / "pkg.deb"])  # type: ignore[list-item]

    assert run("clean") == 0
    assert not args.output.exists()  # type: ignore[union-attr]
    assert all(p.exists() for p in caches)
    assert run("-f", "clean") == 0
    assert not any(p.exists() for p in caches)
    assert (pkg_dir / "pkg.deb").exists()
    assert run("-ff", "clean") == 0
    assert not (pkg_dir / "pkg.deb").exists()
    assert (wd / "mkosi.cache").is_dir()


# ---- cat-config ----

def test_cat_config(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(wd / "mkosi.default", "[Output]\nImageId=first\n")
    second = write(wd / "mkosi.default.d/10-second.conf", "[Content]\nPackages=vim\n")
    assert run("cat-config") == 0
    out = capsys.readouterr().out
    i1, i2 = out.index(str(first)), out.index(str(second))
    assert i1 < out.index("ImageId=first") < i2 < out.index("Packages=vim")
    assert re.search(rf"^#.*{re.escape(str(second))}$", out, re.MULTILINE)


def test_cat_config_of_several_images(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Content]\nPackages=main-pkg\n")
    write(wd / "mkosi.conf.d/10.conf", "[Content]\nPackages=dropin-pkg\n")
    write(wd / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\n")
    assert run("cat-config") == 0
    out = capsys.readouterr().out
    order = [out.index(s) for s in ("### image: initrd", "mkosi.images/initrd.conf", "Format=cpio",
                                    "### image: main", f"# {wd / 'mkosi.conf'}\n", "Packages=main-pkg",
                                    "mkosi.conf.d/10.conf", "Packages=dropin-pkg")]
    assert order == sorted(order)


def test_cat_config_without_files(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("cat-config") == 0
    assert capsys.readouterr().out.strip() == ""


# ---- errors ----

def test_config_error_is_one_line(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=floppy\n")
    assert run("summary") == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = error_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert "mkosi.default:2" in lines[0] and "Format" in lines[0] and "floppy" in lines[0]
    assert captured.out == ""


def test_unknown_setting_warning_in_subprocess(tmp_path: Path) -> None:
    write(tmp_path / "mkosi.default", "[Distribution]\nDistribution=debian\n[Content]\nPackagez=vim\n")
    proc = subprocess_mkosi(tmp_path, "summary")
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "mkosi.default:4" in lines[0] and "Packagez" in lines[0] and "Packages=" in lines[0]


def test_debug_shows_traceback(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=floppy\n")
    assert run("--debug", "summary") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "mkosi.default:2" in err


@pytest.mark.parametrize("value", ["bogus", "", "run,nonsense"])
def test_invalid_debug_value_lists_accepted_values(wd: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert run(f"--debug={value}", "summary") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "--debug" in lines[0]
    assert "accepted values: run, build-script, workspace-command, disk, all" in lines[0]


def test_valid_debug_values(wd: Path) -> None:
    def debug(*argv: str) -> list[str]:
        return load_args([*argv, "summary"])[0].debug

    assert debug("--debug=run,disk") == ["run", "disk"]
    assert debug("--debug", "all") == ["all"]
    assert debug("--debug") == ["run"]


def test_unknown_verb(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("frobnicate") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unknown verb 'frobnicate'" in err and "summary" in err and "genkey" in err


def test_unknown_option(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--frobnicate", "summary") == 1
    err = capsys.readouterr().err
    assert "--frobnicate" in err and "Traceback" not in err


def test_contradiction_exit_code(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.default", "[Output]\nFormat=directory\nVerity=yes\n")
    assert run("summary") == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "mkosi.default:3" in lines[0] and "Verity" in lines[0]


def test_verbs_not_yet_written_say_so(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mkosi.verbs import VERBS, verb_not_yet

    pending = [v for v, fn in VERBS.items() if fn is verb_not_yet and v not in (Verb.qemu, Verb.vm)]
    if not pending:
        pytest.skip("every verb is implemented")
    for verb in pending:
        assert run(verb.value) == 1
        err = capsys.readouterr().err
        assert "not implemented yet" in err and verb.value in err and "Traceback" not in err
