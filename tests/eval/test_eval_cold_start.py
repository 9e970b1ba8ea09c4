"""The cold-items protocol: whole items held out, ranked only among themselves, by content."""

from __future__ import annotations

import numpy as np

from fyp.eval.data import Dataset, Interactions, ItemFeatures
from fyp.eval.harness import run
from fyp.eval.protocols import cold_items, describe, shuffle_item_ids


def topical(seed: int = 0, users: int = 160, items: int = 120, topics: int = 4) -> Dataset:
    """Each user likes one topic; items carry a noisy vector of their topic (and popularity
    varies), so only content tells a new item's audience."""
    rng = np.random.default_rng(seed)
    item_topic = np.arange(items) % topics
    centers = rng.normal(size=(topics, 12))
    vectors = (centers[item_topic] + 0.4 * rng.normal(size=(items, 12))).astype(np.float32)
    appeal = rng.pareto(1.5, items) + 0.1
    rows_u, rows_i = [], []
    for u in range(users):
        pool = np.flatnonzero(item_topic == u % topics)
        p = appeal[pool] / appeal[pool].sum()
        chosen = rng.choice(pool, size=10, replace=False, p=p)
        rows_u += [u] * len(chosen)
        rows_i += chosen.tolist()
    log = Interactions(
        user=np.asarray(rows_u),
        item=np.asarray(rows_i),
        user_labels=[f"u{u}" for u in range(users)],
        item_labels=[f"i{i}" for i in range(items)],
    )
    return Dataset(name="topical", interactions=log, items=ItemFeatures(vectors={"image": vectors}))


def test_cold_items_holds_out_whole_items_deterministically() -> None:
    log = topical().interactions
    split = cold_items(log, fraction=0.2, seed=3)
    assert split.candidates is not None and split.validation_candidates is not None
    present = np.unique(log.item)
    assert len(split.candidates) == round(len(present) * 0.2)
    # Every interaction with a held-out item is test, none is train; and the reverse.
    assert set(np.unique(split.test.item)) == set(split.candidates)
    assert not np.isin(split.train.item, split.candidates).any()
    assert len(split.train) + len(split.test) == len(log)
    # The validation part is itself cold: its items are absent from the part tuned on.
    assert split.validation is not None and split.train_for_validation is not None
    assert set(np.unique(split.validation.item)) == set(split.validation_candidates)
    assert not np.isin(split.train_for_validation.item, split.validation_candidates).any()
    assert not np.isin(split.validation_candidates, split.candidates).any()
    again = cold_items(log, fraction=0.2, seed=3)
    assert np.array_equal(again.candidates, split.candidates)
    other = cold_items(log, fraction=0.2, seed=4)
    assert not np.array_equal(other.candidates, split.candidates)
    info = describe(split)
    assert info["candidate_items"] == len(split.candidates)
    assert info["test_rows_unseen_item"] == len(split.test)


def test_content_recommends_new_items_better_than_id_only_models() -> None:
    result = run(topical(), "cold-items", ks=(5, 10, 20), seed=1)
    names = [r.name for r in result.results]
    assert names == [
        "most-popular",
        "item-knn",
        "ease",
        "ials",
        "bpr",
        "content",
        "two-tower",
        "fyp",
    ]
    ndcg = {r.name: r.metrics["ndcg@10"] for r in result.results}
    id_only = max(ndcg[n] for n in ("most-popular", "item-knn", "ease", "ials", "bpr"))
    # About 24 candidates of which a quarter share the user's topic: chance is low, content
    # knows the topic of every new item.
    assert ndcg["content"] > id_only + 0.2
    assert ndcg["two-tower"] > id_only + 0.2
    assert ndcg["fyp"] > id_only + 0.2
    best = result.best_baseline()
    assert best is not None and best.name not in {"fyp", "content", "two-tower"}
    # Every list stays inside the held-out items (coverage counts only them).
    fyp = result.result("fyp")
    assert fyp is not None
    n_candidates = result.split["candidate_items"]
    assert fyp.metrics["coverage@20"] <= n_candidates / result.split["n_items"] + 1e-9


def test_shuffled_item_ids_keep_every_fact() -> None:
    data = topical()
    data = Dataset(
        name=data.name,
        interactions=data.interactions,
        items=ItemFeatures(
            vectors=dict(data.items.vectors) if data.items else {},
            text=[f"video {i}" for i in range(data.interactions.n_items)],
            tags=[[f"t{i % 3}"] for i in range(data.interactions.n_items)],
        ),
    )
    shuffled = shuffle_item_ids(data, seed=2)
    old, new = data.interactions, shuffled.interactions
    assert not np.array_equal(old.item, new.item)
    # The same (user, item label) pairs, in the same row order.
    assert [old.item_labels[i] for i in old.item] == [new.item_labels[i] for i in new.item]
    assert shuffled.items is not None and data.items is not None
    assert shuffled.items.text is not None and shuffled.items.tags is not None
    for new_index, label in enumerate(new.item_labels):
        old_index = old.item_labels.index(label)
        assert shuffled.items.text[new_index] == f"video {old_index}"
        assert shuffled.items.tags[new_index] == [f"t{old_index % 3}"]
        np.testing.assert_array_equal(
            shuffled.items.vectors["image"][new_index], data.items.vectors["image"][old_index]
        )
    assert np.array_equal(shuffle_item_ids(data, seed=2).interactions.item, new.item)
