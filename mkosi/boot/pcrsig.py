"""SignExpectedPcr=: the signed expected PCR 11 values of a unified kernel image.

systemd-stub measures the UKI's sections into PCR 11 and hands the UKI's `.pcrsig` (the JSON that
`systemd-measure sign` prints: per bank and boot phase the PCR policy digest and its signature) and
`.pcrpkey` (the PEM public key) to the booted system as /run/systemd/tpm2-pcr-signature.json and
tpm2-pcr-public-key.pem, so that TPM2-sealed secrets can be bound to "whatever this key signed".

Which sections are measured is the stub's business: an old stub (systemd 252) knows neither .uname
nor .sbat, so they must not be given to systemd-measure for it. The stub's list is read from the
stub itself (its section names are strings in its code). systemd-measure of systemd 253 and older
computes the policy digest with a TPM; without /dev/tpmrm0 a private swtpm does it (the digest is
a pure function of the PCR values, any TPM gives the same)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from mkosi import log
from mkosi.boot.pe import read_pe
from mkosi.boot.signing import key_reference
from mkosi.config.enums import Feature
from mkosi.config.settings import Config
from mkosi.errors import CommandError, MkosiError
from mkosi.run import current_sandbox, find_tool, run, spawn, stop_process

MEASURE = "systemd-measure"
MEASURE_LIBEXEC = Path("/usr/lib/systemd/systemd-measure")

# Every section some systemd-stub measures into PCR 11 (.pcrsig itself is never measured).
UKI_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".dtbauto", ".hwids",
                ".uname", ".sbat", ".pcrpkey", ".profile")
DEFAULT_BANKS = ("sha256",)


def find_measure() -> Optional[str]:
    """systemd-measure as the current sandbox sees it: on $PATH (ExtraSearchPaths=), else in
    /usr/lib/systemd of the tools tree (which appears as /usr) or of the host."""
    found = find_tool(MEASURE)
    if found is not None:
        return found
    sandbox = current_sandbox()
    top = sandbox.tools if sandbox.tools is not None else Path("/")
    return os.fspath(MEASURE_LIBEXEC) if (top / MEASURE_LIBEXEC.relative_to("/")).is_file() else None


def _from_certificate(data: bytes) -> PublicKeyTypes:
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data).public_key()
    return x509.load_der_x509_certificate(data).public_key()


def _from_public_key(data: bytes) -> PublicKeyTypes:
    if data.lstrip().startswith(b"-----"):
        return serialization.load_pem_public_key(data)
    return serialization.load_der_public_key(data)


def _from_private_key(data: bytes) -> PublicKeyTypes:
    if data.lstrip().startswith(b"-----"):
        return serialization.load_pem_private_key(data, password=None).public_key()
    return serialization.load_der_private_key(data, password=None).public_key()


def public_key_pem(path: Path) -> bytes:
    """The SubjectPublicKeyInfo PEM of an X.509 certificate, a public key or a private key (PEM or DER)."""
    data = path.read_bytes()
    public: Optional[PublicKeyTypes] = None
    for load in (_from_certificate, _from_public_key, _from_private_key):
        try:
            public = load(data)
            break
        except (ValueError, TypeError):
            continue
    if public is not None:
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Never the file's contents: it may be a private key.
    raise MkosiError(f"{path} is neither a certificate nor a public or private key (PEM or DER) "
                     "without a passphrase")


@dataclasses.dataclass(frozen=True)
class PcrSigner:
    """How a UKI's expected PCR values are signed: the private key (a path; its contents are only read
    by systemd-measure), the public key that goes into .pcrpkey, systemd-measure, and whether a failure
    is an error (SignExpectedPcr=yes) or leaves the UKI without signature with a warning (auto)."""

    key: Path
    public_key: bytes
    measure: str
    required: bool = True
    banks: tuple[str, ...] = DEFAULT_BANKS
    key_source: str = "file"       # SignExpectedPcrKeySource=: file, engine:NAME or provider:NAME


def pcr_signer(config: Config) -> Optional[PcrSigner]:
    """The signer SignExpectedPcr= asks for: always with yes, with auto only when SecureBoot=yes, a key is
    set and systemd-measure is found."""
    wanted = config.sign_expected_pcr
    key = config.sign_expected_pcr_key
    if wanted == Feature.disabled:
        return None
    if wanted == Feature.auto and (not config.secure_boot or key is None):
        return None
    measure = find_measure()
    if measure is None:
        if wanted == Feature.auto:
            log.debug("SignExpectedPcr=auto: systemd-measure not found, the UKIs carry no PCR signature")
            return None
        raise MkosiError("SignExpectedPcr=yes needs systemd-measure (/usr/lib/systemd/systemd-measure)",
                         hint="install systemd-ukify (or systemd) on the host or in the tools tree")
    if key is None:
        raise MkosiError("SignExpectedPcr=yes needs a private key (SignExpectedPcrKey= or SecureBootKey=)")
    source = config.sign_expected_pcr_key_source
    cert = config.sign_expected_pcr_certificate
    if config.sign_expected_pcr_certificate_source != "file":
        raise MkosiError(f"SignExpectedPcrCertificateSource={config.sign_expected_pcr_certificate_source}: mkosi "
                         "reads the certificate for the UKIs' .pcrpkey section from a file only",
                         hint="give SignExpectedPcrCertificate= as a PEM file (a certificate or public key)")
    if source != "file" and cert is None:
        raise MkosiError(f"SignExpectedPcrKeySource={source} needs SignExpectedPcrCertificate= (a PEM file): "
                         "the public key for .pcrpkey cannot be read from the engine or provider")
    public = public_key_pem(cert or key)
    return PcrSigner(key=Path(key_reference(key, source)), public_key=public, measure=measure,
                     required=wanted == Feature.enabled, key_source=source)


# ---- what the stub and systemd-measure know ----

def stub_sections(stub: Path) -> Optional[frozenset[str]]:
    """The UKI sections the stub measures, from the section names among its strings; None when it names
    none of them (an unknown stub: everything systemd-measure knows is measured)."""
    data = stub.read_bytes()
    found = frozenset(name for name in UKI_SECTIONS if b"\0" + name.encode() + b"\0" in data)
    return found if ".linux" in found else None


_OPTION = re.compile(r"--([a-z0-9-]+)=PATH\b.*?(\.[a-z0-9]+)\s*$")


def measure_options(measure: str) -> dict[str, str]:
    """Section name -> systemd-measure option, from its --help (which lists "--linux=PATH ... → .linux")."""
    proc = run([measure, "--help"], capture=True, check=False, env={"SYSTEMD_PAGER": "", "NO_COLOR": "1"})
    options = {}
    for line in proc.stdout.splitlines():
        m = _OPTION.search(line)
        if m:
            options[m.group(2)] = f"--{m.group(1)}"
    if ".linux" not in options:
        raise MkosiError(f"{measure} --help lists no UKI section options; is it systemd-measure?")
    return options


def measure_version(measure: str) -> str:
    proc = run([measure, "--version"], capture=True, check=False)
    m = re.search(r"systemd (\d+)", proc.stdout or "")
    return m.group(1) if m else "?"


def measured(sections: Sequence[tuple[str, Path]], known: Optional[frozenset[str]],
             options: dict[str, str], measure: str) -> list[str]:
    """The systemd-measure arguments for `sections` (name, file): those the stub measures. A section the
    stub measures but systemd-measure cannot take is an error (the signature would not match); with a
    stub that names no sections (known=None), what systemd-measure can take."""
    argv = []
    names = [name for name, _ in sections]
    if names.count(".dtbauto") > 1:
        raise MkosiError("SignExpectedPcr= with several devicetrees (.dtbauto sections) is not implemented: the "
                         "stub measures the one the machine picks", hint="narrow Devicetrees= to one devicetree, "
                         "or set SignExpectedPcr=no")
    for name, path in sections:
        if name == ".pcrsig" or name not in UKI_SECTIONS or (known is not None and name not in known):
            continue
        option = options.get(name)
        if option is None and known is None:
            log.debug(f"{measure} cannot measure {name}; an unknown EFI stub may not measure it either")
            continue
        if option is None:
            raise MkosiError(f"the EFI stub measures the UKI's {name} section, which {measure} (systemd "
                             f"{measure_version(measure)}) cannot measure",
                             hint="use a tools tree with a newer systemd (ToolsTree=)")
        argv.append(f"{option}={os.fspath(path)}")
    return argv


# ---- signing ----

def _sign_argv(signer: PcrSigner, section_args: Sequence[str], pubkey: Path) -> list[str]:
    source = [f"--private-key-source={signer.key_source}"] if signer.key_source != "file" else []
    return [signer.measure, "sign", *section_args, f"--private-key={os.fspath(signer.key)}", *source,
            f"--public-key={os.fspath(pubkey)}", *(f"--bank={b}" for b in signer.banks), "--json=short"]


def _with_swtpm(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """argv run against a private software TPM (old systemd-measure computes the policy digest with a
    TPM). Its state and sockets live in a directory of their own, removed afterwards."""
    swtpm = find_tool("swtpm")
    if swtpm is None:
        raise MkosiError("no swtpm to compute the policy digest with")
    with tempfile.TemporaryDirectory(prefix="mkosi-swtpm-") as d:
        return _run_with_swtpm(argv, swtpm, Path(d))


def _run_with_swtpm(argv: list[str], swtpm: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    state = tmp / "state"
    state.mkdir()
    sock = tmp / "sock"
    proc = spawn([swtpm, "socket", "--tpm2", "--tpmstate", f"dir={state}",
                  "--server", f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl",
                  "--flags", "startup-clear"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (sock.exists() and Path(f"{sock}.ctrl").exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise MkosiError("swtpm did not start")
            time.sleep(0.05)
        return run([*argv, f"--tpm2-device=swtpm:path={sock}"], capture=True, check=False)
    finally:
        stop_process(proc, timeout=10)


def _run_sign(argv: list[str]) -> str:
    """systemd-measure sign's JSON; with a TPM-less host and an old systemd-measure, through swtpm."""
    first = run(argv, capture=True, check=False)
    if first.returncode == 0:
        return str(first.stdout)
    if not Path("/dev/tpmrm0").exists() and find_tool("swtpm") is not None:
        log.debug("systemd-measure failed without a TPM, trying again with a private swtpm")
        second = _with_swtpm(argv)
        if second.returncode == 0:
            return str(second.stdout)
        first = second
    raise CommandError(argv, first.returncode, (first.stderr or "").strip())


