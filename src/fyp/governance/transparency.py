"""The transparency report (``GET /v1/transparency``): what the feed optimizes, from what it runs.

Nothing here is written by hand about the ranking. Every number comes from the live
configuration, and every explanation of a setting is that setting's own documentation in
:mod:`fyp.config` (the docstring beside the field), so the published text cannot drift from what
runs: change a weight or a rule and the report changes with it. The report comes as data and as
plain-language sentences built from the same data.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from fyp.config import FypConfig, SourcesConfig

_SIGNAL_WORDS = {
    "play": "watching (by the share of the video watched)",
    "finish": "watching to the end",
    "like": "a like",
    "share": "a share",
    "comment": "a comment",
    "follow": "following the creator",
    "skip": "a skip",
    "not_interested": "marking not interested",
    "report": "a report",
    "impression": "being shown",
}


def _doc(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    return (info.description or "").strip() if info is not None else ""


def _signed(value: float) -> str:
    return f"+{value:g}" if value > 0 else f"{value:g}"


def _sources(config: FypConfig) -> list[dict[str, Any]]:
    out = []
    for name in SourcesConfig.model_fields:
        source = getattr(config.sources, name)
        out.append(
            {
                "name": name,
                "enabled": source.enabled,
                "what": _doc(SourcesConfig, name),
                "max_candidates": source.k,
                "prior": source.prior,
                "settings": source.model_dump(
                    exclude={"enabled", "k", "prior", "fail_open", "budget_ms"}
                ),
            }
        )
    return out


def report(
    config: FypConfig,
    model_versions: dict[str, str],
    exploration_served: dict[str, float] | None = None,
    online: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as data plus ``text``: sentences generated from that data.

    ``exploration_served``: what this process's feeds spent on exploration so far (pages, items,
    exploration items, share), reported beside the configured rule. ``online``: the online
    learner's counters per region (joined examples, trained, published versions).
    """
    training = config.training
    affinity = config.affinity
    scoring = config.scoring
    selectors = config.selectors
    sources = _sources(config)
    value_model = [
        {"feature": feature, "weight": weight}
        for feature, weight in sorted(scoring.weights.items(), key=lambda kv: -abs(kv[1]))
    ]
    data: dict[str, Any] = {
        "algorithm_hash": config.algorithm_hash,
        "regions": [
            {"name": r.name, "model_version": model_versions.get(r.name, "untrained")}
            for r in config.regions
        ],
        "signals": {
            "model_training": {
                "event_weights": dict(training.event_weights),
                "play_weight": training.play_weight,
                "explanation": _doc(type(training), "event_weights"),
            },
            "online_affinity": {
                "event_weights": dict(affinity.weights),
                "half_life_hours": affinity.half_life_hours,
                "explanation": _doc(type(affinity), "weights"),
            },
        },
        "candidate_sources": sources,
        "ranking": {
            "value_model": value_model,
            "explanation": (type(scoring).__doc__ or "").strip(),
            "ranker": {
                "enabled": config.ranker.enabled,
                "objective_weights": dict(config.ranker.objective_weights),
                "watch_seconds_weight": config.ranker.watch_seconds_weight,
                "recency_half_life_days": config.ranker.recency_half_life_days,
                "explanation": _doc(type(config.ranker), "objective_weights"),
            },
        },
        "diversity": {
            "creator_gap": selectors.creator_gap,
            "tag_repeat_penalty": selectors.tag_repeat_penalty,
        },
        "exploration": {
            "slots_per_page": selectors.exploration_slots,
            "max_views_to_qualify": selectors.exploration_max_views,
            "preferred_position": selectors.exploration_position,
            "staged_pools": selectors.exploration_pools,
            "stages": [
                {"views": st.views, "audience_share": st.audience}
                for st in selectors.exploration_stages
                if st.views < selectors.exploration_max_views
            ]
            + [{"views": selectors.exploration_max_views, "audience_share": 1.0}],
            "promote_confidence": selectors.exploration_promote_confidence,
            "retire_confidence": selectors.exploration_retire_confidence,
            "served": exploration_served or {},
        },
        "learning": {
            "retrain_interval_s": training.retrain_interval_s,
            "retrain_min_new_events": training.retrain_min_new_events,
            "explanation": "Each region's models are trained only on that region's own events.",
            "online": {
                "enabled": config.online.enabled,
                "publish_interval_s": config.online.publish_interval_s,
                "join_window_s": config.online.window_s,
                "explanation": (
                    "Between retrainings the ranker keeps learning from each viewing of a "
                    "personalized feed (what was shown, what the viewer then did) and the "
                    "updated model is served within seconds."
                ),
                "regions": online or {},
            },
        },
        "your_controls": [
            "Switch personalization off: the feed then shows the newest items of creators you "
            "follow, then what is popular in your region, using nothing inferred about you.",
            "Filter keywords and tags; mark items not interested; view and delete the interests "
            "the feed inferred; export or erase everything held about you.",
        ],
    }
    data["text"] = _sentences(data, config)
    return data


def _sentences(data: dict[str, Any], config: FypConfig) -> list[str]:
    training = data["signals"]["model_training"]["event_weights"]
    play = data["signals"]["model_training"]["play_weight"]
    raising = [f"watching, by the share of the video watched ({_signed(play)} per video)"]
    raising += [f"{_SIGNAL_WORDS.get(k, k)} ({_signed(v)})" for k, v in training.items() if v > 0]
    lowering = [f"{_SIGNAL_WORDS.get(k, k)} ({_signed(v)})" for k, v in training.items() if v < 0]
    enabled = [s for s in data["candidate_sources"] if s["enabled"]]
    ranked = data["ranking"]["value_model"]
    ranker = data["ranking"]["ranker"]
    features = ", ".join(f"{f['feature']} (weight {f['weight']:g})" for f in ranked)
    d, e = data["diversity"], data["exploration"]
    return [
        "Your feed is learned from what you do: "
        + "; ".join(raising)
        + " count for an item, and "
        + "; ".join(lowering)
        + " count against it (weights in brackets).",
        f"Candidates come from {len(enabled)} sources: "
        + "; ".join(f"{s['name']} ({s['what'].rstrip('.')})" for s in enabled)
        + ".",
        f"Candidates are ranked by a weighted sum of features: {features}.",
        *(
            [
                "The ranker feature is a model's prediction of how you will react, combined as: "
                + ", ".join(
                    f"{task} (weight {w:g})" for task, w in ranker["objective_weights"].items()
                )
                + "."
            ]
            if ranker["enabled"]
            else []
        ),
        f"No creator appears twice within {d['creator_gap'] + 1} consecutive items while other "
        "creators' items are left to fill the page; every "
        f"earlier item sharing a tag lowers a candidate's score by {d['tag_repeat_penalty']:g}.",
        f"Each page reserves {e['slots_per_page']} slot(s) for a new video with fewer than "
        f"{e['max_views_to_qualify']} views in your region, to give new videos a fair first "
        "audience"
        + (
            ": a new video is first shown to "
            + ", then to ".join(
                f"{st['audience_share']:.0%} of viewers for up to {st['views']} views"
                for st in e["stages"]
            )
            + f"; it moves on only when it is at least {e['promote_confidence']:.0%} likely to "
            "be finished or liked more often than the region's videos, and stops being tried "
            f"when that likelihood falls below {e['retire_confidence']:.0%}."
            if e["staged_pools"]
            else "."
        ),
        "Your interests fade: an affinity halves after "
        f"{config.affinity.half_life_hours:g} hours without new signals.",
        data["learning"]["explanation"],
        *data["your_controls"],
    ]
