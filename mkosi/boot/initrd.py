"""The initrd: dracut running inside the image (in a container), for the image's kernel, and the
cache that keeps it between builds with -i as long as nothing that shapes it changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi import __version__, log
from mkosi.boot.kmod import FIRMWARE_DIR, Selection, module_name, select, stage_selection
from mkosi.cache import digest_path, write_private
from mkosi.config.enums import Verity
from mkosi.config.settings import Config, plain_value
from mkosi.errors import CommandError, MkosiError
from mkosi.output.archive import source_date_epoch
from mkosi.output.artifacts import cached_initrd_path
from mkosi.progress import Renderer, Ticker, is_noise
from mkosi.run import run, run_streaming
from mkosi.sandbox import nspawn_command
from mkosi.trees import resolve_in_root

# zstd: the kernel unpacks it, and it is much faster than dracut's default gzip -9.
DRACUT_COMPRESS = "--compress=zstd -q -T0 -10"

# Where dracut writes inside the image; the initrd is moved out at once, so the image does not ship it.
INITRD_IN_ROOT = "var/tmp/mkosi-initrd.img"

# The settings that shape the initrd (KernelCommandLine= and the like do not: they go elsewhere).
INITRD_SETTINGS = ("distribution", "release", "architecture", "format", "hostonly_initrd", "verity", "encrypt",
                   "usr_only", "initrd_profiles", "kernel_initrd_modules")

# InitrdProfiles=: the dracut module each profile of the default initrd adds.
DRACUT_PROFILE_MODULES = {"lvm": "lvm", "network": "systemd-networkd", "nfs": "nfs", "pkcs11": "systemd-pkcs11",
                          "plymouth": "plymouth", "raid": "mdraid"}

# Files of the image, beyond its packages, that dracut reads for a generic initrd.
INITRD_CONFIG_PATHS = ("etc/dracut.conf", "etc/dracut.conf.d", "usr/lib/dracut/dracut.conf.d",
                       "etc/modprobe.d", "usr/lib/modprobe.d", "etc/modules-load.d", "etc/udev/rules.d",
                       "etc/crypttab", "etc/vconsole.conf", "etc/locale.conf")


def dracut_flags(config: Config) -> list[str]:
    """dracut's options for this configuration (besides the kernel version and the output)."""
    flags = ["--hostonly"] if config.hostonly_initrd else ["--no-hostonly", "--no-hostonly-cmdline"]
    if config.verity != Verity.no:
        flags += ["--add", "systemd-veritysetup"]
    if config.microcode_host:
        flags.append("--no-early-microcode")     # mkosi puts the host CPU's in front (MicrocodeHost=)
    for profile in config.initrd_profiles:
        flags += ["--add", DRACUT_PROFILE_MODULES[str(profile)]]
    if config.source_date_epoch is not None:
        # Times newer than dracut's own files become theirs, and cpio --reproducible renumbers the inodes.
        flags.append("--reproducible")
    return flags


def dracut_driver_flags(config: Config, root: Path, version: str) -> list[str]:
    """KernelInitrdModules=: dracut --drivers with the names of the modules it selects (dracut adds what
    they depend on and the firmware they name); nothing when it is empty (dracut's own choice)."""
    if not config.kernel_initrd_modules:
        return []
    selection = select(root, version, config.kernel_initrd_modules, [])
    names = sorted({module_name(m) for m in selection.modules})
    if not names:
        raise MkosiError(f"KernelInitrdModules={','.join(config.kernel_initrd_modules)} selects no module of "
                         f"kernel {version}")
    return ["--drivers", " ".join(names)]


