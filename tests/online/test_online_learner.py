"""The online ranker: it starts exactly where the batch ranker stands, learns new ids in their own
rows, freezes into a servable ranker, and its checkpoints survive a crash and an erasure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fyp.config import RankerConfig
from fyp.errors import Conflict
from fyp.eval.metrics import auc
from fyp.models.ranker import Ranker, train_ranker
from fyp.models.ranker_data import LABEL_NAMES, NUMERIC_FEATURES, BaseRates, ExampleSet
from fyp.online import embedding_table, learner
from fyp.online.learner import LearnerConfig, OnlineRanker

SMALL = RankerConfig(
    embedding_dim=8, experts=2, expert_hidden=16, epochs=8, batch_size=128, learning_rate=0.01
)
LIKE = LABEL_NAMES.index("like")


def planted(n: int, seed: int, users: range, items: range) -> ExampleSet:
    """Viewings where viewers of even index like even items and odd viewers odd ones: only the id
    embeddings can tell, so a model knows it only for ids it has rows for."""
    rng = np.random.default_rng(seed)
    u = rng.choice(np.asarray(users), n)
    i = rng.choice(np.asarray(items), n)
    labels = np.zeros((n, len(LABEL_NAMES)), dtype=np.float32)
    labels[:, LIKE] = rng.random(n) < np.where((u % 2) == (i % 2), 0.9, 0.05)
    known = np.zeros_like(labels, dtype=np.bool_)
    known[:, LIKE] = True
    return ExampleSet(
        ts=np.arange(n, dtype=np.float64),
        user_ids=[f"u{x}" for x in u],
        item_ids=[f"i{x}" for x in i],
        creator_ids=[f"c{x % 5}" for x in i],
        tags=[(f"t{x % 3}", "all") for x in i],
        numeric=np.zeros((n, len(NUMERIC_FEATURES)), dtype=np.float32),
        labels=labels,
        known=known,
    )


def chunks(examples: ExampleSet, size: int) -> list[ExampleSet]:
    return [
        examples.subset(np.arange(s, min(s + size, len(examples))))
        for s in range(0, len(examples), size)
    ]


@pytest.fixture(scope="module")
def base() -> Ranker:
    torch.manual_seed(0)
    return train_ranker(planted(3000, 1, range(40), range(60)), BaseRates(), SMALL)


def test_a_fresh_learner_serves_exactly_what_the_batch_ranker_serves(base: Ranker) -> None:
    probe = planted(300, 2, range(50), range(70))  # known and unknown ids alike
    online = OnlineRanker(base, base_version="v1")
    np.testing.assert_allclose(online.predict(probe), base.predict_examples(probe), atol=1e-6)
    np.testing.assert_allclose(
        online.to_ranker().predict_examples(probe), base.predict_examples(probe), atol=1e-6
    )


def test_new_viewers_get_their_own_rows_after_min_count_and_are_learned(base: Ranker) -> None:
    online = OnlineRanker(base, LearnerConfig(min_count=2), base_version="v1")
    newcomers = planted(6000, 3, range(100, 140), range(60))
    assert "u100" not in online.tables["users"]
    batches = chunks(newcomers, 256)
    online.partial_fit(batches[0])
    users = online.tables["users"]
    assert isinstance(users, embedding_table.EmbeddingTable)
    seen_twice = {u for u in batches[0].user_ids if batches[0].user_ids.count(u) >= 2}
    assert seen_twice and all(u in users for u in seen_twice)
    scores = [online.partial_fit(b).predictions[:, LIKE] for b in batches[1:]]
    late = newcomers.subset(np.arange(len(newcomers) - 1500, len(newcomers)))
    late_scores = np.concatenate(scores)[-1500:]
    # The batch model has no rows for these viewers: near chance. Online, they are learned.
    batch_auc = auc(late.label("like"), base.predict_examples(late)[:, LIKE])
    online_auc = auc(late.label("like"), late_scores)
    assert batch_auc < 0.65 < online_auc, (batch_auc, online_auc)
    # And the frozen copy serves what the learner knows.
    served = online.to_ranker()
    np.testing.assert_allclose(
        served.predict_examples(late), online.predict(late), rtol=1e-5, atol=1e-6
    )


def test_partial_fit_predictions_come_from_before_the_update(base: Ranker) -> None:
    online = OnlineRanker(base, base_version="v1")
    batch = planted(256, 4, range(40), range(60))
    before = online.predict(batch)
    result = online.partial_fit(batch)
    np.testing.assert_allclose(result.predictions, before, atol=1e-6)
    assert not np.allclose(online.predict(batch), before)


def test_the_served_copy_does_not_move_while_the_learner_trains(base: Ranker) -> None:
    online = OnlineRanker(base, base_version="v1")
    probe = planted(200, 5, range(40), range(60))
    served = online.to_ranker()
    frozen = served.predict_examples(probe)
    for b in chunks(planted(2000, 6, range(40), range(60)), 256):
        online.partial_fit(b)
    np.testing.assert_array_equal(served.predict_examples(probe), frozen)


def test_a_hashed_learner_learns_but_is_never_served(base: Ranker) -> None:
    online = OnlineRanker(base, LearnerConfig(table_kind="hashed", hashed_rows=16))
    result = online.partial_fit(planted(256, 7, range(40), range(60)))
    assert np.isfinite(result.loss)
    with pytest.raises(Conflict):
        online.to_ranker()


def test_a_checkpoint_round_trips_through_deltas(base: Ranker, tmp_path: Path) -> None:
    online = OnlineRanker(base, LearnerConfig(min_count=1), base_version="v1")
    stream = chunks(planted(1500, 8, range(30, 70), range(60)), 250)
    online.partial_fit(stream[0])
    online.save(tmp_path)
    for b in stream[1:3]:
        online.partial_fit(b)
        online.save(tmp_path)
    manifest = (tmp_path / "manifest.json").read_text()
    assert "users.delta" in manifest
    restored = OnlineRanker.restore(tmp_path, base, "v1")
    assert restored is not None
    probe = planted(300, 9, range(80), range(60))
    np.testing.assert_allclose(restored.predict(probe), online.predict(probe), atol=1e-6)
    assert restored.examples_seen == online.examples_seen
    # The optimizers' state came back too: both take the same next step.
    nxt = stream[3]
    online.partial_fit(nxt)
    restored.partial_fit(nxt)
    np.testing.assert_allclose(restored.predict(probe), online.predict(probe), atol=1e-5)
    # A checkpoint continues one batch model only.
    assert OnlineRanker.restore(tmp_path, base, "v2") is None


def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint(
    base: Ranker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = OnlineRanker(base, LearnerConfig(min_count=1), base_version="v1")
    online.partial_fit(planted(256, 10, range(30, 70), range(60)))
    online.save(tmp_path)
    probe = planted(300, 11, range(80), range(60))
    expected = online.predict(probe)
    online.partial_fit(planted(256, 12, range(30, 70), range(60)))

    real = learner.atomic_write

    def die_on_manifest(path: Path, payload: bytes) -> None:
        if path.name == "manifest.json":
            # The process dies with the new table and dense files written, before the manifest
            # that would name them: a half-written temporary is all that exists of it.
            (path.parent / f".{path.name}.tmp").write_bytes(payload[: len(payload) // 2])
            raise SystemExit("killed")
        real(path, payload)

    monkeypatch.setattr(learner, "atomic_write", die_on_manifest)
    with pytest.raises(SystemExit):
        online.save(tmp_path)
    monkeypatch.undo()
    restored = OnlineRanker.restore(tmp_path, base, "v1")
    assert restored is not None
    np.testing.assert_allclose(restored.predict(probe), expected, atol=1e-6)


def test_an_erased_viewer_leaves_the_learner_and_every_checkpoint_file(
    base: Ranker, tmp_path: Path
) -> None:
    online = OnlineRanker(base, LearnerConfig(min_count=1), base_version="v1")
    online.partial_fit(planted(512, 13, range(200, 210), range(60)))
    online.save(tmp_path)
    assert "u205" in online.tables["users"]
    assert online.forget_user("u205")
    assert "u205" not in online.tables["users"]
    online.save(tmp_path, full=True)
    for path in tmp_path.iterdir():
        assert b"u205" not in path.read_bytes(), path.name
    restored = OnlineRanker.restore(tmp_path, base, "v1")
    assert restored is not None and "u205" not in restored.tables["users"]
    assert "u204" in restored.tables["users"]


def test_an_id_is_counted_after_its_batch_and_its_new_row_starts_at_the_prior(
    base: Ranker,
) -> None:
    online = OnlineRanker(base, LearnerConfig(min_count=2), base_version="v1")
    batch = planted(64, 14, range(300, 302), range(60))  # two newcomers, many viewings each
    before = online.predict(batch)
    result = online.partial_fit(batch)
    # Scored as the unknown viewer they were when the batch arrived, not with a row that the
    # batch itself created.
    np.testing.assert_allclose(result.predictions, before, atol=1e-6)
    users = online.tables["users"]
    assert isinstance(users, embedding_table.EmbeddingTable)
    assert "u300" in users and "u301" in users
    prior = online.unknown["users"].detach().numpy()
    np.testing.assert_allclose(users.lookup(["u300", "u301"]), np.stack([prior, prior]))
