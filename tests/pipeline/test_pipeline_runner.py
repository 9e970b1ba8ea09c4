"""The fixed-order runner: fallbacks are recorded, contract breaches caught, stages run in order."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from fyp.engine import Engine
from fyp.errors import NotFound
from fyp.filters.basic import DropSeen
from fyp.governance.policy import Principal
from fyp.pipeline.contracts import Candidate, FeedContext, FeedQuery, FeedResult, rank_scores
from fyp.pipeline.for_you import LoadViewerState, RecordServed, ViewerMustExist, for_you_pipeline
from fyp.pipeline.runner import STAGE_ORDER, FeedPipeline
from fyp.pipeline.trace import Trace
from fyp.selectors.basic import RankByScore, TakeN


class ListSource:
    """Returns fixed item ids, or raises ``error``."""

    budget_ms = 1000.0
    prior = 0.5

    def __init__(
        self, name: str, item_ids: list[str], fail_open: bool = True, error: Exception | None = None
    ) -> None:
        self.name = name
        self.item_ids = item_ids
        self.fail_open = fail_open
        self.error = error

    def fetch(self, query: FeedQuery) -> list[Candidate]:
        if self.error is not None:
            raise self.error
        scores = rank_scores(len(self.item_ids))
        return [
            Candidate(i, sources={self.name: s}, anchors={self.name: f"anchor-{i}"})
            for i, s in zip(self.item_ids, scores, strict=True)
        ]


class FixedScorer:
    """Scores by a function of the candidate; ``extra`` adds (or drops) scores to break the
    one-score-per-candidate contract."""

    budget_ms = 1000.0

    def __init__(
        self,
        name: str,
        fn: Callable[[Candidate], float],
        fail_open: bool = True,
        extra: int = 0,
    ) -> None:
        self.name = name
        self.fn = fn
        self.fail_open = fail_open
        self.extra = extra

    def score(self, query: FeedQuery, candidates: list[Candidate]) -> list[float]:
        scores = [self.fn(c) for c in candidates]
        return scores + [0.0] * self.extra if self.extra >= 0 else scores[: self.extra]


def by_number(cand: Candidate) -> float:
    return float(cand.item_id.removeprefix("v"))


def make_pipeline(
    sources: list[Any], scorers: list[Any] | None = None, side_effects: bool = True
) -> FeedPipeline:
    return FeedPipeline(
        gates=[ViewerMustExist()],
        hydrators=[LoadViewerState()],
        sources=sources,
        filters=[DropSeen()],
        scorers=scorers if scorers is not None else [FixedScorer("by_number", by_number)],
        selectors=[RankByScore(), TakeN()],
        side_effects=[RecordServed()] if side_effects else [],
    )


@pytest.fixture
def seeded(engine: Engine, make_item: Any, make_user: Any) -> Engine:
    engine.put_items([make_item(f"v{k}", f"c{k % 3}", age_hours=k) for k in range(10)])
    engine.put_users([make_user("u1"), make_user("u2")])
    return engine


def run(engine: Engine, pipeline: FeedPipeline, user_id: str = "u1", n: int = 3) -> FeedResult:
    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    query = FeedQuery(
        request_id=uuid.uuid4().hex,
        user_id=user_id,
        region="us",
        n=n,
        now=engine.clock(),
        context=FeedContext(config=engine.config, catalog=engine.catalog, data=handle, model=None),
        trace=Trace(),
    )
    return pipeline.run(query)


def served_to(engine: Engine, user_id: str) -> set[str]:
    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    return handle.state.seen_among(user_id, [f"v{k}" for k in range(10)])


def test_a_failing_fail_open_source_is_recorded_and_the_feed_goes_on(seeded: Engine) -> None:
    broken = ListSource("broken", ["v1"], error=RuntimeError("index offline"))
    result = run(seeded, make_pipeline([broken, ListSource("good", ["v2", "v5", "v7"])]))
    assert [i.item_id for i in result.items] == ["v7", "v5", "v2"]
    [step] = [s for s in result.trace.steps if s.component == "broken"]
    assert step.error == "RuntimeError: index offline"
    assert step.candidates_out == 0
    assert result.trace.fallbacks == ["broken"]
    assert "error" in step.to_json()


def test_a_failing_source_that_is_not_fail_open_fails_the_feed(seeded: Engine) -> None:
    broken = ListSource("broken", [], fail_open=False, error=RuntimeError("must not hide"))
    with pytest.raises(RuntimeError, match="must not hide"):
        run(seeded, make_pipeline([ListSource("good", ["v2"]), broken]))
    assert served_to(seeded, "u1") == set(), "nothing is recorded for a failed request"


def test_a_fail_open_scorer_returning_the_wrong_length_falls_back_to_zero(
    seeded: Engine,
) -> None:
    scorers = [FixedScorer("liar", by_number, extra=2), FixedScorer("by_number", by_number)]
    result = run(seeded, make_pipeline([ListSource("good", ["v1", "v2"])], scorers))
    [step] = [s for s in result.trace.steps if s.component == "liar"]
    assert step.error is not None and "returned 4 scores for 2 candidates" in step.error
    assert [i.item_id for i in result.items] == ["v2", "v1"]


def test_a_strict_scorer_returning_the_wrong_length_fails_the_feed(seeded: Engine) -> None:
    scorers = [FixedScorer("liar", by_number, fail_open=False, extra=-1)]
    with pytest.raises(RuntimeError, match="returned 1 scores for 2 candidates"):
        run(seeded, make_pipeline([ListSource("good", ["v1", "v2"])], scorers))


def test_a_raising_fail_open_scorer_contributes_zero(seeded: Engine) -> None:
    def explode(cand: Candidate) -> float:
        raise ValueError("bad feature")

    scorers = [FixedScorer("by_number", by_number), FixedScorer("explodes", explode)]
    result = run(seeded, make_pipeline([ListSource("good", ["v1", "v2"])], scorers))
    assert [i.score for i in result.items] == [0.0, 0.0]
    assert result.trace.fallbacks == ["explodes"]


def test_sources_merge_by_item_and_unknown_items_are_dropped_with_a_reason(
    seeded: Engine,
) -> None:
    pipeline = make_pipeline(
        [ListSource("trending", ["v1", "ghost"]), ListSource("fresh", ["v1", "v3"])]
    )
    result = run(seeded, pipeline, n=5)
    assert sorted(i.item_id for i in result.items) == ["v1", "v3"]
    v1 = next(i for i in result.items if i.item_id == "v1")
    assert {r.code for r in v1.reasons} == {"trending_in_region", "fresh"}
    [hydrate] = [s for s in result.trace.steps if s.component == "hydrate_candidates"]
    assert (hydrate.candidates_in, hydrate.candidates_out) == (3, 2)
    assert hydrate.removed == {"not_in_catalog": 1}
    assert result.trace.removed_items == {"ghost": "hydrate_candidates:not_in_catalog"}


def test_served_items_are_filtered_from_the_next_run_and_the_trace_says_why(
    seeded: Engine,
) -> None:
    pipeline = make_pipeline([ListSource("good", ["v1", "v2", "v3", "v4"])])
    first = run(seeded, pipeline, n=2)
    assert [i.item_id for i in first.items] == ["v4", "v3"]
    second = run(seeded, pipeline, n=2)
    assert [i.item_id for i in second.items] == ["v2", "v1"]
    assert second.trace.removed_items == {
        "v4": "drop_seen:already_seen",
        "v3": "drop_seen:already_seen",
    }
    [step] = [s for s in second.trace.steps if s.component == "drop_seen"]
    assert (step.candidates_in, step.candidates_out, step.removed) == (4, 2, {"already_seen": 2})


def test_an_unknown_viewer_is_stopped_by_the_gate_stage(seeded: Engine) -> None:
    with pytest.raises(NotFound):
        run(seeded, make_pipeline([ListSource("good", ["v1"])]), user_id="stranger")


def test_the_trace_lists_every_stage_in_the_fixed_order(seeded: Engine, make_event: Any) -> None:
    seeded.ingest([make_event("u2", f"v{k}", "like") for k in range(4)])
    result = seeded.feed("u1", n=3)
    stages = [s.stage for s in result.trace.steps]
    assert stages == sorted(stages, key=STAGE_ORDER.index)
    assert list(dict.fromkeys(stages)) == list(STAGE_ORDER)
    pipeline = for_you_pipeline(seeded.config)
    expected = (
        [g.name for g in pipeline.gates]
        + [h.name for h in pipeline.hydrators]
        + [s.name for s in pipeline.sources]
        + ["hydrate_candidates"]
        + [f.name for f in pipeline.filters]
        + [b.name for b in pipeline.backfill]
        + [s.name for s in pipeline.scorers]
        + [s.name for s in pipeline.selectors]
        + ["explain"]
        + [e.name for e in pipeline.side_effects]
    )
    assert [s.component for s in result.trace.steps] == expected
    assert result.trace.to_json()["steps"][0]["component"] == "viewer_must_exist"
