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

import os
import stat
from pathlib import Path

from mkosi import log
from mkosi.errors import CommandError, MkosiError
from mkosi.run import output, run

MiB = 1024 * 1024
DEFAULT_RESERVE = 32 * MiB


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
    pbkdf_memory_kib: int | None = None,
    iter_time_ms: int | None = None,
) -> str:
    """Turn the file system image `image` into a LUKS2 volume containing it; returns the LUKS UUID.

    `reserve` (a multiple of 1 MiB) is the room made for the LUKS2 header; the volume is that
    much smaller than the file. `pbkdf_memory_kib` and `iter_time_ms` tune the argon2id key
    derivation (cryptsetup's defaults otherwise: ~2 s, up to 1 GiB).
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
    if pbkdf_memory_kib is not None:
        argv.append(f"--pbkdf-memory={pbkdf_memory_kib}")
    if iter_time_ms is not None:
        argv.append(f"--iter-time={iter_time_ms}")
    argv.append(os.fspath(image))

    with log.step(f"Encrypting {image.name} with LUKS2"):
        try:
            run(argv, input=passphrase, text=False, capture=True)
        except CommandError:
            # Leave no half-made volume that could be mistaken for a usable one.
            image.unlink(missing_ok=True)
            raise
    return output(["cryptsetup", "luksUUID", os.fspath(image)]).strip()


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
