"""Running images in QEMU: a real KVM probe, firmware discovery and the qemu command line."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import run

# ---------------------------------------------------------------------------------------------
# KVM probe
# ---------------------------------------------------------------------------------------------

# /dev/kvm being present does not mean guests run: on some hosts (nested or paravirtualised KVM)
# the guest hangs as soon as it leaves real mode, or qemu aborts while setting up the vCPU. So
# the probe boots a tiny firmware image of our own under KVM and checks that it gets all the way
# to 64-bit long mode. Its source (GNU as, x86-64; assembled at offset 0 of the ROM, which the
# CPU sees at 0xF0000 after the reset vector's far jump):
#
#         .code16
#         cli
#         mov  $0x3f8,%dx ; mov $'R',%al ; out %al,%dx        # COM1: "R" (real mode)
#         lgdtl %cs:gdtr
#         mov  %cr0,%eax ; or $1,%eax ; mov %eax,%cr0         # protected mode
#         ljmpl $0x08,$pm32
#         .code32
# pm32:   mov  $0x10,%ax ; mov %ax,%ds ; mov %ax,%es ; mov %ax,%ss
#         mov  $0x3f8,%dx ; mov $'P',%al ; out %al,%dx        # "P"
#         mov  $0x10000,%edi ; xor %eax,%eax ; mov $3072,%ecx ; cld ; rep stosl
#         movl $0x11003,0x10000                               # PML4[0] -> PDPT
#         movl $0x12003,0x11000                               # PDPT[0] -> PD
#         movl $0x83,0x12000                                  # PD[0]: 2 MiB identity page
#         mov  %cr4,%eax ; or $0x20,%eax ; mov %eax,%cr4      # PAE
#         mov  $0x10000,%eax ; mov %eax,%cr3
#         mov  $0xC0000080,%ecx ; rdmsr ; or $0x100,%eax ; wrmsr   # EFER.LME
#         mov  %cr0,%eax ; or $0x80000000,%eax ; mov %eax,%cr0     # paging on
#         ljmp $0x18,$lm64
#         .code64
# lm64:   mov  $0x3f8,%dx ; mov $'L',%al ; out %al,%dx        # "L"
#         mov  $0xf4,%dx ; mov $0x21,%al ; out %al,%dx        # isa-debug-exit: status 0x43
# 1:      hlt ; jmp 1b
# gdt:    null, 32-bit code (0x00cf9a000000ffff), data (0x00cf92000000ffff),
#         64-bit code (0x00af9a000000ffff); gdtr: limit, base
_PROBE_CODE = bytes.fromhex(
    "fabaf803b052ee2e660f0116c0000f20c06683c8010f22c066ea20000f00080066b810008ed88ec08ed066baf803b0"
    "50eebf0000010031c0b9000c0000fcf3abc7050000010003100100c7050010010003200100c70500200100830000"
    "000f20e083c8200f22e0b8000001000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0ea8f00"
    "0f00180066baf803b04cee66baf400b021eef4ebfd0000000000000000ffff0000009acf00ffff00000092cf00ff"
    "ff0000009aaf001f00a0000f00"
)
_PROBE_MARKER = b"RPL"
# isa-debug-exit makes qemu exit with (value << 1) | 1.
_PROBE_EXIT_STATUS = (0x21 << 1) | 1
_PROBE_ROM_SIZE = 64 * 1024

_kvm_probe_result: dict[str, bool] = {}


def probe_rom() -> bytes:
    """The 64 KiB firmware image used by probe_kvm(): the probe code at offset 0 and, at the reset
    vector (16 bytes before the end), a far jump to it through the ROM's alias below 1 MiB."""
    rom = bytearray(b"\xf4" * _PROBE_ROM_SIZE)  # hlt everywhere else
    rom[: len(_PROBE_CODE)] = _PROBE_CODE
    rom[_PROBE_ROM_SIZE - 16 : _PROBE_ROM_SIZE - 11] = bytes([0xEA, 0x00, 0x00, 0x00, 0xF0])  # ljmp f000:0
    return bytes(rom)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_probe_guest(qemu: str, timeout: float, *, accel: str = "kvm", cpu: str = "host") -> tuple[bool, str]:
    """Boot the probe firmware with the given accelerator and CPU model. Returns (whether it
    reached long mode and exited as expected, an explanation)."""
    with tempfile.TemporaryDirectory(prefix="mkosi-kvm-probe-") as tmp:
        rom = Path(tmp) / "probe.rom"
        rom.write_bytes(probe_rom())
        argv = [
            qemu,
            "-accel", accel,
            "-cpu", cpu,
            "-machine", "q35",
            "-m", "64",
            "-nodefaults",
            "-display", "none",
            "-no-user-config",
            "-bios", os.fspath(rom),
            "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01",
        ]  # fmt: skip
        log.debug("+ " + " ".join(argv))
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return False, f"the test guest did not finish within {timeout:g}s"
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    if proc.returncode == _PROBE_EXIT_STATUS and _PROBE_MARKER in out:
        return True, "the test guest reached long mode"
    reason = err.decode(errors="replace").strip().splitlines()
    return False, (
        f"the test guest exited with status {proc.returncode}, output {out!r}"
        + (f": {reason[-1]}" if reason else "")
    )


