"""Nothing acknowledged is lost when the server process is killed (``kill -9``).

A real ``fyp serve`` runs on a free loopback port over a temporary data directory. Writers of every
kind run at once (event batches, user upserts, item upserts, controls, erasures with their audited
receipts, exports with theirs), each recording what the server acknowledged. At a random moment
the server is killed with SIGKILL, restarted on the same directory, and every acknowledged write
is looked for: events, users, items and the last acknowledged controls are there, erased users
stay gone (no row left), each receipt's audit entry is in the log as acknowledged, and
``fyp audit verify`` passes.

What survives a power loss (beyond a process kill) is stated in docs/TRUST.md.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fyp.config import load_config
from fyp.governance.rights import subject_hash
from fyp.storage.audit import SqlAuditLog

pytestmark = pytest.mark.slow

FYP = Path(sys.executable).with_name("fyp")
START_TIMEOUT_S = 120.0
"""A liveness bound for a cold start on a busy machine (not a timing assertion)."""
BASE_USERS = [f"base{k}" for k in range(8)]
BASE_ITEMS = [f"item{k}" for k in range(20)]
ACKS_BEFORE_KILL = 3
"""Each kind of write has at least this many acknowledgements before the kill may happen."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path


def _start(data_dir: Path, log: Path) -> Server:
    port = _free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*(str(FYP), "serve", "--data-dir", str(data_dir)), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"fyp serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return Server(process, base, log)
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"fyp serve did not answer within {START_TIMEOUT_S:.0f}s")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)


