"""The MMoE ranker: table sizes follow the vocabularies, it learns planted signals, and it comes
back unchanged from a round trip through the region's model store."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from fyp.config import RANKER_TASKS, RankerConfig
from fyp.engine import Engine
from fyp.eval.metrics import auc
from fyp.governance.policy import Principal
from fyp.models.ranker import MMoE, Ranker, recency_weights, train_ranker
from fyp.models.ranker_data import (
    LABEL_NAMES,
    MAX_TAGS,
    NUMERIC_FEATURES,
    UNKNOWN_ROW,
    BaseRates,
    EncodedBatch,
    ExampleSet,
    encode,
)
from fyp.models.serving import ServingModel
from fyp.storage.models import ModelSnapshot

SMALL = RankerConfig(
    embedding_dim=8, experts=2, expert_hidden=16, epochs=12, batch_size=128, learning_rate=0.01
)
AFFINITY = NUMERIC_FEATURES.index("creator_affinity")


def planted(n: int, seed: int, n_users: int = 40, n_items: int = 60) -> ExampleSet:
    """Viewings with two planted signals.

    * like: viewers of even index like even items and odd viewers odd items (only the id
      embeddings can know which is which);
    * finish: the viewer has a positive affinity to the creator (a numeric feature).
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    numeric = np.zeros((n, len(NUMERIC_FEATURES)), dtype=np.float32)
    numeric[:, AFFINITY] = rng.uniform(-1, 1, n)
    labels = np.zeros((n, len(LABEL_NAMES)), dtype=np.float32)
    match = (users % 2) == (items % 2)
    labels[:, LABEL_NAMES.index("like")] = rng.random(n) < np.where(match, 0.9, 0.02)
    finish = rng.random(n) < np.where(numeric[:, AFFINITY] > 0, 0.8, 0.1)
    labels[:, LABEL_NAMES.index("finish")] = finish
    labels[:, LABEL_NAMES.index("watch_ratio")] = np.where(finish, 1.0, rng.uniform(0, 0.6, n))
    labels[:, LABEL_NAMES.index("quick_skip")] = ~finish & (rng.random(n) < 0.5)
    labels[:, LABEL_NAMES.index("share")] = rng.random(n) < 0.05
    labels[:, LABEL_NAMES.index("follow")] = rng.random(n) < 0.05
    return ExampleSet(
        ts=np.arange(n, dtype=np.float64),
        user_ids=[f"u{u}" for u in users],
        item_ids=[f"i{i}" for i in items],
        creator_ids=[f"c{i % 6}" for i in items],
        tags=[(f"t{i % 3}",) for i in items],
        numeric=numeric,
        labels=labels,
        known=np.ones_like(labels, dtype=np.bool_),
    )


@pytest.fixture(scope="module")
def trained() -> Ranker:
    torch.manual_seed(0)
    return train_ranker(planted(4000, seed=1), BaseRates(), SMALL)


def test_tables_have_one_row_per_id_plus_the_unknown_row(trained: Ranker) -> None:
    network = trained.network
    vocabs = trained.vocabs
    assert network.user.num_embeddings == len(vocabs.users) == 1 + 40
    assert network.item.num_embeddings == len(vocabs.items) == 1 + 60
    assert network.creator.num_embeddings == len(vocabs.creators) == 1 + 6
    assert network.tag.num_embeddings == len(vocabs.tags) == 2 + 3
    rows = vocabs.items.rows([f"i{k}" for k in range(60)])
    assert sorted(rows.tolist()) == list(range(1, 61))


def test_forward_gives_one_logit_per_task() -> None:
    network = MMoE({"users": 5, "items": 7, "creators": 3, "tags": 4}, 17, 6, 4, 3, 8)
    out = network(
        torch.zeros(9, dtype=torch.long),
        torch.ones(9, dtype=torch.long),
        torch.zeros(9, dtype=torch.long),
        torch.zeros((9, MAX_TAGS), dtype=torch.long),
        torch.zeros((9, 17)),
    )
    assert out.shape == (9, 6)


def test_unseen_ids_share_the_unknown_row(trained: Ranker) -> None:
    examples = planted(2, seed=5)
    examples.user_ids[:] = ["stranger-1", "stranger-2"]
    examples.item_ids[:] = ["new-a", "new-b"]
    examples.numeric[1] = examples.numeric[0]
    examples.creator_ids[1], examples.tags[1] = examples.creator_ids[0], examples.tags[0]
    batch = encode(trained.vocabs, examples)
    assert batch.users.tolist() == batch.items.tolist() == [UNKNOWN_ROW, UNKNOWN_ROW]
    probs = trained.predict(batch)
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-6)  # rows may differ in the last ulp


def test_training_learns_the_planted_signals(trained: Ranker) -> None:
    test = planted(3000, seed=2)
    probs = trained.predict_examples(test)
    like = trained.tasks.index("like")
    finish = trained.tasks.index("finish")
    # The best possible AUCs given the planted noise: about 0.94 (like) and 0.85 (finish).
    assert auc(test.label("like"), probs[:, like]) > 0.88
    assert auc(test.label("finish"), probs[:, finish]) > 0.8
    stats = trained.stats
    assert stats is not None and stats.best_epoch >= 2
    # Far below the loss of predicting each task's base rate.
    valid = planted(4000, seed=1).subset(np.arange(3600, 4000))
    constant = 0.0
    for task in RANKER_TASKS:
        y = valid.label(task).astype(np.float64)
        p = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        constant += -float(np.mean(y * math.log(p) + (1 - y) * math.log(1 - p)))
    assert stats.validation_loss < 0.85 * constant


