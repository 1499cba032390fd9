"""Locale=, LocaleMessages=, Keymap=, Timezone= and RootShell=: the image is configured the way
systemd-firstboot would configure it, without running it.

Every file is written inside the image root: its directory is resolved with the image's own links
(never onto the host), and the file itself is replaced by a new one (a link standing at its place is
replaced, not followed). The same values are also left as system credentials in /usr/lib/credstore,
so that they apply at first boot even when only /usr of the image is shipped.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.trees import resolve_in_root

CREDSTORE = "usr/lib/credstore"


def _entry(root: Path, path: str) -> Path:
    """The entry `path` of the image: its directory resolved inside the image, its last component not."""
    parent, _, name = path.strip("/").rpartition("/")
    return resolve_in_root(root, parent) / name


def _lstat_mode(path: Path) -> Optional[int]:
    """The mode of the entry itself (a link is not followed), or None when there is none."""
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return None


def _is_real_dir(path: Path) -> bool:
    mode = _lstat_mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def _read(root: Path, path: str) -> str:
    """The text of `path` as the image sees it (links followed inside the image), or '' if absent."""
    target = resolve_in_root(root, path)
    if not target.is_file():
        return ""
    try:
        return target.read_text(errors="surrogateescape")
    except OSError:
        return ""


def replace_file(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    """Write `text` to `path` of the image through a new file renamed into place."""
    entry = _entry(root, path)
    if _is_real_dir(entry):
        raise MkosiError(f"cannot write /{path.strip('/')} in the image: it is a directory")
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".#mkosi-{entry.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", errors="surrogateescape") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, entry)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return entry


def assignments_text(old: str, values: dict[str, Optional[str]]) -> str:
    """An environment-style file (locale.conf, vconsole.conf): the old text with each named variable
    set (None: removed), other lines kept as they are; new variables are appended."""
    lines: list[str] = []
    done: set[str] = set()
    for line in old.splitlines():
        name = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else ""
        if name in values:
            value = values[name]
            if value is not None and name not in done:
                lines.append(f"{name}={value}")
            done.add(name)
            continue
        lines.append(line)
    lines += [f"{name}={value}" for name, value in values.items() if value is not None and name not in done]
    return "".join(f"{line}\n" for line in lines)


def configure_locale(root: Path, locale: Optional[str], messages: Optional[str]) -> None:
    """LANG= and LC_MESSAGES= in /etc/locale.conf. A message locale equal to the locale is left out
    (LANG= covers it), as systemd-firstboot does."""
    if locale is None and messages is None:
        return
    values: dict[str, Optional[str]] = {}
    if locale is not None:
        values["LANG"] = locale
    if messages is not None:
        values["LC_MESSAGES"] = None if messages == locale else messages
    replace_file(root, "etc/locale.conf", assignments_text(_read(root, "etc/locale.conf"), values))


def configure_keymap(root: Path, keymap: Optional[str]) -> None:
    if keymap is not None:
        replace_file(root, "etc/vconsole.conf",
                     assignments_text(_read(root, "etc/vconsole.conf"), {"KEYMAP": keymap}))


def zoneinfo_file(root: Path, zone: str) -> Path:
    """The zone's tz file in the image; a clear error when the image does not have it."""
    path = resolve_in_root(root, f"usr/share/zoneinfo/{zone}")
    if not path.is_file():
        raise MkosiError(f"Timezone={zone}: the image has no /usr/share/zoneinfo/{zone}",
                         hint="check the zone's name, and install the time zone data (on Debian and Ubuntu: "
                              "Packages=tzdata)")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MkosiError(f"Timezone={zone}: cannot read /usr/share/zoneinfo/{zone} in the image: {e.strerror}")
    if magic != b"TZif":
        raise MkosiError(f"Timezone={zone}: /usr/share/zoneinfo/{zone} in the image is no time zone file")
    return path


def configure_timezone(root: Path, zone: Optional[str]) -> None:
    """/etc/localtime becomes a relative link to the zone's file; Debian's /etc/timezone, where the
    image has one, names the zone too."""
    if zone is None:
        return
    zoneinfo_file(root, zone)
    entry = _entry(root, "etc/localtime")
    if _is_real_dir(entry):
        raise MkosiError("cannot replace /etc/localtime in the image: it is a directory")
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(".#mkosi-localtime")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(f"../usr/share/zoneinfo/{zone}")
    os.replace(tmp, entry)
    legacy = _lstat_mode(_entry(root, "etc/timezone"))
    if legacy is not None and stat.S_ISREG(legacy):
        replace_file(root, "etc/timezone", f"{zone}\n")


def _executable(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def configure_root_shell(root: Path, shell: Optional[str]) -> None:
    """Root's login shell, the last field of its /etc/passwd entry (an entry is added when there is
    none). The shell must be an executable of the image."""
    if shell is None:
        return
    if not _executable(resolve_in_root(root, shell)):
        raise MkosiError(f"RootShell={shell}: the image has no executable {shell}",
                         hint="install the package that provides it (Packages=), or choose another shell")
    passwd = _entry(root, "etc/passwd")
    st = _lstat_mode(passwd)
    mode = stat.S_IMODE(st) if st is not None and stat.S_ISREG(st) else 0o644
    lines = _read(root, "etc/passwd").splitlines()
    found = False
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) >= 7:
            fields[6] = shell
            lines[i] = ":".join(fields[:7])
            found = True
    if not found:
        lines.insert(0, f"root:x:0:0:root:/root:{shell}")
    replace_file(root, "etc/passwd", "".join(f"{line}\n" for line in lines), mode)


def credentials(ctx: Context) -> dict[str, str]:
    """The system credentials systemd-firstboot (and sysusers, for the shell) read at first boot."""
    config = ctx.config
    creds = {
        "firstboot.locale": config.locale,
        "firstboot.locale-messages": config.locale_messages,
        "firstboot.keymap": config.keymap,
        "firstboot.timezone": config.timezone,
        "passwd.shell.root": config.root_shell,
    }
    return {name: value for name, value in creds.items() if value is not None}


def write_credentials(root: Path, creds: dict[str, str]) -> None:
    if not creds:
        return
    resolve_in_root(root, CREDSTORE).mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, value in creds.items():
        replace_file(root, f"{CREDSTORE}/{name}", value, 0o644)


def configure_firstboot(ctx: Context) -> None:
    """Apply Locale=, LocaleMessages=, Keymap=, Timezone= and RootShell= to the image."""
    config = ctx.config
    creds = credentials(ctx)
    if not creds:
        return
    with log.step("Applying first boot settings"):
        root = ctx.root
        configure_locale(root, config.locale, config.locale_messages)
        configure_keymap(root, config.keymap)
        configure_timezone(root, config.timezone)
        configure_root_shell(root, config.root_shell)
        write_credentials(root, creds)
