"""Regression tests for bugs found while the core suite was written; each failed before its fix.

The comments above each group say what was wrong and where.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.config import FreshConfig, FypConfig, SelectorsConfig
from fyp.engine import fold_policy
from fyp.errors import SchemaMismatch
from fyp.pipeline.contracts import Candidate
from fyp.pipeline.for_you import for_you_pipeline
from fyp.selectors.basic import ReserveExploration, TakeN
from fyp.signals import QUICK_SKIP_MS, preference_weight
from fyp.storage.catalog import SqlCatalog
from fyp.storage.models import ModelStore
from fyp.storage.region import SqlRegionStore

# ---- 1. ReserveExploration places promoted items below the page ----------------------------------
# src/fyp/selectors/basic.py, ReserveExploration.select:
#     page.insert(min(self.position + k * spacing, len(page)), cand)
# The insert index is clamped to len(page) (== n before the first insert), not to the page, so a
# promoted item lands at index >= n whenever exploration_position >= n, or position + k * spacing
# >= n with several slots; each insert also pushes the page's last item to index n. TakeN (and
# SpaceCreators) then cut at n: the "at least exploration_slots fresh items on each page" promise
# breaks, and an eligible item that was already on the page can be pushed off it.


def stale(make_candidate: Callable[..., Candidate], k: int, score: float) -> Candidate:
    return make_candidate(f"old{k}", f"c{k}", age_hours=1000, score=score)


def fresh(make_candidate: Callable[..., Candidate], k: int, score: float) -> Candidate:
    return make_candidate(f"new{k}", f"n{k}", age_hours=1, views=0, score=score)


def explored_on_page(config: SelectorsConfig, cands: list[Candidate], query: Any) -> int:
    out = ReserveExploration(config, FreshConfig()).select(query, cands)
    page = TakeN().select(query, out)
    return sum(c.exploration for c in page)


def test_a_short_page_keeps_its_exploration_slot(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    # Default exploration_position is 3; a page of n=2 gets the promoted item at index 2.
    cands = [stale(make_candidate, 0, 3.0), stale(make_candidate, 1, 2.0)]
    cands += [stale(make_candidate, 2, 1.0), fresh(make_candidate, 0, 0.0)]
    config = SelectorsConfig(exploration_pools=False, exploration_slots=1, exploration_position=3)
    assert explored_on_page(config, cands, make_query(2)) == 1


def test_every_exploration_slot_lands_on_the_page(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    # n=4, two slots at position 3 with spacing 2: the second one is inserted at index 5.
    cands = [stale(make_candidate, k, 10.0 - k) for k in range(4)]
    cands += [fresh(make_candidate, 0, 1.0), fresh(make_candidate, 1, 0.0)]
    config = SelectorsConfig(exploration_pools=False, exploration_slots=2, exploration_position=3)
    assert explored_on_page(config, cands, make_query(4)) == 2


def test_promotion_does_not_push_an_eligible_item_off_the_page(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    # One eligible item already at the page's last position; the promotion of a second one (two
    # slots) inserts at 3 and pushes it to index n=5, so the page ends with one eligible item.
    cands = [stale(make_candidate, k, 10.0 - k) for k in range(4)]
    cands += [fresh(make_candidate, 0, 5.0), fresh(make_candidate, 1, 0.0)]
    config = SelectorsConfig(exploration_pools=False, exploration_slots=2, exploration_position=3)
    query = make_query(5)
    page = TakeN().select(query, ReserveExploration(config, FreshConfig()).select(query, cands))
    eligible = [c.item_id for c in page if c.item_id.startswith("new")]
    assert sorted(eligible) == ["new0", "new1"]


@given(
    n=st.integers(1, 12),
    slots=st.integers(1, 3),
    position=st.integers(0, 12),
    stale_count=st.integers(0, 15),
    fresh_count=st.integers(0, 6),
    rnd=st.randoms(use_true_random=True),
)
def test_the_page_holds_as_many_eligible_items_as_slots_allow(
    n: int,
    slots: int,
    position: int,
    stale_count: int,
    fresh_count: int,
    rnd: Any,
    make_candidate: Callable[..., Candidate],
    make_query: Any,
) -> None:
    cands = [stale(make_candidate, k, 0.0) for k in range(stale_count)]
    cands += [fresh(make_candidate, k, 0.0) for k in range(fresh_count)]
    rnd.shuffle(cands)
    config = SelectorsConfig(
        exploration_pools=False, exploration_slots=slots, exploration_position=position
    )
    query = make_query(n)
    page = TakeN().select(query, ReserveExploration(config, FreshConfig()).select(query, cands))
    eligible = sum(c.item_id.startswith("new") for c in page)
    assert eligible >= min(slots, fresh_count, n)


def test_the_for_you_chain_keeps_the_exploration_slot_on_a_short_page(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    # Default: 1 slot at position 3 (the plain rule; staged pools need the region's counters).
    config = FypConfig(selectors={"exploration_pools": False})
    selectors = for_you_pipeline(config).selectors
    cands = [stale(make_candidate, k, 10.0 - k) for k in range(6)] + [fresh(make_candidate, 0, 0)]
    query = make_query(3)
    out = cands
    for selector in selectors:
        out = selector.select(query, out)
    assert any(c.exploration for c in out), [c.item_id for c in out]


# ---- 2. ModelStore prunes by directory mtime, not by save order ---------------------------------
# src/fyp/storage/models.py, ModelStore._prune sorts version directories by st_mtime and deletes
# all but the last three. Directory mtimes do not follow save order when the clock steps back
# (NTP), when snapshots are copied or restored to a shared volume, or on filesystems with coarse
# timestamps (ties are then broken by directory listing order). The store then deletes recent
# snapshots (here the previous CURRENT, the rollback target) and keeps older ones, and can end
# with more than three versions. Pruning should follow save order (e.g. a sequence number or the
# trainer's sortable version names recorded at save time).


def test_pruning_keeps_the_last_three_saves_even_if_the_clock_stepped_back(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path)
    ahead = 4_000_000_000  # saved while the clock ran ahead (year 2096)
    for k, version in enumerate(["v1", "v2", "v3"]):
        store.save(version, {}, {"a": np.arange(3)})
        os.utime(tmp_path / version, (ahead + k, ahead + k))
    store.save("v4", {}, {"a": np.arange(3)})  # the clock has been corrected
    store.save("v5", {}, {"a": np.arange(3)})
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["v3", "v4", "v5"]


# ---- 3. A foreign database is adopted instead of refused ----------------------------------------
# src/fyp/storage/sql.py, Database._ensure_schema: a database without an fyp_meta table is treated
# as new: create_all() skips tables whose names already exist and the database is stamped as an
# fyp database. Pointed at an application's own database (a common misconfiguration of
# storage_url / catalog_url), fyp silently adds its tables next to the app's, marks the file as
# its own, and later fails with raw SQLAlchemy OperationalErrors ("no such column
# users.user_id") -- or writes into a same-named table whose columns happen to fit.
# fyp.errors.SchemaMismatch is documented as "a database ... not an fyp database at all"; opening
# should raise it when the database holds tables but no fyp_meta.


def test_opening_a_non_fyp_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'alice')")
    conn.close()
    with pytest.raises(SchemaMismatch):
        SqlRegionStore(f"sqlite:///{path}", "us", fold_policy(FypConfig())).close()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "fyp_meta" not in tables, "the foreign database is left untouched"


# ---- 4. A quick skip raises online affinity but counts as a dislike in training ------------------
# src/fyp/signals.py, FoldPolicy.affinity_delta (and FoldPolicy.trend_weight): a play scores
# play_weight * (watch_ratio - neutral_watch_ratio) whatever its length, while
# preference_weight() treats any play under QUICK_SKIP_MS as a skip ("a quick skip is a dislike
# whatever the item's length"). On a short item (a 2 s clip, a short song intro) a 1.5 s swipe-away
# has watch ratio 0.75: online state *raises* the creator and tag affinity by 0.45 and adds trending
# weight, while training records a dislike. The module promises one meaning per event type; the
# quick-skip rule should apply to affinity (and trending) too.


def test_a_quick_skip_never_raises_online_affinity(make_event: Any, make_record: Any) -> None:
    config = FypConfig()
    policy = fold_policy(config)
    clip = make_record("clip", duration_s=2.0)
    swipe = make_event("u1", "clip", "play", watch_ms=QUICK_SKIP_MS - 500)
    training = preference_weight(
        "play", swipe.watch_ms, clip.duration_s, config.training.event_weights, 1.0
    )
    assert training < 0, "training sees a dislike"
    assert policy.affinity_delta(swipe, clip) <= 0
    assert policy.trend_weight(swipe, clip) == 0


# ---- 5. Moving an item to another creator or tag leaves it in the old cached lists ---------------
# src/fyp/storage/catalog.py (working tree, uncommitted at the time of writing), upsert_items
# invalidates the newest-items cache only for the item's *new* creator and tags
# (self._newest_cache.pop(("creator", it.creator_id)) / ("tag", tag)), not for the creator and tags
# it had before. For up to NEWEST_CACHE_TTL_S after a re-upsert in the same process,
# items_by_tags(old_tag) still lists the item and items_by_creators([old_creator]) returns the
# item's new record, whose creator_id is someone else. FollowingSource then offers the followers
# of the old creator an item by a creator they do not follow, explained as "followed_creator"
# ("From <new creator>, whom you follow"). The docstrings promise that only *other processes'*
# upserts may lag; the fix is to also drop the cache entries of the stored record's previous
# creator and tags (read them in the upsert transaction).


def test_a_reupsert_leaves_no_stale_tag_or_creator_list(make_item: Any) -> None:
    catalog = SqlCatalog("sqlite://")
    try:
        catalog.upsert_items([make_item("v1", "alice", tags=["cats"])])
        assert catalog.items_by_tags(["cats"], per_tag=5) == {"cats": ["v1"]}
        assert [r.item_id for r in catalog.items_by_creators(["alice"], per_creator=5)] == ["v1"]
        catalog.upsert_items([make_item("v1", "bob", tags=["dogs"])])
        assert catalog.items_by_tags(["cats", "dogs"], per_tag=5) == {"cats": [], "dogs": ["v1"]}
        assert catalog.items_by_creators(["alice"], per_creator=5) == []
    finally:
        catalog.close()
