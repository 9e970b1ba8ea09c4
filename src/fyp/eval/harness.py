"""The evaluation harness: one dataset, one protocol, every model on the same split, in one run.

Baselines are tuned on the split's validation part (carved from training, or the dataset's own)
and refit on the whole training part; fyp's default model tunes itself on the same validation
part (in ``fyp offline-recommend``, which gets a training log only, it carves its own). Every
model is scored by
full ranking over the catalog with its training items excluded. Results are plain data
(:class:`RunResult`) that the terminal table, the JSON file and the report are made from.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import scipy.sparse as sp

import fyp
from fyp.eval.baselines import BASELINES, ModelTooLargeError, tune
from fyp.eval.data import Dataset, FitContext, IntArray, Recommender, Split
from fyp.eval.metrics import EvalResult, evaluate
from fyp.eval.protocols import (
    cold_items,
    describe,
    given_split,
    global_temporal,
    leave_last_n_out,
    shuffle_item_ids,
)
from fyp.models.fusion import ComponentRecommender, Content, FusionRecommender, TwoTower

log = logging.getLogger(__name__)

PROTOCOLS: Final = ("given", "loo", "temporal", "cold-items")
COLD_START_MODELS: Final = ("content", "two-tower")
"""fyp's content paths on their own, added to the models of a cold-start run."""
DEFAULT_KS: Final = (5, 10, 20, 50, 100)
SELECTION_METRIC: Final = "ndcg@20"
ACTIVITY_BUCKETS: Final = ((1, 5), (6, 20), (21, 100), (101, 10**9))
"""Users grouped by their number of training interactions, for per-activity results."""


@dataclass
class ModelResult:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    by_activity: dict[str, dict[str, float]] = field(default_factory=dict)
    fit_seconds: float = 0.0
    recommend_seconds: float = 0.0
    tune_seconds: float = 0.0
    skipped: str | None = None


