"""The small configuration steps of the build pipeline, run against a fake image root."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mkosi import build
from mkosi.config.enums import SplitArtifact, Verity
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.output import artifacts


def ctx_for(root: Path, phase: Phase = Phase.final, **settings: object) -> Context:
    config = dataclasses.replace(Config(), **settings)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    return Context(Args(), config, root.parent, phase, root, None, root.parent / "staging")


def test_hostname(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path / "root", hostname="box")
    build.configure_hostname(ctx)
    assert (ctx.root / "etc/hostname").read_text() == "box\n"


def test_os_release_gets_image_id_and_version_through_symlink(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path / "root", image_id="web", image_version="7.8")
    (ctx.root / "usr/lib").mkdir(parents=True)
    (ctx.root / "usr/lib/os-release").write_text('ID=debian\nIMAGE_ID=old\n')
    (ctx.root / "etc").mkdir()
    (ctx.root / "etc/os-release").symlink_to("../usr/lib/os-release")
    build.configure_os_release(ctx)
    text = (ctx.root / "etc/os-release").read_text()
    assert text == "ID=debian\nIMAGE_ID=web\nIMAGE_VERSION=7.8\n"
    assert (ctx.root / "usr/lib/os-release").read_text() == "ID=debian\nIMAGE_ID=old\n"


def test_machine_id_empty_by_default_and_set_when_asked(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path / "a")
    (ctx.root / "etc").mkdir()
    (ctx.root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    build.configure_machine_id(ctx)
    assert (ctx.root / "etc/machine-id").read_text() == ""
    ctx = ctx_for(tmp_path / "b", machine_id="ffffffffffffffffffffffffffffffff")
    build.configure_machine_id(ctx)
    assert (ctx.root / "etc/machine-id").read_text() == "ffffffffffffffffffffffffffffffff\n"


def shadow_root_field(root: Path) -> str:
    line = next(x for x in (root / "etc/shadow").read_text().splitlines() if x.startswith("root:"))
    return line.split(":")[1]


@pytest.fixture
def shadow_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    return root


def test_root_locked_by_default(shadow_root: Path) -> None:
    build.configure_root_password(ctx_for(shadow_root))
    assert shadow_root_field(shadow_root) == "!*"


def test_root_password_is_hashed(shadow_root: Path) -> None:
    build.configure_root_password(ctx_for(shadow_root, password="s3cret"))
    field = shadow_root_field(shadow_root)
    assert field.startswith("$6$") and "s3cret" not in field
    assert os.stat(shadow_root / "etc/shadow").st_mode & 0o777 == 0o640


def test_hashed_password_written_literally(shadow_root: Path) -> None:
    build.configure_root_password(ctx_for(shadow_root, password="$6$abc$def", password_is_hashed=True))
    assert shadow_root_field(shadow_root) == "$6$abc$def"


def test_autologin(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path / "root", autologin=True)
    (ctx.root / "etc/pam.d").mkdir(parents=True)
    (ctx.root / "etc/pam.d/login").write_text("auth required pam_unix.so\n")
    build.configure_autologin(ctx)
    units = ctx.root / "etc/systemd/system"
    for unit, tty in (("getty@tty1.service", " - $TERM"), ("serial-getty@ttyS0.service", " - $TERM"),
                      ("container-getty@0.service", "pts/%I"), ("console-getty.service", "console")):
        text = (units / f"{unit}.d/autologin.conf").read_text()
        assert "ExecStart=\n" in text and "--autologin root" in text and tty in text
        assert "-o '-p -f -- \\\\u'" in text
    assert (ctx.root / "etc/pam.d/login").read_text().startswith("auth sufficient pam_succeed_if.so")


def test_remove_files(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path / "root", remove_files=["/usr/share/bug", "/etc/*.bak"])
    (ctx.root / "usr/share/bug/x").mkdir(parents=True)
    (ctx.root / "etc").mkdir()
    (ctx.root / "etc/a.bak").write_text("")
    (ctx.root / "etc/keep").write_text("")
    build.remove_files(ctx)
    assert not (ctx.root / "usr/share/bug").exists()
    assert not (ctx.root / "etc/a.bak").exists()
    assert (ctx.root / "etc/keep").exists()


def test_clamp_mtimes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    os.utime(f, (2_000_000_000, 2_000_000_000))
    build.clamp_mtimes(tmp_path, 1_700_000_000)
    assert f.stat().st_mtime == 1_700_000_000


def test_checksums_leave_out_the_private_ssh_key(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path / "root", checksum=True, ssh=True, output=tmp_path / "out/image.raw",
                  output_dir=tmp_path / "out")
    ctx.staging.mkdir()
    for name in ("image.raw", "id_ed25519", "id_ed25519.pub", "image.manifest"):
        (ctx.staging / name).write_text(name)
    [(_, sums)] = build.write_checksums(ctx, artifacts.collect(ctx))
    listed = [line.split(" *", 1)[1] for line in sums.read_text().splitlines()]
    assert listed == ["id_ed25519.pub", "image.manifest", "image.raw"]


def test_base_packages_conditional_uses_rich_dependencies_on_rpm(tmp_path: Path) -> None:
    from mkosi.config.enums import BasePackages, BootProtocol, Distribution

    ctx = ctx_for(tmp_path / "root", distribution=Distribution.fedora, release="40", bootable=True,
                  boot_protocols=[BootProtocol.uefi], ssh=True, packages=["systemd", "vim"],
                  base_packages=BasePackages.conditional)
    pkgs = build.packages_for(ctx)
    # Nothing is added unconditionally: no kernel, no dracut, no sshd; only extensions of what is listed.
    assert "kernel-core" not in pkgs and "dracut" not in pkgs and "openssh-server" not in pkgs
    assert "(systemd-udev if systemd)" in pkgs
    assert "(systemd-boot-unsigned if systemd)" in pkgs
    assert "(systemd-networkd if systemd)" in pkgs
    assert pkgs[-2:] == ["systemd", "vim"]
    yes = build.packages_for(ctx_for(tmp_path / "yes", distribution=Distribution.fedora, release="40",
                                     bootable=True, boot_protocols=[BootProtocol.uefi]))
    assert "kernel-core" in yes and not any(p.startswith("(") for p in yes)


def test_base_packages_conditional_without_rich_dependencies(tmp_path: Path) -> None:
    from mkosi.config.enums import BasePackages, Distribution

    ctx = ctx_for(tmp_path / "root", distribution=Distribution.debian, release="bookworm", bootable=True,
                  packages=["vim"], base_packages=BasePackages.conditional)
    # apt has no boolean dependencies: only the listed packages, like BasePackages=no.
    assert build.packages_for(ctx) == ["vim"]


def test_split_artifacts_include_the_verity_signature(tmp_path: Path) -> None:
    from mkosi.output.diskimage import split_artifacts

    out = tmp_path / "out"
    ctx = ctx_for(tmp_path / "root", split_artifacts=[SplitArtifact.partitions], verity=Verity.signed,
                  output=out / "image.raw", output_dir=out)
    ctx.staging.mkdir()
    images = {}
    for role, content in (("root", b"root fs"), ("root-verity", b"hashes"), ("root-verity-sig", b'{"rootHash":1}')):
        images[role] = tmp_path / f"{role}.img"
        images[role].write_bytes(content)
    split_artifacts(ctx, images, None)
    assert sorted(p.name for p in ctx.staging.iterdir()) == ["image.root.raw", "image.root.roothash.p7s",
                                                             "image.root.verity"]
    assert (ctx.staging / "image.root.roothash.p7s").read_bytes() == b'{"rootHash":1}'


def test_configuration_steps_never_write_through_links_onto_the_host(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc/hostname").write_text("host\n")
    (outside / "dbus").mkdir()
    (outside / "dbus/machine-id").write_text("host-id\n")
    ctx = ctx_for(tmp_path / "root", hostname="box", image_id="img")
    (ctx.root / "etc").mkdir()
    (ctx.root / "etc/hostname").symlink_to(f"{outside}/etc/hostname")
    (ctx.root / "etc/os-release").symlink_to(f"{outside}/etc/os-release")
    (ctx.root / "var/lib").mkdir(parents=True)
    (ctx.root / "var/lib/dbus").symlink_to(f"{outside}/dbus")
    build.configure_hostname(ctx)
    build.configure_os_release(ctx)
    build.configure_machine_id(ctx)
    assert (outside / "etc/hostname").read_text() == "host\n"
    assert not (outside / "etc/os-release").exists()
    assert (outside / "dbus/machine-id").read_text() == "host-id\n"
    inside = ctx.root.resolve() / str(outside).lstrip("/")
    assert (inside / "etc/hostname").read_text() == "box\n"
    assert "IMAGE_ID=img" in (ctx.root / "etc/os-release").read_text()


def test_a_full_disk_during_the_move_leaves_no_partial_output(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil

    from mkosi.errors import MkosiError

    src, outdir = tmp_path / "staging/image", tmp_path / "out"
    (src / "etc").mkdir(parents=True)
    for i in range(50):
        (src / f"etc/f{i}").write_text("x" * 100)
    outdir.mkdir()
    (outdir / "image").mkdir()
    (outdir / "image/previous").write_text("good\n")

    real_rename = os.rename

    def cross_device(a: object, b: object) -> None:
        if Path(str(a)) == src:  # the staging directory is on another file system
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(a, b)  # type: ignore[arg-type]

    real_copyfile = shutil.copyfile
    copied: list[object] = []

    def filling_copyfile(a: str, b: str, *, follow_symlinks: bool = True) -> str:
        if len(copied) >= 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(b)
        return real_copyfile(a, b, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "rename", cross_device)
    monkeypatch.setattr(shutil, "copyfile", filling_copyfile)
    with pytest.raises(MkosiError) as e:
        build.replace_path(src, outdir / "image")
    message = str(e.value)
    assert message == f"no space left on the file system of {outdir} for image"
    assert "\n" not in message and len(message) < 200
    assert sorted(p.name for p in outdir.iterdir()) == ["image"]          # no partial copy left
    assert (outdir / "image/previous").read_text() == "good\n"            # the previous output stays
