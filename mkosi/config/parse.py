"""Command line + settings files -> one ordered list of assignments -> merged values.

The order of precedence: mkosi.default (or --default=), mkosi.conf, the drop-in directories
(mkosi.default.d/, mkosi.conf.d/), the per-distribution drop-in subdirectories, then the command line.
Scalars: the last assignment wins. Lists: items append; "!item" removes, "!*" clears. In the modern
language an empty assignment of a list (`Packages=`, `--package=`) also clears it, default included; in
the classic one (mkosi 14) it adds nothing and clears nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

from mkosi import __version__, log
from mkosi.config.enums import ConfigLanguage, Verb
from mkosi.config.ini import Assignment, Origin
from mkosi.config.settings import SECTIONS, SETTINGS, all_defaults, default_value
from mkosi.config.types import Kind, PathRule, Setting, check_text, excerpt, parse_path, short_message, try_bool
from mkosi.errors import ConfigError
from mkosi.formats import alias_of

CLI = Origin(None, None)


@dataclasses.dataclass
class CommandLine:
    assignments: list[Assignment]
    verb: Verb
    cmdline: list[str]
    help: bool = False
    version: bool = False


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(excerpt(message, 200), path="command line", hint="see 'mkosi --help'")


class _Record(argparse.Action):
    """Records each occurrence, in order, for the merge to apply after the settings files."""

    def __init__(self, *args: Any, setting: Setting, fixed: Optional[str] = None, **kwargs: Any) -> None:
        self.setting = setting
        self.fixed = fixed
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        raw = self.fixed if self.fixed is not None else str(values)
        s = self.setting
        # Other spellings of a flag (flag_aliases: classic and mkosi 14 names) are accepted silently; the
        # obsolete flags that stand for a value (--xz) say what to write instead.
        if option_string is not None and option_string in [f for f, _ in s.value_flags]:
            log.warn(f"command line: {option_string} is an older name, use {s.long_flag}={raw}")
        ns.assignments.append(Assignment(self.setting, raw, Origin(None, None)))


def _takes_value(s: Setting) -> bool:
    return s.kind != Kind.COUNT


VERB_HELP = {
    Verb.build: "build the image (the default verb); arguments after it go to the build script",
    Verb.clean: "remove build artifacts (-f: also incremental caches, -ff: also the package cache)",
    Verb.summary: "show the configuration (--json for machines); builds nothing",
    Verb.shell: "run a shell (or the given command) in the image with systemd-nspawn",
    Verb.boot: "boot the image with systemd-nspawn; arguments go to the kernel command line",
    Verb.qemu: "boot the image in a qemu virtual machine",
    Verb.vm: "same as qemu",
    Verb.ssh: "connect to a running container or VM built with Ssh=yes",
    Verb.serve: "serve the build's artifacts over HTTP (127.0.0.1:8081 unless $MKOSI_SERVE_ADDRESS/_PORT)",
    Verb.bump: "increase the last component of the image version in mkosi.version",
    Verb.genkey: "generate a Secure Boot key and certificate (mkosi.secure-boot.key/.crt)",
    Verb.help: "show this help",
    Verb.cat_config: "print every settings file that was loaded, with its path",
    Verb.burn: "write the image to a block device (mkosi burn /dev/sdX)",
    Verb.journalctl: "read the journal stored in the image (arguments go to journalctl)",
    Verb.coredumpctl: "list or show the core dumps stored in the image (arguments go to coredumpctl)",
    Verb.sandbox: "run a command with the tools and search paths mkosi builds with",
    Verb.box: "same as sandbox",
    Verb.dependencies: "list the host packages this configuration needs",
    Verb.init: "set up a new project: a starting mkosi.conf and .gitignore entries",
    Verb.documentation: "show the manual (with man when it is installed, else as Markdown)",
    Verb.completion: "print the shell completion script: mkosi completion bash|zsh|fish",
    Verb.latest_snapshot: "print the latest snapshot of the distribution's snapshot mirror",
    Verb.sysupdate: "run systemd-sysupdate with SysupdateDirectory= against the output directory",
}


def build_parser() -> argparse.ArgumentParser:
    width = max(len(v.value) for v in Verb)
    verbs = "\n".join(f"  {v.value:<{width}} {VERB_HELP[v]}" for v in Verb)
    parser = _ArgumentParser(
        prog="mkosi",
        usage="mkosi [options...] [verb] [arguments...]",
        description=f"Build bespoke OS images.\n\nverbs:\n{verbs}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    general = parser.add_argument_group("Command-line-only options")
    general.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    general.add_argument("--version", action="store_true", help="show the version and exit")
    groups = {sec: parser.add_argument_group(f"[{sec}] settings") for sec in SECTIONS
              if any(s.section == sec for s in SETTINGS)}

    for s in SETTINGS:
        group = groups[s.section] if s.section else general
        if s.kind == Kind.COUNT:
            group.add_argument(*s.flags, action=_Record, setting=s, fixed="+1", nargs=0, help=s.help)
        else:
            if s.kind == Kind.BOOL:
                metavar = "BOOL"
            else:
                metavar = s.metavar or ("|".join(s.choices) if s.choices else s.dest.upper())
            shown = f"{s.help} [{s.key}=]" if s.key else s.help
            optional: dict[str, Any] = {"nargs": "?", "const": s.const} if s.const is not None else {}
            action = group.add_argument(*s.flags, *s.flag_aliases, action=_Record, setting=s, metavar=metavar,
                                        help=shown.replace("%", "%%"), **optional)
            if s.choices:
                try:
                    # Optional: completion needs argcomplete; parsing does not.
                    from argcomplete.completers import ChoicesCompleter  # noqa: PLC0415

                    action.completer = ChoicesCompleter(list(s.choices))  # type: ignore[attr-defined,arg-type]
                except ImportError:
                    pass
        for neg in s.negative_flags:
            group.add_argument(neg, action=_Record, setting=s, fixed="no", nargs=0, help=f"same as {s.name}no")
        for flag, value in s.value_flags:
            group.add_argument(flag, action=_Record, setting=s, fixed=value, nargs=0, help=argparse.SUPPRESS)
    return parser


def build_completion_parser() -> argparse.ArgumentParser:
    """The parser shell completion (argcomplete) walks: the real options, plus the verb as a positional
    argument so that `mkosi su<Tab>` completes to `summary`, and the verb's own arguments after it."""
    parser = build_parser()
    verb = parser.add_argument("verb", nargs="?", choices=Verb.values(), metavar="VERB", help=argparse.SUPPRESS)
    # zsh shows the descriptions next to the verbs; bash uses the names only.
    verb.completer = lambda **_: {v.value: VERB_HELP[v] for v in Verb}  # type: ignore[attr-defined]
    try:
        # Optional, as above.
        from argcomplete.completers import SuppressCompleter  # noqa: PLC0415

        rest = parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        rest.completer = SuppressCompleter()  # type: ignore[attr-defined]
    except ImportError:
        pass
    return parser


