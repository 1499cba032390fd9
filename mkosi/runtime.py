"""[Runtime] settings that the container (boot, shell), vm and serve verbs share: Register=, BindUser=,
UnitProperties=, ForwardJournal=, SshCertificate=, StorageTargetMode=, and the systemd-vmspawn and CXL
command lines. Only command lines and decisions are made here; the verbs run them."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.enums import Feature
from mkosi.config.settings import Config
from mkosi.errors import MkosiError
from mkosi.run import find_first_tool, find_tool, run, spawn, stop_process
from mkosi.sandbox import host_has_systemd

# ---------------------------------------------------------------------------------------------
# Helper processes
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def background(argv: list[str], what: str, ready: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process (swtpm, virtiofsd) for the lifetime of the VM; waits for `ready` to exist."""
    # Its messages go to a file (a pipe nobody reads could fill up and stall it), shown if it fails to start.
    with tempfile.TemporaryFile() as errors:
        # Through the sandbox of the verb: with a tools tree, its swtpm and virtiofsd and their libraries.
        proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            deadline = time.monotonic() + 10
            while ready is not None and not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    errors.seek(0)
                    err = errors.read().decode(errors="replace").strip()
                    raise MkosiError(f"{what} did not start" + (f": {err.splitlines()[-1]}" if err else ""))
                time.sleep(0.05)
            yield proc
        finally:
            stop_process(proc)


# ---------------------------------------------------------------------------------------------
# Register=
# ---------------------------------------------------------------------------------------------

MACHINED_VARLINK = Path("/run/systemd/machine/io.systemd.Machine")
MACHINED_BINARIES = (Path("/usr/lib/systemd/systemd-machined"), Path("/lib/systemd/systemd-machined"))


def machined_available() -> bool:
    """systemd-machined can be reached: systemd runs with a system bus, and machined is running or installed
    (the bus starts it on demand)."""
    return host_has_systemd() and (MACHINED_VARLINK.exists() or any(p.exists() for p in MACHINED_BINARIES))


def want_register(config: Config) -> bool:
    """Register=: `no` never registers, `auto` registers where machined can be reached, `yes` fails where
    it cannot."""
    if config.register == Feature.disabled:
        return False
    available = machined_available()
    if config.register == Feature.enabled and not available:
        raise MkosiError("Register=yes, but systemd-machined cannot be reached on this host "
                         "(it needs systemd as PID 1 with a system bus)",
                         hint="use Register=auto (registers where possible) or Register=no")
    return available


def machined_register_argv(varlinkctl: str, machine: str, leader: int, vsock_cid: Optional[int],
                           ssh_port: Optional[int]) -> list[str]:
    """The varlink call that registers a qemu VM with machined (io.systemd.Machine.Register, systemd 256
    and later). The leader is mkosi's own process, which lives as long as the VM."""
    params: dict[str, object] = {"name": machine, "class": "vm", "service": "mkosi", "leader": leader}
    if vsock_cid is not None:
        params["vSockCid"] = vsock_cid
    if ssh_port is not None:
        params["sshAddress"] = f"127.0.0.1:{ssh_port}"
    return [varlinkctl, "call", os.fspath(MACHINED_VARLINK), "io.systemd.Machine.Register",
            json.dumps(params, sort_keys=True)]


def register_vm(config: Config, machine: str, vsock_cid: Optional[int], ssh_port: Optional[int]) -> None:
    """Register a qemu VM with machined when Register= asks for it (and it can be done)."""
    if not want_register(config):
        return
    varlinkctl = find_tool("varlinkctl")
    if varlinkctl is None or not MACHINED_VARLINK.exists():
        if config.register == Feature.enabled:
            raise MkosiError("Register=yes: registering a qemu VM needs varlinkctl and machined's varlink "
                             f"socket {MACHINED_VARLINK} (systemd 256 or later)",
                             hint="use Register=auto or Register=no")
        log.debug("not registering the VM: no varlinkctl or no varlink socket of machined")
        return
    proc = run(machined_register_argv(varlinkctl, machine, os.getpid(), vsock_cid, ssh_port), check=False,
               capture=True)
    if proc.returncode != 0:
        if config.register == Feature.enabled:
            raise MkosiError(f"Register=yes: systemd-machined refused to register '{machine}'")
        log.warn(f"could not register '{machine}' with systemd-machined; running it unregistered")


