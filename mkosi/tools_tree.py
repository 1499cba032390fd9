"""The default tools tree (ToolsTree=default): an image of the programs mkosi runs, built with mkosi's own
pipeline from the ToolsTree*= settings, cached under the cache directory keyed on its inputs, and then
used as the tools tree of every command of the verb.

The tree's configuration is an image of its own: the built-in `mkosi-tools` configuration (its
`mkosi.profiles/` hold the packages of the profiles ToolsTreeProfiles= selects), then `mkosi.tools.conf`
(a file or a directory next to the image's mkosi.conf), then the ToolsTree*= settings, which win. A few
settings of the main image apply to it as well (the "multiversal" ones: the package cache, the
workspace, repository key checks, the proxy, SourceDateEpoch=).

A cached tree lives at CACHE/mkosi-tools-KEY/ with CACHE/mkosi-tools-KEY.key next to it, KEY being a
digest of everything that shapes the tree: the tools image's settings, the contents of its settings
files, of ToolsTreeSandboxTrees= and ToolsTreePackageDirectories=, and mkosi's version. A tree is built
into a temporary directory, renamed into place, and its key is written last, so an interrupted build
never leaves a tree that looks complete. Different inputs get different trees; a cache directory keeps
the KEEP_TREES most recently used ones (a tree a running mkosi holds is never removed); `clean -f` removes
the one the configuration uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from mkosi import __version__, log
from mkosi.build import build_command
from mkosi.cache import digest_path, settings_inputs, write_private
from mkosi.config.enums import Distribution
from mkosi.config.finalize import finalize
from mkosi.config.layout import BUILTIN_DIR, fallback_tools_tree_distribution, load_image
from mkosi.config.parse import merge, parse_command_line
from mkosi.config.settings import Args, Config, by_dest, default_value, plain_value
from mkosi.distributions import facts
from mkosi.errors import MkosiError
from mkosi.run import using_sandbox
from mkosi.sandbox import Sandbox

# The built-in configuration of the default tools tree (also what Include=mkosi-tools reads).
TOOLS_CONFIG_DIR = BUILTIN_DIR / "mkosi-tools"
TREE_PREFIX = "mkosi-tools-"
KEY_LENGTH = 16
# How many default tools trees a cache directory keeps: building another removes the least recently used
# beyond this number (never one that a running mkosi uses).
KEEP_TREES = 3
# Shared locks on the key files of the trees this process uses, held until it exits.
_in_use: list[int] = []

# Settings of the main image that apply to the default tools tree too (the manual's "multiversal" ones).
MULTIVERSAL = ("repository_key_check", "repository_key_fetch", "source_date_epoch", "cache_only",
               "workspace_dir", "cache_path", "build_sources_ephemeral", "proxy_url", "proxy_exclude",
               "proxy_peer_certificate", "proxy_client_certificate", "proxy_client_key")
# Where things are kept or built, not what the tree holds: left out of its key.
NOT_IN_KEY = ("output", "output_dir", "workspace_dir", "cache_path", "cache_dir", "build_sources")


@dataclasses.dataclass(frozen=True)
class ToolsTree:
    """Which tools tree a configuration uses, and why."""

    kind: str                    # "default", "path", "mkosi.tools" or "none"
    path: Optional[Path] = None
    key: Optional[str] = None
    cached: bool = False
    distribution: str = ""
    release: str = ""

    def describe(self) -> str:
        if self.kind == "none":
            return "none: the host's programs are used"
        if self.kind == "path":
            return f"{self.path} (ToolsTree= as given)"
        if self.kind == "mkosi.tools":
            return f"{self.path} (the mkosi.tools/ directory of the configuration)"
        what = f"default ({self.distribution} {self.release})"
        if self.cached:
            return f"{what}, cached at {self.path}, key {self.key}"
        return f"{what}, not built yet: will be built at {self.path}, key {self.key}"


def tools_tree_distribution(config: Config) -> str:
    dist = config.tools_tree_distribution or fallback_tools_tree_distribution()
    if dist is None:
        raise MkosiError("ToolsTree=default: the host's distribution has no default tools tree",
                         hint="set ToolsTreeDistribution=")
    return dist.value


def tools_tree_release(config: Config) -> str:
    if config.tools_tree_release:
        return config.tools_tree_release
    release = facts.default_release(Distribution(tools_tree_distribution(config)))
    if not release:
        raise MkosiError(f"ToolsTree=default: no default release for {tools_tree_distribution(config)}",
                         hint="set ToolsTreeRelease=")
    return release


def config_directory(config: Config) -> Path:
    """The directory of the image's mkosi.conf (where mkosi.tools.conf is looked up)."""
    assert config.version_file is not None
    return config.version_file.parent


