"""Configuration: command line + settings files -> one frozen Args and a frozen Config per image."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi.config.finalize import finalize
from mkosi.config.keys import cache_key
from mkosi.config.layout import ImageLayout, load_image, load_subimages, order_images
from mkosi.config.parse import CommandLine, cli_value, merge, parse_command_line
from mkosi.config.settings import SETTINGS, Args, Config
from mkosi.config.types import Scope
from mkosi.errors import ConfigError

UNIVERSAL = tuple(s.dest for s in SETTINGS if s.scope == Scope.universal)


def _finalize(cli: CommandLine, layout: ImageLayout, main: Optional[Config] = None) -> tuple[Args, Config]:
    merged = merge(layout.assignments, layout.language)
    args, config = finalize(cli, merged, layout.files, layout.directory, layout.name, layout.language,
                            main.output_dir if main is not None else None)
    # Imported here: mkosi.configure runs commands, and mkosi.run needs this package first.
    from mkosi.configure import CONFIGURE_VERBS, configure  # noqa: PLC0415

    if cli.verb not in CONFIGURE_VERBS or not config.configure_scripts:
        return args, config
    # ConfigureScripts=: what they change is assigned after everything else, and the image worked out again.
    changes = configure(args, config, layout.directory, main)
    if not changes:
        return args, config
    layout.assignments = [*layout.assignments, *changes]
    return finalize(cli, merge(layout.assignments, layout.language), layout.files, layout.directory, layout.name,
                    layout.language, main.output_dir if main is not None else None)


def _images(cli: CommandLine, cwd: Path, default_path: Optional[Path]) -> tuple[Args, list[Config]]:
    main_layout = load_image(cli, cwd, cwd, default_path)
    args, main = _finalize(cli, main_layout)
    subs = {layout.name: layout for layout in load_subimages(cli, cwd, main_layout)}
    if not subs:
        return args, [main]
    configs = {}
    for name, layout in subs.items():
        _, config = _finalize(cli, layout, main)
        # Universal settings are the main image's, whatever a sub-image's defaults would say.
        configs[name] = dataclasses.replace(config, **{d: getattr(main, d) for d in UNIVERSAL})
    order = order_images(list(subs), {n: c.dependencies for n, c in configs.items()}, main.dependencies)
    images = [*(configs[n] for n in order), main]
    check_unique_cache_keys(images)
    return args, images


def check_unique_cache_keys(images: list[Config]) -> None:
    """With CacheDirectory=, two images of a build with one CacheKey= would overwrite each other's caches."""
    seen: dict[str, str] = {}
    for config in images:
        if config.cache_dir is None:
            continue
        key = cache_key(config)
        if key in seen:
            raise ConfigError(f"images '{seen[key]}' and '{config.image}' have the same CacheKey= '{key}'",
                              setting="CacheKey",
                              hint="keep &I in CacheKey= (its default), or give each image its own key")
        seen[key] = config.image


def load_config(cli: CommandLine) -> tuple[Args, list[Config]]:
    """Read the settings files the command line points at. Changes directory for -C. Returns the
    invocation's Args and one Config per image, in build order: sub-images first, the main image last
    (or one per file of mkosi.files/ with --all)."""
    directory = cli_value(cli, "directory")
    if directory is not None:
        try:
            os.chdir(directory)
        except OSError as e:
            raise ConfigError(f"cannot change to directory '{directory}': {e.strerror}", path="command line",
                              setting="--directory")
    cwd = Path.cwd()
    from mkosi.history import replay  # noqa: PLC0415 (history reads the settings table too)

    cli = replay(cli, cwd)
    if not cli_value(cli, "all"):
        return _images(cli, cwd, cli_value(cli, "default_path"))
    all_dir = cli_value(cli, "all_directory") or cwd / "mkosi.files"
    if not all_dir.is_dir():
        raise ConfigError(f"'{all_dir}' does not exist", path="command line", setting="--all")
    files = sorted(p for p in all_dir.iterdir() if p.name.startswith("mkosi.") and p.is_file())
    if not files:
        raise ConfigError(f"no mkosi.* settings files in '{all_dir}'", path="command line", setting="--all")
    results = [_images(cli, cwd, f) for f in files]
    # Options of the invocation are the same for every image; the first file's (and the command line's) win.
    return results[0][0], [config for _, configs in results for config in configs]


def load_args(argv: Sequence[str]) -> tuple[Args, list[Config]]:
    """Parse argv and load the configuration it names."""
    return load_config(parse_command_line(argv))
