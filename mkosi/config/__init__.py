"""Configuration: command line + settings files -> frozen MkosiArgs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mkosi.config.finalize import finalize, host_distribution
from mkosi.config.parse import CommandLine, cli_value, load_settings, parse_command_line
from mkosi.config.settings import MkosiArgs
from mkosi.errors import ConfigError


def load_args(argv: Sequence[str]) -> tuple[CommandLine, list[MkosiArgs]]:
    """Parse argv and the settings files. Changes directory for -C. Returns one MkosiArgs per image
    (several with --all)."""
    cli = parse_command_line(argv)
    if cli.help or cli.version:
        return cli, []
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
        files = sorted(p for p in all_dir.iterdir() if p.name.startswith("mkosi.") and p.is_file())
        if not files:
            raise ConfigError(f"no mkosi.* settings files in '{all_dir}'", setting="--all")
        result = []
        for f in files:
            loaded = load_settings(cli, f, host)
            result.append(finalize(cli, loaded.merged, loaded.files, cwd))
        return cli, result
    loaded = load_settings(cli, cli_value(cli, "default_path"), host)
    return cli, [finalize(cli, loaded.merged, loaded.files, cwd)]