def probe_kvm(timeout: float = 5.0) -> bool:
    """Whether KVM guests really run on this host. Cached for the life of the process.

    Starts a throw-away guest under KVM (bounded by `timeout`, its process group is killed if it
    hangs) that switches from real mode to protected mode to long mode with paging, reporting on
    the serial port and exiting through isa-debug-exit. Only if all of that happens is KVM used.
    On hosts that are not x86-64 this falls back to checking /dev/kvm can be opened.
    """
    if "result" in _kvm_probe_result:
        return _kvm_probe_result["result"]

    result = False
    if not os.path.exists("/dev/kvm"):
        log.debug("KVM probe: /dev/kvm does not exist")
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log.debug("KVM probe: no read/write access to /dev/kvm")
    elif platform.machine() not in ("x86_64", "AMD64", "amd64"):
        result = True
        log.debug("KVM probe: /dev/kvm is accessible (no guest probe on this architecture)")
    else:
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            log.debug("KVM probe: qemu-system-x86_64 not found")
        else:
            result, reason = run_probe_guest(qemu, timeout)
            log.debug(f"KVM probe: {'usable' if result else 'not usable'}, {reason}")
    _kvm_probe_result["result"] = result
    return result


def reset_kvm_probe_cache() -> None:
    _kvm_probe_result.clear()


# ---------------------------------------------------------------------------------------------
# Firmware discovery
# ---------------------------------------------------------------------------------------------

