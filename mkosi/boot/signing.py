"""Secure Boot: signing EFI binaries (sbsign or systemd-sbsign), checking them with sbverify, making a key
pair."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mkosi import log
from mkosi.config.enums import SecureBootSignTool
from mkosi.errors import CommandError, MkosiError
from mkosi.run import find_tool, require_tool, run

if TYPE_CHECKING:
    from mkosi.config.settings import Config


@dataclasses.dataclass(frozen=True)
class SignTool:
    """How EFI binaries are signed: SecureBootSignTool= and where the key and the certificate come from
    (SecureBootKeySource=, SecureBootCertificateSource=: file, engine:NAME or provider:NAME)."""

    tool: SecureBootSignTool = SecureBootSignTool.auto
    key_source: str = "file"
    certificate_source: str = "file"

    @classmethod
    def from_config(cls, config: Config) -> SignTool:
        return cls(tool=config.secure_boot_sign_tool, key_source=config.secure_boot_key_source,
                   certificate_source=config.secure_boot_certificate_source)

    def resolve(self) -> tuple[SecureBootSignTool, str]:
        """The tool that signs, and where it is: auto takes systemd-sbsign when there is one, else sbsign.
        A clear error when the chosen one is missing, or cannot use the key or certificate source."""
        tool = self.tool
        if tool == SecureBootSignTool.auto:
            if find_tool("systemd-sbsign") is not None:
                tool = SecureBootSignTool.systemd_sbsign
            elif find_tool("sbsign") is not None:
                tool = SecureBootSignTool.sbsign
            else:
                raise MkosiError("SecureBootSignTool=auto found neither systemd-sbsign nor sbsign to sign the EFI "
                                 "binaries with",
                                 hint="install sbsigntool (sbsign), or systemd 257 or newer (systemd-sbsign), "
                                 "on the host or in the tools tree")
        path = find_tool(tool.value)
        if path is None:
            package = SIGN_TOOL_PACKAGES[tool]
            raise MkosiError(f"SecureBootSignTool={self.tool.value}: {tool.value} was not found",
                             hint=f"install {package} on the host or in the tools tree, or choose another "
                             "SecureBootSignTool=")
        if tool == SecureBootSignTool.sbsign:
            if self.key_source.startswith("provider:"):
                raise MkosiError(f"SecureBootKeySource={self.key_source}: sbsign cannot take a key from an "
                                 "OpenSSL provider", hint="use SecureBootSignTool=systemd-sbsign, or an engine")
            if self.certificate_source != "file":
                raise MkosiError(f"SecureBootCertificateSource={self.certificate_source}: sbsign reads the "
                                 "certificate from a file only", hint="use SecureBootSignTool=systemd-sbsign")
        return tool, path

    def argv(self, binary: Path, key: Path, cert: Path, output: Path) -> list[str]:
        tool, path = self.resolve()
        key_arg = key_reference(key, self.key_source)
        cert_arg = key_reference(cert, self.certificate_source)
        if tool == SecureBootSignTool.sbsign:
            argv = [path]
            if self.key_source.startswith("engine:"):
                argv += ["--engine", self.key_source.removeprefix("engine:")]
            return [*argv, "--key", key_arg, "--cert", cert_arg, "--output", os.fspath(output), os.fspath(binary)]
        argv = [path, "sign", f"--private-key={key_arg}"]
        if self.key_source != "file":
            argv.append(f"--private-key-source={self.key_source}")
        argv.append(f"--certificate={cert_arg}")
        if self.certificate_source != "file":
            argv.append(f"--certificate-source={self.certificate_source}")
        return [*argv, f"--output={os.fspath(output)}", os.fspath(binary)]


SIGN_TOOL_PACKAGES = {
    SecureBootSignTool.sbsign: "sbsigntool (sbsigntools on Fedora and Arch)",
    SecureBootSignTool.systemd_sbsign: "the systemd package that ships systemd-sbsign (systemd 257 or newer)",
}

_URI = re.compile(r"(?:^|/)([A-Za-z][A-Za-z0-9+.-]*:.*)$")


def key_reference(path: Path, source: str) -> str:
    """The key or certificate argument for a tool: the file, or for an engine or provider the key's URI as
    written (pkcs11:...; the configuration made it look like a path in the configuration's directory)."""
    text = os.fspath(path)
    if source == "file":
        return text
    m = _URI.search(text)
    return m.group(1) if m else text


def sign_efi(binary: Path, key: Path, cert: Path, how: SignTool = SignTool()) -> None:
    """Sign a PE binary in place with sbsign or systemd-sbsign (SecureBootSignTool=)."""
    tmp = binary.with_name(f".{binary.name}.signed")
    try:
        run(how.argv(binary, key, cert, tmp), capture=True)
        os.replace(tmp, binary)
    finally:
        tmp.unlink(missing_ok=True)


def sign_tree(tree: Path, key: Path, cert: Path, how: SignTool = SignTool()) -> list[Path]:
    """Sign every .efi file below `tree` (an ESP); returns the signed files."""
    signed = []
    with log.step("Signing EFI binaries for Secure Boot"):
        for binary in sorted(tree.rglob("*")):
            if binary.suffix.lower() == ".efi" and binary.is_file():
                sign_efi(binary, key, cert, how)
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
