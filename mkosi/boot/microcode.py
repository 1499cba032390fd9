"""MicrocodeHost=: an early microcode initrd with only the host CPU's microcode, taken from the image's
firmware (intel-microcode, amd64-microcode), to put in front of the image's initrd."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import run
from mkosi.trees import resolve_in_root

# Where the kernel looks for early microcode in the first (uncompressed) cpio archive of the initrd.
EARLY_DIR = "kernel/x86/microcode"


@dataclasses.dataclass(frozen=True)
class Cpu:
    vendor: str     # GenuineIntel, AuthenticAMD, ...
    family: int
    model: int
    stepping: int


def host_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Cpu:
    """The first processor of /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError as e:
        raise MkosiError(f"MicrocodeHost=yes: cannot read {cpuinfo}: {e.strerror}") from None
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return Cpu(fields["vendor_id"], int(fields["cpu family"]), int(fields["model"]), int(fields["stepping"]))
    except (KeyError, ValueError):
        raise MkosiError(f"MicrocodeHost=yes: {cpuinfo} does not say the vendor, family, model and stepping "
                         "of the CPU (only x86 CPUs load early microcode)") from None


def microcode_path(cpu: Cpu) -> str:
    """The file below /usr/lib/firmware that has the microcode of `cpu`."""
    if cpu.vendor == "GenuineIntel":
        return f"intel-ucode/{cpu.family:02x}-{cpu.model:02x}-{cpu.stepping:02x}"
    if cpu.vendor == "AuthenticAMD":
        return f"amd-ucode/microcode_amd_fam{cpu.family:x}h.bin" if cpu.family >= 0x15 \
            else "amd-ucode/microcode_amd.bin"
    raise MkosiError(f"MicrocodeHost=yes: no early microcode for {cpu.vendor} CPUs")


def host_microcode_initrd(root: Path, output: Path, cpu: Optional[Cpu] = None) -> Optional[Path]:
    """An uncompressed cpio with kernel/x86/microcode/VENDOR.bin: the image's microcode for the host
    CPU; None (with a warning) when the image has none for it."""
    cpu = cpu or host_cpu()
    rel = microcode_path(cpu)
    src = resolve_in_root(root, f"usr/lib/firmware/{rel}")
    if not src.is_file():
        log.warn(f"MicrocodeHost=yes: the image has no microcode for the host's CPU (/usr/lib/firmware/{rel}); "
                 "the initrd has no early microcode (install intel-microcode or amd64-microcode)")
        return None
    tree = output.with_name(f".{output.name}.tree")
    shutil.rmtree(tree, ignore_errors=True)
    (tree / EARLY_DIR).mkdir(parents=True)
    shutil.copyfile(src, tree / EARLY_DIR / f"{cpu.vendor}.bin")
    names = ["kernel", "kernel/x86", EARLY_DIR, f"{EARLY_DIR}/{cpu.vendor}.bin"]
    with open(output, "wb") as out:
        run(["cpio", "--create", "--null", "--format=newc", "--quiet", "--reproducible"], cwd=tree,
            input=b"\0".join(n.encode() for n in names) + b"\0", stdout=out, text=False)
    shutil.rmtree(tree)
    return output