def _option_index(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    index: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for flag in action.option_strings:
            index[flag] = action
    return index


def split_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], Optional[str], list[str]]:
    """Split argv into options, the verb and the verb's arguments.

    Flags that may stand without a value (--bootable, -b, --verity, ...) are rewritten into their
    '--flag=value' form so a following verb is never taken as their value.
    """
    index = _option_index(parser)
    verbs = set(Verb.values())
    opts: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest = argv[i + 1:]
            return opts, (rest[0] if rest else None), list(rest[1:])
        if not tok.startswith("-") or tok == "-":
            return opts, tok, list(argv[i + 1:])
        if tok.startswith("--"):
            name, eq, _ = tok.partition("=")
        else:
            name, eq = tok[:2], ("=" if len(tok) > 2 else "")
        action = index.get(name)
        s: Optional[Setting] = getattr(action, "setting", None)
        if action is None or s is None or action.nargs == 0 or eq:
            opts.append(tok)
            i += 1
            continue
        const = s.const
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if const is None:
            if nxt is None:
                raise ConfigError(f"option {excerpt(name)} needs a value", path="command line")
            opts += [tok, nxt]
            i += 2
            continue
        # A flag with an optional value: take the next token only if it is clearly a value for it.
        long = name if name.startswith("--") else (s.long_flag or name)
        takes_next = nxt is not None and nxt not in verbs and (
            try_bool(nxt) is not None or (s.choices is not None and nxt in s.choices))
        if takes_next:
            assert nxt is not None
            opts.append(f"{long}={nxt}")
            i += 2
        else:
            opts.append(f"{long}={const}")
            i += 1
    return opts, None, []


