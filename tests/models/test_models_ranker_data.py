"""Ranker examples: one row per id, labels from what followed a play, features strictly from before
it, and the same features at serving time as in training."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from fyp.config import FypConfig
from fyp.engine import Engine, fold_policy
from fyp.governance.policy import Principal
from fyp.models.ranker_data import (
    NUMERIC_FEATURES,
    TAG_PAD_ROW,
    TAG_UNKNOWN_ROW,
    UNKNOWN_ROW,
    BaseRates,
    LoggedEvent,
    Vocabularies,
    Vocabulary,
    affinity_delta,
    build_examples,
    encode,
    from_events,
    serving_numeric,
)
from fyp.storage.roles import ItemRecord
from fyp.types import Event, from_epoch

T0 = 1_700_000_000.0
POLICY = fold_policy(FypConfig())
RATES = BaseRates()
COL = {name: i for i, name in enumerate(NUMERIC_FEATURES)}


def record(item_id: str, creator: str, tags: tuple[str, ...] = ("cats",)) -> ItemRecord:
    return ItemRecord(item_id, creator, T0 - 3600.0, 20.0, "", tags, None, ())


ITEMS = {
    "a": record("a", "ana", ("cats", "pets")),
    "b": record("b", "ana", ("cats",)),
    "c": record("c", "bo", ("cars",)),
    "d": record("d", "bo", ("cars", "pets")),
}


def build(events: list[LoggedEvent], window: float = 600.0) -> Any:
    return build_examples(events, ITEMS, POLICY, RATES, prior_plays=5.0, label_window_s=window)


def test_vocabulary_gives_every_id_its_own_row_and_unknown_ids_the_unknown_row() -> None:
    ids = [f"user{i}" for i in range(500)] + ["user3", "user7"]  # repeats keep their first row
    vocab = Vocabulary(ids)
    rows = vocab.rows([f"user{i}" for i in range(500)])
    assert len(set(rows.tolist())) == 500, "no two ids share a row"
    assert UNKNOWN_ROW not in rows
    assert len(vocab) == 501
    assert vocab.row("never-seen") == UNKNOWN_ROW
    assert vocab.rows(["nobody", "user3", "else"]).tolist() == [0, vocab.row("user3"), 0]
    again = Vocabulary.from_array(vocab.to_array(), unknown_row=UNKNOWN_ROW, reserved=1)
    assert again.rows(ids).tolist() == vocab.rows(ids).tolist()


def test_tags_have_a_padding_row_and_their_own_unknown_row() -> None:
    events = [LoggedEvent(T0 + i, "u", item, "play", 5000) for i, item in enumerate("ac")]
    examples = build(events)
    vocabs = Vocabularies.build(examples)
    assert vocabs.tags.row("never") == TAG_UNKNOWN_ROW
    assert {vocabs.tags.row(t) for t in ("cats", "pets", "cars")} == {2, 3, 4}
    batch = encode(vocabs, examples)
    assert batch.tags.shape == (2, 8)
    assert batch.tags[0, 2:].tolist() == [TAG_PAD_ROW] * 6
    assert batch.users.tolist() == [vocabs.users.row("u")] * 2
    assert vocabs.users.row("u") != UNKNOWN_ROW


def test_a_viewing_is_labelled_by_what_followed_its_play() -> None:
    events = [
        LoggedEvent(T0, "u", "a", "play", 21_000),
        LoggedEvent(T0 + 1, "u", "a", "finish", None),
        LoggedEvent(T0 + 2, "u", "a", "like", None),
        LoggedEvent(T0 + 3, "u", "a", "follow", None),
        LoggedEvent(T0 + 30, "u", "c", "play", 900),
        LoggedEvent(T0 + 31, "u", "c", "skip", None),
        LoggedEvent(T0 + 60, "u", "d", "play", 12_000),
        LoggedEvent(T0 + 5000, "u", "d", "share", None),  # outside the label window
        LoggedEvent(T0 + 5001, "u", "b", "like", None),  # no play: not a viewing
    ]
    examples = build(events)
    assert examples.item_ids == ["a", "c", "d"]
    assert examples.label("watch_ratio").tolist() == pytest.approx([1.0, 0.045, 0.6])
    assert examples.label("finish").tolist() == [1, 0, 0]
    assert examples.label("like").tolist() == [1, 0, 0]
    assert examples.label("follow").tolist() == [1, 0, 0]
    assert examples.label("quick_skip").tolist() == [0, 1, 0]
    assert examples.label("share").tolist() == [0, 0, 0]
    assert examples.label("long_watch").tolist() == [1, 0, 1]


def test_a_label_never_reaches_its_own_features() -> None:
    """The same viewing, with and without its engagements: identical features."""
    play = LoggedEvent(T0 + 100, "u", "b", "play", 20_000)
    history = [
        LoggedEvent(T0, "u", "a", "play", 18_000),
        LoggedEvent(T0 + 5, "v", "b", "play", 500),
    ]
    engaged = [
        LoggedEvent(T0 + 101, "u", "b", "finish", None),
        LoggedEvent(T0 + 102, "u", "b", "like", None),
        LoggedEvent(T0 + 103, "u", "b", "share", None),
        LoggedEvent(T0 + 104, "u", "b", "follow", None),
    ]
    with_labels = build([*history, play, *engaged])
    without = build([*history, play])
    assert with_labels.label("like")[-1] == 1
    np.testing.assert_array_equal(with_labels.numeric[-1], without.numeric[-1])
    row = with_labels.numeric[-1]
    assert row[COL["follows_creator"]] == 0.0, "the follow came after the play"
    assert row[COL["log_item_plays"]] == pytest.approx(np.log1p(1)), "only v's earlier play"
    # v quick-skipped b before: one play, no finish yet, so b's finish rate is below the prior.
    assert row[COL["item_finish_rate"]] == pytest.approx(5 * RATES.finish / 6)
    assert row[COL["creator_affinity"]] > 0, "u watched ana's other video"


def test_every_example_sees_exactly_the_log_before_its_play() -> None:
    """Replaying only the events before a play gives that play's example the same features."""
    rng = random.Random(3)
    kinds = ["play", "play", "play", "finish", "like", "skip", "share", "follow", "not_interested"]
    events = []
    for k in range(120):
        kind = rng.choice(kinds)
        events.append(
            LoggedEvent(
                T0 + k * 7.0,
                f"u{rng.randrange(4)}",
                rng.choice("abcd"),
                kind,
                rng.randrange(0, 40_000) if kind == "play" else None,
            )
        )
    full = build(events)
    plays = [k for k, e in enumerate(events) if e.type == "play"]
    assert len(full) == len(plays)
    for n, k in enumerate(plays):
        prefix = build(events[: k + 1])
        np.testing.assert_allclose(prefix.numeric[-1], full.numeric[n], rtol=1e-6, atol=1e-7)


