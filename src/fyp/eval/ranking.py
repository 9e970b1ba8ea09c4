"""Does the watch-time ranker earn its heads? An offline test on fyp's simulated viewers.

The public datasets fyp evaluates on carry no watch time, so this evaluation builds a seeded sim
world (``fyp.sim``), whose viewers watch, finish, skip, like, share and follow, and replays its
event log:

1. **Split by time**: the last ``test_share`` of the log's time span is the test period. Training
   viewings are the plays before ``cutoff - label_window`` (so their labels are complete before the
   test starts); test viewings are the plays from ``cutoff`` on. Vocabularies, the features'
   average engagement rates and all weights come from the training period only; test features are
   point in time (the state a feed request would have had), never the test labels.
2. **Three rankers on the same split**: (a) the full MMoE with all six heads; (b) the same network
   and features *without the watch-time heads* (only like, share and follow are trained); (c) the
   hand-weighted first value model (``ScoringConfig.weights`` over the affinity, engagement,
   freshness and popularity features), which has nothing to train. Both rankers also read the
   learned source's retrieval score, point in time (``fyp.models.ranker_retrieval``).
3. **Metrics**: per head, AUC, GAUC (per-viewer AUC weighted by viewings) and log loss on the test
   viewings; and for each model's *combined value* (``RankerConfig.objective_weights`` over its
   heads; the hand-weighted score for (c)) the GAUC against the watch outcomes (finish, long watch,
   staying past the quick-skip mark) and the engagement outcomes (like, share, follow, any).
   Training seconds and peak memory growth are recorded per model.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import platform
import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fyp.config import RANKER_TASKS, FypConfig, RankerConfig
from fyp.eval.metrics import auc, gauc, log_loss, soft_log_loss
from fyp.models.ranker import Ranker, TrainStats, train_ranker
from fyp.models.ranker_data import (
    NUMERIC_FEATURES,
    BaseRates,
    ExampleSet,
    base_rates,
    build_examples,
    from_events,
)
from fyp.models.ranker_retrieval import als_scores_before
from fyp.storage.roles import ItemRecord

WATCH_TASKS: Final = ("watch_ratio", "finish", "quick_skip")
ENGAGEMENT_TASKS: Final = ("like", "share", "follow")
OUTCOMES: Final = (
    "finish",
    "long_watch",
    "stayed",
    "like",
    "share",
    "follow",
    "any_engagement",
)
"""Outcomes the combined value scores are judged against (``stayed``: not a quick skip)."""
FULL, NO_WATCH, HAND = "mmoe_full", "mmoe_no_watch_heads", "hand_weighted"
EVAL_NOW: Final = 1_767_225_600.0
"""2026-01-01T00:00:00Z: the sim history ends here, so the world is the same on every run."""


@dataclass(frozen=True)
class ModelResult:
    name: str
    description: str
    heads: dict[str, dict[str, float]]
    """task -> {"auc", "gauc", "log_loss"} on the test viewings."""
    value_gauc: dict[str, float]
    """outcome -> GAUC of the model's combined value score."""
    value_auc: dict[str, float]
    train_seconds: float
    peak_memory_mb: float
    """How far training raised the resident set of its process (sampled every 20 ms)."""
    parameters: int
    epochs: int = 0
    best_epoch: int = 0
    process_peak_mb: float = 0.0
    """Peak resident memory of the whole training process (Python, torch, the examples)."""


@dataclass(frozen=True)
class RankerEvalResult:
    command: str | None
    seed: int
    world: dict[str, Any]
    split: dict[str, Any]
    objective_weights: dict[str, float]
    hand_weights: dict[str, float]
    models: list[ModelResult]
    environment: dict[str, str] = field(default_factory=dict)

    def model(self, name: str) -> ModelResult:
        return next(m for m in self.models if m.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "seed": self.seed,
            "world": self.world,
            "split": self.split,
            "objective_weights": self.objective_weights,
            "hand_weights": self.hand_weights,
            "environment": self.environment,
            "models": [m.__dict__ for m in self.models],
            "verdict": verdict(self),
        }


