"""The kernel command line: splitting it like the kernel does, and assembling the one an image boots
with (root=, verity, ro/rw, the serial console)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

from mkosi.config.settings import Config


@dataclasses.dataclass(frozen=True)
class VerityInfo:
    """A verity-protected root: its root hash and the partition UUIDs derived from it."""

    roothash: str
    data_partuuid: str
    hash_partuuid: str


def kernel_cmdline_words(cmdline: str) -> list[str]:
    """Split a kernel command line the way the kernel does: whitespace outside double quotes
    separates parameters; the quotes themselves only group."""
    words = []
    current = ""
    quoted = False
    started = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append(current)
            current, started = "", False
        else:
            current += ch
            started = True
    if started:
        words.append(current)
    return words


def kernel_cmdline(
    base: Sequence[str],
    root: str | None = None,
    *,
    serial_console: bool = False,
    read_only: bool = False,
) -> str:
    """Assemble a kernel command line from `base` words.

    `root` is a root= value ("PARTUUID=…", "UUID=…", "LABEL=…", "/dev/…", or "root=…"); it is
    only added if `base` has no root= already (with none, systemd's GPT auto-discovery finds the
    root partition). "rw" (or "ro" with `read_only`) is added unless either is present, and
    console=ttyS0 with `serial_console` unless a console= is present. Duplicate words are dropped,
    keeping the first.
    """
    words: list[str] = []
    for item in base:
        words += kernel_cmdline_words(item) if " " in item and '"' not in item else [item]
    keys = {w.split("=", 1)[0] for w in words}
    if root and "root" not in keys:
        words.insert(0, root if root.startswith("root=") else f"root={root}")
    if "ro" not in keys and "rw" not in keys:
        words.append("ro" if read_only else "rw")
    if serial_console and "console" not in keys:
        words.append("console=ttyS0,115200")
    return " ".join(dict.fromkeys(w for w in words if w))


def verity_words(verity: VerityInfo) -> list[str]:
    """What the initrd's systemd-veritysetup-generator needs to open the protected root as /dev/mapper/root."""
    return [f"roothash={verity.roothash}", f"systemd.verity_root_data=PARTUUID={verity.data_partuuid}",
            f"systemd.verity_root_hash=PARTUUID={verity.hash_partuuid}"]


def image_cmdline(config: Config, root_label: str, verity: Optional[VerityInfo] = None) -> str:
    """The command line of a bootable disk image whose root partition is labelled `root_label`."""
    extra = []
    root = f"PARTLABEL={root_label}"
    if verity is not None:
        root = "/dev/mapper/root"
        extra += verity_words(verity)
    if config.format.row.root_fs == "btrfs" and config.compress_fs not in ("no", "none"):
        # mkfs.btrfs cannot compress what it writes; the kernel compresses what is written later.
        extra.append(f"rootflags=compress={config.compress_fs}")
    return kernel_cmdline([*config.kernel_command_line, *extra], root=root,
                          serial_console=config.qemu_headless, read_only=config.root_readonly)
