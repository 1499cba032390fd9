"""`mkosi serve`: a read-only HTTP server for the build's artifacts, with byte ranges.

`machinectl pull-raw` and `importctl` fetch images (and their SHA256SUMS) over HTTP and may use
Range requests, so besides GET and HEAD this serves single byte ranges (RFC 9110 section 14):
"bytes=a-b", "bytes=a-" and the suffix form "bytes=-n", answering 206 with Content-Range, 416
for ranges that do not overlap the file, 400 for an over-long Range header, and advertising
Accept-Ranges: bytes.

Only the files a build of the configuration writes are published, each under its file name, and
never a secret: not the directory they live in (which may be the project directory), not
mkosi.rootpw, mkosi.passphrase, private keys, the incremental cache keys or anything in .git.
"""

from __future__ import annotations

import contextlib
import email.utils
import html
import http.server
import io
import ipaddress
import mimetypes
import os
import shutil
import socket
import stat
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO, Optional

from mkosi import log
from mkosi.config.settings import Config
from mkosi.container import machine_name
from mkosi.errors import MkosiError
from mkosi.formats import FormatKind
from mkosi.output.artifacts import incremental_cache_paths, paths, secrets
from mkosi.runtime import background, storagetm_argv, want_storagetm

_COPY_CHUNK = 1024 * 1024
# A single byte range needs at most "bytes=" and two 20-digit numbers; anything much longer is abuse.
MAX_RANGE_HEADER = 200
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8081
ADDRESS_ENV = "MKOSI_SERVE_ADDRESS"
PORT_ENV = "MKOSI_SERVE_PORT"

# File names that are never served, whatever the artifact list says (settings files may hold Password=).
SECRET_NAMES = frozenset({"mkosi.rootpw", "mkosi.passphrase", "mkosi.secure-boot.key", "mkosi.default", "mkosi.conf",
                          "id_ed25519", "id_rsa", "id_ecdsa", "id_dsa"})
SECRET_SUFFIXES = (".key", ".pem")

Files = Mapping[str, Path]


class RangeNotSatisfiable(Exception):
    """The Range header is valid but selects nothing in a file of this size."""


class RangeTooLong(Exception):
    """The Range header is longer than any single byte range can be."""


def _number(text: str) -> Optional[int]:
    """A run of ASCII digits as an int (capped at 2**64, which exceeds every file), else None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    text = text.lstrip("0") or "0"
    return 2**64 if len(text) > 20 else int(text)


def parse_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """Parse a Range header for a file of `size` bytes into an inclusive (first, last) pair.

    Returns None when the whole file should be sent: no header, a unit other than bytes, a
    malformed value or several ranges (servers may ignore Range, RFC 9110 14.2). Raises
    RangeNotSatisfiable for a syntactically valid range that does not overlap the file and
    RangeTooLong for a header over MAX_RANGE_HEADER characters. Linear in the header's length.
    """
    if header is None:
        return None
    if len(header) > MAX_RANGE_HEADER:
        raise RangeTooLong()
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip(" \t").lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.partition("-")
    if not dash:
        return None
    first_s, last_s = first_s.strip(" \t"), last_s.strip(" \t")
    first, last = _number(first_s), _number(last_s)
    if (first_s and first is None) or (last_s and last is None) or (first is None and last is None):
        return None
    if first is None:
        # Suffix range: the last n bytes.
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(size - last, 0), size - 1
    if last is not None and last < first:
        return None  # invalid, ignore it
    if first >= size:
        raise RangeNotSatisfiable()
    return first, min(size - 1 if last is None else last, size - 1)


def is_secret(path: Path) -> bool:
    """Whether a path looks like something that must never be published."""
    if ".git" in path.parts:
        return True
    name = path.name
    return name in SECRET_NAMES or name.endswith(SECRET_SUFFIXES)


def secret_paths(config: Config) -> set[Path]:
    """The secrets of this configuration, wherever they live."""
    found = [config.ssh_key, config.passphrase_file, config.secure_boot_key, *config.config_files]
    if config.output is not None:
        found += [*secrets(config), *incremental_cache_paths(config)]
    cwd = Path.cwd()
    found += [cwd / "mkosi.rootpw", cwd / "mkosi.passphrase", cwd / "mkosi.secure-boot.key"]
    result = set()
    for p in found:
        if p is not None:
            result |= {Path(os.path.abspath(p)), Path(os.path.realpath(p))}
    return result


def artifact_paths(config: Config) -> list[Path]:
    """Which files are artifacts of this configuration (the artifact table's): the one place `serve` asks."""
    return paths(config)


def servable(paths: Iterable[Path], secrets: Iterable[Path] = ()) -> dict[str, Path]:
    """{file name: path} of the paths that exist as regular files and are no secret (also after
    following symbolic links). The first path of a name wins."""
    denied = set(secrets)
    result: dict[str, Path] = {}
    for p in paths:
        absolute, real = Path(os.path.abspath(p)), Path(os.path.realpath(p))
        if absolute in denied or real in denied or is_secret(absolute) or is_secret(real):
            continue
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):
                continue
        except OSError:
            continue
        result.setdefault(p.name, absolute)
    return result


def served_files(config: Config) -> dict[str, Path]:
    return servable(artifact_paths(config), secret_paths(config))


class ArtifactRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves the files of a {name: path} table for GET and HEAD only, with single byte ranges."""

    server_version = "mkosi-serve"
    protocol_version = "HTTP/1.1"

    def __init__(self, *args: Any, files: Callable[[], Files], **kwargs: Any) -> None:
        self._files = files
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(f"{self.address_string()} {format % args}")

    def _send_empty(self, status: HTTPStatus, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _name(self) -> Optional[str]:
        path = urllib.parse.urlsplit(self.path).path
        try:
            path = urllib.parse.unquote(path, errors="strict")
        except UnicodeDecodeError:
            return None
        return path

    def _index(self, files: Files) -> BinaryIO | None:
        items = "".join(f'<li><a href="{urllib.parse.quote(n)}">{html.escape(n)}</a></li>\n' for n in sorted(files))
        body = f"<!DOCTYPE html>\n<html><head><title>mkosi</title></head><body><ul>\n{items}</ul></body></html>\n"
        data = body.encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._range = None
        return io.BytesIO(data)

    def send_head(self) -> BinaryIO | None:
        self._range = None
        files = self._files()
        name = self._name()
        if name == "/":
            return self._index(files)
        path = files.get(name[1:]) if name is not None and name.startswith("/") else None
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # replaced by something else since it was listed
                f.close()
                self.send_error(HTTPStatus.NOT_FOUND, "File not found")
                return None
            size = st.st_size
            try:
                byte_range = parse_range(self.headers.get("Range"), size)
            except RangeTooLong:
                f.close()
                self.close_connection = True
                self._send_empty(HTTPStatus.BAD_REQUEST, {"Connection": "close"})
                return None
            except RangeNotSatisfiable:
                f.close()
                self._send_empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                 {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
                return None
            if byte_range is None:
                self.send_response(HTTPStatus.OK)
                self._range = (0, size - 1)
                length = size
            else:
                first, last = byte_range
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self._range = (first, last)
                length = last - first + 1
            self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.end_headers()
            return f
        except OSError:
            f.close()
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None

    _range: Optional[tuple[int, int]] = None

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self._range is None:
            shutil.copyfileobj(source, outputfile)
            return
        first, last = self._range
        remaining = last - first + 1
        if remaining > 0 and first:
            source.seek(first)
        while remaining > 0:
            chunk = source.read(min(_COPY_CHUNK, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)

    def do_GET(self) -> None:
        f = self.send_head()
        if f is None:
            return
        try:
            self.copyfile(f, self.wfile)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            f.close()

    def do_HEAD(self) -> None:
        f = self.send_head()
        if f is not None:
            f.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve_address(environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """The address and port to listen on: loopback port 8081 unless $MKOSI_SERVE_ADDRESS or
    $MKOSI_SERVE_PORT say otherwise."""
    address = environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise MkosiError(f"${ADDRESS_ENV}: '{address[:60]}' is not an IP address",
                         hint="e.g. 127.0.0.1, ::1, 0.0.0.0 (every IPv4 address) or :: (every address)")
    port_s = environ.get(PORT_ENV, "").strip()
    if not port_s:
        return address.strip("[]"), DEFAULT_PORT
    if not (port_s.isascii() and port_s.isdigit()) or not 0 < int(port_s) < 65536:
        raise MkosiError(f"${PORT_ENV}: '{port_s[:20]}' is not a port number (1-65535)")
    return address.strip("[]"), int(port_s)


def make_server(files: Files | Callable[[], Files], port: int = DEFAULT_PORT,
                bind: str = DEFAULT_ADDRESS) -> http.server.ThreadingHTTPServer:
    """Create (and bind) the server without running it. `files` is the {name: path} table, or a
    function returning it (asked on each request, so a rebuild while serving is picked up)."""
    if callable(files):
        table = files
    else:
        fixed = dict(files)
        table = lambda: fixed  # noqa: E731

    def handler(*args: Any, **kwargs: Any) -> ArtifactRequestHandler:
        return ArtifactRequestHandler(*args, files=table, **kwargs)

    try:
        return (_Server6 if ":" in bind else _Server)((bind, port), handler)
    except OSError as e:
        raise MkosiError(f"cannot listen on {bind or '*'}:{port}: {e.strerror or e}")


def serve(
    files: Files | Callable[[], Files],
    port: int = DEFAULT_PORT,
    bind: str = DEFAULT_ADDRESS,
    ready: Optional[Callable[[http.server.ThreadingHTTPServer], None]] = None,
) -> None:
    """Serve the files read-only over HTTP until interrupted (Ctrl-C) or until someone calls
    shutdown() on the server, which `ready` receives once it is listening (port=0 picks a free
    port, see server.server_address)."""
    server = make_server(files, port, bind)
    with server:
        host, actual_port = str(server.server_address[0]), server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        log.info(f"Serving the build's artifacts on http://{shown}:{actual_port}/ (Ctrl-C to stop)")
        if bind not in ("127.0.0.1", "::1", "localhost"):
            log.warn(f"listening on {bind}: every host that can reach it may download the image")
        if ready is not None:
            ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def run_serve(config: Config) -> int:
    bind, port = serve_address()
    files = served_files(config)
    if not files:
        raise MkosiError("there is nothing to serve: no artifact of this configuration exists",
                         hint="build the image first")
    for name in sorted(files):
        log.debug(f"serving {name} ({files[name]})")
    with contextlib.ExitStack() as stack:
        image = config.output if config.format.row.kind is FormatKind.disk else None
        storagetm = want_storagetm(config, image)
        if storagetm is not None:
            assert image is not None
            log.info("Serving the disk image over NVMe-TCP with systemd-storagetm as well")
            stack.enter_context(background(storagetm_argv(storagetm, machine_name(config), image),
                                           "systemd-storagetm"))
        serve(lambda: served_files(config), port, bind)
    return 0