def tools_conf(config: Config) -> Optional[Path]:
    """mkosi.tools.conf next to the configuration: a file or a directory of settings for the tools tree."""
    path = config_directory(config) / "mkosi.tools.conf"
    return path if path.is_file() or path.is_dir() else None


def cache_root(config: Config) -> Path:
    """Where default tools trees are kept: CacheDirectory=, else PackageCacheDirectory=, else the output
    directory."""
    for candidate in (config.cache_dir, config.cache_path):
        if candidate is not None:
            return Path(candidate)
    assert config.output is not None
    return config.output_dir or config.output.parent


def tools_tree_argv(config: Config) -> list[str]:
    """The command line of the tools image: the ToolsTree*= settings as the settings of an image."""
    profiles = [str(p) for p in config.tools_tree_profiles]
    argv = [f"--distribution={tools_tree_distribution(config)}", f"--release={tools_tree_release(config)}",
            f"--architecture={config.architecture}", f"--profile={','.join(profiles)}", "--format=directory"]
    if (conf := tools_conf(config)) is not None:
        argv.append(f"--include={conf.absolute()}")
    if config.tools_tree_mirror:
        argv.append(f"--mirror={config.tools_tree_mirror}")
    if config.tools_tree_repositories:
        argv.append(f"--repositories={','.join(config.tools_tree_repositories)}")
    if config.tools_tree_packages:
        argv.append(f"--package={','.join(config.tools_tree_packages)}")
    for tree in config.tools_tree_sandbox_trees:
        argv.append(f"--sandbox-tree={tree.source.absolute()}" + (f":{tree.target}" if tree.target else ""))
    for directory in config.tools_tree_package_directories:
        argv.append(f"--package-directory={Path(directory).absolute()}")
    return [*argv, "build"]


def tools_tree_config(config: Config) -> tuple[Args, Config]:
    """The tools image's Args and Config, derived from the ToolsTree*= settings of `config`."""
    cli = parse_command_line(tools_tree_argv(config))
    layout = load_image(cli, TOOLS_CONFIG_DIR, TOOLS_CONFIG_DIR, None)
    args, tools = finalize(cli, merge(layout.assignments, layout.language), layout.files, TOOLS_CONFIG_DIR, "tools",
                           layout.language)
    if not tools.packages:
        raise MkosiError(f"ToolsTree=default: mkosi has no tools tree packages for {tools.distribution.value}",
                         hint="list them with ToolsTreePackages= or in mkosi.tools.conf, or use ToolsTreeDistribution="
                         "debian, ubuntu or fedora")
    root = cache_root(config)
    shared = {name: getattr(config, name) for name in MULTIVERSAL}
    tmp = root / f".{TREE_PREFIX}build"
    return args, dataclasses.replace(tools, output_dir=tmp, output=tmp / "tree", output_link=None, **shared)


def tools_tree_key(tools: Config) -> str:
    """The digest of everything that shapes the tools tree."""
    # Only the settings that differ from their defaults: a setting added to mkosi, at its default,
    # does not invalidate the trees already built.
    inputs: dict[str, Any] = {
        dest: value for dest, value in settings_inputs(tools, only_cache=False).items()
        if dest not in NOT_IN_KEY and value != plain_value(default_value(by_dest(dest)))}
    inputs["mkosi"] = __version__
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode())
    for path in tools.config_files:
        digest_path(h, path)
    for tree in tools.sandbox_trees:
        digest_path(h, tree.source)
    for directory in tools.package_directories:
        digest_path(h, Path(directory))
    return h.hexdigest()[:KEY_LENGTH]


def tree_path(config: Config, key: str) -> Path:
    return cache_root(config) / f"{TREE_PREFIX}{key}"


def key_path(tree: Path) -> Path:
    return tree.with_name(tree.name + ".key")