# ---------------------------------------------------------------------------------------------
# UnitProperties=
# ---------------------------------------------------------------------------------------------


def property_args(config: Config) -> list[str]:
    return [f"--property={p}" for p in config.unit_properties]


def check_nspawn_properties(config: Config, keep_unit: Optional[bool]) -> None:
    """nspawn applies --property= to the scope it creates for the container, which it does not with
    --keep-unit, and not at all without systemd: then UnitProperties= would be dropped silently."""
    if not config.unit_properties:
        return
    if not host_has_systemd():
        raise MkosiError("UnitProperties= needs systemd with a system bus on the host: the container runs in "
                         "a scope unit that systemd creates, and this host has none")
    if keep_unit:
        raise MkosiError("UnitProperties= has no effect with NspawnKeepUnit=yes: nspawn then creates no scope",
                         hint="set NspawnKeepUnit=no")


def scope_prefix(config: Config) -> list[str]:
    """The systemd-run command that puts qemu into a scope unit with UnitProperties=."""
    if not config.unit_properties:
        return []
    systemd_run = find_tool("systemd-run")
    if systemd_run is None or not host_has_systemd():
        raise MkosiError("UnitProperties= with the vm verb needs systemd-run and systemd with a system bus on "
                         "the host: qemu runs in a scope unit that systemd creates, and this host has none")
    return [systemd_run, "--scope", "--quiet", "--collect", *property_args(config), "--"]


# ---------------------------------------------------------------------------------------------
# BindUser=
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path
    shell: str
    gecos: str


def invoking_user() -> User:
    """The user who called mkosi: the one sudo names when mkosi runs as root through sudo. Root itself is
    refused (nspawn and the guest's root account cannot take root's home)."""
    uid = os.getuid()
    if uid == 0 and os.environ.get("SUDO_UID", "").isdigit():
        uid = int(os.environ["SUDO_UID"])
    if uid == 0:
        raise MkosiError("BindUser= binds the home directory of the user who runs mkosi, and that is root",
                         hint="run mkosi as a regular user through sudo, or set BindUser=no")
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        raise MkosiError(f"BindUser=: user {uid} has no passwd entry")
    return User(name=pw.pw_name, uid=pw.pw_uid, gid=pw.pw_gid, home=Path(pw.pw_dir), shell=pw.pw_shell or "/bin/sh",
                gecos=pw.pw_gecos.split(",")[0])


def sysusers_for(user: User) -> str:
    """The sysusers.extra credential (systemd 252 and later in the guest) that makes the user, with its host
    uid and gid so that the files of the shared home keep their owner."""
    gecos = user.gecos.replace('"', "'") or user.name
    return (f"g {user.name} {user.gid}\n"
            f'u {user.name} {user.uid}:{user.gid} "{gecos}" {user.home} {user.shell}\n')


# ---------------------------------------------------------------------------------------------
# ForwardJournal=
# ---------------------------------------------------------------------------------------------

# Where a container finds the host's journal-remote socket, and the credential that journald (256 and
# later) forwards its entries with.
CONTAINER_JOURNAL_SOCKET = "/run/host/journal/socket"
FORWARD_CREDENTIAL = "journal.forward_to_socket"


def find_journal_remote() -> str:
    found = find_first_tool(("systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote",
                             "/lib/systemd/systemd-journal-remote"))
    if found:
        return found
    raise MkosiError("ForwardJournal= needs systemd-journal-remote",
                     hint="install it (Debian: systemd-journal-remote) or use a tools tree that has it")


def journal_remote_argv(journal_remote: str, output: Path, listen: str) -> list[str]:
    """A path ending in .journal is one file (split mode none); anything else is a directory that gets a
    file per machine (split mode host)."""
    split = "none" if output.suffix == ".journal" else "host"
    return [journal_remote, f"--output={output}", f"--split-mode={split}", f"--listen-raw={listen}"]


def prepare_journal_output(output: Path) -> None:
    (output.parent if output.suffix == ".journal" else output).mkdir(parents=True, exist_ok=True)


def vsock_journal_port() -> int:
    return random.randrange(0x10000, 0x7FFFFFFF)