def run_dracut(root: Path, version: str, output: Path, flags: Sequence[str], keep_unit: Optional[bool]) -> Path:
    """Run the image's dracut in a container of `root` and move the initrd it makes to `output`."""
    if not (root / "usr/bin/dracut").exists():
        raise MkosiError("Bootable=yes needs dracut in the image", hint="add dracut to Packages=")
    inside = root / INITRD_IN_ROOT
    inside.parent.mkdir(parents=True, exist_ok=True)
    with log.step(f"Building the initrd for kernel {version} with dracut"), log.progress() as renderer:
        argv = nspawn_command(root, ["dracut", "--quiet", "--force", *flags, DRACUT_COMPRESS, "--kver", version,
                                     f"/{INITRD_IN_ROOT}"],
                              keep_unit=keep_unit, network=False)
        ticker = Ticker(renderer, "dracut running")
        # Both streams: what dracut writes to stderr inside the container can reach nspawn's stdout.
        proc = run_streaming(argv, on_stdout=lambda line: _dracut_output(renderer, line),
                             on_stderr=lambda line: _dracut_output(renderer, line), tick=ticker.tick)
        if proc.returncode != 0:
            raise CommandError([str(a) for a in argv], proc.returncode, proc.stdout + proc.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(inside, output)
    return output


def _dracut_output(renderer: Renderer, line: str) -> None:
    """dracut's and nspawn's messages, but for the known noise (shown with --debug only)."""
    line = line.rstrip("\r")   # nspawn ends the lines it hands over with \r\n
    if is_noise(line):
        log.debug(line)
    else:
        renderer.above(line)


def _digest_listing(h: hashlib._Hash, directory: Path) -> None:
    """Names and sizes of the files below `directory` (kernel modules: their package is keyed already,
    this catches modules added by other means)."""
    for d, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(d, name)
            h.update(f"{os.path.relpath(path, directory)}\0{os.lstat(path).st_size}\0".encode())


def initrd_key(config: Config, root: Path, kernel: Path, version: str, packages: Sequence[str]) -> str:
    """A hash of everything that shapes the initrd: the settings of INITRD_SETTINGS, the dracut options, the
    installed packages with their versions, the kernel and its modules, and (unless CacheInitrd=yes) the
    configuration files of INITRD_CONFIG_PATHS."""
    h = hashlib.sha256()
    inputs = {name: plain_value(getattr(config, name)) for name in INITRD_SETTINGS}
    inputs.update(dracut=[*dracut_flags(config), DRACUT_COMPRESS], kernel=version, packages=sorted(packages),
                  mkosi=__version__)
    h.update(json.dumps(inputs, sort_keys=True).encode())
    digest_path(h, kernel)
    _digest_listing(h, root / "usr/lib/modules" / version)
    if not config.cache_initrd:
        for rel in INITRD_CONFIG_PATHS:
            h.update(f"\0{rel}\0".encode())
            if (root / rel).exists():
                digest_path(h, root / rel)
    return h.hexdigest()


def load_cached_initrd(config: Config, key: str) -> Optional[Path]:
    """The cached initrd, when it was built from inputs with this key."""
    path = cached_initrd_path(config)
    keyfile = Path(f"{path}.key")
    if not path.is_file() or not keyfile.exists():
        return None
    if keyfile.read_text().strip() != key:
        log.info("The cached initrd is out of date (its inputs changed); rebuilding it")
        return None
    return path


def save_cached_initrd(config: Config, initrd: Path, key: str) -> None:
    path = cached_initrd_path(config)
    keyfile = Path(f"{path}.key")
    path.parent.mkdir(parents=True, exist_ok=True)  # CacheDirectory=: its key directory may be new
    keyfile.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(initrd, tmp)
        os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    write_private(keyfile, key + "\n")


def modules_initrd(root: Path, version: str, output: Path, selection: Optional[Selection] = None,
                   keep_unit: Optional[bool] = None) -> Path:
    """KernelModulesInitrd=: a zstd-compressed cpio holding only /usr/lib/modules/VERSION of `root` (the
    kernel's modules and depmod's files), to append to an initrd that has no modules of its own. With a
    `selection` (KernelInitrdModules=), only its modules and their firmware, with a module index of
    their own that depmod writes."""
    rel = Path("usr/lib/modules") / version
    if not (root / rel).is_dir():
        raise MkosiError(f"the image has no {rel}/ for the kernel modules initrd",
                         hint="install the kernel's modules, or set KernelModulesInitrd=no")
    top = root
    tops = [rel]
    staging = output.with_name(f".{output.name}.tree")
    if selection is not None:
        shutil.rmtree(staging, ignore_errors=True)
        top = stage_selection(root, selection, staging, keep_unit)
        if (staging / FIRMWARE_DIR).is_dir():
            tops.append(Path(FIRMWARE_DIR))
    names = ["usr", "usr/lib"]
    for t in tops:
        names.append(str(t.parent))
        for d, dirs, files in os.walk(top / t):
            dirs.sort()
            reld = os.path.relpath(d, top)
            names.append(reld)
            names += [os.path.join(reld, f) for f in sorted(files)]
            names += [os.path.join(reld, x) for x in dirs if os.path.islink(os.path.join(d, x))]
    names = list(dict.fromkeys(names))
    cpio = output.with_name(f".{output.name}.cpio")
    with open(cpio, "wb") as out:
        run(["cpio", "--create", "--null", "--format=newc", "--quiet", "--reproducible"], cwd=top,
            input=b"\0".join(n.encode() for n in names) + b"\0", stdout=out, text=False)
    with open(cpio, "rb") as fin, open(output, "wb") as fout:
        run(["zstd", "--threads=0", "--stdout", "-q", "-"], stdin=fin, stdout=fout, text=False)
    cpio.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    return output


# ---- an image that is an initrd itself (Format=uki's /init, MakeInitrd=) ----

def _clamp_link(link: Path) -> None:
    epoch = source_date_epoch()
    if epoch is not None:
        # Made after the tree's times were clamped: the link gets the epoch, as every newer file has.
        os.utime(link, (epoch, epoch), follow_symlinks=False)


def link_init(root: Path, what: str) -> None:
    """/init, what the kernel starts from an initrd: a link to systemd, unless the tree has an /init of its
    own. `what` names the setting that needs it in the error when the image has no systemd."""
    init = root / "init"
    if init.exists() or init.is_symlink():
        return
    if not resolve_in_root(root, "usr/lib/systemd/systemd").exists():
        raise MkosiError(f"{what} needs systemd in the image (it runs as /init from memory)",
                         hint="add systemd to Packages=")
    init.symlink_to("usr/lib/systemd/systemd")
    _clamp_link(init)


def make_initrd_files(root: Path) -> None:
    """MakeInitrd=yes: /init and /etc/initrd-release, by which systemd knows it runs in an initrd (and
    switches to the real root when it is mounted). initrd-release links to the image's os-release."""
    link_init(root, "MakeInitrd=yes")
    etc = resolve_in_root(root, "etc")
    etc.mkdir(parents=True, exist_ok=True)
    release = etc / "initrd-release"
    if release.exists() or release.is_symlink():
        return
    if not resolve_in_root(root, "usr/lib/os-release").exists() and not (etc / "os-release").exists():
        raise MkosiError("MakeInitrd=yes: the image has no os-release (/usr/lib/os-release) for "
                         "/etc/initrd-release to point at", hint="add the package that ships it (base-files)")
    release.symlink_to("../usr/lib/os-release" if resolve_in_root(root, "usr/lib/os-release").exists()
                       else "os-release")
    _clamp_link(release)