@dataclass
class Acks:
    """What the server acknowledged (answered 200 to), by kind."""

    events: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    items: set[str] = field(default_factory=set)
    controls: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """user -> keyword of each acknowledged PUT, in order."""
    controls_in_flight: dict[str, str] = field(default_factory=dict)
    """user -> keyword of a PUT sent but not answered (it may or may not have landed)."""
    erased: dict[str, dict[str, Any]] = field(default_factory=dict)
    """user -> the erasure receipt."""
    exports: list[tuple[str, str, int]] = field(default_factory=list)
    """(user, region, audit seq) of each acknowledged export."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "events": len(self.events),
                "users": len(self.users),
                "items": len(self.items),
                "controls": sum(len(v) for v in self.controls.values()),
                "erased": len(self.erased),
                "exports": len(self.exports),
            }


def _item(item_id: str) -> dict[str, Any]:
    return {"item_id": item_id, "creator_id": "maker", "duration_s": 30.0, "tags": ["durable"]}


def _events(prefix: str, user: str, n: int) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "event_id": f"{prefix}-{i}",
            "user_id": user,
            "item_id": BASE_ITEMS[i % len(BASE_ITEMS)],
            "type": "like" if i % 3 == 0 else "play",
            "ts": now,
            "watch_ms": 12_000,
        }
        for i in range(n)
    ]


def _writers(base_url: str, acks: Acks, stop: threading.Event) -> dict[str, Callable[[], None]]:
    """One loop per kind of write; each runs until ``stop`` or until the server is gone."""

    def loop(name: str, body: Callable[[httpx.Client, int], None]) -> Callable[[], None]:
        def run() -> None:
            with httpx.Client(base_url=base_url, timeout=30) as client:
                k = 0
                while not stop.is_set():
                    try:
                        body(client, k)
                    except httpx.TransportError:
                        return  # the server was killed
                    k += 1

        return run

    def events(writer: int) -> Callable[[httpx.Client, int], None]:
        def body(client: httpx.Client, k: int) -> None:
            user = BASE_USERS[(k + writer) % len(BASE_USERS)]
            batch = _events(f"w{writer}-{k}", user, 5)
            response = client.post("/v1/events", json={"events": batch})
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["errors"] == [] and answer["accepted"] == 5, answer
            with acks.lock:
                acks.events.update(e["event_id"] for e in batch)

        return body

    def users(client: httpx.Client, k: int) -> None:
        user = f"new{k}"
        region = "us" if k % 2 else "eu"
        body = {"users": [{"user_id": user, "region": region, "attributes": {"k": k}}]}
        response = client.put("/v1/users", json=body)
        assert response.status_code == 200, response.text
        with acks.lock:
            acks.users.add(user)

    def items(client: httpx.Client, k: int) -> None:
        response = client.put("/v1/items", json={"items": [_item(f"newitem{k}")]})
        assert response.status_code == 200, response.text
        with acks.lock:
            acks.items.add(f"newitem{k}")

    def controls(client: httpx.Client, k: int) -> None:
        user = BASE_USERS[k % len(BASE_USERS)]
        keyword = f"kw{k}"
        body = {"personalized": k % 2 == 0, "keyword_filters": [keyword], "blocked_tags": []}
        with acks.lock:
            acks.controls_in_flight[user] = keyword
        response = client.put(f"/v1/users/{user}/controls", json=body)
        assert response.status_code == 200, response.text
        with acks.lock:
            acks.controls[user].append(keyword)
            del acks.controls_in_flight[user]

    def erasures(client: httpx.Client, k: int) -> None:
        user = f"gone{k}"
        region = "eu" if k % 2 else "us"
        response = client.put("/v1/users", json={"users": [{"user_id": user, "region": region}]})
        assert response.status_code == 200, response.text
        response = client.post("/v1/events", json={"events": _events(f"g{k}", user, 4)})
        assert response.status_code == 200 and response.json()["accepted"] == 4, response.text
        response = client.delete(f"/v1/users/{user}")
        assert response.status_code == 200, response.text
        with acks.lock:
            acks.erased[user] = response.json()

    def exports(client: httpx.Client, k: int) -> None:
        user = BASE_USERS[(3 * k) % len(BASE_USERS)]
        response = client.get(f"/v1/users/{user}/export")
        assert response.status_code == 200, response.text
        answer = response.json()
        with acks.lock:
            acks.exports.append((user, answer["region"], int(answer["audit_seq"])))

    return {
        "events-0": loop("events-0", events(0)),
        "events-1": loop("events-1", events(1)),
        "users": loop("users", users),
        "items": loop("items", items),
        "controls": loop("controls", controls),
        "erasures": loop("erasures", erasures),
        "exports": loop("exports", exports),
    }


def _seed(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.put("/v1/items", json={"items": [_item(i) for i in BASE_ITEMS]})
        assert response.status_code == 200, response.text
        users = [
            {"user_id": u, "region": "us" if k % 2 else "eu"} for k, u in enumerate(BASE_USERS)
        ]
        response = client.put("/v1/users", json={"users": users})
        assert response.status_code == 200, response.text


@contextlib.contextmanager
def _running(threads: dict[str, Callable[[], None]], failures: list[str]) -> Iterator[None]:
    def guarded(name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # an unexpected answer: reported by the test
                failures.append(f"{name}: {exc!r}")

        return run

    started = [
        threading.Thread(target=guarded(n, t), name=n, daemon=True) for n, t in threads.items()
    ]
    for thread in started:
        thread.start()
    try:
        yield
    finally:
        for thread in started:
            thread.join(60)


def _rows_of(data_dir: Path, user_ids: list[str]) -> dict[str, int]:
    """Rows naming any of ``user_ids`` in any text column of any table of the region databases."""
    found: dict[str, int] = defaultdict(int)
    wanted = set(user_ids)
    for path in sorted(data_dir.glob("region-*.db")):
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                columns = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
                for column in columns:
                    for (value,) in db.execute(f'SELECT "{column}" FROM "{table}"'):
                        if isinstance(value, str) and value in wanted:
                            found[f"{path.name}:{table}.{column}"] += 1
    return dict(found)


def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    server = _start(data_dir, log)
    try:
        _seed(server.base_url)
        acks, stop, failures = Acks(), threading.Event(), list[str]()
        with _running(_writers(server.base_url, acks, stop), failures):
            deadline = time.monotonic() + 60
            while min(acks.counts().values()) < ACKS_BEFORE_KILL and not failures:
                assert time.monotonic() < deadline, f"writers too slow: {acks.counts()}"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the middle of every stream
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(30)
            stop.set()
        assert not failures, failures
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)

    context = f"(seed {seed}; acknowledged before the kill: {acks.counts()})"
    server = _start(data_dir, log)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            stored_events: set[str] = set()
            for user in BASE_USERS:
                response = client.get(f"/v1/users/{user}/export")
                assert response.status_code == 200, response.text
                stored_events.update(e["event_id"] for e in response.json()["events"])
            lost = acks.events - stored_events
            assert not lost, f"{len(lost)} acknowledged events lost {context}"
            for user in acks.users:
                assert client.get(f"/v1/users/{user}").status_code == 200, f"{user} {context}"
            for item in acks.items:
                assert client.get(f"/v1/items/{item}").status_code == 200, f"{item} {context}"
            for user, keywords in acks.controls.items():
                stored = client.get(f"/v1/users/{user}/controls").json()["keyword_filters"]
                allowed = [[keywords[-1]]]
                if user in acks.controls_in_flight:  # sent after the last ack: it may have landed
                    allowed.append([acks.controls_in_flight[user]])
                assert stored in allowed, f"{user}: {stored} not in {allowed} {context}"
            for user in acks.erased:
                assert client.get(f"/v1/users/{user}").status_code == 404, f"{user} {context}"
    finally:
        _stop(server)

    assert _rows_of(data_dir, list(acks.erased)) == {}, context
    config = load_config(data_dir)
    logs = {region: SqlAuditLog(config.audit_url(region), region) for region in config.region_names}
    try:
        for user, receipt in acks.erased.items():
            record, leaf = logs[receipt["region"]].leaf(receipt["audit"]["seq"])
            assert leaf.hex() == receipt["audit"]["leaf_hash"], f"{user} {context}"
            assert record.action == "erase_user"
            assert record.detail["subject"] == subject_hash(receipt["region"], user)
        for user, region, seq in acks.exports:
            record, _ = logs[region].leaf(seq)
            assert record.action == "export_user", f"{user} #{seq} {context}"
            assert record.detail["subject"] == subject_hash(region, user)
    finally:
        for audit_log in logs.values():
            audit_log.close()
    verify = subprocess.run(
        [str(FYP), "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, f"{verify.stdout}\n{verify.stderr} {context}"