def _namespace() -> argparse.Namespace:
    return argparse.Namespace(assignments=[], help=False, version=False)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """The assignments are merged again for every condition and every image: say it once."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warn(message)


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    _WARNED.clear()  # a new run: its warnings are shown afresh
    parser = build_parser()
    opts, verb_raw, rest = split_argv(parser, argv)
    ns = parser.parse_args(opts, namespace=_namespace())
    verb = Verb.build
    if verb_raw is not None:
        try:
            verb = Verb(verb_raw)
        except ValueError:
            # A short quote: the list of verbs is long enough.
            raise ConfigError(f"unknown verb '{excerpt(verb_raw, 20)}', expected one of: {', '.join(Verb.values())}",
                              path="command line")
    cmdline = list(rest)
    if not verb.takes_cmdline() and rest:
        # Options may follow verbs that take no arguments of their own: "mkosi summary --json".
        opts2, extra, _rest2 = split_argv(parser, rest)
        if extra is not None:
            raise ConfigError(f"verb '{verb.value}' takes no argument '{excerpt(extra)}'", path="command line")
        ns2 = parser.parse_args(opts2, namespace=_namespace())
        ns.assignments += ns2.assignments
        ns.help = ns.help or ns2.help
        ns.version = ns.version or ns2.version
        cmdline = []
    if verb == Verb.help:
        ns.help = True
    return CommandLine(assignments=list(ns.assignments), verb=verb, cmdline=cmdline,
                       help=bool(ns.help), version=bool(ns.version))


def format_help() -> str:
    return build_parser().format_help()


def print_version() -> None:
    print(f"mkosi {__version__}")


# ---- merging ----

@functools.lru_cache(maxsize=64)
def _separator(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _split_items(s: Setting, raw: str) -> list[str]:
    """A list value's items: split at the setting's separator and at the line breaks of continuation lines
    (every list takes one item a line), each item without the spaces around it."""
    items = (item.strip() for item in _separator(f"(?:{s.separator})|\n").split(raw.strip()))
    return [item for item in items if item]


def _takes_paths(s: Setting) -> bool:
    return s.path_rule != PathRule.none or s.parse is parse_path


def rebase(s: Setting, item: str, base: Optional[Path]) -> str:
    """A relative path in a configuration file is relative to the configuration's directory."""
    if base is None or not _takes_paths(s) or not item or item.startswith(("/", "~", "!")):
        return item
    if s.path_rule == PathRule.pair:
        # only SRC is relative to the configuration; TARGET is kept as written ("tree:/" keeps its "/",
        # which joining the whole item as one path would drop)
        src, sep, target = item.partition(":")
        return f"{base / src}{sep}{target}"
    return str(base / item)


_GONE = object()


