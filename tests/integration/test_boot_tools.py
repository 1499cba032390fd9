"""Boot real kernels with the boot tooling: UKI + systemd-boot under OVMF, GRUB under SeaBIOS, a
Type #1 entry, direct kernel boot, and Secure Boot signing.

Needs root, MKOSI_INTEGRATION=1 and access to the Debian archive (a cloud kernel and
busybox-static are downloaded with apt-get; set MKOSI_TEST_CACHE to a directory to keep them
between runs). Guests run under TCG, headless, and must print a marker computed by /init (so
the kernel echoing its command line cannot fake it) before powering off.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mkosi import qemu
from mkosi.boot.grub import install_grub_bios, write_grub_config
from mkosi.boot.kernel import find_kernel
from mkosi.boot.pe import read_pe
from mkosi.boot.signing import generate_secure_boot_keys, sign_efi, verify_efi
from mkosi.boot.systemd_boot import install_bls_entry, install_systemd_boot
from mkosi.boot.uki import DEFAULT_UKI_STUB, build_uki
from mkosi.run import run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or os.environ.get("MKOSI_INTEGRATION") != "1",
        reason="needs root and MKOSI_INTEGRATION=1",
    ),
]

MARKER = "MKOSI_BOOT_42_OK"
BOOT_TIMEOUT = 120.0
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
CMDLINE = "console=ttyS0,115200 panic=-1 quiet"
# A parameter whose value has a space, quoted the way the kernel expects.
QUOTED = 'mkosi.quoted="a b"'


def newc_archive(entries: Sequence[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio archive in the "newc" format: (name, mode, data, (rdev major, minor)) entries."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + encoded
        out += bytes(-len(out) % 4)
        out += data
        out += bytes(-len(out) % 4)
    return bytes(out)


INIT = """#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
if [ -d /sys/firmware/efi ]; then echo "FIRMWARE: uefi"; else echo "FIRMWARE: bios"; fi
echo "CMDLINE: $(cat /proc/cmdline)"
echo "MKOSI_BOOT_$((6*7))_OK"
exec poweroff -f
"""


def make_initrd(busybox: Path, output: Path) -> None:
    # $((6*7)) keeps the literal marker out of the kernel command line and out of this script.
    output.write_bytes(
        newc_archive([
            ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("proc", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("sys", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
            ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), (0, 0)),
            ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
            ("bin/poweroff", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
            ("init", stat.S_IFREG | 0o755, INIT.encode(), (0, 0)),
        ])
    )


def apt_download(package: str, directory: Path) -> Path:
    run(["apt-get", "-o", "APT::Sandbox::User=root", "download", package], cwd=directory, capture=True)
    debs = sorted(directory.glob(f"{package.replace('+', '?')}_*.deb"))
    assert debs, f"apt-get download {package} produced no .deb"
    return debs[-1]


def kernel_package() -> str:
    for meta in ("linux-image-cloud-amd64", "linux-image-amd64"):
        proc = run(["apt-cache", "depends", meta], capture=True, check=False)
        m = re.search(r"Depends:\s*(linux-image-\S+)", proc.stdout or "")
        if m:
            return m.group(1)
    pytest.skip("no Debian kernel package found in the apt cache")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot-tools")


@pytest.fixture(scope="module")
def cache() -> Iterator[Path]:
    keep = os.environ.get("MKOSI_TEST_CACHE")
    if keep:
        path = Path(keep) / "boot-tools"
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mkosi-boot-cache-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def kernel(cache: Path) -> tuple[Path, str]:
    root = cache / "kernel-root"
    if not root.is_dir():
        downloads = cache / "debs"
        downloads.mkdir(exist_ok=True)
        deb = apt_download(kernel_package(), downloads)
        staging = cache / "kernel-root.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        with (staging / "data.tar").open("wb") as tarball:
            run(["dpkg-deb", "--fsys-tarfile", deb], stdout=tarball)
        run(["tar", "-C", staging, "-xf", staging / "data.tar", "./boot"])
        (staging / "data.tar").unlink()
        staging.rename(root)
    return find_kernel(root)


@pytest.fixture(scope="module")
def initrd(cache: Path, workdir: Path) -> Path:
    busybox = cache / "busybox"
    if not busybox.exists():
        downloads = cache / "debs"
        downloads.mkdir(exist_ok=True)
        deb = apt_download("busybox-static", downloads)
        tree = cache / "busybox-tree"
        shutil.rmtree(tree, ignore_errors=True)
        run(["dpkg-deb", "-x", deb, tree])
        shutil.copyfile(tree / "bin/busybox", busybox)
        shutil.rmtree(tree)
    path = workdir / "initrd.cpio"
    make_initrd(busybox, path)
    return path


@pytest.fixture(scope="module")
def os_release(workdir: Path) -> Path:
    path = workdir / "os-release"
    path.write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="mkosi boot test"\n')
    return path


@pytest.fixture(scope="module")
def uki(workdir: Path, kernel: tuple[Path, str], initrd: Path, os_release: Path) -> Path:
    if not DEFAULT_UKI_STUB.exists():
        pytest.skip("systemd-boot-efi is not installed")
    out = workdir / "test.efi"
    cmdline = f"{CMDLINE} mkosi.route=uki"
    build_uki(DEFAULT_UKI_STUB, kernel[0], initrd, cmdline, os_release, out, uname=kernel[1])
    return out


def make_vfat(tree: Path, output: Path, size_mib: int, volume_id: str | None = None) -> None:
    output.unlink(missing_ok=True)
    argv: list[str | os.PathLike[str]] = ["mkfs.vfat", "-C"]
    if volume_id:
        argv += ["-i", volume_id]
    run([*argv, output, str(size_mib * 1024)], capture=True)
    entries = sorted(tree.iterdir())
    if entries:
        run(["mcopy", "-s", "-p", "-i", output, *entries, "::/"], capture=True)


def make_gpt_image(output: Path, partitions: Sequence[tuple[str, int, Path | None]]) -> list[int]:
    """A GPT disk image with (type GUID, size in MiB, content image) partitions, 1 MiB aligned.
    Built with sfdisk on the file and plain writes, no loop devices. Returns the byte offsets."""
    offsets = []
    start = 1  # MiB
    lines = ["label: gpt", "unit: sectors"]
    for type_guid, size, _ in partitions:
        lines.append(f"start={start * 2048}, size={size * 2048}, type={type_guid}")
        offsets.append(start * 1024 * 1024)
        start += size
    total = (start + 1) * 1024 * 1024
    with output.open("wb") as f:
        f.truncate(total)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", output], input="\n".join(lines) + "\n", capture=True)
    with output.open("r+b") as f:
        for (_, size, content), offset in zip(partitions, offsets):
            if content is None:
                continue
            assert content.stat().st_size <= size * 1024 * 1024
            f.seek(offset)
            with content.open("rb") as src:
                shutil.copyfileobj(src, f, 1024 * 1024)
    return offsets


def boot_until_marker(
    argv: list[str], log_file: Path, *, firmware: str, cmdline_words: Sequence[str], timeout: float = BOOT_TIMEOUT
) -> float:
    """Run qemu headless and return the seconds until the marker appeared on the serial console.
    The guest powers itself off; qemu is killed (its whole process group) if it lingers. Checks
    what /init reported: the firmware type and words of the command line the kernel got."""
    start = time.monotonic()
    found_at: float | None = None
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while time.monotonic() - start < timeout:
                if found_at is None and MARKER.encode() in log_file.read_bytes():
                    found_at = time.monotonic() - start
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
            if found_at is None and MARKER.encode() in log_file.read_bytes():
                found_at = time.monotonic() - start
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_file.read_bytes().decode(errors="replace")
    assert found_at is not None, f"marker not seen within {timeout:.0f}s; console output:\n{output[-3000:]}"
    assert f"FIRMWARE: {firmware}" in output
    m = re.search(r"CMDLINE: (.*)", output)
    assert m, output[-3000:]
    for word in cmdline_words:
        assert word in m.group(1), f"{word!r} not in the kernel command line {m.group(1)!r}"
    print(f"\n{log_file.stem}: marker after {found_at:.1f}s, qemu exited after {time.monotonic() - start:.1f}s")
    return found_at


def test_probe_kvm_is_bounded() -> None:
    qemu.reset_kvm_probe_cache()
    start = time.monotonic()
    result = qemu.probe_kvm(timeout=5.0)
    elapsed = time.monotonic() - start
    print(f"\nprobe_kvm() = {result} in {elapsed:.2f}s")
    assert elapsed < 5.0 + 6.0
    start = time.monotonic()
    assert qemu.probe_kvm(timeout=5.0) == result
    assert time.monotonic() - start < 0.1


def test_probe_firmware_runs_under_tcg() -> None:
    ok, reason = qemu.run_probe_guest("qemu-system-x86_64", 30.0, accel="tcg", cpu="max")
    assert ok, reason


def test_uki_sections(uki: Path, kernel: tuple[Path, str], initrd: Path) -> None:
    pe = read_pe(uki)
    names = [s.name for s in pe.sections]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    linux = pe.section(".linux")
    initrd_section = pe.section(".initrd")
    assert linux is not None and initrd_section is not None
    assert linux.virtual_size == kernel[0].stat().st_size
    assert initrd_section.virtual_size == initrd.stat().st_size
    data = uki.read_bytes()
    off = linux.raw_offset
    assert data[off : off + 4096] == kernel[0].read_bytes()[:4096]


def test_uefi_uki_systemd_boot(workdir: Path, uki: Path) -> None:
    esp = workdir / "esp-uki"
    shutil.rmtree(esp, ignore_errors=True)
    install_systemd_boot(esp)
    (esp / "EFI/Linux").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(uki, esp / "EFI/Linux/test.efi")
    esp_img = workdir / "esp-uki.img"
    make_vfat(esp, esp_img, 64)
    image = workdir / "uefi-uki.raw"
    make_gpt_image(image, [(ESP_TYPE, 64, esp_img)])
    vars_copy = qemu.copy_ovmf_vars(workdir / "uefi-uki-vars.fd")
    argv = qemu.qemu_command(
        image=image, fmt="raw", boot="uefi", smp="2", mem="1G", kvm=False, headless=True,
        extra_args=["-no-reboot"], netdev=False, ovmf_vars_copy=vars_copy,
    )  # fmt: skip
    # Only the UKI's .cmdline section carries this word: the stub really ran.
    boot_until_marker(argv, workdir / "uefi-uki.log", firmware="uefi", cmdline_words=["mkosi.route=uki"])


def test_uefi_type1_entry(workdir: Path, kernel: tuple[Path, str], initrd: Path) -> None:
    esp = workdir / "esp-bls"
    shutil.rmtree(esp, ignore_errors=True)
    install_systemd_boot(esp, default="test-*")
    entry = install_bls_entry(
        esp, "test", "Test entry", kernel[0], initrd, f"{CMDLINE} mkosi.route=bls", version=kernel[1]
    )
    assert entry == esp / "loader/entries/test.conf"
    esp_img = workdir / "esp-bls.img"
    make_vfat(esp, esp_img, 64)
    image = workdir / "uefi-bls.raw"
    make_gpt_image(image, [(ESP_TYPE, 64, esp_img)])
    argv = qemu.qemu_command(
        image=image, fmt="raw", boot="uefi", smp="2", mem="1G", kvm=False, headless=True,
        extra_args=["-no-reboot"], netdev=False, ovmf_vars_copy=None,
    )  # fmt: skip
    boot_until_marker(argv, workdir / "uefi-bls.log", firmware="uefi", cmdline_words=["mkosi.route=bls"])


def test_bios_grub_vfat(workdir: Path, kernel: tuple[Path, str], initrd: Path) -> None:
    tree = workdir / "bios-vfat-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "boot").mkdir(parents=True)
    shutil.copyfile(kernel[0], tree / "boot/vmlinuz")
    shutil.copyfile(initrd, tree / "boot/initrd")
    write_grub_config(
        tree / "boot/grub", title="Test 'vfat'", kernel="/boot/vmlinuz", initrd="/boot/initrd",
        cmdline=f"{CMDLINE} mkosi.route=grub-vfat {QUOTED}",
    )  # fmt: skip
    fs = workdir / "bios-vfat.img"
    make_vfat(tree, fs, 64)
    image = workdir / "bios-vfat.raw"
    make_gpt_image(image, [(BIOS_BOOT_TYPE, 1, None), (LINUX_TYPE, 64, fs)])
    install_grub_bios(image)  # finds the BIOS boot partition itself, finds grub.cfg by file
    argv = qemu.qemu_command(
        image=image, fmt="raw", boot="bios", smp="2", mem="1G", kvm=False, headless=True,
        extra_args=["-no-reboot"], netdev=False, ovmf_vars_copy=None,
    )  # fmt: skip
    boot_until_marker(
        argv, workdir / "bios-vfat.log", firmware="bios", cmdline_words=["mkosi.route=grub-vfat", "mkosi.quoted=a b"]
    )


def test_bios_grub_ext4_by_uuid(workdir: Path, kernel: tuple[Path, str], initrd: Path) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 not available")
    tree = workdir / "bios-ext4-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "boot").mkdir(parents=True)
    shutil.copyfile(kernel[0], tree / "boot/vmlinuz")
    shutil.copyfile(initrd, tree / "boot/initrd")
    write_grub_config(
        tree / "boot/grub", title="Test ext4", kernel="/boot/vmlinuz", initrd="/boot/initrd",
        cmdline=f"{CMDLINE} mkosi.route=grub-ext4", copy_modules=False,
    )  # fmt: skip
    fs = workdir / "bios-ext4.img"
    fs.unlink(missing_ok=True)
    fs_uuid = str(uuid.uuid4())
    run(["mkfs.ext4", "-q", "-U", fs_uuid, "-d", tree, fs, "64M"], capture=True)
    image = workdir / "bios-ext4.raw"
    offsets = make_gpt_image(image, [(LINUX_TYPE, 64, fs), (BIOS_BOOT_TYPE, 2, None)])
    install_grub_bios(
        image, filesystem_uuid=fs_uuid, bios_boot_offset=offsets[1], bios_boot_size=2 * 1024 * 1024
    )
    argv = qemu.qemu_command(
        image=image, fmt="raw", boot="bios", smp="1", mem="1G", kvm=False, headless=True,
        extra_args=["-no-reboot"], netdev=False, ovmf_vars_copy=None,
    )  # fmt: skip
    boot_until_marker(argv, workdir / "bios-ext4.log", firmware="bios", cmdline_words=["mkosi.route=grub-ext4"])


def test_direct_kernel_boot(workdir: Path, kernel: tuple[Path, str], initrd: Path) -> None:
    argv = qemu.qemu_command(
        image=None, boot="linux", kernel=kernel[0], initrd=initrd, cmdline="panic=-1 quiet mkosi.route=direct",
        smp="2", mem="1G", kvm=False, headless=True, extra_args=["-no-reboot"], netdev=True,
        ovmf_vars_copy=None,
    )  # fmt: skip
    assert "console=ttyS0" in argv[argv.index("-append") + 1]
    boot_until_marker(
        argv, workdir / "direct.log", firmware="bios", cmdline_words=["mkosi.route=direct", "console=ttyS0"]
    )


def test_sign_uki(workdir: Path, uki: Path) -> None:
    key, cert = workdir / "sb.key", workdir / "sb.crt"
    generate_secure_boot_keys("mkosi boot test", 30, key, cert)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signed = workdir / "signed.efi"
    shutil.copyfile(uki, signed)
    assert not verify_efi(signed, cert)
    sign_efi(signed, key, cert)
    assert verify_efi(signed, cert)
    other_key, other_cert = workdir / "other.key", workdir / "other.crt"
    generate_secure_boot_keys("someone else", 30, other_key, other_cert)
    assert not verify_efi(signed, other_cert)
    # Signing appends a certificate table; the sections stay where they were.
    assert [s.name for s in read_pe(signed).sections] == [s.name for s in read_pe(uki).sections]
