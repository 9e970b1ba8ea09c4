"""The load generator: an asyncio client run in its own process, one phase per process.

The parent (``feed_http.py``) starts ``python bench/load_client.py``, writes a JSON spec on stdin
and reads line-delimited JSON on stdout. Between warm-up and measurement the client stops and
waits for the parent, so the parent can read the server's CPU counters exactly around the measured
window::

    child:  {"event": "measure-start"}     parent samples the server, answers "go"
    child:  {"event": "measure-end"}       parent samples the server, answers "go"
    child:  {"event": "result", ...}

``concurrency`` keep-alive connections each send requests back to back (closed loop). A phase
stops at its request count or its time limit, whichever comes first; requests in flight at the
limit finish and are counted. Any status other than 200, and any transport error or timeout, is an
error. Latency percentiles are over the successful requests; server latency comes from the
``Server-Timing: app;dur=<ms>`` header.

Two HTTP transports, same loop, same accounting:

* ``raw`` (default): a minimal HTTP/1.1 client over asyncio streams, about 0.03 ms of client CPU
  per request. Needed to see the server's ceiling on a small machine: the trivial endpoint costs
  the server well under a millisecond, so a heavier client saturates first.
* ``httpx``: ``httpx.AsyncClient``, about 1 ms of client CPU per request here; kept as a
  cross-check of the raw client and to show how much a typical Python client costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

PERCENTILES = (50, 90, 99)
USER_AGENT = b"fyp-bench/1"
IDLE_REOPEN_S = 4.0
"""A keep-alive connection idle this long is reopened before use: uvicorn closes idle ones after
5 s, and a request sent as it does would fail for no fault of the server's."""


@dataclass
class Target:
    path: str
    label: str = ""
    """Requests are also summarized per label (e.g. the viewer's region)."""


@dataclass
class Spec:
    base_url: str
    name: str
    targets: list[Target]
    warmup_targets: list[Target]
    requests: int
    duration_s: float
    warmup_requests: int
    warmup_s: float
    concurrency: int
    client: str = "raw"
    timeout_s: float = 30.0
    feed_n: int | None = None
    """For feed phases: the page size asked for; responses are checked for it."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        data = dict(data)
        data["targets"] = [Target(**t) for t in data["targets"]]
        data["warmup_targets"] = [Target(**t) for t in data["warmup_targets"]]
        return cls(**data)


class Response(Protocol):
    status: int

    def header(self, name: str) -> str | None: ...

    def json(self) -> Any: ...

    def text(self) -> str: ...


class Connection(Protocol):
    """One client connection (or a share of a pool): GET a path, get the whole response."""

    async def get(self, path: str) -> Response: ...

    async def close(self) -> None: ...


# ---- raw HTTP/1.1 -------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode())
        return None if value is None else value.decode("latin-1")

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class RawConnection:
    """HTTP/1.1 keep-alive over one asyncio stream; reconnects after an error or a close."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the raw client speaks plain http only, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def get(self, path: str) -> RawResponse:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: bytes | None = None) -> RawResponse:
        """One request; a ``body`` is sent as JSON with its length.

        A kept-alive connection the server closed meanwhile (it closes one after an unhandled
        error, without saying so in the response) fails before any byte of an answer: then the
        request is sent again once, on a new connection, as HTTP clients do."""
        if self.writer is not None and time.monotonic() - self.last_used > IDLE_REOPEN_S:
            await self.close()  # the server may be closing it: don't lose a request to that race
        reused = self.writer is not None
        try:
            return await self._request(method, path, body)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
        return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: bytes | None) -> RawResponse:
        self.last_used = time.monotonic()
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        try:
            head = (
                method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host_header
                + b"\r\nUser-Agent: " + USER_AGENT + b"\r\nAccept: */*\r\n"
            )  # fmt: skip
            if body is not None:
                head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            writer.write(head + b"\r\n" + (body or b""))
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = headers.get(b"content-length")
            if length is not None:
                body = await reader.readexactly(int(length))
            elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                body = await self._chunked(reader)
            else:  # the body runs to the end of the connection
                body = await reader.read()
                headers[b"connection"] = b"close"
        except BaseException:
            await self.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        return RawResponse(status, headers, body)

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# ---- httpx --------------------------------------------------------------------------------------


class HttpxResponse:
    def __init__(self, response: Any) -> None:
        self._response = response
        self.status = int(response.status_code)

    def header(self, name: str) -> str | None:
        value = self._response.headers.get(name)
        return None if value is None else str(value)

    def json(self) -> Any:
        return self._response.json()

    def text(self) -> str:
        return str(self._response.text)