def _check_json(text: str, banks: Sequence[str]) -> str:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MkosiError(f"systemd-measure sign printed no JSON ({e})")
    if not isinstance(data, dict) or any(not data.get(b) for b in banks):
        raise MkosiError(f"systemd-measure sign printed no signature for the {', '.join(banks)} bank(s)")
    return json.dumps(data, separators=(",", ":"))


def pcrpkey_file(signer: PcrSigner, tmp: Path) -> Path:
    """The public key as a file in `tmp`: the contents of .pcrpkey and systemd-measure's --public-key."""
    path = tmp / "pcrpkey.pem"
    if not path.exists():
        path.write_bytes(signer.public_key)
    return path


def sign_sections(signer: PcrSigner, stub: Path, sections: Sequence[tuple[str, Path]], tmp: Path,
                  name: str = "pcrsig") -> Optional[Path]:
    """Write the .pcrsig contents for a UKI of `stub` plus `sections` (which carry the .pcrpkey) to a file
    in `tmp`; the stub's own .sbat is measured when the stub measures it. None when SignExpectedPcr=auto
    and systemd-measure cannot sign (with a warning)."""
    known = stub_sections(stub)
    all_sections = list(sections)
    sbat = read_pe(stub).section(".sbat")
    if sbat is not None and sbat.virtual_size and (known is None or ".sbat" in known) \
            and not any(n == ".sbat" for n, _ in sections):
        sbat_file = tmp / "stub.sbat"
        if not sbat_file.exists():
            with stub.open("rb") as f:
                f.seek(sbat.raw_offset)
                data = f.read(min(sbat.virtual_size, sbat.raw_size))
            sbat_file.write_bytes(data + bytes(sbat.virtual_size - len(data)))
        all_sections.append((".sbat", sbat_file))
    try:
        options = measure_options(signer.measure)
        args = measured(all_sections, known, options, signer.measure)
        pubkey = pcrpkey_file(signer, tmp)
        text = _check_json(_run_sign(_sign_argv(signer, args, pubkey)), signer.banks)
    except MkosiError as e:
        if signer.required:
            raise MkosiError(f"SignExpectedPcr=: signing the expected PCR values failed: {e}",
                             hint="systemd-measure needs the TPM2 libraries (libtss2-esys, libtss2-mu, "
                                  "libtss2-rc) on the host or in the tools tree")
        log.warn(f"SignExpectedPcr=auto: the UKI carries no PCR signature, systemd-measure could not sign: {e}")
        return None
    out = tmp / name
    out.write_text(text)
    return out
