"""SSH into booted images: key generation, the ssh command line, and waiting for sshd."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import pid_alive, require_tool, run

# ssh exits with 255 when it could not connect or authenticate (or the connection broke);
# anything else is the remote command's exit status.
SSH_CONNECTION_FAILED = 255


def generate_ssh_keypair(private_key_path: Path, comment: str, *, overwrite: bool = False) -> Path:
    """Create an ed25519 key pair without passphrase: `private_key_path` (mode 0600) and
    `private_key_path`.pub. Returns the public key path."""
    public = private_key_path.with_name(private_key_path.name + ".pub")
    if private_key_path.exists() or public.exists():
        if not overwrite:
            raise MkosiError(
                f"SSH key {private_key_path} already exists",
                hint="remove it first or use the existing key",
            )
        private_key_path.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
    private_key_path.parent.mkdir(parents=True, exist_ok=True)
    run(
        [require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", private_key_path],
        stdin=subprocess.DEVNULL,
        capture=True,
    )
    private_key_path.chmod(0o600)
    return public


def ssh_command(
    host: str,
    port: int,
    key: Path | None,
    agent_socket: str | None,
    command: Sequence[str],
    *,
    user: str | None = "root",
    connect_timeout: int = 10,
    tty: bool | None = None,
) -> list[str]:
    """The ssh argv to run `command` (an interactive shell if empty) on a throw-away VM.

    Host keys are neither checked nor remembered (every VM boot has new ones), log output is
    limited to errors and connecting gives up after `connect_timeout` seconds. With `key` only
    that identity is offered; `agent_socket` points ssh at an agent. `user` is prepended unless
    `host` already names one. `tty` forces (-t) or disables (-T) a pseudo-terminal.
    """
    argv = [
        "ssh",
        "-p", str(port),
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "CheckHostIP=no",
        "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=6",
    ]  # fmt: skip
    if key is not None:
        argv += ["-i", os.fspath(key), "-o", "IdentitiesOnly=yes"]
    if agent_socket is not None:
        argv += ["-o", f"IdentityAgent={agent_socket}"]
    if tty is True:
        argv.append("-t")
    elif tty is False:
        argv.append("-T")
    destination = host if user is None or "@" in host else f"{user}@{host}"
    argv.append(destination)
    if command:
        # ssh hands the words to the remote shell joined by spaces; "--" ends ssh's options.
        argv += ["--", *command]
    return argv


def connect_with_retry(
    argv: Sequence[str],
    timeout_seconds: int,
    *,
    interval: float = 1.0,
) -> int:
    """Run an ssh command, retrying while it fails to connect (exit status 255), e.g. because
    the VM is still booting, until `timeout_seconds` have passed. Returns the exit status of
    the first attempt that got through (the remote command's). Raises MkosiError if none did.

    The command runs in the foreground with the caller's terminal. A remote command that itself
    exits with 255 looks like a connection failure and is retried while time remains.
    """
    deadline = time.monotonic() + timeout_seconds
    attempt = 0
    while True:
        attempt += 1
        proc = run(argv, check=False)
        if proc.returncode != SSH_CONNECTION_FAILED:
            return int(proc.returncode)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if attempt == 1:
            log.info(f"Waiting up to {timeout_seconds}s for SSH to become reachable…")
        log.debug(f"ssh attempt {attempt} failed to connect, retrying")
        time.sleep(min(interval, remaining))
    raise MkosiError(
        f"could not connect with ssh within {timeout_seconds}s ({attempt} attempts)",
        hint="check that the image runs sshd and has the public key in root's authorized_keys",
    )


# ---------------------------------------------------------------------------------------------
# Running machines: how `mkosi ssh` finds them
# ---------------------------------------------------------------------------------------------

# Directory below the output directory with one small file per running machine.
MACHINES_DIR = ".mkosi-machines"


@dataclasses.dataclass(frozen=True)
class MachineRecord:
    """What `mkosi ssh` needs to reach a running machine: its name, kind (vm or container), where its
    sshd is reached from the host, and the process (mkosi's own) that runs it. Never a secret."""

    machine: str
    kind: str
    host: str
    port: int
    pid: int
    vsock_cid: int | None = None


def machine_state_path(output_dir: Path, machine: str) -> Path:
    return output_dir / MACHINES_DIR / f"{machine}.json"


def read_machine(path: Path) -> MachineRecord | None:
    """The record at `path` if its process still runs; a record left by a process that died is removed."""
    try:
        data = json.loads(path.read_text())
        record = MachineRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        log.debug(f"ignoring unreadable machine record {path}: {e}")
        return None
    if not pid_alive(record.pid):
        path.unlink(missing_ok=True)
        return None
    return record


def running_machines(output_dir: Path) -> list[MachineRecord]:
    directory = output_dir / MACHINES_DIR
    if not directory.is_dir():
        return []
    records = [read_machine(p) for p in sorted(directory.glob("*.json"))]
    return [r for r in records if r is not None]


@contextlib.contextmanager
def recorded_machine(path: Path, record: MachineRecord) -> Iterator[MachineRecord]:
    """Record a machine while it runs. A running machine of the same name is an error (two instances of
    one image need Ephemeral= and different Machine= names)."""
    other = read_machine(path)
    if other is not None:
        raise MkosiError(f"machine '{record.machine}' is already running (process {other.pid})",
                         hint="stop it, or start another instance with --ephemeral --machine=NAME")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
    os.replace(tmp, path)
    try:
        yield record
    finally:
        current = read_machine(path)
        if current is None or current.pid == record.pid:
            path.unlink(missing_ok=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, picked by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def sshd_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether an ssh server greets on host:port. qemu's port forwarding accepts connections before the
    guest listens (and then closes them), so only the server's greeting counts."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_for_sshd(
    record: MachineRecord,
    timeout_seconds: int,
    *,
    interval: float = 1.0,
    alive: Callable[[], bool] | None = None,
    quiet: bool = False,
) -> None:
    """Wait quietly (one progress line, none with `quiet`) until the machine's sshd greets. `timeout_seconds`
    0 means as long as the machine runs. Raises MkosiError when the machine stops or the time is over."""
    alive = alive or (lambda: pid_alive(record.pid))
    if sshd_answers(record.host, record.port):
        return
    limit = f" (up to {timeout_seconds}s)" if timeout_seconds else ""
    if not quiet:
        log.info(f"Waiting for {record.kind} '{record.machine}' to accept ssh connections on "
                 f"{record.host}:{record.port}{limit}…")
    start = time.monotonic()
    while True:
        if not alive():
            raise MkosiError(f"{record.kind} '{record.machine}' stopped before its sshd answered")
        if timeout_seconds and time.monotonic() - start > timeout_seconds:
            raise MkosiError(f"the sshd of '{record.machine}' did not answer within {timeout_seconds}s",
                             hint="check that the image was built with Ssh=yes")
        time.sleep(interval)
        if sshd_answers(record.host, record.port):
            log.debug(f"sshd of '{record.machine}' answered after {time.monotonic() - start:.1f}s")
            return
