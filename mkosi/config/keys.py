"""CacheKey= and BuildKey=: names of an image's subdirectory in CacheDirectory= and BuildDirectory=.

A key is a template with delayed specifiers, expanded once the image's configuration is complete:
  &&  a literal &          &d  Distribution=     &r  Release=       &a  Architecture=
  &i  ImageId=             &v  ImageVersion=     &I  the image's name in mkosi.images/, or main
The result names a directory below the cache (or build) directory: it may have several components, but
none of them may be empty, `.` or `..`, and it may not be absolute. BuildKey=- means no subdirectory.
Keys are made of these public settings only, so they never hold a secret."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from mkosi.config.enums import ConfigLanguage

SPECIFIERS = {"d": "distribution", "r": "release", "a": "architecture", "i": "image_id", "v": "image_version",
              "I": "image"}
NO_SUBDIRECTORY = "-"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(getattr(value, "value", value))


class SpecifierError(ValueError):
    """A template with a lone '&' at its end (spec None) or an unknown '&X'."""

    def __init__(self, template: str, spec: Optional[str]) -> None:
        self.template, self.spec = template, spec
        super().__init__(f"'{template}' ends with a lone '&' (write '&&' for a literal '&')" if spec is None
                         else f"unknown specifier '&{spec}' in '{template}'")


def expand_ampersand(template: str, lookup: Callable[[str], Optional[str]]) -> str:
    """`template` with each '&X' replaced by lookup(X) and '&&' by '&' (the delayed specifiers of CacheKey=,
    BuildKey= and UnifiedKernelImageFormat=); lookup returns None for a letter it does not know."""
    out: list[str] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(template):
            raise SpecifierError(template, None)
        spec = template[i + 1]
        value = "&" if spec == "&" else lookup(spec)
        if value is None:
            raise SpecifierError(template, spec)
        out.append(value)
        i += 2
    return "".join(out)


def expand_key(template: str, values: dict[str, Any]) -> str:
    """The key with its specifiers replaced by the values of `values` (a Config's fields by name);
    ValueError for an unknown specifier or a result that is no relative subdirectory."""
    try:
        key = expand_ampersand(template, lambda spec: _text(values.get(SPECIFIERS[spec])) if spec in SPECIFIERS
                               else None)
    except SpecifierError as e:
        if e.spec is None:
            raise
        raise ValueError(f"{e} (known: &&, {', '.join('&' + s for s in SPECIFIERS)})") from None
    check_subdirectory(key, template)
    return key


def check_subdirectory(key: str, template: str) -> None:
    if not key or key.startswith("/"):
        raise ValueError(f"'{template}' gives '{key}', which is not a relative subdirectory name")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"'{template}' gives '{key}': its parts may not be empty, '.' or '..'")


def config_values(config: Any) -> dict[str, Any]:
    return {dest: getattr(config, dest) for dest in SPECIFIERS.values()}


def cache_key(config: Any) -> str:
    return expand_key(config.cache_key, config_values(config))


def cache_location(config: Any) -> Optional[Path]:
    """The directory of this image's incremental caches inside CacheDirectory=, or None without one (the
    caches are then kept next to the image)."""
    if config.cache_dir is None:
        return None
    return Path(config.cache_dir) / cache_key(config)


def build_subdir(config: Any) -> Optional[Path]:
    """The directory the build script gets as $BUILDDIR: BuildDirectory=, below it BuildKey= (in the modern
    language; BuildKey=- and the classic language use BuildDirectory= itself)."""
    if config.build_dir is None:
        return None
    if config.language != ConfigLanguage.modern or config.build_key == NO_SUBDIRECTORY:
        return Path(config.build_dir)
    return Path(config.build_dir) / expand_key(config.build_key, config_values(config))


def sources_overlay_dir(config: Any) -> Optional[Path]:
    """BuildSourcesEphemeral=buildcache: where the build scripts' changes to the sources are kept between
    builds, next to this image's build directory (BuildKey=-: a hidden directory inside BuildDirectory=)."""
    if config.build_dir is None:
        return None
    build = build_subdir(config)
    assert build is not None
    if build == Path(config.build_dir):
        return build / ".mkosi-sources-overlay"
    return build.with_name(build.name + ".sources-overlay")
