"""Batch training of a region's learned sources from that region's events only.

Two models come out of one pass over the event log:

* an implicit-feedback matrix factorization (``implicit``'s ALS). Each (viewer, item) pair gets a
  preference weight summed from its events (``fyp.signals.preference_weight``: watch ratio, finish,
  like, share and follow add; skips, not-interested and reports subtract). A positive total is a
  preference with confidence ``alpha * total``; a negative total is a known dislike, which ALS
  treats as preference 0 with that much confidence.
* an item-to-item co-engagement table: cosine similarity between items over the viewers who engaged
  positively with both, top ``co_engagement_neighbors`` per item (``implicit``'s all-pairs kNN).

Viewer factors are not stored: serving folds a viewer in from their latest events at request time,
which keeps snapshots free of per-user vectors and makes every new event count immediately.

When a ``RankerConfig`` is given (the engine always passes one), the same run also trains the
multi-task watch-time ranker (``fyp.models.ranker``) on the region's viewings and stores it in the
same snapshot under ``ranker.*`` keys. With the content-tower source enabled, the run also fits
the two-tower model whose item tower reads captions and tags (``fyp.models.content_tower``) and
stores its item-side arrays under ``tower.*`` keys. The ranker's user-embedding rows are personal
data: they stay in the region's own model store like everything else trained here.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.nearest_neighbours import CosineRecommender
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from fyp.config import ContentTowerConfig, RankerConfig, TrainingConfig
from fyp.governance.gate import RegionHandle
from fyp.signals import QUICK_SKIP_MS, FoldPolicy
from fyp.storage.roles import Catalog, ItemRecord

if TYPE_CHECKING:
    from fyp.models.ranker_data import BaseRates, ExampleSet, LoggedEvent

log = logging.getLogger(__name__)

MODEL_KIND = "als+cooccurrence"


@dataclass(frozen=True)
class TrainReport:
    region: str
    version: str | None
    events: int
    users: int
    items: int
    seconds: float
    skipped_reason: str | None = None
    ranker: dict[str, Any] | None = None
    """The ranker's training summary (viewings, seconds, memory), or why it was not trained."""
    content_tower: dict[str, Any] | None = None
    """The content towers' training summary, or why they were not trained."""


@dataclass(frozen=True)
class Positives:
    """The region's positive events in log order, as (viewer row, item column, time)."""

    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]