def _items(world_items: Sequence[Any]) -> dict[str, ItemRecord]:
    return {
        i.item_id: ItemRecord(
            i.item_id,
            i.creator_id,
            i.created_at.timestamp(),
            i.duration_s,
            i.caption,
            tuple(i.tags),
            i.language,
            tuple(i.regions),
        )
        for i in world_items
    }


def _outcomes(examples: ExampleSet) -> dict[str, npt.NDArray[np.float64]]:
    like, share, follow = (examples.label(t).astype(np.float64) for t in ENGAGEMENT_TASKS)
    return {
        "finish": examples.label("finish").astype(np.float64),
        "long_watch": examples.label("long_watch").astype(np.float64),
        "stayed": 1.0 - examples.label("quick_skip").astype(np.float64),
        "like": like,
        "share": share,
        "follow": follow,
        "any_engagement": np.maximum(np.maximum(like, share), follow),
    }


def _safe(metric: Callable[..., float], *args: Any) -> float:
    try:
        return metric(*args)
    except ValueError:  # one class only in this slice: the metric is undefined
        return math.nan


def _head_metrics(
    task: str, examples: ExampleSet, groups: npt.NDArray[np.int64], probs: npt.NDArray[np.float64]
) -> dict[str, float]:
    if task == "watch_ratio":
        # Ranking quality against "watched at least half"; the loss is the training loss itself,
        # cross-entropy against the watched fraction.
        binary = examples.label("long_watch").astype(np.float64)
        target = examples.label("watch_ratio").astype(np.float64)
        loss = soft_log_loss(target, probs)
    else:
        binary = examples.label(task).astype(np.float64)
        loss = _safe(log_loss, binary, probs)
    return {
        "auc": _safe(auc, binary, probs),
        "gauc": _safe(gauc, groups, binary, probs),
        "log_loss": loss,
    }


def _value_metrics(
    examples: ExampleSet, groups: npt.NDArray[np.int64], value: npt.NDArray[np.float64]
) -> tuple[dict[str, float], dict[str, float]]:
    outcomes = _outcomes(examples)
    value_gauc = {k: _safe(gauc, groups, y, value) for k, y in outcomes.items()}
    value_auc = {k: _safe(auc, y, value) for k, y in outcomes.items()}
    return value_gauc, value_auc


def hand_weighted_value(
    examples: ExampleSet, rates: BaseRates, weights: Mapping[str, float], half_life_h: float
) -> npt.NDArray[np.float64]:
    """The first value model's score from the same point-in-time features.

    ``retrieval`` is 0: which sources would have found a logged item is not known offline.
    ``engagement`` is the ``EngagementScorer`` lift computed from the smoothed rates.
    """
    col = {name: i for i, name in enumerate(NUMERIC_FEATURES)}
    x = examples.numeric.astype(np.float64)
    lift = (
        np.log(x[:, col["item_finish_rate"]] / rates.finish)
        + np.log(x[:, col["item_like_rate"]] / rates.like)
        + 0.5 * np.log(x[:, col["item_share_rate"]] / rates.share)
        - 0.5 * np.log(x[:, col["item_skip_rate"]] / rates.skip)
    ) / 2.0
    age_h = np.expm1(x[:, col["log_age_hours"]])
    log_plays = x[:, col["log_item_plays"]]
    features = {
        "creator_affinity": x[:, col["creator_affinity"]],
        "tag_affinity": x[:, col["tag_affinity"]],
        "engagement": np.tanh(lift),
        "freshness": 0.5 ** (age_h / half_life_h),
        "popularity": log_plays / max(float(log_plays.max(initial=0.0)), 1e-9),
    }
    value = np.zeros(len(examples))
    for name, weight in weights.items():
        if name in features:
            value += weight * features[name]
    return value


