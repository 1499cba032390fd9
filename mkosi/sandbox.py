"""Where and how a command runs: one frozen description, translated into an argument list.

A `Sandbox` says which root supplies the tools (the host, or a tools tree), which directories are
bind-mounted where, whether /proc, /sys and /dev are provided, whether the network is reachable, and
the mode:

* `Mode.host`: the command runs on the host's file system. With nothing to set up it runs as it is;
  with mounts, API file systems, a tools tree or no network it runs under bubblewrap, which sees the
  whole host file system (`--dev-bind / /`) plus the requested mounts. The mounts exist only in the
  command's mount namespace, so nothing is left mounted whatever happens to the command.
* `Mode.chroot`: the command runs with the image root as `/` (bubblewrap), for package managers and
  maintainer scripts that must run the image's own binaries.
* `Mode.nspawn`: the command runs in a systemd-nspawn container of the image root (scripts,
  dracut, the shell and boot verbs).

This module only describes and translates; mkosi.run.run() executes. Environment values are never put
into an argument list (so they never show in a logged command line or in /proc/PID/cmdline): they
travel in the process environment, and nspawn is told only the names to pass on.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

from mkosi.config.settings import Config
from mkosi.errors import MkosiError

PathString = Union[str, "os.PathLike[str]"]

# Where binaries are looked up, after ExtraSearchPaths= and $PATH, on the host and in other roots.
SYSTEM_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
# What of a tools tree's /etc its binaries need, besides its /usr.
TOOLS_ETC = ("ld.so.cache", "alternatives")
# The certificate stores a tools tree supplies in place of the host's (ToolsTreeCertificates=yes).
TOOLS_CERTIFICATES = ("etc/pki/ca-trust", "etc/pki/tls", "etc/ssl", "etc/ca-certificates", "var/lib/ca-certificates")
ROOT_BIN_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")


class Mode(enum.Enum):
    host = "host"
    chroot = "chroot"
    nspawn = "nspawn"


@dataclasses.dataclass(frozen=True)
class Mount:
    """A bind mount. `target` is a path inside the image root in chroot and nspawn mode and a host
    path in host mode."""

    source: Path
    target: str
    readonly: bool = False
    # An overlay over the source instead of a bind (nspawn only): writes go to `upper`, or with
    # upper=None and overlay=True to a temporary directory that is discarded (BuildSourcesEphemeral=).
    overlay: bool = False
    upper: Optional[Path] = None


@dataclasses.dataclass(frozen=True)
class Container:
    """What only a systemd-nspawn run has."""

    keep_unit: Optional[bool] = None   # None: when the host has no systemd with a system bus
    machine: Optional[str] = None
    image: bool = False                # root is a disk image (--image=) rather than a directory
    boot: bool = False                 # run the image's init instead of a command
    ephemeral: bool = False
    extra: tuple[str, ...] = ()
    register: Optional[bool] = None    # None: only where the host has systemd with a system bus


@dataclasses.dataclass(frozen=True)
class Sandbox:
    mode: Mode = Mode.host
    # The image root: `/` of the command in chroot/nspawn mode; in host mode where API file systems go.
    root: Optional[Path] = None
    # A tree whose /usr supplies binaries and libraries for host-mode commands (a tools tree).
    tools: Optional[Path] = None
    # Whether the tools tree's certificate stores replace the host's (those the tree has).
    tools_certificates: bool = True
    # Searched before $PATH (ExtraSearchPaths=), in host mode.
    search_paths: tuple[Path, ...] = ()
    mounts: tuple[Mount, ...] = ()
    # /proc, /sys (read-only) and /dev in `root` (always provided by nspawn).
    api_filesystems: bool = False
    network: bool = True
    # Variables set for the command; with clear_env they are its whole environment.
    env: tuple[tuple[str, str], ...] = ()
    clear_env: bool = False
    chdir: Optional[str] = None
    # A private PID namespace: whatever the command leaves running is killed when it exits.
    private_pids: bool = False
    container: Container = Container()
    # SandboxTrees=: (source directory, absolute target) pairs laid over the file system host-mode
    # commands see, later trees over earlier ones.
    trees: tuple[tuple[Path, str], ...] = ()

    @classmethod
    def for_config(cls, config: Config) -> Sandbox:
        """The host sandbox of one image: its ExtraSearchPaths= and its tools tree (ToolsTree=PATH)."""
        tree = config.tools_tree
        return cls(search_paths=tuple(Path(p) for p in config.extra_search_paths),
                   tools=Path(tree) if tree is not None and tree != "default" else None,
                   tools_certificates=config.tools_tree_certificates,
                   trees=tuple((Path(t.source).absolute(), os.fspath(Path("/") / (t.target or "/")))
                               for t in config.sandbox_trees))

    def but(self, **changes: Any) -> Sandbox:
        """A copy with some fields replaced; `env` may be a mapping, `mounts` any sequence."""
        if isinstance(changes.get("env"), Mapping):
            changes["env"] = tuple((str(k), str(v)) for k, v in changes["env"].items())
        if "mounts" in changes:
            changes["mounts"] = tuple(changes["mounts"])
        return dataclasses.replace(self, **changes)

    def on_host(self) -> Sandbox:
        """Where mount and umount run: in mkosi's own mount namespace, never inside bubblewrap (whose
        namespace ends with the command, taking the mount with it), so no tools tree, no SandboxTrees=,
        no mounts of its own; only ExtraSearchPaths= and the variables stay."""
        return Sandbox(search_paths=self.search_paths, env=self.env)

    def with_mounts(self, *mounts: Mount) -> Sandbox:
        return dataclasses.replace(self, mounts=(*self.mounts, *mounts))

    def in_root(self, root: Path, *, api_filesystems: bool = True) -> Sandbox:
        """Host tools working on `root` (e.g. dnf --installroot), with /proc, /sys, /dev there."""
        return dataclasses.replace(self, mode=Mode.host, root=root, api_filesystems=api_filesystems)

    def chroot(self, root: Path, **changes: Any) -> Sandbox:
        """The image's own binaries with root as /, and /proc, /sys, /dev in it."""
        changes.setdefault("api_filesystems", True)
        return self.but(mode=Mode.chroot, root=root, **changes)

    def nspawn(self, root: Path, **changes: Any) -> Sandbox:
        """A systemd-nspawn container of root (no network unless network=True is given)."""
        changes.setdefault("container", Container())
        changes.setdefault("network", False)
        return self.but(mode=Mode.nspawn, root=root, **changes)

    def tree_files(self, directory: str) -> list[Path]:
        """The files the sandbox trees put in `directory` (an absolute path), by name, later trees winning:
        how tools that read a private configuration (apt's) pick up a tree's /etc/apt/... files."""
        found: dict[str, Path] = {}
        for source, target in self.trees:
            rel = PurePosixPath(directory).relative_to(target) if PurePosixPath(directory).is_relative_to(target) \
                else None
            if rel is None:
                continue
            d = source / rel
            for p in sorted(d.iterdir()) if d.is_dir() else []:
                if p.is_file():
                    found[p.name] = p
        return [found[n] for n in sorted(found)]

    def visible(self, path: str) -> Path:
        """The host file behind `path` as host-mode commands see it: a sandbox tree's (the last one
        having it), else the tools tree's for /usr (when it has it), else the host's."""
        for source, target in reversed(self.trees):
            if PurePosixPath(path).is_relative_to(target):
                candidate = source / PurePosixPath(path).relative_to(target)
                if candidate.exists():
                    return candidate
        if self.tools is not None and PurePosixPath(path).is_relative_to("/usr"):
            candidate = self.tools / path.lstrip("/")
            if candidate.exists():
                return candidate
        return Path(path)

    @property
    def environment(self) -> dict[str, str]:
        return dict(self.env)

    def needs_wrapper(self) -> bool:
        if self.mode != Mode.host:
            return True
        return bool(self.tools or self.mounts or self.api_filesystems or not self.network or self.private_pids
                    or self.trees)

    # -------------------------------------------------------------------------------------------
    # Finding binaries

    def find(self, name: str) -> Optional[str]:
        """Where `name` is, as the command will see it: in chroot mode a path inside the root,
        with a tools tree a path below the tree's /usr (which appears as /usr), otherwise a host path."""
        if "/" in name or self.mode == Mode.nspawn:
            return name   # nspawn looks commands up inside the container itself
        if self.mode == Mode.chroot:
            assert self.root is not None
            return find_in_root(self.root, name)
        for d in self.search_paths:
            if _executable(Path(d) / name):
                return os.fspath(Path(d) / name)
        if self.tools is not None:
            found = find_in_root(self.tools, name)
            return found if found is not None and found.startswith("/usr/") else None
        path = os.environ.get("PATH", "") + ":" + ":".join(SYSTEM_BIN_DIRS)
        return shutil.which(name, path=path)

    # -------------------------------------------------------------------------------------------
    # Translation

    def argv(self, cmd: Sequence[PathString], wrapper: str = "bwrap") -> list[str]:
        """The full argument list: the sandbox tool's options, then the command (argv[0] as given;
        resolve it with find() first). `wrapper` is the bubblewrap or systemd-nspawn executable."""
        command = [os.fspath(c) for c in cmd]
        if self.mode == Mode.nspawn:
            return self._nspawn_argv(command, wrapper)
        if not self.needs_wrapper():
            return command
        return [wrapper, *self._bwrap_options(), "--", *command]

    def wrapper_name(self) -> Optional[str]:
        if self.mode == Mode.nspawn:
            return nspawn_executable()
        return "bwrap" if self.needs_wrapper() else None

    def _bwrap_options(self) -> list[str]:
        opts: list[str] = []
        if self.mode == Mode.chroot:
            assert self.root is not None
            opts += ["--bind", os.fspath(self.root), "/"]
            base: Optional[Path] = Path("/")
        else:
            opts += ["--dev-bind", "/", "/"]
            if self.tools is not None:
                opts += ["--ro-bind", os.fspath(self.tools / "usr"), "/usr"]
            overlaid = tree_overlay(self.trees, self.tools)
            opts += overlaid.options
            if self.tools is not None:
                # The library cache and the alternatives that the tree's /usr/bin symlinks point into.
                for name in TOOLS_ETC:
                    if (self.tools / "etc" / name).exists():
                        opts += ["--ro-bind", os.fspath(self.tools / "etc" / name), f"/etc/{name}"]
                for rel in TOOLS_CERTIFICATES if self.tools_certificates else ():
                    if overlaid.provides(f"/{rel}"):
                        continue   # a sandbox tree's certificates win over the tools tree's
                    if (self.tools / rel).is_dir() and Path("/", rel).is_dir():
                        opts += ["--ro-bind", os.fspath(self.tools / rel), f"/{rel}"]
            base = self.root
        if self.api_filesystems:
            assert base is not None, "API file systems need a root to mount them in"
            opts += ["--proc", os.fspath(base / "proc"),
                     "--ro-bind", "/sys", os.fspath(base / "sys"),
                     "--dev-bind", "/dev", os.fspath(base / "dev")]
        for m in self.mounts:
            if m.overlay:
                raise MkosiError(f"an overlay over {m.source} needs systemd-nspawn, not {self.mode.value} mode")
            opts += ["--ro-bind" if m.readonly else "--bind", os.fspath(m.source), m.target]
        if not self.network:
            opts.append("--unshare-net")
        if self.private_pids:
            opts.append("--unshare-pid")
        if self.chdir is not None:
            opts += ["--chdir", self.chdir]
        elif self.mode == Mode.chroot:
            opts += ["--chdir", "/"]
        opts.append("--die-with-parent")
        return opts

    def _nspawn_argv(self, command: list[str], executable: str) -> list[str]:
        assert self.root is not None
        c = self.container
        return nspawn_command(
            self.root, command, keep_unit=c.keep_unit, network=self.network,
            env={name: None for name, _ in self.env},
            binds=[(m.source, m.target) for m in self.mounts if not m.readonly and not m.overlay],
            ro_binds=[(m.source, m.target) for m in self.mounts if m.readonly and not m.overlay],
            overlays=[(m.source, m.upper, m.target) for m in self.mounts if m.overlay],
            chdir=self.chdir, ephemeral=c.ephemeral, image=c.image, boot=c.boot, extra=c.extra,
            machine=c.machine, executable=executable, register=c.register)

    def mount_points(self) -> list[Path]:
        """Host directories to create before the command starts: the API file system mount points and
        the targets of directory binds (made by us, so that they are plain 0755 root directories)."""
        if self.mode == Mode.nspawn:
            return []
        points = []
        if self.api_filesystems:
            assert self.root is not None, "API file systems need a root to mount them in"
            points += [self.root / "proc", self.root / "sys", self.root / "dev"]
        for m in self.mounts:
            if not m.source.is_dir():
                continue
            if self.mode == Mode.chroot:
                assert self.root is not None
                points.append(self.root / m.target.lstrip("/"))
            else:
                points.append(Path(m.target))
        return points


