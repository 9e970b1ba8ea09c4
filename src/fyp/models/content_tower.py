"""The feed's two-tower source: training from a region's events, and serving with new items.

Training (:func:`train_content_tower`, called by ``train_region``) fits
:class:`fyp.models.two_tower.TwoTower` on the region's positive events in time order, with each
item's caption and tags embedded by MiniLM (:mod:`fyp.models.text`) as its content. Items young
enough to have no audience yet are added as content-only rows, so they get vectors too.

What the snapshot keeps (arrays prefixed ``tower.``) is item-side only: the item vectors, the
history layer that turns a viewer's recent items into their vector, and the content path (the
content transform and MLP) that places items uploaded after training. The user-ID embeddings the
model learned are not stored: a viewer's vector is made at request time from their latest
positive items, exactly as the model was trained to do when it dropped the user ID, so a new
event counts at once and the snapshot holds no per-user rows.

Serving (:class:`ContentTowerIndex`) answers nearest-item queries through faiss, and
:meth:`ContentTowerIndex.add_items` places items that arrived after training (the engine's sync
loop calls it with the catalog's newest items), so a video uploaded a second ago can be
retrieved for a viewer whose taste matches its caption.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import faiss
import numpy as np
import numpy.typing as npt

from fyp.config import ContentTowerConfig
from fyp.models.serving import build_item_index
from fyp.storage.roles import Catalog, ItemRecord

log = logging.getLogger(__name__)

PREFIX: Final = "tower."
MIN_STEPS: Final = 300
"""Fewest gradient steps a training run aims for (time permitting), however small the region."""
FloatMatrix = npt.NDArray[np.float32]

# Arrays of the snapshot that describe items or the model's dense layers only (no viewer rows).
TOWER_ARRAYS: Final = (
    "tower.item_ids",
    "tower.item_vectors",
    "tower.history_weight",
    "tower.history_bias",
    "tower.content_mean",
    "tower.content_basis",
    "tower.mlp_in_weight",
    "tower.mlp_in_bias",
    "tower.mlp_out_weight",
    "tower.mlp_out_bias",
)


def _texts(records: Sequence[ItemRecord | None]) -> list[str]:
    from fyp.models.text import item_text

    return [item_text(r.caption, list(r.tags)) if r is not None else "" for r in records]


def train_content_tower(
    catalog: Catalog,
    item_ids: Sequence[str],
    user_idx: npt.NDArray[np.int64],
    item_idx: npt.NDArray[np.int64],
    timestamps: npt.NDArray[np.float64],
    config: ContentTowerConfig,
    now: float,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Fit the towers on positive events ``(user_idx, item_idx, timestamps)`` over ``item_ids``.

    Returns ``(meta, arrays)`` for the snapshot; ``meta["skipped_reason"]`` (and no arrays) when
    the region has too few positive events.
    """
    from fyp.models.ranker import torch_threads
    from fyp.models.text import TEXT_DIM, embed_texts
    from fyp.models.two_tower import TwoTower, TwoTowerConfig

    started = time.perf_counter()
    if len(item_idx) < config.min_positives:
        return {
            "skipped_reason": f"{len(item_idx)} positive events; the towers need "
            f"{config.min_positives}"
        }, {}
    if len(item_idx) > config.max_examples:
        keep = np.argsort(timestamps, kind="stable")[-config.max_examples :]
        user_idx, item_idx, timestamps = user_idx[keep], item_idx[keep], timestamps[keep]
    # Young items nobody in this region has touched yet become content-only rows.
    position = {item_id: i for i, item_id in enumerate(item_ids)}
    recent = [
        r.item_id
        for r in catalog.recent_items(now - config.new_item_hours * 3600.0, config.max_new_items)
    ]
    new_ids = [item_id for item_id in recent if item_id not in position]
    all_ids = [*item_ids, *new_ids]
    # Text is embedded for every recent item (those nobody in the region touched, and those
    # only skipped or merely played, which the towers' positives would not place either), then
    # for the most engaged items, within the bound. Recent items all get a vector here, so a
    # serving process only has uploads made after this training left to place.
    recent_rows = [position[i] for i in recent if i in position]
    recent_rows += list(range(len(item_ids), len(all_ids)))
    chosen = set(recent_rows)
    engaged = np.bincount(item_idx, minlength=len(item_ids))
    budget = max(config.max_text_items - len(chosen), 0)
    top = [int(i) for i in np.argsort(-engaged, kind="stable") if int(i) not in chosen][:budget]
    with_text = np.asarray(sorted(chosen) + top, dtype=int)
    records = catalog.get_items([all_ids[i] for i in with_text])
    content = np.zeros((len(all_ids), TEXT_DIM), dtype=np.float32)
    if len(with_text):
        with torch_threads(1):
            content[with_text] = embed_texts(_texts([records.get(all_ids[i]) for i in with_text]))
    embedded_s = time.perf_counter() - started
    # Small regions need smaller batches and more passes: the towers learn from gradient steps,
    # and a few thousand events in batches of a thousand would give them a few dozen.
    n = len(item_idx)
    batch_size = int(np.clip(n // 32, 64, 1024))
    epochs = max(config.epochs, int(np.ceil(MIN_STEPS * batch_size / n)))
    tower_config = TwoTowerConfig(
        dim=config.dim,
        epochs=epochs,
        batch_size=batch_size,
        id_dropout=config.id_dropout,
        history_len=config.history,
        seed=seed,
        max_seconds=config.max_train_seconds,
    )
    n_users = int(user_idx.max()) + 1 if len(user_idx) else 1
    # One intra-op thread, for the towers and for MiniLM: the batches are small, and on a busy
    # 2-core server more threads only contend (measured under load: training 10x and text
    # embedding 1.7x slower with two threads than with one).
    with torch_threads(1):
        model = TwoTower(tower_config).fit(
            user_idx, item_idx, n_users, len(all_ids), content=content, timestamps=timestamps
        )
    vectors = model.item_vectors()
    placed = np.flatnonzero(np.abs(vectors).sum(axis=1) > 0)
    state = model.net.state_dict()
    transform = model.transform
    arrays: dict[str, npt.NDArray[Any]] = {
        "tower.item_ids": np.asarray([all_ids[i] for i in placed], dtype=np.str_),
        "tower.item_vectors": np.ascontiguousarray(vectors[placed], dtype=np.float32),
        "tower.history_weight": state["history.weight"].numpy().astype(np.float32),
        "tower.history_bias": state["history.bias"].numpy().astype(np.float32),
    }
    content_scale = 1.0
    if transform is not None and model.net.has_content:
        content_scale = transform.scale
        arrays.update(
            {
                "tower.content_mean": transform.mean.astype(np.float32),
                "tower.content_basis": np.ascontiguousarray(transform.basis, dtype=np.float32),
                "tower.mlp_in_weight": state["content_mlp.0.weight"].numpy().astype(np.float32),
                "tower.mlp_in_bias": state["content_mlp.0.bias"].numpy().astype(np.float32),
                "tower.mlp_out_weight": state["content_mlp.2.weight"].numpy().astype(np.float32),
                "tower.mlp_out_bias": state["content_mlp.2.bias"].numpy().astype(np.float32),
            }
        )
    meta = {
        "dim": config.dim,
        "history": config.history,
        "content_scale": content_scale,
        "examples": len(item_idx),
        "items": len(placed),
        "new_items": len(new_ids),
        "items_with_text": len(with_text),
        "epochs_run": model.epochs_run,
        "final_loss": model.losses[-1] if model.losses else None,
        "embed_seconds": embedded_s,
        "seconds": time.perf_counter() - started,
    }
    log.info(
        "content tower: %d examples, %d items (%d new), %.1fs (text %.1fs)",
        len(item_idx),
        len(placed),
        len(new_ids),
        meta["seconds"],
        embedded_s,
    )
    return meta, arrays


_State = tuple[list[str], dict[str, int], FloatMatrix, Any]
"""(item ids, position of each id, item vectors, index of the items added while serving)."""


class ContentTowerIndex:
    """Nearest-item search in the towers' space; new items can be added while serving.

    Reads never lock: the searchable state is one tuple swapped whole when items are added.
    """

    def __init__(self, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> None:
        self.history = int(meta["history"])
        self._w = np.asarray(arrays["tower.history_weight"], dtype=np.float32)
        self._b = np.asarray(arrays["tower.history_bias"], dtype=np.float32)
        self._content: tuple[FloatMatrix, ...] | None = None
        if "tower.mlp_in_weight" in arrays:
            self._content = tuple(
                np.asarray(arrays[name], dtype=np.float32)
                for name in (
                    "tower.content_mean",
                    "tower.content_basis",
                    "tower.mlp_in_weight",
                    "tower.mlp_in_bias",
                    "tower.mlp_out_weight",
                    "tower.mlp_out_bias",
                )
            )
        self._scale = float(meta.get("content_scale", 1.0))
        ids = [str(x) for x in arrays["tower.item_ids"]]
        vectors = np.ascontiguousarray(arrays["tower.item_vectors"], dtype=np.float32)
        self.trained_items = frozenset(ids)
        self._add_lock = threading.Lock()
        self._tried: set[str] = set()
        # The trained items' index is built once; items added while serving go to a small exact
        # index of their own, rebuilt on each addition and searched alongside.
        self._main = build_item_index(vectors) if ids else faiss.IndexFlatIP(vectors.shape[1])
        self._n_main = len(ids)
        self._state: _State = (ids, {item_id: i for i, item_id in enumerate(ids)}, vectors, None)

    @property
    def size(self) -> int:
        return len(self._state[0])

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._state[1]

    def content_vectors(self, content: npt.ArrayLike) -> FloatMatrix:
        """Item vectors from text embeddings alone (the trained content path, in numpy)."""
        if self._content is None:
            raise ValueError("this tower was trained without content")
        mean, basis, w_in, b_in, w_out, b_out = self._content
        c = np.asarray(content, dtype=np.float32)
        present = np.abs(c).sum(axis=1) > 0
        reduced = ((c - mean) @ basis) * self._scale
        hidden = np.maximum(reduced @ w_in.T + b_in, 0.0)
        out = hidden @ w_out.T + b_out
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
        out[~present] = 0.0
        result: FloatMatrix = out.astype(np.float32)
        return result

    def add_items(self, records: Sequence[ItemRecord], limit: int | None = None) -> int:
        """Place items the index does not hold yet by their caption and tags (at most ``limit``
        of them, in the order given); returns how many."""
        if self._content is None:
            return 0
        from fyp.models.text import embed_texts

        with self._add_lock:
            ids, positions, vectors, _ = self._state
            fresh = list(
                {
                    r.item_id: r
                    for r in records
                    if r.item_id not in positions and r.item_id not in self._tried
                }.values()
            )
            if limit is not None:
                fresh = fresh[:limit]
            if not fresh:
                return 0
            # Items without text stay out; remember them so they are not embedded again.
            self._tried.update(r.item_id for r in fresh)
            from fyp.models.ranker import torch_threads

            with torch_threads(1):  # the serving process's other requests need the other core
                placed = self.content_vectors(embed_texts(_texts(fresh)))
            keep = np.abs(placed).sum(axis=1) > 0
            added = [r.item_id for r, k in zip(fresh, keep, strict=True) if k]
            if not added:
                return 0
            ids = [*ids, *added]
            vectors = np.vstack([vectors, placed[keep]])
            extra = faiss.IndexFlatIP(vectors.shape[1])
            extra.add(np.ascontiguousarray(vectors[self._n_main :]))
            # One assignment: a search in flight keeps the tuple it started with.
            self._state = (ids, {item_id: i for i, item_id in enumerate(ids)}, vectors, extra)
            return len(added)

    def user_vector(self, recent_items: Sequence[str]) -> FloatMatrix | None:
        """The viewer's vector from their recent positive items (newest last), or ``None``."""
        _, positions, vectors, _ = self._state
        rows = [positions[i] for i in recent_items if i in positions][-self.history :]
        if not rows:
            return None
        pooled = vectors[rows].mean(axis=0)
        vec = self._w @ pooled + self._b
        norm = float(np.linalg.norm(vec))
        if norm < 1e-12:
            return None
        result: FloatMatrix = (vec / norm).astype(np.float32)
        return result

    def nearest(self, vector: FloatMatrix, k: int) -> list[tuple[str, float]]:
        ids, _, _, extra = self._state
        query = vector.reshape(1, -1)
        found: list[tuple[str, float]] = []
        for index, offset, size in ((self._main, 0, self._n_main), (extra, self._n_main, None)):
            if index is None:
                continue
            n = min(k, size if size is not None else index.ntotal)
            if n <= 0:
                continue
            scores, rows = index.search(query, n)
            found.extend(
                (ids[offset + int(i)], float(sc))
                for sc, i in zip(scores[0], rows[0], strict=True)
                if i >= 0
            )
        found.sort(key=lambda pair: -pair[1])
        return found[:k]


def add_new_items(tower: ContentTowerIndex, catalog: Catalog, config: ContentTowerConfig) -> int:
    """Place the catalog's newest items the tower does not hold yet (the engine's sync loop)."""
    since = time.time() - config.new_item_hours * 3600.0
    # Newest first, a bounded batch per round: embedding text takes CPU from serving, so a
    # backlog (a restart, a bulk upload) is worked off over several rounds.
    return tower.add_items(
        catalog.recent_items(since, config.max_new_items), limit=config.new_items_per_sync
    )


def load_tower(
    meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]
) -> ContentTowerIndex | None:
    """The snapshot's towers, if it has them."""
    tower = meta.get("content_tower")
    if not isinstance(tower, dict) or "tower.item_vectors" not in arrays:
        return None
    try:
        return ContentTowerIndex(tower, arrays)
    except (KeyError, ValueError) as exc:
        log.warning("content tower not loaded: %s", exc)
        return None
