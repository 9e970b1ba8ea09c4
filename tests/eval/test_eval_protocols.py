"""Evaluation protocols: partition, recency and determinism properties, checked with Hypothesis.

Every generated log carries its row number in ``extra["row"]``, so a part's rows can be traced
back to the input whatever the protocol did.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fyp.eval.data import Dataset, Interactions, Split
from fyp.eval.protocols import describe, given_split, global_temporal, leave_last_n_out

MAX_USERS = 6
MAX_ITEMS = 8


def _log(
    users: list[int], items: list[int], times: list[float] | None, n_users: int, n_items: int
) -> Interactions:
    return Interactions(
        user=np.array(users, dtype=np.int64),
        item=np.array(items, dtype=np.int64),
        user_labels=[f"u{i}" for i in range(n_users)],
        item_labels=[f"i{i}" for i in range(n_items)],
        timestamp=None if times is None else np.array(times, dtype=np.float64),
        extra={"row": np.arange(len(users), dtype=np.int64)},
    )


@st.composite
def logs(draw: st.DrawFn, timestamps: bool = True) -> Interactions:
    """A small log; timestamps come from a narrow range so that ties are common."""
    n_users = draw(st.integers(1, MAX_USERS))
    n_items = draw(st.integers(1, MAX_ITEMS))
    size = draw(st.integers(0, 40))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=size, max_size=size))
    items = draw(st.lists(st.integers(0, n_items - 1), min_size=size, max_size=size))
    times = (
        draw(st.lists(st.integers(0, 12).map(float), min_size=size, max_size=size))
        if timestamps
        else None
    )
    return _log(users, items, times, n_users, n_items)


def _rows(part: Interactions | None) -> list[int]:
    assert part is not None
    return [int(r) for r in part.extra["row"]]


def _check_partition(split: Split, log: Interactions) -> None:
    """Train and test partition the rows; validation and train_for_validation partition train;
    every part shares the log's id spaces and keeps its row order."""
    train, test = _rows(split.train), _rows(split.test)
    assert sorted(train + test) == list(range(len(log)))
    for part in (split.train, split.test, split.validation, split.train_for_validation):
        if part is not None:
            assert part.user_labels is log.user_labels and part.item_labels is log.item_labels
            assert _rows(part) == sorted(_rows(part))
    if split.validation is not None:
        assert sorted(_rows(split.validation) + _rows(split.train_for_validation)) == train


def _by_user(part: Interactions | None) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    if part is not None:
        for user, row in zip(part.user.tolist(), _rows(part), strict=True):
            out[user].append(row)
    return out


def _latest_first(log: Interactions, rows: list[int]) -> list[int]:
    """Rows from latest to earliest: by timestamp, then row order (row order alone without)."""
    times = log.timestamp
    return sorted(rows, key=lambda r: (0.0 if times is None else times[r], r), reverse=True)


# ---- leave-last-n-out ----------------------------------------------------------------------------


@given(
    log=st.one_of(logs(), logs(timestamps=False)),
    n=st.integers(1, 3),
    validation=st.booleans(),
    min_train=st.integers(0, 3),
)
def test_leave_last_n_out_holds_out_the_latest(
    log: Interactions, n: int, validation: bool, min_train: int
) -> None:
    split = leave_last_n_out(log, n=n, validation=validation, min_train=min_train)
    _check_partition(split, log)
    assert split.protocol == f"leave-last-{n}-out"
    assert (split.validation is not None) == validation
    everything = _by_user(log)
    test, valid = _by_user(split.test), _by_user(split.validation)
    held = 2 * n if validation else n
    for user, rows in everything.items():
        latest = _latest_first(log, rows)
        if len(rows) >= min_train + held:
            assert sorted(test[user]) == sorted(latest[:n])
            if validation:
                assert sorted(valid[user]) == sorted(latest[n : 2 * n])
        else:
            assert user not in test and user not in valid
    assert describe(split)["users_evaluated"] == len(test)


@given(log=logs(), n=st.integers(1, 2), validation=st.booleans())
def test_leave_last_n_out_never_tests_the_past(log: Interactions, n: int, validation: bool) -> None:
    split = leave_last_n_out(log, n=n, validation=validation)
    times = log.timestamp
    assert times is not None

    def latest(part: Interactions | None, user: int) -> float:
        rows = _by_user(part).get(user, [])
        return max((times[r] for r in rows), default=-np.inf)

    def earliest(part: Interactions | None, user: int) -> float:
        rows = _by_user(part).get(user, [])
        return min((times[r] for r in rows), default=np.inf)

    for user in range(log.n_users):
        assert earliest(split.test, user) >= latest(split.train, user)
        if validation:
            assert earliest(split.validation, user) >= latest(split.train_for_validation, user)
            assert earliest(split.test, user) >= latest(split.validation, user)


def test_leave_last_n_out_rejects_bad_arguments() -> None:
    log = _log([0], [0], [1.0], 1, 1)
    with pytest.raises(ValueError):
        leave_last_n_out(log, n=0)
    with pytest.raises(ValueError):
        leave_last_n_out(log, min_train=-1)


def test_leave_last_one_out_example() -> None:
    # u0: four rows (times 5, 1, 3, 3 -> the tie at 3 is broken by row order); u1: too few.
    log = _log([0, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5], [5, 1, 0, 3, 3, 1], 2, 6)
    split = leave_last_n_out(log, n=1, validation=True)
    assert _rows(split.test) == [0]
    assert _rows(split.validation) == [4]
    assert _rows(split.train_for_validation) == [1, 2, 3, 5]
    assert _rows(split.train) == [1, 2, 3, 4, 5]


