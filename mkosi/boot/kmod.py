"""KernelModules=, KernelInitrdModules= and FirmwareFiles=: which kernel modules and firmware files of an
image tree are kept. Patterns are globs (a leading "-" excludes; the last pattern that matches a module
decides), the modules chosen bring the modules they depend on (modules.dep, modules.softdep) and the
firmware they name in their .modinfo section. Everything works on a root directory and plain lists."""

from __future__ import annotations

import dataclasses
import fnmatch
import gzip
import io
import lzma
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import find_tool, run
from mkosi.sandbox import nspawn_command
from mkosi.trees import resolve_in_root

MODULES_DIR = "usr/lib/modules"
FIRMWARE_DIR = "usr/lib/firmware"

# The suffixes a module or firmware file may carry beyond its name: compression first, then .ko.
COMPRESSION_SUFFIXES = (".xz", ".zst", ".gz")

# `default`: the modules an initrd needs to find, unlock and mount the root file system on common
# hardware and in virtual machines. Directory patterns end with "/".
DEFAULT_MODULES: tuple[str, ...] = (
    "/fs/", "/crypto/", "/lib/", "/block/",
    "/drivers/block/", "/drivers/ata/", "/drivers/scsi/", "/drivers/nvme/", "/drivers/md/", "/drivers/mmc/",
    "/drivers/usb/storage/", "/drivers/usb/host/", "/drivers/usb/common/", "/drivers/usb/core/",
    "/drivers/hid/", "/drivers/input/keyboard/", "/drivers/input/serio/",
    "/drivers/virtio/", "/drivers/char/virtio_console", "/drivers/char/hw_random/virtio-rng",
    "/drivers/firmware/qemu_fw_cfg", "/drivers/gpu/drm/virtio/", "/drivers/net/virtio_net",
    "/drivers/nvdimm/", "/drivers/dax/", "/drivers/acpi/nfit/", "/drivers/tty/serial/",
    "/net/vmw_vsock/", "/drivers/vhost/vsock", "/drivers/hv/", "/drivers/xen/",
    "/drivers/thunderbolt/", "/drivers/platform/x86/",
    "loop", "dm-mod", "dm-crypt", "dm-verity", "dm-integrity", "overlay", "squashfs", "erofs", "efivarfs",
    "tpm_tis", "tpm_crb", "tpm_tis_core",
)


def module_name(rel: str) -> str:
    """A module's name from its file: the basename without .ko and the compression suffix, with '-'
    written as '_' (the kernel treats both alike)."""
    base = rel.rsplit("/", 1)[-1]
    for suffix in COMPRESSION_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")


def strip_suffixes(rel: str) -> str:
    """`rel` without the compression suffix and .ko: what patterns are matched against."""
    for suffix in COMPRESSION_SUFFIXES:
        if rel.endswith(suffix):
            rel = rel[: -len(suffix)]
            break
    return rel[:-3] if rel.endswith(".ko") else rel


def _match_component(name: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern):
        return True
    return fnmatch.fnmatchcase(name.replace("-", "_"), pattern.replace("-", "_"))


def _match_parts(parts: Sequence[str], pats: Sequence[str]) -> bool:
    return len(parts) == len(pats) and all(_match_component(n, p) for n, p in zip(parts, pats))


def pattern_matches(pattern: str, rel: str, top: str = "kernel") -> bool:
    """Whether the glob `pattern` (without its "-") matches the file `rel` (relative to the modules or
    firmware directory, its suffixes stripped). A plain name matches the basename, a relative path the
    last components, "/path" the whole path (first below `top`/, then below the directory itself), and
    a pattern ending with "/" every file below such a directory."""
    is_dir = pattern.endswith("/")
    absolute = pattern.startswith("/")
    pats = [p for p in pattern.strip("/").split("/") if p]
    if not pats:
        return False
    parts = rel.split("/")
    candidates = [parts]
    if absolute and top and parts[0] == top and len(parts) > 1:
        candidates.insert(0, parts[1:])
    for cand in candidates:
        dirs = cand[:-1]
        if absolute:
            if is_dir:
                if _match_parts(dirs[: len(pats)], pats):
                    return True
            elif _match_parts(cand, pats):
                return True
        elif is_dir:
            if any(_match_parts(dirs[i : i + len(pats)], pats) for i in range(len(dirs) - len(pats) + 1)):
                return True
        elif len(cand) >= len(pats) and _match_parts(cand[len(cand) - len(pats) :], pats):
            return True
    return False


