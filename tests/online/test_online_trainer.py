"""The online trainer: examples from the bus train the ranker once each, whatever the bus; what it
learned is published as a new version of the served model; a new batch model restarts it."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from fyp.config import RankerConfig
from fyp.models.ranker import Ranker, train_ranker
from fyp.models.ranker_data import LABEL_NAMES, NUMERIC_FEATURES, BaseRates, ExampleSet
from fyp.online.bus import Bus, InProcessBus, RedisStreamBus, publish_examples
from fyp.online.joiner import Example
from fyp.online.trainer import OnlineTrainer, TrainerConfig, to_example_set
from fyp.storage.roles import ItemRecord

SMALL = RankerConfig(embedding_dim=8, experts=2, expert_hidden=16, epochs=3, batch_size=128)


def _base(seed: int) -> Ranker:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = 600
    labels = (rng.random((n, len(LABEL_NAMES))) < 0.3).astype(np.float32)
    examples = ExampleSet(
        ts=np.arange(n, dtype=np.float64),
        user_ids=[f"u{x}" for x in rng.integers(0, 20, n)],
        item_ids=[f"i{x}" for x in rng.integers(0, 30, n)],
        creator_ids=[f"c{x}" for x in rng.integers(0, 5, n)],
        tags=[("t",)] * n,
        numeric=rng.normal(size=(n, len(NUMERIC_FEATURES))).astype(np.float32),
        labels=labels,
        known=np.ones_like(labels, dtype=np.bool_),
    )
    return train_ranker(examples, BaseRates(), SMALL)


@pytest.fixture(scope="module")
def bases() -> tuple[Ranker, Ranker]:
    return _base(1), _base(2)


def _item(item_id: str) -> ItemRecord:
    return ItemRecord(
        item_id=item_id,
        creator_id="c1",
        created_at=0.0,
        duration_s=30.0,
        caption="",
        tags=("t",),
        language=None,
        regions=(),
    )


def _items(ids: Sequence[str]) -> dict[str, ItemRecord]:
    return {i: _item(i) for i in ids if not i.startswith("gone")}


def example(
    n: int, *, user: str = "u1", item: str = "i1", like: bool = True, features: bool = True
) -> Example:
    values = {"score": 1.0, "position": 0.0}
    inputs = tuple([0.5] * len(NUMERIC_FEATURES)) if features else None
    return Example(
        example_id=f"r{n}/{item}",
        request_id=f"r{n}",
        user_id=user,
        item_id=item,
        position=0,
        model_version="v1",
        ts=1000.0 + n,
        features=values,
        watch_ms=20_000,
        watch_ratio=20 / 30,
        finish=False,
        quick_skip=False,
        like=like,
        share=False,
        comment=False,
        follow=False,
        skip=False,
        negative=False,
        n_events=2,
        closed_by="next_play",
        inputs=inputs,
    )


class Slot:
    """Stands in for the engine's model slot: a base model and what was published into it."""

    def __init__(self, version: str, ranker: Ranker) -> None:
        self.version = version
        self.ranker = ranker
        self.published: list[tuple[str, Ranker, str]] = []

    def base(self) -> tuple[str, Ranker] | None:
        return self.version, self.ranker

    def publish(self, base_version: str, ranker: Ranker, version: str) -> bool:
        if base_version != self.version:
            return False
        self.published.append((base_version, ranker, version))
        return True


def _buses() -> Iterator[str]:
    yield "memory"
    if os.environ.get("FYP_TEST_REDIS_URL"):
        yield "redis"


@pytest.fixture(params=list(_buses()))
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    if request.param == "memory":
        yield InProcessBus()
        return
    redis_bus = RedisStreamBus(os.environ["FYP_TEST_REDIS_URL"], f"fyp:test:{uuid.uuid4().hex}")
    yield redis_bus
    redis_bus.delete()
    redis_bus.close()


def trainer_on(bus: Bus, slot: Slot, tmp: Path | None = None) -> OnlineTrainer:
    config = TrainerConfig(batch_size=8, publish_interval_s=0.0, checkpoint_interval_s=1e9)
    return OnlineTrainer(
        "eu", bus, _items, slot.base, slot.publish, config, checkpoint_dir=tmp, clock=lambda: 0.0
    )


def drain_all(trainer: OnlineTrainer) -> int:
    trained = 0
    while True:
        trained += trainer.step(block_ms=0)
        if trainer.last_delivered == 0:
            return trained


