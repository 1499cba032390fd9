"""Secure Boot key enrollment files for systemd-boot (SecureBootAutoEnroll=).

systemd-boot enrolls the files PK.auth, KEK.auth and db.auth of loader/keys/auto/ on the ESP when the
firmware is in setup mode. Each is what the firmware's SetVariable() takes for a time-based authenticated
variable (UEFI specification, section 8.2.2): an EFI_VARIABLE_AUTHENTICATION_2 header (an EFI_TIME and a
WIN_CERTIFICATE_UEFI_GUID whose data is a PKCS#7 signature) followed by the variable's value, here one
EFI_SIGNATURE_LIST holding the X.509 certificate. The signature covers the variable name (UTF-16, no
terminator), its vendor GUID, its attributes, the time stamp and the value. The three are self-signed
with the Secure Boot key: the certificate becomes platform key, key exchange key and the one entry of db.
"""

from __future__ import annotations

import datetime
import os
import struct
import uuid
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from mkosi.errors import MkosiError

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_TYPE_PKCS7 = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")

# NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
AUTH_ATTRIBUTES = 0x01 | 0x02 | 0x04 | 0x20
WIN_CERT_REVISION = 0x0200
WIN_CERT_TYPE_EFI_GUID = 0x0EF1

VARIABLES = (("PK", EFI_GLOBAL_VARIABLE), ("KEK", EFI_GLOBAL_VARIABLE), ("db", EFI_IMAGE_SECURITY_DATABASE))


def guid_bytes(u: uuid.UUID) -> bytes:
    """An EFI_GUID as stored: the first three fields little-endian."""
    return u.bytes_le


def signature_list(cert_der: bytes, owner: uuid.UUID) -> bytes:
    """An EFI_SIGNATURE_LIST of type EFI_CERT_X509_GUID with one entry (owner GUID + DER certificate)."""
    entry = guid_bytes(owner) + cert_der
    header = guid_bytes(EFI_CERT_X509) + struct.pack("<III", 16 + 12 + len(entry), 0, len(entry))
    return header + entry


def efi_time(when: datetime.datetime) -> bytes:
    """An EFI_TIME in UTC; nanoseconds, time zone and daylight are zero, as authenticated variables need."""
    t = when.astimezone(datetime.timezone.utc)
    return struct.pack("<HBBBBBBIhBB", t.year, t.month, t.day, t.hour, t.minute, t.second, 0, 0, 0, 0, 0)


def signed_payload(name: str, vendor: uuid.UUID, timestamp: bytes, data: bytes) -> bytes:
    return name.encode("utf-16-le") + guid_bytes(vendor) + struct.pack("<I", AUTH_ATTRIBUTES) + timestamp + data


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _der_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, offset of the contents, length of the contents) of the DER element at `offset`."""
    tag, first = data[offset], data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, first
    n = first & 0x7F
    return tag, offset + 2 + n, int.from_bytes(data[offset + 2:offset + 2 + n], "big")


def signed_data(content_info: bytes) -> bytes:
    """The SignedData of a DER PKCS#7 ContentInfo (SEQUENCE { OID signedData, [0] EXPLICIT SignedData }):
    what WIN_CERTIFICATE_UEFI_GUID carries, as the specification says and sbvarsign writes."""
    tag, start, _ = _der_header(content_info, 0)
    if tag != 0x30:
        raise MkosiError("PKCS#7 signature: not a DER SEQUENCE")
    tag, oid_start, oid_len = _der_header(content_info, start)
    if tag != 0x06 or content_info[oid_start:oid_start + oid_len] != SIGNED_DATA_OID:
        raise MkosiError("PKCS#7 signature: not of type signedData")
    tag, inner, length = _der_header(content_info, oid_start + oid_len)
    if tag != 0xA0:
        raise MkosiError("PKCS#7 signature: no content")
    return content_info[inner:inner + length]


SIGNED_DATA_OID = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2


def authenticated_variable(name: str, vendor: uuid.UUID, data: bytes, key: SigningKey,
                           cert: x509.Certificate, when: datetime.datetime) -> bytes:
    """The .auth file content for variable `name`: EFI_VARIABLE_AUTHENTICATION_2 followed by `data`."""
    timestamp = efi_time(when)
    signature = signed_data(pkcs7.PKCS7SignatureBuilder()
                 .set_data(signed_payload(name, vendor, timestamp, data))
                 .add_signer(cert, key, hashes.SHA256())
                 .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature,
                                                    pkcs7.PKCS7Options.NoAttributes, pkcs7.PKCS7Options.Binary]))
    # WIN_CERTIFICATE_UEFI_GUID: dwLength covers the whole structure (header, CertType and the signature).
    win_cert = struct.pack("<IHH", 8 + 16 + len(signature), WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID)
    return timestamp + win_cert + guid_bytes(EFI_CERT_TYPE_PKCS7) + signature + data


def _load(key_pem: Path, cert_pem: Path) -> tuple[SigningKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise MkosiError(f"SecureBootAutoEnroll=: cannot load the Secure Boot key {key_pem}: {e}")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise MkosiError(f"SecureBootAutoEnroll=: the Secure Boot key {key_pem} must be an RSA or EC key")
    data = cert_pem.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise MkosiError(f"SecureBootAutoEnroll=: cannot load the Secure Boot certificate {cert_pem}: {e}")
    return key, cert


def owner_guid(cert: x509.Certificate) -> uuid.UUID:
    """The signature owner of the entries: derived from the certificate, so rebuilds write the same files."""
    return uuid.uuid5(uuid.NAMESPACE_OID, "mkosi secure boot " + cert.fingerprint(hashes.SHA256()).hex())


def build_time() -> datetime.datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def write_auto_enroll_keys(directory: Path, key_pem: Path, cert_pem: Path,
                           when: Optional[datetime.datetime] = None) -> list[Path]:
    """PK.auth, KEK.auth and db.auth in `directory` (an ESP's loader/keys/auto); returns the files."""
    key, cert = _load(key_pem, cert_pem)
    esl = signature_list(cert.public_bytes(serialization.Encoding.DER), owner_guid(cert))
    when = when or build_time()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, vendor in VARIABLES:
        out = directory / f"{name}.auth"
        out.write_bytes(authenticated_variable(name, vendor, esl, key, cert, when))
        written.append(out)
    return written