def run_ranker_eval(
    users: int = 1000,
    seed: int = 0,
    *,
    test_share: float = 0.2,
    ranker: RankerConfig | None = None,
    exposures_per_viewer: int = 60,
    command: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> RankerEvalResult:
    from fyp.engine import fold_policy
    from fyp.sim.world import WorldConfig, build_world

    if not 0 < test_share < 1:
        raise ValueError("test_share must lie in (0, 1)")
    base = FypConfig()
    ranker = ranker or base.ranker
    world_config = WorldConfig(
        seed=seed,
        n_creators=max(10, users * 3 // 10),
        n_items=max(200, users * 6),
        n_viewers=users,
        exposures_per_viewer=exposures_per_viewer,
        now=EVAL_NOW,
    )
    started = time.perf_counter()
    world = build_world(world_config)
    progress(f"world: {len(world.items)} items, {users} viewers, {len(world.history)} events")
    items = _items(world.items)
    events = from_events(world.history)
    first, last = events[0].ts, events[-1].ts
    cutoff = last - test_share * (last - first)
    rates = base_rates([e for e in events if e.ts < cutoff], items)
    examples = build_examples(
        events,
        items,
        fold_policy(base),
        rates,
        prior_plays=ranker.prior_plays,
        label_window_s=ranker.label_window_s,
    )
    train = examples.subset(examples.ts < cutoff - ranker.label_window_s)
    test = examples.subset(examples.ts >= cutoff)
    # The learned source's score, point in time: the later half of the training viewings is
    # scored by an ALS fit on the events before it; the test viewings by a fit on everything
    # before the test period (the model serving would have had).
    scored_train = als_scores_before(
        events, items, train, base.training, float(np.median(train.ts))
    )
    scored_test = als_scores_before(events, items, test, base.training, cutoff)
    progress(
        f"viewings: {len(train)} train, {len(test)} test "
        f"(features in {time.perf_counter() - started:.1f}s)"
    )
    user_index = {u: i for i, u in enumerate(dict.fromkeys(test.user_ids))}
    groups = np.array([user_index[u] for u in test.user_ids], dtype=np.int64)
    weights = dict(ranker.objective_weights)

    results: list[ModelResult] = []
    variants = (
        (FULL, "MMoE, all six heads", RANKER_TASKS),
        (NO_WATCH, "same MMoE without the watch-time heads", ENGAGEMENT_TASKS),
    )
    for name, description, tasks in variants:
        progress(f"training {name} (in a process of its own) ...")
        model, process_peak_mb = _train_isolated(train, rates, ranker, tasks)
        probs = model.predict_examples(test).astype(np.float64)
        heads = {
            task: _head_metrics(task, test, groups, probs[:, j])
            for j, task in enumerate(model.tasks)
        }
        value = probs @ np.array([weights.get(t, 0.0) for t in model.tasks])
        value_gauc, value_auc = _value_metrics(test, groups, value)
        stats = model.stats
        assert stats is not None
        progress(f"  {name}: {stats.seconds:.1f}s, {stats.epochs} epochs (best {stats.best_epoch})")
        results.append(
            ModelResult(
                name=name,
                description=description,
                heads=heads,
                value_gauc=value_gauc,
                value_auc=value_auc,
                train_seconds=stats.seconds,
                peak_memory_mb=stats.peak_rss_mb,
                process_peak_mb=process_peak_mb,
                parameters=stats.parameters,
                epochs=stats.epochs,
                best_epoch=stats.best_epoch,
            )
        )
    hand_weights = dict(base.scoring.weights)
    hand = hand_weighted_value(test, rates, hand_weights, base.scoring.freshness_half_life_hours)
    hand_gauc, hand_auc = _value_metrics(test, groups, hand)
    results.append(
        ModelResult(
            name=HAND,
            description="hand-weighted first value model (features only, nothing trained)",
            heads={
                task: {
                    "auc": _safe(auc, _binary(test, task), hand),
                    "gauc": _safe(gauc, groups, _binary(test, task), hand),
                    "log_loss": math.nan,
                }
                for task in RANKER_TASKS
            },
            value_gauc=hand_gauc,
            value_auc=hand_auc,
            train_seconds=0.0,
            peak_memory_mb=0.0,
            parameters=0,
        )
    )
    return RankerEvalResult(
        command=command,
        seed=seed,
        world={
            "viewers": users,
            "items": len(world.items),
            "creators": len(world.creators),
            "exposures_per_viewer": exposures_per_viewer,
            "events": len(world.history),
        },
        split={
            "test_share_of_time": test_share,
            "cutoff": cutoff,
            "label_window_s": ranker.label_window_s,
            "train_viewings": len(train),
            "test_viewings": len(test),
            "test_viewers": len(user_index),
            "train_viewings_with_als_score": scored_train,
            "test_viewings_with_als_score": scored_test,
        },
        objective_weights=weights,
        hand_weights=hand_weights,
        models=results,
        environment={
            "python": platform.python_version(),
            "machine": platform.machine(),
            "train_threads": str(ranker.train_threads),
        },
    )


def _train_isolated(
    train: ExampleSet, rates: BaseRates, ranker: RankerConfig, tasks: Sequence[str]
) -> tuple[Ranker, float]:
    """Train in a fresh process, so each model's memory is measured on its own; returns the model
    (its ``stats.peak_rss_mb``: how far training raised the resident set above where it started)
    and the peak resident memory of the whole training process (MB)."""
    context = multiprocessing.get_context("spawn")  # never fork a process that holds torch
    with context.Pool(1) as pool:
        meta, arrays, stats, peak_mb = pool.apply(_train_in_child, (train, rates, ranker, tasks))
    model = Ranker.from_arrays(meta, arrays)
    model.stats = stats
    return model, peak_mb


def _train_in_child(
    train: ExampleSet, rates: BaseRates, ranker: RankerConfig, tasks: Sequence[str]
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]], TrainStats | None, float]:
    # Torch's one-time set-up (allocator pools, kernels) is not the model's cost: a tiny
    # throwaway run pays it before the high-water mark is read.
    train_ranker(
        train.subset(np.arange(min(len(train), 512))), rates, with_overrides(ranker, epochs=1)
    )
    gc.collect()  # the unpickled arguments' temporaries are not the model's either
    model = train_ranker(train, rates, ranker, tasks)
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    meta, arrays = model.to_arrays()
    return meta, arrays, model.stats, process_peak_mb