def test_a_subset_of_heads_trains_only_those(trained: Ranker) -> None:
    ranker = train_ranker(
        planted(600, seed=3), BaseRates(), SMALL.model_copy(update={"epochs": 1}), ("like",)
    )
    assert ranker.tasks == ("like",)
    assert ranker.predict_examples(planted(10, seed=4)).shape == (10, 1)


def test_save_and_load_through_the_region_model_store_predicts_identically(
    trained: Ranker, engine: Engine
) -> None:
    meta, arrays = trained.to_arrays()
    assert all(key.startswith("ranker.") for key in arrays)
    handle = engine.gate.open("eu", Principal.service("eu"), "train")
    handle.models.save("eu-ranker-test", {"ranker": meta}, arrays)
    snapshot = handle.models.load_current()
    assert snapshot is not None
    loaded = Ranker.from_arrays(snapshot.meta["ranker"], snapshot.arrays)
    examples = planted(300, seed=9)
    examples.user_ids[0] = "not-in-the-vocabulary"
    np.testing.assert_array_equal(
        loaded.predict_examples(examples), trained.predict_examples(examples)
    )
    assert loaded.tasks == trained.tasks
    assert loaded.vocabs.users.ids == trained.vocabs.users.ids


def test_an_empty_batch_predicts_nothing(trained: Ranker) -> None:
    empty = EncodedBatch(
        users=np.zeros(0, np.int64),
        items=np.zeros(0, np.int64),
        creators=np.zeros(0, np.int64),
        tags=np.zeros((0, MAX_TAGS), np.int64),
        numeric=np.zeros((0, len(NUMERIC_FEATURES)), np.float32),
    )
    assert trained.predict(empty).shape == (0, len(RANKER_TASKS))


def _snapshot(ranker_meta: dict[str, Any], ranker_arrays: dict[str, Any]) -> ModelSnapshot:
    arrays = {
        "item_ids": np.asarray(["a", "b", "c"], dtype=np.str_),
        "item_factors": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
        "neighbor_indptr": np.zeros(4, dtype=np.int64),
        "neighbor_indices": np.zeros(0, dtype=np.int32),
        "neighbor_scores": np.zeros(0, dtype=np.float32),
        **ranker_arrays,
    }
    meta = {"regularization": 0.05, "alpha": 4.0, "ranker": ranker_meta}
    return ModelSnapshot(version="us-test", meta=meta, arrays=arrays)


def test_the_serving_model_loads_the_ranker_and_skips_one_of_another_schema(
    trained: Ranker,
) -> None:
    meta, arrays = trained.to_arrays()
    assert ServingModel(_snapshot(meta, arrays)).ranker is not None
    older = {**meta, "numeric_features": list(NUMERIC_FEATURES[:-2])}
    model = ServingModel(_snapshot(older, arrays))
    assert model.ranker is None, "the learned sources still serve; the ranker feature is 0"
    assert model.similar("a", 5) == []
    skipped = ServingModel(_snapshot({"skipped_reason": "12 viewings"}, {}))
    assert skipped.ranker is None


def test_recency_weights_halve_every_half_life() -> None:
    day = 86_400.0
    ts = np.array([0.0, 2 * day, 3 * day, 4 * day])
    np.testing.assert_allclose(recency_weights(ts, 2.0), [0.25, 0.5, 2**-0.5, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(recency_weights(ts, None), np.ones(4))


def _flipped(n_old: int, n_new: int, seed: int) -> ExampleSet:
    """An old log where viewers finish creators they like, then recent traffic (served by
    another feed) where they finish the ones they do not: the same features, the opposite
    relation."""
    old, new = planted(n_old, seed), planted(n_new, seed + 100)
    finish = LABEL_NAMES.index("finish")
    new.labels[:, finish] = 1.0 - new.labels[:, finish]
    day = 86_400.0
    old.ts = np.linspace(0.0, 40 * day, n_old)
    new.ts = np.linspace(59 * day, 60 * day, n_new)
    return ExampleSet(
        ts=np.concatenate([old.ts, new.ts]),
        user_ids=old.user_ids + new.user_ids,
        item_ids=old.item_ids + new.item_ids,
        creator_ids=old.creator_ids + new.creator_ids,
        tags=old.tags + new.tags,
        numeric=np.concatenate([old.numeric, new.numeric]),
        labels=np.concatenate([old.labels, new.labels]),
        known=np.concatenate([old.known, new.known]),
    )


def test_a_recency_half_life_fits_the_recent_traffic_over_an_old_log() -> None:
    examples = _flipped(4000, 1000, seed=7)
    test = _flipped(10, 2000, seed=8).subset(np.arange(10, 2010))
    finish = LABEL_NAMES.index("finish")
    scores = {}
    for half_life in (None, 2.0):
        config = SMALL.model_copy(update={"recency_half_life_days": half_life, "epochs": 8})
        ranker = train_ranker(examples, BaseRates(), config)
        probs = ranker.predict_examples(test)[:, ranker.tasks.index("finish")]
        scores[half_life] = auc(test.labels[:, finish], probs)
    # Unweighted, the 4,000 old viewings outvote the 500 recent ones the ranker trains on; with a
    # two-day half-life the old log (19+ days older) weighs under a thousandth of them.
    assert scores[None] < 0.5, scores
    assert scores[2.0] > 0.75, scores
