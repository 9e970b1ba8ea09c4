"""Experiment arms: stable, weighted, independent splits; intervals that cover as claimed."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.errors import InvalidInput
from fyp.online.arms import ArmResults, Experiment, assign, wilson

USERS = [f"user-{n}" for n in range(40_000)]


def test_a_viewer_always_lands_in_the_same_arm() -> None:
    experiment = Experiment("ranker-v2", {"control": 1.0, "treatment": 1.0})
    first = [assign(experiment, u) for u in USERS[:2000]]
    assert first == [assign(experiment, u) for u in USERS[:2000]]


def test_arms_get_traffic_by_weight() -> None:
    experiment = Experiment("weights", {"a": 1.0, "b": 3.0, "c": 6.0})
    shares = Counter(assign(experiment, u) for u in USERS)
    for arm, expected in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert shares[arm] / len(USERS) == pytest.approx(expected, abs=0.01)


def test_experiments_split_independently() -> None:
    one = Experiment("one", {"x": 1.0, "y": 1.0})
    two = Experiment("two", {"x": 1.0, "y": 1.0})
    both = sum(assign(one, u) == "x" and assign(two, u) == "x" for u in USERS) / len(USERS)
    assert both == pytest.approx(0.25, abs=0.01)


@given(name=st.text(min_size=1, max_size=20), user=st.text(max_size=40))
def test_every_viewer_gets_one_of_the_arms(name: str, user: str) -> None:
    experiment = Experiment(name, {"a": 0.5, "b": 2.0})
    assert assign(experiment, user) in {"a", "b"}


def test_bad_experiments_are_refused() -> None:
    with pytest.raises(InvalidInput):
        Experiment("x", {})
    with pytest.raises(InvalidInput):
        Experiment("x", {"a": 0.0})
    with pytest.raises(InvalidInput):
        ArmResults("watch_s").add("a", math.inf)


def test_rate_intervals_cover_the_true_rate_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(4)
    covered = 0
    trials = 1000
    for _ in range(trials):
        p = rng.uniform(0.05, 0.6)
        n = int(rng.integers(50, 400))
        est = wilson(float(rng.binomial(n, p)), n)
        covered += est.low <= p <= est.high
    assert 0.93 <= covered / trials <= 0.97


def test_mean_intervals_and_the_difference_of_two_arms() -> None:
    rng = np.random.default_rng(5)
    results = ArmResults("watch_s")
    for value in rng.normal(20.0, 5.0, 4000):
        results.add("control", float(value))
    for value in rng.normal(21.0, 5.0, 4000):
        results.add("treatment", float(value))
    summary = results.summary()
    se = 5.0 / math.sqrt(4000)
    for arm, true_mean in (("control", 20.0), ("treatment", 21.0)):
        est = summary[arm]
        assert abs(est.mean - true_mean) < 4 * se
        # A 95 % interval of the mean: half-width 1.96 standard errors.
        assert (est.high - est.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    diff = results.difference("treatment", "control")
    assert diff.low < 1.0 < diff.high and diff.low > 0  # a real effect, detected
    # No effect: the interval of the difference holds 0 about 95 % of the time.
    holds = 0
    for k in range(300):
        same = ArmResults("finish")
        for value in rng.binomial(1, 0.3, 300):
            same.add("a", float(value))
        for value in rng.binomial(1, 0.3, 300):
            same.add("b", float(value))
        d = same.difference("a", "b")
        holds += d.low <= 0.0 <= d.high
        assert same.estimate("a").n == 300 and k >= 0
    assert 0.91 <= holds / 300 <= 0.99


def test_binary_metrics_use_the_rate_interval() -> None:
    results = ArmResults("finish")
    for value in (1, 0, 0, 1, 1):
        results.add("a", value)
    assert results.estimate("a") == wilson(3, 5)
