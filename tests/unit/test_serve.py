from __future__ import annotations

import http.client
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi import serve
from mkosi.errors import MkosiError


@pytest.mark.parametrize(
    "header,size,expected",
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=90-1000", 100, (90, 99)),
        ("bytes=99-99", 100, (99, 99)),
        ("BYTES = 5 - 6", 100, (5, 6)),
        ("bytes=0-0,5-6", 100, None),  # several ranges: send everything
        ("bytes=9-3", 100, None),  # invalid: ignored
        ("bytes=-", 100, None),
        ("bytes=a-b", 100, None),
        ("items=0-1", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert serve.parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header,size", [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(serve.RangeNotSatisfiable):
        serve.parse_range(header, size)


DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp_path = tmp_path_factory.mktemp("serve")
    root = tmp_path / "out"
    root.mkdir()
    (root / "image.raw").write_bytes(DATA)
    (root / "SHA256SUMS").write_text("abc  image.raw\n")
    (root / "empty").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub/file.txt").write_text("nested")
    (tmp_path / "secret").write_text("outside")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inside-link").symlink_to("image.raw")

    started = threading.Event()
    holder: list[http.server.ThreadingHTTPServer] = []

    def ready(s: http.server.ThreadingHTTPServer) -> None:
        holder.append(s)
        started.set()

    thread = threading.Thread(target=serve.serve, args=(root,), kwargs={"port": 0, "bind": "127.0.0.1", "ready": ready})
    thread.start()
    assert started.wait(10)
    port = int(holder[0].server_address[1])
    try:
        yield port, root
    finally:
        holder[0].shutdown()
        thread.join(10)
        assert not thread.is_alive()


def request(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_full_get(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/image.raw")
    assert status == 200
    assert body == DATA
    assert headers["content-length"] == str(len(DATA))
    assert headers["accept-ranges"] == "bytes"
    assert "content-range" not in headers
    assert "last-modified" in headers


def test_range_get(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/image.raw", headers={"Range": "bytes=100-199"})
    assert status == 206
    assert body == DATA[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(DATA)}"
    assert headers["content-length"] == "100"

    status, headers, body = request(port, "/image.raw", headers={"Range": "bytes=10000-"})
    assert status == 206 and body == DATA[10000:]
    assert headers["content-range"] == f"bytes 10000-{len(DATA) - 1}/{len(DATA)}"


def test_suffix_range(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/image.raw", headers={"Range": "bytes=-16"})
    assert status == 206
    assert body == DATA[-16:]
    assert headers["content-range"] == f"bytes {len(DATA) - 16}-{len(DATA) - 1}/{len(DATA)}"


def test_unsatisfiable_range(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/image.raw", headers={"Range": f"bytes={len(DATA)}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(DATA)}"
    assert body == b""


def test_head(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/image.raw", method="HEAD")
    assert status == 200 and body == b""
    assert headers["content-length"] == str(len(DATA))
    assert headers["accept-ranges"] == "bytes"
    status, headers, body = request(port, "/image.raw", method="HEAD", headers={"Range": "bytes=0-0"})
    assert status == 206 and body == b"" and headers["content-length"] == "1"


def test_empty_file_and_nested(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/empty")
    assert status == 200 and body == b"" and headers["content-length"] == "0"
    assert request(port, "/sub/file.txt")[2] == b"nested"
    assert request(port, "/sub/file%2Etxt")[2] == b"nested"
    assert request(port, "/inside-link")[2] == DATA
    status, _, body = request(port, "/")
    assert status == 200 and b"image.raw" in body


@pytest.mark.parametrize(
    "path",
    ["/../secret", "/sub/../../secret", "/%2e%2e/secret", "/..%2fsecret", "/escape", "/nonexistent", "/image.raw%00"],
)
def test_no_traversal(server: tuple[int, Path], path: str) -> None:
    port, _ = server
    status, _, body = request(port, path)
    assert status == 404
    assert b"outside" not in body


def test_read_only(server: tuple[int, Path]) -> None:
    port, root = server
    for method in ("PUT", "POST", "DELETE"):
        status, _, _ = request(port, "/image.raw", method=method)
        assert status == 501
    assert (root / "image.raw").read_bytes() == DATA


def test_keep_alive_with_ranges(server: tuple[int, Path]) -> None:
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for first in (0, 4096, 8192):
            conn.request("GET", "/image.raw", headers={"Range": f"bytes={first}-{first + 1023}"})
            resp = conn.getresponse()
            assert resp.status == 206 and resp.read() == DATA[first : first + 1024]
    finally:
        conn.close()


def test_serve_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(MkosiError):
        serve.serve(tmp_path / "nope", port=0, bind="127.0.0.1")


def test_serve_port_in_use(tmp_path: Path) -> None:
    s = serve.make_server(tmp_path, port=0, bind="127.0.0.1")
    try:
        with pytest.raises(MkosiError, match="cannot listen"):
            serve.make_server(tmp_path, port=int(s.server_address[1]), bind="127.0.0.1")
    finally:
        s.server_close()
    assert os.path.isdir(tmp_path)
