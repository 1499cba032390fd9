"""One short function per verb."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.boot.signing import generate_secure_boot_keys
from mkosi.build import build_command
from mkosi.cache import package_cache_dir
from mkosi.config.enums import Distribution, Verb
from mkosi.config.parse import format_help
from mkosi.config.settings import Args, Config
from mkosi.container import mounted_image, run_container
from mkosi.dependencies import host_packages
from mkosi.errors import MkosiError
from mkosi.formats import FormatKind
from mkosi.history import remove_history
from mkosi.output.artifacts import to_clean
from mkosi.preflight import images_locked, recover_interrupted_move
from mkosi.reproduce import check_reproducible
from mkosi.run import run, using_sandbox
from mkosi.sandbox import Sandbox
from mkosi.scripts import run_host_scripts
from mkosi.serve import run_serve
from mkosi.summary import summary_json, summary_text
from mkosi.tools_tree import remove_tools_tree, with_tools_tree
from mkosi.vm import run_ssh, run_vm


def verb_summary(args: Args, configs: list[Config]) -> None:
    print(summary_json(args, configs) if args.json else summary_text(args, configs))


def verb_cat_config(args: Args, configs: list[Config]) -> None:
    """Every file that was read, in order, for every image."""
    several = len(configs) > 1
    printed = False
    for config in configs:
        if several:
            print(f"{chr(10) if printed else ''}### image: {config.image}")
        for path in config.config_files:
            if printed or several:
                print()
            text = path.read_text(errors="replace")
            print(f"# {path}")
            print(text, end="" if text.endswith("\n") else "\n")
            printed = True
    if not printed:
        log.info("No settings files were loaded.")


def bumped_version(version: str) -> str:
    parts = version.split(".")
    last = parts[-1]
    if last.isdigit():
        parts[-1] = str(int(last) + 1).zfill(len(last))
    else:
        parts.append("1")
    return ".".join(parts)


def verb_bump(args: Args, config: Config) -> None:
    assert config.version_file is not None
    current = config.image_version
    new = bumped_version(current) if current else "1"
    config.version_file.write_text(new + "\n")
    log.info(f"Bumped image version from {current or '(none)'} to {new} in {config.version_file}")


def secure_boot_common_name(template: str) -> str:
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return template.replace("%u", user)


def verb_genkey(args: Args, config: Config) -> None:

    key = config.secure_boot_key or Path("mkosi.secure-boot.key")
    crt = config.secure_boot_certificate or Path("mkosi.secure-boot.crt")
    for p in (key, crt):
        if p.exists() and args.force == 0:
            raise MkosiError(f"'{p}' already exists", hint="use -f to replace it")
        if not p.parent.is_dir():
            raise MkosiError(f"cannot write '{p}': directory '{p.parent}' does not exist")
    cn = secure_boot_common_name(config.secure_boot_common_name)
    generate_secure_boot_keys(cn, config.secure_boot_valid_days, key, crt)
    log.info(f"Wrote {key} and {crt} for CN={cn!r}, valid {config.secure_boot_valid_days} days")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    else:
        return
    log.info(f"Removed {path}")


def verb_clean(args: Args, config: Config) -> None:
    if config.output_dir is not None:
        recover_interrupted_move(config.output_dir)

    for p in to_clean(config, args.force):
        _remove(p)
    if config.image == "main":
        remove_history(Path.cwd())
    if args.force >= 1 and config.image == "main":
        remove_tools_tree(config)
    if args.force >= 2:
        cache = package_cache_dir(config)
        if cache is not None and cache.is_dir():
            for child in cache.iterdir():
                _remove(child)
    # After the outputs are gone, for what mkosi does not know about; never with the tools tree.
    run_host_scripts(args, config, "clean", outputdir=config.output_dir, tools=False)


def verb_build(args: Args, config: Config) -> None:

    built = check_reproducible(args, config) if args.check_reproducible else build_command(args, config)
    # With several images, the version is bumped once, after the main image (built last).
    if built and args.auto_bump and config.image == "main" and not args.rerun_build_scripts:
        verb_bump(args, config)


def ensure_built(args: Args, config: Config) -> None:
    """shell/boot/qemu/serve build the image first when it is missing, or again with -f."""
    assert config.output is not None
    if args.force > 0 or not (config.output.exists() or config.output.is_symlink()):

        build_command(args, config)


def verb_shell(args: Args, config: Config) -> int:

    ensure_built(args, config)
    return run_container(args, config, boot=False)


def verb_boot(args: Args, config: Config) -> int:

    ensure_built(args, config)
    return run_container(args, config, boot=True)


def verb_qemu(args: Args, config: Config) -> int:

    ensure_built(args, config)
    return run_vm(args, config)


def verb_ssh(args: Args, config: Config) -> int:

    return run_ssh(args, config)


def verb_serve(args: Args, config: Config) -> int:

    ensure_built(args, config)
    return run_serve(config)


def verb_not_yet(args: Args, config: Config) -> None:
    raise MkosiError(f"the '{args.verb.value}' verb is not implemented yet")


def verb_help(args: Args, config: Config) -> None:

    print(format_help())


def verb_burn(args: Args, config: Config) -> None:
    if not config.format.row.is_disk or config.output_compression or config.qcow2:
        raise MkosiError("burn needs an uncompressed raw GPT disk image")
    if len(args.cmdline) != 1:
        raise MkosiError("usage: mkosi burn DEVICE")
    device = Path(args.cmdline[0])
    if not device.exists():
        raise MkosiError(f"device '{device}' does not exist")
    if not config.output or not config.output.exists():
        raise MkosiError(f"image '{config.output}' does not exist; build it first")
    with open(config.output, "rb") as src, open(device, "r+b" if device.is_block_device() else "wb") as dst:
        shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())
    log.info(f"Wrote {config.output} to {device}")


def _image_root(config: Config, stack: contextlib.ExitStack) -> Path:
    """The root directory of the built image: the output itself, or its root partition mounted."""
    if config.output is None or not (config.output.exists() or config.output.is_symlink()):
        raise MkosiError(f"image '{config.output}' does not exist; build it first")
    kind = config.format.row.kind
    if kind is FormatKind.tree:
        return config.output
    if kind is FormatKind.disk and not (config.output_compression or config.qcow2):
        return stack.enter_context(mounted_image(config.output, writable=False))
    raise MkosiError(f"the '{config.format}' format cannot be read this way; use a directory or an "
                     "uncompressed disk image")


def _run_on_image(tool: str, args: Args, config: Config) -> int:
    with contextlib.ExitStack() as stack:
        root = _image_root(config, stack)
        return run([tool, f"--root={root}", *args.cmdline], check=False).returncode


def verb_journalctl(args: Args, config: Config) -> int:
    return _run_on_image("journalctl", args, config)


def verb_coredumpctl(args: Args, config: Config) -> int:
    return _run_on_image("coredumpctl", args, config)


def verb_sandbox(args: Args, config: Config) -> int:
    """Run a command with what mkosi runs its tools with (ExtraSearchPaths=, the tools tree)."""
    cmdline = list(args.cmdline)
    if cmdline[:1] == ["--"]:  # `mkosi sandbox -- CMD` as the manual writes it
        cmdline = cmdline[1:]
    if not cmdline:
        raise MkosiError(f"usage: mkosi {args.verb.value} COMMAND [ARGUMENTS...]")
    return run(cmdline, check=False, sandbox=Sandbox.for_config(config)).returncode


def verb_dependencies(args: Args, configs: list[Config]) -> None:
    missing = []
    for tool, package, installed in host_packages(configs):
        print(f"{package:<24} {tool}{'' if installed else '  (missing)'}")
        if not installed:
            missing.append(package)
    if missing:
        log.info("Install the missing ones with: apt-get install " + " ".join(dict.fromkeys(missing)))


INIT_CONF = """\
[Distribution]
Distribution={distribution}
Release={release}

