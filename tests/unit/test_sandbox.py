"""The sandbox description and its translation into bubblewrap / systemd-nspawn argument lists:
what gets mounted where, which binary is found where, network on or off, and that values of
environment variables (secrets) never reach a logged command line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import mkosi.run
import mkosi.verbs
from mkosi import log
from mkosi.build import hash_password
from mkosi.config import load_args
from mkosi.config.enums import Verb
from mkosi.config.settings import Args, Config
from mkosi.context import Context, Phase
from mkosi.dependencies import WRAPPERS, check_host_tools, host_tools
from mkosi.errors import CommandError, MkosiError, ToolMissingError
from mkosi.installers import emerge, pacman, zypper
from mkosi.installers.dnf import DnfConfig, dnf_sandbox
from mkosi.mounts import mounts_below
from mkosi.run import current_sandbox, find_tool, run, using_sandbox
from mkosi.sandbox import Container, Mode, Mount, Sandbox, find_in_root, resolve_in_root
from mkosi.scripts import script_sandbox
from tests.markers import needs_privileges
from tests.unit.test_config import load, load_both

SECRET = "hunter2-not-for-logs"


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    """The (source, target) operands of every `option SRC DST` in a bubblewrap argument list."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


@pytest.fixture
def debug_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(log._state, "debug", True)


# ---------------------------------------------------------------- finding binaries


def test_plain_host_runs_the_command_as_it_is() -> None:
    sb = Sandbox()
    assert not sb.needs_wrapper() and sb.wrapper_name() is None
    assert sb.argv(["/usr/bin/true", "x"]) == ["/usr/bin/true", "x"]
    assert sb.find("sh") == shutil.which("sh", path=os.environ["PATH"] + ":/usr/bin:/bin")


def test_search_paths_come_before_path(tmp_path: Path) -> None:
    mine = executable(tmp_path / "extra/sh")
    sb = Sandbox(search_paths=(tmp_path / "empty", tmp_path / "extra"))
    assert sb.find("sh") == str(mine)
    assert sb.find("cp") == shutil.which("cp")
    (tmp_path / "extra/notexec").write_text("")
    assert sb.find("notexec") is None


def test_search_paths_come_from_the_config(wd: Path) -> None:
    config = load("--extra-search-paths=/opt/a:/opt/b")
    assert Sandbox.for_config(config).search_paths == (Path("/opt/a"), Path("/opt/b"))
    ctx = Context(Args(), config, wd, Phase.final, wd / "root", None, wd)
    assert ctx.sandbox == Sandbox.for_config(config) and ctx.sandbox.mode == Mode.host