# -----------------------------------------------------------------------------------------------
# SandboxTrees=


@dataclasses.dataclass
class _Node:
    """One path of the merged sandbox trees: a file or symlink (source set), or a directory."""

    source: Optional[Path] = None
    children: dict[str, _Node] = dataclasses.field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.source is None


@dataclasses.dataclass
class Overlay:
    options: list[str]
    paths: set[str]

    def provides(self, path: str) -> bool:
        """Whether the trees supply `path` or something below it."""
        return any(p == path or p.startswith(path.rstrip("/") + "/") for p in self.paths)


def _tree_nodes(trees: Sequence[tuple[Path, str]]) -> _Node:
    root = _Node()
    for source, target in trees:
        if not source.is_dir():
            raise MkosiError(f"SandboxTrees=: {source} is not a directory")
        base = root
        for part in PurePosixPath(target).parts[1:]:
            base = base.children.setdefault(part, _Node())
            if not base.is_dir:
                base.source, base.children = None, {}
        _add_tree(base, source)
    return root


def _add_tree(node: _Node, directory: Path) -> None:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            child = node.children.get(entry.name)
            if child is None or not child.is_dir:
                child = node.children[entry.name] = _Node()
            _add_tree(child, path)
        else:
            node.children[entry.name] = _Node(source=path)   # a later tree's file replaces a directory too


