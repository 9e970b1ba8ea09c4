"""The learned source's score as a ranker input is point in time: ALS fit on the events before the
cutoff only, and only the viewings from the cutoff on are scored."""

from __future__ import annotations

import random

import numpy as np

from fyp.config import FypConfig, TrainingConfig
from fyp.engine import fold_policy
from fyp.models.ranker_data import (
    NUMERIC_FEATURES,
    BaseRates,
    ExampleSet,
    LoggedEvent,
    build_examples,
)
from fyp.models.ranker_retrieval import als_scores_before
from fyp.storage.roles import ItemRecord

T0 = 1_700_000_000.0
ITEMS = {
    f"i{k}": ItemRecord(f"i{k}", f"c{k % 3}", T0 - 86_400, 20.0, "", (f"t{k % 2}",), None, ())
    for k in range(12)
}
SCORE = NUMERIC_FEATURES.index("als_score")
HAS = NUMERIC_FEATURES.index("has_als_score")
CONFIG = TrainingConfig(factors=4, iterations=5)


def log(seed: int, n: int = 400) -> list[LoggedEvent]:
    rng = random.Random(seed)
    events = []
    for k in range(n):
        user, item = f"u{rng.randrange(8)}", f"i{rng.randrange(12)}"
        events.append(LoggedEvent(T0 + 10.0 * k, user, item, "play", rng.randrange(500, 30_000)))
        if rng.random() < 0.3:
            events.append(LoggedEvent(T0 + 10.0 * k + 1, user, item, "like", None))
    return events


def examples_of(events: list[LoggedEvent]) -> ExampleSet:
    return build_examples(
        events, ITEMS, fold_policy(FypConfig()), BaseRates(), prior_plays=5.0, label_window_s=60.0
    )


def test_only_viewings_from_the_cutoff_on_are_scored() -> None:
    events = log(1)
    examples = examples_of(events)
    cutoff = float(np.median(examples.ts))
    scored = als_scores_before(events, ITEMS, examples, CONFIG, cutoff)
    before = examples.ts < cutoff
    assert scored == int((~before).sum()) > 0
    assert (examples.numeric[before, HAS] == 0).all()
    assert (examples.numeric[before, SCORE] == 0).all()
    assert (examples.numeric[~before, HAS] == 1).all()
    assert np.abs(examples.numeric[~before, SCORE]).sum() > 0


def test_events_after_the_cutoff_do_not_change_any_score() -> None:
    events = log(2)
    cutoff = T0 + 10.0 * 200
    changed = [
        e if e.ts < cutoff else e._replace(type="like" if e.type == "play" else "not_interested")
        for e in events
    ]
    changed = [e._replace(watch_ms=None) if e.type != "play" else e for e in changed]
    first, second = examples_of(events), examples_of(events)
    als_scores_before(events, ITEMS, first, CONFIG, cutoff)
    als_scores_before(changed, ITEMS, second, CONFIG, cutoff)
    np.testing.assert_array_equal(first.numeric[:, SCORE], second.numeric[:, SCORE])
