"""`mkosi summary`: the configuration as text or JSON, derived from the settings table. Reads only."""

from __future__ import annotations

import json
from typing import Any

from mkosi.config.settings import (
    CONFIG_FIELDS,
    SECTIONS,
    SETTINGS,
    Args,
    Config,
    default_value,
    plain_value,
    setting_value,
)
from mkosi.config.types import Setting


def _shown(args: Args, config: Config, s: Setting) -> Any:
    value = setting_value(args, config, s)
    if s.secret:
        return "(set)" if value else None
    return plain_value(value)


def _item_text(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"Source", "Target"}:  # a SRC[:TARGET] tree
        return f"{value['Source']}:{value['Target']}" if value["Target"] else str(value["Source"])
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_item_text(v) for v in value) if value else "(none)"
    return str(value)


def repositories(config: Config) -> list[str]:
    from mkosi.distributions import plugin

    try:
        return plugin(config.distribution).repositories(config)
    except Exception as e:  # summary must always print; say what went wrong instead
        return [f"(cannot list repositories: {e})"]


def outputs(config: Config) -> dict[str, Any]:
    names = ("output", "output_dir", "output_checksum", "output_signature", "output_bmap",
             "output_nspawn_settings", "output_sshkey", "output_root_hash", "output_root_hash_p7s",
             "output_manifest_json", "output_changelog", "output_split_root", "output_split_verity",
             "output_split_kernel")
    result = {}
    for n in names:
        v = getattr(config, n)
        skipped = (n == "output_checksum" and not config.checksum) or (n == "output_signature" and not config.sign)
        if v is None or skipped:
            continue
        result[n] = str(v)
    return result


def not_implemented(config: Config) -> dict[str, str]:
    return {s.key or s.dest: s.status for s in SETTINGS
            if s.status and s.dest in CONFIG_FIELDS and config.setting_value(s) != default_value(s)}


def summary_dict(args: Args, config: Config) -> dict[str, Any]:
    data: dict[str, Any] = {"Verb": args.verb.value}
    for section in SECTIONS:
        if any(s.section == section for s in SETTINGS):  # [Host] is only an older name of [Runtime]
            data[section] = {s.key: _shown(args, config, s) for s in SETTINGS if s.section == section and s.summary}
    data["Repositories"] = repositories(config)
    data["Outputs"] = outputs(config)
    data["ConfigFiles"] = [str(p) for p in config.config_files]
    data["DetectedFiles"] = {k: str(v) for k, v in config.detected.items()}
    data["NotImplemented"] = not_implemented(config)
    return data


# Options of the invocation that upstream's summary shows with each image (they are settings there).
IMAGE_ARGS = ("incremental",)


def image_json(args: Args, config: Config) -> dict[str, Any]:
    """One image as upstream mkosi's `summary --json` shows it: every setting under its key, flat."""
    data: dict[str, Any] = {"Image": config.image}
    for s in SETTINGS:
        if s.key and s.summary and (s.dest in CONFIG_FIELDS or s.dest in IMAGE_ARGS):
            data[s.key] = _shown(args, config, s)
    data["Repositories"] = repositories(config)
    data["Outputs"] = outputs(config)
    data["ConfigFiles"] = [str(p) for p in config.config_files]
    data["NotImplemented"] = not_implemented(config)
    return data


def summary_json(args: Args, configs: list[Config]) -> str:
    """{"Images": [...]}: one object per image, in build order (the main image last)."""
    return json.dumps({"Images": [image_json(args, c) for c in configs]}, indent=2)


def summary_text(args: Args, configs: list[Config]) -> str:
    if len(configs) == 1:
        return image_text(args, configs[0])
    return "\n\n".join(f"IMAGE: {c.image}\n\n" + image_text(args, c) for c in configs)


def image_text(args: Args, config: Config) -> str:
    data = summary_dict(args, config)
    width = max(len(s.key or "") for s in SETTINGS) + 2
    lines = [f"{'Verb':>{width}}: {data['Verb']}"]
    notes = data["NotImplemented"]
    for section in (s for s in SECTIONS if s in data):
        lines += ["", f"{section.upper()}:"]
        for key, value in data[section].items():
            note = f"  ({notes[key]})" if key in notes else ""
            lines.append(f"{key:>{width}}: {_text(value)}{note}")
    lines += ["", "REPOSITORIES:"] + [f"{'':>{width}}  {r}" for r in data["Repositories"]]
    lines += ["", "OUTPUTS:"] + [f"{k:>{width}}: {v}" for k, v in data["Outputs"].items()]
    lines += ["", "FILES:"]
    lines += [f"{'config file':>{width}}: {f}" for f in data["ConfigFiles"]] or [f"{'config file':>{width}}: (none)"]
    lines += [f"{k:>{width}}: {v}" for k, v in data["DetectedFiles"].items()]
    return "\n".join(lines)