def _preference_matrix(
    handle: RegionHandle, catalog: Catalog, config: TrainingConfig
) -> tuple[sp.csr_matrix, list[str], int, int, Positives]:
    """Sum per-(viewer, item) preference weights over the region's recent events.

    Returns the viewer x item matrix, the item ids of its columns, the event count, the last
    event sequence number covered, and the positive events themselves (for the towers, which
    learn from their order).
    """
    last_seq = handle.events.last_seq()
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    type_weight = dict(config.event_weights)
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float64]] = []
    stamps: list[npt.NDArray[np.float64]] = []
    n_events = 0
    durations: dict[str, float] = {}
    for batch in handle.events.scan(config.max_events):
        n_events += len(batch)
        unknown = [e.item_id for e in batch if e.item_id not in durations]
        if unknown:
            records = catalog.get_items(list(dict.fromkeys(unknown)))
            for item_id in unknown:
                record = records.get(item_id)
                durations[item_id] = record.duration_s if record else 0.0
        r = np.fromiter(
            (users.setdefault(e.user_id, len(users)) for e in batch), np.int64, len(batch)
        )
        c = np.fromiter(
            (items.setdefault(e.item_id, len(items)) for e in batch), np.int64, len(batch)
        )
        base = np.fromiter((type_weight.get(e.type, 0.0) for e in batch), np.float64, len(batch))
        is_play = np.fromiter((e.type == "play" for e in batch), bool, len(batch))
        watch = np.fromiter(
            (e.watch_ms if e.watch_ms is not None else -1 for e in batch), np.float64, len(batch)
        )
        dur = np.fromiter((durations[e.item_id] for e in batch), np.float64, len(batch))
        known = is_play & (watch >= 0) & (dur > 0)
        ratio = np.where(known, watch / np.maximum(dur * 1000.0, 1e-9), 0.0)
        play_value = np.where(
            watch < QUICK_SKIP_MS,
            type_weight.get("skip", 0.0),
            config.play_weight * np.minimum(ratio, 2.0),
        )
        weight = np.where(is_play, np.where(known, play_value, 0.0), base)
        rows.append(r)
        cols.append(c)
        vals.append(weight)
        stamps.append(np.fromiter((e.ts for e in batch), np.float64, len(batch)))
    if not n_events:
        empty = Positives(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        return sp.csr_matrix((0, 0), dtype=np.float32), [], 0, last_seq, empty
    all_rows, all_cols, all_vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    positive = all_vals > 0
    positives = Positives(all_rows[positive], all_cols[positive], np.concatenate(stamps)[positive])
    matrix = sp.coo_matrix((all_vals, (all_rows, all_cols)), shape=(len(users), len(items))).tocsr()
    matrix.sum_duplicates()
    matrix.data[np.abs(matrix.data) < 1e-9] = 0.0
    matrix.eliminate_zeros()
    return matrix.astype(np.float32), list(items), n_events, last_seq, positives


def ranker_examples(
    events: Sequence[LoggedEvent],
    items: Mapping[str, ItemRecord],
    config: TrainingConfig,
    ranker: RankerConfig,
    policy: FoldPolicy,
) -> tuple[ExampleSet, BaseRates, int | None]:
    """The viewings the ranker trains on, built from ``events`` (a region's log, time-ordered):
    point-in-time features, the ``max_examples`` latest, and the learned source's score; with
    the base rates they were smoothed toward, and how many viewings got that score (``None``:
    fewer than ``min_examples`` viewings, so none was computed and there is nothing to train).
    """
    from fyp.models.ranker_data import base_rates, build_examples
    from fyp.models.ranker_retrieval import als_scores_before

    rates = base_rates(events, items)
    examples = build_examples(
        events,
        items,
        policy,
        rates,
        prior_plays=ranker.prior_plays,
        label_window_s=ranker.label_window_s,
    )
    if len(examples) > ranker.max_examples:
        examples = examples.subset(np.arange(len(examples) - ranker.max_examples, len(examples)))
    if len(examples) < ranker.min_examples:
        return examples, rates, None
    # The later half of the viewings gets the learned source's score from an ALS fit that ended
    # where they begin (point in time); the earlier half has none, as a new viewer would.
    scored = als_scores_before(events, items, examples, config, float(np.median(examples.ts)))
    return examples, rates, scored


def _train_ranker(
    handle: RegionHandle,
    catalog: Catalog,
    config: TrainingConfig,
    ranker: RankerConfig,
    policy: FoldPolicy,
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Train the ranker on the region's viewings; ``(meta, arrays)`` to add to the snapshot.

    The meta holds ``skipped_reason`` (and no arrays come back) when there are too few viewings.
    """
    from fyp.models.ranker import train_ranker
    from fyp.models.ranker_data import from_records

    started = time.perf_counter()
    events = [e for batch in handle.events.scan(config.max_events) for e in from_records(batch)]
    items = catalog.get_items(list({e.item_id for e in events}))
    examples, rates, scored = ranker_examples(events, items, config, ranker, policy)
    if scored is None:
        return {
            "skipped_reason": f"{len(examples)} viewings; the ranker needs {ranker.min_examples}"
        }, {}
    model = train_ranker(examples, rates, ranker)
    meta, arrays = model.to_arrays()
    meta["viewings_with_als_score"] = scored
    meta["seconds_total"] = time.perf_counter() - started
    return meta, arrays


def train_region(
    handle: RegionHandle,
    catalog: Catalog,
    config: TrainingConfig,
    algorithm_hash: str,
    ranker: RankerConfig | None = None,
    policy: FoldPolicy | None = None,
    tower: ContentTowerConfig | None = None,
) -> TrainReport:
    """Train and save a new snapshot for ``handle.region`` (a handle opened for ``train``).

    With ``ranker`` (enabled) and the online-state ``policy`` its features replay, the snapshot
    also holds the multi-task ranker; with ``tower`` (enabled), the content two-tower model.
    """
    started = time.perf_counter()
    # When the event log was read: an erasure after this instant may have its user's events in
    # this model, so the retrainer compares erasures with it (not with when training ended).
    data_as_of = time.time()
    matrix, item_ids, n_events, last_seq, liked = _preference_matrix(handle, catalog, config)
    if n_events < config.min_events or matrix.nnz == 0:
        return TrainReport(
            handle.region,
            None,
            n_events,
            matrix.shape[0],
            matrix.shape[1],
            time.perf_counter() - started,
            skipped_reason=f"{n_events} events; training needs at least {config.min_events}",
        )
    factors = min(config.factors, max(2, min(matrix.shape) - 1))
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            random_state=config.seed,
        )
        als.fit(matrix, show_progress=False)
        positives = matrix.copy()
        positives.data = (positives.data > 0).astype(np.float32)
        positives.eliminate_zeros()
        knn = CosineRecommender(K=config.co_engagement_neighbors + 1)
        with warnings.catch_warnings():
            # implicit's own cosine normalisation hands itself a COO matrix and then warns.
            warnings.simplefilter("ignore", ParameterWarning)
            knn.fit(positives, show_progress=False)
    similarity = sp.csr_matrix(knn.similarity)
    similarity.setdiag(0.0)
    similarity.eliminate_zeros()
    similarity.sort_indices()
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    version = f"{handle.region}-{stamp}-{int(now * 1e6) % 1_000_000:06d}"
    arrays: dict[str, npt.NDArray[Any]] = {
        "item_ids": np.asarray(item_ids, dtype=np.str_),
        "item_factors": np.ascontiguousarray(als.item_factors, dtype=np.float32),
        "neighbor_indptr": similarity.indptr.astype(np.int64),
        "neighbor_indices": similarity.indices.astype(np.int32),
        "neighbor_scores": similarity.data.astype(np.float32),
    }
    meta = {
        "kind": MODEL_KIND,
        "region": handle.region,
        "trained_at": now,
        "data_as_of": data_as_of,
        "events": n_events,
        "last_seq": last_seq,
        "users": int(matrix.shape[0]),
        "items": int(matrix.shape[1]),
        "factors": factors,
        "regularization": config.regularization,
        "alpha": config.alpha,
        "algorithm_hash": algorithm_hash,
    }
    ranker_meta: dict[str, Any] | None = None
    if ranker is not None and ranker.enabled and policy is not None:
        ranker_meta, ranker_arrays = _train_ranker(handle, catalog, config, ranker, policy)
        meta["ranker"] = ranker_meta
        arrays.update(ranker_arrays)
    tower_meta: dict[str, Any] | None = None
    if tower is not None and tower.enabled:
        from fyp.models.content_tower import train_content_tower

        with threadpool_limits(1, "blas"):
            tower_meta, tower_arrays = train_content_tower(
                catalog,
                item_ids,
                liked.users,
                liked.items,
                liked.ts,
                tower,
                now,
                seed=config.seed,
            )
        meta["content_tower"] = tower_meta
        arrays.update(tower_arrays)
    handle.models.save(version, meta, arrays)
    seconds = time.perf_counter() - started
    log.info("trained %s on %d events in %.1fs", version, n_events, seconds)
    return TrainReport(
        handle.region,
        version,
        n_events,
        matrix.shape[0],
        matrix.shape[1],
        seconds,
        ranker=ranker_meta,
        content_tower=tower_meta,
    )
