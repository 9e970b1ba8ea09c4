"""Conformance of the catalog and the regional store on every backend.

SQLite (file and memory) always runs; PostgreSQL runs when ``FYP_TEST_POSTGRES_URL`` is set, each
test in fresh schemas that are dropped afterwards. A new backend joins by adding its URL maker to
``BACKENDS``: every test in both classes then runs on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from fyp.config import FypConfig
from fyp.engine import fold_policy
from fyp.errors import AuditLogDamaged
from fyp.governance import merkle
from fyp.signals import trend_now
from fyp.storage.audit import SqlAuditLog
from fyp.storage.catalog import SqlCatalog
from fyp.storage.envelope import KeyFile
from fyp.storage.region import SqlRegionStore
from fyp.storage.roles import ItemRecord, ServedItem, UpsertResult, UserControls
from fyp.types import from_epoch

HOUR = 3600.0
CONFIG = FypConfig()
BACKENDS = {
    "sqlite-file": lambda tmp, name: f"sqlite:///{tmp}/{name}.db",
    "sqlite-memory": lambda tmp, name: "sqlite://",
    "memory": lambda tmp, name: "memory://",
}


@pytest.fixture(params=[*sorted(BACKENDS), "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """URL of a named database on the backend under test."""
    if request.param != "postgresql":
        make = BACKENDS[request.param]
        yield lambda name: make(tmp_path, name)
        return
    yield request.getfixturevalue("pg_schema_url")


@pytest.fixture
def catalog(db_url: Callable[[str], str]) -> Iterator[SqlCatalog]:
    store = SqlCatalog(db_url("catalog"))
    yield store
    store.close()


@pytest.fixture
def region(db_url: Callable[[str], str], make_user: Any, now: float) -> Iterator[SqlRegionStore]:
    """A region store holding the viewers the tests write about (writes about a user who does
    not exist are refused)."""
    store = SqlRegionStore(db_url("region-us"), "us", fold_policy(CONFIG))
    store.upsert_users([make_user(u) for u in ("u1", "u2", "u3")], now)
    yield store
    store.close()


class TestCatalogConformance:
    def test_upsert_then_get_returns_normalized_records(
        self, catalog: SqlCatalog, make_item: Any, now: float
    ) -> None:
        item = make_item(
            "v1", "alice", age_hours=2, tags=["#Cats", "cats", "Funny"], regions=["us", "eu", "us"]
        )
        assert catalog.upsert_items([item]) == UpsertResult(created=1, updated=0)
        record = catalog.get_items(["v1", "missing"])
        assert list(record) == ["v1"]
        v1 = record["v1"]
        assert isinstance(v1, ItemRecord)
        assert (v1.creator_id, v1.duration_s, v1.caption) == ("alice", 30.0, item.caption)
        assert v1.created_at == pytest.approx(now - 2 * HOUR)
        assert v1.tags == ("cats", "funny")
        assert v1.regions == ("eu", "us")
        assert catalog.get_item("missing") is None
        assert catalog.count_items() == 1

    def test_publication_time_defaults_to_first_receipt_and_survives_updates(
        self, catalog: SqlCatalog
    ) -> None:
        from fyp.types import Item

        before = time.time()
        catalog.upsert_items([Item(item_id="v9", creator_id="c", duration_s=10.0)])
        first = catalog.get_items(["v9"])["v9"].created_at
        assert before - 1 <= first <= time.time() + 1
        # An update that omits the time keeps it; one that gives it sets it.
        catalog.upsert_items([Item(item_id="v9", creator_id="c", duration_s=12.0, tags=["x"])])
        again = catalog.get_items(["v9"])["v9"]
        assert (again.created_at, again.duration_s) == (pytest.approx(first), 12.0)
        assert catalog.items_by_tags(["x"], 5) == {"x": ["v9"]}
        catalog.upsert_items(
            [Item(item_id="v9", creator_id="c", duration_s=12.0, created_at=from_epoch(1000.0))]
        )
        assert catalog.get_items(["v9"])["v9"].created_at == pytest.approx(1000.0)

    def test_upsert_counts_created_and_updated_and_replaces_the_record(
        self, catalog: SqlCatalog, make_item: Any
    ) -> None:
        catalog.upsert_items([make_item("v1", "alice"), make_item("v2", "bob")])
        assert catalog.get_item("v1").creator_id == "alice"  # type: ignore[union-attr]
        result = catalog.upsert_items([make_item("v1", "carol"), make_item("v3", "dan")])
        assert (result.created, result.updated) == (1, 1)
        assert catalog.get_item("v1").creator_id == "carol"  # type: ignore[union-attr]
        assert catalog.count_items() == 3

    def test_last_write_in_a_batch_wins(self, catalog: SqlCatalog, make_item: Any) -> None:
        result = catalog.upsert_items([make_item("v1", "alice"), make_item("v1", "bob")])
        assert (result.created, result.updated) == (1, 0)
        assert catalog.get_item("v1").creator_id == "bob"  # type: ignore[union-attr]

    def test_recent_items_are_newest_first_since_a_time(
        self, catalog: SqlCatalog, make_item: Any, now: float
    ) -> None:
        catalog.upsert_items([make_item(f"v{h}", age_hours=h) for h in (5, 1, 30, 3, 10)])
        recent = catalog.recent_items(since=now - 10 * HOUR, limit=10)
        assert [r.item_id for r in recent] == ["v1", "v3", "v5", "v10"]
        assert [r.item_id for r in catalog.recent_items(since=0.0, limit=2)] == ["v1", "v3"]

    def test_items_by_creators_takes_the_newest_per_creator(
        self, catalog: SqlCatalog, make_item: Any
    ) -> None:
        catalog.upsert_items(
            [make_item(f"a{h}", "alice", age_hours=h) for h in (1, 2, 3)]
            + [make_item(f"b{h}", "bob", age_hours=h) for h in (4, 5)]
            + [make_item("c1", "carol")]
        )
        found = catalog.items_by_creators(["alice", "bob", "nobody"], per_creator=2)
        assert [r.item_id for r in found] == ["a1", "a2", "b4", "b5"]

    def test_items_by_tags_lists_the_newest_items_per_tag(
        self, catalog: SqlCatalog, make_item: Any
    ) -> None:
        catalog.upsert_items(
            [
                make_item("v1", age_hours=1, tags=["cats"]),
                make_item("v2", age_hours=2, tags=["cats", "dogs"]),
                make_item("v3", age_hours=3, tags=["dogs"]),
                make_item("v4", age_hours=4, tags=["cats"]),
            ]
        )
        assert catalog.items_by_tags(["cats", "dogs", "fish"], per_tag=2) == {
            "cats": ["v1", "v2"],
            "dogs": ["v2", "v3"],
            "fish": [],
        }

    def test_a_reupsert_moves_an_item_between_tags(
        self, catalog: SqlCatalog, make_item: Any
    ) -> None:
        catalog.upsert_items([make_item("v1", tags=["cats"])])
        catalog.upsert_items([make_item("v1", tags=["dogs"])])
        assert catalog.items_by_tags(["cats", "dogs"], per_tag=5) == {"cats": [], "dogs": ["v1"]}
        assert catalog.get_item("v1").tags == ("dogs",)  # type: ignore[union-attr]

    @pytest.mark.parametrize("step", [1, 2, 5, 50])
    def test_scan_newest_walks_every_item_once_newest_first_in_the_region(
        self, catalog: SqlCatalog, make_item: Any, step: int
    ) -> None:
        # Ties in publication time (three items per hour) must neither skip nor repeat items
        # at a step boundary; items of another region are read (examined) but not returned.
        regions = ([], ["us"], ["eu"], ["us", "eu"])
        catalog.upsert_items(
            [
                make_item(f"v{k:02d}", age_hours=k // 3, regions=regions[k % len(regions)])
                for k in range(23)
            ]
        )
        records = catalog.get_items([f"v{k:02d}" for k in range(23)]).values()
        newest_first = sorted(records, key=lambda r: (r.created_at, r.item_id), reverse=True)
        expected = [r.item_id for r in newest_first if r.available_in("us")]
        found: list[str] = []
        examined, position, steps = 0, None, 0
        while True:
            page = catalog.scan_newest("us", position, step)
            found += [r.item_id for r in page.items]
            examined += page.examined
            steps += 1
            if page.next is None:
                break
            position = page.next
        assert found == expected
        assert examined == 23
        assert steps == 23 // step + 1
        assert catalog.scan_newest("us", None, 0).items == []

    def test_vectors_round_trip_as_float32(self, catalog: SqlCatalog, make_item: Any) -> None:
        catalog.upsert_items([make_item("v1", vector=[0.5, -1.25, 3.0]), make_item("v2")])
        assert catalog.get_vector("v1") == [0.5, -1.25, 3.0]
        assert catalog.get_vector("v2") is None


class TestRegionStoreConformance:
    @pytest.fixture
    def items(self, make_record: Any) -> dict[str, ItemRecord]:
        return {
            "v1": make_record("v1", "alice", tags=["cats", "funny"]),
            "v2": make_record("v2", "bob", tags=["cooking"]),
            "v3": make_record("v3", "carol", tags=["cats"]),
            "v4": make_record("v4", "alice"),
        }

    def test_upsert_users_reports_created_and_updated(
        self, region: SqlRegionStore, make_user: Any, now: float
    ) -> None:
        result = region.upsert_users([make_user("n1", plan="free"), make_user("n2")], now)
        assert (result.created, result.updated) == (2, 0)
        result = region.upsert_users([make_user("n1", plan="pro"), make_user("n3")], now + 5)
        assert (result.created, result.updated) == (1, 1)
        n1 = region.get_user("n1")
        assert n1 is not None
        assert (n1.region, n1.attributes, n1.created_at) == ("us", {"plan": "pro"}, now)
        assert region.get_user("nobody") is None
        assert region.has_users(["n1", "n3", "nobody"]) == {"n1", "n3"}
        assert region.count_users() == 3 + 3, "and the fixture's u1, u2 and u3"

    def test_append_is_idempotent_within_a_batch(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        first = make_event("u1", "v1", "like", event_id="e1", ts=now)
        again = make_event("u1", "v1", "like", event_id="e1", ts=now)
        other = make_event("u1", "v2", "finish", event_id="e2", ts=now)
        result = region.append([first, again, other], items, now)
        assert result.accepted == ["e1", "e2"]
        assert result.duplicates == ["e1"]
        assert region.last_seq() == 2
        assert region.stats(["v1"])["v1"].likes == 1

    def test_append_is_idempotent_across_batches(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        region.append([make_event("u1", "v1", "like", event_id="e1", ts=now)], items, now)
        before = (region.last_seq(), region.stats(["v1"]), region.hydrate("u1", now))
        result = region.append(
            [
                make_event("u1", "v1", "like", event_id="e1", ts=now),
                make_event("u1", "v2", "like", event_id="e2", ts=now),
            ],
            items,
            now,
        )
        assert (result.accepted, result.duplicates) == (["e2"], ["e1"])
        assert region.last_seq() == before[0] + 1
        assert region.stats(["v1"]) == before[1], "a duplicate changes no counter"
        assert region.hydrate("u1", now).creator_affinity["alice"] == pytest.approx(
            before[2].creator_affinity["alice"]
        )

    def test_users_rights_controls_interests_export_and_erasure(
        self,
        region: SqlRegionStore,
        items: dict[str, ItemRecord],
        make_user: Any,
        make_event: Any,
        now: float,
    ) -> None:
        region.upsert_users([make_user("u1"), make_user("u2")], now)
        region.append(
            [
                make_event("u1", "v1", "like", event_id="e1", ts=now - 10),
                make_event("u1", "v2", "like", event_id="e2", ts=now - 5),
                make_event("u2", "v1", "like", event_id="e3", ts=now),
            ],
            items,
            now,
        )
        assert region.controls("u1") == UserControls()
        wanted = UserControls(False, ("spoilers",), ("cats",))
        assert region.put_controls("u1", wanted, now) == wanted
        assert region.hydrate("u1", now).controls == wanted
        tags = {i.key for i in region.interests("u1", now) if i.kind == "tag"}
        assert {"cats", "funny", "cooking"} <= tags
        assert region.reset_interests("u1", now, tag="cats") == 1
        assert "cats" not in {i.key for i in region.interests("u1", now) if i.kind == "tag"}
        assert region.reset_interests("u1", now + 1) > 0
        assert region.interests("u1", now + 1) == []
        assert region.controls("u1").interests_reset_at == now + 1
        assert region.controls("u1").keyword_filters == ("spoilers",)
        assert region.recent_for_user("u1", 10) == []
        assert region.hydrate("u1", now + 2).recent_positives == ()
        exported = region.export_user("u1")
        assert exported is not None
        assert [e["event_id"] for e in exported["events"]] == ["e1", "e2"]
        assert exported["user_controls"][0]["personalized"] is False
        counts = region.erase_user("u1")
        assert counts["users"] == 1 and counts["events"] == 2 and counts["user_controls"] == 1
        assert region.export_user("u1") is None and region.get_user("u1") is None
        assert region.controls("u1") == UserControls()
        assert region.export_user("u2") is not None

    def test_an_empty_batch_stores_nothing(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], now: float
    ) -> None:
        result = region.append([], items, now)
        assert (result.accepted, result.duplicates) == ([], [])
        assert region.last_seq() == 0
        assert list(region.scan(100)) == []

    def test_appended_events_are_readable_in_order(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        events = [
            make_event("u1", "v1", "play", event_id="e1", ts=now - 30, watch_ms=12_000),
            make_event("u2", "v2", "like", event_id="e2", ts=now - 20),
            make_event("u1", "v3", "skip", event_id="e3", ts=now - 10),
        ]
        region.append(events, items, now)
        region.append([make_event("u1", "v4", "finish", event_id="e4", ts=now - 40)], items, now)
        recent = region.recent_for_user("u1", limit=10)
        assert [e.event_id for e in recent] == ["e3", "e1", "e4"], "newest first by event time"
        assert (recent[1].type, recent[1].watch_ms, recent[1].ts) == ("play", 12_000, now - 30)
        assert [e.event_id for e in region.recent_for_user("u1", limit=1)] == ["e3"]
        batches = list(region.scan(max_events=100, batch=3))
        assert [[e.event_id for e in b] for b in batches] == [["e1", "e2", "e3"], ["e4"]]
        assert [e.seq for b in batches for e in b] == [1, 2, 3, 4]
        tail = [e.event_id for b in region.scan(max_events=2) for e in b]
        assert tail == ["e3", "e4"], "scan keeps the most recent events, oldest first"

    def test_record_served_marks_items_seen_and_counts_views(
        self, region: SqlRegionStore, now: float
    ) -> None:
        served = [
            ServedItem("v1", 0, 0.9, [{"code": "fresh", "text": "New."}]),
            ServedItem("v2", 1, 0.5, []),
        ]
        region.record_served("u1", "req-1", "m1", served, now)
        assert region.seen_among("u1", ["v1", "v2", "v3"]) == {"v1", "v2"}
        assert region.seen_among("u2", ["v1"]) == set()
        region.record_served("u1", "req-2", "m1", [ServedItem("v1", 0, 0.9, [])], now)
        assert region.stats(["v1", "v2"])["v1"].views == 1, "a second serving is not a new view"
        assert region.totals().views == 2

    def test_many_pairs_are_marked_seen_exactly_once(
        self, region: SqlRegionStore, make_record: Any, make_event: Any, now: float
    ) -> None:
        # Enough (viewer, item) pairs to span several lookup statements.
        items = {f"i{k}": make_record(f"i{k}") for k in range(700)}
        users = ("u1", "u2", "u3")
        served = [ServedItem(f"i{k}", k, 0.0, []) for k in range(0, 700, 2)]
        region.record_served("u1", "req-1", "m1", served, now)
        events = [
            make_event(u, f"i{k}", "impression", ts=now) for u in users for k in range(0, 700, 3)
        ]
        region.append(events, items, now)
        ids = list(items)
        assert region.seen_among("u1", ids) == {
            f"i{k}" for k in range(700) if k % 2 == 0 or k % 3 == 0
        }
        assert region.seen_among("u2", ids) == {f"i{k}" for k in range(0, 700, 3)}
        stats = region.stats(ids)
        assert stats["i6"].views == 3, "u1 saw it once (served, then an impression), u2 and u3 once"
        assert stats["i2"].views == 1
        assert "i1" not in stats
        assert region.totals().views == 350 + 3 * 234 - 117

    def test_events_mark_their_items_seen(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        region.append([make_event("u1", "v3", "impression", ts=now)], items, now)
        assert region.seen_among("u1", ["v1", "v3"]) == {"v3"}
        assert region.stats(["v3"])["v3"].views == 1

    def test_hydrate_reflects_follows_hides_mutes_affinity_and_recent_positives(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        region.append(
            [
                make_event("u1", "v1", "like", ts=now - 300),
                make_event("u1", "v4", "follow", ts=now - 200),
                make_event("u1", "v3", "finish", ts=now - 100),
                make_event("u1", "v2", "not_interested", ts=now - 50),
                make_event("u2", "v2", "like", ts=now - 10),
            ],
            items,
            now,
        )
        state = region.hydrate("u1", now)
        assert state.as_of == now
        assert state.follows == {"alice"}
        assert state.hidden_items == {"v2"}
        assert state.muted_creators == {"bob"}
        assert state.recent_positives == ("v3", "v4", "v1")
        assert set(state.creator_affinity) == {"alice", "bob", "carol"}
        assert state.creator_affinity["alice"] > 0
        assert state.creator_affinity["bob"] < 0
        assert set(state.tag_affinity) == {"cats", "funny", "cooking"}
        assert state.tag_affinity["cats"] > state.tag_affinity["funny"] > 0
        assert state.tag_affinity["cooking"] < 0
        other = region.hydrate("u2", now)
        assert other.muted_creators == frozenset() and other.recent_positives == ("v2",)
        assert region.hydrate("nobody", now).creator_affinity == {}

    def test_affinity_decays_and_mutes_expire(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        region.append([make_event("u1", "v2", "not_interested", ts=now)], items, now)
        region.append([make_event("u1", "v1", "like", ts=now)], items, now)
        half_life = CONFIG.affinity.half_life_hours * HOUR
        mute = CONFIG.affinity.creator_mute_hours * HOUR
        fresh = region.hydrate("u1", now)
        later = region.hydrate("u1", now + half_life)
        assert later.creator_affinity["alice"] == pytest.approx(fresh.creator_affinity["alice"] / 2)
        assert region.hydrate("u1", now + mute - 1).muted_creators == {"bob"}
        assert region.hydrate("u1", now + mute + 1).muted_creators == frozenset()
        assert region.hydrate("u1", now + mute + 1).hidden_items == {"v2"}, "hidden stays hidden"

    def test_trending_orders_items_by_decayed_engagement(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        half_life = CONFIG.sources.trending.half_life_hours * HOUR
        weights = CONFIG.sources.trending.engagement_weights
        region.append(
            [
                # v1: a share two half-lives ago is worth 3/4 now; v2: a like now (2);
                # v3: a finish now (1); v4: only a skip, which is not engagement.
                make_event("u1", "v1", "share", ts=now - 2 * half_life),
                make_event("u1", "v2", "like", ts=now),
                make_event("u2", "v3", "finish", ts=now),
                make_event("u2", "v4", "skip", ts=now),
            ],
            items,
            now,
        )
        trending = region.trending(limit=10)
        assert [item_id for item_id, _ in trending] == ["v2", "v3", "v1"]
        decayed = {i: trend_now(log, now, half_life) for i, log in trending}
        assert decayed["v2"] == pytest.approx(weights["like"])
        assert decayed["v1"] == pytest.approx(weights["share"] / 4)
        assert [i for i, _ in region.trending(limit=1)] == ["v2"]

    def test_late_engagement_counts_what_it_would_have_on_time(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        half_life = CONFIG.sources.trending.half_life_hours * HOUR
        region.append([make_event("u1", "v1", "like", ts=now)], items, now)
        region.append([make_event("u2", "v1", "like", ts=now - half_life)], items, now)
        [(_, log)] = region.trending(limit=1)
        like = CONFIG.sources.trending.engagement_weights["like"]
        assert trend_now(log, now, half_life) == pytest.approx(like * 1.5)
        assert math.isfinite(log)

    def test_totals_sum_the_counters_over_items(
        self, region: SqlRegionStore, items: dict[str, ItemRecord], make_event: Any, now: float
    ) -> None:
        region.append(
            [
                make_event("u1", "v1", "like", ts=now),
                make_event("u1", "v2", "like", ts=now),
                make_event("u2", "v2", "skip", ts=now),
                make_event("u2", "v3", "play", ts=now, watch_ms=15_000),
            ],
            items,
            now,
        )
        totals = region.totals()
        assert (totals.views, totals.likes, totals.skips, totals.plays) == (4, 2, 1, 1)
        assert totals.watch_ratio_sum == pytest.approx(0.5)

    def test_audit_entries_append_in_order(self, db_url: Callable[[str], str], now: float) -> None:
        log = SqlAuditLog(db_url("audit-us"))
        first = log.append("svc", "train", "open", "allow", {"reason": "ok"}, now)
        second = log.append("op", "audit", "open", "deny", {"reason": "no"}, now + 1)
        assert second > first
        assert log.count() == 2
        tail = log.tail(10)
        assert [(r.principal, r.decision, r.detail) for r in tail] == [
            ("svc", "allow", {"reason": "ok"}),
            ("op", "deny", {"reason": "no"}),
        ]
        assert [r.principal for r in log.tail(1)] == ["op"]
        log.close()

    def test_a_damaged_audit_log_is_named_refused_and_never_raises(
        self, db_url: Callable[[str], str], now: float
    ) -> None:
        log = SqlAuditLog(db_url("audit-us"), "us")
        for i in range(23):
            log.append("svc", "route", "open", "allow", {"i": i}, now + i)
        log.sign_head(now)
        checks = [log]
        if log.db.url not in ("sqlite://", "memory://"):  # a second opener sees the same data
            checks.append(SqlAuditLog(log.db.url, "us", read_only=True))
        assert all(check.verify(log.verifier).ok for check in checks)
        # The tampering of issue 14: the last entry gone and the counter set back.
        with log.db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit WHERE seq = 23"))
            conn.execute(text("UPDATE audit_state SET size = 22"))
        for check in checks:
            report = check.verify(log.verifier)
            assert report.first_bad_seq == 23 and not report.ok
        assert "past the last entry" in (log.quick_check() or "")
        with pytest.raises(AuditLogDamaged):
            log.append("svc", "route", "open", "allow", {}, now + 99)
        assert log.count() == 22
        for check in checks:
            check.close()

    def test_audit_tree_heads_and_proofs(self, db_url: Callable[[str], str], now: float) -> None:
        log = SqlAuditLog(db_url("audit-us"), "us")
        for i in range(11):
            assert log.append("svc", "train", "open", "allow", {"i": i}, now + i) == i + 1
        head = log.sign_head(now)
        assert log.verifier.valid(head.message(), head.signature)
        assert log.head() == head and log.heads() == [head]
        _, leaf = log.leaf(6)
        size, path = log.inclusion_proof(6, head.size)
        merkle.verify_inclusion(5, size, leaf, path, head.root)
        log.append("op", "audit", "open", "deny", {}, now + 20)
        newer = log.sign_head(now + 21)
        _, proof = log.consistency_proof(head.size, newer.size)
        merkle.verify_consistency(head.size, newer.size, head.root, newer.root, proof)
        report = log.verify()
        assert report.ok and report.entries == 12 and report.heads_checked == 2
        log.close()


def test_committed_events_are_visible_to_a_new_store_on_the_same_file(
    tmp_path: Path, make_record: Any, make_user: Any, make_event: Any, now: float
) -> None:
    url = f"sqlite:///{tmp_path}/region.db"
    items = {"v1": make_record("v1", "alice")}
    keys = KeyFile(tmp_path / "keys" / "kek-us.json", "us")
    writer = SqlRegionStore(url, "us", fold_policy(CONFIG), keys=keys)
    writer.upsert_users([make_user("u1")], now)
    writer.append([make_event("u1", "v1", "like", event_id="e1", ts=now)], items, now)
    writer.close()
    reader = SqlRegionStore(url, "us", fold_policy(CONFIG), keys=keys)
    try:
        assert [e.event_id for e in reader.recent_for_user("u1", 5)] == ["e1"]
        assert reader.hydrate("u1", now).recent_positives == ("v1",)
        assert reader.get_user("u1") is not None
    finally:
        reader.close()


def test_items_persist_across_catalog_instances(tmp_path: Path, make_item: Any, now: float) -> None:
    url = f"sqlite:///{tmp_path}/catalog.db"
    first = SqlCatalog(url)
    first.upsert_items([make_item("v1", "alice", tags=["cats"])])
    first.close()
    second = SqlCatalog(url)
    try:
        assert second.get_item("v1").created_at == pytest.approx(now - HOUR)  # type: ignore[union-attr]
        assert second.count_items() == 1
    finally:
        second.close()


def test_timestamps_round_trip_through_epoch_seconds(now: float) -> None:
    assert from_epoch(now).timestamp() == now
