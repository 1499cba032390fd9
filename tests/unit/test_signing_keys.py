"""SecureBootSignTool=, SecureBootAutoEnroll=, VerityKey=/VerityCertificate=, the key and certificate
sources and OpenPGPTool=: the command lines built, the defaults, the errors, and real signatures made
in tmp_path with the tools the host has."""

from __future__ import annotations

import datetime
import os
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mkosi import dependencies
from mkosi.boot import efivars, signing
from mkosi.boot.esp import EspOptions, populate_esp
from mkosi.boot.pcrsig import PcrSigner, _sign_argv, pcr_signer
from mkosi.boot.signing import SignTool, generate_secure_boot_keys, key_reference, sign_efi, verify_efi
from mkosi.build import sop_argv, sop_sign
from mkosi.config import load_args
from mkosi.config.enums import Bootloader, BootProtocol, SecureBootSignTool
from mkosi.config.settings import Config
from mkosi.errors import ConfigError, MkosiError
from mkosi.output.verity import verity_key_files
from mkosi.summary import not_implemented
from tests.markers import needs_tools
from tests.unit.test_uki import esp_and_files, esp_root, fake_stub

SB = SecureBootSignTool


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_host: None) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "keys/sb.key", tmp_path / "keys/sb.crt"
    generate_secure_boot_keys("mkosi test", 30, key, cert)
    return key, cert


def load(*argv: str, verb: str = "summary") -> Config:
    _, configs = load_args([*argv, verb])
    return configs[-1]


def tools(monkeypatch: pytest.MonkeyPatch, *present: str) -> None:
    monkeypatch.setattr(signing, "find_tool", lambda name, sandbox=None: f"/usr/bin/{name}" if name in present
                        else None)


# ---- SecureBootSignTool= ----

def test_auto_prefers_systemd_sbsign(monkeypatch: pytest.MonkeyPatch) -> None:
    tools(monkeypatch, "sbsign", "systemd-sbsign")
    assert SignTool().resolve() == (SB.systemd_sbsign, "/usr/bin/systemd-sbsign")
    tools(monkeypatch, "sbsign")
    assert SignTool().resolve() == (SB.sbsign, "/usr/bin/sbsign")
    tools(monkeypatch)
    with pytest.raises(MkosiError, match="neither systemd-sbsign nor sbsign") as e:
        SignTool().resolve()
    assert e.value.hint is not None and "sbsigntool" in e.value.hint


def test_a_missing_chosen_tool_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    tools(monkeypatch, "sbsign")
    with pytest.raises(MkosiError, match="systemd-sbsign was not found") as e:
        SignTool(tool=SB.systemd_sbsign).resolve()
    assert e.value.hint is not None and "systemd 257" in e.value.hint
    tools(monkeypatch, "systemd-sbsign")
    with pytest.raises(MkosiError, match="SecureBootSignTool=sbsign: sbsign was not found") as e:
        SignTool(tool=SB.sbsign).resolve()
    assert e.value.hint is not None and "sbsigntool" in e.value.hint


def test_command_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    tools(monkeypatch, "sbsign", "systemd-sbsign")
    k, c, b, o = Path("/k.pem"), Path("/c.pem"), Path("/esp/x.efi"), Path("/esp/.x.efi.signed")
    assert SignTool(tool=SB.sbsign).argv(b, k, c, o) == [
        "/usr/bin/sbsign", "--key", "/k.pem", "--cert", "/c.pem", "--output", str(o), str(b)]
    assert SignTool().argv(b, k, c, o) == [
        "/usr/bin/systemd-sbsign", "sign", "--private-key=/k.pem", "--certificate=/c.pem", f"--output={o}", str(b)]
    # Engines and providers: the key is the URI as written, not a path below the configuration directory.
    uri = Path("/cfg/dir/pkcs11:token=sb;object=key")
    assert SignTool(tool=SB.sbsign, key_source="engine:pkcs11").argv(b, uri, c, o) == [
        "/usr/bin/sbsign", "--engine", "pkcs11", "--key", "pkcs11:token=sb;object=key", "--cert", "/c.pem",
        "--output", str(o), str(b)]
    got = SignTool(key_source="provider:pkcs11", certificate_source="provider:pkcs11").argv(b, uri, uri, o)
    assert got == ["/usr/bin/systemd-sbsign", "sign", "--private-key=pkcs11:token=sb;object=key",
                   "--private-key-source=provider:pkcs11", "--certificate=pkcs11:token=sb;object=key",
                   "--certificate-source=provider:pkcs11", f"--output={o}", str(b)]


