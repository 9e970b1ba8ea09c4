"""The governance door: own region only, purpose-bound handles, and every decision audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grants import DEFAULT_GRANTS
from hypothesis import given, settings
from hypothesis import strategies as st

from fyp.config import FypConfig
from fyp.engine import Engine, fold_policy
from fyp.errors import AccessDenied, NotFound
from fyp.governance.gate import Gate
from fyp.governance.policy import PURPOSE_OPERATIONS, DeclarativePolicy, Principal
from fyp.storage.audit import SqlAuditLog
from fyp.storage.models import ModelStore
from fyp.storage.region import SqlRegionStore

REGIONS = ("us", "eu")
KINDS = ("service", "operator", "auditor", "user")
PURPOSES = (*PURPOSE_OPERATIONS, "export", "")
ROLE_OPERATIONS = {
    "users": ("upsert_users", "get_user", "has_users", "count_users", "user_ids"),
    "events": ("append", "recent_for_user", "scan", "last_seq"),
    "state": ("hydrate", "seen_among", "record_served"),
    "stats": ("stats", "trending", "totals"),
    "models": ("save", "load_current", "current_version"),
    "keys": ("rotate_kek", "key_status"),
    "audit": ("append", "tail", "count", "verify", "leaf"),
    "rights": (
        "export_user",
        "erase_user",
        "controls",
        "put_controls",
        "interests",
        "reset_interests",
    ),
}
"""Every operation a handle exposes, by role."""

principals = st.builds(
    Principal,
    id=st.sampled_from(["svc", "ops", "aud", "alice"]),
    kind=st.sampled_from(KINDS),
    region=st.sampled_from([*REGIONS, "jp"]),
)


def expected_allowed(principal: Principal, region: str, purpose: str) -> bool:
    return (
        principal.region == region
        and purpose in PURPOSE_OPERATIONS
        and purpose in DEFAULT_GRANTS[principal.kind]
    )


class World:
    """A gate over two in-memory regions, shared by the examples of one test module."""

    def __init__(self, root: Path) -> None:
        policy = fold_policy(FypConfig())
        self.stores = {r: SqlRegionStore("sqlite://", r, policy) for r in REGIONS}
        self.audit = {r: SqlAuditLog("sqlite://") for r in REGIONS}
        models = {r: ModelStore(root / r) for r in REGIONS}
        self.gate = Gate(
            self.stores,
            models,
            self.audit,
            DeclarativePolicy.default(),
            clock=lambda: 1_700_000_000.0,
        )

    def audit_counts(self) -> dict[str, int]:
        return {r: log.count() for r, log in self.audit.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("models"))
    yield w
    w.gate.close()


@settings(max_examples=150)
@given(principal=principals, region=st.sampled_from(REGIONS), purpose=st.sampled_from(PURPOSES))
def test_every_open_decision_is_audited_once_in_the_target_region(
    world: World, principal: Principal, region: str, purpose: str
) -> None:
    before = world.audit_counts()
    allowed = expected_allowed(principal, region, purpose)
    if allowed:
        handle = world.gate.open(region, principal, purpose)  # type: ignore[arg-type]
        assert (handle.region, handle.principal, handle.purpose) == (region, principal, purpose)
    else:
        with pytest.raises(AccessDenied):
            world.gate.open(region, principal, purpose)  # type: ignore[arg-type]
    after = world.audit_counts()
    assert after == {r: before[r] + (r == region) for r in REGIONS}
    [entry] = world.audit[region].tail(1)
    assert (entry.principal, entry.purpose, entry.action) == (principal.id, purpose, "open")
    assert entry.decision == ("allow" if allowed else "deny")
    assert entry.detail["principal_region"] == principal.region


@settings(max_examples=40)
@given(region=st.sampled_from(REGIONS), purpose=st.sampled_from(sorted(PURPOSE_OPERATIONS)))
def test_a_handle_permits_exactly_its_purposes_operations(
    world: World, region: str, purpose: str
) -> None:
    kind = {"audit": "auditor", "scan_package": "auditor", "manage_keys": "operator"}.get(
        purpose, "service"
    )
    principal = Principal(id=f"{kind}:{region}", kind=kind, region=region)  # type: ignore[arg-type]
    handle = world.gate.open(region, principal, purpose)  # type: ignore[arg-type]
    log = world.audit[region]
    for role, operations in ROLE_OPERATIONS.items():
        for operation in operations:
            name = f"{role}.{operation}"
            before = log.count()
            if name in PURPOSE_OPERATIONS[purpose]:
                assert callable(getattr(getattr(handle, role), operation))
                assert log.count() == before
            else:
                with pytest.raises(AccessDenied):
                    getattr(getattr(handle, role), operation)
                assert log.count() == before + 1
                [entry] = log.tail(1)
                assert (entry.action, entry.decision, entry.purpose) == (name, "deny", purpose)


def test_a_feed_handle_cannot_scan_the_event_log(world: World) -> None:
    handle = world.gate.open("us", Principal.service("us"), "serve_feed")
    before = world.audit_counts()
    with pytest.raises(AccessDenied, match=r"events\.scan"):
        list(handle.events.scan(10))
    assert world.audit_counts() == {"us": before["us"] + 1, "eu": before["eu"]}
    [entry] = world.audit["us"].tail(1)
    assert (entry.principal, entry.action, entry.decision) == ("service:us", "events.scan", "deny")


def test_a_training_handle_cannot_read_profiles(world: World) -> None:
    handle = world.gate.open("eu", Principal.service("eu"), "train")
    with pytest.raises(AccessDenied):
        handle.users.get_user("u1")
    assert handle.events.last_seq() == 0


def test_a_handle_has_no_operations_beyond_its_roles(world: World) -> None:
    handle = world.gate.open("us", Principal.service("us"), "serve_feed")
    before = world.audit_counts()
    with pytest.raises(AttributeError):
        handle.state.close  # noqa: B018 - the access itself is what is checked
    assert world.audit_counts() == before


def test_opening_an_unknown_region_is_not_found_and_touches_no_region(world: World) -> None:
    before = world.audit_counts()
    with pytest.raises(NotFound, match="mars"):
        world.gate.open("mars", Principal.service("mars"), "serve_feed")
    assert world.audit_counts() == before


def test_locate_finds_a_users_home_region(world: World, make_user: Any) -> None:
    handle = world.gate.open("eu", Principal.service("eu"), "manage_users")
    handle.users.upsert_users([make_user("anna", "eu")], 1.0)
    assert world.gate.locate("anna") == "eu"
    assert world.gate.locate("nobody") is None
    assert world.gate.locate_many(["anna", "nobody"]) == {"anna": "eu"}


def test_a_cross_region_read_is_refused_and_shows_in_that_regions_audit(engine: Engine) -> None:
    with pytest.raises(AccessDenied, match="export"):
        engine.gate.open("eu", Principal.service("us"), "serve_feed")
    auditor = Principal(id="auditor:eu", kind="auditor", region="eu")
    denied, own_open = engine.gate.open("eu", auditor, "audit").audit.tail(2)
    assert (denied.principal, denied.action, denied.decision) == ("service:us", "open", "deny")
    assert (own_open.principal, own_open.decision) == ("auditor:eu", "allow")