def test_tools_tree_supplies_binaries_as_usr(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    executable(tools / "usr/bin/mkfs.frob")
    executable(tools / "usr/sbin/sfdisk")
    (tools / "bin").symlink_to("usr/bin")
    sb = Sandbox(tools=tools)
    assert sb.find("mkfs.frob") == "/usr/bin/mkfs.frob"
    assert sb.find("sfdisk") == "/usr/sbin/sfdisk"
    assert sb.find("sh") is None   # not in the tools tree: the host's is not used
    argv = sb.argv(["/usr/bin/mkfs.frob", "img"])
    assert argv[:3] == ["bwrap", "--dev-bind", "/"] and argv[-3:] == ["--", "/usr/bin/mkfs.frob", "img"]
    assert pairs(argv, "--ro-bind") == [(str(tools / "usr"), "/usr")]
    (tools / "etc/alternatives").mkdir(parents=True)
    (tools / "etc/ld.so.cache").write_text("")
    (tools / "etc/alternatives/awk").symlink_to("/usr/bin/mkfs.frob")
    (tools / "usr/bin/awk").symlink_to("/etc/alternatives/awk")
    assert sb.find("awk") == "/usr/bin/awk"
    assert pairs(Sandbox(tools=tools).argv(["x"]), "--ro-bind") == [
        (str(tools / "usr"), "/usr"), (str(tools / "etc/ld.so.cache"), "/etc/ld.so.cache"),
        (str(tools / "etc/alternatives"), "/etc/alternatives")]


def test_binaries_in_a_root_are_found_inside_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    executable(root / "usr/bin/emerge")
    (root / "bin").symlink_to("usr/bin")
    # An absolute symlink means the root's /usr/bin/python3, never the host's.
    (root / "usr/bin/python-exec").symlink_to("/usr/bin/python3")
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/env").symlink_to("../../usr/bin/emerge")
    assert find_in_root(root, "emerge") == "/usr/bin/emerge"
    assert find_in_root(root, "python-exec") is None
    assert resolve_in_root(root, "/usr/lib/env") == root / "usr/bin/emerge"
    assert resolve_in_root(root, "/bin/emerge") == root / "usr/bin/emerge"
    assert Sandbox().chroot(root).find("emerge") == "/usr/bin/emerge"
    with pytest.raises(MkosiError, match=f"'nothere' was not found in {root}"):
        run(["nothere"], sandbox=Sandbox().chroot(root))


def test_missing_tools_say_where_they_were_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError) as e:
        run(["no-such-tool-anywhere"], sandbox=Sandbox(search_paths=(tmp_path,)))
    assert "'no-such-tool-anywhere' was not found on this host" in str(e.value)
    assert mkosi.run.missing_tool("mkfs.ext4", Sandbox()).hint == "install it with: apt-get install e2fsprogs"
    with pytest.raises(MkosiError, match=r"'mkfs.ext4' was not found in the tools tree /nonexistent-tools"):
        run(["mkfs.ext4"], sandbox=Sandbox(tools=Path("/nonexistent-tools")))


def test_using_sandbox_is_the_default_only_inside_the_block(tmp_path: Path) -> None:
    mine = executable(tmp_path / "frobnicate")
    assert find_tool("frobnicate") is None
    with using_sandbox(Sandbox(search_paths=(tmp_path,))) as sb:
        assert current_sandbox() is sb
        assert find_tool("frobnicate") == str(mine)
        assert run(["frobnicate"]).returncode == 0
    assert current_sandbox() == Sandbox() and find_tool("frobnicate") is None