# Fallback locations of (code, variable store template) when no firmware descriptor matches:
# Debian/Ubuntu, Fedora, Arch, openSUSE, Gentoo and generic upstream layouts.
_OVMF_PATHS: dict[str, list[tuple[str, str]]] = {
    "x86_64": [
        ("usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("usr/share/OVMF/OVMF_CODE.fd", "usr/share/OVMF/OVMF_VARS.fd"),
        ("usr/share/edk2/ovmf/OVMF_CODE.fd", "usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ("usr/share/edk2/x64/OVMF_CODE.4m.fd", "usr/share/edk2/x64/OVMF_VARS.4m.fd"),
        ("usr/share/edk2/x64/OVMF_CODE.fd", "usr/share/edk2/x64/OVMF_VARS.fd"),
        ("usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),
        ("usr/share/edk2-ovmf/OVMF_CODE.fd", "usr/share/edk2-ovmf/OVMF_VARS.fd"),
        ("usr/share/qemu/ovmf-x86_64-code.bin", "usr/share/qemu/ovmf-x86_64-vars.bin"),
        ("usr/share/ovmf/x64/OVMF_CODE.fd", "usr/share/ovmf/x64/OVMF_VARS.fd"),
    ],
    "aarch64": [
        ("usr/share/AAVMF/AAVMF_CODE.fd", "usr/share/AAVMF/AAVMF_VARS.fd"),
        ("usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "usr/share/edk2/aarch64/vars-template-pflash.raw"),
        ("usr/share/edk2/aarch64/QEMU_CODE.fd", "usr/share/edk2/aarch64/QEMU_VARS.fd"),
        ("usr/share/qemu/aavmf-aarch64-code.bin", "usr/share/qemu/aavmf-aarch64-vars.bin"),
    ],
}
_OVMF_SECURE_PATHS: dict[str, list[tuple[str, str]]] = {
    "x86_64": [
        ("usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("usr/share/OVMF/OVMF_CODE.secboot.fd", "usr/share/OVMF/OVMF_VARS.fd"),
        ("usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "usr/share/edk2/ovmf/OVMF_VARS.fd"),
        ("usr/share/edk2/x64/OVMF_CODE.secboot.4m.fd", "usr/share/edk2/x64/OVMF_VARS.4m.fd"),
        ("usr/share/qemu/ovmf-x86_64-smm-code.bin", "usr/share/qemu/ovmf-x86_64-smm-vars.bin"),
    ],
    "aarch64": [],
}
_MACHINE_PATTERNS = {"x86_64": "pc-q35-", "aarch64": "virt"}


def _rebase(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _firmware_descriptors(root: Path) -> list[dict[str, Any]]:
    """qemu firmware descriptors (docs/interop/firmware.json), later directories overriding
    files of the same name in earlier ones, ordered by file name."""
    by_name: dict[str, Path] = {}
    for d in ("usr/share/qemu/firmware", "etc/qemu/firmware"):
        directory = root / d
        if directory.is_dir():
            for f in directory.glob("*.json"):
                by_name[f.name] = f
    result = []
    for name in sorted(by_name):
        try:
            data = json.loads(by_name[name].read_text())
        except (OSError, ValueError) as e:
            log.debug(f"ignoring firmware descriptor {by_name[name]}: {e}")
            continue
        if isinstance(data, dict):
            result.append(data)
    return result


def _descriptor_match(
    desc: dict[str, Any], arch: str, secure_boot: bool, root: Path
) -> tuple[Path, Path] | None:
    try:
        if "uefi" not in desc.get("interface-types", []):
            return None
        mapping = desc["mapping"]
        if mapping.get("device") != "flash":
            return None
        targets = desc.get("targets", [])
        pattern = _MACHINE_PATTERNS.get(arch, "")
        if not any(
            t.get("architecture") == arch and any(m.startswith(pattern) for m in t.get("machines", []))
            for t in targets
        ):
            return None
        features = set(desc.get("features", []))
        if ("secure-boot" in features) != secure_boot:
            return None
        # Keys enrolled by the distribution (Microsoft's) would reject our own signatures.
        if "enrolled-keys" in features:
            return None
        code = _rebase(root, mapping["executable"]["filename"])
        template = _rebase(root, mapping["nvram-template"]["filename"])
    except (KeyError, TypeError, AttributeError):
        return None
    if code.is_file() and template.is_file():
        return code, template
    return None


def find_ovmf(
    arch: str = "x86_64", *, secure_boot: bool = False, root: Path = Path("/")
) -> tuple[Path, Path]:
    """Find UEFI firmware for qemu: (code image, variable store template).

    qemu's firmware descriptors are consulted first, then well-known paths of the common
    distributions. With `secure_boot`, a build that supports Secure Boot (and needs SMM) is
    chosen instead, without pre-enrolled keys. `root` is for tests.
    """
    for desc in _firmware_descriptors(root):
        found = _descriptor_match(desc, arch, secure_boot, root)
        if found:
            return found
    for code, template in (_OVMF_SECURE_PATHS if secure_boot else _OVMF_PATHS).get(arch, []):
        if (root / code).is_file() and (root / template).is_file():
            return root / code, root / template
    package = "ovmf" if arch == "x86_64" else "qemu-efi-aarch64"
    what = "Secure Boot capable UEFI firmware" if secure_boot else "UEFI firmware"
    raise MkosiError(
        f"no {what} for {arch} found (looked for OVMF_CODE*.fd with a matching OVMF_VARS*.fd)",
        hint=f"install it with: apt-get install {package}",
    )


def find_seabios(root: Path = Path("/")) -> Path:
    """Find the SeaBIOS image qemu uses for BIOS boots."""
    for p in (
        "usr/share/seabios/bios-256k.bin",
        "usr/share/qemu/bios-256k.bin",
        "usr/share/seabios/bios.bin",
        "usr/share/qemu/bios.bin",
    ):
        if (root / p).is_file():
            return root / p
    raise MkosiError("SeaBIOS firmware not found", hint="install it with: apt-get install seabios")


def copy_ovmf_vars(dest: Path, *, arch: str = "x86_64", secure_boot: bool = False) -> Path:
    """Copy the UEFI variable store template to `dest` (a writable per-VM copy)."""
    _, template = find_ovmf(arch, secure_boot=secure_boot)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, dest)
    dest.chmod(0o600)
    return dest


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_BOOT_MODES = ("uefi", "bios", "linux")
_FORMATS = ("raw", "qcow2")


def qemu_command(
    *,
    image: Path | None,
    fmt: str = "raw",
    boot: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
    smp: str = "2",
    mem: str = "2G",
    kvm: bool,
    headless: bool = True,
    extra_args: Sequence[str] = (),
    netdev: bool = False,
    tap: str | None = None,
    ssh_port: int | None = None,
    guest_ssh_port: int = 22,
    ovmf_vars_copy: Path | None = None,
    arch: str = "x86_64",
    secure_boot: bool = False,
    ovmf_code: Path | None = None,
    firmware_root: Path = Path("/"),
    console: str | None = None,
    devices: Sequence[str] = (),
    maxmem: str | None = None,
    removable: bool = False,
) -> list[str]:
    """The complete qemu argv to boot `image`.

    boot: "uefi" (OVMF from pflash; the variable store is `ovmf_vars_copy`, or, without one, the
    template opened with snapshot=on so it is never modified), "bios" (SeaBIOS) or "linux" (direct
    kernel boot of `kernel`/`initrd` with `cmdline`; console=ttyS0 is added when headless and no
    console= is given). The disk is virtio-blk, entropy comes from virtio-rng. With `kvm` the
    accelerator is KVM and the CPU model "host", otherwise TCG with "max". `headless` means
    -nographic (serial console and monitor on stdio). `tap` gives the VM a virtio NIC on a tap device of
    that name, which qemu creates on the host (Netdev=); `netdev` adds user-mode networking with a
    virtio NIC; `ssh_port` forwards 127.0.0.1:ssh_port to the guest's port guest_ssh_port through it.
    `maxmem` (MaxMem=, larger than `mem`) lets memory devices be hotplugged up to that size, in
    HOTPLUG_SLOTS slots. With `removable` the disk is a removable USB stick (usb-storage on an xHCI
    controller) instead of virtio-blk.
    `console` (a Console= mode) replaces what `headless` says about the display. `devices` (the argv
    fragments of the functions below: TPM, drives, credentials, shared directories, vsock) come after
    the disk and the network; `extra_args` go last.
    """
    _check_options(boot, fmt, arch, kernel, image, ssh_port, netdev)
    argv = [f"qemu-system-{arch}", *_machine_args(arch, boot, secure_boot, kvm, smp, memory_option(mem, maxmem),
                                                  headless and console is None)]
    if console is not None:
        argv += console_args(console, arch)
    if boot == "uefi":
        argv += _uefi_args(arch, secure_boot, ovmf_code, ovmf_vars_copy, firmware_root)
    elif arch == "x86_64":
        argv += ["-bios", os.fspath(find_seabios(firmware_root))]
    if boot == "linux":
        assert kernel is not None
        argv += _kernel_args(kernel, initrd, cmdline, headless, arch)
    elif boot == "uefi" and kernel is not None:
        # An EFI binary (a UKI) that OVMF starts instead of booting a disk.
        argv += ["-kernel", os.fspath(kernel), *(["-append", cmdline] if cmdline else [])]
    if image is not None:
        argv += ["-drive", f"if=none,id=disk0,format={fmt},discard=unmap,file={_qemu_escape(image)}"]
        argv += disk_device_args("disk0", removable)
    argv += _network_args(tap, netdev, ssh_port, guest_ssh_port)
    return [*argv, *devices, *extra_args]


# Memory device slots of a VM whose MaxMem= is larger than its RAM=.
HOTPLUG_SLOTS = 8


def memory_option(mem: str, maxmem: str | None = None) -> str:
    """qemu's -m: the RAM, and with `maxmem` the most memory hotplug may bring it to."""
    if maxmem is None:
        return mem
    return f"size={mem},slots={HOTPLUG_SLOTS},maxmem={maxmem}"


def disk_device_args(drive: str, removable: bool = False) -> list[str]:
    """The device of the image's disk: virtio-blk, or (Removable=) a removable USB mass storage device on
    its own xHCI controller; either way the first to boot."""
    if removable:
        return ["-device", "qemu-xhci,id=mkosi-usb",
                "-device", f"usb-storage,bus=mkosi-usb.0,drive={drive},removable=on,bootindex=1"]
    return ["-device", f"virtio-blk-pci,drive={drive},bootindex=1"]


def _check_options(boot: str, fmt: str, arch: str, kernel: Path | None, image: Path | None, ssh_port: int | None,
                   netdev: bool) -> None:
    if boot not in _BOOT_MODES:
        raise MkosiError(f"unknown boot mode {boot!r}, expected one of {', '.join(_BOOT_MODES)}")
    if fmt not in _FORMATS:
        raise MkosiError(f"unknown image format {fmt!r}, expected one of {', '.join(_FORMATS)}")
    if arch not in ("x86_64", "aarch64"):
        raise MkosiError(f"qemu boots of {arch} images are not supported")
    if boot == "bios" and arch != "x86_64":
        raise MkosiError("BIOS boot is only available for x86-64")
    if boot == "linux" and kernel is None:
        raise MkosiError("direct kernel boot needs a kernel image")
    if image is None and (kernel is None or boot == "bios"):
        raise MkosiError(f"{boot} boot needs a disk image")
    if ssh_port is not None and not netdev:
        raise MkosiError("forwarding the SSH port needs networking")


def _machine_args(arch: str, boot: str, secure_boot: bool, kvm: bool, smp: str, mem: str, headless: bool) -> list[str]:
    if arch == "x86_64":
        machine = "q35" + (",smm=on" if boot == "uefi" and secure_boot else "")
    else:
        machine = "virt" + (",gic-version=max" if kvm else "")
    argv = ["-machine", machine, "-accel", "kvm" if kvm else "tcg", "-cpu", "host" if kvm else "max",
            "-smp", smp, "-m", mem,
            "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0"]
    if headless:
        argv += ["-nographic"]
    elif arch == "aarch64":
        argv += ["-device", "virtio-gpu-pci"]
    return argv


def _uefi_args(arch: str, secure_boot: bool, ovmf_code: Path | None, ovmf_vars_copy: Path | None,
               firmware_root: Path) -> list[str]:
    """OVMF from pflash: the code read-only, the variables from the copy, or from the template opened with
    snapshot=on so that it is never modified."""
    if ovmf_code is not None:
        code, template = ovmf_code, None
    else:
        code, template = find_ovmf(arch, secure_boot=secure_boot, root=firmware_root)
    argv = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if secure_boot and arch == "x86_64" else []
    argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_qemu_escape(code)}"]
    if ovmf_vars_copy is not None:
        return [*argv, "-drive", f"if=pflash,format=raw,unit=1,file={_qemu_escape(ovmf_vars_copy)}"]
    if template is None:
        _, template = find_ovmf(arch, secure_boot=secure_boot, root=firmware_root)
    return [*argv, "-drive", f"if=pflash,format=raw,unit=1,snapshot=on,file={_qemu_escape(template)}"]


def _kernel_args(kernel: Path, initrd: Path | None, cmdline: str | None, headless: bool, arch: str) -> list[str]:
    argv = ["-kernel", os.fspath(kernel)]
    if initrd is not None:
        argv += ["-initrd", os.fspath(initrd)]
    append = (cmdline or "").split()
    if headless and not any(w.startswith("console=") for w in append):
        append.append("console=ttyS0" if arch == "x86_64" else "console=ttyAMA0")
    return [*argv, "-append", " ".join(append)] if append else argv


def _network_args(tap: str | None, netdev: bool, ssh_port: int | None, guest_ssh_port: int) -> list[str]:
    argv = ["-nic", f"tap,ifname={tap},script=no,downscript=no,model=virtio-net-pci"] if tap is not None else []
    if netdev:
        nic = "user,model=virtio-net-pci"
        if ssh_port is not None:
            nic += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:{guest_ssh_port}"
        return [*argv, "-nic", nic]
    return argv if tap is not None else ["-nic", "none"]


CONSOLE_MODES = ("interactive", "read-only", "native", "gui")


def console_args(mode: str, arch: str = "x86_64") -> list[str]:
    """The display and serial console of Console=: `interactive` puts the serial console alone on the
    terminal (Ctrl-C goes to the guest, no qemu monitor, Ctrl-a x quits), `read-only` only writes the console to the
    terminal (qemu's stdin is not read), `native` is qemu's own -nographic (console and monitor
    multiplexed, Ctrl-a x quits), `gui` opens qemu's window."""
    if mode not in CONSOLE_MODES:
        raise MkosiError(f"unknown console mode {mode!r}, expected one of {', '.join(CONSOLE_MODES)}")
    if mode == "native":
        return ["-nographic"]
    if mode == "gui":
        return ["-device", "virtio-gpu-pci"] if arch == "aarch64" else []
    chardev = "stdio,id=console,mux=on,signal=off" if mode == "interactive" else "file,id=console,path=/dev/stdout"
    return ["-display", "none", "-chardev", chardev, "-serial", "chardev:console", "-monitor", "none"]


def tpm_args(socket_path: Path, arch: str = "x86_64") -> list[str]:
    """A TPM 2.0 device backed by the swtpm listening on `socket_path`."""
    device = "tpm-tis" if arch == "x86_64" else "tpm-tis-device"
    return ["-chardev", f"socket,id=chrtpm,path={_qemu_escape(socket_path)}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", f"{device},tpmdev=tpm0"]


def drive_args(drive_id: str, backing: Path, options: str = "") -> list[str]:
    """A block device node `drive_id` on the raw file `backing`, for devices of QemuArgs= (drive=ID)."""
    spec = f"driver=raw,node-name={drive_id},discard=unmap,file.driver=file,file.filename={_qemu_escape(backing)}"
    return ["-blockdev", spec + (f",{options}" if options else "")]


def smbios_credential_args(files: Sequence[Path]) -> list[str]:
    """systemd credentials as SMBIOS type 11 strings, each read by qemu from a file (so that the value
    never appears on a command line) that holds `io.systemd.credential.binary:NAME=BASE64`."""
    argv: list[str] = []
    for f in files:
        argv += ["-smbios", f"type=11,path={_qemu_escape(f)}"]
    return argv


def kernel_cmdline_extra_args(words: Sequence[str]) -> list[str]:
    """KernelCommandLineExtra=: the SMBIOS string systemd-stub (v254 and later) appends to the
    command line of a unified kernel image."""
    if not words:
        return []
    value = "io.systemd.stub.kernel-cmdline-extra=" + " ".join(words)
    return ["-smbios", "type=11,value=" + value.replace(",", ",,")]


def virtiofs_args(shares: Sequence[tuple[Path, str]], mem: str) -> list[str]:
    """Directories shared with virtiofs: for each (virtiofsd socket, tag) a vhost-user-fs device; the
    guest memory is a shared memfd as vhost-user needs."""
    if not shares:
        return []
    argv = ["-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-numa", "node,memdev=mem"]
    for i, (sock, tag) in enumerate(shares):
        argv += ["-chardev", f"socket,id=virtiofs{i},path={_qemu_escape(sock)}",
                 "-device", f"vhost-user-fs-pci,queue-size=1024,chardev=virtiofs{i},tag={tag}"]
    return argv


def vsock_args(cid: int) -> list[str]:
    return ["-device", f"vhost-vsock-pci,guest-cid={cid}"]


def tap_name(machine: str) -> str:
    """The host's name of a VM's tap link: "vt-" and the machine name, which systemd-networkd's stock
    80-vm-vt.network matches (DHCP server and masquerading on the host side). Interface names have at
    most 15 characters; longer machine names are shortened and made unique with a hash."""
    clean = re.sub(r"[^A-Za-z0-9.-]+", "-", machine).strip(".-") or "mkosi"
    name = f"vt-{clean}"
    if len(name) <= 15:
        return name
    digest = hashlib.sha256(machine.encode()).hexdigest()[:4]
    return f"vt-{clean[:7]}-{digest}"


def _qemu_escape(path: Path) -> str:
    # In qemu's -drive option syntax a comma is written as two commas.
    return os.fspath(path).replace(",", ",,")


def run_qemu(argv: Sequence[str]) -> None:
    """Run qemu in the foreground on the user's terminal. The terminal's settings are restored
    afterwards even if qemu dies without doing so. Raises CommandError if qemu fails."""
    saved = None
    if sys.stdin.isatty():
        try:
            saved = termios.tcgetattr(sys.stdin.fileno())
        except termios.error:
            saved = None
    try:
        run(argv, stdin=None, stdout=None, stderr=None)
    finally:
        if saved is not None:
            try:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            except termios.error:
                pass