def is_cached(tree: Path, key: str) -> bool:
    keyfile = key_path(tree)
    try:
        return tree.is_dir() and keyfile.read_text().strip() == key
    except OSError:
        return False


def resolve(config: Config) -> ToolsTree:
    """Which tools tree `config` uses, without building anything (what summary shows)."""
    tree = config.tools_tree
    if tree is None:
        return ToolsTree("none")
    if tree != "default":
        path = Path(tree)
        found = config.detected.get("mkosi.tools")
        return ToolsTree("mkosi.tools" if found is not None and found == path else "path", path)
    _, tools = tools_tree_config(config)
    key = tools_tree_key(tools)
    path = tree_path(config, key)
    return ToolsTree("default", path, key, is_cached(path, key), tools.distribution.value, tools.release)


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """One build of a tools tree at a time in a cache directory (several builds may share it)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{TREE_PREFIX}lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def build_tools_tree(config: Config) -> Path:
    """The default tools tree of `config`: reused when a tree with the same key is cached, built otherwise."""
    args, tools = tools_tree_config(config)
    key = tools_tree_key(tools)
    dest = tree_path(config, key)
    with locked(cache_root(config)):
        if is_cached(dest, key):
            log.info(f"Reusing the cached tools tree {dest} (key {key})")
            use(dest)
            return dest
        if os.getuid() != 0:
            raise MkosiError(f"the default tools tree ({tools.distribution.value} {tools.release}) is not built "
                             f"yet and building it needs root", hint="run the command once with sudo")
        profiles = ",".join(str(p) for p in config.tools_tree_profiles) or "none"
        assert tools.output_dir is not None and tools.output is not None
        with log.step(f"Building the default tools tree ({tools.distribution.value} {tools.release}, "
                      f"profiles: {profiles}) at {dest}, key {key}"):
            _remove(tools.output_dir)
            tools.output_dir.mkdir(parents=True)
            try:
                with using_sandbox(Sandbox.for_config(tools)):
                    build_command(args, tools)
                # Nothing named like a complete tree exists until the new one is in place; the key comes last.
                key_path(dest).unlink(missing_ok=True)
                _remove(dest)
                os.rename(tools.output, dest)
                write_private(key_path(dest), key + "\n")
            finally:
                _remove(tools.output_dir)
        use(dest)
        prune(cache_root(config))
    return dest


def use(tree: Path) -> None:
    """Mark the tree as used now (for prune()) and hold it: a shared lock on its key file while this process
    (and the build processes it forks) runs."""
    keyfile = key_path(tree)
    with contextlib.suppress(OSError):
        os.utime(keyfile)
    fd = os.open(keyfile, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _in_use.append(fd)


def prune(root: Path, keep: int = KEEP_TREES) -> None:
    """Remove the least recently used default tools trees beyond `keep`, unless a running mkosi holds one."""
    def last_use(keyfile: Path) -> float:
        try:
            return keyfile.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    keys = sorted(root.glob(f"{TREE_PREFIX}*.key"), key=last_use, reverse=True)
    for keyfile in keys[keep:]:
        tree = keyfile.with_name(keyfile.name.removesuffix(".key"))
        try:
            fd = os.open(keyfile, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue   # in use
            keyfile.unlink()
            if tree.exists():
                _remove(tree)
            log.info(f"Removed the least recently used tools tree {tree}")
        finally:
            os.close(fd)


def with_tools_tree(configs: list[Config]) -> list[Config]:
    """The configurations with ToolsTree=default replaced by the built (or cached) tree's path. The tools
    tree is universal: the main image (the last) decides it for all."""
    if not configs or configs[-1].tools_tree != "default":
        return configs
    path = str(build_tools_tree(configs[-1]))
    return [dataclasses.replace(c, tools_tree=path) if c.tools_tree == "default" else c for c in configs]


def remove_tools_tree(config: Config) -> None:
    """clean -f: remove the default tools tree this configuration uses."""
    if config.tools_tree != "default":
        return
    tree = resolve(config)
    assert tree.path is not None
    with locked(cache_root(config)):
        for p in (key_path(tree.path), tree.path):
            if p.exists():
                _remove(p)
                log.info(f"Removed {p}")