class HttpxConnection:
    """A worker's view of one shared ``httpx.AsyncClient`` (pool size = concurrency)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def get(self, path: str) -> HttpxResponse:
        return HttpxResponse(await self.client.get(path))

    async def close(self) -> None:
        return None


def _httpx_client(spec: Spec) -> Any:
    # httpcore asks ``import sniffio`` on every request; sniffio is not installed (anyio 4.x no
    # longer needs it), and a failed import is not cached, so each request rescans sys.path.
    # Marking it absent makes that failure immediate; httpcore then assumes asyncio, as it would.
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    import httpx

    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    return httpx.AsyncClient(base_url=spec.base_url, limits=limits, timeout=spec.timeout_s)


# ---- the phase ----------------------------------------------------------------------------------


@dataclass
class _Tally:
    latency_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    by_label: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    missing_timing: int = 0
    short_pages: int = 0
    page_items: int = 0
    model_versions: Counter[str] = field(default_factory=Counter)
    sent: int = 0


def server_timing_ms(header: str | None) -> float | None:
    """``app;dur=1.234`` (possibly among other metrics) -> 1.234."""
    if not header:
        return None
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        if name.strip() != "app":
            continue
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    found = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, found, strict=True)}


def _record(tally: _Tally, spec: Spec, target: Target, response: Response, ms: float) -> None:
    tally.statuses[str(response.status)] += 1
    if response.status != 200:
        if len(tally.error_samples) < 5:
            body = response.text()[:300].replace("\n", " ")
            tally.error_samples.append(f"{target.path}: {response.status}: {body}")
        return
    tally.latency_ms.append(ms)
    tally.by_label[target.label].append(ms)
    server = server_timing_ms(response.header("server-timing"))
    if server is None:
        tally.missing_timing += 1
    else:
        tally.server_ms.append(server)
    if spec.feed_n is not None:
        body = response.json()
        items = len(body.get("items", []))
        tally.page_items += items
        tally.short_pages += items < spec.feed_n
        tally.model_versions[str(body.get("model_version"))] += 1


async def _run(
    connections: list[Connection], spec: Spec, targets: list[Target], limit: int, seconds: float
) -> tuple[_Tally, float]:
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(connection: Connection) -> None:
        while tally.sent < limit and time.perf_counter() < deadline:
            target = targets[tally.sent % len(targets)]
            tally.sent += 1
            begin = time.perf_counter()
            try:
                async with asyncio.timeout(spec.timeout_s):
                    response = await connection.get(target.path)
            except Exception as exc:  # transport errors, timeouts, bad responses: all counted
                name = type(exc).__name__
                tally.statuses[name] += 1
                if len(tally.error_samples) < 5:
                    tally.error_samples.append(f"{target.path}: {name}: {exc}")
                continue
            _record(tally, spec, target, response, (time.perf_counter() - begin) * 1000.0)

    await asyncio.gather(*(worker(c) for c in connections))
    return tally, time.perf_counter() - started


def _handshake(event: str) -> None:
    print(json.dumps({"event": event}), flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "go":
        raise SystemExit(f"load client: parent said {answer!r}, expected 'go'")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main_async(spec: Spec) -> dict[str, Any]:
    shared: Any = None
    connections: list[Connection]
    if spec.client == "httpx":
        shared = _httpx_client(spec)
        connections = [HttpxConnection(shared) for _ in range(spec.concurrency)]
    elif spec.client == "raw":
        connections = [RawConnection(spec.base_url) for _ in range(spec.concurrency)]
    else:
        raise SystemExit(f"unknown client {spec.client!r}; use raw or httpx")
    try:
        warm, warm_s = await _run(
            connections, spec, spec.warmup_targets, spec.warmup_requests, spec.warmup_s
        )
        _handshake("measure-start")
        cpu_before = _cpu_s()
        tally, elapsed = await _run(connections, spec, spec.targets, spec.requests, spec.duration_s)
        client_cpu = _cpu_s() - cpu_before
        _handshake("measure-end")
    finally:
        for connection in connections:
            await connection.close()
        if shared is not None:
            await shared.aclose()
    ok = len(tally.latency_ms)
    done = sum(tally.statuses.values())
    result: dict[str, Any] = {
        "name": spec.name,
        "client": spec.client,
        "concurrency": spec.concurrency,
        "request_limit": spec.requests,
        "time_limit_s": spec.duration_s,
        "requests": done,
        "ok": ok,
        "errors": done - ok,
        "statuses": dict(tally.statuses),
        "error_samples": tally.error_samples,
        "seconds": elapsed,
        "stopped_by": "requests" if tally.sent >= spec.requests else "time",
        "throughput_rps": done / elapsed if elapsed > 0 else 0.0,
        "ok_throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
        "client_ms": percentiles(tally.latency_ms),
        "client_mean_ms": float(np.mean(tally.latency_ms)) if ok else None,
        "server_ms": percentiles(tally.server_ms),
        "server_mean_ms": float(np.mean(tally.server_ms)) if tally.server_ms else None,
        "missing_server_timing": tally.missing_timing,
        "client_cpu_s": client_cpu,
        "client_cpu_share": client_cpu / elapsed if elapsed > 0 else 0.0,
        "client_cpu_ms_per_request": client_cpu * 1000.0 / done if done else None,
        "by_label": {
            label: {"ok": len(values), **percentiles(values)}
            for label, values in sorted(tally.by_label.items())
            if label
        },
        "warmup": {
            "requests": sum(warm.statuses.values()),
            "errors": sum(warm.statuses.values()) - len(warm.latency_ms),
            "seconds": warm_s,
        },
    }
    if spec.feed_n is not None:
        result["feed"] = {
            "n": spec.feed_n,
            "mean_items": tally.page_items / ok if ok else None,
            "short_pages": tally.short_pages,
            "model_versions": dict(tally.model_versions),
        }
    return result


def main() -> int:
    spec = Spec.from_json(json.loads(sys.stdin.readline()))
    try:
        import uvloop  # comes with uvicorn[standard]; a cheaper loop leaves more CPU to the server
    except ImportError:
        result = asyncio.run(main_async(spec))
    else:
        result = uvloop.run(main_async(spec))
    print(json.dumps({"event": "result", **result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
