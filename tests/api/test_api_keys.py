"""Named API keys: scopes per route, region limits, revocation, hashing, rate limits, audit names.

Keys are made the way ``fyp apikey add`` makes them (the keys file); the server's clock for rate
limits and file re-reads is a fake one, so nothing here depends on time passing.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.api.auth import ROUTE_SCOPES, Authenticator, required_scope
from fyp.cli import main as cli_main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import ConfigError
from fyp.governance.api_keys import SCOPES, KeyFile, digest, keys_path
from fyp.governance.policy import Principal
from fyp.storage.roles import AuditRecord

T0 = 1_700_000_000.0
REMOTE = ("203.0.113.9", 5555)
LOCAL = ("127.0.0.1", 40000)
PROBLEM = "application/problem+json"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _items(n: int) -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"v{i}",
            "creator_id": f"creator{i % 5}",
            "created_at": T0 - i * 600,
            "duration_s": 20,
            "caption": f"clip {i}",
            "tags": [f"topic{i % 4}"],
        }
        for i in range(n)
    ]


def _event(user_id: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"{user_id}-{n}",
        "user_id": user_id,
        "item_id": f"v{n % 30}",
        "type": "like",
        "ts": T0 + n,
    }


@dataclass
class Server:
    client: TestClient
    engine: Engine
    clock: FakeClock
    keys: KeyFile
    secrets: dict[str, str]

    def as_key(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}

    def call(self, name: str | None, method: str, path: str, **kwargs: Any) -> Any:
        headers = self.as_key(name) if name else {}
        return self.client.request(method, path, headers=headers, **kwargs)

    def audit(self, region: str) -> list[AuditRecord]:
        handle = self.engine.gate.open(region, Principal.auditor(region), "audit")
        return handle.audit.tail(100_000)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    keys = KeyFile(keys_path(tmp_path))
    made = {
        "admin": keys.add("admin", {"admin"}, T0),
        "feeder": keys.add("feeder", {"feed", "ingest"}, T0),
        "us-feeder": keys.add("us-feeder", {"feed", "ingest", "train"}, T0, regions=["us"]),
        "rights": keys.add("rights", {"rights"}, T0),
        "auditor": keys.add("auditor", {"audit"}, T0),
        "slow": keys.add("slow", {"feed"}, T0, rate=1.0, burst=2),
    }
    clock = FakeClock()
    engine = Engine(load_config(tmp_path), clock=lambda: T0 + 3600)
    auth = Authenticator(tmp_path, clock=clock)
    with TestClient(create_app(engine, auth=auth), client=REMOTE) as client:
        srv = Server(client, engine, clock, keys, {n: s for n, (_, s) in made.items()})
        assert srv.call("admin", "PUT", "/v1/items", json={"items": _items(30)}).status_code == 200
        users = [{"user_id": "ann", "region": "us"}, {"user_id": "eve", "region": "eu"}]
        assert srv.call("admin", "PUT", "/v1/users", json={"users": users}).status_code == 200
        yield srv


def _problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:fyp:problem:{slug}"
    return body


def test_every_route_is_in_the_scope_table(server: Server) -> None:
    paths = server.client.get("/openapi.json").json()["paths"]
    routes = {(m.upper(), p) for p, ops in paths.items() for m in ops if p.startswith("/v1")}
    missing = {r for r in routes if r not in ROUTE_SCOPES and required_scope(*r) == "admin"}
    assert missing == set(), "give each new /v1 route its scope in fyp.api.auth.ROUTE_SCOPES"
    assert set(ROUTE_SCOPES.values()) <= {*SCOPES, "any"}


def test_each_route_needs_its_scope(server: Server) -> None:
    # feed + ingest: feeds, items, users and events; not rights, not training.
    assert server.call("feeder", "GET", "/v1/users/ann/feed?n=3").status_code == 200
    assert (
        server.call("feeder", "POST", "/v1/events", json={"events": [_event("ann", 1)]}).json()[
            "accepted"
        ]
        == 1
    )
    denied = _problem(server.call("feeder", "GET", "/v1/users/ann/export"), 403, "access-denied")
    assert "'rights'" in denied["detail"] and "feeder" in denied["detail"]
    _problem(server.call("feeder", "POST", "/v1/train"), 403, "access-denied")
    # rights: the user's rights, nothing else.
    assert server.call("rights", "GET", "/v1/users/ann/controls").status_code == 200
    _problem(server.call("rights", "GET", "/v1/users/ann/feed"), 403, "access-denied")
    _problem(
        server.call("rights", "PUT", "/v1/items", json={"items": _items(1)}), 403, "access-denied"
    )
    # Routes that publish nothing personal take any key; admin takes everything.
    for name in ("rights", "auditor", "feeder"):
        assert server.call(name, "GET", "/v1/regions").status_code == 200
        assert server.call(name, "GET", "/v1/transparency").status_code == 200
    assert server.call("admin", "GET", "/v1/users/ann/export").status_code == 200
    assert server.call("admin", "POST", "/v1/train?region=us").status_code == 200
    # No key, or a wrong one: 401 (with the challenge), whatever the route.
    _problem(server.call(None, "GET", "/v1/regions"), 401, "unauthenticated")
    wrong = server.client.get("/v1/regions", headers={"Authorization": "Bearer fyp_nope"})
    assert _problem(wrong, 401, "unauthenticated") and wrong.headers["www-authenticate"] == "Bearer"


def test_a_key_limited_to_regions_is_refused_elsewhere(server: Server) -> None:
    assert server.call("us-feeder", "GET", "/v1/users/ann/feed?n=3").status_code == 200
    eu_log_before = len(server.audit("eu"))
    refused = [
        server.call("us-feeder", "GET", "/v1/users/eve/feed?n=3"),
        server.call("us-feeder", "GET", "/v1/users/eve"),
        server.call("us-feeder", "POST", "/v1/events", json={"events": [_event("eve", 2)]}),
        server.call(
            "us-feeder", "PUT", "/v1/users", json={"users": [{"user_id": "x", "region": "eu"}]}
        ),
        server.call("us-feeder", "POST", "/v1/train?region=eu"),
    ]
    for response in refused:
        body = _problem(response, 403, "access-denied")
        assert "us-feeder" in body["detail"] and "'eu'" in body["detail"]
    # A batch touching the other region is refused whole: ann's event was not stored either.
    mixed = [_event("ann", 3), _event("eve", 4)]
    _problem(
        server.call("us-feeder", "POST", "/v1/events", json={"events": mixed}), 403, "access-denied"
    )
    assert (
        server.call("admin", "POST", "/v1/events", json={"events": [_event("ann", 3)]}).json()[
            "accepted"
        ]
        == 1
    )
    # Each refusal is in eu's own log, naming the key; nothing of eu was opened for it.
    new = server.audit("eu")[eu_log_before:]
    denies = [r for r in new if r.decision == "deny"]
    assert len(denies) >= len(refused) + 1
    assert all(r.detail["api_key"] == "us-feeder" for r in denies)
    opened = [r for r in new if r.decision == "allow" and r.detail.get("api_key") == "us-feeder"]
    assert {r.purpose for r in opened} <= {"route"}  # finding where a user lives, no more
    # Training without a region trains the key's regions only.
    reports = server.call("us-feeder", "POST", "/v1/train").json()["reports"]
    assert [r["region"] for r in reports] == ["us"]
    # The catalog is every region's: a region-limited key may read it, not change it.
    assert server.call("us-feeder", "GET", "/v1/items/v1").status_code == 200
    catalog = server.call("us-feeder", "PUT", "/v1/items", json={"items": _items(1)})
    assert "catalog" in _problem(catalog, 403, "access-denied")["detail"]


def test_a_revoked_key_is_refused_by_the_running_server(server: Server) -> None:
    assert server.call("feeder", "GET", "/v1/regions").status_code == 200
    server.keys.revoke("feeder", T0)
    server.clock.now += 1.5  # the server looks at the keys file at most once a second
    _problem(server.call("feeder", "GET", "/v1/regions"), 401, "unauthenticated")
    # A key added meanwhile works without a restart.
    _, secret = server.keys.add("late", {"feed"}, T0)
    server.clock.now += 1.5
    late = server.client.get("/v1/regions", headers={"Authorization": f"Bearer {secret}"})
    assert late.status_code == 200


def test_the_keys_file_holds_hashes_never_secrets(server: Server, tmp_path: Path) -> None:
    path = keys_path(tmp_path)
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for name, secret in server.secrets.items():
        assert secret not in text
        assert secret.removeprefix("fyp_") not in text
        entry = next(k for k in json.loads(text)["keys"] if k["name"] == name)
        assert entry["sha256"] == digest(secret)
    assert len(set(server.secrets.values())) == len(server.secrets)


def test_a_key_over_its_rate_gets_429_with_retry_after(server: Server) -> None:
    # rate 1/s, bursts of 2: two at once pass, the third waits a second.
    assert server.call("slow", "GET", "/v1/regions").status_code == 200
    assert server.call("slow", "GET", "/v1/regions").status_code == 200
    limited = server.call("slow", "GET", "/v1/regions")
    body = _problem(limited, 429, "rate-limited")
    assert limited.headers["retry-after"] == "1"
    assert body["retry_after"] == 1 and "slow" in body["detail"]
    # Other keys have budgets of their own.
    assert server.call("feeder", "GET", "/v1/regions").status_code == 200
    server.clock.now += 0.5
    _problem(server.call("slow", "GET", "/v1/regions"), 429, "rate-limited")
    server.clock.now += 0.6
    assert server.call("slow", "GET", "/v1/regions").status_code == 200
    # Waiting long refills the bucket to its size, no more.
    server.clock.now += 60
    codes = [server.call("slow", "GET", "/v1/regions").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_audit_entries_name_the_key_never_the_secret(server: Server) -> None:
    before = {region: len(server.audit(region)) for region in ("us", "eu")}
    # A sync route (run in a worker thread), an async one that hands off to a thread, and an
    # erasure (an action recorded through the handle).
    assert server.call("feeder", "GET", "/v1/users/ann").status_code == 200
    assert server.call("feeder", "GET", "/v1/users/ann/feed?n=2").status_code == 200
    assert (
        server.call("feeder", "POST", "/v1/events", json={"events": [_event("ann", 5)]}).status_code
        == 200
    )
    assert server.call("rights", "DELETE", "/v1/users/eve").status_code == 200
    us = server.audit("us")[before["us"] :]
    eu = server.audit("eu")[before["eu"] :]
    by_purpose = {(r.purpose, r.detail.get("api_key")) for r in us if r.decision == "allow"}
    assert {("read_user", "feeder"), ("serve_feed", "feeder"), ("ingest", "feeder")} <= by_purpose
    erasures = [r for r in eu if r.action == "erase_user"]
    assert erasures and all(r.detail["api_key"] == "rights" for r in erasures)
    everything = json.dumps([r.detail for r in us + eu])
    assert not any(secret in everything for secret in server.secrets.values())
    # Entries the server causes on its own, outside any request, name no key.
    server.engine.train(["us"])
    own = server.audit("us")[-1]
    assert "api_key" not in own.detail


def test_healthz_says_up_or_down_to_all_and_more_to_admin_and_audit(server: Server) -> None:
    public = server.client.get("/healthz")
    assert public.status_code == 200 and public.json() == {"status": "up"}
    for name in ("feeder", "rights"):
        assert server.call(name, "GET", "/healthz").json() == {"status": "up"}
    for name in ("admin", "auditor"):
        full = server.call(name, "GET", "/healthz").json()
        assert full["status"] == "ok" and full["model_versions"] == {
            "us": "untrained",
            "eu": "untrained",
        }
    server.engine.gate.quarantine("eu", "test: audit log damaged")
    assert server.client.get("/healthz").json() == {"status": "up"}
    degraded = server.call("auditor", "GET", "/healthz").json()
    assert degraded["status"] == "degraded" and "damaged" in degraded["quarantined"]["eu"]
    server.engine.gate.quarantine("us", "test: key missing")
    down = server.client.get("/healthz")
    assert down.status_code == 503 and down.json() == {"status": "down"}
    assert server.call("admin", "GET", "/healthz").json()["status"] == "down"


def test_healthz_without_keys_is_full_for_loopback_only(tmp_path: Path) -> None:
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine), client=LOCAL) as local:
        assert local.get("/healthz").json()["status"] == "ok"
        assert "model_versions" in local.get("/healthz").json()
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine), client=REMOTE) as remote:
        assert remote.get("/healthz").json() == {"status": "up"}
        _problem(remote.get("/v1/regions"), 403, "access-denied")


def test_fyp_api_key_is_the_default_key_with_every_scope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FYP_API_KEY", "s3cret-key")
    engine = Engine(load_config(tmp_path), clock=lambda: T0 + 3600)
    key = {"Authorization": "Bearer s3cret-key"}
    with TestClient(create_app(engine), client=REMOTE) as c:
        assert c.put("/v1/items", json={"items": _items(5)}, headers=key).status_code == 200
        users = {"users": [{"user_id": "eve", "region": "eu"}]}
        assert c.put("/v1/users", json=users, headers=key).status_code == 200
        assert c.get("/v1/users/eve/export", headers=key).status_code == 200
        assert c.post("/v1/train", headers=key).status_code == 200
        assert "model_versions" in c.get("/healthz", headers=key).json()
        handle = engine.gate.open("eu", Principal.auditor("eu"), "audit")
        named = [r for r in handle.audit.tail(1000) if r.purpose == "export_user"]
        assert named and all(r.detail["api_key"] == "default" for r in named)


def test_a_broken_keys_file_stops_the_start_and_later_fails_closed(tmp_path: Path) -> None:
    path = keys_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"api-keys\.json"):
        Authenticator(tmp_path)
    path.unlink()
    keys = KeyFile(path)
    _, secret = keys.add("one", {"feed"}, T0)
    clock = FakeClock()
    auth = Authenticator(tmp_path, clock=clock)
    assert auth.identify(secret) is not None
    path.write_text('{"version": 1, "keys": [{"name": "one"}]}')
    clock.now += 2
    # Unreadable now: its keys are refused, and the server does not fall back to keyless.
    assert auth.identify(secret) is None
    assert auth.configured


def test_the_cli_prints_the_secret_once_and_lists_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert (
        cli_main(
            [
                "apikey",
                "add",
                "app",
                "--scopes",
                "feed,ingest",
                "--regions",
                "us",
                "--rate",
                "5",
                *data,
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("fyp_") and "shown only now" in err
    assert cli_main(["apikey", "list", *data]) == 0
    listed, _ = capsys.readouterr()
    assert listed.startswith("app\tfeed,ingest\tus\t5/s") and secret not in listed
    listed_file = keys_path(tmp_path).read_text()
    assert cli_main(["apikey", "add", "bad", "--scopes", "feed,root", *data]) == 1
    assert (
        cli_main(["apikey", "add", "eu-only", "--scopes", "feed", "--regions", "mars", *data]) == 1
    )
    keys_path(tmp_path).write_text("[]")
    assert cli_main(["apikey", "list", *data]) == 1  # a clear error, not a traceback
    assert "not an fyp API keys file" in capsys.readouterr().err
    keys_path(tmp_path).write_text(listed_file)
    assert cli_main(["apikey", "revoke", "app", *data]) == 0
    assert cli_main(["apikey", "list", *data]) == 0
    listed, _ = capsys.readouterr()
    assert "revoked" in listed
    assert Authenticator(tmp_path).identify(secret) is None


def test_fyp_serve_listens_beyond_loopback_only_with_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    served: list[str] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: served.append(self.config.host)
    )
    monkeypatch.delenv("FYP_API_KEY", raising=False)
    args = ["serve", "--data-dir", str(tmp_path), "--host", "0.0.0.0", "--no-background-training"]
    assert cli_main(args) == 1
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    assert served == []
    KeyFile(keys_path(tmp_path)).add("app", {"feed"}, T0)
    assert cli_main(args) == 0
    assert served == ["0.0.0.0"]
