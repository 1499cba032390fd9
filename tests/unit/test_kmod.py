"""KernelModules=, KernelInitrdModules=, FirmwareFiles= (mkosi/boot/kmod.py) on a fake modules tree with a
modules.dep of its own and modules that are real (tiny) ELF files with a .modinfo section; Splash= and
Devicetrees= (mkosi/boot/extras.py) in the UKI and the Type #1 entry; InitrdProfiles= as dracut modules."""

from __future__ import annotations

import dataclasses
import lzma
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from mkosi.boot import kmod
from mkosi.boot.extras import entry_devicetree, find_devicetrees, splash_file, uki_sections
from mkosi.boot.initrd import dracut_driver_flags, dracut_flags, modules_initrd
from mkosi.boot.kmod import (
    Selection,
    expand_patterns,
    host_modules,
    modinfo,
    module_name,
    pattern_matches,
    process_kernel_modules,
    required_firmware,
    required_modules,
    run_depmod,
    select,
    selected,
)
from mkosi.boot.pe import read_pe
from mkosi.boot.systemd_boot import install_bls_entry
from mkosi.boot.uki import build_uki
from mkosi.config.enums import InitrdProfile
from mkosi.config.settings import Config
from mkosi.errors import MkosiError
from tests.markers import needs_tools
from tests.unit.conftest import write
from tests.unit.test_uki import fake_stub

V = "6.1.0-test"


def elf_module(info: Sequence[str]) -> bytes:
    """A minimal ELF64 relocatable object (what a .ko is) whose .modinfo section holds `info`."""
    modinfo_data = b"".join(i.encode() + b"\0" for i in info)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    strtab_off = data_off + len(modinfo_data)
    shoff = (strtab_off + len(shstrtab) + 7) // 8 * 8
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = header + modinfo_data + shstrtab
    body += bytes(shoff - len(body))
    sh = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    sh += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, data_off, len(modinfo_data), 0, 0, 1, 0)
    sh += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, strtab_off, len(shstrtab), 0, 0, 1, 0)
    return body + sh


# module file (relative to the version directory) -> (dependencies, firmware it names)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "kernel/drivers/block/loop.ko": ([], []),
    "kernel/drivers/block/virtio_blk.ko.xz": (["kernel/drivers/virtio/virtio_ring.ko"], []),
    "kernel/drivers/virtio/virtio_ring.ko": ([], []),
    "kernel/drivers/net/ethernet/intel/e1000e.ko.xz": (["kernel/net/core/ptp.ko"], ["e1000e/fw-1.bin"]),
    "kernel/net/core/ptp.ko": ([], []),
    "kernel/drivers/net/wireless/iwlwifi.ko": (["kernel/net/wireless/cfg80211.ko"], ["iwlwifi-*.ucode"]),
    "kernel/net/wireless/cfg80211.ko": ([], ["regulatory.db"]),
    "kernel/sound/pci/snd-hda-intel.ko": (["kernel/sound/core/snd.ko"], []),
    "kernel/sound/core/snd.ko": ([], []),
    "kernel/fs/ext4/ext4.ko": (["kernel/lib/crc16.ko"], []),
    "kernel/lib/crc16.ko": ([], []),
    "kernel/crypto/crc32c_generic.ko": ([], []),
    "updates/dkms/extra.ko": ([], []),
}


