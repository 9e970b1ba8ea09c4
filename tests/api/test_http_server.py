"""Hostile requests against a real ``fyp serve`` (issue 14, defect 11): what the HTTP parser refuses
before the app runs is a problem document too, and over-long request lines and heads are cut off
without being read whole. Also the loopback check that decides whether ``fyp serve`` may listen
without an API key."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from fyp.api.http_protocol import (
    LINGER_BYTES,
    MAX_HEAD_BYTES,
    MAX_TARGET_BYTES,
    ProblemHttpToolsProtocol,
)
from fyp.cli import _is_loopback_host, main

PROBLEM = "application/problem+json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    data = tmp_path_factory.mktemp("served")
    port = _free_port()
    fyp = Path(sys.executable).with_name("fyp")
    command = [str(fyp), "serve", "--data-dir", str(data), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--no-background-training"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120  # a liveness bound for a cold start on a busy machine
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        yield "127.0.0.1", port
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert process.returncode in (0, -15), err.decode()[-2000:]


def _exchange(address: tuple[str, int], *pieces: bytes) -> tuple[bytes, int]:
    """Send ``pieces`` in turn (stopping once the server has answered or closed), then read the
    answer to its end. Returns the raw answer and how many bytes were sent. Tests send less
    than ``LINGER_BYTES`` past a limit, so the server never resets the connection under the
    answer."""
    sent = 0
    with socket.create_connection(address, timeout=30) as sock:
        for piece in pieces:
            sock.settimeout(0)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # answered: a careful client stops sending
            except BlockingIOError:
                pass
            except OSError:
                break
            sock.settimeout(30)
            try:
                sock.sendall(piece)
            except OSError:  # the server stopped reading
                break
            sent += len(piece)
        sock.settimeout(30)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer, sent
            answer += chunk


def _problem(answer: bytes, status: int, slug: str) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == str(status), lines[0]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"].startswith(PROBLEM)
    assert int(headers["content-length"]) == len(body)
    document: dict[str, Any] = json.loads(body)
    assert document["type"] == f"urn:fyp:problem:{slug}" and document["status"] == status
    return document


def _request_line(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: fyp\r\n\r\n"


def test_a_1_mb_id_in_the_path_is_a_414_problem_and_is_not_read_whole(
    server: tuple[str, int],
) -> None:
    piece = 64 * 1024
    target = b"/v1/users/" + b"a" * (1024 * 1024)
    request = _request_line(target)
    pieces = [request[i : i + piece] for i in range(0, len(request), piece)]
    answer, _ = _exchange(server, *pieces)
    document = _problem(answer, 414, "uri-too-long")
    assert str(MAX_TARGET_BYTES) in document["detail"]


@pytest.mark.parametrize("length", [MAX_TARGET_BYTES + 1, 100_000])
def test_a_request_target_over_the_limit_is_a_414_problem(
    server: tuple[str, int], length: int
) -> None:
    target = b"/v1/items/" + b"x" * (length - len(b"/v1/items/"))
    answer, _ = _exchange(server, _request_line(target))
    _problem(answer, 414, "uri-too-long")


def test_a_long_id_under_the_target_limit_is_a_small_422_problem(server: tuple[str, int]) -> None:
    answer, _ = _exchange(server, _request_line(b"/v1/users/" + b"a" * 8000))
    document = _problem(answer, 422, "invalid-input")
    assert "at most 128 characters" in document["detail"]
    assert len(answer) < 1000  # the id is not echoed back


def test_a_request_head_over_the_limit_is_a_431_problem(server: tuple[str, int]) -> None:
    start = b"GET /healthz HTTP/1.1\r\nHost: fyp\r\nX-Padding: "
    pieces = [start, *([b"p" * 16_384] * 64)]  # 1 MiB of one header field, never finished
    answer, _ = _exchange(server, *pieces)
    document = _problem(answer, 431, "request-header-fields-too-large")
    assert str(MAX_HEAD_BYTES) in document["detail"]


def test_an_unparsable_request_is_a_400_problem(server: tuple[str, int]) -> None:
    answer, _ = _exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    _problem(answer, 400, "bad-request")


def test_ordinary_requests_still_work_on_the_same_server(server: tuple[str, int]) -> None:
    base = f"http://{server[0]}:{server[1]}"
    with httpx.Client(base_url=base, timeout=30) as client:
        items = [
            {
                "item_id": f"v{i}",
                "creator_id": "c1",
                "duration_s": 10,
                "caption": "c" * 2000,
                "tags": ["t"],
            }
            for i in range(1000)
        ]
        big = client.put("/v1/items", json={"items": items})  # a ~2.1 MB body, in many reads
        assert big.json() == {"created": 1000, "updated": 0}
        headers = {"X-Padding": "p" * 8000}  # a large but allowed head
        assert client.get("/v1/items/v999", headers=headers).json()["item_id"] == "v999"
        missing = client.get("/v1/users/nobody%0A")
        assert missing.status_code == 422
        assert missing.headers["content-type"].startswith(PROBLEM)
    # Two requests pipelined on one connection are both answered.
    pair = b"GET /healthz HTTP/1.1\r\nHost: fyp\r\n\r\n" + (
        b"GET /v1/regions HTTP/1.1\r\nHost: fyp\r\nConnection: close\r\n\r\n"
    )
    answer, _ = _exchange(server, pair)
    assert answer.count(b"HTTP/1.1 200 OK") == 2


# ---- the protocol in process: what is parsed and kept after a refusal ------------------------


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.eof = self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _CountingParser:
    """Wraps the protocol's parser to count the bytes it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.inner.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("a refused request must not reach the app")


