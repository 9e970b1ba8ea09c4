"""Sentence embeddings from the packaged MiniLM model (runs offline on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from fyp.models import text


def test_shapes_norms_and_empty_rows() -> None:
    vectors = text.embed_texts(["one-pan lemon pasta", "", "  ", "sunrise ridge hike"])
    assert vectors.shape == (4, text.TEXT_DIM)
    assert vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 3]], 1.0, atol=1e-5)
    assert not vectors[1].any() and not vectors[2].any()
    assert text.embed_texts([]).shape == (0, text.TEXT_DIM)


def test_similar_meanings_are_closer() -> None:
    a, b, c = text.embed_texts(
        ["a puppy playing in the snow", "a young dog runs through snow", "stock market earnings"]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_cache_is_bounded_and_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    text.clear_cache()
    monkeypatch.setattr(text, "CACHE_SIZE", 3)
    first = text.embed_texts([f"video number {i}" for i in range(6)])
    assert len(text._cache) == 3
    again = text.embed_texts([f"video number {i}" for i in range(6)])
    np.testing.assert_allclose(first, again, atol=1e-5)
    assert len(text._cache) == 3
    duplicated = text.embed_texts(["same words", "same words"])
    np.testing.assert_array_equal(duplicated[0], duplicated[1])
    text.clear_cache()
    assert len(text._cache) == 0


def test_item_text() -> None:
    assert text.item_text("Corgi meets snow", ["pets", "dogs"]) == "Corgi meets snow. pets, dogs"
    assert text.item_text("", ["pets"]) == "pets"
    assert text.item_text(None, None) == ""
    with pytest.raises(ValueError):
        text.embed_texts(["x"], batch_size=0)
