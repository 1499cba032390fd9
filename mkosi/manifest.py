"""Manifests of the installed packages: JSON for machines, a sorted text 'changelog' for diffing."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from mkosi import log
from mkosi.context import Context


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    type: str                  # "deb", "rpm", "pacman"
    name: str
    version: str
    architecture: str
    size: int                  # installed size in bytes
    source: Optional[str] = None          # source package name
    source_version: Optional[str] = None


def manifest_dict(ctx: Context, packages: list[PackageInfo]) -> dict[str, object]:
    config = ctx.config
    return {
        "manifest_version": 1,
        "config": {
            "name": config.image_id or "image",
            "version": config.image_version,
            "architecture": config.architecture,
            "distribution": config.distribution.value,
            "release": config.release,
        },
        "packages": [dataclasses.asdict(p) for p in sorted(packages, key=lambda p: (p.name, p.architecture))],
    }


def changelog_text(ctx: Context, packages: list[PackageInfo]) -> str:
    config = ctx.config
    lines = [f"# {config.image_id or 'image'} {config.image_version or ''}".rstrip(),
             f"# {config.distribution.value} {config.release} {config.architecture}", ""]
    for p in sorted(packages, key=lambda p: (p.name, p.architecture)):
        src = f" (source {p.source} {p.source_version or p.version})" if p.source else ""
        lines.append(f"{p.name} {p.version} {p.architecture} {p.size}{src}")
    return "\n".join(lines) + "\n"


def write_manifests(ctx: Context) -> None:
    from mkosi.distributions.registry import plugin

    config = ctx.config
    if config.output_manifest_json is None and config.output_changelog is None:
        return
    packages = plugin(config.distribution).installed_packages(ctx)
    if not packages:
        log.warn("the package database lists no packages; the manifest is empty")
    if config.output_manifest_json is not None:
        out = ctx.staging / config.output_manifest_json.name
        out.write_text(json.dumps(manifest_dict(ctx, packages), indent=2) + "\n")
    if config.output_changelog is not None:
        (ctx.staging / config.output_changelog.name).write_text(changelog_text(ctx, packages))
