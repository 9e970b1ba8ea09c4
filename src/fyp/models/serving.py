"""A trained snapshot made ready to serve, and the per-region slot that swaps it atomically.

``ServingModel`` wraps a snapshot's arrays with a faiss index over the item factors and answers the
two questions the learned sources ask: which items are nearest to this viewer (folded in from their
latest events), and which items are co-engaged with this one. ``ModelSlot`` holds the current model
of a region; a request takes one reference at its start and keeps it, so a swap never changes a
model under a running request.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares

from fyp.storage.models import ModelSnapshot

if TYPE_CHECKING:
    from fyp.models.content_tower import ContentTowerIndex
    from fyp.models.ranker import Ranker

log = logging.getLogger(__name__)

# Exact search is fast enough below this many items; above it an IVF index keeps queries ~1 ms.
_EXACT_SEARCH_MAX_ITEMS = 50_000

# One query at a time per request thread: OpenMP fan-out only adds contention on a busy server.
faiss.omp_set_num_threads(1)


def build_item_index(vectors: npt.NDArray[np.float32]) -> Any:
    n, dim = vectors.shape
    index: Any
    if n <= _EXACT_SEARCH_MAX_ITEMS:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(min(4096, max(64, 4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)]
        index.train(sample)
        index.nprobe = 16
    index.add(vectors)
    return index


class ServingModel:
    """The learned sources' view of one snapshot. Read-only after construction; thread-safe."""

    def __init__(self, snapshot: ModelSnapshot) -> None:
        arrays = snapshot.arrays
        self.version = snapshot.version
        self.base_version = snapshot.version
        """The batch snapshot this model comes from (``version`` adds the online updates)."""
        self.meta = snapshot.meta
        self.item_ids: list[str] = [str(x) for x in arrays["item_ids"]]
        self.index_of = {item_id: i for i, item_id in enumerate(self.item_ids)}
        factors = np.ascontiguousarray(arrays["item_factors"], dtype=np.float32)
        self.neighbors = sp.csr_matrix(
            (arrays["neighbor_scores"], arrays["neighbor_indices"], arrays["neighbor_indptr"]),
            shape=(len(self.item_ids), len(self.item_ids)),
        )
        self._als = AlternatingLeastSquares(
            factors=factors.shape[1],
            regularization=float(snapshot.meta["regularization"]),
            alpha=float(snapshot.meta["alpha"]),
            num_threads=1,
        )
        self._als.item_factors = factors
        self._fold_lock = threading.Lock()
        # The learned source and the ranker fold in the same viewer in one request: solve once.
        self._recent_vectors: OrderedDict[
            tuple[tuple[str, float], ...], npt.NDArray[np.float32] | None
        ] = OrderedDict()
        self._index = build_item_index(factors)
        self.ranker: Ranker | None = _load_ranker(snapshot)
        self.batch_ranker: Ranker | None = self.ranker
        """The snapshot's own ranker: what online training continues from."""
        self.tower: ContentTowerIndex | None = _load_tower(snapshot)

    def with_ranker(self, ranker: Ranker, version: str) -> ServingModel:
        """This model with another ranker (one trained online from it) under ``version``; the
        retrieval side (factors, index, neighbours, towers) is shared, not copied."""
        clone = copy.copy(self)
        clone.ranker = ranker
        clone.version = version
        return clone

    def forget_user(self, user_id: str) -> bool:
        """Drop a viewer's per-user rows from this model in memory (the ranker's embedding)."""
        return self.ranker.forget_user(user_id) if self.ranker is not None else False

    def user_vector(
        self, interactions: Sequence[tuple[str, float]]
    ) -> npt.NDArray[np.float32] | None:
        """Fold a viewer into the factor space from (item, preference weight) pairs.

        This is one ALS half-step for a single row: the least-squares user vector that the model
        would have learned from these interactions, computed in well under a millisecond.
        """
        key = tuple(interactions)
        with self._fold_lock:
            if key in self._recent_vectors:
                self._recent_vectors.move_to_end(key)
                return self._recent_vectors[key]
        vector = self._fold_in(interactions)
        with self._fold_lock:
            self._recent_vectors[key] = vector
            while len(self._recent_vectors) > 64:
                self._recent_vectors.popitem(last=False)
        return vector

    def _fold_in(self, interactions: Sequence[tuple[str, float]]) -> npt.NDArray[np.float32] | None:
        weights: dict[int, float] = {}
        for item_id, weight in interactions:
            col = self.index_of.get(item_id)
            if col is not None:
                weights[col] = weights.get(col, 0.0) + weight
        weights = {c: w for c, w in weights.items() if abs(w) > 1e-9}
        if not any(w > 0 for w in weights.values()):
            return None
        cols = np.fromiter(weights, dtype=np.int32, count=len(weights))
        vals = np.fromiter(weights.values(), dtype=np.float32, count=len(weights))
        row = sp.csr_matrix((vals, cols, np.array([0, len(cols)])), shape=(1, len(self.item_ids)))
        with self._fold_lock:  # implicit caches YtY on the model object
            vector = self._als.recalculate_user(0, row)
        return np.asarray(vector, dtype=np.float32)

    def item_scores(
        self, vector: npt.NDArray[np.float32], item_ids: Sequence[str]
    ) -> list[float | None]:
        """``vector . item factor`` per item; ``None`` for items the model does not know."""
        rows = [self.index_of.get(item_id, -1) for item_id in item_ids]
        known = [r for r in rows if r >= 0]
        if not known:
            return [None] * len(rows)
        dots = iter((self._als.item_factors[known] @ vector.reshape(-1)).tolist())
        return [next(dots) if r >= 0 else None for r in rows]

    def nearest(self, vector: npt.NDArray[np.float32], k: int) -> list[tuple[str, float]]:
        k = min(k, len(self.item_ids))
        if k <= 0:
            return []
        scores, ids = self._index.search(vector.reshape(1, -1), k)
        return [
            (self.item_ids[int(i)], float(s))
            for s, i in zip(scores[0], ids[0], strict=True)
            if i >= 0
        ]

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]]:
        row = self.index_of.get(item_id)
        if row is None:
            return []
        start, end = self.neighbors.indptr[row], self.neighbors.indptr[row + 1]
        cols = self.neighbors.indices[start:end]
        vals = self.neighbors.data[start:end]
        order = np.argsort(-vals)[:k]
        ids = self.item_ids
        return [
            (ids[c], v) for c, v in zip(cols[order].tolist(), vals[order].tolist(), strict=True)
        ]