def fake_kernel(root: Path, version: str = V) -> Path:
    moddir = root / "usr/lib/modules" / version
    dep_lines = []
    for rel, (deps, firmware) in MODULES.items():
        raw = elf_module([f"name={module_name(rel)}", "license=GPL", *(f"firmware={f}" for f in firmware),
                          f"depends={','.join(module_name(d) for d in deps)}"])
        path = moddir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(raw) if rel.endswith(".xz") else raw)
        dep_lines.append(f"{rel}: {' '.join(deps)}".rstrip())
    write(moddir / "modules.dep", "\n".join(dep_lines) + "\n")
    # ext4 wants crc32c (an alias of crc32c_generic) loaded before it (modules.softdep), not a hard dependency.
    write(moddir / "modules.softdep", "# Soft dependencies\nsoftdep ext4 pre: crc32c\n")
    write(moddir / "modules.alias", "alias crc32c crc32c_generic\nalias pci:v00008086d*sv* e1000e\n")
    (moddir / "modules.builtin.modinfo").write_bytes(b"i915.firmware=i915/skl_dmc.bin\0i915.license=GPL\0")
    write(moddir / "modules.order", "kernel/drivers/block/loop.ko\n")
    (root / "boot").mkdir(parents=True, exist_ok=True)
    fw = root / "usr/lib/firmware"
    for name in ("e1000e/fw-1.bin.xz", "e1000e/unused.bin", "iwlwifi-7260-17.ucode", "iwlwifi-8000C-36.ucode.zst",
                 "regulatory.db", "i915/skl_dmc_ver1_27.bin", "amdgpu/big.bin", "cxgb4/bcm8483.bin.xz",
                 "LICENCE.iwlwifi", "updates/regulatory.db"):
        write(fw / name, name)
    (fw / "i915/skl_dmc.bin").symlink_to("skl_dmc_ver1_27.bin")
    return moddir


@pytest.mark.parametrize(("pattern", "rel", "expected"), [
    ("loop", "kernel/drivers/block/loop", True),
    ("lo*", "kernel/drivers/block/loop", True),
    ("block/loop", "kernel/drivers/block/loop", True),
    ("drivers/block/loop", "kernel/drivers/block/loop", True),
    ("/drivers/block/loop", "kernel/drivers/block/loop", True),
    ("/kernel/drivers/block/loop", "kernel/drivers/block/loop", True),
    ("/block/loop", "kernel/drivers/block/loop", False),      # absolute: the whole path
    ("rivers/block/loop", "kernel/drivers/block/loop", False),  # whole components only
    ("/drivers/", "kernel/drivers/block/loop", True),
    ("/drivers/block/", "kernel/drivers/block/loop", True),
    ("block/", "kernel/drivers/block/loop", True),              # a directory anywhere
    ("/block/", "kernel/drivers/block/loop", False),
    ("/drivers/*/", "kernel/drivers/block/loop", True),
    ("/drivers/*", "kernel/drivers/block/loop", False),         # * does not cross /
    ("loop/", "kernel/drivers/block/loop", False),              # a directory, not the module
    ("snd_hda_intel", "kernel/sound/pci/snd-hda-intel", True),  # - and _ alike
    ("snd-hda-*", "kernel/sound/pci/snd_hda_intel", True),
    ("/updates/dkms/extra", "updates/dkms/extra", True),
    ("/dkms/extra", "updates/dkms/extra", False),
])
def test_pattern_matches(pattern: str, rel: str, expected: bool) -> None:
    assert pattern_matches(pattern, rel) is expected


def test_the_last_matching_pattern_decides() -> None:
    rel = "kernel/drivers/net/ethernet/intel/e1000e.ko.xz"
    assert selected(["/drivers/net/"], rel)
    assert not selected(["/drivers/net/", "-e1000e"], rel)
    assert selected(["-e1000e", "/drivers/net/"], rel)
    assert not selected(["-/drivers/"], rel)
    assert not selected([], rel)


def test_module_name_strips_suffixes() -> None:
    assert module_name("kernel/sound/pci/snd-hda-intel.ko.zst") == "snd_hda_intel"
    assert module_name("a/loop.ko") == "loop"


