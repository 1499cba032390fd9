"""SignExpectedPcr=: the .pcrsig and .pcrpkey sections of the UKIs mkosi builds, made by a real
systemd-measure and checked against an independent recomputation (systemd-measure calculate on the
sections read back from the UKI, the TPM2 PolicyPCR digest computed here, the RSA signature verified
with the public key), and the configuration of the setting."""

from __future__ import annotations

import base64
import ctypes.util
import hashlib
import json
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mkosi.boot.esp import EspOptions, populate_esp
from mkosi.boot.kernel import boot_files
from mkosi.boot.pcrsig import (
    MEASURE_LIBEXEC,
    PcrSigner,
    measured,
    pcr_signer,
    public_key_pem,
    stub_sections,
)
from mkosi.boot.pe import read_pe
from mkosi.boot.signing import generate_secure_boot_keys, verify_efi
from mkosi.boot.uki import DEFAULT_UKI_STUB, UkiProfile, build_uki
from mkosi.config import load_args
from mkosi.config.enums import Bootloader, BootProtocol, Feature, Verb
from mkosi.config.settings import Args, Config
from mkosi.errors import ConfigError, MkosiError
from mkosi.run import using_sandbox
from mkosi.sandbox import Sandbox
from mkosi.summary import summary_text
from tests.markers import needs_tools
from tests.unit.conftest import write
from tests.unit.test_uki import esp_root, fake_stub

# systemd-measure of systemd 252 (this host's) computes the policy digest with a TPM: swtpm stands in.
TSS2 = all(ctypes.util.find_library(lib) for lib in ("tss2-esys", "tss2-mu", "tss2-rc"))
needs_measure = needs_tools("objdump", "swtpm", "sbsign", "sbverify", files=(MEASURE_LIBEXEC,))
needs_tss2 = pytest.mark.skipif(not TSS2, reason="needs the TPM2 libraries (libtss2-esys, libtss2-mu, libtss2-rc)")
MEASURE = str(MEASURE_LIBEXEC)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "keys/db.key", tmp_path / "keys/db.crt"
    generate_secure_boot_keys("pcr test", 30, key, cert)
    return key, cert


def signer(key: Path, cert: Path, required: bool = True) -> PcrSigner:
    return PcrSigner(key=key, public_key=public_key_pem(cert), measure=MEASURE, required=required)


def section(path: Path, name: str, nth: int = 0) -> bytes:
    found = [s for s in read_pe(path).sections if s.name == name]
    s = found[nth]
    with path.open("rb") as f:
        f.seek(s.raw_offset)
        return f.read(s.virtual_size)


def objdump_sections(path: Path) -> list[str]:
    out = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]


def policy_pcr_digest(pcr_value: bytes, pcr: int = 11) -> bytes:
    """TPM2_PolicyPCR on a fresh policy session: H(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || H(PCRs))."""
    select = bytearray(3)
    select[pcr // 8] |= 1 << (pcr % 8)
    selection = struct.pack(">IHB", 1, 0x000B, 3) + bytes(select)   # one selection, sha256, 3 bytes
    return hashlib.sha256(bytes(32) + struct.pack(">I", 0x17F) + selection
                          + hashlib.sha256(pcr_value).digest()).digest()


def calculate(tmp: Path, uki: Path, names: Sequence[str]) -> list[bytes]:
    """systemd-measure calculate on the sections `names` as read back from the built UKI: PCR 11 per phase."""
    args = []
    for name in names:
        f = tmp / f"readback{name}"
        f.write_bytes(section(uki, name))
        args.append(f"--{name[1:]}={f}")
    out = subprocess.run([MEASURE, "calculate", *args, "--bank=sha256", "--json=short"], capture_output=True,
                         text=True, check=True).stdout
    return [bytes.fromhex(e["hash"]) for e in json.loads(out)["sha256"]]


def check_signature(doc: dict[str, Any], cert: Path, expected_pcrs: list[bytes]) -> None:
    """Every sha256 entry: PCR 11, the fingerprint of our key, a policy digest of one of the expected PCR
    values, signed by the key."""
    pem = public_key_pem(cert)
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, rsa.RSAPublicKey)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)   # i2d_PublicKey()
    entries = doc["sha256"]
    assert len(entries) == len(expected_pcrs) == 4    # the four default boot phases
    assert {e["pol"] for e in entries} == {policy_pcr_digest(v).hex() for v in expected_pcrs}
    for e in entries:
        assert e["pcrs"] == [11]
        assert e["pkfp"] == hashlib.sha256(der).hexdigest()
        # systemd-measure signs the policy digest as a message (EVP_DigestSign with SHA-256).
        public.verify(base64.b64decode(e["sig"]), bytes.fromhex(e["pol"]), padding.PKCS1v15(), hashes.SHA256())


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + b"k" * 5000)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"i" * 10000)
    osrel = tmp_path / "os-release"
    osrel.write_text("ID=debian\nVERSION_ID=12\n")
    return {"kernel": kernel, "initrd": initrd, "osrel": osrel}


