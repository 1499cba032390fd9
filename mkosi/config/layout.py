"""Which configuration files are read, in which order, and which of them apply.

The modern layout: mkosi.local.conf and mkosi.local/ (whose settings win over the files read after them),
the command line's --include, mkosi.conf (or mkosi/mkosi.conf) with its mkosi.conf.d/ of files and
directories (a directory there is read like a top-level one), Include= wherever it stands, the selected
profiles from mkosi.profiles/, and the sub-images of mkosi.images/. The classic layout: mkosi.default,
mkosi.default.d/ and the per-distribution drop-in directories. Every file's [Match], [TriggerMatch],
[Assert] and [TriggerAssert] sections are evaluated when it is read, against the values the image would
be built with at that point, defaults included; the command line is taken into account.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import graphlib
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.config.enums import ConfigLanguage, Distribution
from mkosi.config.finalize import detect_files, resolve_one
from mkosi.config.ini import Assignment, Condition, Origin, ParsedFile, check_settings_file, lookup_key, parse_ini
from mkosi.config.parse import CommandLine, Merged, merge
from mkosi.config.settings import SETTINGS
from mkosi.config.types import Kind, MatchKind, Scope, Setting, check_path_length, excerpt, try_bool
from mkosi.config.version import LANGUAGE_VERSION, compare_versions, version_condition_holds
from mkosi.distributions import facts
from mkosi.errors import ConfigError
from mkosi.formats import FORMATS

# The configurations shipped with mkosi that Include= names: mkosi-vm, mkosi-initrd, mkosi-tools, mkosi-addon.
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "resources" / "builtin"

SPECIFIERS: dict[str, Setting] = {s.specifier: s for s in SETTINGS if s.specifier}
UEFI_ARCHITECTURES = ("x86_64", "aarch64", "arm", "x86", "riscv64", "loongarch64")


@dataclasses.dataclass
class ImageLayout:
    """What was read for one image: its assignments in order of precedence, and its files."""

    name: str
    directory: Path          # where its mkosi.* files and directories are looked up
    assignments: list[Assignment]
    files: list[Path]
    language: ConfigLanguage  # the language its files are read in (tree_language())


def _dropins(directory: Path, only_conf: bool) -> list[Path]:
    if not directory.is_dir():
        return []
    entries = sorted(p for p in directory.iterdir() if not p.name.startswith(".") and not p.name.endswith("~"))
    for p in entries:
        if p.is_symlink() and not p.exists():  # dangling or looping: an error, not silently skipped
            check_settings_file(p)
    return [p for p in entries if p.is_dir() or (p.is_file() and (not only_conf or p.suffix == ".conf"))]


def _is_distribution_dir(path: Path) -> bool:
    """Classic per-distribution drop-in directories: mkosi.default.d/fedora/ applies to Fedora builds."""
    return path.is_dir() and path.name in Distribution.values() and not (path / "mkosi.conf").exists()


def host_systemd_version() -> Optional[str]:
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    m = re.match(r"systemd (\S+)", out)
    return m.group(1) if m else None


class Loader:
    """Reads the files of one image in order; conditions see what was read before, and the command line."""

    def __init__(self, cli: CommandLine, invoked: Path, top: Path, image: str = "main",
                 inherited: Optional[list[Assignment]] = None,
                 language: ConfigLanguage = ConfigLanguage.classic) -> None:
        self.cli = cli
        self.language = language        # the defaults [Match] compares with follow it (WithDocs=)
        self.invoked = invoked          # %D
        self.top = top                  # where the image's mkosi.* files are looked up
        self.directory = top            # %P: the directory whose mkosi.conf is being read
        self.image = image              # %I
        self.assignments: list[Assignment] = list(inherited or [])
        self.local: list[Assignment] = []
        self.files: list[Path] = []
        self.included: set[Path] = set()
        self._found = detect_files(top)
        self._merged: Optional[tuple[int, Merged]] = None
        self._sink = self.assignments

    # ---- the current state ----

    def ordered(self) -> list[Assignment]:
        """Everything read so far, in order of precedence: files, then mkosi.local, then the command line."""
        return [*self.assignments, *self.local, *self.cli.assignments]

    def merged(self) -> Merged:
        ordered = self.ordered()
        if self._merged is None or self._merged[0] != len(ordered):
            self._merged = (len(ordered), merge(ordered, self.language))
        return self._merged[1]

    def current(self, dest: str) -> Any:
        return resolve_one(self.merged(), dest, self.top, self._found, self.language)

    # ---- reading ----

    def add(self, a: Assignment) -> None:
        if "%" in a.raw and a.origin.path is not None:
            a = dataclasses.replace(a, raw=self.expand(a.raw, a.origin))
        if a.setting.dest == "include":
            self.include(a)
            return
        self._sink.append(a)

    def parse_file(self, path: Path, base: Optional[Path] = None) -> bool:
        """Read one file if its conditions hold; returns whether it applied."""
        parsed = parse_ini(_shown(path), base=base or self.directory)
        if not self.conditions_hold(parsed):
            log.debug(f"{path}: its [Match] conditions do not hold; skipped")
            return False
        self.files.append(path)
        for a in parsed.assignments:
            self.add(a)
        return True

    def parse_directory(self, directory: Path, with_conf: bool = True) -> bool:
        """mkosi.conf, then mkosi.conf.d/ (files and directories); a [Match] of mkosi.conf applies to the
        whole directory. Returns False when that [Match] does not hold (nothing of the directory is read)."""
        saved = self.directory
        self.directory = directory
        try:
            conf = directory / "mkosi.conf"
            if with_conf and (conf.exists() or conf.is_symlink()):
                _check_regular_file(conf)
                if not self.parse_file(conf, directory):
                    return False
            for entry in _dropins(directory / "mkosi.conf.d", only_conf=True):
                if entry.is_dir():
                    if not _is_distribution_dir(entry) and entry.name not in ("mkosi.images",):
                        self.parse_directory(entry)
                else:
                    self.parse_file(entry, directory)
        finally:
            self.directory = saved
        return True

    def include(self, a: Assignment) -> None:
        for item in a.raw.split():
            if item.startswith(("mkosi-", "contrib-")) and "/" not in item:
                path = BUILTIN_DIR / item
                if not path.exists():
                    raise ConfigError(f"there is no built-in configuration '{item}'", path=a.origin.path,
                                      line=a.origin.line, setting="Include",
                                      hint="built-in: " + ", ".join(sorted(p.name for p in BUILTIN_DIR.iterdir())))
            else:
                try:
                    path = check_path_length(Path(item).expanduser())
                except (ValueError, RuntimeError) as e:
                    why = str(e) if isinstance(e, ValueError) else f"cannot expand '{excerpt(item)}': no such user"
                    raise ConfigError(why, path=a.origin.path or "command line", line=a.origin.line, setting="Include")
                if not path.is_absolute():
                    path = (a.base or self.directory) / path
            path = path.resolve()
            if path in self.included:
                continue
            if not path.exists():
                raise ConfigError(f"'{item}' does not exist", path=a.origin.path or "command line",
                                  line=a.origin.line, setting="Include")
            self.included.add(path)
            if path.is_dir():
                self.parse_directory(path)
            else:
                self.parse_file(path, path.parent)

    def parse_local(self) -> None:
        """mkosi.local.conf and mkosi.local/: local settings that win over the project's files."""
        self._sink = self.local
        try:
            local = self.top / "mkosi.local.conf"
            if local.is_file():
                self.parse_file(local, self.top)
            if (self.top / "mkosi.local").is_dir():
                self.parse_directory(self.top / "mkosi.local")
        finally:
            self._sink = self.assignments

    def parse_profiles(self, quiet: bool = False) -> None:
        """The selected profiles from the image's mkosi.profiles/. A profile without a file there is
        not an error (as in v26): it may only select `[Match] Profiles=` sections or sub-images. The
        main image says so in a warning (a misspelt name would otherwise go unnoticed); a sub-image,
        which reads its own mkosi.profiles/, skips the main image's profiles it does not have quietly."""
        for name in self.current("profiles"):
            conf, directory = self.top / "mkosi.profiles" / f"{name}.conf", self.top / "mkosi.profiles" / name
            if directory.is_dir():
                self.parse_directory(directory)
            elif conf.is_file():
                self.parse_file(conf, self.top)
            elif not quiet:
                origin = self.merged().origins.get("profiles", Origin(None, None))
                where = origin.path or "command line"
                if origin.path and origin.line:
                    where = f"{origin.path}:{origin.line}"
                log.warn(f"{where}: profile '{excerpt(name)}' has no mkosi.profiles/{excerpt(name)}.conf or "
                         f"mkosi.profiles/{excerpt(name)}/; it only selects [Match] Profiles= conditions")

    def parse_classic_dropins(self) -> None:
        """mkosi.default.d/ (every file), then the drop-ins named after the distribution being built."""
        for entry in _dropins(self.top / "mkosi.default.d", only_conf=False):
            if entry.is_file():
                self.parse_file(entry, self.top)
        dist = self.current("distribution")
        for parent in ("mkosi.default.d", "mkosi.conf.d"):
            for entry in _dropins(self.top / parent / dist.value, only_conf=False):
                if entry.is_file() and _is_distribution_dir(entry.parent):
                    self.parse_file(entry, self.top)

    # ---- conditions ----

    def conditions_hold(self, parsed: ParsedFile) -> bool:
        groups: dict[tuple[str, int], list[Condition]] = {}
        for c in parsed.conditions:
            groups.setdefault((c.kind, c.group), []).append(c)

        def kind_holds(plain: str, trigger: str) -> bool:
            plains = [self.section_holds(cs) for (k, _), cs in groups.items() if k == plain]
            triggers = [self.section_holds(cs) for (k, _), cs in groups.items() if k == trigger]
            return all(plains) and (not triggers or any(triggers))

        if not kind_holds("Assert", "TriggerAssert"):
            raise ConfigError("its [Assert] conditions do not hold", path=str(parsed.path))
        return kind_holds("Match", "TriggerMatch")

    def section_holds(self, conditions: list[Condition]) -> bool:
        plain = [c for c in conditions if not c.raw.startswith("|")]
        triggering = [c for c in conditions if c.raw.startswith("|")]
        return all(self.condition_holds(c, c.raw) for c in plain) and \
            (not triggering or any(self.condition_holds(c, c.raw[1:]) for c in triggering))

    def condition_holds(self, c: Condition, raw: str) -> bool:
        """Space-separated items: any positive item holds, and no item prefixed with '!' does."""
        items = raw.split() or [""]
        wanted = [i for i in items if not i.startswith("!")]
        unwanted = [i[1:] for i in items if i.startswith("!")]
        if any(self.item_holds(c, i) for i in unwanted):
            return False
        return not wanted or any(self.item_holds(c, i) for i in wanted)

    def item_holds(self, c: Condition, item: str) -> bool:
        special = SPECIAL_TESTS.get(c.key)
        if special is not None:
            return special(self, c, item)
        assert c.setting is not None
        return setting_condition_holds(c, c.setting, item, self.current(c.setting.dest))

    # ---- specifiers ----

    def expand(self, raw: str, origin: Origin) -> str:
        def value(letter: str) -> Optional[str]:
            table: dict[str, Callable[[], Any]] = {
                "%": lambda: "%",
                "C": lambda: str(Path(origin.path).absolute().parent) if origin.path else str(self.directory),
                "P": lambda: str(self.directory),
                "D": lambda: str(self.invoked),
                "I": lambda: self.image,
                "F": lambda: facts.default_filesystem(self.current("distribution")),
            }
            fn = table.get(letter)
            if fn is not None:
                return str(fn())
            s = SPECIFIERS.get(letter)
            return None if s is None else _plain(self.current(s.dest))

        def sub(m: re.Match[str]) -> str:
            v = value(m.group(1))
            return m.group(0) if v is None else v  # an unknown letter stays as written (URL escapes)

        return re.sub(r"%(.)", sub, raw)