def test_required_modules_follow_modules_dep_and_softdep(tmp_path: Path) -> None:
    moddir = fake_kernel(tmp_path)
    assert required_modules(moddir, ["virtio_blk", "ext4"]) == {
        "kernel/drivers/block/virtio_blk.ko.xz", "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/fs/ext4/ext4.ko", "kernel/lib/crc16.ko", "kernel/crypto/crc32c_generic.ko"}
    # An excluded module that a kept one needs stays: dependencies win.
    assert "kernel/net/core/ptp.ko" in required_modules(moddir, ["/drivers/net/", "-ptp"])
    assert required_modules(moddir, ["/drivers/net/", "-e1000e"]) == {
        "kernel/drivers/net/wireless/iwlwifi.ko", "kernel/net/wireless/cfg80211.ko"}
    assert required_modules(moddir, ["/updates/dkms/"]) == {"updates/dkms/extra.ko"}


def test_modules_dep_is_needed_and_checked(tmp_path: Path) -> None:
    moddir = fake_kernel(tmp_path)
    (moddir / "modules.dep").write_text("kernel/drivers/block/loop.ko\n")
    with pytest.raises(MkosiError, match=r"modules\.dep:1: not a 'module: dependencies' line"):
        required_modules(moddir, ["loop"])
    (moddir / "modules.dep").unlink()
    with pytest.raises(MkosiError, match=r"modules\.dep does not exist"):
        required_modules(moddir, ["loop"])


def test_modinfo_reads_plain_and_xz_modules(tmp_path: Path) -> None:
    moddir = fake_kernel(tmp_path)
    assert ("firmware", "e1000e/fw-1.bin") in modinfo(moddir / "kernel/drivers/net/ethernet/intel/e1000e.ko.xz")
    assert [v for k, v in modinfo(moddir / "kernel/net/wireless/cfg80211.ko") if k == "firmware"] == ["regulatory.db"]
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an ELF file")
    assert modinfo(junk) == []


def test_default_and_host(tmp_path: Path) -> None:
    proc = write(tmp_path / "modules", "loop 32768 0 - Live 0x0\nvirtio_blk 20480 2 - Live 0x0\n")
    assert host_modules(proc) == ["loop", "virtio_blk"]
    with pytest.raises(MkosiError, match="KernelModules=host: cannot read"):
        host_modules(tmp_path / "nothing")
    expanded = expand_patterns(["default", "-loop", "host"], host=["e1000e"])
    assert "/drivers/virtio/" in expanded and expanded[-2:] == ["-loop", "e1000e"]
    moddir = fake_kernel(tmp_path / "root")
    kept = required_modules(moddir, expand_patterns(["default"], host=[]))
    assert "kernel/drivers/block/virtio_blk.ko.xz" in kept and "kernel/fs/ext4/ext4.ko" in kept
    assert "kernel/sound/pci/snd-hda-intel.ko" not in kept


def test_firmware_of_the_kept_modules_and_firmware_files(tmp_path: Path) -> None:
    fake_kernel(tmp_path)
    s = select(tmp_path, V, ["e1000e", "iwlwifi"], ["cxgb4/bcm8483.bin"], host=[])
    assert s.firmware == {
        "e1000e/fw-1.bin.xz", "iwlwifi-7260-17.ucode", "iwlwifi-8000C-36.ucode.zst", "regulatory.db",
        "updates/regulatory.db", "cxgb4/bcm8483.bin.xz",
        "i915/skl_dmc.bin", "i915/skl_dmc_ver1_27.bin"}      # built-in i915's, through its link
    # FirmwareFiles= by name, and "-" taking back what an earlier pattern gave.
    only_fw = select(tmp_path, V, ["loop"], ["bcm8483.*", "amdgpu/", "-amdgpu/big*"], host=[])
    assert only_fw.modules == {"kernel/drivers/block/loop.ko"}
    assert only_fw.firmware == {"cxgb4/bcm8483.bin.xz", "i915/skl_dmc.bin", "i915/skl_dmc_ver1_27.bin"}


