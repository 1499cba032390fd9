"""Locale=, LocaleMessages=, Keymap=, Timezone=, RootShell= (the systemd-firstboot settings) and
WithRecommends=: how they are read, what they write into a fake image root, and how each package
manager is told about recommended packages."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mkosi import build, firstboot
from mkosi.cache import build_key, settings_inputs
from mkosi.config import load_args
from mkosi.config.enums import Distribution, Verb
from mkosi.config.modern import parse_keymap, parse_locale, parse_root_shell, parse_timezone
from mkosi.config.settings import Args, Config, by_dest
from mkosi.context import Context, Phase
from mkosi.distributions.debian import Debian
from mkosi.distributions.registry import plugin
from mkosi.errors import ConfigError, MkosiError
from mkosi.installers import dnf, zypper
from mkosi.installers.apt.config import AptConfig
from mkosi.installers.apt.hostapt import _plan_key, setup_apt
from mkosi.installers.dnf import DnfConfig
from mkosi.installers.zypper import ZypperConfig
from mkosi.summary import not_implemented
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

TZIF = b"TZif2" + b"\0" * 40


def load(*argv: str) -> Config:
    _, configs = load_args([*argv, "summary"])
    assert len(configs) == 1
    return configs[0]


def ctx_for(root: Path, phase: Phase = Phase.final, **settings: object) -> Context:
    config = dataclasses.replace(Config(), **settings)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    return Context(Args(), config, root.parent, phase, root, None, root.parent / "staging")


def fake_root(tmp_path: Path) -> Path:
    """A small merged-/usr root: passwd, a shell, a zone file."""
    root = tmp_path / "root"
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    write(root / "usr/bin/sh", "#!/bin/true\n", 0o755)
    write(root / "usr/bin/bash", "#!/bin/true\n", 0o755)
    (root / "bin").symlink_to("usr/bin")
    zone = root / "usr/share/zoneinfo/Europe/Berlin"
    zone.parent.mkdir(parents=True)
    zone.write_bytes(TZIF)
    (root / "usr/share/zoneinfo/UTC").write_bytes(TZIF)
    return root


# ---- reading the settings ----

def test_settings_are_read_from_the_content_section(wd: Path) -> None:
    write(wd / "mkosi.conf", """
        [Content]
        Locale=de_DE.UTF-8
        LocaleMessages=C.UTF-8
        Keymap=de-latin1
        Timezone=Europe/Berlin
        RootShell=/bin/bash
        WithRecommends=yes
        """)
    c = load()
    assert (c.locale, c.locale_messages, c.keymap, c.timezone, c.root_shell) == \
        ("de_DE.UTF-8", "C.UTF-8", "de-latin1", "Europe/Berlin", "/bin/bash")
    assert c.with_recommends is True
    assert not_implemented(c) == {}, "summary no longer calls them not implemented"


def test_settings_from_the_command_line_and_defaults(wd: Path) -> None:
    c = load()
    assert (c.locale, c.locale_messages, c.keymap, c.timezone, c.root_shell) == (None,) * 5
    assert c.with_recommends is False
    c = load("--locale=en_US.UTF-8", "--locale-messages=en_GB.UTF-8", "--keymap=us", "--timezone=UTC",
             "--root-shell=/usr/bin/zsh", "--with-recommends")
    assert (c.locale, c.locale_messages, c.keymap, c.timezone, c.root_shell, c.with_recommends) == \
        ("en_US.UTF-8", "en_GB.UTF-8", "us", "UTC", "/usr/bin/zsh", True)
    assert load("--with-recommends=no").with_recommends is False


@pytest.mark.parametrize("key,value", [
    ("Locale", "en US"), ("Locale", "../etc"), ("Locale", "de_DE'x"), ("LocaleMessages", "a/b"),
    ("Keymap", "de;rm"), ("Keymap", ".."), ("Timezone", "Europe/../../etc/passwd"), ("Timezone", "/UTC"),
    ("Timezone", "Europe//Berlin"), ("RootShell", "bash"), ("RootShell", "/bin/ba:sh"), ("RootShell", "/bin/"),
    ("RootShell", "/usr/../bin/sh"),
])
def test_bad_values_name_the_file_line_and_setting(wd: Path, key: str, value: str) -> None:
    write(wd / "mkosi.conf", f"[Content]\n{key}={value}\n")
    with pytest.raises(ConfigError) as e:
        load()
    assert "mkosi.conf:2" in str(e.value) and key in str(e.value), str(e.value)


def test_parsers_accept_the_usual_names() -> None:
    assert parse_locale(" C.UTF-8 ") == "C.UTF-8"
    assert parse_locale("sr_RS.UTF-8@latin") == "sr_RS.UTF-8@latin"
    assert parse_keymap("de-latin1-nodeadkeys") == "de-latin1-nodeadkeys"
    assert parse_timezone("America/Argentina/Buenos_Aires") == "America/Argentina/Buenos_Aires"
    assert parse_timezone("Etc/GMT+5") == "Etc/GMT+5"
    assert parse_root_shell("/usr/bin/fish") == "/usr/bin/fish"


def test_only_with_recommends_shapes_the_cached_images() -> None:
    assert by_dest("with_recommends").cache
    for dest in ("locale", "locale_messages", "keymap", "timezone", "root_shell"):
        assert not by_dest(dest).cache, f"{dest} is applied after the cached image is taken"
    base = Config()
    cached = settings_inputs(base, only_cache=True)
    assert settings_inputs(dataclasses.replace(base, with_recommends=True), only_cache=True) != cached
    assert settings_inputs(dataclasses.replace(base, locale="C.UTF-8", timezone="UTC"), only_cache=True) == cached
    # ... but the output is rebuilt (-i) when one of them changes.
    args = Args(verb=Verb.build)
    assert build_key(args, dataclasses.replace(base, timezone="UTC")) != build_key(args, base)


# ---- the files they write ----

def test_locale_conf(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    firstboot.configure_locale(root, "de_DE.UTF-8", "en_US.UTF-8")
    assert (root / "etc/locale.conf").read_text() == "LANG=de_DE.UTF-8\nLC_MESSAGES=en_US.UTF-8\n"
    assert (root / "etc/locale.conf").stat().st_mode & 0o777 == 0o644
    # Other assignments stay; a message locale equal to the locale is not written.
    (root / "etc/locale.conf").write_text("# mine\nLANG=C\nLC_TIME=en_GB.UTF-8\nLC_MESSAGES=fr_FR.UTF-8\n")
    firstboot.configure_locale(root, "de_DE.UTF-8", "de_DE.UTF-8")
    assert (root / "etc/locale.conf").read_text() == "# mine\nLANG=de_DE.UTF-8\nLC_TIME=en_GB.UTF-8\n"
    firstboot.configure_locale(root, None, "fr_FR.UTF-8")
    assert (root / "etc/locale.conf").read_text() == \
        "# mine\nLANG=de_DE.UTF-8\nLC_TIME=en_GB.UTF-8\nLC_MESSAGES=fr_FR.UTF-8\n"


def test_vconsole_conf_keeps_the_font(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    firstboot.configure_keymap(root, "us")
    assert (root / "etc/vconsole.conf").read_text() == "KEYMAP=us\n"
    (root / "etc/vconsole.conf").write_text("KEYMAP=us\nFONT=eurlatgr\n")
    firstboot.configure_keymap(root, "de-latin1")
    assert (root / "etc/vconsole.conf").read_text() == "KEYMAP=de-latin1\nFONT=eurlatgr\n"


def test_localtime_is_a_relative_link_to_the_zone(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    (root / "etc/timezone").write_text("Etc/UTC\n")
    firstboot.configure_timezone(root, "Europe/Berlin")
    assert os.readlink(root / "etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin"
    assert (root / "etc/localtime").read_bytes() == TZIF
    assert (root / "etc/timezone").read_text() == "Europe/Berlin\n"
    # A plain file at /etc/localtime (a copy of a zone) is replaced as well; no /etc/timezone is made.
    (root / "etc/timezone").unlink()
    (root / "etc/localtime").unlink()
    (root / "etc/localtime").write_bytes(TZIF)
    firstboot.configure_timezone(root, "UTC")
    assert os.readlink(root / "etc/localtime") == "../usr/share/zoneinfo/UTC"
    assert not (root / "etc/timezone").exists()


def test_a_zone_the_image_lacks_is_a_clear_error(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    with pytest.raises(MkosiError, match="Timezone=Europe/Berln: the image has no /usr/share/zoneinfo/Europe/Berln") \
            as e:
        firstboot.configure_timezone(root, "Europe/Berln")
    assert "tzdata" in (e.value.hint or "")
    assert not (root / "etc/localtime").exists()
    (root / "usr/share/zoneinfo/Broken").write_text("not a zone\n")
    with pytest.raises(MkosiError, match="no time zone file"):
        firstboot.configure_timezone(root, "Broken")


def test_a_zone_link_to_the_host_is_not_taken_for_the_image(tmp_path: Path) -> None:
    # The host's zone file must not make a zone the image lacks look present.
    root = fake_root(tmp_path)
    host_zone = tmp_path / "host-zone"
    host_zone.write_bytes(TZIF)
    (root / "usr/share/zoneinfo/Escape").symlink_to(host_zone)
    with pytest.raises(MkosiError, match="the image has no"):
        firstboot.configure_timezone(root, "Escape")


def test_root_shell(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "etc/passwd").chmod(0o644)
    firstboot.configure_root_shell(root, "/bin/bash")
    assert (root / "etc/passwd").read_text() == \
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    assert (root / "etc/passwd").stat().st_mode & 0o777 == 0o644


def test_root_shell_without_a_root_entry_adds_one(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "etc/passwd").write_text("daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    firstboot.configure_root_shell(root, "/usr/bin/sh")
    assert (root / "etc/passwd").read_text().splitlines()[0] == "root:x:0:0:root:/root:/usr/bin/sh"


def test_a_shell_the_image_lacks_is_a_clear_error(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    before = (root / "etc/passwd").read_text()
    with pytest.raises(MkosiError, match="RootShell=/bin/zsh: the image has no executable /bin/zsh"):
        firstboot.configure_root_shell(root, "/bin/zsh")
    write(root / "usr/bin/notexec", "x", 0o644)
    with pytest.raises(MkosiError, match="no executable"):
        firstboot.configure_root_shell(root, "/usr/bin/notexec")
    # A link to a shell of the host does not count: it is resolved inside the image.
    host_shell = write(tmp_path / "host/bin/hostsh", "#!/bin/true\n", 0o755)
    (root / "usr/bin/hostsh").symlink_to(host_shell)
    with pytest.raises(MkosiError, match="no executable"):
        firstboot.configure_root_shell(root, "/usr/bin/hostsh")
    assert (root / "etc/passwd").read_text() == before


def test_writes_never_follow_links_onto_the_host(tmp_path: Path) -> None:
    outside = tmp_path / "host"
    write(outside / "etc/locale.conf", "LANG=host\n")
    write(outside / "etc/passwd", "root:x:0:0:root:/root:/bin/host\n")
    root = fake_root(tmp_path)
    # A link where the file goes is replaced, never written through ...
    (root / "etc/locale.conf").symlink_to(outside / "etc/locale.conf")
    (root / "etc/vconsole.conf").symlink_to("../../host/etc/vconsole.conf")
    (root / "etc/passwd").unlink()
    (root / "etc/passwd").symlink_to(outside / "etc/passwd")
    ctx = ctx_for(root, locale="C.UTF-8", keymap="us", timezone="UTC", root_shell="/bin/bash")
    firstboot.configure_firstboot(ctx)
    assert (outside / "etc/locale.conf").read_text() == "LANG=host\n"
    assert not (outside / "etc/vconsole.conf").exists()
    assert (outside / "etc/passwd").read_text() == "root:x:0:0:root:/root:/bin/host\n"
    assert not (root / "etc/locale.conf").is_symlink() and (root / "etc/locale.conf").read_text() == "LANG=C.UTF-8\n"
    assert (root / "etc/vconsole.conf").read_text() == "KEYMAP=us\n"
    # ... and an absolute link to the host's passwd is read as the image sees it (a missing file).
    assert (root / "etc/passwd").read_text() == "root:x:0:0:root:/root:/bin/bash\n"


def test_an_absolute_etc_link_resolves_inside_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "host-etc"
    outside.mkdir()
    root = tmp_path / "root"
    fake = fake_root(tmp_path)
    assert fake == root
    (root / "etc/passwd").rename(root / "passwd")
    (root / "etc").rmdir()
    (root / "real-etc").mkdir()
    (root / "passwd").rename(root / "real-etc/passwd")
    (root / "etc").symlink_to("/real-etc")
    firstboot.configure_firstboot(ctx_for(root, locale="C.UTF-8", timezone="UTC", root_shell="/bin/bash"))
    assert (root / "real-etc/locale.conf").read_text() == "LANG=C.UTF-8\n"
    assert os.readlink(root / "real-etc/localtime") == "../usr/share/zoneinfo/UTC"
    assert (root / "real-etc/passwd").read_text().startswith("root:x:0:0:root:/root:/bin/bash\n")
    assert list(outside.iterdir()) == [] and not Path("/real-etc").exists()


def test_credentials_are_stored_for_first_boot(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    ctx = ctx_for(root, locale="de_DE.UTF-8", locale_messages="C.UTF-8", keymap="de", timezone="Europe/Berlin",
                  root_shell="/bin/bash")
    firstboot.configure_firstboot(ctx)
    store = root / "usr/lib/credstore"
    assert {p.name: p.read_text() for p in store.iterdir()} == {
        "firstboot.locale": "de_DE.UTF-8", "firstboot.locale-messages": "C.UTF-8", "firstboot.keymap": "de",
        "firstboot.timezone": "Europe/Berlin", "passwd.shell.root": "/bin/bash"}
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in store.iterdir())


def test_nothing_is_written_without_the_settings(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    firstboot.configure_firstboot(ctx_for(root))
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before


def test_applied_to_the_final_image_after_the_postinst_script(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    order: list[str] = []
    for name in ("copy_skeleton_trees", "install_distribution", "verify_architecture", "copy_extra_trees",
                 "run_prepare_script", "run_postinst_script", "run_finalize_script", "copy_build_results",
                 "copy_build_sources", "configure_firstboot", "remove_packages", "remove_files", "write_manifest",
                 "clean_package_metadata", "reproducibility_cleanup", "write_extension_release"):
        monkeypatch.setattr(build, name, lambda ctx, name=name: order.append(name))
    monkeypatch.setattr(build, "install_runtime_generator", lambda root: None)
    build.build_phase(ctx_for(tmp_path / "final", locale="C.UTF-8"))
    i = order.index
    assert i("copy_extra_trees") < i("run_postinst_script") < i("configure_firstboot") < i("remove_packages") \
        < i("run_finalize_script")
    order.clear()
    build.build_phase(ctx_for(tmp_path / "build", Phase.build, locale="C.UTF-8"))
    assert "configure_firstboot" not in order


# ---- WithRecommends= and the package managers ----

def apt_config(tmp_path: Path, **kw: object) -> AptConfig:
    return AptConfig(root=tmp_path / "root", workspace=tmp_path / "ws", distribution="debian", release="bookworm",
                     mirror="http://deb.debian.org/debian", components=["main"], extra_repositories=[],
                     architecture="amd64", **kw)  # type: ignore[arg-type]


def test_apt_installs_recommends_when_asked(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"k")
    status = tmp_path / "status"
    status.write_text("")
    without = setup_apt(apt_config(tmp_path / "a"), status, keyring).conf.read_text()
    with_ = setup_apt(apt_config(tmp_path / "b", with_recommends=True), status, keyring).conf.read_text()
    assert 'APT::Install-Recommends "false";' in without
    assert 'APT::Install-Recommends "true";' in with_
    assert 'APT::Install-Suggests "false";' in with_
    # A resolution kept in the package cache is not reused for the other setting (same directories).
    first = _plan_key(setup_apt(apt_config(tmp_path / "c"), status, keyring), "install", ["systemd"])
    assert _plan_key(setup_apt(apt_config(tmp_path / "c"), status, keyring), "install", ["systemd"]) == first
    again = setup_apt(apt_config(tmp_path / "c", with_recommends=True), status, keyring)
    assert _plan_key(again, "install", ["systemd"]) != first


def test_debian_passes_with_recommends_to_apt(tmp_path: Path) -> None:
    debian = Debian()
    config = dataclasses.replace(Config(), distribution=Distribution.debian, release="bookworm")
    assert debian.apt_config(dataclasses.replace(config, with_recommends=True)).with_recommends is True
    assert debian.apt_config(config).with_recommends is False


def test_dnf_weak_dependencies(tmp_path: Path) -> None:
    def cfg(with_recommends: bool) -> DnfConfig:
        return DnfConfig(root=tmp_path / "root", workspace=tmp_path / "ws", release="43", architecture="x86_64",
                         repos=(), with_recommends=with_recommends)

    assert "--setopt=install_weak_deps=0" in dnf.dnf_argv(cfg(False), "install", ["x"])
    argv = dnf.dnf_argv(cfg(True), "install", ["x"])
    assert "--setopt=install_weak_deps=1" in argv and "--setopt=install_weak_deps=0" not in argv


def test_zypper_recommends(tmp_path: Path) -> None:
    off = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=())
    on = ZypperConfig(root=tmp_path / "root", workspace=tmp_path / "ws", repos=(), with_recommends=True)
    assert "--no-recommends" in zypper.zypper_argv(off, "install", ["x"])
    assert "solver.onlyRequires = true" in zypper.zypp_conf_text(off)
    argv = zypper.zypper_argv(on, "install", ["x"])
    assert "--recommends" in argv and "--no-recommends" not in argv
    assert "solver.onlyRequires = false" in zypper.zypp_conf_text(on)


def test_the_build_gives_every_installer_with_recommends(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), with_recommends=True)
    ctx = Context(Args(), config, tmp_path / "ws", Phase.final, tmp_path / "root", None, tmp_path / "staging")
    assert DnfConfig.for_build(ctx, release="43", architecture="x86_64", repos=()).with_recommends
    assert ZypperConfig.for_build(ctx, repos=()).with_recommends
    assert not ZypperConfig.for_build(dataclasses.replace(ctx, config=Config()), repos=()).with_recommends


def test_pacman_says_it_has_no_recommends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(Config(), distribution=Distribution.arch, with_recommends=True)
    ctx = Context(Args(), config, tmp_path / "ws", Phase.final, tmp_path / "root", None, tmp_path / "staging")
    monkeypatch.setattr(type(plugin(Distribution.arch)), "install", lambda self, ctx, pkgs: None)
    build.install_distribution(ctx)
    err = capsys.readouterr()
    assert "pacman has no recommended dependencies" in err.out + err.err