def _binary(examples: ExampleSet, task: str) -> npt.NDArray[np.float64]:
    name = "long_watch" if task == "watch_ratio" else task
    values = examples.label(name).astype(np.float64)
    # A high hand-weighted score should mean *fewer* quick skips: score against staying.
    return 1.0 - values if task == "quick_skip" else values


def verdict(result: RankerEvalResult) -> dict[str, Any]:
    """Full vs no-watch-heads: the GAUC differences that decide the bar."""
    full, without = result.model(FULL), result.model(NO_WATCH)
    heads = {t: full.heads[t]["gauc"] - without.heads[t]["gauc"] for t in ENGAGEMENT_TASKS}
    values = {o: full.value_gauc[o] - without.value_gauc[o] for o in OUTCOMES}
    return {
        "shared_heads_gauc_delta": heads,
        "value_gauc_delta": values,
        "full_beats_no_watch_on_every_shared_head": all(d > 0 for d in heads.values()),
        "full_beats_no_watch_on_every_value_outcome": all(d > 0 for d in values.values()),
    }


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(result: RankerEvalResult) -> str:
    lines = [
        "# The multi-task ranker on simulated viewers",
        "",
        "Generated by `fyp eval-ranker` (`src/fyp/eval/ranking.py`). The sections below show the "
        "first world in detail; with `--repeats`, a summary over several worlds follows.",
        "",
        f"Command: `{result.command or 'fyp eval-ranker'}`",
        "",
        f"World: seed {result.seed}, {result.world['viewers']:,} viewers, "
        f"{result.world['items']:,} items by {result.world['creators']:,} creators, "
        f"{result.world['events']:,} events. Split by time: the last "
        f"{result.split['test_share_of_time']:.0%} of the log's time span is the test period "
        f"({result.split['test_viewings']:,} viewings by {result.split['test_viewers']:,} "
        f"viewers); training uses the {result.split['train_viewings']:,} viewings that end before "
        "it (plays earlier than the cutoff minus the label window). Every feature is point in "
        "time.",
        "",
        "## Per head (test viewings)",
        "",
        "AUC, GAUC (per-viewer AUC weighted by the viewer's viewings) and log loss. "
        "The `watch_ratio` head is ranked against *watched at least half* and its loss is the "
        "cross-entropy against the watched fraction. The hand-weighted model has one score, so "
        "its row shows that score's AUC/GAUC against each outcome (quick skip: against staying).",
        "",
        "| head | " + " | ".join(m.name for m in result.models) + " |",
        "|---|" + "---|" * len(result.models),
    ]
    for task in RANKER_TASKS:
        cells = []
        for m in result.models:
            h = m.heads.get(task)
            if h is None:
                cells.append("no head")
            else:
                cells.append(
                    f"AUC {_fmt(h['auc'])} · GAUC {_fmt(h['gauc'])} · loss {_fmt(h['log_loss'])}"
                )
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Combined value score: GAUC against outcomes",
        "",
        "Each ranker's heads combined by `ranker.objective_weights` "
        f"({json.dumps(result.objective_weights)}), restricted to the heads it has; the "
        "hand-weighted model's score uses `scoring.weights` without `retrieval` and `ranker` "
        "(unknown offline).",
        "",
        "| outcome | " + " | ".join(m.name for m in result.models) + " |",
        "|---|" + "---|" * len(result.models),
    ]
    for outcome in OUTCOMES:
        lines.append(
            f"| {outcome} | "
            + " | ".join(_fmt(m.value_gauc[outcome]) for m in result.models)
            + " |"
        )
    lines += [
        "",
        "## Cost",
        "",
        "| model | training s | memory growth while training MB | training process peak MB "
        "| parameters | epochs (best) |",
        "|---|---|---|---|---|---|",
    ]
    for m in result.models:
        lines.append(
            f"| {m.name} | {m.train_seconds:.1f} | {m.peak_memory_mb:.1f} | "
            f"{m.process_peak_mb:.0f} | {m.parameters:,} | {m.epochs} ({m.best_epoch}) |"
        )
    v = verdict(result)
    heads = ", ".join(f"{t} {d:+.4f}" for t, d in v["shared_heads_gauc_delta"].items())
    values = ", ".join(f"{o} {d:+.4f}" for o, d in v["value_gauc_delta"].items())
    lines += [
        "",
        "## Verdict: full MMoE vs the same ranker without the watch-time heads",
        "",
        f"- GAUC difference on the heads both have: {heads}.",
        f"- GAUC difference of the combined value score: {values}.",
        f"- Full beats no-watch-heads on every shared head: "
        f"**{'yes' if v['full_beats_no_watch_on_every_shared_head'] else 'no'}**; "
        f"on every value outcome: "
        f"**{'yes' if v['full_beats_no_watch_on_every_value_outcome'] else 'no'}**.",
        "",
        "Training time and memory are measured on a shared 2-core machine with "
        f"{result.environment.get('train_threads', '1')} torch thread(s), other work running "
        "alongside. Each model trains in a fresh process that first holds the training examples "
        "and runs a throwaway warm-up (torch's one-time set-up); *memory growth* is the rise of "
        "that process's resident set during the real training above where it started (sampled "
        "every 20 ms), *process peak* its `ru_maxrss` (Python, torch, the examples and the "
        "model). The hand-weighted model trains nothing.",
        "",
    ]
    return "\n".join(lines)