[Output]
Format=directory
ImageId={image_id}

[Content]
Packages=systemd
"""

INIT_GITIGNORE = ("mkosi.output/", "mkosi.cache/", "mkosi.builddir/", "mkosi.local.conf", "mkosi.local/",
                  "mkosi.rootpw", "mkosi.passphrase", "mkosi.key", "mkosi.crt")


def verb_init(args: Args, config: Config) -> None:
    """A starting mkosi.conf for the host's distribution, and .gitignore entries for what builds leave."""
    conf = Path("mkosi.conf")
    if conf.exists() and args.force == 0:
        raise MkosiError("'mkosi.conf' already exists", hint="use -f to replace it")
    conf.write_text(INIT_CONF.format(distribution=config.distribution.value, release=config.release,
                                     image_id=Path.cwd().name or "image"))
    gitignore = Path(".gitignore")
    present = gitignore.read_text().split("\n") if gitignore.exists() else []
    added = [line for line in INIT_GITIGNORE if line not in present]
    if added:
        with gitignore.open("a") as f:
            if present and present[-1] != "":
                f.write("\n")
            f.write("\n".join(added) + "\n")
    Path("mkosi.output").mkdir(exist_ok=True)
    log.info(f"Wrote {conf} and {len(added)} .gitignore entries; build with 'mkosi build'")