# ---- what is measured ----

def test_stub_sections_are_read_from_the_stub(tmp_path: Path) -> None:
    assert stub_sections(fake_stub(tmp_path / "plain.stub")) is None    # names none: unknown
    named = fake_stub(tmp_path / "named.stub")
    named.write_bytes(named.read_bytes() + b"\0.linux\0.osrel\0.cmdline\0.initrd\0.pcrsig\0.pcrpkey\0")
    assert stub_sections(named) == frozenset({".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"})


def test_sections_the_stub_measures_and_the_tool_cannot_are_an_error(tmp_path: Path) -> None:
    options = {".linux": "--linux", ".cmdline": "--cmdline"}
    files = [(".linux", tmp_path / "l"), (".uname", tmp_path / "u"), (".cmdline", tmp_path / "c"),
             (".pcrsig", tmp_path / "s"), (".sdmagic", tmp_path / "m")]
    # An old stub that does not measure .uname: it is left out, as are .pcrsig and non-UKI sections.
    assert measured(files, frozenset({".linux", ".cmdline"}), options, "true") == [
        f"--linux={tmp_path}/l", f"--cmdline={tmp_path}/c"]
    # An unknown stub: what the tool can measure.
    assert measured(files, None, options, "true") == [f"--linux={tmp_path}/l", f"--cmdline={tmp_path}/c"]
    with pytest.raises(MkosiError, match=r"measures the UKI's \.uname section"):
        measured(files, frozenset({".linux", ".uname", ".cmdline"}), options, "true")