def _mean_sd(values: Sequence[float]) -> str:
    array = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(array) == 0:
        return "-"
    if len(array) == 1:
        return f"{array[0]:.4f}"
    return f"{array.mean():.4f} ± {array.std(ddof=1):.4f}"


def across_seeds(results: Sequence[RankerEvalResult]) -> dict[str, Any]:
    """Per model and metric, the value on each seed; and full-minus-no-watch per seed."""
    models: dict[str, dict[str, dict[str, list[float]]]] = {}
    for result in results:
        for m in result.models:
            entry = models.setdefault(m.name, {"head_gauc": {}, "value_gauc": {}})
            for task, metrics in m.heads.items():
                entry["head_gauc"].setdefault(task, []).append(metrics["gauc"])
            for outcome, value in m.value_gauc.items():
                entry["value_gauc"].setdefault(outcome, []).append(value)
    verdicts = [verdict(r) for r in results]
    return {
        "seeds": [r.seed for r in results],
        "models": models,
        "shared_heads_gauc_delta": {
            t: [v["shared_heads_gauc_delta"][t] for v in verdicts] for t in ENGAGEMENT_TASKS
        },
        "value_gauc_delta": {o: [v["value_gauc_delta"][o] for v in verdicts] for o in OUTCOMES},
    }