def test_required_firmware_keeps_link_targets_inside_the_tree(tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    write(fw / "real/a.bin", "a")
    (fw / "a.bin").symlink_to("real/a.bin")
    (fw / "abs.bin").symlink_to("/usr/lib/firmware/real/b.bin")
    write(fw / "real/b.bin", "b")
    (fw / "out.bin").symlink_to("../../etc/passwd")
    assert required_firmware(fw, ["a.bin", "abs.bin", "out.bin"], []) == {
        "a.bin", "real/a.bin", "abs.bin", "real/b.bin", "out.bin"}


def test_process_kernel_modules_prunes_and_runs_depmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moddir = fake_kernel(tmp_path)
    calls: list[tuple[Path, str]] = []
    monkeypatch.setattr(kmod, "run_depmod", lambda tree, version, image=None, keep_unit=None:
                        calls.append((tree, version)))
    process_kernel_modules(tmp_path, [], [])             # nothing asked: nothing touched
    assert calls == [] and (moddir / "kernel/sound/core/snd.ko").exists()
    process_kernel_modules(tmp_path, ["virtio_blk", "-/sound/"], [])
    assert calls == [(tmp_path, V)]
    left = sorted(str(p.relative_to(moddir)) for p in moddir.rglob("*.ko*"))
    assert left == ["kernel/drivers/block/virtio_blk.ko.xz", "kernel/drivers/virtio/virtio_ring.ko"]
    assert not (moddir / "kernel/sound").exists() and not (moddir / "updates").exists()   # emptied dirs go
    assert (moddir / "modules.dep").exists() and (moddir / "modules.order").exists()
    fw = sorted(str(p.relative_to(tmp_path / "usr/lib/firmware")) for p in (tmp_path / "usr/lib/firmware").rglob("*"))
    assert fw == ["i915", "i915/skl_dmc.bin", "i915/skl_dmc_ver1_27.bin"]


def test_firmware_files_alone_keeps_every_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moddir = fake_kernel(tmp_path)
    monkeypatch.setattr(kmod, "run_depmod", lambda *a, **k: None)
    process_kernel_modules(tmp_path, [], ["amdgpu/"])
    assert len(list(moddir.rglob("*.ko*"))) == len(MODULES)
    fwdir = tmp_path / "usr/lib/firmware"
    assert (fwdir / "amdgpu/big.bin").exists() and (fwdir / "e1000e/fw-1.bin.xz").exists()
    assert not (fwdir / "e1000e/unused.bin").exists() and not (fwdir / "LICENCE.iwlwifi").exists()


def test_run_depmod_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    monkeypatch.setattr(kmod, "run", lambda argv, **kw: argvs.append([str(a) for a in argv]))
    monkeypatch.setattr(kmod, "find_tool", lambda name: "/usr/sbin/depmod")
    (tmp_path / "usr/lib/modules").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    run_depmod(tmp_path, V)
    assert argvs == [["/usr/sbin/depmod", "--all", "--basedir", str(tmp_path), V]]
    # Without a depmod of the tools: the image's own, in a container of the image.
    monkeypatch.setattr(kmod, "find_tool", lambda name: None)
    with pytest.raises(MkosiError, match="depmod is needed"):
        run_depmod(tmp_path, V)
    write(tmp_path / "usr/sbin/depmod", "", 0o755)
    argvs.clear()
    run_depmod(tmp_path / "stage", V, image=tmp_path)
    assert argvs[0][-4:] == ["--all", "--basedir", kmod.DEPMOD_MOUNT, V]
    assert f"--bind={tmp_path / 'stage'}:{kmod.DEPMOD_MOUNT}" in argvs[0] and f"--directory={tmp_path}" in argvs[0]
    # An absolute /lib link would lead the tools' depmod out of the tree: the image's own runs.
    (tmp_path / "lib").unlink()
    (tmp_path / "lib").symlink_to("/usr/lib")
    monkeypatch.setattr(kmod, "find_tool", lambda name: "/usr/sbin/depmod")
    argvs.clear()
    run_depmod(tmp_path, V)
    assert argvs[0][-3:] == ["depmod", "--all", V]


@needs_tools("cpio", "zstd")
def test_modules_initrd_with_a_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kernel(tmp_path / "root")
    depmods: list[Path] = []

    def fake_depmod(tree: Path, version: str, image: Path | None = None, keep_unit: bool | None = None) -> None:
        depmods.append(tree)
        (tree / "usr/lib/modules" / version / "modules.dep").write_text("index of the staged modules\n")

    monkeypatch.setattr(kmod, "run_depmod", fake_depmod)
    sel = select(tmp_path / "root", V, ["e1000e"], [], host=[])
    out = modules_initrd(tmp_path / "root", V, tmp_path / "modules.initrd", sel)
    cpio = subprocess.run(["zstd", "-dc", str(out)], capture_output=True, check=True).stdout
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True).stdout.decode()
    files = set(listing.split())
    m = f"usr/lib/modules/{V}"
    assert {f"{m}/kernel/drivers/net/ethernet/intel/e1000e.ko.xz", f"{m}/kernel/net/core/ptp.ko", f"{m}/modules.dep",
            f"{m}/modules.order", "usr/lib/firmware/e1000e/fw-1.bin.xz", "usr/lib/firmware/i915/skl_dmc.bin"} <= files
    assert f"{m}/kernel/drivers/block/loop.ko" not in files and "usr/lib/firmware/amdgpu/big.bin" not in files
    assert "lib" not in files
    assert len(depmods) == 1 and not depmods[0].exists()     # the staging tree is gone
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=cpio, cwd=extracted, check=True)
    assert (extracted / m / "modules.dep").read_text() == "index of the staged modules\n"
    # The image itself is untouched.
    assert (tmp_path / "root" / m / "kernel/drivers/block/loop.ko").exists()