@pytest.fixture
def connection() -> Iterator[tuple[ProblemHttpToolsProtocol, _Transport, _CountingParser]]:
    loop = asyncio.new_event_loop()
    config = uvicorn.Config(_no_app, log_config=None, http=ProblemHttpToolsProtocol)
    protocol = ProblemHttpToolsProtocol(config, ServerState(), {}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    parser = _CountingParser(protocol.parser)
    protocol.parser = parser  # type: ignore[assignment]
    yield protocol, transport, parser
    loop.close()


def test_after_the_target_limit_nothing_more_is_parsed_or_kept(
    connection: tuple[ProblemHttpToolsProtocol, _Transport, _CountingParser],
) -> None:
    protocol, transport, parser = connection
    protocol.data_received(b"GET /v1/users/")
    piece = b"a" * 65_536
    for _ in range(1 + LINGER_BYTES // len(piece)):  # the first piece, then LINGER_BYTES more
        protocol.data_received(piece)
    assert transport.written.startswith(b"HTTP/1.1 414 ")
    assert transport.written.count(b"HTTP/1.1") == 1 and transport.eof
    assert len(protocol.url) <= MAX_TARGET_BYTES
    assert parser.fed == len(b"GET /v1/users/") + len(piece)  # one read past the limit, no more
    assert not transport.closed  # lingering: the client can still read the answer
    protocol.data_received(b"a")
    assert transport.closed  # more than LINGER_BYTES dropped: the connection is closed


def test_after_the_head_limit_nothing_more_is_parsed(
    connection: tuple[ProblemHttpToolsProtocol, _Transport, _CountingParser],
) -> None:
    protocol, transport, parser = connection
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: fyp\r\nX-Padding: ")
    for _ in range(640):  # 10 MiB of one header field
        protocol.data_received(b"p" * 16_384)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.written.count(b"HTTP/1.1") == 1
    assert parser.fed <= MAX_HEAD_BYTES + 16_384 + 64
    assert transport.closed


# ---- the loopback check of fyp serve ----------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]
)
def test_loopback_hosts(host: str) -> None:
    assert _is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "127.evil.example",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "",
        "127.0.0.1 ",
    ],
)
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not _is_loopback_host(host)


def test_fyp_serve_refuses_a_lookalike_host_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FYP_API_KEY", raising=False)
    code = main(["serve", "--data-dir", str(tmp_path), "--host", "127.evil.example"])
    assert code == 1
    assert "refusing to listen on 127.evil.example" in capsys.readouterr().err