# ---------------------------------------------------------------- documentation

PACKAGE_DIR = Path(__file__).resolve().parent
# The manuals of upstream mkosi this implementation does not have.
OTHER_MANUALS = ("mkosi-initrd", "initrd", "mkosi-sandbox", "sandbox", "mkosi.news", "news")


def manual_sources() -> tuple[Optional[Path], Optional[Path]]:
    """The installed man page mkosi(1) and the Markdown manual: package data of an installed mkosi (made
    from mkosi.md when the package is built), or the mkosi.md of a source checkout."""
    page = PACKAGE_DIR / "resources" / "mkosi.1"
    markdown = next((p for p in (PACKAGE_DIR / "resources" / "mkosi.md", PACKAGE_DIR.parent / "mkosi.md")
                     if p.is_file()), None)
    return (page if page.is_file() else None), markdown


def verb_documentation(args: Args, config: Config) -> int:
    """The manual: the man page with man when both are there, the Markdown text otherwise."""
    if len(args.cmdline) > 1 or (args.cmdline and args.cmdline[0] not in ("mkosi", *OTHER_MANUALS)):
        raise MkosiError("usage: mkosi documentation [mkosi]")
    if args.cmdline and args.cmdline[0] in OTHER_MANUALS:
        raise MkosiError(f"the '{args.cmdline[0]}' manual is not part of this implementation; "
                         "'mkosi documentation' shows mkosi(1)")
    page, markdown = manual_sources()
    man = shutil.which("man")
    if page is not None and man is not None:
        sys.stdout.flush()
        return subprocess.run([man, "--local-file", os.fspath(page)], check=False).returncode
    if markdown is None:
        raise MkosiError("the manual is not installed (neither mkosi.1 nor mkosi.md were found next to mkosi)")
    sys.stdout.write(markdown.read_text())
    return 0


# ---------------------------------------------------------------- completion

COMPLETION_SHELLS = ("bash", "zsh", "fish")


def verb_completion(args: Args, config: Config) -> None:
    """The script that makes the shell ask mkosi for completions (argcomplete's protocol): verbs,
    options and the values of options with fixed choices complete."""
    if len(args.cmdline) != 1 or args.cmdline[0] not in COMPLETION_SHELLS:
        raise MkosiError(f"usage: mkosi completion {'|'.join(COMPLETION_SHELLS)}")
    try:
        # Optional, like in __main__: only completion needs it.
        from argcomplete.shell_integration import shellcode  # noqa: PLC0415
    except ImportError:
        raise MkosiError("shell completion needs the Python package argcomplete", hint="pip install argcomplete")
    print(shellcode(["mkosi"], shell=args.cmdline[0]), end="")


# ---------------------------------------------------------------- latest-snapshot

DEBIAN_SNAPSHOT_MIRROR = "https://snapshot.debian.org"
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z$")
SNAPSHOT_TIMEOUT = 30


