"""dm-verity hash images, root hash signatures and the Discoverable Partitions signature blob.

The signature partition of the Discoverable Partitions Specification holds a JSON object with
the root hash (lowercase hex), a base64 DER PKCS#7 detached signature of exactly that hex
string, and optionally the SHA-256 fingerprint of the signing certificate (DER, lowercase hex),
padded with NUL bytes to a multiple of 4096 bytes. The signature has no signed attributes, as
the kernel's dm-verity signature check expects.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from mkosi import log
from mkosi.config.enums import Verity
from mkosi.errors import MkosiError
from mkosi.output.gpt import SeedLike, make_uuid, resolve_seed
from mkosi.run import output

if TYPE_CHECKING:
    from mkosi.config.settings import Config

SIGNATURE_BLOB_ALIGNMENT = 4096

CertificateLike = Union[Path, bytes, x509.Certificate]


def _parse_roothash(text: str) -> str:
    m = re.search(r"^Root hash:\s*([0-9a-fA-F]+)\s*$", text, re.M)
    if m is None:
        raise MkosiError("could not find the root hash in the output of veritysetup format")
    return m.group(1).lower()


def make_verity(
    data_image: Path,
    hash_image: Path,
    *,
    seed: SeedLike | None = None,
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
) -> str:
    """Write the dm-verity hash tree of `data_image` to `hash_image`; returns the root hash (hex).

    The data image is padded with zeros to a multiple of the data block size if needed. With a
    seed (or SOURCE_DATE_EPOCH) the salt and the verity superblock UUID are derived from it and
    the data image's file name, so rebuilding the same data gives the same root hash; otherwise
    veritysetup picks random ones.
    """
    size = data_image.stat().st_size
    if size % data_block_size:
        padded = (size + data_block_size - 1) // data_block_size * data_block_size
        log.debug(f"padding {data_image.name} from {size} to {padded} bytes for verity")
        os.truncate(data_image, padded)

    argv: list[str] = [
        "veritysetup",
        "format",
        f"--data-block-size={data_block_size}",
        f"--hash-block-size={hash_block_size}",
    ]
    key = resolve_seed(seed)
    if key is not None:
        salt = hmac.new(key, b"verity-salt\x00" + data_image.name.encode(), hashlib.sha256).hexdigest()
        argv += [f"--salt={salt}", f"--uuid={make_uuid(seed, 'verity-uuid', data_image.name)}"]
    hash_image.unlink(missing_ok=True)
    with log.step(f"Generating verity hashes for {data_image.name}"):
        text = output([*argv, os.fspath(data_image), os.fspath(hash_image)])
    return _parse_roothash(text)


def roothash_uuids(roothash: str) -> tuple[str, str]:
    """The partition UUIDs the specification asks for: first and last 128 bits of the root hash."""
    h = roothash.lower()
    if not re.fullmatch(r"[0-9a-f]{64,}", h):
        raise MkosiError(f"'{roothash}' is not a root hash of at least 256 bits")
    return str(uuid.UUID(h[:32])), str(uuid.UUID(h[-32:]))


def _load_certificate(cert: CertificateLike) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.read_bytes() if isinstance(cert, Path) else cert
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def verity_key_files(config: Config) -> tuple[Optional[Path], Optional[Path]]:
    """VerityKey= and VerityCertificate= (by default SecureBootKey=/SecureBootCertificate=) for the formats
    whose root hash mkosi signs itself: those read key files only, so an engine or provider is an error."""
    if config.verity == Verity.signed:
        for setting, source in (("VerityKeySource", config.verity_key_source),
                                ("VerityCertificateSource", config.verity_certificate_source)):
            if source != "file":
                raise MkosiError(f"{setting}={source}: Format={config.format} signs the verity root hash from "
                                 "key files only", hint="use Format=disk (systemd-repart signs with engines "
                                 "and providers) or a key file")
    return config.verity_key, config.verity_certificate


def sign_roothash(
    roothash: str,
    key_pem: Path,
    cert_pem: Path,
    *,
    include_certificate: bool = False,
) -> bytes:
    """A DER PKCS#7 detached signature over the root hash as lowercase hex text (no newline).

    No signed attributes (like openssl smime -noattr); the signer certificate is left out
    unless `include_certificate` (the kernel looks the certificate up in its keyring).
    RSA and EC keys are supported; the digest is SHA-256.
    """
    cert = _load_certificate(cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise MkosiError(f"cannot load the verity signing key {key_pem}: {e}")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise MkosiError(f"the verity signing key {key_pem} must be an RSA or EC key")
    options = [
        pkcs7.PKCS7Options.DetachedSignature,
        pkcs7.PKCS7Options.NoAttributes,
        pkcs7.PKCS7Options.Binary,
    ]
    if not include_certificate:
        options.append(pkcs7.PKCS7Options.NoCerts)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(roothash.lower().encode()).add_signer(cert, key, hashes.SHA256())
    return builder.sign(serialization.Encoding.DER, options)


def certificate_fingerprint(cert: CertificateLike) -> str:
    """SHA-256 over the DER encoding of the certificate, lowercase hex."""
    der = _load_certificate(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def signature_partition_blob(roothash: str, der_signature: bytes, cert: CertificateLike) -> bytes:
    """The contents of a verity signature partition: JSON, NUL-padded to a multiple of 4096 bytes."""
    obj = {
        "rootHash": roothash.lower(),
        "certificateFingerprint": certificate_fingerprint(cert),
        "signature": base64.b64encode(der_signature).decode(),
    }
    data = json.dumps(obj, separators=(",", ":")).encode()
    padded = (len(data) + SIGNATURE_BLOB_ALIGNMENT) // SIGNATURE_BLOB_ALIGNMENT * SIGNATURE_BLOB_ALIGNMENT
    return data + b"\0" * (padded - len(data))


def parse_signature_blob(blob: bytes) -> dict[str, str]:
    """Read back a signature partition: the JSON object before the NUL padding."""
    text = blob.split(b"\0", 1)[0].decode()
    obj = json.loads(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("rootHash"), str):
        raise MkosiError("verity signature blob is not a JSON object with a rootHash")
    return {str(k): str(v) for k, v in obj.items()}
