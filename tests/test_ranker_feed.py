"""The ranker in the feed, end to end on a small sim world: trained with the region's models, served
in the scoring stage, visible in the trace and features, and moved by the viewer's quick skips."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance.policy import Principal
from fyp.pipeline.contracts import Candidate, FeedContext, FeedQuery
from fyp.pipeline.trace import Trace
from fyp.scoring.ranker import RankerScorer
from fyp.scoring.value_model import ValueModel
from fyp.sim.world import World, WorldConfig, build_world
from fyp.types import Event, from_epoch

pytestmark = pytest.mark.slow

NOW = 1_765_000_000.0


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(seed=5, n_creators=40, n_items=800, n_viewers=160, now=NOW))


@pytest.fixture(scope="module")
def engine(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    clock = iter(itertools.count(NOW + 60.0, 1.0))
    eng = Engine(load_config(tmp_path_factory.mktemp("ranker-feed")), clock=lambda: next(clock))
    eng.put_items(world.items)
    eng.put_users(world.users)
    result = eng.ingest(world.history)
    assert result.errors == [] and result.accepted == len(world.history)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def trained(engine: Engine) -> Engine:
    reports = engine.train()
    for report in reports:
        assert report.version is not None
        assert report.ranker is not None and report.ranker.get("tasks"), report.ranker
        assert report.ranker["train"]["examples"] > 500
    for region in engine.config.region_names:
        model = engine.slots[region].current
        assert model is not None and model.ranker is not None
    return engine


class FeatureSpy(ValueModel):
    """The value model, also keeping the features of the candidates it scored."""

    seen: list[dict[str, float]]

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        self.seen = [dict(c.features) for c in candidates]
        return super().score(query, candidates)


def test_a_fresh_engine_serves_feeds_with_the_ranker_contributing_nothing(
    tmp_path: Path, world: World
) -> None:
    engine = Engine(load_config(tmp_path), clock=lambda: NOW + 60.0)
    try:
        engine.put_items(world.items[-200:])  # the newest: the fresh source finds them
        engine.put_users(world.users[:1])
        result = engine.feed(world.users[0].user_id, n=5)
    finally:
        engine.close()
    assert len(result.items) == 5
    [step] = [s for s in result.trace.steps if s.component == "ranker"]
    assert step.error is None


def test_the_feed_ranks_with_the_ranker_and_records_it(trained: Engine, world: World) -> None:
    spy = FeatureSpy(trained.config.scoring)
    scorers = [*trained.pipeline.scorers[:-1], spy]
    trained.pipeline = dataclasses.replace(trained.pipeline, scorers=scorers)
    viewer = world.users[3].user_id
    result = trained.feed(viewer, n=10)
    assert len(result.items) == 10
    [step] = [s for s in result.trace.steps if s.component == "ranker"]
    assert step.error is None and step.stage == "scorers"
    assert len(spy.seen) > 50
    values = [f["ranker"] for f in spy.seen]
    assert len(set(values)) > len(values) // 2, "the ranker tells candidates apart"
    for features in spy.seen:
        heads = {t: features[f"ranker_{t}"] for t in trained.config.ranker.objective_weights}
        expected = sum(w * heads[t] for t, w in trained.config.ranker.objective_weights.items())
        assert features["ranker"] == pytest.approx(expected, abs=1e-5)
    # Reasons stay truthful: a predicted-watch reason only where the finish head says so.
    codes = {r.code for item in result.items for r in item.reasons}
    assert codes, "every item is explained"


def ranker_scores(engine: Engine, user_id: str, item_ids: list[str]) -> list[float]:
    region = engine.gate.locate(user_id)
    assert region is not None
    handle = engine.gate.open(region, Principal.service(region), "serve_feed")
    now = engine.clock()
    records = engine.catalog.get_items(item_ids)
    stats = handle.stats.stats(item_ids)
    query = FeedQuery(
        request_id="ranker-test",
        user_id=user_id,
        region=region,
        n=10,
        now=now,
        context=FeedContext(engine.config, engine.catalog, handle, engine.slots[region].current),
        trace=Trace(),
        state=handle.state.hydrate(user_id, now),
    )
    cands = [Candidate(i, item=records[i], stats=stats.get(i)) for i in item_ids]
    return RankerScorer(engine.config.ranker).score(query, cands)


def test_quick_skips_lower_the_ranker_scores_of_that_creator(trained: Engine, world: World) -> None:
    viewer = world.users[7]
    seen = {e.item_id for e in world.history if e.user_id == viewer.user_id}
    by_creator: dict[str, list[str]] = {}
    for item in world.items:
        if item.item_id not in seen and item.available_in(viewer.region):
            by_creator.setdefault(item.creator_id, []).append(item.item_id)
    creator, items = max(by_creator.items(), key=lambda kv: len(kv[1]))
    skipped, judged = items[:4], items[4:14]
    assert len(judged) >= 5, creator
    before = ranker_scores(trained, viewer.user_id, judged)
    ts = trained.clock()
    events = []
    for k, item_id in enumerate(skipped):
        for kind in ("play", "skip"):
            events.append(
                Event(
                    event_id=f"qs-{k}-{kind}",
                    user_id=viewer.user_id,
                    item_id=item_id,
                    type=kind,
                    ts=from_epoch(ts + k),
                    watch_ms=600 if kind == "play" else None,
                )
            )
    assert trained.ingest(events).accepted == len(events)
    after = ranker_scores(trained, viewer.user_id, judged)
    assert float(np.mean(after)) < float(np.mean(before))
    assert sum(a < b for a, b in zip(after, before, strict=True)) >= len(judged) * 0.8


def test_erasure_removes_the_viewers_embedding_row_and_asks_for_retraining(
    trained: Engine, world: World
) -> None:
    region = "us"
    model = trained.slots[region].current
    assert model is not None and model.ranker is not None
    users = model.ranker.vocabs.users
    viewer = next(u.user_id for u in world.users if u.region == region and users.row(u.user_id) > 0)
    row = users.row(viewer)
    unknown = model.ranker.network.user.weight[users.unknown_row].detach().clone()
    assert not bool((model.ranker.network.user.weight[row] == unknown).all())
    trained_before = float(model.meta["trained_at"])
    receipt = trained.rights.erase(viewer)
    assert receipt["rows_deleted"]["users"] == 1
    # In memory at once: the id is unmapped and its row is now the unknown viewer's.
    assert users.row(viewer) == users.unknown_row
    assert bool((model.ranker.network.user.weight[row] == unknown).all())
    assert viewer not in set(users.ids)
    # On disk at the next training, which the retrainer now considers due.
    handle = trained.gate.open(region, Principal.service(region), "operate")
    assert handle.models.last_erasure() > trained_before
    trained.retrainer.trained_at[region] = trained_before
    trained.retrainer.trained_seq[region] = handle.events.last_seq()
    assert trained.retrainer.due(region)
