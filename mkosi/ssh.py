"""SSH into booted images: key generation, the ssh command line, and waiting for sshd."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import require_tool, run

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