def test_dracut_flags_for_initrd_profiles_and_modules(tmp_path: Path) -> None:
    flags = dracut_flags(Config(initrd_profiles=[InitrdProfile.lvm, InitrdProfile.raid, InitrdProfile.network]))
    assert flags[-6:] == ["--add", "lvm", "--add", "mdraid", "--add", "systemd-networkd"]
    assert dracut_driver_flags(Config(), tmp_path, V) == []
    fake_kernel(tmp_path)
    assert dracut_driver_flags(Config(kernel_initrd_modules=["virtio_blk", "ext4"]), tmp_path, V) == [
        "--drivers", "crc16 crc32c_generic ext4 virtio_blk virtio_ring"]
    with pytest.raises(MkosiError, match="KernelInitrdModules=nothing-like-this selects no module"):
        dracut_driver_flags(Config(kernel_initrd_modules=["nothing-like-this"]), tmp_path, V)


def test_unified_kernel_image_settings_are_no_longer_not_yet() -> None:
    from mkosi.config.settings import SETTINGS
    status = {s.key: s.status for s in SETTINGS}
    for key in ("KernelModules", "KernelInitrdModules", "FirmwareFiles", "InitrdProfiles", "Devicetrees", "Splash",
                "MicrocodeHost"):
        assert status[key] is None, key
    assert status["InitrdPackages"] is not None and "dracut" in str(status["InitrdPackages"])


# ---- Splash= and Devicetrees= ----

BMP = b"BM" + bytes(60)


def test_splash_must_be_a_bmp_in_the_image(tmp_path: Path) -> None:
    assert splash_file(tmp_path, None) is None
    (tmp_path / "usr/share").mkdir(parents=True)
    (tmp_path / "usr/share/splash.bmp").write_bytes(BMP)
    assert splash_file(tmp_path, "/usr/share/splash.bmp") == tmp_path / "usr/share/splash.bmp"
    (tmp_path / "usr/share/splash.png").write_bytes(b"\x89PNG....")
    with pytest.raises(MkosiError, match="not a BMP picture"):
        splash_file(tmp_path, "/usr/share/splash.png")
    with pytest.raises(MkosiError, match=r"Splash=/nope\.bmp: the image has no such file"):
        splash_file(tmp_path, "/nope.bmp")
    (tmp_path / "usr/share/link.bmp").symlink_to("/usr/share/splash.bmp")   # resolved inside the image
    assert splash_file(tmp_path, "/usr/share/link.bmp") == tmp_path / "usr/share/splash.bmp"