def test_every_example_trains_once_even_when_delivered_twice(
    bus: Bus, bases: tuple[Ranker, Ranker]
) -> None:
    slot = Slot("v1", bases[0])
    trainer = trainer_on(bus, slot)
    batch = [example(n, user=f"u{n % 3}") for n in range(20)]
    publish_examples(bus, batch)
    publish_examples(bus, batch[:7])  # redelivered by an at-least-once producer
    assert drain_all(trainer) == 20
    assert trainer.stats.duplicates == 7
    assert trainer.stats.steps == 3  # 20 examples in mini-batches of 8
    assert bus.pending("ranker") == 0


def test_a_trainer_behind_the_bus_takes_larger_steps_until_it_catches_up(
    bus: Bus, bases: tuple[Ranker, Ranker]
) -> None:
    slot = Slot("v1", bases[0])
    config = TrainerConfig(
        batch_size=8,
        max_drain=32,
        behind_batch_size=16,
        publish_interval_s=0.0,
        checkpoint_interval_s=1e9,
    )
    trainer = OnlineTrainer("eu", bus, _items, slot.base, slot.publish, config, clock=lambda: 0.0)
    publish_examples(bus, [example(n, user=f"u{n % 5}") for n in range(40)])
    assert trainer.step(block_ms=0) == 32  # a full drain: behind, so two steps of 16
    assert (trainer.stats.steps, trainer.stats.behind_rounds) == (2, 1)
    assert trainer.step(block_ms=0) == 8  # caught up: the usual steps of 8
    assert (trainer.stats.steps, trainer.stats.behind_rounds) == (3, 1)
    assert trainer.stats.trained == 40 and bus.pending("ranker") == 0


def test_what_was_learned_is_published_as_a_new_version_of_the_base(
    bus: Bus, bases: tuple[Ranker, Ranker]
) -> None:
    slot = Slot("v1", bases[0])
    trainer = trainer_on(bus, slot)
    publish_examples(bus, [example(n, user="newcomer", item="i3") for n in range(40)])
    drain_all(trainer)
    assert [v for _, _, v in slot.published] == ["v1+online.1"]
    _, served, _ = slot.published[-1]
    assert served.vocabs.users.row("newcomer") != served.vocabs.users.unknown_row
    before = bases[0].network.state_dict()
    after = served.network.state_dict()
    assert not torch.equal(before["interaction.weight"], after["interaction.weight"])
    assert trainer.publish_if_changed() is None  # nothing new learned since


def test_examples_without_a_viewing_or_logged_inputs_are_counted_not_trained(
    bus: Bus, bases: tuple[Ranker, Ranker]
) -> None:
    slot = Slot("v1", bases[0])
    trainer = trainer_on(bus, slot)
    unplayed = example(1)
    unplayed = dataclasses.replace(unplayed, n_events=0, example_id="r1/x")
    publish_examples(
        bus, [unplayed, example(2, features=False), example(3, item="gone"), example(4)]
    )
    assert drain_all(trainer) == 1
    assert trainer.stats.skipped == 3


def test_a_new_batch_model_restarts_the_learner_and_a_stale_publish_is_refused(
    bus: Bus, bases: tuple[Ranker, Ranker]
) -> None:
    slot = Slot("v1", bases[0])
    trainer = trainer_on(bus, slot)
    publish_examples(bus, [example(n) for n in range(10)])
    drain_all(trainer)
    assert trainer.stats.rebases == 1
    # The retrainer swaps a new snapshot in: a publish for the old one must not overwrite it.
    slot.version, slot.ranker = "v2", bases[1]
    trainer._dirty = True  # as if it had just learned more on the old base
    assert trainer.publish_now() is None
    publish_examples(bus, [example(n) for n in range(10, 20)])
    drain_all(trainer)
    assert trainer.stats.rebases == 2
    assert trainer.learner is not None and trainer.learner.base_version == "v2"
    assert slot.published[-1][2].startswith("v2+online.")


def test_an_erased_viewers_examples_still_on_the_bus_are_dropped(
    bus: Bus, bases: tuple[Ranker, Ranker], tmp_path: Path
) -> None:
    slot = Slot("v1", bases[0])
    trainer = trainer_on(bus, slot, tmp_path)
    publish_examples(bus, [example(n, user="leaver") for n in range(8)])
    drain_all(trainer)
    assert trainer.learner is not None and "leaver" in trainer.learner.tables["users"]
    publish_examples(bus, [example(n, user="leaver") for n in range(8, 12)])
    trainer.forget_user("leaver")
    assert "leaver" not in trainer.learner.tables["users"]
    drain_all(trainer)
    assert trainer.stats.erased_skipped == 4
    for path in tmp_path.iterdir():
        assert b"leaver" not in path.read_bytes(), path.name