def fetch_json(url: str) -> object:
    """GET a JSON document; an unreachable or broken server is a one-line error naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=SNAPSHOT_TIMEOUT) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise MkosiError(f"cannot reach {url}: {reason}",
                         hint="latest-snapshot needs network access to the snapshot mirror (Mirror= chooses it)")
    try:
        return json.loads(data)
    except ValueError:
        raise MkosiError(f"{url} did not answer with JSON")


def latest_debian_snapshot(mirror: str) -> str:
    """The newest timestamp of the 'debian' archive on a snapshot.debian.org-like server, from its
    machine-readable interface (/mr/timestamp/)."""
    url = f"{mirror.rstrip('/')}/mr/timestamp/?archive=debian"
    answer = fetch_json(url)
    result = answer.get("result") if isinstance(answer, dict) else None
    stamps = result.get("debian") if isinstance(result, dict) else None
    valid = sorted(s for s in stamps if isinstance(s, str) and SNAPSHOT_ID.match(s)) if isinstance(stamps, list) else []
    if not valid:
        raise MkosiError(f"{url} lists no snapshots of the debian archive")
    return valid[-1]


def verb_latest_snapshot(args: Args, config: Config) -> None:
    if config.distribution != Distribution.debian:
        raise MkosiError(f"latest-snapshot is not implemented yet for {config.distribution.value} "
                         "(only Debian's snapshot.debian.org is)")
    print(latest_debian_snapshot(config.mirror or DEBIAN_SNAPSHOT_MIRROR))


# ---------------------------------------------------------------- sysupdate

SYSUPDATE_LIBEXEC = "/usr/lib/systemd/systemd-sysupdate"


def find_sysupdate(sandbox: Sandbox) -> str:
    """systemd-sysupdate as mkosi's tools see it: on the search paths, or where systemd installs it
    (outside $PATH), on the host or in the tools tree."""
    found = sandbox.find("systemd-sysupdate")
    if found is not None:
        return found
    if ((sandbox.tools or Path("/")) / SYSUPDATE_LIBEXEC.lstrip("/")).is_file():
        return SYSUPDATE_LIBEXEC
    where = f"the tools tree {sandbox.tools}" if sandbox.tools else "this host"
    raise MkosiError(f"systemd-sysupdate was not found on {where} (not in PATH, not at {SYSUPDATE_LIBEXEC})",
                     hint="install systemd-sysupdate (systemd 251 or newer), or use a ToolsTree= that has it")


def verb_sysupdate(args: Args, config: Config) -> int:
    """systemd-sysupdate with the image's transfer definitions, taking new versions from the output
    directory; the arguments after the verb go to it (mkosi sysupdate -- list)."""
    if config.sysupdate_dir is None:
        raise MkosiError("mkosi sysupdate needs transfer definitions: set SysupdateDirectory= or create "
                         "mkosi.sysupdate/")
    if not config.sysupdate_dir.is_dir():
        raise MkosiError(f"SysupdateDirectory= '{config.sysupdate_dir}' is not a directory")
    sandbox = Sandbox.for_config(config)
    tool = find_sysupdate(sandbox)
    assert config.output_dir is not None
    # `mkosi sysupdate -- list` (the manual's form) and `mkosi sysupdate list` mean the same.
    extra = args.cmdline[1:] if args.cmdline[:1] == ["--"] else args.cmdline
    argv = [tool, f"--transfer-source={config.output_dir}", f"--definitions={config.sysupdate_dir}", *extra]
    return run(argv, sandbox=sandbox, check=False).returncode


# Verbs that see every image at once.
ALL_IMAGES_VERBS: dict[Verb, Callable[[Args, list[Config]], None]] = {
    Verb.summary: verb_summary,
    Verb.cat_config: verb_cat_config,
    Verb.dependencies: verb_dependencies,
}

# Verbs run for one image: build and clean for each image in build order, the others for the main image.
VERBS: dict[Verb, Callable[[Args, Config], Optional[int]]] = {
    Verb.build: verb_build,
    Verb.clean: verb_clean,
    Verb.shell: verb_shell,
    Verb.boot: verb_boot,
    Verb.qemu: verb_qemu,
    Verb.vm: verb_qemu,
    Verb.ssh: verb_ssh,
    Verb.serve: verb_serve,
    Verb.bump: verb_bump,
    Verb.genkey: verb_genkey,
    Verb.help: verb_help,
    Verb.burn: verb_burn,
    Verb.journalctl: verb_journalctl,
    Verb.coredumpctl: verb_coredumpctl,
    Verb.sandbox: verb_sandbox,
    Verb.box: verb_sandbox,
    Verb.init: verb_init,
    Verb.documentation: verb_documentation,
    Verb.completion: verb_completion,
    Verb.latest_snapshot: verb_latest_snapshot,
    Verb.sysupdate: verb_sysupdate,
}
EACH_IMAGE_VERBS = (Verb.build, Verb.clean)
# Verbs that run the image's tools: with ToolsTree=default the tree is built (or found cached) first.
TOOLS_TREE_VERBS = (Verb.build, Verb.shell, Verb.boot, Verb.qemu, Verb.vm, Verb.ssh, Verb.serve, Verb.genkey,
                    Verb.burn, Verb.journalctl, Verb.coredumpctl, Verb.sandbox, Verb.box)


def run_verbs(args: Args, configs: list[Config]) -> int:
    """Run the verb over the images (sub-images first, the main image last); returns the exit status."""
    if args.verb in ALL_IMAGES_VERBS:
        ALL_IMAGES_VERBS[args.verb](args, configs)
        sys.stdout.flush()
        return 0
    if args.verb in TOOLS_TREE_VERBS:
        configs = with_tools_tree(configs)
    if args.verb == Verb.build and len(configs) > 1:
        return build_in_parallel(args, configs)
    if args.verb in EACH_IMAGE_VERBS:
        code = 0
        for config in configs:
            code = run_verb(args, config) or code
        return code
    if args.verb.needs_build():
        # The main image may use what the sub-images make (an initrd, an extension): build those first.
        for config in configs[:-1]:
            with using_sandbox(Sandbox.for_config(config)):
                ensure_built(args, config)
    return run_verb(args, configs[-1])


def run_verb(args: Args, config: Config) -> int:
    """Run the verb; returns the exit status (non-zero when a container command failed)."""
    with using_sandbox(Sandbox.for_config(config)):
        code = VERBS[args.verb](args, config)
    sys.stdout.flush()
    return code or 0


def _build_one(args: Args, config: Config) -> int:
    """The body of a build process of one image (its output goes to the parent, which prefixes it)."""
    try:
        return run_verb(args, config)
    except MkosiError as e:
        log.error(str(e))
        if e.hint:
            print(f"       Hint: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as e:  # a bug: reported like the main process does, in one line
        log.error(f"internal error: {type(e).__name__}: {e}")
        return 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


_RELAY_LOCK = threading.Lock()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _relay(fd: int, prefix: bytes) -> None:
    """Copy a build process's output (its stdout and stderr, its tools' included) to stderr, each line
    starting with the image's name, so that the lines of images built at the same time stay apart."""
    with os.fdopen(fd, "rb") as f:
        for line in f:
            with _RELAY_LOCK:
                sys.stderr.buffer.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
                sys.stderr.buffer.flush()