@dataclass
class RunResult:
    dataset: str
    protocol: str
    split: dict[str, Any]
    ks: tuple[int, ...]
    results: list[ModelResult]
    started: str
    seconds: float
    environment: dict[str, str]

    def best_baseline(self, metric: str = SELECTION_METRIC) -> ModelResult | None:
        own = ("fyp", *COLD_START_MODELS)
        scored = [r for r in self.results if r.name not in own and r.skipped is None]
        return max(scored, key=lambda r: r.metrics.get(metric, -1.0), default=None)

    def result(self, name: str) -> ModelResult | None:
        return next((r for r in self.results if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_split(dataset: Dataset, protocol: str, seed: int = 0) -> Split:
    """``given`` (the dataset's own split), ``loo`` (leave last one out), ``temporal`` (global),
    ``cold-items`` (a seeded 20 % of the items held out entirely; see
    :func:`~fyp.eval.protocols.cold_items`)."""
    if protocol == "given":
        return given_split(dataset, seed=seed)
    if protocol == "loo":
        return leave_last_n_out(dataset.interactions, n=1)
    if protocol == "temporal":
        if not dataset.has_timestamps:
            raise ValueError(f"{dataset.name} has no timestamps: no temporal protocol")
        return global_temporal(dataset.interactions)
    if protocol == "cold-items":
        # ``run`` shuffles the item ids first (see ``shuffle_item_ids``).
        return cold_items(dataset.interactions, fraction=0.2, seed=seed)
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def default_protocols(dataset: Dataset) -> list[str]:
    """The protocols the issue asks for: the given split where there is one, and a temporal
    protocol where there are timestamps (leave-last-one-out, the usual one for sequences)."""
    out = []
    if dataset.given_split is not None:
        out.append("given")
    if dataset.has_timestamps:
        out.append("loo")
    return out or ["loo"]


def _activity(split: Split, result: EvalResult) -> dict[str, dict[str, float]]:
    counts = np.asarray((split.train.matrix() > 0).sum(axis=1)).ravel()
    user_counts = counts[result.users]
    out: dict[str, dict[str, float]] = {}
    for low, high in ACTIVITY_BUCKETS:
        rows = np.flatnonzero((user_counts >= low) & (user_counts <= high))
        if len(rows) == 0:
            continue
        try:
            means = result.per_user.mean(rows)
        except ValueError:
            continue
        label = f"{low}-{high}" if high < 10**9 else f">{low - 1}"
        out[label] = {"users": float(len(rows)), **means}
    return out


class CandidateRestricted:
    """A recommender whose lists keep only ``candidates`` (cold-start protocols rank the
    held-out items only): it asks the model for its full ranking of the catalog and keeps the
    candidates in that order, so every model, whatever it is, is restricted the same way."""

    def __init__(self, model: Recommender, candidates: IntArray, n_items: int) -> None:
        self.model = model
        self.name = model.name
        self.n_items = n_items
        self.allowed = np.zeros(n_items, dtype=bool)
        self.allowed[candidates] = True

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        self.model.fit(train, context)

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        step = max(1, 8_000_000 // max(self.n_items, 1))
        for start in range(0, len(users), step):
            batch = users[start : start + step]
            full = np.asarray(self.model.recommend(batch, self.n_items, exclude), dtype=np.int64)
            keep = (full >= 0) & self.allowed[np.maximum(full, 0)]
            for r in range(len(batch)):
                chosen = full[r][keep[r]][:k]
                out[start + r, : len(chosen)] = chosen
        return out


def _score(
    name: str,
    model: Recommender,
    split: Split,
    dataset: Dataset,
    ks: Sequence[int],
    seed: int,
) -> tuple[EvalResult, ModelResult]:
    items = dataset.items
    vectors = None
    if items is not None and items.vectors:
        vectors = np.hstack([np.asarray(v, dtype=np.float32) for v in items.vectors.values()])
    tuning = split.tuning_pair() if split.validation is not None else None
    if split.candidates is not None:
        model = CandidateRestricted(model, split.candidates, split.train.n_items)
    result = evaluate(
        model,
        split.train.matrix(),
        split.test,
        ks=ks,
        context=FitContext(
            train=split.train,
            items=items,
            seed=seed,
            tuning=tuning,
            tuning_candidates=split.validation_candidates,
        ),
        item_vectors=vectors,
        item_tags=items.tags if items is not None and vectors is None else None,
    )
    return result, ModelResult(
        name=name,
        metrics=result.metrics,
        by_activity=_activity(split, result),
        fit_seconds=result.fit_seconds or 0.0,
        recommend_seconds=result.recommend_seconds,
    )


def run(
    dataset: Dataset,
    protocol: str,
    models: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """Evaluate ``models`` (default: every baseline and fyp) on ``dataset`` under ``protocol``."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    if protocol == "cold-items":
        # Item indices follow the files' order, which can correlate with popularity; on new
        # items a model without signal would rank by it. Shuffled ids make its ties random.
        dataset = shuffle_item_ids(dataset, seed)
    split = make_split(dataset, protocol, seed)
    names = list(models) if models else [b.name for b in BASELINES] + ["fyp"]
    if not models and split.candidates is not None:
        names[-1:-1] = list(COLD_START_MODELS)
    results: list[ModelResult] = []
    baselines: Sequence[Any] = BASELINES  # heterogeneous config types: checked by each class
    for baseline in baselines:
        if baseline.name not in names:
            continue
        say(f"{baseline.name}: tuning on validation")
        try:
            tuned = tune(
                baseline,
                baseline.grid(),
                split.tuning_pair(),
                metric=SELECTION_METRIC,
                items=dataset.items,
                seed=seed,
            )
            say(f"{baseline.name}: best {tuned.best_config}; fitting and scoring")
            _, scored = _score(baseline.name, baseline(tuned.best_config), split, dataset, ks, seed)
            scored.settings = dataclasses.asdict(tuned.best_config)
            scored.tune_seconds = tuned.seconds
        except ModelTooLargeError as exc:
            scored = ModelResult(name=baseline.name, skipped=str(exc))
        results.append(scored)
    for name, make in (("content", Content), ("two-tower", TwoTower)):
        if name not in names:
            continue
        if not Content.available(dataset.items):
            results.append(ModelResult(name=name, skipped="the dataset has no item features"))
            continue
        say(f"{name}: fitting fyp's {name} component alone")
        _, scored = _score(name, ComponentRecommender(name, make), split, dataset, ks, seed)
        results.append(scored)
    if "fyp" in names:
        say("fyp: fitting (tunes itself on a validation part of the training data)")
        model = FusionRecommender(seed=seed)
        _, scored = _score("fyp", model, split, dataset, ks, seed)
        scored.settings = dataclasses.asdict(model.report)
        results.append(scored)
    return RunResult(
        dataset=dataset.name,
        protocol=protocol,
        split=describe(split),
        ks=tuple(ks),
        results=results,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=time.perf_counter() - started,
        environment={
            "fyp": fyp.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": _cpu_name(),
        },
    )


def _cpu_name() -> str:
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(
    run_result: RunResult,
    columns: Sequence[str] = ("ndcg@20", "recall@20", "hit@20", "mrr@20", "coverage@20"),
) -> str:
    """The run as a plain-text table for the terminal."""
    header = f"{run_result.dataset} · {run_result.protocol}"
    rows = [f"{'model':<14}" + "".join(f"{c:>13}" for c in columns) + f"{'fit s':>9}"]
    for r in run_result.results:
        if r.skipped:
            rows.append(f"{r.name:<14}  {r.skipped}")
            continue
        cells = "".join(f"{r.metrics.get(c, float('nan')):>13.4f}" for c in columns)
        rows.append(f"{r.name:<14}{cells}{r.fit_seconds + r.tune_seconds:>9.1f}")
    return "\n".join([header, *rows])
