"""`mkosi summary`: the configuration as text or JSON, derived from the settings table. Reads only."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

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
from mkosi.config.types import Setting, parse_octal_mode, parse_size
from mkosi.distributions.registry import plugin
from mkosi.errors import MkosiError
from mkosi.output.artifacts import IMAGE, shown
from mkosi.tools_tree import resolve as resolve_tools_tree

# Readable labels of the text summary where splitting the key's words is not enough.
LABELS = {
    "Format": "Output format", "Output": "Output path", "ManifestFormat": "Manifest formats",
    "OutputSplitRoot": "Split root partition", "OutputSplitVerity": "Split verity partition",
    "OutputSplitKernel": "Split kernel image", "OutputSplitVeritySig": "Split verity signature",
    "Force": "Force level", "KernelCommandLine": "Kernel command line", "SecureBoot": "UEFI Secure Boot",
    "SecureBootKey": "Secure Boot key", "SecureBootCertificate": "Secure Boot certificate",
    "SecureBootCommonName": "Certificate common name", "SecureBootValidDays": "Certificate validity (days)",
    "SignExpectedPCR": "Sign expected PCRs",
    "ReadOnly": "Read-only root", "CompressFs": "File system compression", "CompressOutput": "Output compression",
    "QCow2": "QCOW2 conversion", "Hostname": "Host name", "ImageId": "Image ID",
    "WithUnifiedKernelImages": "Unified kernel images", "HostonlyInitrd": "Host-only initrd",
    "UsrOnly": "/usr partition only", "NoChown": "Leave outputs owned by root",
    "TarStripSELinuxContext": "Strip SELinux labels from tar", "MachineID": "Machine ID",
    "WithDocs": "With documentation", "Cache": "Package cache", "SkeletonTree": "Skeleton trees",
    "ExtraTree": "Extra trees", "Environment": "Script environment", "BuildDirectory": "Build directory",
    "PostInstallationScript": "Post-installation script", "WithNetwork": "Network for scripts",
    "Settings": "nspawn settings file", "RootSize": "Root partition size", "ESPSize": "ESP size",
    "SwapSize": "Swap partition size", "HomeSize": "/home partition size", "SrvSize": "/srv partition size",
    "VarSize": "/var partition size", "TmpSize": "/var/tmp partition size",
    "XBootLDRSize": "XBOOTLDR partition size", "BIOSSize": "BIOS boot partition size",
    "Checksum": "Checksums", "Sign": "Sign checksums", "Key": "GPG key", "BMap": "Block map",
    "QemuHeadless": "QEMU headless", "QemuSmp": "QEMU CPUs", "QemuMem": "QEMU memory", "QemuKvm": "QEMU KVM",
    "QemuArgs": "QEMU arguments", "QemuBoot": "QEMU boot protocol", "NspawnKeepUnit": "nspawn keeps unit",
    "Netdev": "Network link", "Ssh": "SSH", "SshKey": "SSH key", "SshAgent": "SSH agent", "SshPort": "SSH port",
    "SshTimeout": "SSH timeout", "Password": "Root password", "RepositoryKeyCheck": "Check repository keys",
    "GPTFirstLBA": "GPT first LBA", "Mksquashfs": "mksquashfs program", "LocalMirror": "Local mirror",
}
SIZE_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def label(key: str) -> str:
    """The readable name of a setting: "RootSize" -> "Root partition size", "ImageVersion" -> "Image version"."""
    if key in LABELS:
        return LABELS[key]
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", key)
    return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words).capitalize() \
        if words and not words[0].isupper() else " ".join(words)


def format_size(size: int) -> str:
    """A size as the largest unit that divides it exactly, as written in settings: 3221225472 -> 3G."""
    for suffix, factor in SIZE_UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def _shown(args: Args, config: Config, s: Setting) -> Any:
    value = setting_value(args, config, s)
    if s.secret:
        return "(set)" if value else None
    if s.redact is not None:
        value = s.redact(value)
    return plain_value(value)


def _item_text(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"Source", "Target"}:  # a SRC[:TARGET] tree
        return f"{value['Source']}:{value['Target']}" if value["Target"] else str(value["Source"])
    return str(value)


def _text(value: Any, size: bool = False, mode: bool = False) -> str:
    if size and isinstance(value, int) and not isinstance(value, bool):
        return format_size(value)
    if mode and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:04o}"  # an access mode as it is written (OutputMode=0640), not in decimal
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_item_text(v) for v in value)
    return str(value)


def repositories(config: Config) -> list[str]:

    try:
        return plugin(config.distribution).repositories(config)
    except Exception as e:  # summary must always print; say what went wrong instead
        return [f"(cannot list repositories: {e})"]


def outputs(config: Config) -> dict[str, str]:
    """What a build of this configuration writes (the artifact table's rows that summary shows), after
    the image its output directory."""
    found = {key: str(p) for key, p in shown(config).items()}
    image = found.pop(IMAGE.key, None)  # Format=none writes no image
    return {**({IMAGE.key: image} if image is not None else {}), "output_dir": str(config.output_dir), **found}


def tools_tree(config: Config, main: Optional[Config] = None) -> str:
    """Which tools tree the image's commands run with, and why (nothing is built to say so). The tools
    tree is the build's: `main` (the main image of `config`'s build, when it is a sub-image) decides it,
    with its ToolsTree*= settings, which are not passed down to sub-images."""
    try:
        return resolve_tools_tree(main or config).describe()
    except MkosiError as e:  # summary must always print
        return f"default (cannot work out its configuration: {e})"


def tools_tree_path(config: Config, main: Optional[Config] = None) -> Optional[str]:
    """Where the tools tree is (or will be, once built), for scripts reading `summary --json`."""
    try:
        path = resolve_tools_tree(main or config).path
    except MkosiError:
        return None
    return None if path is None else str(path)


def not_implemented(config: Config) -> dict[str, str]:
    return {s.key or s.dest: s.status for s in SETTINGS
            if s.status and s.dest in CONFIG_FIELDS and config.setting_value(s) != default_value(s)}


def main_images(configs: list[Config]) -> list[Config]:
    """For each configuration, the main image of its build: itself, or the next main image after it
    (sub-images come first, their main image last; with --all one such group per file)."""
    mains: list[Config] = []
    main: Optional[Config] = None
    for config in reversed(configs):
        if config.image == "main" or main is None:
            main = config
        mains.append(main)
    return mains[::-1]


def summary_dict(args: Args, config: Config, main: Optional[Config] = None) -> dict[str, Any]:
    data: dict[str, Any] = {"Verb": args.verb.value}
    for section in SECTIONS:
        if any(s.section == section for s in SETTINGS):  # [Host] is only an older name of [Runtime]
            data[section] = {s.key: _shown(args, config, s) for s in SETTINGS if s.section == section and s.summary}
    data["Repositories"] = repositories(config)
    data["Outputs"] = outputs(config)
    data["ToolsTreeUsed"] = tools_tree(config, main)
    data["ConfigLanguage"] = config.language.value
    data["ConfigFiles"] = [str(p) for p in config.config_files]
    data["DetectedFiles"] = {k: str(v) for k, v in config.detected.items()}
    data["NotImplemented"] = not_implemented(config)
    return data


# Options of the invocation that upstream's summary shows with each image (they are settings there).
IMAGE_ARGS = ("incremental",)


def image_json(args: Args, config: Config, main: Optional[Config] = None) -> dict[str, Any]:
    """One image as upstream mkosi's `summary --json` shows it: every setting under its key, flat."""
    data: dict[str, Any] = {"Image": config.image}
    for s in SETTINGS:
        if s.key and s.summary and (s.dest in CONFIG_FIELDS or s.dest in IMAGE_ARGS):
            data[s.key] = _shown(args, config, s)
    data["Repositories"] = repositories(config)
    data["Outputs"] = outputs(config)
    data["ToolsTreeUsed"] = tools_tree(config, main)
    data["ToolsTreePath"] = tools_tree_path(config, main)
    data["ConfigLanguage"] = config.language.value
    data["ConfigFiles"] = [str(p) for p in config.config_files]
    data["NotImplemented"] = not_implemented(config)
    return data