def host_modules(proc_modules: Path = Path("/proc/modules")) -> list[str]:
    """`host`: the names of the modules the running kernel has loaded."""
    try:
        text = proc_modules.read_text()
    except OSError as e:
        raise MkosiError(f"KernelModules=host: cannot read {proc_modules}: {e.strerror}") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def expand_patterns(patterns: Sequence[str], host: Optional[Sequence[str]] = None) -> list[str]:
    """`default` and `host` replaced by the patterns they stand for (`host` reads /proc/modules unless
    `host` is given)."""
    out: list[str] = []
    for p in patterns:
        if p == "default":
            out += DEFAULT_MODULES
        elif p == "host":
            out += host if host is not None else host_modules()
        else:
            out.append(p)
    return out


def selected(patterns: Sequence[str], rel: str, top: str = "kernel") -> bool:
    """The last pattern that matches `rel` decides: kept when it has no "-" in front."""
    verdict = False
    for p in patterns:
        negative = p.startswith("-")
        if pattern_matches(p[1:] if negative else p, strip_suffixes(rel), top):
            verdict = not negative
    return verdict


# ---- a kernel's modules ----

def read_modules_dep(moddir: Path) -> dict[str, list[str]]:
    """modules.dep: each module file (relative to `moddir`) and the module files it needs."""
    dep = moddir / "modules.dep"
    if not dep.is_file():
        raise MkosiError(f"{dep} does not exist: the kernel's module dependencies are unknown",
                         hint="the kernel package runs depmod; a tree of modules added by hand needs depmod too")
    deps: dict[str, list[str]] = {}
    for n, line in enumerate(dep.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        mod, sep, rest = line.partition(":")
        if not sep:
            raise MkosiError(f"{dep}:{n}: not a 'module: dependencies' line")
        deps[mod.strip()] = rest.split()
    return deps


def read_softdeps(moddir: Path) -> dict[str, list[str]]:
    """modules.softdep: the module names each module wants loaded before (pre:) or after (post:) it."""
    soft: dict[str, list[str]] = {}
    path = moddir / "modules.softdep"
    if not path.is_file():
        return soft
    for line in path.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        soft.setdefault(words[1].replace("-", "_"), []).extend(
            w.replace("-", "_") for w in words[2:] if not w.endswith(":"))
    return soft


def read_aliases(moddir: Path) -> dict[str, list[str]]:
    """modules.alias: the modules each plain alias (one without wildcards, like crc32c) stands for."""
    aliases: dict[str, list[str]] = {}
    path = moddir / "modules.alias"
    if not path.is_file():
        return aliases
    for line in path.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
            aliases.setdefault(words[1].replace("-", "_"), []).append(words[2].replace("-", "_"))
    return aliases


def module_files(moddir: Path) -> list[str]:
    """Every module file below `moddir`, relative to it, sorted."""
    found = []
    for d, dirs, files in os.walk(moddir):
        dirs.sort()
        for f in files:
            if strip_suffixes(f) != f and f.endswith(tuple(f".ko{s}" for s in ("", *COMPRESSION_SUFFIXES))):
                found.append(os.path.relpath(os.path.join(d, f), moddir))
    return sorted(found)


def required_modules(moddir: Path, patterns: Sequence[str]) -> set[str]:
    """The module files (relative to `moddir`) that `patterns` keep, with every module they need."""
    deps = read_modules_dep(moddir)
    soft = read_softdeps(moddir)
    files = sorted(set(module_files(moddir)) | set(deps))
    by_name = {module_name(f): f for f in files}
    aliases = read_aliases(moddir) if soft else {}
    todo = [f for f in files if selected(patterns, f)]
    keep: set[str] = set()
    while todo:
        f = todo.pop()
        if f in keep:
            continue
        keep.add(f)
        todo += deps.get(f, [])
        # A soft dependency names a module or an alias of some (ext4 wants "crc32c").
        for n in soft.get(module_name(f), []):
            todo += [by_name[m] for m in (aliases.get(n, []) if n not in by_name else [n]) if m in by_name]
    return {f for f in keep if (moddir / f).exists()}


# ---- firmware ----

def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise MkosiError(f"reading {path} needs zstd", hint="install zstd")
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
    return data


def modinfo(path: Path) -> list[tuple[str, str]]:
    """The KEY=VALUE entries of a module's .modinfo section (decompressing .xz, .gz and .zst modules)."""
    try:
        elf = ELFFile(io.BytesIO(_decompressed(path)))
        section = elf.get_section_by_name(".modinfo")
    except (ELFError, lzma.LZMAError, OSError, EOFError, subprocess.CalledProcessError) as e:
        log.debug(f"cannot read the module information of {path}: {e}")
        return []
    if section is None:
        return []
    entries = []
    for raw in section.data().split(b"\0"):
        key, sep, value = raw.decode(errors="replace").partition("=")
        if sep:
            entries.append((key, value))
    return entries


def module_firmware(path: Path) -> list[str]:
    """The firmware files a module names (`modinfo -F firmware`)."""
    return [v for k, v in modinfo(path) if k == "firmware"]


def builtin_firmware(moddir: Path) -> list[str]:
    """The firmware the kernel's built-in modules name (modules.builtin.modinfo)."""
    path = moddir / "modules.builtin.modinfo"
    if not path.is_file():
        return []
    out = []
    for raw in path.read_bytes().split(b"\0"):
        entry = raw.decode(errors="replace")
        _, _, rest = entry.partition(".")
        key, sep, value = rest.partition("=")
        if sep and key == "firmware":
            out.append(value)
    return out


def firmware_files(fwdir: Path) -> list[str]:
    """Every file and link below the firmware directory, relative to it, sorted."""
    found = []
    for d, dirs, files in os.walk(fwdir):
        dirs.sort()
        found += [os.path.relpath(os.path.join(d, f), fwdir) for f in files]
        found += [os.path.relpath(os.path.join(d, x), fwdir) for x in dirs if os.path.islink(os.path.join(d, x))]
    return sorted(found)


def firmware_key(rel: str, versions: Iterable[str] = ()) -> str:
    """What the kernel asks for when it loads the file `rel` of the firmware directory: without the
    compression suffix, and without the updates/ and kernel-version directories it also searches."""
    for suffix in COMPRESSION_SUFFIXES:
        if rel.endswith(suffix):
            rel = rel[: -len(suffix)]
            break
    parts = rel.split("/")
    if parts[0] == "updates" and len(parts) > 1:
        parts = parts[1:]
    if parts[0] in set(versions) and len(parts) > 1:
        parts = parts[1:]
    return "/".join(parts)


def _link_target(rel: str, target: str) -> Optional[str]:
    """Where the link `rel` of the firmware directory points, relative to that directory (None outside)."""
    if target.startswith("/"):
        for prefix in ("/usr/lib/firmware/", "/lib/firmware/"):
            if target.startswith(prefix):
                return os.path.normpath(target[len(prefix):])
        return None
    out = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    return None if out == ".." or out.startswith("../") else out


def _link_closure(fwdir: Path, keep: set[str]) -> set[str]:
    """The kept files and links with what the links point at, and the directory links on their way."""
    todo = list(keep)
    out: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in out:
            continue
        out.add(rel)
        parent = os.path.dirname(rel)
        while parent:
            if (fwdir / parent).is_symlink():
                todo.append(parent)
            parent = os.path.dirname(parent)
        if (fwdir / rel).is_symlink():
            target = _link_target(rel, os.readlink(fwdir / rel))
            if target is not None:
                todo.append(target)
    return out


def required_firmware(fwdir: Path, wanted: Iterable[str], patterns: Sequence[str],
                      versions: Iterable[str] = ()) -> set[str]:
    """The firmware files (relative to `fwdir`) that modules want (names, possibly globs) or that
    FirmwareFiles= patterns select, with what their links point at."""
    versions = list(versions)
    want = set(wanted)
    plain = {w for w in want if not any(c in w for c in "*?[")}
    globs = want - plain
    keep = set()
    for rel in firmware_files(fwdir):
        key = firmware_key(rel, versions)
        if key in plain or any(fnmatch.fnmatchcase(key, g) for g in globs) or selected(patterns, key, top=""):
            keep.add(rel)
    return _link_closure(fwdir, keep)


# ---- applying it to an image ----

@dataclasses.dataclass(frozen=True)
class Selection:
    """What one kernel keeps: module files relative to its modules directory, firmware files relative
    to the firmware directory."""

    version: str
    modules: frozenset[str]
    firmware: frozenset[str]


def kernel_versions(root: Path) -> list[str]:
    """The kernels of an image that have modules: the directories of /usr/lib/modules with a modules.dep
    or modules below them."""
    top = resolve_in_root(root, MODULES_DIR)
    if not top.is_dir():
        return []
    return sorted(d.name for d in top.iterdir()
                  if d.is_dir() and not d.is_symlink() and ((d / "modules.dep").is_file() or (d / "kernel").is_dir()))


def select(root: Path, version: str, module_patterns: Sequence[str], firmware_patterns: Sequence[str],
           host: Optional[Sequence[str]] = None) -> Selection:
    """The modules and firmware of kernel `version` in `root` that the patterns keep. No module patterns
    keep every module (FirmwareFiles= alone then narrows the firmware to what the modules name)."""
    moddir = resolve_in_root(root, f"{MODULES_DIR}/{version}")
    fwdir = resolve_in_root(root, FIRMWARE_DIR)
    patterns = expand_patterns(module_patterns, host)
    modules = required_modules(moddir, patterns) if module_patterns else set(module_files(moddir))
    firmware: set[str] = set()
    if fwdir.is_dir() and any(fwdir.iterdir()):
        wanted = [fw for rel in sorted(modules) for fw in module_firmware(moddir / rel)]
        wanted += builtin_firmware(moddir)
        firmware = required_firmware(fwdir, wanted, firmware_patterns, kernel_versions(root))
    return Selection(version, frozenset(modules), frozenset(firmware))


def _prune(top: Path, keep: set[str], candidates: Iterable[str]) -> int:
    removed = 0
    for rel in candidates:
        if rel not in keep:
            path = top / rel
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed += 1
    # Directories left empty go too.
    for d, _dirs, _files in os.walk(top, topdown=False):
        if d != str(top) and not os.listdir(d) and not os.path.islink(d):
            os.rmdir(d)
    return removed


DEPMOD_MOUNT = "/run/mkosi-depmod"


def run_depmod(tree: Path, version: str, image: Optional[Path] = None, keep_unit: Optional[bool] = None) -> None:
    """depmod for kernel `version` of `tree` (an image tree, or a staging tree of some of its modules):
    the tools' depmod with --basedir, else the depmod of `image` (default: `tree`) in a container of it."""
    image = image or tree
    depmod = find_tool("depmod")
    for legacy in ("lib/modules", "usr/lib/modules"):
        p = tree / legacy
        if not os.path.realpath(p).startswith(os.path.realpath(tree) + os.sep):
            depmod = None     # a link that leaves the tree: only the image itself may follow it
    if depmod is not None:
        run([depmod, "--all", "--basedir", str(tree), version], capture=True)
        return
    if not (resolve_in_root(image, "usr/sbin/depmod").exists() or resolve_in_root(image, "usr/bin/depmod").exists()
            or resolve_in_root(image, "sbin/depmod").exists()):
        raise MkosiError(f"depmod is needed to update the module index of kernel {version}",
                         hint="install kmod on the host or in the tools tree, or in the image")
    if tree == image:
        argv = nspawn_command(image, ["depmod", "--all", version], keep_unit=keep_unit, network=False)
    else:
        argv = nspawn_command(image, ["depmod", "--all", "--basedir", DEPMOD_MOUNT, version], keep_unit=keep_unit,
                              network=False, binds=[(tree, DEPMOD_MOUNT)])
    run(argv, capture=True)


# The files of a modules directory that depmod reads (besides the modules).
DEPMOD_INPUTS = ("modules.order", "modules.builtin", "modules.builtin.modinfo", "modules.builtin.alias.bin")


def stage_selection(root: Path, selection: Selection, staging: Path, keep_unit: Optional[bool] = None) -> Path:
    """A tree with only the selected modules and firmware of `root` (hard links where possible) and the
    module index depmod writes for them: what the kernel modules initrd is made of. Returns `staging`."""
    moddir = resolve_in_root(root, f"{MODULES_DIR}/{selection.version}")
    fwdir = resolve_in_root(root, FIRMWARE_DIR)
    smod = staging / MODULES_DIR / selection.version
    smod.mkdir(parents=True, exist_ok=True)
    (staging / "lib").symlink_to("usr/lib")
    for top, target, names in ((moddir, smod, [*selection.modules, *DEPMOD_INPUTS]),
                               (fwdir, staging / FIRMWARE_DIR, list(selection.firmware))):
        for rel in sorted(names):
            src, dst = top / rel, target / rel
            if not (src.exists() or src.is_symlink()):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                dst.symlink_to(os.readlink(src))
            else:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    run_depmod(staging, selection.version, image=root, keep_unit=keep_unit)
    return staging


def apply_selection(root: Path, selection: Selection, keep_unit: Optional[bool] = None) -> tuple[int, int]:
    """Remove the modules and firmware files of `root` that `selection` does not keep and run depmod.
    Returns how many module and firmware files were removed."""
    moddir = resolve_in_root(root, f"{MODULES_DIR}/{selection.version}")
    fwdir = resolve_in_root(root, FIRMWARE_DIR)
    mods = _prune(moddir, set(selection.modules), module_files(moddir))
    fw = _prune(fwdir, set(selection.firmware), firmware_files(fwdir)) if fwdir.is_dir() else 0
    run_depmod(root, selection.version, keep_unit=keep_unit)
    return mods, fw


def process_kernel_modules(root: Path, module_patterns: Sequence[str], firmware_patterns: Sequence[str],
                           keep_unit: Optional[bool] = None) -> None:
    """KernelModules= and FirmwareFiles= on an image tree: for each kernel, keep what they select and
    what it needs, remove the rest. Nothing happens when both are empty. The firmware kept is the union
    over the image's kernels."""
    if not module_patterns and not firmware_patterns:
        return
    versions = kernel_versions(root)
    if not versions:
        log.info("KernelModules=/FirmwareFiles=: the image has no kernel modules, nothing to select")
        return
    with log.step("Selecting kernel modules and firmware (KernelModules=, FirmwareFiles=)"):
        host = host_modules() if "host" in module_patterns else None
        selections = [select(root, v, module_patterns, firmware_patterns, host) for v in versions]
        firmware = frozenset().union(*(s.firmware for s in selections))
        for s in selections:
            mods, fw = apply_selection(root, dataclasses.replace(s, firmware=firmware), keep_unit)
            log.info(f"kernel {s.version}: kept {len(s.modules)} modules (removed {mods}), "
                     f"{len(firmware)} firmware files (removed {fw})")
