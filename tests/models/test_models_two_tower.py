"""The two-tower retrieval model on a small synthetic world of topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fyp.models.two_tower import TwoTower, TwoTowerConfig, TwoTowerModel

N_USERS, N_ITEMS, N_TOPICS, DIM = 240, 180, 6, 16


def _world(seed: int = 0) -> dict[str, npt.NDArray[np.generic]]:
    """Users each like one topic; items carry a noisy content vector of their topic."""
    rng = np.random.default_rng(seed)
    item_topic = np.arange(N_ITEMS) % N_TOPICS
    centers = rng.normal(size=(N_TOPICS, DIM))
    content = (centers[item_topic] + 0.3 * rng.normal(size=(N_ITEMS, DIM))).astype(np.float32)
    user_topic = np.arange(N_USERS) % N_TOPICS
    users, items = [], []
    for u in range(N_USERS):
        candidates = np.flatnonzero(item_topic == user_topic[u])
        chosen = rng.choice(candidates, size=12, replace=False)
        users.extend([u] * len(chosen))
        items.extend(chosen.tolist())
    return {
        "users": np.asarray(users),
        "items": np.asarray(items),
        "item_topic": item_topic,
        "user_topic": user_topic,
        "content": content,
        "centers": centers.astype(np.float32),
        "timestamps": np.arange(len(users), dtype=np.float64),
    }


CONFIG = TwoTowerConfig(dim=16, epochs=6, batch_size=128, hidden=32, history_len=5, seed=3)


@pytest.fixture(scope="module")
def world() -> dict[str, npt.NDArray[np.generic]]:
    return _world()


@pytest.fixture(scope="module")
def fitted(world: dict[str, npt.NDArray[np.generic]]) -> TwoTowerModel:
    return TwoTower(CONFIG).fit(
        world["users"],
        world["items"],
        N_USERS,
        N_ITEMS,
        content=world["content"],
        timestamps=world["timestamps"],
    )


def _histories(world: dict[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.int64]]:
    users, items = world["users"], world["items"]
    return [items[users == u].astype(np.int64) for u in range(N_USERS)]


def _same_topic_share(
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    world: dict[str, npt.NDArray[np.generic]],
) -> float:
    top = np.argsort(-(user_vectors @ item_vectors.T), axis=1)[:, :10]
    return float((world["item_topic"][top] == world["user_topic"][:, None]).mean())


def test_retrieves_same_topic_items_far_above_chance(
    fitted: TwoTowerModel, world: dict[str, npt.NDArray[np.generic]]
) -> None:
    items = fitted.item_vectors()
    assert items.shape == (N_ITEMS, 16) and items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    histories = _histories(world)
    with_ids = fitted.user_vectors_from_history(histories, np.arange(N_USERS))
    history_only = fitted.user_vectors_from_history(histories)
    chance = 1 / N_TOPICS
    assert _same_topic_share(with_ids, items, world) > 0.9 > 4 * chance
    assert _same_topic_share(history_only, items, world) > 0.9
    assert fitted.losses[-1] < fitted.losses[0]


def test_id_only_model_also_learns(world: dict[str, npt.NDArray[np.generic]]) -> None:
    model = TwoTower(CONFIG).fit(world["users"], world["items"], N_USERS, N_ITEMS)
    assert not model.has_content
    histories = _histories(world)
    share = _same_topic_share(
        model.user_vectors_from_history(histories, np.arange(N_USERS)), model.item_vectors(), world
    )
    assert share > 0.6
    with pytest.raises(ValueError):
        model.content_item_vectors(world["content"][:2])


def test_new_item_from_content_lands_near_its_topic(
    fitted: TwoTowerModel, world: dict[str, npt.NDArray[np.generic]]
) -> None:
    rng = np.random.default_rng(99)
    topics = np.arange(N_TOPICS)
    fresh = world["centers"][topics] + 0.3 * rng.normal(size=(N_TOPICS, DIM)).astype(np.float32)
    vectors = fitted.content_item_vectors(fresh)
    assert vectors.shape == (N_TOPICS, 16)
    # Each new item is closest to the average vector of the known items of its own topic ...
    known = fitted.item_vectors()
    centroids = np.stack([known[world["item_topic"] == t].mean(axis=0) for t in topics])
    assert (np.argmax(vectors @ centroids.T, axis=1) == topics).all()
    # ... and the users of that topic rank it above the new items of other topics.
    users = fitted.user_vectors_from_history(_histories(world), np.arange(N_USERS))
    best_new = np.argmax(users @ vectors.T, axis=1)
    assert float((best_new == world["user_topic"]).mean()) > 0.9
    # No content, no vector.
    assert not fitted.content_item_vectors(np.zeros((1, DIM), np.float32)).any()


def test_item_without_interactions_uses_content_only(
    world: dict[str, npt.NDArray[np.generic]],
) -> None:
    held = world["items"] == 0
    model = TwoTower(CONFIG).fit(
        world["users"][~held], world["items"][~held], N_USERS, N_ITEMS, content=world["content"]
    )
    np.testing.assert_allclose(
        model.item_vectors()[0], model.content_item_vectors(world["content"][:1])[0], atol=1e-5
    )


def test_deterministic_for_a_seed(world: dict[str, npt.NDArray[np.generic]]) -> None:
    config = TwoTowerConfig(dim=8, epochs=2, batch_size=128, hidden=16, history_len=4, seed=5)

    def vectors(cfg: TwoTowerConfig) -> npt.NDArray[np.float32]:
        return (
            TwoTower(cfg)
            .fit(world["users"], world["items"], N_USERS, N_ITEMS, content=world["content"])
            .item_vectors()
        )

    first, second = vectors(config), vectors(config)
    np.testing.assert_array_equal(first, second)
    other = vectors(TwoTowerConfig(**{**config.__dict__, "seed": 6}))
    assert not np.allclose(first, other)


def test_save_load_round_trip(
    fitted: TwoTowerModel, world: dict[str, npt.NDArray[np.generic]], tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    fitted.save(path)
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    loaded = TwoTowerModel.load(path)
    assert loaded.config == fitted.config
    np.testing.assert_allclose(loaded.item_vectors(), fitted.item_vectors(), atol=1e-6)
    histories = _histories(world)[:5]
    np.testing.assert_allclose(
        loaded.user_vectors_from_history(histories, np.arange(5)),
        fitted.user_vectors_from_history(histories, np.arange(5)),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        loaded.content_item_vectors(world["content"][:3]),
        fitted.content_item_vectors(world["content"][:3]),
        atol=1e-6,
    )
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        TwoTowerModel.load(tmp_path / "bad.safetensors")


def test_unknown_users_and_padding(fitted: TwoTowerModel) -> None:
    vectors = fitted.user_vectors_from_history(
        [np.array([], dtype=np.int64), np.array([1, 2, 10_000])], users=[-1, 10_000]
    )
    assert vectors.shape == (2, 16)
    assert not vectors[0].any()  # nothing known about this viewer
    np.testing.assert_allclose(np.linalg.norm(vectors[1]), 1.0, atol=1e-5)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        TwoTower(CONFIG).fit(np.array([0, 1]), np.array([0]), 2, 2)
    with pytest.raises(ValueError):
        TwoTower(CONFIG).fit(np.array([0, 5]), np.array([0, 1]), 2, 2)
    with pytest.raises(ValueError):
        TwoTowerConfig(id_dropout=1.0)
