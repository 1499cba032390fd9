"""SyncScripts=, PostOutputScripts=, CleanScripts= (run on the host) and VolatilePackages=: when each runs,
in which order, and with which variables."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mkosi import build, cache, scripts
from mkosi.config import load_args
from mkosi.config.enums import Distribution
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.distributions.debian import Debian
from mkosi.errors import MkosiError
from mkosi.output import artifacts
from mkosi.summary import summary_text
from tests.unit.conftest import run_main as run
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def resolve(*argv: str) -> tuple[Args, Config]:
    args, configs = load_args([*argv, "summary"])
    return args, configs[-1]


def project(wd: Path, extra: str = "") -> None:
    write(wd / "mkosi.default", "[Distribution]\nDistribution=debian\nRelease=bookworm\n\n"
          f"[Output]\nFormat=directory\nImageId=img\n{extra}")
    (wd / "mkosi.output").mkdir(exist_ok=True)


def env_dump_script(path: Path, log: Path) -> Path:
    """A script that appends its name and its environment (as JSON) to `log`, and copies $MKOSI_CONFIG."""
    return write(path, f"""\
        #!/usr/bin/python3
        import json, os, shutil, sys
        cfg = os.environ.get("MKOSI_CONFIG")
        if cfg:
            shutil.copy(cfg, "{log}.config.json")
        with open("{log}", "a") as f:
            f.write(json.dumps({{"script": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                                "cwd": os.getcwd(), "env": dict(os.environ)}}) + "\\n")
        """, 0o755)


def entries(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# ---- the settings ----

def test_the_defaults_are_the_mkosi_files(wd: Path) -> None:
    project(wd)
    _, config = resolve()
    assert config.sync_scripts == [] and config.postoutput_scripts == [] and config.clean_scripts == []
    for name in ("mkosi.sync", "mkosi.postoutput", "mkosi.clean"):
        write(wd / name, "#!/bin/sh\n", 0o755)
    _, config = resolve()
    assert config.sync_scripts == [wd / "mkosi.sync"]
    assert config.postoutput_scripts == [wd / "mkosi.postoutput"]
    assert config.clean_scripts == [wd / "mkosi.clean"]


def test_summary_no_longer_says_not_implemented(wd: Path) -> None:
    project(wd, "\n[Content]\nVolatilePackages=less\n")
    for name in ("mkosi.sync", "mkosi.postoutput", "mkosi.clean"):
        write(wd / name, "#!/bin/sh\n", 0o755)
    text = summary_text(*load_args(["summary"]))
    for key in ("SyncScripts=", "PostOutputScripts=", "CleanScripts=", "VolatilePackages=less"):
        line = next(line for line in text.splitlines() if key in line)
        assert "not implemented" not in line, line


def test_a_script_that_is_not_executable_is_named(wd: Path) -> None:
    project(wd)
    write(wd / "mkosi.sync", "#!/bin/sh\n", 0o644)
    args, config = resolve()
    with pytest.raises(MkosiError, match=r"SyncScripts= '.*mkosi.sync' is not executable"):
        scripts.run_host_scripts(args, config, "sync")
    config = dataclasses.replace(config, clean_scripts=[wd / "missing"])
    with pytest.raises(MkosiError, match=r"CleanScripts= '.*missing' is not a file"):
        scripts.run_host_scripts(args, config, "clean")


# ---- the environment of each kind ----

def config_for(**settings: Any) -> Config:
    return dataclasses.replace(Config(), distribution=Distribution.debian, release="trixie", architecture="x86_64",
                               image_id="img", image_version="7", profiles=["a", "b"], source_date_epoch=12345,
                               environment=["FOO=bar"], **settings)


def test_sync_environment() -> None:
    env = scripts.host_script_environment(Args(), config_for(), "sync", srcdir=Path("/src"), cached=True)
    assert env["ARCHITECTURE"] == "x86-64" and env["DISTRIBUTION_ARCHITECTURE"] == "amd64"
    assert env["EFI_ARCHITECTURE"] == "x64"
    assert env["DISTRIBUTION"] == "debian" and env["RELEASE"] == "trixie"
    assert env["IMAGE_ID"] == "img" and env["IMAGE_VERSION"] == "7"
    assert env["PROFILES"] == "a,b" and env["CACHED"] == "1" and env["SRCDIR"] == "/src"
    assert env["MKOSI_DEBUG"] == "0" and env["MKOSI_UID"] and env["MKOSI_GID"]
    assert env["FOO"] == "bar"
    # What the manual's table does not give a sync script.
    for name in ("OUTPUTDIR", "BUILDROOT", "SOURCE_DATE_EPOCH", "WITH_DOCS", "DESTDIR"):
        assert name not in env
    env = scripts.host_script_environment(Args(), config_for(), "sync", srcdir=Path("/src"), cached=False)
    assert env["CACHED"] == "0"


def test_postoutput_environment() -> None:
    env = scripts.host_script_environment(Args(debug=["run"]), config_for(), "postoutput", srcdir=Path("/src"),
                                          outputdir=Path("/ws/staging"))
    assert env["OUTPUTDIR"] == "/ws/staging" and env["MKOSI_DEBUG"] == "1"
    for name in ("PROFILES", "SOURCE_DATE_EPOCH", "CACHED", "BUILDROOT"):
        assert name not in env


def test_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "5678")
    env = scripts.host_script_environment(Args(), config_for(), "clean", srcdir=Path("/src"),
                                          outputdir=Path("/out"))
    assert env["OUTPUTDIR"] == "/out" and env["PROFILES"] == "a,b" and env["SOURCE_DATE_EPOCH"] == "12345"
    assert env["MKOSI_UID"] == "1234" and env["MKOSI_GID"] == "5678"
    assert "CACHED" not in env and "BUILDROOT" not in env


def test_distribution_architecture_per_package_manager() -> None:
    base = Config()
    assert scripts.distribution_architecture(dataclasses.replace(base, distribution=Distribution.fedora,
                                                                 architecture="x86_64")) == "x86_64"
    assert scripts.distribution_architecture(dataclasses.replace(base, distribution=Distribution.ubuntu,
                                                                 architecture="aarch64")) == "arm64"
    assert scripts.systemd_architecture("aarch64") == "arm64"


def test_config_json_hides_secrets() -> None:
    data = scripts.config_json(dataclasses.replace(Config(), password="hunter2", image_id="img"))
    assert data["ImageId"] == "img" and data["RootPassword"] == "(set)"
    assert "hunter2" not in json.dumps(data)


# ---- running them ----

def test_scripts_run_in_order_in_the_source_directory(wd: Path) -> None:
    project(wd)
    log = wd / "log"
    first, second = env_dump_script(wd / "one", log), env_dump_script(wd / "two", log)
    args, config = resolve()
    config = dataclasses.replace(config, sync_scripts=[second, first])
    scripts.run_host_scripts(args, config, "sync", cached=False)
    got = entries(log)
    assert [e["script"] for e in got] == ["two", "one"]
    assert all(e["argv"] == [] and e["cwd"] == str(wd) and e["env"]["SRCDIR"] == str(wd) for e in got)
    # $MKOSI_CONFIG was a JSON file of the settings while they ran, and is gone afterwards.
    cfg = json.loads(Path(f"{log}.config.json").read_text())
    assert cfg["ImageId"] == "img" and cfg["Distribution"] == "debian"
    assert not Path(got[0]["env"]["MKOSI_CONFIG"]).exists()


def test_a_failing_script_stops_with_its_name(wd: Path) -> None:
    project(wd)
    write(wd / "mkosi.postoutput", "#!/bin/sh\necho broken\nexit 4\n", 0o755)
    args, config = resolve()
    with pytest.raises(scripts.ScriptError, match=r"postoutput script .*mkosi\.postoutput failed with exit status 4"):
        scripts.run_host_scripts(args, config, "postoutput", outputdir=wd)


def test_clean_verb_runs_the_clean_script_after_removing_the_outputs(wd: Path) -> None:
    project(wd)
    log = wd / "log"
    env_dump_script(wd / "mkosi.clean", log)
    out = wd / "mkosi.output"
    (out / "img").mkdir()
    (out / "img" / "file").write_text("x")
    write(wd / "mkosi.clean", f"""\
        #!/bin/sh
        test -e "$OUTPUTDIR/img" && echo "output still there" >> {log}.bad
        echo "clean $OUTPUTDIR $SRCDIR" >> {log}
        """, 0o755)
    assert run("clean") == 0
    assert log.read_text() == f"clean {out} {wd}\n"
    assert not Path(f"{log}.bad").exists()
    assert not (out / "img").exists()


def test_clean_verb_without_a_clean_script_does_nothing_more(wd: Path) -> None:
    project(wd)
    assert run("clean") == 0


def test_clean_scripts_never_use_the_tools_tree(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(wd)
    write(wd / "mkosi.clean", "#!/bin/sh\n", 0o755)
    write(wd / "mkosi.sync", "#!/bin/sh\n", 0o755)
    args, config = resolve()
    config = dataclasses.replace(config, tools_tree=str(wd / "tools"))
    seen: list[Any] = []
    monkeypatch.setattr(scripts, "run_script_command", lambda what, script, argv, sandbox: seen.append(sandbox))
    scripts.run_host_scripts(args, config, "clean", outputdir=wd, tools=False)
    scripts.run_host_scripts(args, config, "sync")
    assert seen[0].tools is None and seen[1].tools == wd / "tools"


# ---- where they run in a build ----

def test_build_runs_clean_with_force_then_sync_before_the_up_to_date_check(
        wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(wd)
    write(wd / "mkosi.sync", "#!/bin/sh\n", 0o755)
    order: list[str] = []

    def host_scripts(args: Args, config: Config, which: str, **kw: Any) -> None:
        order.append(which)

    monkeypatch.setattr(build, "run_host_scripts", host_scripts)
    monkeypatch.setattr(build, "up_to_date_key", lambda args, config: order.append("up-to-date check"))
    args, config = resolve("-i")
    assert build._build_locked(args, config) is False
    assert order == ["sync", "up-to-date check"]
    order.clear()
    args, config = resolve("-i", "-f")
    assert build._build_locked(args, config) is False
    assert order == ["clean", "sync", "up-to-date check"]


def test_sync_gets_cached_when_a_cached_final_image_exists(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(wd)
    write(wd / "mkosi.sync", "#!/bin/sh\n", 0o755)
    seen: list[Any] = []
    monkeypatch.setattr(build, "run_host_scripts", lambda args, config, which, **kw: seen.append(kw["cached"]))
    args, config = resolve("-i")
    build.run_sync_scripts(args, config)
    image = artifacts.cached_image_path(config, Phase.final)
    image.mkdir(parents=True)
    Path(f"{image}.key").write_text("k\n")
    build.run_sync_scripts(args, config)
    build.run_sync_scripts(resolve()[0], config)
    assert seen == [False, True, False]


def test_postoutput_sees_the_staged_outputs_and_its_files_are_moved_along(wd: Path) -> None:
    project(wd)
    write(wd / "mkosi.postoutput", """\
        #!/bin/sh
        set -e
        test -f "$OUTPUTDIR/img.tar"
        sha256sum "$OUTPUTDIR/img.tar" | cut -d' ' -f1 > "$OUTPUTDIR/img.tar.sha256"
        echo changed > "$OUTPUTDIR/img.tar"
        """, 0o755)
    args, config = resolve()
    ws = wd / "ws"
    staging = ws / "staging"
    staging.mkdir(parents=True)
    (staging / "img.tar").write_text("image")
    ctx = Context(args, config, ws, Phase.final, ws / "root", None, staging)
    added = build.run_postoutput_scripts(ctx)
    assert added == [staging / "img.tar.sha256"]
    build.move_extra_outputs(config, added)
    assert (wd / "mkosi.output" / "img.tar.sha256").read_text().strip()
    assert not (staging / "img.tar.sha256").exists()
    assert (staging / "img.tar").read_text() == "changed\n"


def test_build_image_runs_postoutput_after_the_checksums(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(wd)
    order: list[str] = []
    monkeypatch.setattr(build, "build_phase", lambda ctx, rerun=False: order.append("phase"))
    monkeypatch.setattr(build, "make_output", lambda ctx: order.append("output"))
    monkeypatch.setattr(build, "write_sboms", lambda ctx: None)
    monkeypatch.setattr(artifacts, "collect", lambda ctx: [])

    def step(name: str) -> Any:
        def record(*args: Any) -> list[Any]:
            order.append(name)
            return []
        return record

    monkeypatch.setattr(build, "write_checksums", step("checksums"))
    monkeypatch.setattr(build, "sign_checksums", step("signature"))

    def postoutput(ctx: Context) -> list[Path]:
        order.append("postoutput")
        return [ctx.staging / "extra"]

    monkeypatch.setattr(build, "run_postoutput_scripts", postoutput)
    args, config = resolve()
    ws = wd / "ws"
    ws.mkdir()
    extra: list[Path] = []
    assert build.build_image(args, config, ws, [], extra) == []
    assert order == ["phase", "output", "checksums", "signature", "postoutput"]
    assert extra == [ws / "staging" / "extra"]


# ---- VolatilePackages= ----

def phase_steps(monkeypatch: pytest.MonkeyPatch, order: list[str]) -> None:
    """build_phase() with every step recording its name instead of doing its work."""
    for name in ("copy_skeleton_trees", "install_distribution", "verify_architecture", "run_prepare_script",
                 "configure_hostname", "configure_machine_id", "configure_os_release", "configure_root_password",
                 "configure_autologin", "install_runtime_generator", "configure_qemu_headless",
                 "configure_network", "configure_ssh", "copy_build_results", "copy_build_sources",
                 "copy_extra_trees", "run_postinst_script", "remove_packages", "write_manifest", "remove_files",
                 "clean_package_metadata", "reproducibility_cleanup", "write_extension_release",
                 "run_finalize_script"):
        monkeypatch.setattr(build, name, lambda *a, _n=name, **kw: order.append(_n))
    monkeypatch.setattr(build, "save_cached_image", lambda ctx, key: order.append("save_cached_image"))
    monkeypatch.setattr(build, "load_cached_image", lambda ctx, key, stale_ok=False: False)


def test_volatile_packages_are_installed_after_the_cache_is_saved(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(wd, "\n[Content]\nPackages=vim\nVolatilePackages=less,less,hello\n")
    order: list[str] = []
    phase_steps(monkeypatch, order)
    installed: list[list[str]] = []

    class Plugin(Debian):
        def install(self, ctx: Context, packages: list[str]) -> None:
            installed.append(packages)
            order.append("install_volatile_packages")

    monkeypatch.setattr(build, "plugin", lambda distribution: Plugin())
    args, config = resolve("-i")
    assert config.volatile_packages == ["less", "less", "hello"]
    ws = wd / "ws"
    ws.mkdir()
    ctx = Context(args, config, ws, Phase.final, ws / "root", None, ws / "staging")
    build.build_phase(ctx)
    assert order.index("save_cached_image") < order.index("install_volatile_packages") \
        < order.index("copy_build_results") < order.index("run_postinst_script")
    assert installed == [["less", "hello"]]
    # The development image never gets them.
    order.clear()
    installed.clear()
    build.build_phase(dataclasses.replace(ctx, phase=Phase.build, root=ws / "build-root"))
    assert installed == []


def test_volatile_packages_are_not_in_the_cache_key(wd: Path) -> None:
    project(wd)
    args, config = resolve()
    ws = wd / "ws"
    ws.mkdir()
    ctx = Context(args, config, ws, Phase.final, ws / "root", None, ws / "staging")
    changed = dataclasses.replace(ctx, config=dataclasses.replace(config, volatile_packages=["less"]))
    assert cache.image_cache_key(ctx, build.packages_for(ctx)) == \
        cache.image_cache_key(changed, build.packages_for(changed))
    assert "less" not in build.packages_for(changed)
    # But they are an input of the whole build: -i rebuilds the output when they change.
    assert cache.build_key(args, config) != cache.build_key(args, changed.config)


def test_environment_has_no_secrets_of_the_host(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host scripts get the variables of the table and Environment=, on top of mkosi's own environment,
    never the root password."""
    project(wd, "\n[Content]\nRootPassword=hunter2\n")
    log = wd / "log"
    env_dump_script(wd / "mkosi.sync", log)
    args, config = resolve()
    scripts.run_host_scripts(args, config, "sync", cached=False)
    assert "hunter2" not in log.read_text()
    assert "hunter2" not in Path(f"{log}.config.json").read_text()
    assert os.environ.get("MKOSI_CONFIG") is None