def test_sbsign_cannot_use_a_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    tools(monkeypatch, "sbsign")
    with pytest.raises(MkosiError, match="sbsign cannot take a key from an OpenSSL provider"):
        SignTool(key_source="provider:pkcs11").resolve()
    with pytest.raises(MkosiError, match="sbsign reads the certificate from a file only"):
        SignTool(tool=SB.sbsign, certificate_source="provider:pkcs11").resolve()


def test_key_reference() -> None:
    assert key_reference(Path("/a/b.key"), "file") == "/a/b.key"
    assert key_reference(Path("/cfg/pkcs11:object=x"), "engine:pkcs11") == "pkcs11:object=x"
    assert key_reference(Path("/cfg/pkcs11:object=x"), "file") == "/cfg/pkcs11:object=x"
    assert key_reference(Path("/cfg/plainid"), "provider:tpm2") == "/cfg/plainid"


def test_settings_reach_the_esp_options_and_the_summary(cfg: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    config = load("--secure-boot=yes", "--bootable=yes", f"--secure-boot-key={key}",
                  f"--secure-boot-certificate={cert}", "--secure-boot-sign-tool=sbsign",
                  "--secure-boot-key-source=engine:pkcs11", "--secure-boot-auto-enroll=no",
                  "--verity-key-source=engine:e", "--sign-expected-key-source=provider:p",
                  "--openpgp-tool=sqop")
    options = EspOptions.from_config(config)
    assert options.sign_tool == SignTool(tool=SB.sbsign, key_source="engine:pkcs11")
    assert options.auto_enroll is False
    assert EspOptions.from_config(load("--secure-boot=yes", "--bootable=yes", f"--secure-boot-key={key}",
                                       f"--secure-boot-certificate={cert}")).auto_enroll is True
    assert not_implemented(config) == {}


def test_the_host_tools_follow_the_choice(cfg: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = keys
    base = ("--format=uki", "--secure-boot=yes", f"--secure-boot-key={key}", f"--secure-boot-certificate={cert}")
    assert "systemd-sbsign" in dependencies.host_tools(load(*base, "--secure-boot-sign-tool=systemd-sbsign"))
    monkeypatch.setattr(dependencies, "find_tool", lambda name, sandbox=None: None)
    assert "sbsign" in dependencies.host_tools(load(*base))
    monkeypatch.setattr(dependencies, "find_tool", lambda name, sandbox=None: "/usr/bin/" + name)
    assert "systemd-sbsign" in dependencies.host_tools(load(*base))
    assert "sqop" in dependencies.host_tools(load("--sign=yes", "--key=k.pgp", "--openpgp-tool=sqop"))
    assert "gpg" in dependencies.host_tools(load("--sign=yes"))


@needs_tools("sbsign", "sbverify")
def test_a_real_signature_with_the_chosen_tool(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    binary = fake_stub(tmp_path / "x.efi")
    sign_efi(binary, key, cert, SignTool(tool=SB.sbsign))
    assert verify_efi(binary, cert)
    assert not list(tmp_path.glob(".x.efi.signed"))


# ---- SecureBootAutoEnroll= ----

def auth_parts(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(EFI_TIME, PKCS#7 signature, data) of an EFI_VARIABLE_AUTHENTICATION_2 file."""
    timestamp = blob[:16]
    length, revision, cert_type = struct.unpack_from("<IHH", blob, 16)
    assert (revision, cert_type) == (0x0200, 0x0EF1)
    assert uuid.UUID(bytes_le=blob[24:40]) == efivars.EFI_CERT_TYPE_PKCS7
    return timestamp, blob[40:16 + length], blob[16 + length:]


def _der_content(data: bytes) -> int:
    """Where the contents of the DER element at the start of `data` begin."""
    return 2 if data[1] < 0x80 else 2 + (data[1] & 0x7F)


def test_signed_data_unwraps_content_info() -> None:
    assert efivars.signed_data(content_info(b"\x30\x03\x02\x01\x01")) == b"\x30\x03\x02\x01\x01"
    big = b"\x30\x82\x01\x00" + bytes(256)
    assert efivars.signed_data(content_info(big)) == big
    with pytest.raises(MkosiError, match="not of type signedData"):
        efivars.signed_data(der(0x30, der(0x06, b"\x2a\x03") + der(0xA0, b"")))


def test_signature_list_layout(keys: tuple[Path, Path]) -> None:
    _, cert = keys
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    owner = uuid.UUID("11111111-2222-3333-4444-555555555555")
    esl = efivars.signature_list(der, owner)
    assert uuid.UUID(bytes_le=esl[:16]) == efivars.EFI_CERT_X509
    size, header, sig_size = struct.unpack_from("<III", esl, 16)
    assert (size, header, sig_size) == (len(esl), 0, 16 + len(der))
    assert uuid.UUID(bytes_le=esl[28:44]) == owner and esl[44:] == der


def test_efi_time() -> None:
    t = efivars.efi_time(datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc))
    assert len(t) == 16
    assert struct.unpack("<HBBBBBBIhBB", t) == (2024, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0)


@needs_tools("sbsiglist")
def test_the_signature_list_matches_sbsiglist(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, cert = keys
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    (tmp_path / "c.der").write_bytes(der)
    owner = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
    subprocess.run(["sbsiglist", "--owner", str(owner), "--type", "x509", "--output", str(tmp_path / "c.esl"),
                    str(tmp_path / "c.der")], check=True, capture_output=True)
    assert (tmp_path / "c.esl").read_bytes() == efivars.signature_list(der, owner)


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = (n.bit_length() + 7) // 8
    length = bytes([n]) if n < 0x80 else bytes([0x80 | size]) + n.to_bytes(size, "big")
    return bytes([tag]) + length + content


def content_info(signed: bytes) -> bytes:
    """The ContentInfo around a bare SignedData (which openssl wants)."""
    return der(0x30, der(0x06, efivars.SIGNED_DATA_OID) + der(0xA0, signed))


def openssl_verifies(tmp_path: Path, signature: bytes, payload: bytes, cert: Path) -> bool:
    """openssl's check of a bare SignedData (as in .auth files) over `payload`."""
    (tmp_path / "sig.der").write_bytes(content_info(signature))
    (tmp_path / "payload").write_bytes(payload)
    proc = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
                           "-content", str(tmp_path / "payload"), "-certfile", str(cert), "-noverify",
                           "-out", os.devnull], capture_output=True)
    return proc.returncode == 0


@needs_tools("openssl")
def test_auth_files_are_signed_over_the_spec_payload(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    when = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    files = efivars.write_auto_enroll_keys(tmp_path / "auto", key, cert, when)
    assert [f.name for f in files] == ["PK.auth", "KEK.auth", "db.auth"]
    vendors = {"PK": efivars.EFI_GLOBAL_VARIABLE, "KEK": efivars.EFI_GLOBAL_VARIABLE,
               "db": efivars.EFI_IMAGE_SECURITY_DATABASE}
    for f in files:
        timestamp, signature, data = auth_parts(f.read_bytes())
        assert timestamp == efivars.efi_time(when)
        assert signature[:1] == b"\x30" and signature[_der_content(signature):][:3] == b"\x02\x01\x01"  # version 1
        assert uuid.UUID(bytes_le=data[:16]) == efivars.EFI_CERT_X509
        payload = efivars.signed_payload(f.stem, vendors[f.stem], timestamp, data)
        assert openssl_verifies(tmp_path, signature, payload, cert), f.name
        # Signed for its own variable only: PK's signature does not cover KEK.
        other = "KEK" if f.stem == "PK" else "PK"
        assert not openssl_verifies(tmp_path, signature, efivars.signed_payload(other, vendors[other], timestamp,
                                                                                  data), cert)
    # The same inputs give the same files (the owner GUID comes from the certificate).
    again = efivars.write_auto_enroll_keys(tmp_path / "again", key, cert, when)
    assert [uuid.UUID(bytes_le=auth_parts(f.read_bytes())[2][28:44]) for f in again] == \
        [uuid.UUID(bytes_le=auth_parts(f.read_bytes())[2][28:44]) for f in files]


@needs_tools("sbvarsign", "openssl")
def test_our_payload_matches_what_sbvarsign_signs(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """sbvarsign (an independent implementation) signs a signature list; its signature verifies over the
    payload our code puts together from its time stamp, which checks the layout of what is signed."""
    key, cert = keys
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    esl = efivars.signature_list(der, uuid.uuid4())
    (tmp_path / "db.esl").write_bytes(esl)
    # sbvarsign's default attributes include APPEND_WRITE; enrollment replaces the variable.
    subprocess.run(["sbvarsign", "--key", str(key), "--cert", str(cert), "--output", str(tmp_path / "db.auth"),
                    "--attr", "NON_VOLATILE,BOOTSERVICE_ACCESS,RUNTIME_ACCESS", "db", str(tmp_path / "db.esl")],
                   check=True, capture_output=True)
    blob = (tmp_path / "db.auth").read_bytes()
    timestamp, signature, data = auth_parts(blob)
    assert data == esl
    payload = efivars.signed_payload("db", efivars.EFI_IMAGE_SECURITY_DATABASE, timestamp, data)
    assert openssl_verifies(tmp_path, signature, payload, cert)


def enroll_esp(tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
               **extra: object) -> Path:
    monkeypatch.setattr("mkosi.boot.esp.sign_efi", lambda binary, key, cert, **_: None)
    key, cert = keys
    root = esp_root(tmp_path)
    esp, files = esp_and_files(tmp_path, root)
    fields: dict[str, object] = {"protocols": (BootProtocol.uefi,), "entry_id": "img", "title": "Image",
                                 "image_root": root, "secure_boot_key": key, "secure_boot_certificate": cert,
                                 "auto_enroll": True}
    fields.update(extra)
    populate_esp(esp, files, EspOptions(**fields))  # type: ignore[arg-type]
    return esp


def test_systemd_boot_gets_the_enrollment_files(tmp_path: Path, keys: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    esp = enroll_esp(tmp_path, keys, monkeypatch)
    assert sorted(p.name for p in (esp / "loader/keys/auto").iterdir()) == ["KEK.auth", "PK.auth", "db.auth"]


@pytest.mark.parametrize("extra", [{"auto_enroll": False}, {"bootloader": Bootloader.systemd_boot_signed,
                                                            "unified_kernel_image": "unsigned"},
                                   {"bootloader": Bootloader.uki}])
def test_no_enrollment_files(tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                             extra: dict[str, object]) -> None:
    from mkosi.config.enums import UnifiedKernelImages
    if "unified_kernel_image" in extra:
        extra = {**extra, "unified_kernel_image": UnifiedKernelImages.unsigned}
    esp = enroll_esp(tmp_path, keys, monkeypatch, **extra)
    assert not (esp / "loader/keys").exists()


def test_no_enrollment_files_with_an_engine_key(tmp_path: Path, keys: tuple[Path, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr("mkosi.boot.esp.log.warn", lambda text: warned.append(text))
    esp = enroll_esp(tmp_path, keys, monkeypatch, sign_tool=SignTool(key_source="engine:pkcs11"))
    assert not (esp / "loader/keys").exists()
    assert warned and "SecureBootAutoEnroll=" in warned[0]


def test_bad_key_files_are_clear_errors(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    _, cert = keys
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(MkosiError, match="cannot load the Secure Boot key"):
        efivars.write_auto_enroll_keys(tmp_path / "auto", tmp_path / "bad.key", cert)


# ---- VerityKey=, VerityCertificate= and their sources ----

def test_verity_keys_default_to_the_secure_boot_ones(cfg: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    config = load(f"--secure-boot-key={key}", f"--secure-boot-certificate={cert}", "--format=sysext")
    assert (config.verity_key, config.verity_certificate) == (key, cert)
    assert verity_key_files(config) == (key, cert)
    assert str(config.verity.value) == "signed"
    other_key, other_cert = cfg / "v.key", cfg / "v.crt"
    generate_secure_boot_keys("verity", 30, other_key, other_cert)
    config = load(f"--secure-boot-key={key}", f"--secure-boot-certificate={cert}", "--verity-key=v.key",
                  "--verity-certificate=v.crt", "--format=gpt_ext4", "--verity=signed", verb="build")
    assert verity_key_files(config) == (other_key, other_cert)
    # Without any key an extension image gets a hash partition only.
    assert str(load("--format=sysext").verity.value) == "yes"
    assert str(load("--format=sysext", "--verity-key=v.key", "--verity-certificate=v.crt").verity.value) == "signed"


def test_a_missing_verity_key_is_named(cfg: Path) -> None:
    with pytest.raises(ConfigError, match="needs a verity key"):
        load("--format=gpt_ext4", "--verity=signed", verb="build")
    (cfg / "v.crt").write_text("x")
    with pytest.raises(ConfigError, match="does not exist"):
        load("--format=gpt_ext4", "--verity=signed", "--verity-key=v.key", "--verity-certificate=v.crt",
             verb="build")
    # From an engine the key is no file: not checked.
    config = load("--format=gpt_ext4", "--verity=signed", "--verity-key=pkcs11:object=v",
                  "--verity-certificate=v.crt", "--verity-key-source=engine:pkcs11", verb="build")
    with pytest.raises(MkosiError, match="VerityKeySource=engine:pkcs11: Format=gpt_ext4 signs"):
        verity_key_files(config)


def test_secure_boot_key_from_an_engine_is_not_checked_as_a_file(cfg: Path, keys: tuple[Path, Path]) -> None:
    _, cert = keys
    config = load("--format=uki", "--secure-boot=yes", "--secure-boot-key=pkcs11:object=sb",
                  f"--secure-boot-certificate={cert}", "--secure-boot-key-source=engine:pkcs11", verb="build")
    assert config.secure_boot_key is not None
    assert key_reference(config.secure_boot_key, config.secure_boot_key_source) == "pkcs11:object=sb"
    with pytest.raises(ConfigError, match="does not exist"):
        load("--format=uki", "--secure-boot=yes", "--secure-boot-key=pkcs11:object=sb",
             f"--secure-boot-certificate={cert}", verb="build")


# ---- SignExpectedPcrKeySource= ----

def test_pcr_key_source(cfg: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = keys
    monkeypatch.setattr("mkosi.boot.pcrsig.find_measure", lambda: "/usr/lib/systemd/systemd-measure")
    config = load("--sign-expected-pcr=yes", "--sign-expected-pcr-key=pkcs11:object=pcr",
                  f"--sign-expected-pcr-certificate={cert}", "--sign-expected-key-source=provider:pkcs11")
    signer = pcr_signer(config)
    assert signer is not None and signer.key == Path("pkcs11:object=pcr") and signer.key_source == "provider:pkcs11"
    argv = _sign_argv(signer, ["--linux=/l"], Path("/tmp/pub.pem"))
    assert "--private-key=pkcs11:object=pcr" in argv and "--private-key-source=provider:pkcs11" in argv
    plain = _sign_argv(PcrSigner(key=key, public_key=b"", measure="m"), [], Path("/p"))
    assert not any(a.startswith("--private-key-source") for a in plain)
    # The public key for .pcrpkey: from a certificate file, never from the engine.
    with pytest.raises(MkosiError, match="needs SignExpectedPcrCertificate="):
        pcr_signer(load("--sign-expected-pcr=yes", "--sign-expected-pcr-key=pkcs11:object=pcr",
                        "--sign-expected-key-source=engine:pkcs11"))
    with pytest.raises(MkosiError, match="SignExpectedPcrCertificateSource=provider:p"):
        pcr_signer(load("--sign-expected-pcr=yes", f"--sign-expected-pcr-key={key}",
                        f"--sign-expected-pcr-certificate={cert}", "--sign-expected-certificate-source=provider:p"))


# ---- OpenPGPTool= ----

def test_sop_command_line() -> None:
    assert sop_argv("/usr/bin/sqop", Path("/keys/secret.pgp")) == [
        "/usr/bin/sqop", "sign", "--as=binary", "/keys/secret.pgp"]


def fake_sop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "fakesop"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_sop_sign_runs_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stand-in records its arguments and turns the data on stdin into the "signature".
    fake_sop(tmp_path, monkeypatch, f'echo "$@" > {tmp_path}/args\ntr a-z A-Z\n')
    (tmp_path / "secret.pgp").write_text("KEY")
    (tmp_path / "SHA256SUMS").write_text("abc *image.raw\n")
    sop_sign("fakesop", str(tmp_path / "secret.pgp"), tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg")
    assert (tmp_path / "SHA256SUMS.gpg").read_text() == "ABC *IMAGE.RAW\n"
    assert (tmp_path / "args").read_text().split() == ["sign", "--as=binary", str(tmp_path / "secret.pgp")]


def test_sop_sign_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg"
    data.write_text("x")
    with pytest.raises(MkosiError, match="needs Key= naming a file"):
        sop_sign("sqop", None, data, out)
    with pytest.raises(MkosiError, match="no such file"):
        sop_sign("sqop", str(tmp_path / "missing.pgp"), data, out)
    (tmp_path / "k.pgp").write_text("K")
    with pytest.raises(MkosiError, match="'nosuchsop' was not found"):
        sop_sign("nosuchsop", str(tmp_path / "k.pgp"), data, out)
    fake_sop(tmp_path, monkeypatch, 'echo "bad key" >&2\nexit 1\n')
    with pytest.raises(MkosiError, match=r"signing SHA256SUMS with fakesop failed.*bad key"):
        sop_sign("fakesop", str(tmp_path / "k.pgp"), data, out)
    assert not out.exists()


@needs_tools("sqop")
def test_a_real_sop_signature(tmp_path: Path) -> None:
    secret = subprocess.run(["sqop", "generate-key", "mkosi test <test@example.org>"], check=True,
                            capture_output=True).stdout
    (tmp_path / "secret.pgp").write_bytes(secret)
    cert = subprocess.run(["sqop", "extract-cert"], input=secret, check=True, capture_output=True).stdout
    (tmp_path / "cert.pgp").write_bytes(cert)
    (tmp_path / "SHA256SUMS").write_text("0123 *image.raw\n")
    sop_sign("sqop", str(tmp_path / "secret.pgp"), tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg")
    with open(tmp_path / "SHA256SUMS", "rb") as f:
        proc = subprocess.run(["sqop", "verify", str(tmp_path / "SHA256SUMS.gpg"), str(tmp_path / "cert.pgp")],
                              stdin=f, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_sources_follow_the_secure_boot_ones_for_the_same_key(cfg: Path, keys: tuple[Path, Path]) -> None:
    _, cert = keys
    base = ("--secure-boot-key=pkcs11:object=sb", f"--secure-boot-certificate={cert}",
            "--secure-boot-key-source=engine:pkcs11")
    config = load(*base)
    assert config.verity_key_source == "engine:pkcs11" and config.sign_expected_pcr_key_source == "engine:pkcs11"
    assert config.verity_certificate_source == "file"
    (cfg / "v.key").write_text("K")
    config = load(*base, "--verity-key=v.key", "--sign-expected-pcr-key=v.key")
    assert config.verity_key_source == "file" and config.sign_expected_pcr_key_source == "file"
    assert load(*base, "--verity-key-source=provider:tpm2").verity_key_source == "provider:tpm2"
    config = load(f"--secure-boot-certificate={cert}", "--secure-boot-certificate-source=provider:p")
    assert config.verity_certificate_source == "provider:p"
    assert config.sign_expected_pcr_certificate_source == "provider:p"
