"""Configuration: command line + settings files -> one frozen Args and a frozen Config per image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mkosi.config.finalize import finalize, host_distribution
from mkosi.config.parse import CommandLine, cli_value, load_settings, parse_command_line
from mkosi.config.settings import Args, Config
from mkosi.errors import ConfigError


def load_config(cli: CommandLine) -> tuple[Args, list[Config]]:
    """Read the settings files the command line points at. Changes directory for -C. Returns the
    invocation's Args and one Config per image (several with --all)."""
    directory = cli_value(cli, "directory")
    if directory is not None:
        try:
            os.chdir(directory)
        except OSError as e:
            raise ConfigError(f"cannot change to directory '{directory}': {e.strerror}", setting="--directory")
    cwd = Path.cwd()
    host_dist, host_release = host_distribution()
    host = (host_dist.value if host_dist else None, host_release)
    if cli_value(cli, "all"):
        all_dir = cli_value(cli, "all_directory") or cwd / "mkosi.files"
        if not all_dir.is_dir():
            raise ConfigError(f"'{all_dir}' does not exist", setting="--all")
        files: list[Path | None] = sorted(p for p in all_dir.iterdir() if p.name.startswith("mkosi.") and p.is_file())
        if not files:
            raise ConfigError(f"no mkosi.* settings files in '{all_dir}'", setting="--all")
    else:
        files = [cli_value(cli, "default_path")]
    results = []
    for f in files:
        loaded = load_settings(cli, f, host)
        results.append(finalize(cli, loaded.merged, loaded.files, cwd))
    # Options of the invocation are the same for every image; the first file's (and the command line's) win.
    return results[0][0], [config for _, config in results]


def load_args(argv: Sequence[str]) -> tuple[Args, list[Config]]:
    """Parse argv and load the configuration it names."""
    return load_config(parse_command_line(argv))
