"""ConfigureScripts= (mkosi.configure): scripts that rewrite an image's configuration before it is used.

Each script gets the image's configuration on stdin as the JSON object `mkosi summary --json` shows for
it, and prints the configuration it wants on stdout, as JSON of the same shape; the scripts run in order,
each seeing what the previous one printed. Only the settings whose value changed are taken over: they
become assignments of the image (as if written in a settings file, the script named as their origin) that
replace what the files said, and the image's configuration is worked out again from them, so defaults
that depend on them follow. A null value resets a setting to its default; a list replaces the whole list.
The other keys of the object (Outputs, Repositories, ...) are for reading only.

The scripts run for the verbs that build or use the image (build, shell, boot, vm/qemu), on the host in
the directory mkosi runs in, with the same environment as sync scripts; `summary` shows the configuration
as the files say it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.config.enums import Verb
from mkosi.config.ini import Assignment, Origin
from mkosi.config.settings import CONFIG_FIELDS, SETTINGS, Args, Config
from mkosi.config.types import Kind, Setting
from mkosi.errors import MkosiError
from mkosi.run import run
from mkosi.sandbox import Sandbox

CONFIGURE_VERBS = frozenset({Verb.build, Verb.shell, Verb.boot, Verb.vm, Verb.qemu})
BY_KEY = {s.key: s for s in SETTINGS if s.key and s.dest in CONFIG_FIELDS}


def _item_text(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"Source", "Target"}:  # a SRC[:TARGET] tree
        return f"{value['Source']}:{value['Target']}" if value["Target"] else str(value["Source"])
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"cannot use the JSON value {json.dumps(value)}")


def raw_values(s: Setting, value: Any) -> list[str]:
    """The settings-file values that give `s` the JSON value `value` (several for a list: "!*" clears
    what the files assigned, then one per item)."""
    if s.kind == Kind.LIST:
        if value is None:
            return ["!*"]
        if isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]
        if not isinstance(value, list):
            value = [value]
        return ["!*", *(_item_text(v) for v in value)]
    if value is None:
        return [""]
    if isinstance(value, list):
        return [",".join(_item_text(v) for v in value)]
    return [_item_text(value)]


def assignments(script: Path, before: dict[str, Any], after: dict[str, Any], base: Path) -> list[Assignment]:
    """The assignments that make the configuration `after` out of `before` (only the settings that changed)."""
    origin = Origin(path=str(script), line=None)
    result = []
    for key, value in after.items():
        if key in before and before[key] == value:
            continue
        s = BY_KEY.get(key)
        if s is None:
            if key in before:
                log.warn(f"{script}: {key} is not a setting that can be changed; its new value is ignored")
                continue
            raise MkosiError(f"ConfigureScripts= {script}: printed an unknown setting {key}",
                             hint="keys are the setting names of `mkosi summary --json`")
        try:
            raws = raw_values(s, value)
        except ValueError as e:
            raise MkosiError(f"ConfigureScripts= {script}: {key}: {e}") from None
        result += [Assignment(s, raw, origin, base) for raw in raws]
    return result


def run_script(script: Path, data: dict[str, Any], sandbox: Sandbox) -> dict[str, Any]:
    with log.step(f"Running configure script {script.name}"):
        proc = run([script.absolute()], sandbox=sandbox, check=False, input=json.dumps(data, indent=2) + "\n",
                   stdout=subprocess.PIPE)
    if proc.returncode != 0:
        raise MkosiError(f"ConfigureScripts= {script} failed with exit status {proc.returncode}")
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise MkosiError(f"ConfigureScripts= {script} printed invalid JSON: {e}",
                         hint="it must print the modified configuration as one JSON object on stdout "
                         "(messages go to stderr)") from None
    if not isinstance(out, dict):
        raise MkosiError(f"ConfigureScripts= {script} printed JSON that is not an object",
                         hint="it must print the configuration object it was given, modified")
    return out


def configure(args: Args, config: Config, base: Path, main: Optional[Config] = None) -> list[Assignment]:
    """Run the image's configure scripts; the assignments their changes amount to (none: unchanged).
    `main`: the main image, when `config` is a sub-image (it decides the tools tree shown to the scripts)."""
    from mkosi.scripts import check_host_scripts, host_script_environment, host_source_mounts  # noqa: PLC0415
    from mkosi.summary import image_json  # noqa: PLC0415

    scripts: Sequence[Path] = check_host_scripts(config, "configure")
    if not scripts:
        return []
    srcdir = Path.cwd()
    env = host_script_environment(args, config, "configure", srcdir=srcdir)
    sandbox = Sandbox.for_config(config).but(env=env, chdir=str(srcdir), mounts=host_source_mounts(config, srcdir))
    before = image_json(args, config, main)
    result: list[Assignment] = []
    data = before
    for script in scripts:
        out = run_script(script, data, sandbox)
        result += assignments(script, data, out, base)
        data = out
    return result