def _shown(path: Path) -> Path:
    """Files below the directory mkosi runs in are named relative to it, in messages too."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _plain(value: Any) -> str:
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def _check_regular_file(path: Path) -> None:
    check_settings_file(path)


def _path_exists(loader: Loader, c: Condition, item: str) -> bool:
    base = Path(c.origin.path).absolute().parent if c.origin.path else loader.directory
    try:
        return check_path_length(base / item).exists()
    except ValueError as e:
        raise ConfigError(str(e), path=c.origin.path or "command line", line=c.origin.line, setting=c.key)
    except OSError:
        return False  # below a directory mkosi cannot search: not there as far as it can tell


def _systemd_version(loader: Loader, c: Condition, item: str) -> bool:
    version = host_systemd_version()
    return version is not None and version_condition_holds(item, version)


def _host_architecture(loader: Loader, c: Condition, item: str) -> bool:
    return _architecture_matches(item, facts.host_architecture())


def _image(loader: Loader, c: Condition, item: str) -> bool:
    return item == loader.image


def _build_source_targets(loader: Loader) -> list[str]:
    """The targets of BuildSources= as assigned so far (SRC:TARGET, or SRC alone); an empty assignment
    clears the ones before it."""
    targets: list[str] = []
    for a in loader.ordered():
        if a.setting.key != "BuildSources":
            continue
        if not a.raw.strip():
            targets = []
        for pair in re.split(r"[,\s]+", a.raw.strip()):
            if pair:
                source, _, target = pair.partition(":")
                targets.append(target or source)
    return targets


def _normalized_target(path: str) -> str:
    return str(Path("/") / path.strip().strip("/")) if path.strip() else ""


def _build_sources(loader: Loader, c: Condition, item: str) -> bool:
    wanted = _normalized_target(item)
    return any(_normalized_target(t) == wanted for t in _build_source_targets(loader))


def _known_value(loader: Loader, key: str) -> Any:
    """The current value of the setting named `key`, or None when this mkosi has no such setting."""
    found = lookup_key(key)
    return None if found is None else loader.current(found[0].dest)


def fallback_tools_tree_distribution() -> Optional[Distribution]:
    """The tools tree distribution when none is set: the host's, with Ubuntu's being Debian and the RHEL family's
    Fedora."""
    host = facts.host_distribution()[0]
    if host == Distribution.ubuntu:
        return Distribution.debian
    if host is not None and host.value.split("_")[0] in ("rhel", "rhel-ubi", "centos", "alma", "rocky"):
        return Distribution.fedora
    return host


def _tools_tree_distribution(loader: Loader) -> Optional[str]:
    value = _known_value(loader, "ToolsTreeDistribution")
    if value is None:
        value = fallback_tools_tree_distribution()
    return None if value is None else _plain(value)


def _tools_tree_distribution_matches(loader: Loader, c: Condition, item: str) -> bool:
    return _tools_tree_distribution(loader) == item


def _tools_tree_release_matches(loader: Loader, c: Condition, item: str) -> bool:
    value = _known_value(loader, "ToolsTreeRelease")
    if value is None:
        dist = _tools_tree_distribution(loader)
        value = facts.default_release(Distribution(dist)) if dist in Distribution.values() else None
    return value is not None and _plain(value) == item


SPECIAL_TESTS: dict[str, Callable[[Loader, Condition, str], bool]] = {
    "PathExists": _path_exists, "SystemdVersion": _systemd_version, "HostArchitecture": _host_architecture,
    "Image": _image, "BuildSources": _build_sources, "ToolsTreeDistribution": _tools_tree_distribution_matches,
    "ToolsTreeRelease": _tools_tree_release_matches,
}


def _architecture_matches(item: str, value: str) -> bool:
    if item == "uefi":
        return value in UEFI_ARCHITECTURES
    return facts.normalize_architecture(item) == value


def _same_format(name: str) -> str:
    """A format built as another one stands for that one."""
    row = FORMATS.get(name)
    return row.same_as if row is not None and row.same_as is not None else name


def _formats_match(wanted: str, value: str) -> bool:
    """A Format= condition: the same format, or one the registry row says the condition also holds for
    (Format=disk and gpt_ext4, the default format, which stands for disk images)."""
    a, b = _same_format(wanted), _same_format(value)
    return a == b or any(y in FORMATS[x].matches for x, y in ((a, b), (b, a)) if x in FORMATS)


def setting_condition_holds(c: Condition, s: Setting, item: str, value: Any) -> bool:
    """One item of a condition on a setting, against the value the image would be built with."""
    if s.dest == "architecture":
        return _architecture_matches(item, str(value))
    if s.dest == "format":
        # Format=disk, the modern default, and gpt_ext4, ours: a condition on either name holds for both.
        try:
            wanted_format = _plain(s.parse(item))
        except ValueError:
            log.warn(f"{c.origin}: [Match] {c.key}={item} names no known value; the condition never holds")
            return False
        return _formats_match(wanted_format, _plain(value))
    if s.dest == "environment":
        return any(e == item or (("=" not in item) and e.split("=", 1)[0] == item) for e in value)
    if value is None:
        return False
    if s.kind == Kind.BOOL:
        if item == "auto":
            return True
        wanted = try_bool(item)
        if wanted is None:
            raise ConfigError(f"expected a boolean or 'auto', got '{excerpt(item)}'", path=c.origin.path,
                              line=c.origin.line, setting=c.key)
        return wanted == bool(value)
    if s.match == MatchKind.version:
        return version_condition_holds(item, str(value))
    values = [_plain(v) for v in value] if isinstance(value, list) else [_plain(value)]
    if s.match == MatchKind.glob:
        return any(fnmatch.fnmatchcase(v, item) for v in values)
    try:
        parsed = s.parse(item)
        wanted_text = _plain(parsed[0] if isinstance(parsed, list) and parsed else parsed)
    except ValueError:
        log.warn(f"{c.origin}: [Match] {c.key}={item} names no known value; the condition never holds")
        return False
    return wanted_text in values


# ---- images ----

def check_minimum_version(assignments: list[Assignment]) -> None:
    for a in assignments:
        if a.setting.dest != "minimum_version" or not a.raw.strip():
            continue
        raw = a.raw.strip()
        if raw.startswith("commit:"):
            _check_commit(a, raw.removeprefix("commit:"))
        elif compare_versions(LANGUAGE_VERSION, raw) < 0:
            raise ConfigError(f"this configuration needs mkosi {raw} or newer; this mkosi implements the "
                              f"configuration language of version {LANGUAGE_VERSION}", path=a.origin.path or
                              "command line", line=a.origin.line, setting="MinimumVersion")


def _check_commit(a: Assignment, commit: str) -> None:
    checkout = Path(__file__).resolve().parent.parent.parent
    path = a.origin.path or "command line"
    if not (checkout / ".git").exists():
        raise ConfigError(f"needs mkosi run from a git checkout containing commit {commit}", path=path,
                          line=a.origin.line, setting="MinimumVersion")
    proc = subprocess.run(["git", "-C", str(checkout), "merge-base", "--is-ancestor", commit, "HEAD"],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"needs a mkosi checkout that contains commit {commit}", path=path, line=a.origin.line,
                          setting="MinimumVersion")


def main_config_files(top: Path, default_path: Optional[Path]) -> list[Path]:
    """The top-level files: --default=, else mkosi.default and mkosi.conf (or mkosi/mkosi.conf)."""
    if default_path is not None:
        if not (default_path.exists() or default_path.is_symlink()):
            raise ConfigError("settings file does not exist", path=str(default_path), setting="--default")
        _check_regular_file(default_path)
        return [default_path]
    files = []
    for name in ("mkosi.default",):
        p = top / name
        if p.exists() or p.is_symlink():
            _check_regular_file(p)
            files.append(p)
    return files


def config_directory(top: Path) -> Path:
    """Where mkosi.conf lives: the top directory, or its mkosi/ subdirectory when only that has one."""
    if not (top / "mkosi.conf").exists() and not (top / "mkosi.tools.conf").exists() and \
            (top / "mkosi" / "mkosi.conf").exists():
        return top / "mkosi"
    return top


def tree_language(directory: Path, default_path: Optional[Path]) -> ConfigLanguage:
    """The language of the tree whose top-level files are in `directory` (config_directory()): classic with
    --default=FILE or mkosi.default (also when mkosi.conf is there too: mkosi.default is read first), modern
    with mkosi.conf, mkosi.conf.d/ or mkosi.images/ and no mkosi.default. A tree without any of them is
    configured on the command line alone and keeps the classic meanings (the man page's)."""
    if default_path is not None or (directory / "mkosi.default").exists():
        return ConfigLanguage.classic
    if (directory / "mkosi.conf").exists() or (directory / "mkosi.conf.d").is_dir() or \
            (directory / "mkosi.images").is_dir():
        return ConfigLanguage.modern
    return ConfigLanguage.classic


def load_image(cli: CommandLine, invoked: Path, top: Path, default_path: Optional[Path]) -> ImageLayout:
    """The main image: everything outside mkosi.images/."""
    directory = config_directory(top)
    language = tree_language(directory, default_path)
    loader = Loader(cli, invoked, directory, language=language)
    loader.parse_local()
    for a in cli.assignments:
        if a.setting.dest == "include":
            loader.include(a)
    classic = main_config_files(directory, default_path)
    if classic and (directory / "mkosi.conf").is_file() and default_path is None:
        log.warn("both mkosi.default and mkosi.conf exist; reading mkosi.default, then mkosi.conf")
    for f in classic:
        loader.parse_file(f, directory)
    # With --default=FILE that file replaces mkosi.conf; the drop-ins are read all the same.
    loader.parse_directory(directory, with_conf=default_path is None)
    loader.parse_classic_dropins()
    loader.parse_profiles()
    ordered = loader.ordered()
    check_minimum_version(ordered)
    return ImageLayout("main", directory, [a for a in ordered if a.setting.dest != "include"], loader.files,
                       language)


def load_subimages(cli: CommandLine, invoked: Path, main: ImageLayout) -> list[ImageLayout]:
    images_dir = main.directory / "mkosi.images"
    if not images_dir.is_dir():
        return []
    passed = [a for a in main.assignments if a.setting.scope in (Scope.universal, Scope.inherited)]
    universal = [a for a in passed if a.setting.scope == Scope.universal]
    result = []
    for entry in _dropins(images_dir, only_conf=True):
        name = entry.name.removesuffix(".conf") if entry.is_file() else entry.name
        top = entry if entry.is_dir() else images_dir
        bare = CommandLine([], cli.verb, cli.cmdline)
        loader = Loader(bare, invoked, top, image=name, inherited=passed, language=ConfigLanguage.modern)
        # A sub-image whose mkosi.conf (or NAME.conf) does not match is not an image of this build.
        applies = loader.parse_directory(entry) if entry.is_dir() else loader.parse_file(entry, images_dir)
        if not applies:
            log.debug(f"{entry}: its [Match] conditions do not hold; the image '{name}' is not built")
            continue
        if entry.is_dir():
            loader.parse_profiles(quiet=True)
        own = loader.ordered()[len(passed):]
        for a in own:
            if a.setting.scope == Scope.universal:
                log.warn(f"{a.origin}: {a.setting.key}= is a universal setting: only the main image sets it; ignored")
        own = [a for a in own if a.setting.scope != Scope.universal]
        # mkosi.images/ is the modern language's: its images speak it, whatever the main image's files are.
        result.append(ImageLayout(name, top, [*passed, *own, *universal], loader.files, ConfigLanguage.modern))
    return result


def order_images(names: list[str], dependencies: dict[str, list[str]], wanted: list[str]) -> list[str]:
    """The sub-images to build, each after the ones it depends on. `wanted` is the main image's
    Dependencies= (all images when empty)."""
    known = set(names)
    for image, deps in dependencies.items():
        for d in deps:
            if d not in known:
                raise ConfigError(f"image '{image}' depends on '{d}', which is not in mkosi.images/",
                                  setting="Dependencies")
    selected: list[str] = []
    todo = list(wanted or names)
    while todo:
        n = todo.pop(0)
        if n not in known:
            raise ConfigError(f"the main image depends on '{n}', which is not in mkosi.images/",
                              setting="Dependencies")
        if n not in selected:
            selected.append(n)
            todo += dependencies.get(n, [])
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for n in sorted(selected):
        sorter.add(n, *dependencies.get(n, []))
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise ConfigError(f"the images depend on each other in a cycle: {cycle}", setting="Dependencies")