def tree_overlay(trees: Sequence[tuple[Path, str]], tools: Optional[Path] = None) -> Overlay:
    """bubblewrap options that lay the trees over the visible file system (bubblewrap 0.8 has no
    overlayfs). A tree file whose place exists as a file is bound onto it; a directory the trees add to
    with new names becomes a tmpfs holding binds of the original entries and of the trees' ones. Nothing
    is ever created on the host: new mount points only appear inside such a tmpfs."""
    if not trees:
        return Overlay([], set())
    root = _tree_nodes(trees)
    options: list[str] = []
    paths: set[str] = set()

    def view(dest: PurePosixPath) -> Path:
        """Where `dest` of the sandbox comes from on the host (/usr: the tools tree's)."""
        if tools is not None and (dest == PurePosixPath("/usr") or PurePosixPath("/usr") in dest.parents):
            return tools / dest.relative_to("/")
        return Path(dest)

    def place(node: _Node, dest: PurePosixPath) -> None:
        """Put `node` at dest, whose parent is ours (a tmpfs): nothing of the host is there."""
        paths.add(os.fspath(dest))
        if node.source is None:
            options.extend(["--dir", os.fspath(dest)])
            for name, child in node.children.items():
                place(child, dest / name)
        elif node.source.is_symlink():
            options.extend(["--symlink", os.readlink(node.source), os.fspath(dest)])
        else:
            options.extend(["--ro-bind", os.fspath(node.source), os.fspath(dest)])

    def fits(node: _Node, host: Path) -> bool:
        if host.is_symlink():
            return False
        return host.is_dir() if node.is_dir else host.is_file()

    def merge(node: _Node, dest: PurePosixPath) -> None:
        host = view(dest)
        if all(fits(child, view(dest / name)) for name, child in node.children.items()):
            for name, child in node.children.items():
                if child.source is None:
                    merge(child, dest / name)
                else:
                    paths.add(os.fspath(dest / name))
                    options.extend(["--ro-bind", os.fspath(child.source), os.fspath(dest / name)])
            return
        if dest == PurePosixPath("/"):
            odd = sorted(f"/{n}" for n, c in node.children.items() if not fits(c, view(dest / n)))
            raise MkosiError(f"SandboxTrees=: {', '.join(odd)} must be directories that exist in the sandbox",
                             hint="put the files below an existing directory such as /etc or /usr")
        options.extend(["--tmpfs", os.fspath(dest)])
        for entry in sorted(os.scandir(host), key=lambda e: e.name) if host.is_dir() else []:
            if entry.name in node.children:
                continue
            if entry.is_symlink():
                options.extend(["--symlink", os.readlink(entry.path), os.fspath(dest / entry.name)])
            else:
                options.extend(["--dev-bind", entry.path, os.fspath(dest / entry.name)])
        for name, child in node.children.items():
            if child.is_dir and fits(child, view(dest / name)):
                options.extend(["--dev-bind", os.fspath(view(dest / name)), os.fspath(dest / name)])
                merge(child, dest / name)
            else:
                place(child, dest / name)

    merge(root, PurePosixPath("/"))
    return Overlay(options, paths)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_in_root(root: Path, name: str) -> Optional[str]:
    """`name` among the binary directories of another root, as a path inside that root. Symlinks
    (merged /usr, alternatives) are followed inside the root, as a chroot would, never out to the host."""
    for d in ROOT_BIN_DIRS:
        resolved = resolve_in_root(root, f"{d}/{name}")
        if resolved is not None and _executable(resolved):
            return f"/{d}/{name}"
    return None


