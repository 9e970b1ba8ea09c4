"""Reasons for every served item, derived from what the pipeline recorded about it.

A reason is only given when the trace supports it: the item came from that source (with that
anchor), or the exploration selector placed it, or a scoring feature with a positive contribution
(affinity to the creator or to a tag, the multi-task ranker's prediction) lifted it. A ranker
reason names the head that supports it (a predicted finish, long watch or like), and comes first
when the ranker is the largest weighted contribution to the item's score. Codes are stable and
machine-readable; texts are one sentence for the viewer.
"""

from __future__ import annotations

from typing import Final

from fyp.pipeline.contracts import Candidate, FeedItem, FeedQuery, FeedResult, Reason
from fyp.sources.more_from_catalog import POPULAR

MAX_REASONS: Final = 3
_AFFINITY_REASON_MIN: Final = 0.15
"""Smallest weighted feature contribution that is worth naming to the viewer."""


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(1, int(seconds // 60))} minutes ago"
    if seconds < 86_400:
        return f"{int(seconds // 3600)} hours ago"
    return f"{int(seconds // 86_400)} days ago"


def _quote(caption: str, limit: int = 60) -> str:
    caption = " ".join(caption.split())
    return caption if len(caption) <= limit else caption[: limit - 1].rstrip() + "…"


def _source_reason(
    query: FeedQuery, cand: Candidate, source: str, captions: dict[str, str]
) -> Reason:
    anchor = cand.anchors.get(source, "")
    if source == "trending":
        return Reason("trending_in_region", f"Popular in your region ({query.region}) right now.")
    if source == "fresh":
        age = query.now - cand.item.created_at if cand.item else 0.0
        return Reason("fresh", f"New: posted {_age(age)}.")
    if source == "co_engagement":
        caption = captions.get(anchor) or anchor
        return Reason(
            f"similar_to:{anchor}", f"Viewers who enjoyed “{_quote(caption)}” also enjoyed this."
        )
    if source == "following":
        return Reason("followed_creator", f"From {cand.creator_id}, whom you follow.")
    if source == "interest_tags":
        return Reason(f"interest_tag:{anchor}", f"Because you watch videos tagged #{anchor}.")
    if source == "embedding":
        return Reason("learned_taste", "Close to what you watch, finish and like.")
    if source == "content_tower":
        if anchor == "new":
            return Reason(
                "new_similar_content",
                "New and not yet widely watched; its caption and tags match what you enjoy.",
            )
        return Reason("similar_content", "Its caption and tags are like those of videos you enjoy.")
    if source == "more_from_catalog":
        if anchor == POPULAR:
            where = f"popular in your region ({query.region})"
        else:
            where = f"among the newest in your region ({query.region})"
        return Reason(
            "more_from_catalog",
            f"More from the catalog: {where}, and new to you, to fill your feed.",
        )
    return Reason(f"source:{source}", f"Found by the {source} source.")


_PREDICTED_FINISH_MIN: Final = 0.5
_PREDICTED_WATCH_MIN: Final = 0.5
_PREDICTED_LIKE_MIN: Final = 0.3


def _ranker_reason(cand: Candidate, weights: dict[str, float]) -> tuple[Reason | None, bool]:
    """The ranker's reason, if its prediction lifted the item; and whether it lifted it most."""
    features = cand.features
    push = weights.get("ranker", 0.0) * features.get("ranker", 0.0)
    if push < _AFFINITY_REASON_MIN:
        return None, False
    dominant = all(
        push >= weight * features.get(name, 0.0)
        for name, weight in weights.items()
        if name != "ranker"
    )
    if features.get("ranker_finish", 0.0) >= _PREDICTED_FINISH_MIN:
        reason = Reason("predicted_watch_through", "We predict you will watch it through.")
    elif features.get("ranker_watch_ratio", 0.0) >= _PREDICTED_WATCH_MIN:
        reason = Reason("predicted_long_watch", "We predict you will watch most of it.")
    elif features.get("ranker_like", 0.0) >= _PREDICTED_LIKE_MIN:
        reason = Reason("predicted_like", "We predict you will like it.")
    else:
        return None, False
    return reason, dominant


def _reasons(
    query: FeedQuery, cand: Candidate, priors: dict[str, float], captions: dict[str, str]
) -> tuple[Reason, ...]:
    reasons: list[Reason] = []
    if cand.exploration:
        reasons.append(
            Reason("exploration", "A new video we are showing to a few viewers to see how it does.")
        )
    weights = query.context.config.scoring.weights
    predicted, predicted_first = _ranker_reason(cand, weights)
    if predicted is not None and predicted_first:
        reasons.append(predicted)
    by_strength = sorted(cand.sources, key=lambda s: (-(priors.get(s, 0.5) * cand.sources[s]), s))
    reasons.extend(_source_reason(query, cand, s, captions) for s in by_strength)
    if predicted is not None and not predicted_first:
        reasons.append(predicted)
    creator_push = weights.get("creator_affinity", 0.0) * cand.features.get("creator_affinity", 0.0)
    if creator_push >= _AFFINITY_REASON_MIN and "following" not in cand.sources:
        reasons.append(
            Reason(
                f"liked_creator:{cand.creator_id}", f"You often enjoy videos by {cand.creator_id}."
            )
        )
    tag_push = weights.get("tag_affinity", 0.0) * cand.features.get("tag_affinity", 0.0)
    if tag_push >= _AFFINITY_REASON_MIN and "interest_tags" not in cand.sources:
        state = query.viewer
        best = max(cand.tags, key=lambda t: state.tag_affinity.get(t, 0.0), default=None)
        if best is not None and state.tag_affinity.get(best, 0.0) > 0:
            reasons.append(
                Reason(f"interest_tag:{best}", f"Because you watch videos tagged #{best}.")
            )
    unique: dict[str, Reason] = {}
    for reason in reasons:
        unique.setdefault(reason.code, reason)
    return tuple(list(unique.values())[:MAX_REASONS])


def explain(query: FeedQuery, selected: list[Candidate]) -> FeedResult:
    """Turn the selected candidates into the response, each item with its reasons."""
    anchors = [c.anchors["co_engagement"] for c in selected if "co_engagement" in c.anchors]
    records = query.context.catalog.get_items(anchors) if anchors else {}
    captions = {item_id: record.caption for item_id, record in records.items()}
    priors = query.context.config.sources.priors()
    items = tuple(
        FeedItem(
            item_id=c.item_id,
            score=round(c.score, 6),
            reasons=_reasons(query, c, priors, captions),
            ranker_inputs=c.ranker_inputs,
        )
        for c in selected
    )
    model = query.context.model
    return FeedResult(
        request_id=query.request_id,
        user_id=query.user_id,
        region=query.region,
        model_version=model.version if model is not None else "untrained",
        algorithm_hash=query.context.config.algorithm_hash,
        items=items,
        trace=query.trace,
    )
