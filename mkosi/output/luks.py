"""LUKS2 encryption of file system images, in place and without device-mapper or loop devices.

The image file is grown by a reserve, then `cryptsetup reencrypt --encrypt --reduce-device-size`
encrypts it offline: the LUKS2 header is written to the front and the file system data moves
behind it. The opened volume holds the unchanged file system (plus some unused space), so no
device-mapper device has to be set up at build time. The result is no longer sparse: every
block is ciphertext.

The passphrase is read from a file and handed to cryptsetup on standard input through
`--key-file -`; it never appears on a command line or in a log. One trailing newline is
removed, so that the volume opens with the passphrase as it would be typed at boot.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

from mkosi import log
from mkosi.errors import CommandError, MkosiError
from mkosi.run import output, run

MiB = 1024 * 1024
DEFAULT_RESERVE = 32 * MiB


@dataclasses.dataclass(frozen=True)
class KdfOptions:
    """Key derivation settings for the key slot; None keeps cryptsetup's default.

    pbkdf: "argon2id", "argon2i" or "pbkdf2". Forcing iterations skips cryptsetup's benchmark
    (which takes seconds); handy for tests, weak for real images.
    """

    pbkdf: str | None = None
    memory_kib: int | None = None
    iter_time_ms: int | None = None
    force_iterations: int | None = None

    def argv(self) -> list[str]:
        out: list[str] = []
        if self.pbkdf is not None:
            out.append(f"--pbkdf={self.pbkdf}")
        if self.memory_kib is not None:
            out.append(f"--pbkdf-memory={self.memory_kib}")
        if self.iter_time_ms is not None:
            out.append(f"--iter-time={self.iter_time_ms}")
        if self.force_iterations is not None:
            out.append(f"--pbkdf-force-iterations={self.force_iterations}")
        return out


def read_passphrase(passphrase_file: Path) -> bytes:
    """The passphrase bytes from a file, without one trailing newline; warns if others can read it."""
    try:
        st = passphrase_file.stat()
        data = passphrase_file.read_bytes()
    except OSError as e:
        raise MkosiError(f"cannot read passphrase file {passphrase_file}: {e.strerror}")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warn(f"passphrase file {passphrase_file} is accessible by other users; chmod 600 it")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise MkosiError(f"passphrase file {passphrase_file} is empty")
    return data


def encrypt_image(
    image: Path,
    passphrase_file: Path,
    *,
    label: str | None = None,
    uuid: str | None = None,
    reserve: int = DEFAULT_RESERVE,
    kdf: KdfOptions | None = None,
) -> str:
    """Turn the file system image `image` into a LUKS2 volume containing it; returns the LUKS UUID.

    `reserve` (a multiple of 1 MiB) is the room made for the LUKS2 header; the volume is that
    much smaller than the file. `kdf` tunes the key slot's key derivation (cryptsetup's
    defaults otherwise: argon2id benchmarked to ~2 s, up to 1 GiB of memory).
    """
    if reserve <= 0 or reserve % MiB:
        raise MkosiError(f"LUKS header reserve {reserve} is not a positive multiple of 1 MiB")
    passphrase = read_passphrase(passphrase_file)
    size = image.stat().st_size
    os.truncate(image, size + reserve)

    argv: list[str] = [
        "cryptsetup",
        "reencrypt",
        "--encrypt",
        "--type",
        "luks2",
        "--batch-mode",
        f"--reduce-device-size={reserve // MiB}M",
        "--key-file=-",
    ]
    if label is not None:
        argv.append(f"--label={label}")
    if uuid is not None:
        argv.append(f"--uuid={uuid}")
    if kdf is not None:
        argv += kdf.argv()
    argv.append(os.fspath(image))

    with log.step(f"Encrypting {image.name} with LUKS2"):
        try:
            run(argv, input=passphrase, text=False, capture=True)
        except CommandError:
            # Leave no half-made volume that could be mistaken for a usable one.
            image.unlink(missing_ok=True)
            raise
    return output(["cryptsetup", "luksUUID", os.fspath(image)]).strip()


def keyslot_kdf(image: Path) -> KdfOptions | None:
    """The key derivation settings of the first key slot of a LUKS2 image (from luksDump), to give
    further volumes the same strength without running cryptsetup's benchmark again."""
    text = output(["cryptsetup", "luksDump", os.fspath(image)])
    fields: dict[str, str] = {}
    in_keyslots = False
    for line in text.splitlines():
        if line.startswith("Keyslots:"):
            in_keyslots = True
        elif in_keyslots and line and not line[0].isspace():
            break
        elif in_keyslots and ":" in line:
            key, value = (x.strip() for x in line.split(":", 1))
            if key.isdigit() and fields:  # the second key slot starts
                break
            fields.setdefault(key, value)
    pbkdf = fields.get("PBKDF")
    iterations = fields.get("Time cost") or fields.get("Iterations")
    if pbkdf is None or iterations is None or not iterations.isdigit():
        return None
    memory = fields.get("Memory")
    return KdfOptions(pbkdf=pbkdf, force_iterations=int(iterations),
                      memory_kib=int(memory) if memory and memory.isdigit() else None)


def luks_data_offset(image: Path) -> int:
    """Byte offset of the encrypted payload in a LUKS2 image (from luksDump)."""
    text = output(["cryptsetup", "luksDump", os.fspath(image)])
    in_segments = False
    for line in text.splitlines():
        if line.startswith("Data segments:"):
            in_segments = True
        elif in_segments and line.strip().startswith("offset:"):
            return int(line.split(":", 1)[1].strip().split()[0])
    raise MkosiError(f"cannot find the data offset of LUKS image {image}")