def test_public_key_from_certificate_public_or_private_key(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    from_cert = public_key_pem(cert)
    assert from_cert.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert public_key_pem(key) == from_cert
    pub = tmp_path / "pub.pem"
    pub.write_bytes(from_cert)
    assert public_key_pem(pub) == from_cert
    junk = write(tmp_path / "junk", "-----BEGIN NONSENSE-----\nsecret-material\n")
    with pytest.raises(MkosiError) as e:
        public_key_pem(junk)
    assert "secret-material" not in str(e.value)


# ---- real systemd-measure ----

@needs_measure
@needs_tss2
def test_uki_of_the_host_stub_carries_a_signature_that_matches_its_sections(
        tmp_path: Path, inputs: dict[str, Path], keys: tuple[Path, Path]) -> None:
    if not DEFAULT_UKI_STUB.is_file():
        pytest.skip(f"needs {DEFAULT_UKI_STUB}")
    key, cert = keys
    uki = build_uki(DEFAULT_UKI_STUB, inputs["kernel"], inputs["initrd"], "rw quiet", inputs["osrel"],
                    tmp_path / "uki.efi", uname="6.1.0-test", pcr=signer(key, cert))
    names = objdump_sections(uki)
    assert names.count(".pcrsig") == 1 and names.count(".pcrpkey") == 1
    assert section(uki, ".pcrpkey") == public_key_pem(cert)
    doc = json.loads(section(uki, ".pcrsig"))
    known = stub_sections(DEFAULT_UKI_STUB)
    assert known is not None
    measured_names = [n for n in (".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".pcrpkey") if n in known]
    check_signature(doc, cert, calculate(tmp_path, uki, measured_names))
    # A different command line would give other PCR values: the signature covers the sections.
    (tmp_path / "other").write_text("rw init=/bin/sh")
    other = subprocess.run([MEASURE, "calculate", f"--linux={inputs['kernel']}", f"--osrel={inputs['osrel']}",
                            f"--cmdline={tmp_path / 'other'}", f"--initrd={inputs['initrd']}",
                            f"--pcrpkey={tmp_path / 'readback.pcrpkey'}", "--bank=sha256", "--json=short"],
                           capture_output=True, text=True, check=True).stdout
    assert not {policy_pcr_digest(bytes.fromhex(e["hash"])).hex() for e in json.loads(other)["sha256"]} \
        & {e["pol"] for e in doc["sha256"]}


@needs_measure
@needs_tss2
def test_esp_of_a_fake_root_gets_a_signed_uki_with_pcr_sections(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """The whole path of a bootable image's ESP: the sections go in first, then sbsign signs the UKI."""
    if not DEFAULT_UKI_STUB.is_file():
        pytest.skip(f"needs {DEFAULT_UKI_STUB}")
    key, cert = keys
    root = esp_root(tmp_path)
    shutil.copyfile(DEFAULT_UKI_STUB, root / "usr/lib/systemd/boot/efi/linuxx64.efi.stub")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"initrd" * 100)
    esp = tmp_path / "esp"
    esp.mkdir()
    options = EspOptions(protocols=(BootProtocol.uefi,), entry_id="img", title="Image", bootloader=Bootloader.uki,
                         secure_boot_key=key, secure_boot_certificate=cert, pcr=signer(key, cert))
    uki = populate_esp(esp, boot_files(root, initrd, "rw", "x86_64"), options)
    assert uki is not None and verify_efi(uki, cert)
    assert {".pcrsig", ".pcrpkey", ".linux", ".initrd"} <= set(objdump_sections(uki))
    doc = json.loads(section(uki, ".pcrsig"))
    check_signature(doc, cert, calculate(tmp_path, uki, [".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"]))


@needs_measure
@needs_tss2
def test_a_stub_that_measures_what_systemd_measure_cannot(tmp_path: Path, inputs: dict[str, Path],
                                                          keys: tuple[Path, Path]) -> None:
    """A systemd 257-like stub (it measures .uname and .profile) with systemd-measure 252: yes fails naming
    the section, auto builds the UKI without PCR sections and warns."""
    measure_help = subprocess.run([MEASURE, "--help"], capture_output=True, text=True).stdout
    if "--uname=" in measure_help:
        pytest.skip("this systemd-measure measures .uname")
    key, cert = keys
    stub = fake_stub(tmp_path / "new.stub")
    stub.write_bytes(stub.read_bytes() + b"\0.linux\0.osrel\0.cmdline\0.initrd\0.uname\0.pcrsig\0.pcrpkey\0")
    args = (stub, inputs["kernel"], inputs["initrd"], "rw", inputs["osrel"], tmp_path / "uki.efi")
    with pytest.raises(MkosiError, match=r"\.uname"):
        build_uki(*args, uname="6.1", pcr=signer(key, cert))
    uki = build_uki(*args, uname="6.1", pcr=signer(key, cert, required=False),
                    profiles=[UkiProfile("ID=a")])
    assert ".pcrsig" not in objdump_sections(uki) and ".pcrpkey" not in objdump_sections(uki)
    assert objdump_sections(uki)[-1] == ".profile"


@needs_measure
@needs_tss2
def test_profiles_get_signatures_of_their_own(tmp_path: Path, inputs: dict[str, Path],
                                               keys: tuple[Path, Path]) -> None:
    """Each profile (unless SignExpectedPcr=no) has its own .pcrsig for the base sections it boots with,
    its .profile and its own .cmdline in place of the base one."""
    key, cert = keys
    stub = fake_stub(tmp_path / "unknown.stub")      # names no sections: what systemd-measure knows
    profiles = [UkiProfile("ID=debug", "rw debug"), UkiProfile("ID=quiet", "", sign_expected_pcr=False)]
    uki = build_uki(stub, inputs["kernel"], inputs["initrd"], "rw", inputs["osrel"], tmp_path / "uki.efi",
                    pcr=signer(key, cert), profiles=profiles)
    names = [s.name for s in read_pe(uki).sections]
    assert names[2:] == [".osrel", ".cmdline", ".initrd", ".linux", ".pcrpkey", ".pcrsig",
                         ".profile", ".cmdline", ".pcrsig", ".profile"]
    base = calculate(tmp_path, uki, [".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"])
    check_signature(json.loads(section(uki, ".pcrsig", 0)), cert, base)
    measure_help = subprocess.run([MEASURE, "--help"], capture_output=True, text=True).stdout
    profile_args = [f"--profile={tmp_path / 'p'}"] if "--profile=" in measure_help else []
    (tmp_path / "p").write_bytes(section(uki, ".profile", 0))
    (tmp_path / "c").write_bytes(section(uki, ".cmdline", 1))
    assert (tmp_path / "c").read_bytes() == b"rw debug"
    out = subprocess.run([MEASURE, "calculate", f"--linux={inputs['kernel']}", f"--osrel={inputs['osrel']}",
                          f"--cmdline={tmp_path / 'c'}", f"--initrd={inputs['initrd']}",
                          f"--pcrpkey={tmp_path / 'readback.pcrpkey'}", *profile_args, "--bank=sha256",
                          "--json=short"], capture_output=True, text=True, check=True).stdout
    check_signature(json.loads(section(uki, ".pcrsig", 1)), cert,
                    [bytes.fromhex(e["hash"]) for e in json.loads(out)["sha256"]])


# ---- configuration ----

@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed_host: None) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(*argv: str, verb: str = "summary") -> Config:
    _, configs = load_args([*argv, verb])
    return configs[-1]


def test_defaults_follow_the_secure_boot_key(cfg: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    config = load(f"--secure-boot-key={key}", f"--secure-boot-certificate={cert}")
    assert config.sign_expected_pcr == Feature.auto
    assert (config.sign_expected_pcr_key, config.sign_expected_pcr_certificate) == (key, cert)
    other = write(cfg / "pcr.key", "x")
    config = load(f"--secure-boot-key={key}", f"--sign-expected-pcr-key={other}")
    assert config.sign_expected_pcr_key == other


def test_classic_name_and_summary(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(cfg / "mkosi.default", "[Output]\nSignExpectedPCR=yes\n")
    config = load()
    assert "Warning" not in capsys.readouterr().err      # mkosi 14's spelling and section
    assert config.sign_expected_pcr == Feature.enabled
    text = summary_text(Args(verb=Verb.summary), [config])
    lines = [line for line in text.splitlines() if "expected pcr" in line.lower() or "ExpectedPcr" in line]
    assert lines and not any("not implemented" in line for line in lines
                             if "Source" not in line and "source" not in line), lines


def test_yes_without_a_key_names_the_setting(cfg: Path) -> None:
    write(cfg / "mkosi.default", "[Output]\nBootable=yes\n[Validation]\nSignExpectedPcr=yes\n")
    with pytest.raises(ConfigError) as e:
        load(verb="build")
    text = str(e.value)
    assert "SignExpectedPcr" in text and "mkosi.default" in text and "private key" in text
    assert load().sign_expected_pcr == Feature.enabled     # summary does not need the key


def test_a_missing_key_file_names_its_setting(cfg: Path) -> None:
    write(cfg / "mkosi.default", "[Validation]\nSignExpectedPcr=yes\nSignExpectedPcrKey=/nonexistent/pcr.key\n")
    with pytest.raises(ConfigError, match="SignExpectedPcrKey"):
        load(verb="build")


@pytest.mark.parametrize("value", ["no", "auto"])
def test_no_and_auto_need_no_key(cfg: Path, value: str) -> None:
    write(cfg / "mkosi.default", f"[Output]\nBootable=yes\n[Validation]\nSignExpectedPcr={value}\n")
    config = load(verb="build")
    assert pcr_signer(config) is None


def test_auto_signs_with_secure_boot_and_systemd_measure(cfg: Path, keys: tuple[Path, Path]) -> None:
    key, cert = keys
    base = ("--bootable", f"--secure-boot-key={key}", f"--secure-boot-certificate={cert}")
    assert pcr_signer(load(*base)) is None                          # auto without SecureBoot=yes
    assert pcr_signer(load(*base, "--sign-expected-pcr=no", "--secure-boot")) is None
    empty_tools = cfg / "tools"
    (empty_tools / "usr/bin").mkdir(parents=True)
    with using_sandbox(Sandbox(tools=empty_tools)):                 # a tools tree without systemd-measure
        assert pcr_signer(load(*base, "--secure-boot")) is None
        with pytest.raises(MkosiError, match="needs systemd-measure"):
            pcr_signer(load(*base, "--sign-expected-pcr=yes"))
    if not MEASURE_LIBEXEC.is_file():
        return
    auto = pcr_signer(load(*base, "--secure-boot"))
    assert auto is not None and not auto.required and auto.key == key
    assert auto.public_key == public_key_pem(cert)
    yes = pcr_signer(load("--bootable", "--sign-expected-pcr=yes", f"--sign-expected-pcr-key={key}"))
    assert yes is not None and yes.required and yes.public_key == public_key_pem(key)   # derived from the key