# ---- global temporal -----------------------------------------------------------------------------


@given(
    log=logs(),
    test_fraction=st.floats(0.05, 0.5),
    validation_fraction=st.sampled_from([0.0, 0.1, 0.25]),
)
def test_global_temporal_cuts_by_time(
    log: Interactions, test_fraction: float, validation_fraction: float
) -> None:
    split = global_temporal(log, test_fraction, validation_fraction)
    _check_partition(split, log)
    times = log.timestamp
    assert times is not None

    def span(part: Interactions | None) -> tuple[float, float]:
        values = [times[r] for r in _rows(part)]
        return min(values, default=np.inf), max(values, default=-np.inf)

    # One cut time: every training row is strictly earlier than every test row.
    assert span(split.train)[1] < span(split.test)[0]
    if len(log):
        assert len(split.train) > 0  # the earliest instant is never cut off
        assert len(split.test) >= min(round(len(log) * test_fraction), _after_first(times))
    if validation_fraction:
        assert split.validation is not None
        assert span(split.train_for_validation)[1] < span(split.validation)[0]
    else:
        assert split.validation is None and split.train_for_validation is None


def _after_first(times: np.ndarray) -> int:
    """Rows later than the earliest instant: the most any cut can take."""
    return int(np.count_nonzero(times > times.min()))


def test_global_temporal_example_and_errors() -> None:
    log = _log([0] * 10, list(range(10)), [float(t) for t in range(10)], 1, 10)
    split = global_temporal(log, test_fraction=0.2, validation_fraction=0.1)
    assert _rows(split.test) == [8, 9]
    assert _rows(split.validation) == [7]
    assert _rows(split.train_for_validation) == list(range(7))
    with pytest.raises(ValueError, match="timestamps"):
        global_temporal(_log([0], [0], None, 1, 1))
    with pytest.raises(ValueError):
        global_temporal(log, test_fraction=0.8, validation_fraction=0.3)
    with pytest.raises(ValueError):
        global_temporal(log, test_fraction=0.0)


# ---- given split ---------------------------------------------------------------------------------


def _given(log: Interactions, test_share: float, seed: int) -> Dataset:
    """A dataset whose 'given' test is a random share of the log's rows."""
    test = np.random.default_rng(seed).random(len(log)) < test_share
    split = Split(protocol="given", train=log.take(~test), test=log.take(test))
    return Dataset(name="given", interactions=log, given_split=split)


@given(
    log=logs(timestamps=False),
    test_share=st.floats(0.0, 0.5),
    seed=st.integers(0, 3),
)
def test_given_split_carves_validation_deterministically(
    log: Interactions, test_share: float, seed: int
) -> None:
    dataset = _given(log, test_share, seed=99)
    split = given_split(dataset, seed=seed)
    assert split.train is dataset.given_split.train  # type: ignore[union-attr]
    assert split.test is dataset.given_split.test  # type: ignore[union-attr]
    _check_partition(split, log)
    again = given_split(dataset, seed=seed)
    assert _rows(again.validation) == _rows(split.validation)
    assert not set(_rows(split.validation)) & set(_rows(split.test))
    train, valid, rest = split.train, split.validation, split.train_for_validation
    assert valid is not None and rest is not None
    valid_pairs = set(zip(valid.user.tolist(), valid.item.tolist(), strict=True))
    rest_pairs = set(zip(rest.user.tolist(), rest.item.tolist(), strict=True))
    assert not valid_pairs & rest_pairs  # a held-out pair is held out entirely
    for user in range(log.n_users):
        distinct = len(set(train.item[train.user == user].tolist()))
        held = len({i for u, i in valid_pairs if u == user})
        if distinct >= 2:
            assert 1 <= held <= max(1, distinct // 10)
        else:
            assert held == 0


def test_given_split_seeds_differ_and_existing_validation_is_kept() -> None:
    users = [u for u in range(20) for _ in range(30)]
    items = [i for _ in range(20) for i in range(30)]
    log = _log(users, items, None, 20, 30)
    dataset = _given(log, 0.2, seed=1)
    first, second = given_split(dataset, seed=0), given_split(dataset, seed=1)
    assert _rows(first.validation) != _rows(second.validation)
    assert given_split(Dataset("x", log, given_split=first)) is first
    with pytest.raises(ValueError, match="no given split"):
        given_split(Dataset("plain", log))


# ---- describe ------------------------------------------------------------------------------------


def test_describe_counts() -> None:
    # u0: items 0, 1, then 1 again (a repeat) and 2; u1 only in test, on an unseen item 3.
    log = _log([0, 0, 0, 0, 1], [0, 1, 1, 2, 3], [1.0, 2.0, 3.0, 4.0, 5.0], 3, 5)
    test = np.array([False, False, True, True, True])
    split = Split(protocol="given", train=log.take(~test), test=log.take(test))
    report = describe(split)
    assert report["protocol"] == "given"
    assert (report["n_users"], report["n_items"]) == (3, 5)
    assert report["train"] == {
        "users": 1,
        "items": 2,
        "interactions": 2,
        "time_min": 1.0,
        "time_max": 2.0,
    }
    assert report["test"]["interactions"] == 3 and report["test"]["users"] == 2
    assert "validation" not in report
    assert report["users_evaluated"] == 2
    assert report["test_users_without_train"] == 1
    assert report["test_rows_unseen_item"] == 2
    assert report["test_rows_repeating_train"] == 1