def _start_build(args: Args, config: Config) -> tuple[int, threading.Thread]:
    """Fork the build of one image, its output going through a pipe to a relay thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    # No relay thread is in the middle of writing (holding stderr's lock) when the process is copied.
    with _RELAY_LOCK:
        pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.close(w)
            sys.stdout = open(1, "w", buffering=1, errors="replace", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, errors="replace", closefd=False)  # noqa: SIM115
            # SIGTERM (sent when another image failed) takes the path of Ctrl-C: the build cleans up.
            signal.signal(signal.SIGTERM, _interrupt)
            code = _build_one(args, config)
        finally:
            os._exit(code)
    os.close(w)
    relay = threading.Thread(target=_relay, args=(r, f"[{config.image}] ".encode()), name=f"relay-{config.image}",
                             daemon=True)
    relay.start()
    return pid, relay


def build_dependencies(configs: list[Config]) -> dict[str, set[str]]:
    """Image name -> the images built before it: its Dependencies=; for the main image, all others."""
    return {c.image: set(c.dependencies) if c.image != "main" else {d.image for d in configs if d.image != "main"}
            for c in configs}


def build_in_parallel(args: Args, configs: list[Config]) -> int:
    """Build several images, each in a process of its own, each as soon as the images it depends on are
    built (the main image after all the others), as many at a time as there are CPUs. The output
    directories are locked once for all of them. After a failure no new build starts and the running
    ones are stopped (SIGTERM: they clean up their workspaces as after Ctrl-C)."""
    deps = build_dependencies(configs)
    pending = {c.image: c for c in configs}
    running: dict[int, tuple[str, threading.Thread]] = {}
    done: set[str] = set()
    failed: Optional[int] = None
    slots = max(1, os.cpu_count() or 1)

    def stop_others(reason: str) -> None:
        names = ", ".join(f"'{n}'" for n, _ in running.values())
        log.error(f"{reason}; stopping the build of {names}" if running else reason)
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    with images_locked(c.output_dir for c in configs if c.output_dir is not None):
        while pending or running:
            ready = [n for n in pending if deps[n] <= done] if failed is None else []
            while ready and len(running) < slots:
                name = ready.pop(0)
                pid, relay = _start_build(args, pending.pop(name))
                running[pid] = (name, relay)
            if not running:
                break
            try:
                pid, status = os.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the builds already, SIGTERM did not: ask them to stop and clean up.
                failed = failed or 130
                stop_others("interrupted")
                continue
            name, relay = running.pop(pid)
            relay.join(timeout=5)  # a process the build left running may hold the pipe open
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                done.add(name)
            elif failed is None:
                failed = code if code > 0 else 130
                stop_others(f"building image '{name}' failed")
        if failed is None and pending:
            # Cannot happen: order_images() rejected cycles and unknown names already.
            raise MkosiError(f"images {', '.join(sorted(pending))} wait for images that are not built")
    return failed or 0
