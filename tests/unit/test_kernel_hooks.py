"""Debian's kernel hooks do not build an initrd while mkosi installs packages."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mkosi.distributions.debian import (
    DIVERTED_SUFFIX,
    HOOK_STUB,
    KERNEL_HOOKS,
    disable_kernel_hooks,
    kernel_hooks_disabled,
    restore_kernel_hooks,
)


def unpack_like_dpkg(root: Path, path: str, content: str) -> None:
    """What dpkg does with a package's file: honour a diversion of its path."""
    target = f"/{path}"
    lines = (root / "var/lib/dpkg/diversions").read_text().splitlines()
    for i in range(0, len(lines), 3):
        if lines[i] == target:
            target = lines[i + 1]
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(content)
    dest.chmod(0o755)


def test_hooks_are_stubs_during_installation_and_real_afterwards(tmp_path: Path) -> None:
    root = tmp_path
    (root / "etc").mkdir()
    with kernel_hooks_disabled(root):
        unpack_like_dpkg(root, "etc/kernel/postinst.d/dracut", "#!/bin/sh\ndracut --force\n")
        hook = root / "etc/kernel/postinst.d/dracut"
        assert hook.read_text() == HOOK_STUB
        # The kernel's postinst (run-parts) and dracut's trigger (which calls the hook by path) find a no-op.
        assert subprocess.run([str(hook), "6.1.0-10-amd64"]).returncode == 0
        assert (root / f"etc/kernel/postinst.d/dracut{DIVERTED_SUFFIX}").exists()
    assert (root / "etc/kernel/postinst.d/dracut").read_text() == "#!/bin/sh\ndracut --force\n"
    assert not (root / f"etc/kernel/postinst.d/dracut{DIVERTED_SUFFIX}").exists()
    # Hooks of packages that were not installed leave nothing behind, and neither do our diversions.
    assert sorted(p.name for p in (root / "etc/kernel/postinst.d").iterdir()) == ["dracut"]
    assert not (root / "usr").exists()
    assert not (root / "var/lib/dpkg/diversions").exists()


def test_an_image_without_kernel_hooks_is_unchanged(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with kernel_hooks_disabled(tmp_path):
        pass
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["etc"]


def test_other_diversions_are_kept(tmp_path: Path) -> None:
    diversions = tmp_path / "var/lib/dpkg/diversions"
    diversions.parent.mkdir(parents=True)
    diversions.write_text("/bin/sh\n/bin/sh.distrib\ndash\n")
    created = disable_kernel_hooks(tmp_path)
    text = diversions.read_text()
    assert text.startswith("/bin/sh\n/bin/sh.distrib\ndash\n")
    assert len(text.splitlines()) == 3 * (1 + len(KERNEL_HOOKS))
    restore_kernel_hooks(tmp_path, created)
    assert diversions.read_text() == "/bin/sh\n/bin/sh.distrib\ndash\n"


def test_an_installed_hook_is_moved_aside_and_back(tmp_path: Path) -> None:
    hook = tmp_path / "etc/kernel/postinst.d/initramfs-tools"
    hook.parent.mkdir(parents=True)
    hook.write_text("real\n")
    created = disable_kernel_hooks(tmp_path)
    assert hook.read_text() == HOOK_STUB
    restore_kernel_hooks(tmp_path, created)
    assert hook.read_text() == "real\n"
