"""The one list of distribution plugins, and looking one up."""

from __future__ import annotations

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin, arch, debian, fedora, gentoo, opensuse

PLUGINS: dict[Distribution, DistributionPlugin] = {
    p.distribution: p
    for p in (*debian.PLUGINS, *fedora.PLUGINS, arch.Arch(), opensuse.OpenSUSE(), gentoo.Gentoo())
}


def plugin(distribution: Distribution) -> DistributionPlugin:
    return PLUGINS[distribution]
