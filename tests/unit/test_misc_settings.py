"""ConfigureScripts=, SandboxTrees=, ToolsTreeSandboxTrees=, SELinuxRelabel=, RepositoryKeyFetch= and
Snapshot=: no root, no network (a local HTTP server stands in for the key servers)."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mkosi import build
from mkosi.config import load_args
from mkosi.config.enums import Distribution, Feature
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.distributions.arch import Arch
from mkosi.distributions.debian import Debian
from mkosi.distributions.registry import plugin
from mkosi.errors import MkosiError
from mkosi.installers.apt import AptConfig
from mkosi.installers.apt import repositories as repos
from mkosi.installers.apt.config import KEYRINGS
from mkosi.installers.apt.hostapt import setup_apt
from mkosi.sandbox import Sandbox, tree_overlay
from mkosi.selinux import find_policy, policy_type, relabel, setfiles_command
from mkosi.summary import image_json, summary_dict
from mkosi.tools_tree import tools_tree_argv
from tests.unit.conftest import write

DEBIAN = "[Distribution]\nDistribution=debian\nRelease=bookworm\n"


def load(*argv: str, verb: str = "summary") -> tuple[Any, Config]:
    args, configs = load_args([*argv, verb])
    return args, configs[-1]


def apt_config(tmp_path: Path, **kwargs: Any) -> AptConfig:
    values: dict[str, Any] = {
        "root": tmp_path / "root", "distribution": "debian", "release": "bookworm",
        "mirror": "http://deb.debian.org/debian", "components": ["main"], "extra_repositories": [],
        "architecture": "amd64", "cache_dir": None, "workspace": tmp_path / "ws", "with_docs": False,
    }
    values.update(kwargs)
    return AptConfig(**values)


# ---------------------------------------------------------------------------------------------------
# ConfigureScripts=


def configure_script(wd: Path, body: str, name: str = "mkosi.configure") -> Path:
    return write(wd / name, "#!/usr/bin/python3\nimport json, sys\nc = json.load(sys.stdin)\n" + body, 0o755)


def test_configure_script_changes_the_build_configuration(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN + "[Content]\nPackages=vim\n")
    configure_script(wd, 'c["Packages"] += ["less"]\nc["ImageId"] = "fromscript"\njson.dump(c, sys.stdout)\n')
    _, config = load(verb="build")
    assert config.packages == ["vim", "less"]
    assert config.image_id == "fromscript"
    # Derived values follow: the output is named after the new ImageId=.
    assert config.output is not None and config.output.name.startswith("fromscript")
    assert config.configure_scripts == [wd / "mkosi.configure"]


def test_configure_script_does_not_run_for_summary(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN + "[Content]\nPackages=vim\n")
    configure_script(wd, 'open("ran", "w").close()\nc["Packages"] = []\njson.dump(c, sys.stdout)\n')
    args, config = load()
    assert config.packages == ["vim"] and not (wd / "ran").exists()
    assert "ConfigureScripts" not in summary_dict(args, config)["NotImplemented"]


def test_configure_script_gets_the_summary_json(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN + "[Content]\nPackages=vim\n")
    configure_script(wd, 'open("seen.json", "w").write(json.dumps(c))\njson.dump(c, sys.stdout)\n')
    args, config = load(verb="build")
    seen = json.loads((wd / "seen.json").read_text())
    assert seen == json.loads(json.dumps(image_json(args, config)))
    assert seen["Packages"] == ["vim"] and seen["Release"] == "bookworm"


def test_configure_scripts_run_in_order_and_null_resets(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN + "[Content]\nPackages=vim\nHostname=fromfile\n"
          "[Config]\nConfigureScripts=a.configure,b.configure\n")
    configure_script(wd, 'c["Packages"].append("one")\nc["Hostname"] = None\njson.dump(c, sys.stdout)\n',
                     "a.configure")
    configure_script(wd, 'assert "one" in c["Packages"]\nc["Packages"].append("two")\njson.dump(c, sys.stdout)\n',
                     "b.configure")
    _, config = load(verb="build")
    assert config.packages == ["vim", "one", "two"]
    assert config.hostname is None


def test_configure_script_sandbox_tree_value(wd: Path) -> None:
    (wd / "tree").mkdir()
    write(wd / "mkosi.conf", DEBIAN)
    configure_script(wd, 'c["SandboxTrees"] = [{"Source": "tree", "Target": "/etc/apt"}]\njson.dump(c, sys.stdout)\n')
    _, config = load(verb="build")
    assert [(t.source, str(t.target)) for t in config.sandbox_trees] == [(wd / "tree", "/etc/apt")]


@pytest.mark.parametrize(("body", "message"), [
    ("sys.exit(3)\n", "failed with exit status 3"),
    ('print("not json")\n', "printed invalid JSON"),
    ("json.dump([1, 2], sys.stdout)\n", "not an object"),
    ('c["NoSuchSetting"] = 1\njson.dump(c, sys.stdout)\n', "unknown setting NoSuchSetting"),
])
def test_configure_script_errors_name_the_script(wd: Path, body: str, message: str) -> None:
    write(wd / "mkosi.conf", DEBIAN)
    configure_script(wd, body)
    with pytest.raises(MkosiError) as e:
        load(verb="build")
    assert "mkosi.configure" in str(e.value) and message in str(e.value)


def test_configure_script_bad_value_names_script_and_setting(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN)
    configure_script(wd, 'c["RootSize"] = "lots"\njson.dump(c, sys.stdout)\n')
    with pytest.raises(MkosiError) as e:
        load(verb="build")
    assert "mkosi.configure" in str(e.value) and "RootSize" in str(e.value)


def test_configure_script_not_executable(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN)
    write(wd / "mkosi.configure", "#!/bin/sh\ncat\n", 0o644)
    with pytest.raises(MkosiError, match="not executable"):
        load(verb="build")


# ---------------------------------------------------------------------------------------------------
# SandboxTrees=, ToolsTreeSandboxTrees=


def _pairs(options: list[str], op: str) -> list[tuple[str, str]]:
    return [(options[i + 1], options[i + 2]) for i, o in enumerate(options) if o == op]


def test_tree_file_over_existing_file_is_a_plain_bind(tmp_path: Path) -> None:
    host = tmp_path / "host"
    write(host / "apt/apt.conf", "host\n")
    write(tmp_path / "tree/apt/apt.conf", "tree\n")
    overlay = tree_overlay(((tmp_path / "tree", str(host)),))
    assert overlay.options == ["--ro-bind", str(tmp_path / "tree/apt/apt.conf"), str(host / "apt/apt.conf")]
    assert overlay.provides(str(host / "apt"))


def test_tree_adding_files_merges_the_directory_in_a_tmpfs(tmp_path: Path) -> None:
    host = tmp_path / "host"
    write(host / "apt/keep.conf", "host\n")
    (host / "apt/link").symlink_to("keep.conf")
    write(tmp_path / "tree/apt/new.conf", "tree\n")
    write(tmp_path / "tree/pki/tls/cert.pem", "cert\n")
    opts = tree_overlay(((tmp_path / "tree", str(host)),)).options
    assert ["--tmpfs", str(host)] == opts[:2]
    assert (str(host / "apt"), str(host / "apt")) in _pairs(opts, "--dev-bind")
    i = opts.index("--tmpfs", 2)
    assert opts[i + 1] == str(host / "apt")
    assert (str(host / "apt/keep.conf"), str(host / "apt/keep.conf")) in _pairs(opts, "--dev-bind")
    assert ("keep.conf", str(host / "apt/link")) in _pairs(opts, "--symlink")
    assert (str(tmp_path / "tree/apt/new.conf"), str(host / "apt/new.conf")) in _pairs(opts, "--ro-bind")
    # A directory the host lacks is made inside the tmpfs, never on the host.
    assert ["--dir", str(host / "pki"), "--dir", str(host / "pki/tls")] == \
        opts[opts.index(str(host / "pki")) - 1:opts.index(str(host / "pki/tls")) + 1]
    assert not (host / "pki").exists()


def test_later_tree_wins(tmp_path: Path) -> None:
    host = tmp_path / "host"
    write(host / "a.conf", "host\n")
    write(tmp_path / "one/a.conf", "1\n")
    write(tmp_path / "two/a.conf", "2\n")
    opts = tree_overlay(((tmp_path / "one", str(host)), (tmp_path / "two", str(host)))).options
    assert opts == ["--ro-bind", str(tmp_path / "two/a.conf"), str(host / "a.conf")]


def test_tree_with_new_top_level_directory_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "tree/no-such-top-level-dir/x", "x\n")
    with pytest.raises(MkosiError, match="/no-such-top-level-dir"):
        tree_overlay(((tmp_path / "tree", "/"),))


def test_missing_tree_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="SandboxTrees="):
        tree_overlay(((tmp_path / "missing", "/"),))


def test_tree_below_usr_goes_over_the_tools_tree(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    write(tools / "usr/share/keyrings/debian-archive-keyring.gpg", "k\n")
    write(tmp_path / "tree/usr/share/keyrings/extra.gpg", "e\n")
    opts = tree_overlay(((tmp_path / "tree", "/"),), tools).options
    assert opts[opts.index("--tmpfs"):opts.index("--tmpfs") + 2] == ["--tmpfs", "/usr/share/keyrings"]
    assert (str(tools / "usr/share/keyrings/debian-archive-keyring.gpg"),
            "/usr/share/keyrings/debian-archive-keyring.gpg") in _pairs(opts, "--dev-bind")


def test_sandbox_argv_and_lookups(tmp_path: Path) -> None:
    write(tmp_path / "tree/etc/apt/apt.conf.d/99mirror", "Acquire::http::Proxy \"x\";\n")
    write(tmp_path / "tree/usr/share/keyrings/debian-archive-keyring.gpg", "key\n")
    sandbox = Sandbox(trees=((tmp_path / "tree", "/"),))
    assert sandbox.needs_wrapper()
    argv = sandbox.argv(["true"])
    assert argv[:3] == ["bwrap", "--dev-bind", "/"] and "--tmpfs" in argv
    assert sandbox.tree_files("/etc/apt/apt.conf.d") == [tmp_path / "tree/etc/apt/apt.conf.d/99mirror"]
    assert sandbox.visible("/usr/share/keyrings/debian-archive-keyring.gpg") == \
        tmp_path / "tree/usr/share/keyrings/debian-archive-keyring.gpg"
    assert sandbox.visible("/etc/no-such-file") == Path("/etc/no-such-file")
    tools = tmp_path / "tools"
    write(tools / "usr/share/keyrings/tools.gpg", "t\n")
    assert Sandbox(tools=tools).visible("/usr/share/keyrings/tools.gpg") == tools / "usr/share/keyrings/tools.gpg"
    assert Sandbox(tools=tools).visible("/usr/share/keyrings/host.gpg") == Path("/usr/share/keyrings/host.gpg")
    targeted = Sandbox(trees=((tmp_path / "tree/etc/apt", "/etc/apt"),))
    assert targeted.tree_files("/etc/apt/apt.conf.d") == [tmp_path / "tree/etc/apt/apt.conf.d/99mirror"]


def test_tree_certificates_win_over_the_tools_tree(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    (tools / "usr/bin").mkdir(parents=True)
    (tools / "etc/ssl").mkdir(parents=True)
    if not Path("/etc/ssl").is_dir():
        pytest.skip("the host has no /etc/ssl")
    write(tmp_path / "tree/etc/ssl/certs/mirror.pem", "cert\n")
    argv = Sandbox(tools=tools, trees=((tmp_path / "tree", "/"),)).argv(["true"])
    assert (str(tools / "etc/ssl"), "/etc/ssl") not in _pairs(argv, "--ro-bind")
    assert (str(tools / "etc/ssl"), "/etc/ssl") in _pairs(Sandbox(tools=tools).argv(["true"]), "--ro-bind")


def test_sandbox_trees_from_config(wd: Path) -> None:
    write(wd / "mkosi.sandbox/etc/apt/apt.conf.d/99x", "x\n")
    write(wd / "other/x", "y\n")
    write(wd / "mkosi.conf", DEBIAN)
    args, config = load()
    assert Sandbox.for_config(config).trees == ((wd / "mkosi.sandbox", "/"),)
    _, config = load("--sandbox-tree=other:/etc/apt")
    assert Sandbox.for_config(config).trees[-1] == (wd / "other", "/etc/apt")
    notes = summary_dict(args, config)["NotImplemented"]
    assert "SandboxTrees" not in notes


def test_tools_tree_sandbox_trees_are_the_tools_image_sandbox_trees(wd: Path) -> None:
    (wd / "tt").mkdir()
    write(wd / "mkosi.conf", DEBIAN + "[Build]\nToolsTree=default\nToolsTreeSandboxTrees=tt:/etc/apt\n")
    args, config = load()
    assert f"--sandbox-tree={wd / 'tt'}:/etc/apt" in tools_tree_argv(config)
    assert "ToolsTreeSandboxTrees" not in summary_dict(args, config)["NotImplemented"]


def test_apt_uses_the_trees_apt_configuration(tmp_path: Path) -> None:
    write(tmp_path / "tree/etc/apt/apt.conf.d/99mirror", "Acquire::Retries \"9\";\n")
    write(tmp_path / "tree/etc/apt/trusted.gpg.d/mirror.asc", "key\n")
    write(tmp_path / "tree/etc/apt/sources.list.d/extra.list", "deb http://example.org/ x main\n")
    write(tmp_path / "keyring.gpg", "archive\n")
    cfg = apt_config(tmp_path, sandbox=Sandbox(trees=((tmp_path / "tree", "/"),)))
    apt = setup_apt(cfg, tmp_path / "status", tmp_path / "keyring.gpg")
    etc = apt.conf.parent / "etc"
    assert (etc / "apt.conf.d/99mirror").read_text() == "Acquire::Retries \"9\";\n"
    assert (etc / "trusted.gpg.d/mirror.asc").exists() and (etc / "sources.list.d/extra.list").exists()


def test_archive_keyring_from_a_sandbox_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KEYRINGS, "debian", (str(tmp_path / "nowhere/k.gpg"), "debian-archive-keyring"))
    write(tmp_path / "tree" / str(tmp_path / "nowhere/k.gpg").lstrip("/"), "key\n")
    cfg = apt_config(tmp_path, sandbox=Sandbox(trees=((tmp_path / "tree", "/"),)))
    assert repos.archive_keyring(cfg) == tmp_path / "tree" / str(tmp_path / "nowhere/k.gpg").lstrip("/")


# ---------------------------------------------------------------------------------------------------
# SELinuxRelabel=


def policy_root(tmp_path: Path, binary: bool = True) -> Path:
    root = tmp_path / "root"
    write(root / "etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=default\n")
    write(root / "etc/selinux/default/contexts/files/file_contexts", "/.* system_u:object_r:default_t:s0\n")
    if binary:
        write(root / "etc/selinux/default/policy/policy.31", "")
        write(root / "etc/selinux/default/policy/policy.33", "")
    return root


def fake_setfiles(tmp_path: Path, status: int = 0) -> Sandbox:
    bindir = tmp_path / "bin"
    write(bindir / "setfiles", f'#!/bin/sh\necho "$@" > {tmp_path}/setfiles.args\nexit {status}\n', 0o755)
    return Sandbox(search_paths=(bindir,))


def test_find_policy(tmp_path: Path) -> None:
    root = policy_root(tmp_path)
    policy = find_policy(root)
    assert policy is not None and policy.name == "default"
    assert policy.binary == root / "etc/selinux/default/policy/policy.33"
    assert setfiles_command(root, policy) == [
        "setfiles", "-m", "-F", "-r", str(root), "-c", str(policy.binary), str(policy.file_contexts), str(root)]


def test_policy_type_quoted_and_missing(tmp_path: Path) -> None:
    write(tmp_path / "a/etc/selinux/config", 'SELINUXTYPE="targeted"\n')
    assert policy_type(tmp_path / "a") == "targeted"
    assert find_policy(tmp_path / "a") is None   # no file contexts for it
    assert policy_type(tmp_path / "b") is None


def test_relabel_runs_setfiles(tmp_path: Path) -> None:
    root = policy_root(tmp_path)
    assert relabel(root, Feature.enabled, fake_setfiles(tmp_path))
    args = (tmp_path / "setfiles.args").read_text().split()
    assert args[:4] == ["-m", "-F", "-r", str(root)] and args[-1] == str(root)
    assert relabel(root, Feature.auto, fake_setfiles(tmp_path))


def test_relabel_disabled_does_nothing(tmp_path: Path) -> None:
    assert not relabel(policy_root(tmp_path), Feature.disabled, fake_setfiles(tmp_path))
    assert not (tmp_path / "setfiles.args").exists()


def test_relabel_without_policy(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    assert not relabel(tmp_path / "root", Feature.auto, fake_setfiles(tmp_path))
    assert not (tmp_path / "setfiles.args").exists()
    with pytest.raises(MkosiError, match="no SELinux policy"):
        relabel(tmp_path / "root", Feature.enabled, fake_setfiles(tmp_path))


def test_relabel_failure_fails_only_when_required(tmp_path: Path) -> None:
    root = policy_root(tmp_path)
    assert not relabel(root, Feature.auto, fake_setfiles(tmp_path, status=1))
    with pytest.raises(MkosiError, match="setfiles"):
        relabel(root, Feature.enabled, fake_setfiles(tmp_path, status=1))


def test_relabel_without_setfiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = policy_root(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    sandbox = Sandbox(tools=tmp_path / "notools")
    assert not relabel(root, Feature.auto, sandbox)
    with pytest.raises(MkosiError, match="setfiles is not available"):
        relabel(root, Feature.enabled, sandbox)


def test_selinux_relabel_setting(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN + "[Content]\nSELinuxRelabel=yes\n")
    args, config = load()
    assert config.selinux_relabel == Feature.enabled
    assert "SELinuxRelabel" not in summary_dict(args, config)["NotImplemented"]


# ---------------------------------------------------------------------------------------------------
# RepositoryKeyFetch=

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF...\n-----END PGP PUBLIC KEY BLOCK-----\n"


@pytest.fixture
def key_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = KEY.encode() if self.path.startswith("/keys/") else b"<html>nope</html>"
            self.send_response(200 if self.path != "/missing" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_key_fetch_default(wd: Path) -> None:
    _, ubuntu = load("--distribution=ubuntu", "--release=noble")
    _, debian = load("--distribution=debian", "--release=bookworm")
    assert ubuntu.repository_key_fetch and not debian.repository_key_fetch
    _, explicit = load("--distribution=debian", "--release=bookworm", "--repository-key-fetch=yes")
    assert explicit.repository_key_fetch
    debian_plugin = plugin(Distribution.debian)
    assert isinstance(debian_plugin, Debian) and debian_plugin.apt_config(explicit).key_fetch


def test_missing_keyring_is_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_server: str) -> None:
    monkeypatch.setitem(KEYRINGS, "debian", (str(tmp_path / "none.gpg"), "debian-archive-keyring"))
    monkeypatch.setitem(repos.KEY_URLS, "debian", (f"{key_server}/keys/a.asc", f"{key_server}/keys/b.asc"))
    keyring = repos.archive_keyring(apt_config(tmp_path, key_fetch=True))
    assert keyring.name.endswith(".asc") and keyring.is_relative_to(tmp_path / "ws")
    assert keyring.read_text() == KEY + KEY


def test_missing_keyring_without_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KEYRINGS, "debian", (str(tmp_path / "none.gpg"), "debian-archive-keyring"))
    with pytest.raises(MkosiError, match=r"keyring .* is missing") as e:
        repos.archive_keyring(apt_config(tmp_path))
    assert e.value.hint is not None and "RepositoryKeyFetch=yes" in e.value.hint


def test_present_keyring_is_not_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "k.gpg", "key\n")
    monkeypatch.setitem(KEYRINGS, "debian", (str(tmp_path / "k.gpg"), "debian-archive-keyring"))
    monkeypatch.setitem(repos.KEY_URLS, "debian", ("http://127.0.0.1:9/never",))
    assert repos.archive_keyring(apt_config(tmp_path, key_fetch=True)) == tmp_path / "k.gpg"


@pytest.mark.parametrize(("path", "message"), [("/html", "did not return an OpenPGP public key"),
                                               ("/missing", "cannot download")])
def test_key_fetch_errors(tmp_path: Path, key_server: str, path: str, message: str) -> None:
    with pytest.raises(MkosiError, match=message):
        repos.fetch_keyring(apt_config(tmp_path, key_fetch=True), [f"{key_server}{path}"])


def test_key_fetch_without_network(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="network"):
        repos.fetch_keyring(apt_config(tmp_path, key_fetch=True, network=False), ["http://127.0.0.1:9/"])


# ---------------------------------------------------------------------------------------------------
# Snapshot=

SNAP = "20250101T000000Z"


def test_debian_snapshot_sources(tmp_path: Path) -> None:
    lines = repos.repository_lines(apt_config(tmp_path, snapshot=SNAP))
    assert lines == [
        f"deb [check-valid-until=no] https://snapshot.debian.org/archive/debian/{SNAP} bookworm main",
        f"deb [check-valid-until=no] https://snapshot.debian.org/archive/debian/{SNAP} bookworm-updates main",
        f"deb [check-valid-until=no] https://snapshot.debian.org/archive/debian-security/{SNAP} bookworm-security main",
    ]
    assert repos.list_prefixes(lines)[0] == \
        f"snapshot.debian.org_archive_debian_{SNAP}_dists_bookworm_"


def test_debian_snapshot_sid_and_explicit_mirror(tmp_path: Path) -> None:
    cfg = apt_config(tmp_path, snapshot=SNAP, release="sid", mirror="http://snap.example.org/")
    assert repos.repository_lines(cfg) == [
        f"deb [check-valid-until=no] http://snap.example.org/archive/debian/{SNAP} sid main"]


def test_ubuntu_snapshot_sources(tmp_path: Path) -> None:
    cfg = apt_config(tmp_path, snapshot=SNAP, distribution="ubuntu", release="noble",
                     mirror="http://archive.ubuntu.com/ubuntu", components=["main", "universe"])
    assert repos.repository_lines(cfg) == [
        f"deb [check-valid-until=no] https://snapshot.ubuntu.com/ubuntu/{SNAP} noble main universe",
        f"deb [check-valid-until=no] https://snapshot.ubuntu.com/ubuntu/{SNAP} noble-updates main universe",
        f"deb [check-valid-until=no] https://snapshot.ubuntu.com/ubuntu/{SNAP} noble-security main universe",
    ]


def test_invalid_snapshot_id(tmp_path: Path) -> None:
    with pytest.raises(MkosiError, match="Snapshot=yesterday"):
        repos.repository_lines(apt_config(tmp_path, snapshot="yesterday"))


def test_snapshot_setting_reaches_the_repositories(wd: Path) -> None:
    write(wd / "mkosi.conf", DEBIAN + f"Snapshot={SNAP}\n")
    args, config = load()
    data = summary_dict(args, config)
    assert "Snapshot" not in data["NotImplemented"]
    assert data["Repositories"][0] == \
        f"deb [check-valid-until=no] https://snapshot.debian.org/archive/debian/{SNAP} bookworm main"


def test_snapshot_written_into_the_image_sources(tmp_path: Path) -> None:
    cfg = apt_config(tmp_path, snapshot=SNAP)
    repos.write_sources(cfg)
    text = (cfg.root / "etc/apt/sources.list").read_text()
    assert f"snapshot.debian.org/archive/debian/{SNAP}" in text
    assert os.stat(cfg.root / "etc/apt/sources.list").st_size > 0


def test_snapshot_on_other_distributions_is_a_build_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = dataclasses.replace(Config(), distribution=Distribution.opensuse, release="tumbleweed", snapshot=SNAP)
    ctx = Context(Args(), config, tmp_path, Phase.final, root, None, tmp_path / "staging")
    with pytest.raises(MkosiError, match="Snapshot= is not implemented yet for opensuse"):
        build.install_distribution(ctx)


def test_modules_import_on_their_own() -> None:
    # mkosi.config runs the configure scripts with mkosi.run, which itself needs mkosi.config.
    for module in ("mkosi.run", "mkosi.preflight", "mkosi.configure", "mkosi.selinux", "mkosi.config"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_arch_snapshot_servers(wd: Path) -> None:
    _, config = load("--distribution=arch", "--release=rolling", "--snapshot=2025/01/31")
    arch = plugin(Distribution.arch)
    assert arch.repositories(config)[:2] == [
        "core::https://archive.archlinux.org/repos/2025/01/31/core/os/x86_64",
        "extra::https://archive.archlinux.org/repos/2025/01/31/extra/os/x86_64"]
    _, mirrored = load("--distribution=arch", "--release=rolling", "--snapshot=2025/01/31",
                       "--mirror=http://ala.example.org")
    assert arch.repositories(mirrored)[0] == "core::http://ala.example.org/repos/2025/01/31/core/os/x86_64"


@pytest.mark.parametrize(("argv", "message"), [
    (("--snapshot=20250101T000000Z",), "YYYY/MM/DD"),
    (("--snapshot=2025/01/31", "--architecture=arm64"), "not implemented yet for Arch Linux on aarch64"),
])
def test_arch_snapshot_errors(wd: Path, argv: tuple[str, ...], message: str) -> None:
    _, config = load("--distribution=arch", "--release=rolling", *argv)
    arch = plugin(Distribution.arch)
    assert isinstance(arch, Arch)
    with pytest.raises(MkosiError, match=message):
        arch.server(config, "core")
