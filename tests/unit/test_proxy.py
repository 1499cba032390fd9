"""ProxyUrl=, ProxyExclude=, ProxyPeerCertificate=, ProxyClientCertificate=, ProxyClientKey=: parsing, the
environment of the build's commands and scripts, apt's and dnf's configuration, and the client key kept
out of logs, the summary and cache keys."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import mkosi.installers.base
from mkosi import scripts
from mkosi.cache import build_key, settings_inputs
from mkosi.config import load_args
from mkosi.config.enums import Distribution
from mkosi.config.settings import Args, Config, by_dest
from mkosi.context import Context, Phase
from mkosi.distributions.registry import plugin
from mkosi.errors import ConfigError
from mkosi.installers import emerge
from mkosi.installers.apt.hostapt import _apt_settings, _plan_key, setup_apt
from mkosi.installers.dnf import DnfConfig, dnf_argv, dnf_conf_text, dnf_sandbox, setup
from mkosi.proxy import PROXY_SETTINGS, Proxy, parse_proxy_exclude, parse_proxy_url, redacted_url
from mkosi.summary import summary_dict, summary_json
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

URL = "http://proxy.example:3128"


def load(*argv: str, verb: str = "summary") -> Config:
    _, configs = load_args([*argv, verb])
    return configs[-1]


def context(tmp_path: Path, **settings: Any) -> Context:
    config = dataclasses.replace(Config(), **settings)
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "staging").mkdir(exist_ok=True)
    return Context(Args(), config, tmp_path, Phase.final, root, None, tmp_path / "staging")


@pytest.fixture(autouse=True)
def _warn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mkosi.installers.base, "_warned", [])


# ---- parsing ----

def test_proxy_url_parsing() -> None:
    assert parse_proxy_url("proxy:3128") == "http://proxy:3128"
    assert parse_proxy_url(" https://user:pw@proxy.example:8443/ ") == "https://user:pw@proxy.example:8443/"
    assert parse_proxy_url("socks5h://10.0.0.1:1080") == "socks5h://10.0.0.1:1080"
    for bad in ("", "http://", "http://a b", "http:///path"):
        with pytest.raises(ValueError, match="invalid proxy URL"):
            parse_proxy_url(bad)


def test_proxy_exclude_parsing() -> None:
    for ok in ("localhost", ".example.com", "*.example.com", "10.0.0.0/8", "[::1]", "*"):
        assert parse_proxy_exclude(ok) == ok
    with pytest.raises(ValueError, match="invalid host name"):
        parse_proxy_exclude("a;b")


def test_settings_are_read_from_the_configuration(wd: Path) -> None:
    write(wd / "mkosi.conf", f"""
        [Build]
        ProxyUrl={URL}
        ProxyExclude=localhost,.internal.example
        ProxyExclude=10.0.0.0/8
        ProxyPeerCertificate=proxy-ca.pem
        ProxyClientCertificate=client.pem
        ProxyClientKey=client.key
        """)
    c = load()
    assert c.proxy_url == URL
    assert c.proxy_exclude == ["localhost", ".internal.example", "10.0.0.0/8"]
    assert (c.proxy_peer_certificate, c.proxy_client_certificate, c.proxy_client_key) == (
        wd / "proxy-ca.pem", wd / "client.pem", wd / "client.key")
    assert load("--proxy-url=cache:3142").proxy_url == "http://cache:3142"
    with pytest.raises(ConfigError, match=r"mkosi\.conf:3: ProxyUrl: invalid proxy URL"):
        write(wd / "mkosi.conf", "[Build]\n\nProxyUrl=http://\n")
        load()


def test_the_summary_hides_the_key_and_the_password(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Build]\nProxyUrl=http://me:s3cret@proxy:3128\nProxyClientKey=/etc/proxy.key\n")
    c = load()
    data = summary_dict(Args(), c)
    assert data["Build"]["ProxyUrl"] == "http://me:***@proxy:3128"
    assert data["Build"]["ProxyClientKey"] == "(set)"
    assert not {key for key in data["NotImplemented"] if key.startswith("Proxy")}
    text = summary_json(Args(), [c])
    assert "s3cret" not in text and "/etc/proxy.key" not in text
    assert all(by_dest(d).status is None for d in PROXY_SETTINGS)
    assert redacted_url(URL) == URL and redacted_url(None) is None
    assert redacted_url("http://me@proxy") == "http://me@proxy"


def test_the_certificates_must_exist_for_a_build(wd: Path) -> None:
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=fedora\n[Build]\nProxyClientKey=missing.key\n")
    load()   # summary does not need it
    with pytest.raises(ConfigError, match=r"mkosi.conf:4: ProxyClientKey: '.*missing.key' does not exist"):
        load(verb="build")
    write(wd / "missing.key", "KEY\n", mode=0o600)
    assert load(verb="build").proxy_client_key == wd / "missing.key"


# ---- what the commands are told ----

def test_proxy_from_config_and_its_environment(tmp_path: Path) -> None:
    assert Proxy.from_config(Config()) is None
    config = dataclasses.replace(Config(), proxy_url=URL, proxy_exclude=["localhost", ".example.com"],
                                 proxy_client_certificate=tmp_path / "c.pem")
    proxy = Proxy.from_config(config)
    assert proxy is not None and proxy.client_key == tmp_path / "c.pem"   # the key defaults to the certificate
    assert proxy.environment() == {
        "http_proxy": URL, "https_proxy": URL, "HTTP_PROXY": URL, "HTTPS_PROXY": URL,
        "no_proxy": "localhost,.example.com", "NO_PROXY": "localhost,.example.com"}
    only_exclude = Proxy.from_config(dataclasses.replace(Config(), proxy_exclude=["intranet"]))
    assert only_exclude is not None and only_exclude.environment() == {"no_proxy": "intranet", "NO_PROXY": "intranet"}


def test_excluded_hosts_match_as_no_proxy_does() -> None:
    proxy = Proxy(url=URL, exclude=("localhost", ".example.com", "*.corp", "intranet.org"))
    assert proxy.excluded("localhost") and proxy.excluded("www.example.com") and proxy.excluded("example.com")
    assert proxy.excluded("a.b.corp") and proxy.excluded("INTRANET.org.")
    assert not proxy.excluded("example.org") and not proxy.excluded("notintranet.org")
    assert Proxy(exclude=("*",)).excluded("anything")


def test_every_build_command_and_script_gets_the_variables(tmp_path: Path) -> None:
    ctx = context(tmp_path, proxy_url=URL, proxy_exclude=["localhost"],
                  environment=["https_proxy=http://override:1", "OTHER=1"])
    env = ctx.sandbox.environment
    assert env["http_proxy"] == URL and env["no_proxy"] == "localhost"
    got = scripts.script_environment(ctx)
    assert got["http_proxy"] == got["HTTP_PROXY"] == URL and got["NO_PROXY"] == "localhost"
    assert got["https_proxy"] == "http://override:1"     # Environment= wins
    assert got["OTHER"] == "1"
    # Without proxy settings nothing is added (mkosi's own variables are passed on as they are).
    plain = context(tmp_path / "plain")
    assert plain.sandbox.environment == {} and "http_proxy" not in scripts.script_environment(plain)


def test_a_finalize_script_sees_the_proxy(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    script = tmp_path / "mkosi.finalize"
    script.write_text(f'#!/bin/sh\nprintf "%s %s" "$http_proxy" "$no_proxy" > {out}\n')
    script.chmod(0o755)
    scripts.run_finalize_script(context(tmp_path, proxy_url=URL, proxy_exclude=["localhost"],
                                        finalize_script=script))
    assert out.read_text() == f"{URL} localhost"


def _dnf_config(ctx: Context) -> DnfConfig:
    return DnfConfig.for_build(ctx, release="43", architecture="x86_64", repos=())


def test_dnf_gets_the_proxy_and_its_certificates_in_dnf_conf(tmp_path: Path) -> None:
    ca, cert, key = (write(tmp_path / n, "x\n") for n in ("ca.pem", "client.pem", "client.key"))
    ctx = context(tmp_path, proxy_url="http://me:pw@proxy:3128", proxy_exclude=["mirror.local"],
                  proxy_peer_certificate=ca, proxy_client_certificate=cert, proxy_client_key=key)
    cfg = _dnf_config(ctx)
    assert cfg.proxy is not None
    conf = dnf_conf_text(cfg)
    assert "[main]\n" in conf
    for line in ("proxy=http://me:pw@proxy:3128", f"proxy_sslcacert={ca}", f"proxy_sslclientcert={cert}",
                 f"proxy_sslclientkey={key}"):
        assert line in conf.splitlines()
    # The command line (what the log shows) has neither the password nor the key.
    argv = " ".join(dnf_argv(cfg, "install", ["bash"]))
    assert "pw@" not in argv and str(key) not in argv and "--setopt=proxy" not in argv
    # dnf (through libcurl) reads no_proxy from its environment.
    env = dnf_sandbox(cfg).environment
    assert env["no_proxy"] == "mirror.local" and env["https_proxy"] == "http://me:pw@proxy:3128"
    setup(cfg)
    written = cfg.conf_dir / "dnf.conf"
    assert written.read_text() == conf and written.stat().st_mode & 0o777 == 0o600


def test_dnf_key_defaults_to_the_client_certificate(tmp_path: Path) -> None:
    cert = write(tmp_path / "both.pem", "x\n")
    conf = dnf_conf_text(_dnf_config(context(tmp_path, proxy_client_certificate=cert)))
    assert f"proxy_sslclientkey={cert}" in conf.splitlines() and "proxy=" not in conf
    assert "proxy" not in dnf_conf_text(_dnf_config(context(tmp_path / "none"))).split("[main]")[1]


def test_apt_gets_the_proxy_and_direct_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = context(tmp_path, distribution=Distribution.debian, release="bookworm", proxy_url=URL,
                  proxy_exclude=["deb.local", ".corp.example", "10.0.0.0/8"],
                  proxy_peer_certificate=tmp_path / "ca.pem")
    cfg = plugin(Distribution.debian).apt_config(ctx.config, ctx)  # type: ignore[attr-defined]
    settings = _apt_settings(cfg, tmp_path / "ws", tmp_path / "base", tmp_path / "status")
    assert settings["Acquire::http::Proxy"] == URL and settings["Acquire::https::Proxy"] == URL
    assert settings["Acquire::http::Proxy::deb.local"] == "DIRECT"
    assert settings["Acquire::https::Proxy::corp.example"] == "DIRECT"
    assert not any("10.0.0.0" in k for k in settings)
    assert cfg.sandbox.environment["no_proxy"] == "deb.local,.corp.example,10.0.0.0/8"
    # apt takes no certificates for the proxy: the build says so, once.
    err = capsys.readouterr().err
    assert "only used by dnf" in err
    plugin(Distribution.debian).apt_config(ctx.config, ctx)  # type: ignore[attr-defined]
    assert "only used by dnf" not in capsys.readouterr().err
    plain = plugin(Distribution.debian).apt_config(Config())  # type: ignore[attr-defined]
    assert not any("Proxy" in k for k in _apt_settings(plain, tmp_path, tmp_path, tmp_path / "s"))


def test_dnf_takes_the_certificates_without_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _dnf_config(context(tmp_path, proxy_peer_certificate=tmp_path / "ca.pem"))
    assert "only used by dnf" not in capsys.readouterr().err


def test_gentoo_downloads_and_chroot_use_the_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Proxy(url=URL, exclude=("distfiles.local",))

    def proxies(url: str, given: Proxy | None = proxy) -> list[dict[str, str]]:
        handlers = getattr(emerge.url_opener(url, given), "handlers")  # noqa: B009  (not in typeshed)
        return [getattr(h, "proxies") for h in handlers if isinstance(h, urllib.request.ProxyHandler)]  # noqa: B009

    assert proxies("https://distfiles.gentoo.org/x") == [{"http": URL, "https": URL}]
    assert proxies("http://distfiles.local/x") == []        # a direct connection, whatever mkosi's environment says
    monkeypatch.setenv("https_proxy", "http://from-environment:1")
    assert [p["https"] for p in proxies("https://distfiles.gentoo.org/x", None)] == ["http://from-environment:1"]
    cfg = emerge.EmergeConfig(root=tmp_path, workspace=tmp_path, mirror="m", architecture="amd64", proxy=proxy)
    env = emerge.chroot_sandbox(cfg).environment
    assert env["http_proxy"] == URL and env["no_proxy"] == "distfiles.local" and env["HOME"] == "/root"


# ---- no part of cache keys ----

def test_proxy_settings_are_no_input_of_caches(tmp_path: Path) -> None:
    key = write(tmp_path / "client.key", "SECRET\n")
    plain = dataclasses.replace(Config(), output=tmp_path / "image.raw", output_dir=tmp_path)
    proxied = dataclasses.replace(plain, proxy_url="http://u:pw@proxy:3128", proxy_exclude=["x"],
                                  proxy_client_key=key, proxy_client_certificate=key)
    for only_cache in (True, False):
        inputs = settings_inputs(proxied, only_cache=only_cache)
        assert not set(PROXY_SETTINGS) & set(inputs)
        assert "pw@" not in json.dumps(inputs, default=str) and str(key) not in json.dumps(inputs, default=str)
    assert build_key(Args(), proxied) == build_key(Args(), plain)


def test_apt_resolutions_do_not_depend_on_the_proxy(tmp_path: Path) -> None:
    keyring = write(tmp_path / "debian-archive-keyring.gpg", "key\n")
    status = write(tmp_path / "status", "")
    keys = []
    for name, proxy in (("plain", None), ("proxied", Proxy(url=URL, exclude=("deb.local",)))):
        ctx = context(tmp_path / name, distribution=Distribution.debian, release="bookworm")
        cfg = dataclasses.replace(plugin(Distribution.debian).apt_config(ctx.config, ctx),  # type: ignore[attr-defined]
                                  proxy=proxy)
        apt = setup_apt(cfg, status, keyring)
        assert ("Acquire::http::Proxy" in apt.conf.read_text()) == (proxy is not None)
        keys.append(_plan_key(apt, "install", ["bash"]))
    assert keys[0] == keys[1]
