"""ApiClient.stream: JSON lines read with the standard library, against a server on a real
Unix socket that cuts its answer anywhere (chunk boundaries, packets, a dropped connection)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vmis.api.client import ApiClient
from vmis.errors import ChannelClosed, ConnectError, ManagerApiError, NotFoundError

LINES = [{"type": "progress", "bytes": i, "file": f"f{i}\u00e9"} for i in range(200)] + [
    {"type": "result", "Files": 200, "Items": [{"Path": "/x" * 500}] * 20}]


def _chunked(body: bytes, rng: random.Random) -> bytes:
    out = bytearray()
    while body:
        n = rng.randint(1, 300)
        out += b"%x\r\n" % len(body[:n]) + body[:n] + b"\r\n"
        body = body[n:]
    return bytes(out + b"0\r\n\r\n")


@contextmanager
def server(path: Path, answer: bytes, *, cut: bool = False) -> Iterator[list[bytes]]:
    """Answer one request on *path* with *answer*, sent in random small packets; *cut*:
    close the connection before the end (the manager died mid-stream)."""
    requests: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    rng = random.Random(7)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            requests.append(head + b"\r\n\r\n" + body)
            rest = answer[: len(answer) * 2 // 3] if cut else answer
            while rest:
                n = rng.randint(1, 700)
                conn.sendall(rest[:n])
                rest = rest[n:]
                if rng.random() < 0.05:
                    time.sleep(0.001)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        thread.join(10)
        listener.close()


def _ok(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + _chunked(body, random.Random(3)))


def test_every_line_arrives_whole_however_the_answer_is_cut(short_tmp):
    body = b"".join(json.dumps(line).encode() + b"\n" for line in LINES)
    with server(short_tmp / "s.sock", _ok(body)) as requests:
        got = list(ApiClient(short_tmp / "s.sock").stream(
            "POST", "/vms/Demo%20VM/copy?stream=true", json={"source": "/a"}, timeout=10))
    assert got == LINES
    assert requests[0].startswith(b"POST /v1/vms/Demo%20VM/copy?stream=true HTTP/1.1\r\n")
    assert requests[0].endswith(b'{"source": "/a"}')


def test_an_answer_of_a_stated_length_and_no_final_newline(short_tmp):
    body = b'{"type": "progress", "bytes": 1}\n\n{"type": "result", "Files": 1}'
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with server(short_tmp / "s.sock", answer):
        got = list(ApiClient(short_tmp / "s.sock").stream("POST", "/update", json={}))
    assert got == [{"type": "progress", "bytes": 1}, {"type": "result", "Files": 1}]


def test_an_error_answer_is_the_managers_error(short_tmp):
    body = json.dumps({"error": "no VM named Nope", "type": "NotFoundError"}).encode()
    answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    with server(short_tmp / "s.sock", answer), pytest.raises(NotFoundError, match="Nope"):
        list(ApiClient(short_tmp / "s.sock").stream("POST", "/vms/Nope/copy", json={}))


def test_an_error_line_in_the_stream_is_raised_as_its_class(short_tmp):
    body = (b'{"type": "progress", "bytes": 1}\n'
            b'{"type": "error", "class": "NotFoundError", "error": "gone"}\n')
    with server(short_tmp / "s.sock", _ok(body)):
        stream = ApiClient(short_tmp / "s.sock").stream("POST", "/update", json={})
        assert next(stream) == {"type": "progress", "bytes": 1}
        with pytest.raises(NotFoundError, match="gone"):
            next(stream)


def test_a_stream_that_breaks_off_is_channel_closed(short_tmp):
    body = b"".join(json.dumps(line).encode() + b"\n" for line in LINES)
    with server(short_tmp / "s.sock", _ok(body), cut=True):
        got = []
        with pytest.raises(ChannelClosed, match="broke off"):
            for line in ApiClient(short_tmp / "s.sock").stream("POST", "/update", json={}):
                got.append(line)
    assert got == LINES[: len(got)] and 0 < len(got) < len(LINES)


def test_not_http_is_one_clear_error(short_tmp):
    with server(short_tmp / "s.sock", b"SSH-2.0-OpenSSH\r\n\r\n"), \
            pytest.raises(ManagerApiError, match=r"not HTTP/1\.1"):
        list(ApiClient(short_tmp / "s.sock").stream("POST", "/update", json={}))


def test_no_manager_is_connect_error(short_tmp):
    with pytest.raises(ConnectError, match="not running"):
        list(ApiClient(short_tmp / "none.sock").stream("POST", "/update", json={}))