class ListBuilder:
    """The items of one list setting across its assignments, in linear time: "!item" removals
    find what they remove through indexes instead of scanning the list."""

    def __init__(self, s: Setting, language: ConfigLanguage = ConfigLanguage.classic) -> None:
        self.setting = s
        self.language = language
        self.reset = False  # whether an empty assignment cleared it (the modern language)
        self.clear()

    def clear(self) -> None:
        self.items: list[Any] = []
        self.by_text: dict[str, list[int]] = {}
        self.by_value: dict[Any, list[int]] = {}
        self.by_key: dict[str, list[int]] = {}
        self.unhashable: list[int] = []

    def append(self, value: Any) -> None:
        i = len(self.items)
        self.items.append(value)
        text = str(value)
        self.by_text.setdefault(text, []).append(i)
        if self.setting.remove_by_key:
            self.by_key.setdefault(text.split("=", 1)[0], []).append(i)
        try:
            self.by_value.setdefault(value, []).append(i)
        except TypeError:
            self.unhashable.append(i)

    def remove(self, removal: str) -> None:
        """Remove every item equal to `removal`, as text or parsed (and "name=..." items for "!name"
        where the setting removes by key)."""
        hits = self.by_text.pop(removal, [])
        if self.setting.remove_by_key and "=" not in removal:
            hits += self.by_key.pop(removal, [])
        try:
            parsed = self.setting.parse(removal)
        except ValueError:
            pass
        else:
            try:
                hits += self.by_value.pop(parsed, [])
            except TypeError:
                pass
            hits += [i for i in self.unhashable if self.items[i] is not _GONE and self.items[i] == parsed]
        for i in hits:
            self.items[i] = _GONE

    def add(self, raw: str, base: Optional[Path] = None) -> None:
        s = self.setting
        items = _split_items(s, raw)
        if s.reject_empty and not items:
            s.parse("")  # raises, naming the accepted values
        if not items and self.language == ConfigLanguage.modern:
            self.clear()  # the modern language's reset: everything assigned before, and the default
            self.reset = True
            return
        for item in items:
            check_text(item)
            if item == "!*":
                self.clear()
            elif item.startswith("!") and len(item) > 1:
                self.remove(rebase(s, item[1:], base))
            else:
                self.append(s.parse(rebase(s, item, base)))

    def result(self) -> list[Any]:
        return [x for x in self.items if x is not _GONE]


def merge_list(s: Setting, current: list[Any], raw: str, base: Optional[Path] = None,
               language: ConfigLanguage = ConfigLanguage.classic) -> list[Any]:
    builder = ListBuilder(s, language)
    for x in current:
        builder.append(x)
    builder.add(raw, base)
    return builder.result()


@dataclasses.dataclass
class Merged:
    values: dict[str, Any]
    origins: dict[str, Origin]         # where each setting was last assigned
    explicit_empty: set[str]           # settings explicitly set to an empty value (disables detection)
    reset: set[str] = dataclasses.field(default_factory=set)  # lists cleared by an empty assignment (modern)


def setting_label(s: Setting, origin: Origin) -> str:
    if origin.path is None:
        return s.long_flag or s.name
    return s.key or s.name


def merge(assignments: Sequence[Assignment], language: ConfigLanguage = ConfigLanguage.classic) -> Merged:
    """The assignments in order of precedence, merged; `language` decides what an empty list assignment
    means (see the module's docstring)."""
    values = all_defaults()
    origins: dict[str, Origin] = {}
    empty: set[str] = set()
    lists: dict[str, ListBuilder] = {}
    for a in assignments:
        s = a.setting
        try:
            if s.kind == Kind.LIST:
                # The first assignment replaces a non-empty default (ManifestFormat=changelog means only that).
                builder = lists.get(s.dest)
                if builder is None:
                    builder = lists[s.dest] = ListBuilder(s, language)
                builder.add(a.raw, a.base)
            elif s.kind == Kind.COUNT and a.raw == "+1":
                values[s.dest] = int(values[s.dest] or 0) + 1
            elif not a.raw.strip():
                values[s.dest] = default_value(s)
                empty.add(s.dest)
            else:
                check_text(a.raw)
                values[s.dest] = s.parse(rebase(s, a.raw.strip(), a.base))
                empty.discard(s.dest)
                if s.dest == "format" and alias_of(a.raw.strip()) is not None:
                    _warn_once(f"{a.origin}: Format={a.raw.strip()} is an older name, use Format={values[s.dest]}")
        except ValueError as e:
            raise ConfigError(short_message(str(e)), path=a.origin.path or "command line", line=a.origin.line,
                              setting=setting_label(s, a.origin))
        origins[s.dest] = a.origin
    for dest, builder in lists.items():
        values[dest] = builder.result()
    return Merged(values, origins, empty, {dest for dest, builder in lists.items() if builder.reset})


def cli_value(cli: CommandLine, dest: str) -> Any:
    merged = merge([a for a in cli.assignments if a.setting.dest == dest])
    return merged.values[dest]