def test_a_verb_runs_with_its_images_search_paths(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(wd / "tools/frobnicate")
    seen: list[object] = []

    def verb(args: Args, config: Config) -> None:
        seen.append(find_tool("frobnicate"))

    monkeypatch.setitem(mkosi.verbs.VERBS, Verb.summary, verb)
    assert mkosi.verbs.run_verb(*load_both(f"--extra-search-paths={wd / 'tools'}")) == 0
    assert mkosi.verbs.run_verb(*load_both()) == 0
    assert seen == [str(wd / "tools/frobnicate"), None]
    assert current_sandbox() == Sandbox()


def test_sub_images_are_built_with_their_own_search_paths(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(wd / "sub/frobnicate")
    seen: list[tuple[str, object]] = []

    def record(what: str) -> object:
        return lambda args, config: seen.append((what, find_tool("frobnicate")))

    monkeypatch.setattr(mkosi.verbs, "ensure_built", record("built"))
    monkeypatch.setitem(mkosi.verbs.VERBS, Verb.shell, record("shell"))
    args, sub = load_both(f"--extra-search-paths={wd / 'sub'}", verb="shell")
    _, main = load_both(verb="shell")
    assert mkosi.verbs.run_verbs(args, [sub, main]) == 0
    assert seen == [("built", str(wd / "sub/frobnicate")), ("shell", None)]


# ---------------------------------------------------------------- what gets mounted


def test_host_tools_on_a_root_get_api_filesystems_and_binds_there(tmp_path: Path) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    cache.mkdir()
    sb = Sandbox().in_root(root).with_mounts(Mount(cache, str(root / "var/cache/dnf")))
    argv = sb.argv(["/usr/bin/dnf", "install"])
    assert argv[:4] == ["bwrap", "--dev-bind", "/", "/"]
    assert argv[argv.index("--proc") + 1] == str(root / "proc")
    assert ("/sys", str(root / "sys")) in pairs(argv, "--ro-bind")
    assert ("/dev", str(root / "dev")) in pairs(argv, "--dev-bind")
    assert pairs(argv, "--bind") == [(str(cache), str(root / "var/cache/dnf"))]
    assert "--unshare-net" not in argv and "--die-with-parent" in argv
    assert set(sb.mount_points()) == {root / "proc", root / "sys", root / "dev", root / "var/cache/dnf"}


def test_chdir_without_a_wrapper_is_the_working_directory(tmp_path: Path) -> None:
    assert run(["pwd"], sandbox=Sandbox(chdir=str(tmp_path)), capture=True).stdout.strip() == str(tmp_path)
    assert Sandbox(chdir="/srv").argv(["/bin/true"]) == ["/bin/true"]
    assert Sandbox(chdir="/srv", network=False).argv(["/bin/true"])[-5:-3] == ["--chdir", "/srv"]


def test_readonly_binds_and_network_off(tmp_path: Path) -> None:
    sb = Sandbox(network=False, mounts=(Mount(tmp_path, "/srv/x", readonly=True),))
    argv = sb.argv(["/bin/true"])
    assert pairs(argv, "--ro-bind") == [(str(tmp_path), "/srv/x")]
    assert "--unshare-net" in argv
    assert "--unshare-pid" not in argv and "--unshare-pid" in sb.but(private_pids=True).argv(["/bin/true"])


def test_chroot_makes_the_root_slash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sb = Sandbox().chroot(root, mounts=[Mount(tmp_path / "pkgs", "/var/cache/binpkgs")], network=False)
    argv = sb.argv(["/usr/bin/emerge", "x"])
    assert argv[1:4] == ["--bind", str(root), "/"]
    assert argv[argv.index("--proc") + 1] == "/proc"
    assert ("/dev", "/dev") in pairs(argv, "--dev-bind") and ("/sys", "/sys") in pairs(argv, "--ro-bind")
    assert (str(tmp_path / "pkgs"), "/var/cache/binpkgs") in pairs(argv, "--bind")
    assert "--unshare-net" in argv and argv[argv.index("--chdir") + 1] == "/"
    (tmp_path / "pkgs").mkdir()
    assert root / "var/cache/binpkgs" in sb.mount_points()


def test_nspawn_translation(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sb = Sandbox().nspawn(root, mounts=[Mount(tmp_path / "src", "/root/src"), Mount(tmp_path / "inc", "/usr/include",
                                                                                     readonly=True)],
                          chdir="/root/src", env={"WITH_DOCS": "0"}, container=Container(keep_unit=True,
                                                                                          machine="img_1"))
    argv = sb.argv(["/root/mkosi.build", "build"], "/usr/bin/systemd-nspawn")
    assert argv[0] == "/usr/bin/systemd-nspawn" and "--keep-unit" in argv
    assert f"--directory={root}" in argv and "--machine=img-1" in argv and "--as-pid2" in argv
    assert "--private-network" in argv and "--private-network" not in sb.but(network=True).argv(["x"])
    assert f"--bind={tmp_path / 'src'}:/root/src" in argv and f"--bind-ro={tmp_path / 'inc'}:/usr/include" in argv
    assert "--chdir=/root/src" in argv and "--setenv=WITH_DOCS" in argv
    assert argv[-3:] == ["--", "/root/mkosi.build", "build"]
    assert sb.find("ls") == "ls" and sb.mount_points() == []
    boot = Sandbox().nspawn(tmp_path / "img.raw", container=Container(image=True, boot=True)).argv([], "nspawn")
    assert f"--image={tmp_path / 'img.raw'}" in boot and boot[-1] == "--boot" and "--" not in boot


def test_installers_describe_their_sandboxes(tmp_path: Path) -> None:
    root, ws = tmp_path / "root", tmp_path / "ws"
    host = Sandbox(search_paths=(tmp_path / "bin",))
    dnf = dnf_sandbox(DnfConfig(root=root, workspace=ws, release="40", architecture="x86_64", repos=(),
                                sandbox=host))
    assert dnf.mode == Mode.host and dnf.root == root and dnf.api_filesystems
    assert dnf.search_paths == host.search_paths
    assert dnf.mounts == (Mount(ws / "dnf/cache", str(root / "var/cache/dnf")),)
    zyp = zypper.zypper_sandbox(zypper.ZypperConfig(root=root, workspace=ws, repos=(), cache_dir=tmp_path / "c"))
    assert zyp.mounts == (Mount(tmp_path / "c/zypp", str(root / "var/cache/zypp")),)
    pac = pacman.pacman_sandbox(pacman.PacmanConfig(root=root, workspace=ws, architecture="x86_64", repos=()))
    assert pac.api_filesystems and pac.mounts == ()
    cfg = emerge.EmergeConfig(root=root, workspace=ws, mirror="m", architecture="amd64", network=False)
    ch = emerge.chroot_sandbox(cfg)
    assert ch.mode == Mode.chroot and ch.clear_env and not ch.network
    assert ch.environment == emerge.CHROOT_ENV
    assert {m.target for m in ch.mounts} == {"/var/cache/distfiles", "/var/cache/binpkgs"}


def test_scripts_run_in_nspawn_with_their_environment(wd: Path) -> None:
    config = load("--environment=TOKEN=" + SECRET, "--extra-search-paths=/opt/tools")
    ctx = Context(Args(), config, wd, Phase.final, wd / "root", None, wd)
    sb = script_sandbox(ctx, network=False, chdir="/root/src", binds=[(wd, "/root/src")])
    assert sb.mode == Mode.nspawn and sb.root == wd / "root" and sb.search_paths == (Path("/opt/tools"),)
    assert sb.environment["TOKEN"] == SECRET
    argv = sb.argv(["/root/mkosi.postinst", "final"], "systemd-nspawn")
    assert "--setenv=TOKEN" in argv and not any(SECRET in a for a in argv)


# ---------------------------------------------------------------- secrets


def test_environment_values_never_reach_the_logged_command_line(
        tmp_path: Path, debug_log: None, capfd: pytest.CaptureFixture[str]) -> None:
    sb = Sandbox(env=(("TOKEN", SECRET),))
    proc = run(["sh", "-c", 'test "$TOKEN" = "$1" && echo ok', "sh", SECRET.upper()], sandbox=sb, check=False,
               capture=True)
    assert proc.returncode == 1
    proc = run(["sh", "-c", 'printf %s "$TOKEN"'], sandbox=sb, capture=True)
    assert proc.stdout == SECRET
    with pytest.raises(CommandError) as e:
        run(["sh", "-c", "exit 3"], sandbox=sb, env={"OTHER": SECRET})
    assert SECRET not in str(e.value)
    err = capfd.readouterr().err
    assert "+ sh -c" in err and SECRET not in err


def test_root_password_is_not_logged(debug_log: None, capfd: pytest.CaptureFixture[str]) -> None:
    if find_tool("openssl") is None:
        pytest.skip("openssl is not installed")
    hashed = hash_password(SECRET)
    assert hashed.startswith("$6$")
    err = capfd.readouterr().err
    assert "openssl passwd" in err and SECRET not in err


def test_clear_env_gives_only_the_sandbox_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKOSI_TEST_LEAK", "1")
    sb = Sandbox(env=(("PATH", "/usr/bin:/bin"), ("A", "b")), clear_env=True)
    out = run(["/usr/bin/env"], sandbox=sb, capture=True).stdout
    assert sorted(out.split()) == ["A=b", "PATH=/usr/bin:/bin"]


# ---------------------------------------------------------------- real runs (root and bubblewrap)

needs_bwrap = needs_privileges("bwrap")


def _install_shell(root: Path) -> None:
    """The host's dash with the libraries it needs, at their /usr paths below root, plus /bin, /lib and
    /lib64 symlinks into usr/ as a merged-/usr system has them."""
    sh = Path(shutil.which("dash") or "/bin/sh")
    out = subprocess.run(["ldd", str(sh)], capture_output=True, text=True, check=True).stdout
    files = [sh] + [Path(w) for line in out.splitlines() for w in line.split() if w.startswith("/")]
    for f in files:
        canonical = Path(os.path.realpath(f.parent)) / f.name
        dest = root / canonical.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), dest)
    shutil.copy2(os.path.realpath(sh), root / "usr/bin/sh")
    for d in ("bin", "lib", "lib64"):
        if (root / "usr" / d).is_dir() and not (root / d).exists():
            (root / d).symlink_to(f"usr/{d}")


@needs_bwrap
def test_tools_tree_binaries_and_libraries_are_used(tmp_path: Path) -> None:
    """A tree with nothing but a shell, its libraries and a marker: the command runs the tree's shell
    (the host's /usr is not visible to it) and still sees the host's other directories."""
    if not Path("/lib64").is_symlink() and Path("/lib64").exists():
        pytest.skip("the host does not have a merged /usr")
    tools = tmp_path / "tools"
    _install_shell(tools)
    (tools / "usr/share").mkdir(parents=True, exist_ok=True)
    (tools / "usr/share/mkosi-marker").write_text("from-the-tools-tree\n")
    (tmp_path / "work.txt").write_text("workspace\n")
    sb = Sandbox(tools=tools)
    assert sb.find("sh") == "/usr/bin/sh" and sb.find("ls") is None
    script = f'read a < /usr/share/mkosi-marker; read b < {tmp_path}/work.txt; echo "$a $b"; ' \
             'test -e /usr/bin/ls && echo host-usr-visible || true'
    out = run(["sh", "-c", script], sandbox=sb, capture=True).stdout
    assert out == "from-the-tools-tree workspace\n"
    assert not Path("/usr/share/mkosi-marker").exists()


@needs_bwrap
def test_mounts_exist_only_while_the_command_runs(tmp_path: Path) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    (cache / "x").mkdir(parents=True)
    (cache / "x/pkg").write_text("package\n")
    sb = Sandbox().in_root(root).with_mounts(Mount(cache, str(root / "var/cache/dnf")))
    out = run(["sh", "-c", f"cat {root}/var/cache/dnf/x/pkg; test -r {root}/proc/self/status && echo proc"],
              sandbox=sb, capture=True).stdout
    assert out == "package\nproc\n"
    assert mounts_below(root) == [] and (root / "var/cache/dnf").is_dir()


@needs_bwrap
def test_network_off_leaves_only_loopback() -> None:
    devices = run(["cat", "/proc/net/dev"], sandbox=Sandbox(network=False), capture=True).stdout
    names = {line.split(":")[0].strip() for line in devices.splitlines()[2:]}
    assert names == {"lo"}


@needs_bwrap
def test_chroot_runs_the_roots_binaries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _install_shell(root)
    (root / "etc").mkdir()
    (root / "etc/marker").write_text("in-root\n")
    sb = Sandbox().chroot(root, env={"PATH": "/usr/bin"}, clear_env=True)
    out = run(["sh", "-c", "read a < /etc/marker; echo $a; test -d /proc/self && echo proc"], sandbox=sb,
              capture=True).stdout
    assert out == "in-root\nproc\n"
    assert mounts_below(root) == []


def test_tools_tree_path_is_the_sandbox_of_a_verb(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = wd / "tools-tree"
    executable(tools / "usr/bin/systemd-repart")
    seen: list[tuple[object, object]] = []

    def verb(args: Args, config: Config) -> None:
        seen.append((current_sandbox().tools, find_tool("systemd-repart")))

    monkeypatch.setitem(mkosi.verbs.VERBS, Verb.summary, verb)
    assert mkosi.verbs.run_verb(*load_both(f"--tools-tree={tools}")) == 0
    assert mkosi.verbs.run_verb(*load_both("--tools-tree=no")) == 0
    assert seen[0] == (tools, "/usr/bin/systemd-repart")
    assert seen[1][0] is None


def test_a_tools_tree_must_have_a_usr(wd: Path) -> None:
    (wd / "not-a-tree").mkdir()
    with pytest.raises(MkosiError, match=r"--tools-tree: '.*not-a-tree' is not a tools tree"):
        load_both(f"--tools-tree={wd / 'not-a-tree'}", verb="build")
    # The default tools tree is built before the verb runs (tests/unit/test_tools_tree.py), not refused.
    assert load_both("--tools-tree=default", verb="build")[1].tools_tree == "default"


def test_with_a_tools_tree_programs_are_found_in_it_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's $PATH (a virtual environment) and Python variables do not reach the tree's programs."""
    monkeypatch.setenv("PATH", f"/opt/venv/bin:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("VIRTUAL_ENV", "/opt/venv")
    env = mkosi.run.tools_tree_environment(Sandbox(tools=tmp_path, search_paths=(Path("/extra"),)))
    assert env == {"PATH": "/extra:/usr/bin:/usr/sbin"}
    seen: dict[str, object] = {}

    def fake_run(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
        seen.update(env)
        return subprocess.CompletedProcess(argv, 0, "", "")

    executable(tmp_path / "usr/bin/frob")
    monkeypatch.setattr(subprocess, "run", fake_run)
    run(["frob"], sandbox=Sandbox(tools=tmp_path))
    assert seen["PATH"] == "/usr/bin:/usr/sbin" and "PYTHONPATH" not in seen and "VIRTUAL_ENV" not in seen


def test_sandbox_verb_takes_a_double_dash(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        return subprocess.CompletedProcess(argv, 3, "", "")

    monkeypatch.setattr(mkosi.verbs, "run", fake_run)
    args, configs = load_args(["sandbox", "--", "true", "x"])
    config = configs[0]
    assert mkosi.verbs.VERBS[Verb.sandbox](args, config) == 3
    assert seen == [["true", "x"]]


def test_the_sandbox_programs_come_from_the_host_with_a_tools_tree(wd: Path) -> None:
    """bwrap and systemd-nspawn set the sandbox up from outside; the tools tree needs only the rest."""
    tools = wd / "tools-tree"
    _, config = load_both(f"--tools-tree={tools}", "--distribution=debian", "--format=directory")
    needed = host_tools(config, runtime=False)
    assert "bwrap" in needed
    for name in needed:
        if name not in WRAPPERS:
            executable(tools / "usr/bin" / name)
    with using_sandbox(Sandbox.for_config(config)):
        if shutil.which("bwrap") and shutil.which("systemd-nspawn"):
            check_host_tools(config)
        (tools / "usr/bin/tar").unlink()
        with pytest.raises(MkosiError, match="'tar' was not found in the tools tree"):
            check_host_tools(config)


def test_mounts_run_on_the_host_even_with_sandbox_trees_and_a_tools_tree(tmp_path: Path) -> None:
    # A mount made inside bubblewrap ends with the command's namespace: with SandboxTrees= (or a tools
    # tree) every host-mode command is wrapped, so mount and umount use on_host(), which never is.
    sb = Sandbox(search_paths=(tmp_path,), tools=tmp_path / "tools", trees=((tmp_path / "tree", "/"),),
                 env=(("A", "1"),))
    assert sb.needs_wrapper()
    host = sb.on_host()
    assert not host.needs_wrapper() and host.wrapper_name() is None
    assert host.argv(["mount", "-t", "overlay", "overlay", "/x"]) == ["mount", "-t", "overlay", "overlay", "/x"]
    assert host.search_paths == (tmp_path,) and host.environment == {"A": "1"}
