"""Reasons: every reason shown for an item is backed by what the pipeline recorded about it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fyp.config import FypConfig
from fyp.engine import Engine
from fyp.pipeline.contracts import Candidate, Reason
from fyp.pipeline.explain import MAX_REASONS, explain
from fyp.storage.roles import ItemRecord, UserStateSnapshot

SOURCES = ("trending", "fresh", "co_engagement", "following", "interest_tags", "embedding")
TAGS = ("cats", "dogs", "food")
CONFIG = FypConfig()
WEIGHTS = CONFIG.scoring.weights


class FakeCatalog:
    def __init__(self, records: dict[str, ItemRecord]) -> None:
        self.records = records

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        return {i: self.records[i] for i in item_ids if i in self.records}


def codes(reasons: Sequence[Reason]) -> list[str]:
    return [r.code for r in reasons]


def explain_one(make_query: Any, cand: Candidate, **query_args: Any) -> tuple[Reason, ...]:
    [item] = explain(make_query(**query_args), [cand]).items
    return item.reasons


def test_an_item_found_only_by_trending_is_explained_by_trending_only(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cand = make_candidate("v1", sources={"trending": 1.0})
    reasons = explain_one(make_query, cand, region="eu")
    assert codes(reasons) == ["trending_in_region"]
    assert "(eu)" in reasons[0].text


def test_co_engagement_names_the_anchor_and_quotes_its_caption(
    make_candidate: Callable[..., Candidate], make_query: Any, make_record: Any
) -> None:
    anchor = make_record("a1", caption="  How to   fold a paper crane  ")
    cand = make_candidate("v1", sources={"co_engagement": 1.0}, anchors={"co_engagement": "a1"})
    reasons = explain_one(make_query, cand, catalog=FakeCatalog({"a1": anchor}))
    assert codes(reasons) == ["similar_to:a1"]
    assert "“How to fold a paper crane”" in reasons[0].text


def test_exploration_comes_first_then_sources_by_strength(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cand = make_candidate(
        "v1",
        sources={"fresh": 1.0, "embedding": 0.9, "following": 0.1},
        anchors={"following": "c0"},
    )
    cand.exploration = True
    reasons = explain_one(make_query, cand)
    # Strength is prior x source score: embedding 0.9, fresh 0.3, following 0.08.
    assert codes(reasons) == ["exploration", "learned_taste", "fresh"]
    assert len(reasons) == MAX_REASONS


def test_each_source_has_its_own_reason(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    expected = {
        "trending": "trending_in_region",
        "fresh": "fresh",
        "following": "followed_creator",
        "interest_tags": "interest_tag:cats",
        "embedding": "learned_taste",
        "mystery": "source:mystery",
    }
    for source, code in expected.items():
        cand = make_candidate("v1", sources={source: 1.0}, anchors={source: "cats"})
        assert codes(explain_one(make_query, cand)) == [code]


def test_affinity_reasons_need_a_real_push_and_no_overlapping_source(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    state = UserStateSnapshot(as_of=0.0, tag_affinity={"cats": 1.0, "dogs": 3.0})
    strong = {"creator_affinity": 0.5, "tag_affinity": 0.5}
    cand = make_candidate("v1", "chef", tags=["cats", "dogs"], features=strong)
    assert codes(explain_one(make_query, cand, state=state)) == [
        "liked_creator:chef",
        "interest_tag:dogs",
    ]
    weak = make_candidate(
        "v2", "chef", tags=["dogs"], features={"creator_affinity": 0.1, "tag_affinity": 0.05}
    )
    assert codes(explain_one(make_query, weak, state=state)) == []
    followed = make_candidate(
        "v3", "chef", sources={"following": 1.0}, tags=["dogs"], features=strong
    )
    assert codes(explain_one(make_query, followed, state=state)) == [
        "followed_creator",
        "interest_tag:dogs",
    ]


def test_the_result_carries_ids_scores_and_versions(
    make_candidate: Callable[..., Candidate], make_query: Any
) -> None:
    cands = [make_candidate("v1", score=0.1234567891), make_candidate("v2", score=-2.0)]
    query = make_query()
    result = explain(query, cands)
    assert [(i.item_id, i.score) for i in result.items] == [("v1", 0.123457), ("v2", -2.0)]
    assert result.request_id == query.request_id
    assert result.model_version == "untrained"
    assert result.algorithm_hash == query.context.config.algorithm_hash
    assert result.trace is query.trace


@st.composite
def explain_cases(draw: st.DrawFn) -> tuple[dict[str, Any], bool, UserStateSnapshot]:
    sources = draw(st.lists(st.sampled_from(SOURCES), unique=True, max_size=4))
    spec = {
        "item_id": "v1",
        "creator_id": draw(st.sampled_from(["c1", "c2"])),
        "tags": draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=3)),
        "sources": {s: draw(st.floats(0.01, 1.0)) for s in sources},
        "anchors": {s: draw(st.sampled_from(["a1", "cats", "c1"])) for s in sources},
        "features": {
            "creator_affinity": draw(st.floats(-1, 1)),
            "tag_affinity": draw(st.floats(-1, 1)),
        },
    }
    state = UserStateSnapshot(
        as_of=0.0,
        tag_affinity={t: draw(st.floats(-5, 5)) for t in draw(st.sets(st.sampled_from(TAGS)))},
    )
    return spec, draw(st.booleans()), state


@given(case=explain_cases())
def test_every_reason_is_backed_by_the_candidates_record(
    case: tuple[dict[str, Any], bool, UserStateSnapshot],
    make_candidate: Callable[..., Candidate],
    make_query: Any,
    make_record: Any,
) -> None:
    spec, exploration, state = case
    cand = make_candidate(**spec)
    cand.exploration = exploration
    catalog = FakeCatalog({"a1": make_record("a1", caption="anchor")})
    reasons = explain_one(make_query, cand, state=state, catalog=catalog)

    found = codes(reasons)
    assert len(found) == len(set(found)) <= MAX_REASONS
    assert all(r.text for r in reasons)
    if exploration:
        assert found[0] == "exploration"
    if cand.sources or exploration:
        assert found
    for code in found:
        kind, _, arg = code.partition(":")
        if kind == "exploration":
            assert cand.exploration
        elif kind == "trending_in_region":
            assert "trending" in cand.sources
        elif kind == "fresh":
            assert "fresh" in cand.sources
        elif kind == "similar_to":
            assert cand.anchors.get("co_engagement") == arg
        elif kind == "followed_creator":
            assert "following" in cand.sources
        elif kind == "learned_taste":
            assert "embedding" in cand.sources
        elif kind == "liked_creator":
            assert arg == cand.creator_id
            assert WEIGHTS["creator_affinity"] * cand.features["creator_affinity"] >= 0.15
        elif kind == "interest_tag":
            by_source = cand.anchors.get("interest_tags") == arg and "interest_tags" in cand.sources
            by_affinity = (
                arg in cand.tags
                and state.tag_affinity.get(arg, 0.0) > 0
                and WEIGHTS["tag_affinity"] * cand.features["tag_affinity"] >= 0.15
            )
            assert by_source or by_affinity
        else:
            raise AssertionError(f"unexpected reason {code}")


def test_a_feed_of_trending_items_gives_trending_reasons_only(
    engine: Engine, make_item: Any, make_user: Any, make_event: Any
) -> None:
    # Old items (nothing is fresh), no model, a viewer with no history: only trending finds items.
    engine.put_items([make_item(f"v{k}", f"c{k}", age_hours=500, tags=["cats"]) for k in range(8)])
    engine.put_users([make_user("fan"), make_user("newbie")])
    engine.ingest([make_event("fan", f"v{k}", "like") for k in range(6)])
    result = engine.feed("newbie", n=5)
    assert len(result.items) == 5
    for item in result.items:
        assert codes(item.reasons) == ["trending_in_region"]
    sources = [s for s in result.trace.steps if s.stage == "sources" and s.candidates_out]
    assert [s.component for s in sources] == ["trending", "hydrate_candidates"]
