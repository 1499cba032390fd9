"""Manifests of the installed packages: JSON for machines, a sorted text 'changelog' for diffing, and
software bills of materials (SPDX, CycloneDX; see mkosi.sbom)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.context import Context
from mkosi.distributions.registry import plugin
from mkosi.installers.base import PackageInfo
from mkosi.output.artifacts import CHANGELOG, CYCLONEDX, IMAGE, MANIFEST, SPDX, staged
from mkosi.sbom import ImageInfo, cyclonedx_document, dumps, spdx_document, with_licenses


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
        "packages": [{k: v for k, v in dataclasses.asdict(p).items() if k != "license"}
                     for p in sorted(packages, key=lambda p: (p.name, p.architecture))],
    }


def changelog_text(ctx: Context, packages: list[PackageInfo]) -> str:
    config = ctx.config
    lines = [f"# {config.image_id or 'image'} {config.image_version or ''}".rstrip(),
             f"# {config.distribution.value} {config.release} {config.architecture}", ""]
    for p in sorted(packages, key=lambda p: (p.name, p.architecture)):
        src = f" (source {p.source} {p.source_version or p.version})" if p.source else ""
        lines.append(f"{p.name} {p.version} {p.architecture} {p.size}{src}")
    return "\n".join(lines) + "\n"


def _sbom_packages_path(ctx: Context) -> Path:
    return ctx.workspace / "sbom-packages.json"


def wants_sbom(ctx: Context) -> bool:
    return SPDX.when(ctx.config) or CYCLONEDX.when(ctx.config)


def write_manifests(ctx: Context) -> None:
    """Runs before the package databases may be cleaned away: writes the JSON and changelog
    manifests, and keeps the package list (with licences) for the SBOMs written after the output."""

    config = ctx.config
    if not (MANIFEST.when(config) or CHANGELOG.when(config) or wants_sbom(ctx)):
        return
    packages = plugin(config.distribution).installed_packages(ctx)
    if not packages:
        log.warn("the package database lists no packages; the manifest is empty")
    if MANIFEST.when(config):
        staged(ctx, MANIFEST).write_text(json.dumps(manifest_dict(ctx, packages), indent=2) + "\n")
    if CHANGELOG.when(config):
        staged(ctx, CHANGELOG).write_text(changelog_text(ctx, packages))
    if wants_sbom(ctx):
        packages = with_licenses(ctx.root, packages)
        _sbom_packages_path(ctx).write_text(json.dumps([dataclasses.asdict(p) for p in packages]))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * 1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def source_date_epoch() -> Optional[int]:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else None


def write_sboms(ctx: Context) -> None:
    """After the output exists: the SPDX and CycloneDX documents, with the output's own checksum."""

    config = ctx.config
    saved = _sbom_packages_path(ctx)
    if not wants_sbom(ctx) or not saved.exists():
        return
    packages = [PackageInfo(**d) for d in json.loads(saved.read_text())]
    assert config.output is not None
    main = staged(ctx, IMAGE)
    digest = sha256_file(main) if main.is_file() and not main.is_symlink() else None
    image = ImageInfo(name=config.image_id or "image", version=config.image_version,
                      distribution=config.distribution.value, release=config.release,
                      architecture=config.architecture, file_name=config.output.name, sha256=digest)
    epoch = source_date_epoch()
    if SPDX.when(config):
        staged(ctx, SPDX).write_text(dumps(spdx_document(image, packages, epoch)))
    if CYCLONEDX.when(config):
        staged(ctx, CYCLONEDX).write_text(dumps(cyclonedx_document(image, packages, epoch)))