def summary_json(args: Args, configs: list[Config]) -> str:
    """{"Images": [...]}: one object per image, in build order (the main image last)."""
    images = [image_json(args, c, m) for c, m in zip(configs, main_images(configs))]
    return json.dumps({"Images": images}, indent=2)


def summary_text(args: Args, configs: list[Config]) -> str:
    if len(configs) == 1:
        return image_text(args, configs[0])
    return "\n\n".join(f"IMAGE: {c.image}\n\n" + image_text(args, c, m) for c, m in zip(configs, main_images(configs)))


def _output_label(name: str) -> str:
    words = name.removeprefix("output_").replace("_", " ")
    return {"output": "Image", "dir": "Output directory", "sshkey": "SSH key", "bmap": "Block map",
            "nspawn settings": "nspawn settings", "manifest json": "Manifest", "root hash p7s": "Root hash signature",
            "checksum": "Checksums", "signature": "Checksums signature",
            "link": "Link to the image"}.get(words, words.capitalize())


def image_text(args: Args, config: Config, main: Optional[Config] = None) -> str:
    """Readable labels on the left; on the right each setting as `Key=value`, ready to copy into a file
    (sizes as 3G, lists comma-separated)."""
    data = summary_dict(args, config, main)
    keyed = [s for s in SETTINGS if s.key and s.summary]
    width = max(len(label(s.key or "")) for s in keyed) + 2
    sizes = {s.key for s in keyed if s.parse is parse_size}
    modes = {s.key for s in keyed if s.parse is parse_octal_mode}
    lines = [f"{'Verb':>{width}}  {data['Verb']}"]
    notes = data["NotImplemented"]
    for section in (s for s in SECTIONS if data.get(s)):
        lines += ["", f"{section.upper()}:"]
        for key, value in data[section].items():
            note = f"  ({notes[key]})" if key in notes else ""
            lines.append(f"{label(key):>{width}}  {key}={_text(value, key in sizes, key in modes)}{note}")
    lines += ["", "REPOSITORIES:"] + [f"{'':>{width}}  {r}" for r in data["Repositories"]]
    lines += ["", "OUTPUTS:"] + [f"{_output_label(k):>{width}}  {v}" for k, v in data["Outputs"].items()]
    lines += ["", "TOOLS TREE:", f"{'Tools tree used':>{width}}  {data['ToolsTreeUsed']}"]
    lines += ["", "FILES:", f"{'Language':>{width}}  {data['ConfigLanguage']}"]
    lines += [f"{'Settings file':>{width}}  {f}" for f in data["ConfigFiles"]] \
        or [f"{'Settings file':>{width}}  (none)"]
    lines += [f"{k:>{width}}  {v}" for k, v in data["DetectedFiles"].items()]
    return "\n".join(lines)
