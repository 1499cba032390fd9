"""`mkosi serve`: a read-only HTTP server for the output directory, with byte ranges.

`machinectl pull-raw` and `importctl` fetch images (and their SHA256SUMS) over HTTP and may use
Range requests, so besides GET and HEAD this serves single byte ranges (RFC 9110 section 14):
"bytes=a-b", "bytes=a-" and the suffix form "bytes=-n", answering 206 with Content-Range, 416
for ranges that do not overlap the file, and advertising Accept-Ranges: bytes.
"""

from __future__ import annotations

import email.utils
import http.server
import os
import posixpath
import re
import shutil
import socket
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

from mkosi import log
from mkosi.errors import MkosiError

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_COPY_CHUNK = 1024 * 1024


class RangeNotSatisfiable(Exception):
    """The Range header is valid but selects nothing in a file of this size."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a Range header for a file of `size` bytes into an inclusive (first, last) pair.

    Returns None when the whole file should be sent: no header, a unit other than bytes, a
    malformed value or several ranges (servers may ignore Range, RFC 9110 14.2). Raises
    RangeNotSatisfiable for a syntactically valid range that does not overlap the file.
    """
    if header is None:
        return None
    if "," in header:
        return None
    m = _RANGE_RE.match(header)
    if not m:
        return None
    first_s, last_s = m.group(1), m.group(2)
    if not first_s and not last_s:
        return None
    if not first_s:
        # Suffix range: the last n bytes.
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(size - suffix, 0), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid, ignore it
    if first >= size:
        raise RangeNotSatisfiable()
    return first, min(last, size - 1)


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files below `directory` for GET and HEAD only, with single byte ranges."""

    server_version = "mkosi-serve"
    protocol_version = "HTTP/1.1"

    def __init__(self, *args: Any, directory: str, **kwargs: Any) -> None:
        self._root = os.path.realpath(directory)
        super().__init__(*args, directory=directory, **kwargs)

    # Only GET and HEAD exist on SimpleHTTPRequestHandler; everything else gets 501.

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(f"{self.address_string()} {format % args}")

    def _resolve(self) -> str | None:
        """Map the request path to a file system path inside the root, or None."""
        path = urllib.parse.urlsplit(self.path).path
        path = urllib.parse.unquote(path, errors="strict") if "%" in path else path
        if "\0" in path:
            return None
        parts = [p for p in posixpath.normpath("/" + path).split("/") if p and p not in (".", "..")]
        candidate = os.path.realpath(os.path.join(self._root, *parts))
        # Symlinks must not lead out of the served directory either.
        if candidate != self._root and not candidate.startswith(self._root + os.sep):
            return None
        return candidate

    def send_head(self) -> BinaryIO | None:
        try:
            path = self._resolve()
        except UnicodeDecodeError:
            path = None
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        self._range = None
        if os.path.isdir(path):
            # Directory listings come from the base class, which also handles the redirect to a
            # trailing slash and index.html.
            return super().send_head()
        if not os.path.isfile(path):  # no devices, FIFOs, sockets
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            st = os.fstat(f.fileno())
            size = st.st_size
            try:
                byte_range = parse_range(self.headers.get("Range"), size)
            except RangeNotSatisfiable:
                f.close()
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
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
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.end_headers()
            return f
        except OSError:
            f.close()
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None

    _range: tuple[int, int] | None = None

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


def make_server(directory: Path, port: int = 8081, bind: str = "") -> http.server.ThreadingHTTPServer:
    """Create (and bind) the server without running it."""
    if not directory.is_dir():
        raise MkosiError(f"cannot serve {directory}: not a directory", hint="build the image first")
    root = os.fspath(directory.resolve())

    def handler(*args: Any, **kwargs: Any) -> RangeRequestHandler:
        return RangeRequestHandler(*args, directory=root, **kwargs)

    try:
        return (_Server6 if ":" in bind else _Server)((bind, port), handler)
    except OSError as e:
        raise MkosiError(f"cannot listen on {bind or '*'}:{port}: {e.strerror or e}")


def serve(
    directory: Path,
    port: int = 8081,
    bind: str = "",
    ready: Callable[[http.server.ThreadingHTTPServer], None] | None = None,
) -> None:
    """Serve `directory` read-only over HTTP until interrupted (Ctrl-C) or until someone calls
    shutdown() on the server, which `ready` receives once it is listening (port=0 picks a free
    port, see server.server_address)."""
    server = make_server(directory, port, bind)
    with server:
        host, actual_port = server.server_address[:2]
        shown = host if isinstance(host, str) and host not in ("", "0.0.0.0") else "localhost"
        log.info(f"Serving {directory} on http://{shown}:{actual_port}/ (Ctrl-C to stop)")
        if ready is not None:
            ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
