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
    args = ctx.args
    return {
        "manifest_version": 1,
        "config": {
            "name": args.image_id or "image",
            "version": args.image_version,
            "architecture": args.architecture,
            "distribution": args.distribution.value,
            "release": args.release,
        },
        "packages": [dataclasses.asdict(p) for p in sorted(packages, key=lambda p: (p.name, p.architecture))],
    }


def changelog_text(ctx: Context, packages: list[PackageInfo]) -> str:
    args = ctx.args
    lines = [f"# {args.image_id or 'image'} {args.image_version or ''}".rstrip(),
             f"# {args.distribution.value} {args.release} {args.architecture}", ""]
    for p in sorted(packages, key=lambda p: (p.name, p.architecture)):
        src = f" (source {p.source} {p.source_version or p.version})" if p.source else ""
        lines.append(f"{p.name} {p.version} {p.architecture} {p.size}{src}")
    return "\n".join(lines) + "\n"


def write_manifests(ctx: Context) -> None:
    from mkosi.distributions import plugin

    args = ctx.args
    if args.output_manifest_json is None and args.output_changelog is None:
        return
    packages = plugin(args.distribution).installed_packages(ctx)
    if not packages:
        log.warn("the package database lists no packages; the manifest is empty")
    if args.output_manifest_json is not None:
        out = ctx.staging / args.output_manifest_json.name
        out.write_text(json.dumps(manifest_dict(ctx, packages), indent=2) + "\n")
    if args.output_changelog is not None:
        (ctx.staging / args.output_changelog.name).write_text(changelog_text(ctx, packages))