def vm_journal_listen(vsock_cid: Optional[int], port: int) -> str:
    """journal-remote listens on the host's vsock address (CID 2 as the guest sees it)."""
    if vsock_cid is None:
        raise MkosiError("ForwardJournal= with the vm verb needs a vsock: the guest's journald sends to the host "
                         "over it (forwarding over a serial port is not implemented)",
                         hint="use VSock=yes on a host with /dev/vhost-vsock")
    return f"vsock:2:{port}"


# ---------------------------------------------------------------------------------------------
# SshCertificate=
# ---------------------------------------------------------------------------------------------

AUTHORIZED_KEYS_CREDENTIAL = "ssh.authorized_keys.root"


def certificate_public_key(certificate: Path) -> str:
    """The ssh public key (one authorized_keys line) of an X.509 certificate in PEM format."""
    if not certificate.is_file():
        raise MkosiError(f"SshCertificate=: '{certificate}' does not exist")
    pem = run(["openssl", "x509", "-in", certificate, "-noout", "-pubkey"], capture=True).stdout
    key = run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", "/dev/stdin"], input=pem, capture=True).stdout
    return str(key).strip()


def ssh_credentials(config: Config) -> dict[str, bytes]:
    """SshCertificate=: its key is authorized for root through the credential systemd's tmpfiles (252 and
    later) writes to root's authorized_keys."""
    if config.ssh_certificate is None:
        return {}
    return {AUTHORIZED_KEYS_CREDENTIAL: (certificate_public_key(config.ssh_certificate) + "\n").encode()}


# ---------------------------------------------------------------------------------------------
# CXL=
# ---------------------------------------------------------------------------------------------

CXL_MEMORY = "256M"
CXL_LABEL_AREA = "16M"


def cxl_args(arch: str) -> list[str]:
    """CXL=: a CXL host bridge with one root port and a CXL type 3 memory device on it, and the fixed
    memory window the guest maps the device through; the machine gets cxl=on. The device is given as
    `memdev=` with a label storage area, which qemu 7.2 needs and newer versions still take."""
    if arch != "x86_64":
        raise MkosiError(f"CXL= is implemented for x86-64 virtual machines only, not {arch}")
    return ["-machine", "cxl=on",
            "-object", f"memory-backend-ram,id=cxl-mem0,share=on,size={CXL_MEMORY}",
            "-object", f"memory-backend-ram,id=cxl-lsa0,share=on,size={CXL_LABEL_AREA}",
            "-device", "pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.0",
            "-device", "cxl-rp,port=0,bus=cxl.0,id=cxl-rp0,chassis=0,slot=2",
            "-device", "cxl-type3,bus=cxl-rp0,memdev=cxl-mem0,lsa=cxl-lsa0,id=cxl-mem-dev0",
            "-machine", f"cxl-fmw.0.targets.0=cxl.0,cxl-fmw.0.size={CXL_MEMORY}"]


# ---------------------------------------------------------------------------------------------
# StorageTargetMode=
# ---------------------------------------------------------------------------------------------

STORAGETM_CANDIDATES = ("systemd-storagetm", "/usr/lib/systemd/systemd-storagetm", "/lib/systemd/systemd-storagetm")


def find_storagetm() -> Optional[str]:
    for candidate in STORAGETM_CANDIDATES:
        found = find_tool(candidate) if "/" not in candidate else (candidate if os.access(candidate, os.X_OK)
                                                                  else None)
        if found:
            return found
    return None


def storagetm_argv(storagetm: str, machine: str, image: Path) -> list[str]:
    return [storagetm, f"--nqn=mkosi-{machine}", os.fspath(image)]


def want_storagetm(config: Config, image: Optional[Path]) -> Optional[str]:
    """StorageTargetMode=: the systemd-storagetm to start, or None. `auto` starts it for a disk image that
    exists, when storagetm is found and mkosi runs as root; `yes` fails where that is not so."""
    if config.storage_target_mode == Feature.disabled:
        return None
    problems = []
    if image is None or not image.is_file():
        problems.append("the output is not a disk image")
    storagetm = find_storagetm()
    if storagetm is None:
        problems.append("systemd-storagetm was not found")
    if os.getuid() != 0:
        problems.append("mkosi does not run as root")
    if problems:
        if config.storage_target_mode == Feature.enabled:
            raise MkosiError("StorageTargetMode=yes, but " + " and ".join(problems))
        log.debug("not serving over NVMe-TCP: " + "; ".join(problems))
        return None
    return storagetm
