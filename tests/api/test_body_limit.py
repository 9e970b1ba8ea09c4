"""The request body limit holds whatever the transfer encoding (issue 14, defect 5).

A body without ``Content-Length`` (chunked) used to be read in full before the server answered,
so a 100 MB upload cost the server 100 MB of memory. The limit now counts the bytes the app pulls
and refuses with a 413 problem as soon as they pass ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn

from fyp.api.app import MAX_BODY_BYTES, create_app
from fyp.config import load_config
from fyp.engine import Engine

PROBLEM = "application/problem+json"
CHUNK = 64 * 1024


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(load_config(tmp_path))
    try:
        yield engine
    finally:
        engine.close()


def _send_streamed(
    engine: Engine, method: str, path: str, total: int
) -> tuple[httpx.Response, int]:
    """Send ``total`` bytes as a chunked body through the ASGI app; returns the response and how
    many bytes the app pulled from the client."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        chunk = b"[" + b" " * (CHUNK - 1)  # JSON-ish, so only the size can be the problem
        while pulled < total:
            pulled += len(chunk)
            yield chunk

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(
            app=create_app(engine, close_engine=False), client=("127.0.0.1", 40000)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://fyp") as client:
            return await client.request(
                method, path, content=body(), headers={"content-type": "application/json"}
            )

    response = anyio.run(run)
    return response, pulled


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/events"), ("PUT", "/v1/items")])
def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read(
    engine: Engine, method: str, path: str
) -> None:
    response, pulled = _send_streamed(engine, method, path, 3 * MAX_BODY_BYTES)
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["type"] == "urn:fyp:problem:payload-too-large"
    assert str(MAX_BODY_BYTES) in problem["detail"]
    # The app stopped pulling at the first chunk past the limit, far from the whole upload.
    assert MAX_BODY_BYTES < pulled <= MAX_BODY_BYTES + CHUNK
    assert response.headers["connection"] == "close"


def test_a_chunked_body_under_the_limit_is_read_as_before(engine: Engine) -> None:
    response, pulled = _send_streamed(engine, "POST", "/v1/events", 4 * CHUNK)
    assert pulled == 4 * CHUNK
    # Read in full and parsed: the bytes are not JSON, so the answer is about the content.
    assert response.status_code == 422
    assert response.json()["type"] == "urn:fyp:problem:invalid-input"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return status, headers, body


def test_a_real_server_refuses_a_chunked_upload_without_reading_it(engine: Engine) -> None:
    """The same through uvicorn (as ``fyp serve`` runs it) and a raw socket: a chunked upload of
    100 MB is answered with a 413 problem while the client is still sending, and the server
    closes the connection instead of draining the rest."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine, close_engine=False),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60  # a liveness bound for the start, not a timing claim
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        total = 100 * 1024 * 1024
        sent = 0
        answered_after = None
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: fyp\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n" % CHUNK + b" " * CHUNK + b"\r\n"
            try:
                while sent < total:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:
                        answered_after = sent
                        break
                    sock.sendall(chunk)
                    sent += CHUNK
            except (BrokenPipeError, ConnectionResetError):
                answered_after = sent
            assert answered_after is not None, "the server read the whole 100 MB upload"
            status, headers, body = _read_response(sock)
            # The server hung up (a reset, as the client's bytes were still arriving): the rest of
            # the upload is never read.
            sock.settimeout(30)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        assert status == 413
        assert headers["content-type"].startswith(PROBLEM)
        assert headers["connection"] == "close"
        assert json.loads(body)["type"] == "urn:fyp:problem:payload-too-large"
        # What the client got out before the answer: the limit plus what socket buffers hold.
        assert answered_after < total // 2
    finally:
        server.should_exit = True
        thread.join(timeout=30)
