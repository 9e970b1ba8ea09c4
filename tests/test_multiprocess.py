"""Several processes on one data directory: catalog changes, models and retraining converge."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fyp.config import load_config
from fyp.engine import Engine
from fyp.storage.catalog import SqlCatalog
from fyp.types import Event, Item, User, from_epoch

T0 = 1_700_000_000.0


def _items(n: int, creator: str = "c", tag: str = "cooking") -> list[Item]:
    return [
        Item(
            item_id=f"v{i}",
            creator_id=f"{creator}{i % 5}",
            created_at=from_epoch(T0 - i * 60),
            duration_s=20.0,
            tags=[tag],
        )
        for i in range(n)
    ]


def test_a_catalog_picks_up_items_another_process_changed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    writer, reader = SqlCatalog(url), SqlCatalog(url)
    try:
        writer.upsert_items(_items(10))
        assert reader.refresh_changed() == 10
        assert reader.get_item("v1").tags == ("cooking",)  # type: ignore[union-attr]
        assert reader.items_by_tags(["pets"], 5) == {"pets": []}
        # Move an item to another tag and creator in the other process.
        moved = _items(2, creator="d", tag="pets")[1]
        writer.upsert_items([moved])
        reader.refresh_changed()
        record = reader.get_item("v1")
        assert record is not None and (record.creator_id, record.tags) == ("d1", ("pets",))
        assert reader.items_by_tags(["pets"], 5) == {"pets": ["v1"]}
        assert "v1" not in reader.items_by_tags(["cooking"], 20)["cooking"]
    finally:
        writer.close()
        reader.close()


def _seed(engine: Engine) -> None:
    engine.put_items(_items(60))
    engine.put_users([User(user_id=f"u{k}", region="us") for k in range(6)])
    events = [
        Event(
            event_id=f"e{k}-{i}", user_id=f"u{k}", item_id=f"v{i}", type="like", ts=from_epoch(T0)
        )
        for k in range(6)
        for i in range(k, 60, 6)
    ]
    assert engine.ingest(events).accepted == 60


def test_models_trained_elsewhere_are_served_after_sync(tmp_path: Path) -> None:
    config = load_config(tmp_path, training={"min_events": 10, "factors": 4, "iterations": 2})
    server, trainer = Engine(config), Engine(config)
    try:
        _seed(trainer)
        [report] = trainer.train(["us"])
        assert server.model_versions()["us"] == "untrained"
        server.sync()
        assert server.model_versions()["us"] == report.version
        assert server.feed("u1", 3).model_version == report.version
    finally:
        server.close()
        trainer.close()


def test_only_one_process_retrains_a_data_directory(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    first, second = Engine(config), Engine(config)
    try:
        assert first.retrainer.start() is True
        assert second.retrainer.start() is False
        first.retrainer.stop()
        assert second.retrainer.start() is True
    finally:
        first.close()
        second.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_fyp_serve_with_two_workers(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path))
    _seed(engine)
    engine.close()
    port = _free_port()
    fyp = Path(sys.executable).with_name("fyp")
    server = subprocess.Popen(
        [str(fyp), "serve", "--data-dir", str(tmp_path), "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # a liveness bound for two cold starts
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        served: list[str] = []
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(8):
                response = client.get("/v1/users/u2/feed?n=3", headers={"Connection": "close"})
                assert response.status_code == 200, response.text
                served.extend(item["item_id"] for item in response.json()["items"])
        assert len(served) == len(set(served)), "workers share seen items through the database"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert server.returncode in (0, -15), err.decode()[-2000:]
