"""`mkosi summary`: the configuration as text or JSON, derived from the settings table. Reads only."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from mkosi.config.settings import SECTIONS, SETTINGS, MkosiArgs
from mkosi.config.types import Setting


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _shown(args: MkosiArgs, s: Setting) -> Any:
    value = args.setting_value(s)
    if s.secret:
        return "(set)" if value else None
    return _plain(value)


def _text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


def repositories(args: MkosiArgs) -> list[str]:
    from mkosi.distributions import plugin

    try:
        return plugin(args.distribution).repositories(args)
    except Exception as e:  # summary must always print; say what went wrong instead
        return [f"(cannot list repositories: {e})"]


def outputs(args: MkosiArgs) -> dict[str, Any]:
    names = ("output", "output_dir", "output_checksum", "output_signature", "output_bmap",
             "output_nspawn_settings", "output_sshkey", "output_root_hash", "output_root_hash_p7s",
             "output_manifest_json", "output_changelog", "output_split_root", "output_split_verity",
             "output_split_kernel")
    result = {}
    for n in names:
        v = getattr(args, n)
        if v is None or (n == "output_checksum" and not args.checksum) or (n == "output_signature" and not args.sign):
            continue
        result[n] = str(v)
    return result


def not_implemented(args: MkosiArgs) -> dict[str, str]:
    from mkosi.config.settings import default_value

    return {s.key or s.dest: s.status for s in SETTINGS
            if s.status and args.setting_value(s) != default_value(s)}


def summary_dict(args: MkosiArgs) -> dict[str, Any]:
    data: dict[str, Any] = {"Verb": args.verb.value}
    for section in SECTIONS:
        data[section] = {s.key: _shown(args, s) for s in SETTINGS if s.section == section and s.summary}
    data["Repositories"] = repositories(args)
    data["Outputs"] = outputs(args)
    data["ConfigFiles"] = [str(p) for p in args.config_files]
    data["DetectedFiles"] = {k: str(v) for k, v in args.detected.items()}
    data["NotImplemented"] = not_implemented(args)
    return data


def summary_json(args: MkosiArgs) -> str:
    return json.dumps(summary_dict(args), indent=2)


def summary_text(args: MkosiArgs) -> str:
    data = summary_dict(args)
    width = max(len(s.key or "") for s in SETTINGS) + 2
    lines = [f"{'Verb':>{width}}: {data['Verb']}"]
    notes = data["NotImplemented"]
    for section in SECTIONS:
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