def resolve_in_root(root: Path, path: str) -> Optional[Path]:
    """The host path of `path` inside `root`, with every symlink taken relative to root."""
    parts = [p for p in PurePosixPath(path).parts if p != "/"]
    current = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = current.parent
            continue
        host = root / (current / part).relative_to("/")
        if host.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(os.readlink(host))
            if target.is_absolute():
                current = PurePosixPath("/")
            parts = [p for p in target.parts if p != "/"] + parts
            continue
        current = current / part
    return root / current.relative_to("/")


# -----------------------------------------------------------------------------------------------
# systemd-nspawn


def host_has_systemd() -> bool:
    """Whether systemd runs as PID 1 with a system bus, so nspawn can register and create scopes."""
    return Path("/run/systemd/system").is_dir() and Path("/run/dbus/system_bus_socket").exists()


def nspawn_executable() -> str:
    return os.environ.get("MKOSI_NSPAWN_EXECUTABLE") or "systemd-nspawn"


def nspawn_base_args(keep_unit: Optional[bool], executable: Optional[str] = None,
                     register: Optional[bool] = None) -> list[str]:
    """Flags every nspawn call needs on this host. Without systemd/bus: --register=no --keep-unit.
    `register` (Register=) says explicitly whether nspawn registers with machined; it is never yes
    where the host has no systemd with a system bus."""
    argv = [executable or nspawn_executable()]
    systemd = host_has_systemd()
    if register is not None:
        argv.append(f"--register={'yes' if register and systemd else 'no'}")
    elif not systemd:
        argv.append("--register=no")
    if keep_unit or (keep_unit is None and not systemd):
        argv.append("--keep-unit")
    return argv


