from __future__ import annotations

import http.client
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkosi import serve
from mkosi.config import load_args
from mkosi.errors import MkosiError
from tests.unit.conftest import write


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


SECRETS = ("mkosi.rootpw", "mkosi.passphrase", "id_ed25519", ".git/config", "image.cache-output.key",
           "image.cache-final.key", "mkosi.secure-boot.key", "mkosi.default")


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
    (root / ".git").mkdir()
    for name in SECRETS:
        (root / name).write_text("outside")
    (root / "innocent.raw").symlink_to("mkosi.rootpw")
    # What the table offers: some artifacts, a directory, secrets; only regular non-secret files remain.
    offered = ["image.raw", "SHA256SUMS", "empty", "sub", "sub/file.txt", "inside-link", "innocent.raw", *SECRETS]
    files = serve.servable([root / n for n in offered])
    assert sorted(files) == ["SHA256SUMS", "empty", "file.txt", "image.raw", "inside-link"]

    started = threading.Event()
    holder: list[http.server.ThreadingHTTPServer] = []

    def ready(s: http.server.ThreadingHTTPServer) -> None:
        holder.append(s)
        started.set()

    thread = threading.Thread(target=serve.serve, args=(files,), kwargs={"port": 0, "ready": ready})
    thread.start()
    assert started.wait(10)
    assert holder[0].server_address[0] == "127.0.0.1"
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


def test_empty_file_flat_names_and_index(server: tuple[int, Path]) -> None:
    port, _ = server
    status, headers, body = request(port, "/empty")
    assert status == 200 and body == b"" and headers["content-length"] == "0"
    assert request(port, "/file.txt")[2] == b"nested"
    assert request(port, "/file%2Etxt")[2] == b"nested"
    assert request(port, "/inside-link")[2] == DATA
    assert request(port, "/sub/file.txt")[0] == 404  # artifacts are published by name, not by location
    status, _, body = request(port, "/")
    assert status == 200 and b"image.raw" in body and b"SHA256SUMS" in body
    assert b"rootpw" not in body and b"escape" not in body and b".git" not in body


@pytest.mark.parametrize(
    "path",
    ["/../secret", "/sub/../../secret", "/%2e%2e/secret", "/..%2fsecret", "/escape", "/nonexistent", "/image.raw%00",
     "/sub", "/sub/", "/innocent.raw", "/%ff", "//etc/passwd", "/mkosi.default",
     *(f"/{name}" for name in SECRETS), *(f"/sub/../{name}" for name in SECRETS)],
)
def test_only_artifacts_are_served(server: tuple[int, Path], path: str) -> None:
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


def test_serve_port_in_use(tmp_path: Path) -> None:
    s = serve.make_server({}, port=0, bind="127.0.0.1")
    try:
        with pytest.raises(MkosiError, match="cannot listen"):
            serve.make_server({}, port=int(s.server_address[1]), bind="127.0.0.1")
    finally:
        s.server_close()
    assert os.path.isdir(tmp_path)