def test_a_paused_trainer_leaves_examples_on_the_bus(
    bus: Bus, bases: tuple[Ranker, Ranker]
) -> None:
    slot = Slot("v1", bases[0])
    trainer = trainer_on(bus, slot)
    publish_examples(bus, [example(n) for n in range(5)])
    trainer.paused.set()
    assert trainer.step(block_ms=0) == 0
    trainer.paused.clear()
    assert drain_all(trainer) == 5


def test_the_checkpoint_lets_a_restarted_trainer_continue(
    bases: tuple[Ranker, Ranker], tmp_path: Path
) -> None:
    slot = Slot("v1", bases[0])
    bus = InProcessBus()
    first = trainer_on(bus, slot, tmp_path)
    publish_examples(bus, [example(n, user="regular") for n in range(16)])
    drain_all(first)
    assert first.checkpoint()
    second = trainer_on(bus, slot, tmp_path)
    publish_examples(bus, [example(100)])
    drain_all(second)
    assert second.learner is not None
    assert second.learner.examples_seen == 17
    assert "regular" in second.learner.tables["users"]


def test_labels_follow_the_joined_outcome() -> None:
    liked = example(1, like=True)
    skipped = dataclasses.replace(
        example(2, like=False), watch_ms=800, watch_ratio=0.8 / 30, quick_skip=True, skip=True
    )
    batch, left_out = to_example_set([liked.to_dict(), skipped.to_dict()], _items)
    assert left_out == 0
    assert batch.label("like").tolist() == [1.0, 0.0]
    assert batch.label("quick_skip").tolist() == [0.0, 1.0]
    assert batch.label("watch_ratio")[1] == pytest.approx(0.8 / 30)
    assert batch.numeric.shape == (2, len(NUMERIC_FEATURES))
    assert batch.creator_ids == ["c1", "c1"] and batch.tags == [("t",), ("t",)]


def test_the_bus_payloads_decode_to_the_inputs_logged_or_are_left_out() -> None:
    inputs = tuple(float(k) / 8 for k in range(len(NUMERIC_FEATURES)))
    packed = dataclasses.replace(example(1), inputs=inputs).to_dict()
    as_list = {**dataclasses.replace(example(2), inputs=inputs).to_dict(), "inputs": list(inputs)}
    unusable = [
        example(3, features=False).to_dict(),  # not scored by the ranker
        {**example(4).to_dict(), "inputs": list(inputs[:-1])},  # a different feature set
        example(5, item="gone1").to_dict(),  # no longer in the catalog
        dataclasses.replace(example(6), n_events=0).to_dict(),  # nothing followed
    ]
    batch, left_out = to_example_set([packed, *unusable, as_list], _items)
    assert left_out == len(unusable)
    assert batch.user_ids == ["u1", "u1"] and batch.ts.tolist() == [1001.0, 1002.0]
    np.testing.assert_array_equal(batch.numeric, np.array([inputs, inputs], dtype=np.float32))
    assert batch.numeric.dtype == np.float32 and batch.numeric.flags.writeable


def test_a_trainer_remembers_a_bounded_number_of_example_ids_and_erased_viewers(
    bases: tuple[Ranker, Ranker],
) -> None:
    """The idempotence filter and the erased-viewer memory grew with all traffic (a million ids,
    every erasure ever); each now holds at most its configured capacity, the newest kept."""
    bus = InProcessBus()
    slot = Slot("v1", bases[0])
    config = TrainerConfig(batch_size=8, checkpoint_interval_s=1e9, seen_capacity=30)
    config = dataclasses.replace(config, erased_capacity=10)
    trainer = OnlineTrainer("eu", bus, _items, slot.base, slot.publish, config, clock=lambda: 0.0)
    publish_examples(bus, [example(n, user=f"u{n % 3}") for n in range(100)])
    assert drain_all(trainer) == 100
    assert len(trainer._seen) == 30
    trainer.forget_users([f"gone{k}" for k in range(25)])
    assert len(trainer._erased) == 10
    assert "gone24" in trainer._erased and "gone0" not in trainer._erased