def valid_machine_name(name: Optional[str]) -> Optional[str]:
    """nspawn takes host-name-like machine names only (letters, digits, '-' and '.', at most 64
    characters): image_1.2 becomes image-1.2. None when nothing usable is left."""
    if not name:
        return None
    cleaned = re.sub(r"[^A-Za-z0-9.-]+", "-", name)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:64].strip(".-")
    return cleaned or None


def nspawn_command(
    root: Path,
    cmd: Sequence[PathString],
    *,
    keep_unit: Optional[bool] = None,
    network: bool = False,
    env: Optional[Mapping[str, Optional[str]]] = None,
    binds: Sequence[tuple[PathString, str]] = (),
    ro_binds: Sequence[tuple[PathString, str]] = (),
    overlays: Sequence[tuple[PathString, Optional[PathString], str]] = (),
    chdir: Optional[str] = None,
    ephemeral: bool = False,
    image: bool = False,
    boot: bool = False,
    extra: Sequence[str] = (),
    machine: Optional[str] = None,
    executable: Optional[str] = None,
    register: Optional[bool] = None,
) -> list[str]:
    """The systemd-nspawn argument list. An env value of None passes the name only: nspawn then takes
    the value from its own environment (how Sandbox keeps values out of command lines)."""
    argv = nspawn_base_args(keep_unit, executable, register)
    argv += ["--quiet", f"--machine={valid_machine_name(machine) or 'mkosi-' + uuid.uuid4().hex[:12]}"]
    argv += [f"--image={root}"] if image else [f"--directory={root}"]
    if not boot:
        argv.append("--as-pid2")
    if not network:
        argv.append("--private-network")
    if ephemeral:
        argv.append("--ephemeral")
    for name, value in (env or {}).items():
        argv.append(f"--setenv={name}" if value is None else f"--setenv={name}={value}")
    for src, dst in binds:
        argv.append(f"--bind={os.fspath(src)}:{dst}")
    for src, dst in ro_binds:
        argv.append(f"--bind-ro={os.fspath(src)}:{dst}")
    for lower, upper, dst in overlays:
        # An empty upper: nspawn writes to a temporary directory it removes when the container ends.
        parts = [os.fspath(lower), "" if upper is None else os.fspath(upper), dst]
        argv.append("--overlay=" + ":".join(p.replace("\\", "\\\\").replace(":", "\\:") for p in parts))
    if chdir:
        argv.append(f"--chdir={chdir}")
    argv += list(extra)
    if boot:
        argv.append("--boot")
    if cmd:
        argv += ["--", *[os.fspath(c) for c in cmd]]
    return argv