def test_affinity_replay_matches_the_online_state_rule() -> None:
    item = ITEMS["a"]
    cases = [("play", 500), ("play", 15_000), ("play", None), ("like", None), ("skip", None)]
    for kind, watch in [*cases, ("not_interested", None), ("follow", None)]:
        event = Event(
            event_id="e1", user_id="u", item_id="a", type=kind, ts=from_epoch(T0), watch_ms=watch
        )
        [logged] = from_events([event])
        assert affinity_delta(POLICY, logged, item) == POLICY.affinity_delta(event, item)


def test_serving_features_equal_the_training_features_for_the_same_history(
    engine: Engine, make_item: Any, make_user: Any, make_event: Any, clock: Any, now: float
) -> None:
    """Ingest a history, then ask the engine's state for features: the replay gives the same."""
    engine.put_items(
        [
            make_item("s1", "ana", tags=["cats", "pets"], duration_s=20),
            make_item("s2", "ana", tags=["cats"], duration_s=40),
            make_item("s3", "bo", tags=["cars"], duration_s=15),
        ]
    )
    engine.put_users([make_user("viewer"), make_user("other")])
    history = [
        make_event("viewer", "s1", "play", ts=now - 7200, watch_ms=19_000),
        make_event("viewer", "s1", "like", ts=now - 7190),
        make_event("other", "s2", "play", ts=now - 5000, watch_ms=40_000),
        make_event("other", "s2", "finish", ts=now - 4990),
        make_event("viewer", "s3", "play", ts=now - 3600, watch_ms=700),
        make_event("viewer", "s3", "skip", ts=now - 3599),
        make_event("viewer", "s3", "follow", ts=now - 3590),
    ]
    assert engine.ingest(history).accepted == len(history)
    handle = engine.gate.open("us", Principal.service("us"), "serve_feed")
    state = handle.state.hydrate("viewer", now)
    records = engine.catalog.get_items(["s2", "s3"])
    stats = handle.stats.stats(["s2", "s3"])
    served = serving_numeric(
        [records["s2"], records["s3"]], [stats.get("s2"), stats.get("s3")], state, now, RATES, 5.0
    )
    items = engine.catalog.get_items(["s1", "s2", "s3"])
    for row, item_id in enumerate(["s2", "s3"]):
        # The viewer plays the candidate now: that example's features are what serving saw.
        logged = [*from_events(history), LoggedEvent(now, "viewer", item_id, "play", 1000)]
        replayed = build_examples(
            logged, items, POLICY, RATES, prior_plays=5.0, label_window_s=600.0
        )
        np.testing.assert_allclose(served[row], replayed.numeric[-1], rtol=1e-5, atol=1e-6)
    assert served[1, COL["follows_creator"]] == 1.0
    assert served[0, COL["creator_affinity"]] > 0, "the viewer watched and liked ana's s1"
    assert served[0, COL["log_item_plays"]] == pytest.approx(np.log1p(1))
