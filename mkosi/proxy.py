"""ProxyUrl=, ProxyExclude= and the proxy's certificates: what the build's tools are told.

Every command of a build (package managers, the scripts, the downloads of mkosi itself) gets the usual
variables (http_proxy, https_proxy, no_proxy and their upper-case twins). apt and dnf are also configured
explicitly: apt in its apt.conf (Acquire::http(s)::Proxy, excluded hosts DIRECT), dnf in its dnf.conf
(proxy=, and the certificates: proxy_sslcacert=, proxy_sslclientcert=, proxy_sslclientkey=), which is
where the manual says the certificates go; no other tool takes them.

The client key is a secret: its path is only ever written to dnf.conf in the build's workspace, never to
a command line, a log or the summary. A password in the proxy URL is not shown either (`redacted_url`).
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from mkosi.config.settings import Config

# The variables that carry the proxy; both spellings, since tools disagree about which one they read.
URL_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
EXCLUDE_VARIABLES = ("no_proxy", "NO_PROXY")
PROXY_VARIABLES = (*URL_VARIABLES, *EXCLUDE_VARIABLES)

# The settings (Config fields): how the build reaches the network, not what it makes, so no part of a cache
# key or of the inputs of a build.
PROXY_SETTINGS = ("proxy_url", "proxy_exclude", "proxy_peer_certificate", "proxy_client_certificate",
                  "proxy_client_key")

_HOST = re.compile(r"[A-Za-z0-9.:\[\]/*_-]+")


def parse_proxy_url(value: str) -> str:
    """A proxy URL; without a scheme (`proxy:3128`) it is an HTTP proxy."""
    v = value.strip()
    if not v or any(c.isspace() for c in v):
        raise ValueError(f"invalid proxy URL '{value}'")
    if "://" not in v:
        v = "http://" + v
    parsed = urllib.parse.urlsplit(v)
    if not parsed.scheme or not parsed.hostname:
        raise ValueError(f"invalid proxy URL '{value}', expected SCHEME://HOST[:PORT]")
    return v


def parse_proxy_exclude(value: str) -> str:
    """A host name, domain (.example.com), address or network reached without the proxy."""
    v = value.strip()
    if not v or not _HOST.fullmatch(v):
        raise ValueError(f"invalid host name '{value}'")
    return v


def redacted_url(url: Optional[str]) -> Optional[str]:
    """The URL with the password of its user part replaced (what summary shows)."""
    if url is None:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    user = parsed.username or ""
    host = parsed.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"{user}:***@{host}"))


@dataclasses.dataclass(frozen=True)
class Proxy:
    url: Optional[str] = None
    exclude: tuple[str, ...] = ()
    peer_certificate: Optional[Path] = None
    client_certificate: Optional[Path] = None
    client_key: Optional[Path] = None

    @classmethod
    def from_config(cls, config: Config) -> Optional[Proxy]:
        """The proxy settings of an image, or None when none is set. The client key defaults to the
        client certificate's file (a PEM file holding both)."""
        proxy = cls(url=config.proxy_url, exclude=tuple(config.proxy_exclude),
                    peer_certificate=config.proxy_peer_certificate,
                    client_certificate=config.proxy_client_certificate,
                    client_key=config.proxy_client_key or config.proxy_client_certificate)
        return None if proxy == cls() else proxy

    @property
    def has_certificates(self) -> bool:
        return any(p is not None for p in (self.peer_certificate, self.client_certificate, self.client_key))

    def environment(self) -> dict[str, str]:
        """The variables every command of the build gets."""
        env = dict.fromkeys(URL_VARIABLES, self.url) if self.url else {}
        if self.exclude:
            env.update({name: ",".join(self.exclude) for name in EXCLUDE_VARIABLES})
        return env

    def dnf_options(self) -> dict[str, str]:
        """The [main] options of dnf.conf (dnf and dnf5 know the same names)."""
        options = {"proxy": self.url} if self.url else {}
        for name, path in (("proxy_sslcacert", self.peer_certificate),
                           ("proxy_sslclientcert", self.client_certificate),
                           ("proxy_sslclientkey", self.client_key)):
            if path is not None:
                options[name] = str(path.absolute())
        return options

    def apt_settings(self) -> dict[str, str]:
        """apt.conf settings: the proxy for http and https, DIRECT for the excluded hosts (apt matches host
        names exactly: `.example.com` excludes example.com itself; no_proxy in the environment covers the
        rest for the tools that read it)."""
        if not self.url:
            return {}
        settings = {"Acquire::http::Proxy": self.url, "Acquire::https::Proxy": self.url}
        for entry in self.exclude:
            host = entry.removeprefix("*").removeprefix(".")
            if host and "/" not in host and "*" not in host:
                settings[f"Acquire::http::Proxy::{host}"] = "DIRECT"
                settings[f"Acquire::https::Proxy::{host}"] = "DIRECT"
        return settings

    def excluded(self, host: str) -> bool:
        """Whether ProxyExclude= names the host, or a domain it is in (as curl reads no_proxy: `example.com`
        and `.example.com` both cover www.example.com; `*` covers every host)."""
        host = host.lower().rstrip(".")
        for entry in self.exclude:
            name = entry.lower().removeprefix("*").removeprefix(".")
            if entry == "*" or host == name or host.endswith("." + name):
                return True
        return False

    def urllib_proxies(self, url: str) -> Optional[dict[str, str]]:
        """What urllib's ProxyHandler is given to fetch `url` (mkosi's own downloads): None when the
        proxy settings say nothing about it (urllib then reads mkosi's environment), {} for a direct
        connection to an excluded host."""
        if not self.url and not self.exclude:
            return None
        host = urllib.parse.urlsplit(url).hostname or ""
        if self.excluded(host):
            return {}
        if not self.url:
            return None
        return {"http": self.url, "https": self.url}

