"""Secure Boot: signing and checking EFI binaries with sbsign/sbverify, and making a key pair."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mkosi import log
from mkosi.errors import CommandError, MkosiError
from mkosi.run import require_tool, run


def sign_efi(binary: Path, key: Path, cert: Path) -> None:
    """Sign a PE binary in place with sbsign."""
    sbsign = require_tool("sbsign")
    tmp = binary.with_name(f".{binary.name}.signed")
    try:
        run(
            [sbsign, "--key", key, "--cert", cert, "--output", tmp, binary],
            capture=True,
        )
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)


def sign_tree(tree: Path, key: Path, cert: Path) -> list[Path]:
    """Sign every .efi file below `tree` (an ESP); returns the signed files."""
    signed = []
    with log.step("Signing EFI binaries for Secure Boot"):
        for binary in sorted(tree.rglob("*")):
            if binary.suffix.lower() == ".efi" and binary.is_file():
                sign_efi(binary, key, cert)
                signed.append(binary)
    return signed


def verify_efi(binary: Path, cert: Path) -> bool:
    """True when sbverify accepts the binary's signature against `cert`."""
    sbverify = require_tool("sbverify")
    try:
        proc = run([sbverify, "--cert", os.fspath(cert), os.fspath(binary)], check=False, capture=True)
    except CommandError:
        return False
    return proc.returncode == 0


_CODE_SIGNING_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str, valid_days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_CODE_SIGNING_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_private_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
    finally:
        os.close(fd)


def generate_secure_boot_keys(common_name: str, valid_days: int, key_out: Path, cert_out: Path) -> None:
    """Create an RSA 2048 key (PEM, mode 0600) and a self-signed X.509 certificate for it with the
    given common name, valid from now for `valid_days` days."""
    if valid_days <= 0:
        raise MkosiError(f"certificate validity must be a positive number of days, not {valid_days}")
    if not common_name:
        raise MkosiError("the certificate common name must not be empty")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed_certificate(key, common_name, valid_days)
    _write_private_key(key, key_out)
    cert_out.parent.mkdir(parents=True, exist_ok=True)
    cert_out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