def dtb_tree(root: Path) -> None:
    for rel in ("rockchip/rk3399-a.dtb", "rockchip/rk3588-b.dtb", "freescale/imx8mq-c.dtb", "rockchip/README"):
        write(root / f"usr/lib/modules/{V}/dtb/{rel}", rel)
    write(root / f"usr/lib/linux-image-{V}/rockchip/rk3399-a.dtb", "debian's copy")
    write(root / f"usr/lib/linux-image-{V}/qcom/x.dtb", "qcom")


def test_find_devicetrees(tmp_path: Path) -> None:
    dtb_tree(tmp_path)
    found = find_devicetrees(tmp_path, V, ["rockchip/*", "freescale/imx8mq-c"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        f"usr/lib/modules/{V}/dtb/freescale/imx8mq-c.dtb", f"usr/lib/modules/{V}/dtb/rockchip/rk3399-a.dtb",
        f"usr/lib/modules/{V}/dtb/rockchip/rk3588-b.dtb"]
    assert [p.name for p in find_devicetrees(tmp_path, V, ["qcom/*"])] == ["x.dtb"]
    assert find_devicetrees(tmp_path, V, []) == []
    with pytest.raises(MkosiError, match="Devicetrees=nvidia/\\*: no devicetree of kernel"):
        find_devicetrees(tmp_path, V, ["nvidia/*"])


def test_uki_sections_and_the_type1_devicetree(tmp_path: Path) -> None:
    dtb_tree(tmp_path)
    (tmp_path / "splash.bmp").write_bytes(BMP)
    one = find_devicetrees(tmp_path, V, ["*/rk3399*"])
    assert [n for n, _ in uki_sections(tmp_path, "/splash.bmp", one)] == [".splash", ".dtb"]
    many = find_devicetrees(tmp_path, V, ["rockchip/*"])
    assert [n for n, _ in uki_sections(tmp_path, None, many)] == [".dtbauto", ".dtbauto"]
    assert entry_devicetree(one, ["*/rk3399*"]) == one[0]
    assert entry_devicetree([], []) is None
    with pytest.raises(MkosiError, match="matches 2 devicetrees; a boot loader entry takes one"):
        entry_devicetree(many, ["rockchip/*"])
    esp = tmp_path / "esp"
    kernel = write(tmp_path / "vmlinuz", "MZ kernel")
    entry = install_bls_entry(esp, "img-1", "Image", kernel, None, "rw", devicetree=one[0])
    assert "devicetree /img-1/rk3399-a.dtb\n" in entry.read_text()
    assert (esp / "img-1/rk3399-a.dtb").read_text() == "rockchip/rk3399-a.dtb"


def test_uki_carries_splash_and_dtbauto_sections(tmp_path: Path) -> None:
    dtb_tree(tmp_path)
    (tmp_path / "splash.bmp").write_bytes(BMP)
    stub = fake_stub(tmp_path / "stub.efi")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + bytes(100))
    initrd = write(tmp_path / "initrd", "initrd")
    osrel = write(tmp_path / "os-release", "ID=test\n")
    sections = uki_sections(tmp_path, "/splash.bmp", find_devicetrees(tmp_path, V, ["rockchip/*"]))
    out = build_uki(stub, kernel, initrd, "rw", osrel, tmp_path / "uki.efi", uname=V, extra_sections=sections)
    names = [s.name for s in read_pe(out).sections]
    assert names[2:] == [".osrel", ".cmdline", ".uname", ".splash", ".dtbauto", ".dtbauto", ".initrd", ".linux"]