@pytest.mark.parametrize(
    "header,size,expected",
    [
        ("bytes=\u0661-\u0669", 100, None),  # Arabic-Indic digits are not digits of HTTP
        ("bytes=\uff11-", 100, None),
        ("bytes=0-" + "9" * 40, 100, (0, 99)),  # a huge last position is clamped, not computed with
        ("bytes=-" + "9" * 40, 100, (0, 99)),
        ("bytes=0000000000000000000000000000005-6", 100, (5, 6)),
        ("bytes=1-2-3", 100, None),
        ("bytes", 100, None),
        ("bytes=+1-2", 100, None),
    ],
)
def test_parse_range_strict(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert serve.parse_range(header, size) == expected


def test_parse_range_huge_first_is_unsatisfiable() -> None:
    with pytest.raises(serve.RangeNotSatisfiable):
        serve.parse_range("bytes=" + "9" * 40 + "-", 100)


@pytest.mark.parametrize(
    "header", ["bytes=" + " " * 65000 + "x", "bytes=" + "1" * 65000 + "-", "bytes=0-" + "0" * 65000,
               "bytes=" + "0-1," * 16000, " " * 65000 + "bytes=0-1"]
)
def test_parse_range_is_fast_and_bounded(header: str) -> None:
    start = time.monotonic()
    with pytest.raises(serve.RangeTooLong):
        serve.parse_range(header, 100)
    assert time.monotonic() - start < 0.1
    # Below the limit the parser is linear too: the worst case of the old regular expression.
    start = time.monotonic()
    assert serve.parse_range("bytes=" + " " * (serve.MAX_RANGE_HEADER - 7) + "x", 100) is None
    assert time.monotonic() - start < 0.1


def test_long_range_headers_are_answered_quickly(server: tuple[int, Path]) -> None:
    port, _ = server
    header = "bytes=" + " " * (64 * 1024 - 100) + "x"
    results: list[tuple[int, float]] = []

    def one() -> None:
        start = time.monotonic()
        status = request(port, "/image.raw", headers={"Range": header})[0]
        results.append((status, time.monotonic() - start))

    threads = [threading.Thread(target=one) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    # Meanwhile an ordinary client is served at once.
    status, _, body = request(port, "/image.raw", headers={"Range": "bytes=0-9"})
    assert status == 206 and body == DATA[:10]
    for t in threads:
        t.join(10)
    assert [status for status, _ in results] == [400] * 4
    assert time.monotonic() - start < 2


def test_serve_address_defaults_to_loopback() -> None:
    assert serve.serve_address({}) == ("127.0.0.1", 8081)
    assert serve.serve_address({"MKOSI_SERVE_ADDRESS": "0.0.0.0", "MKOSI_SERVE_PORT": "9000"}) == ("0.0.0.0", 9000)
    assert serve.serve_address({"MKOSI_SERVE_ADDRESS": "[::1]"}) == ("::1", 8081)
    for env in ({"MKOSI_SERVE_ADDRESS": "example.com"}, {"MKOSI_SERVE_PORT": "0"}, {"MKOSI_SERVE_PORT": "\u0661"},
                {"MKOSI_SERVE_PORT": "70000"}):
        with pytest.raises(MkosiError):
            serve.serve_address(env)


def test_served_files_of_a_project_without_output_directory(fixed_host: None, wd: Path) -> None:
    """Without mkosi.output/ the artifacts land in the project directory, next to its secrets: only
    the artifacts are published."""
    write(wd / "mkosi.default", "[Output]\nFormat=gpt_ext4\nBmap=yes\n[Host]\nSsh=yes\n")
    write(wd / "mkosi.rootpw", "hunter2\n", mode=0o600)
    write(wd / "mkosi.passphrase", "secret\n", mode=0o600)
    write(wd / ".git/config", "[core]\n")
    _, configs = load_args(["--incremental", "serve"])
    args = configs[0]
    assert args.output_dir == wd
    for name in ("image.raw", "image.bmap", "id_ed25519", "id_ed25519.pub", "image.cache-output.key",
                 "image.cache-final.key", "image.cache-final", "image.manifest"):
        write(wd / name, "artifact\n")
    assert "id_ed25519" in {p.name for p in serve.artifact_paths(args)}  # the list has it; serve drops it
    files = serve.served_files(args)
    assert sorted(files) == ["id_ed25519.pub", "image.bmap", "image.manifest", "image.raw"]

    started = threading.Event()
    holder: list[http.server.ThreadingHTTPServer] = []

    def ready(s: http.server.ThreadingHTTPServer) -> None:
        holder.append(s)
        started.set()

    thread = threading.Thread(target=serve.serve, args=(lambda: serve.served_files(args),),
                              kwargs={"port": 0, "ready": ready})
    thread.start()
    assert started.wait(10)
    port = int(holder[0].server_address[1])
    try:
        assert request(port, "/image.raw")[0] == 200
        for name in ("mkosi.rootpw", "mkosi.passphrase", ".git/config", "mkosi.default", "id_ed25519",
                     "image.cache-output.key", "image.cache-final.key", "image.cache-final", ""):
            status, _, body = request(port, f"/{name}")
            assert name == "" or status == 404, name
            assert b"hunter2" not in body and b"secret" not in body
        # An artifact made while serving is picked up; one removed disappears.
        (wd / "image.bmap").unlink()
        assert request(port, "/image.bmap")[0] == 404
        write(wd / "image.bmap", "again\n")
        assert request(port, "/image.bmap")[2] == b"again\n"
    finally:
        holder[0].shutdown()
        thread.join(10)


def test_run_serve_without_artifacts_is_an_error(fixed_host: None, wd: Path) -> None:
    _, configs = load_args(["serve"])
    with pytest.raises(MkosiError, match="nothing to serve"):
        serve.run_serve(configs[0])