def _across_markdown(results: Sequence[RankerEvalResult]) -> str:
    summary = across_seeds(results)
    seeds = ", ".join(str(s) for s in summary["seeds"])
    names = [m.name for m in results[0].models]
    lines = [
        f"## Across {len(results)} worlds (seeds {seeds})",
        "",
        "Each seed builds a different world and trains every model again; mean ± standard "
        "deviation over the seeds.",
        "",
        "| GAUC | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for task in RANKER_TASKS:
        cells = []
        for name in names:
            values = summary["models"][name]["head_gauc"].get(task)
            cells.append(_mean_sd(values) if values else "no head")
        lines.append(f"| head {task} | " + " | ".join(cells) + " |")
    for outcome in OUTCOMES:
        cells = [_mean_sd(summary["models"][n]["value_gauc"][outcome]) for n in names]
        lines.append(f"| value vs {outcome} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Full minus no-watch-heads, GAUC (mean ± sd; seeds where the full model is ahead):",
        "",
        "| compared on | difference | full ahead |",
        "|---|---|---|",
    ]
    rows = [(f"head {t}", d) for t, d in summary["shared_heads_gauc_delta"].items()]
    rows += [(f"value vs {o}", d) for o, d in summary["value_gauc_delta"].items()]
    for label, deltas in rows:
        ahead = sum(d > 0 for d in deltas)
        lines.append(f"| {label} | {_mean_sd(deltas)} | {ahead}/{len(deltas)} |")
    lines.append("")
    return "\n".join(lines)


def write_ranker_report(
    results: RankerEvalResult | Sequence[RankerEvalResult], out: Path
) -> dict[str, Path]:
    """``ranker-sim.json`` (every run) and ``ranker-sim.md`` (the first run in detail, then the
    summary across seeds when there are several)."""
    runs = [results] if isinstance(results, RankerEvalResult) else list(results)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "ranker-sim.json", "markdown": out / "ranker-sim.md"}
    payload: dict[str, Any] = {"runs": [r.to_json() for r in runs]}
    if len(runs) > 1:
        payload["across_seeds"] = across_seeds(runs)
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=True, default=float) + "\n")
    text = markdown(runs[0])
    if len(runs) > 1:
        text += "\n" + _across_markdown(runs)
    paths["markdown"].write_text(text)
    return paths


def summary_table(result: RankerEvalResult) -> str:
    """A terminal table: per-head GAUC and the value GAUCs, one row per model."""
    header = ["model", *(f"{t}" for t in RANKER_TASKS), "value:finish", "value:engage", "train s"]
    rows = [header]
    for m in result.models:
        rows.append(
            [
                m.name,
                *(_fmt(m.heads[t]["gauc"], 3) if t in m.heads else "-" for t in RANKER_TASKS),
                _fmt(m.value_gauc["finish"], 3),
                _fmt(m.value_gauc["any_engagement"], 3),
                f"{m.train_seconds:.1f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def with_overrides(config: RankerConfig, **overrides: Any) -> RankerConfig:
    """``config`` with some fields replaced (validated again)."""
    return RankerConfig.model_validate({**config.model_dump(), **overrides})


__all__ = [
    "FULL",
    "HAND",
    "NO_WATCH",
    "RankerEvalResult",
    "markdown",
    "run_ranker_eval",
    "summary_table",
    "verdict",
    "with_overrides",
]