def test_with_extras_fills_the_boot_files(tmp_path: Path) -> None:
    from mkosi.boot.bootable import with_extras
    from mkosi.boot.kernel import BootFiles
    dtb_tree(tmp_path)
    (tmp_path / "splash.bmp").write_bytes(BMP)
    files = BootFiles(kernel=tmp_path / "k", version=V, initrd=tmp_path / "i", cmdline="", os_release=tmp_path / "o",
                      efi_dir=tmp_path, efi_arch="x64")
    got = with_extras(tmp_path, Config(splash="/splash.bmp", devicetrees=["freescale/*"]), files)
    assert [n for n, _ in got.extra_sections] == [".splash", ".dtb"]
    assert [p.name for p in got.devicetrees] == ["imx8mq-c.dtb"] and got.devicetree_patterns == ("freescale/*",)
    assert with_extras(tmp_path, Config(), files) == dataclasses.replace(files)


def test_selection_is_a_value() -> None:
    s = Selection(V, frozenset({"a.ko"}), frozenset())
    assert dataclasses.replace(s, firmware=frozenset({"x"})).firmware == {"x"}


# ---- MicrocodeHost= ----

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 158
stepping\t: 10

processor\t: 1
vendor_id\t: GenuineIntel
"""


def test_host_cpu_and_its_microcode_file(tmp_path: Path) -> None:
    from mkosi.boot.microcode import Cpu, host_cpu, microcode_path
    cpu = host_cpu(write(tmp_path / "cpuinfo", CPUINFO))
    assert cpu == Cpu("GenuineIntel", 6, 158, 10)
    assert microcode_path(cpu) == "intel-ucode/06-9e-0a"
    assert microcode_path(Cpu("AuthenticAMD", 25, 1, 1)) == "amd-ucode/microcode_amd_fam19h.bin"
    assert microcode_path(Cpu("AuthenticAMD", 16, 1, 1)) == "amd-ucode/microcode_amd.bin"
    with pytest.raises(MkosiError, match="no early microcode for HygonGenuine"):
        microcode_path(Cpu("HygonGenuine", 24, 0, 0))
    with pytest.raises(MkosiError, match="does not say the vendor"):
        host_cpu(write(tmp_path / "arm", "processor\t: 0\nBogoMIPS\t: 50.00\n"))


@needs_tools("cpio")
def test_host_microcode_initrd(tmp_path: Path) -> None:
    from mkosi.boot.microcode import Cpu, host_microcode_initrd
    cpu = Cpu("GenuineIntel", 6, 158, 10)
    root = tmp_path / "root"
    write(root / "usr/lib/firmware/intel-ucode/06-9e-0a", "this CPU's")
    write(root / "usr/lib/firmware/intel-ucode/06-55-04", "another CPU's")
    out = host_microcode_initrd(root, tmp_path / "ucode.cpio", cpu)
    assert out is not None
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=out.read_bytes(), capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == ["kernel", "kernel/x86", "kernel/x86/microcode", "kernel/x86/microcode/GenuineIntel.bin"]
    assert b"this CPU's" in out.read_bytes() and b"another CPU's" not in out.read_bytes()
    assert host_microcode_initrd(root, tmp_path / "none.cpio", Cpu("GenuineIntel", 6, 1, 1)) is None


def test_microcode_host_turns_off_dracuts_own() -> None:
    assert "--no-early-microcode" in dracut_flags(Config(microcode_host=True))
    assert "--no-early-microcode" not in dracut_flags(Config())


def test_expected_pcrs_are_not_signed_for_several_devicetrees(tmp_path: Path) -> None:
    from mkosi.boot.pcrsig import measured
    dtbs = [(".dtbauto", tmp_path / "a.dtb"), (".dtbauto", tmp_path / "b.dtb")]
    with pytest.raises(MkosiError, match=r"several devicetrees \(\.dtbauto sections\) is not implemented"):
        measured([(".linux", tmp_path / "k"), *dtbs], None, {".linux": "--linux", ".dtbauto": "--dtbauto"}, "m")
    assert measured([(".dtbauto", tmp_path / "a.dtb")], None, {".dtbauto": "--dtbauto"}, "m") == [
        f"--dtbauto={tmp_path / 'a.dtb'}"]