def _load_ranker(snapshot: ModelSnapshot) -> Ranker | None:
    """The snapshot's multi-task ranker, if it has one (torch is imported only then)."""
    meta = snapshot.meta.get("ranker")
    if not isinstance(meta, dict) or "tasks" not in meta:
        return None
    from fyp.models.ranker import load_for_serving

    try:
        return load_for_serving(meta, snapshot.arrays)
    except (ValueError, KeyError, RuntimeError) as exc:
        # A snapshot from another feature schema: serve the learned sources without the ranker
        # (its feature is then 0) until the next training replaces it.
        log.warning("snapshot %s: ranker not loaded: %s", snapshot.version, exc)
        return None


def _load_tower(snapshot: ModelSnapshot) -> ContentTowerIndex | None:
    """The snapshot's content towers, if it has them."""
    if "content_tower" not in snapshot.meta:
        return None
    from fyp.models.content_tower import load_tower

    return load_tower(snapshot.meta, snapshot.arrays)


class ModelSlot:
    """The current serving model of one region, swapped atomically."""

    def __init__(self) -> None:
        self._model: ServingModel | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ServingModel | None:
        return self._model

    def swap(self, model: ServingModel | None) -> None:
        with self._lock:
            self._model = model

    def publish_ranker(self, base_version: str, ranker: Ranker, version: str) -> bool:
        """Serve ``ranker`` in the current model if that model still comes from snapshot
        ``base_version`` (a newer batch model wins: the online learner then restarts from it)."""
        with self._lock:
            model = self._model
            if model is None or model.base_version != base_version:
                return False
            self._model = model.with_ranker(ranker, version)
            return True

    @property
    def version(self) -> str:
        """What responses name: the snapshot, plus ``+online.<n>`` once online training
        published into it."""
        model = self._model
        return model.version if model is not None else "untrained"

    @property
    def base_version(self) -> str:
        """The batch snapshot being served (what the model store calls current)."""
        model = self._model
        return model.base_version if model is not None else "untrained"
