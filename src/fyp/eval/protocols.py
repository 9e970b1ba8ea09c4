"""Evaluation protocols: ways to cut a dataset's interactions into train / validation / test.

Every protocol returns a :class:`~fyp.eval.data.Split` over the input's id spaces whose parts
partition the rows: ``train`` is what the scored model is finally fit on, ``test`` what it is
scored against; ``validation`` (when present) is carved from ``train`` and
``train_for_validation`` is ``train`` without it, the pair used for tuning. Each part keeps the
input's row order.

* :func:`leave_last_n_out`: per user, the latest ``n`` interactions are the test (sequential
  recommendation's usual protocol).
* :func:`global_temporal`: one moment in time separates the past (train) from the future (test),
  as in production.
* :func:`given_split`: the dataset's own split, with a validation part carved from its training
  part when the dataset has none.
* :func:`cold_items`: a seeded share of the items is held out entirely (every interaction with
  them is test); models rank only those items, which none of them saw in training.

:func:`describe` summarizes a split for reports.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fyp.eval.data import Dataset, FloatArray, IntArray, Interactions, ItemFeatures, Split

__all__ = [
    "cold_items",
    "describe",
    "given_split",
    "global_temporal",
    "leave_last_n_out",
    "shuffle_item_ids",
]

BoolArray = npt.NDArray[np.bool_]


def _mask(n: int, rows: IntArray) -> BoolArray:
    out = np.zeros(n, dtype=np.bool_)
    out[rows] = True
    return out


def _rank_within_user(user: IntArray, order: IntArray, n_users: int) -> tuple[IntArray, IntArray]:
    """For rows visited in ``order`` (grouped by user): each visited row's position within its
    user's group, and each user's group size."""
    counts = np.bincount(user, minlength=n_users).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    position = np.arange(len(order), dtype=np.int64) - starts[user[order]]
    return position, counts


def _split(
    protocol: str, interactions: Interactions, test: BoolArray, validation: BoolArray | None
) -> Split:
    return Split(
        protocol=protocol,
        train=interactions.take(~test),
        test=interactions.take(test),
        validation=None if validation is None else interactions.take(validation),
        train_for_validation=None if validation is None else interactions.take(~test & ~validation),
    )


def leave_last_n_out(
    interactions: Interactions, n: int = 1, validation: bool = True, min_train: int = 1
) -> Split:
    """Per user, the latest ``n`` interactions go to test and (``validation``) the ``n`` before
    them to validation; the rest is ``train_for_validation``.

    "Latest" is by ``timestamp``, ties broken by row order; without timestamps, row order alone
    (meaningful only when rows are in time order per user). A user is held out from only when it
    has at least ``min_train + n`` interactions (``min_train + 2n`` with validation); other users
    keep every interaction in train and are simply not evaluated. ``train`` is
    ``train_for_validation`` plus ``validation``: the final model sees everything but the test.

    A test interaction may repeat an item the user already had in train (re-consumption);
    metrics that exclude training items cannot credit it.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if min_train < 0:
        raise ValueError(f"min_train must be non-negative, not {min_train}")
    rows = np.arange(len(interactions), dtype=np.int64)
    user = interactions.user
    keys = (rows, user) if interactions.timestamp is None else (rows, interactions.timestamp, user)
    order = np.lexsort(keys).astype(np.int64)
    position, counts = _rank_within_user(user, order, interactions.n_users)
    size = counts[user[order]]
    from_end = size - 1 - position
    held = 2 * n if validation else n
    eligible = size >= min_train + held
    test = _mask(len(rows), order[eligible & (from_end < n)])
    valid = _mask(len(rows), order[eligible & (from_end >= n) & (from_end < 2 * n)])
    name = f"leave-last-{n}-out"
    return _split(name, interactions, test, valid if validation else None)


def _cut_time(sorted_ts: FloatArray, fraction: float) -> float:
    """The earliest time such that rows at or after it make about ``fraction`` of all rows, but
    never the very first time (train would be empty); ``inf`` when no row should be cut."""
    count = round(len(sorted_ts) * fraction)
    if count <= 0:
        return math.inf
    cut = float(sorted_ts[len(sorted_ts) - count])
    if cut <= sorted_ts[0]:
        # Ties at the first instant: move the cut to the next distinct time, if any.
        later = sorted_ts[sorted_ts > sorted_ts[0]]
        cut = float(later[0]) if len(later) else math.inf
    return cut


def global_temporal(
    interactions: Interactions, test_fraction: float = 0.2, validation_fraction: float = 0.1
) -> Split:
    """One cut time for everyone: interactions at or after it are the test, about the last
    ``test_fraction`` of all rows; a second, earlier cut takes about the ``validation_fraction``
    of all rows before the test as validation (``validation_fraction=0``: no validation).

    Cuts are times, not row counts, so rows sharing a timestamp stay together and the parts can be
    somewhat larger than the fractions when timestamps tie (:func:`describe` tells the actual
    sizes); the earliest timestamp is never cut off, so train is not empty. Test interactions of
    users or items with no training interactions are kept, as they would be in production:
    metrics and models decide what to do with them (:func:`describe` counts them). Requires
    timestamps.
    """
    if interactions.timestamp is None:
        raise ValueError("global_temporal needs timestamps; these interactions have none")
    if not 0 < test_fraction < 1 or not 0 <= validation_fraction < 1:
        raise ValueError("fractions must lie in [0, 1) and test_fraction must be positive")
    if test_fraction + validation_fraction >= 1:
        raise ValueError("test_fraction + validation_fraction must be below 1")
    ts = interactions.timestamp
    sorted_ts = np.sort(ts)
    test_cut = _cut_time(sorted_ts, test_fraction) if len(ts) else math.inf
    test = ts >= test_cut
    name = "global-temporal"
    if validation_fraction == 0:
        return _split(name, interactions, test, None)
    validation_cut = (
        min(_cut_time(sorted_ts, test_fraction + validation_fraction), test_cut)
        if len(ts)
        else math.inf
    )
    return _split(name, interactions, test, (ts >= validation_cut) & ~test)


def given_split(dataset: Dataset, seed: int = 0, validation_fraction: float = 0.1) -> Split:
    """The dataset's own split; when it has no validation part, one is carved from its train.

    Carving: for every user with at least 2 distinct training items, a seeded random
    ``validation_fraction`` of those items (rounded down, at least 1) is held out; all training
    rows of a held-out (user, item) pair go to validation, so a validation item is never also in
    ``train_for_validation``. ``train`` and ``test`` stay the dataset's, so validation is
    disjoint from the test. The same seed gives the same carving. Raises :class:`ValueError` for a
    dataset without a given split.
    """
    split = dataset.given_split
    if split is None:
        raise ValueError(
            f"dataset {dataset.name!r} has no given split; use leave_last_n_out or global_temporal"
        )
    if split.validation is not None:
        return split
    kept, held = random_holdout(split.train, validation_fraction, seed)
    return Split(
        protocol=split.protocol,
        train=split.train,
        test=split.test,
        validation=held,
        train_for_validation=kept,
    )


def _hold_items(items: IntArray, fraction: float, rng: np.random.Generator) -> IntArray:
    count = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
    return np.sort(rng.choice(items, size=count, replace=False)).astype(np.int64)


def cold_items(
    interactions: Interactions,
    fraction: float = 0.2,
    seed: int = 0,
    validation_fraction: float = 0.2,
) -> Split:
    """Item cold start: a seeded random ``fraction`` of the items that have interactions is held
    out entirely; all their interactions are the test and none is in train, so to every model
    they are new items. ``candidates`` lists them: the test ranks only those items (a model
    that knows nothing about unseen items can do no better than chance there).

    The validation part is built the same way inside train: a seeded ``validation_fraction`` of
    the remaining items is held out of ``train_for_validation`` entirely
    (``validation_candidates``), so a model tuning itself is tuned for cold start too.
    ``train`` keeps every interaction with a non-test item. The same seed gives the same split.
    """
    if not 0 < fraction < 1 or not 0 <= validation_fraction < 1:
        raise ValueError("fraction must lie in (0, 1) and validation_fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    present = np.unique(interactions.item).astype(np.int64)
    held = _hold_items(present, fraction, rng)
    test = np.isin(interactions.item, held)
    remaining = np.setdiff1d(present, held)
    validation_items = (
        _hold_items(remaining, validation_fraction, rng)
        if validation_fraction > 0
        else np.zeros(0, np.int64)
    )
    validation = np.isin(interactions.item, validation_items) & ~test
    split = _split("cold-items", interactions, test, validation if validation_fraction else None)
    return Split(
        protocol=split.protocol,
        train=split.train,
        test=split.test,
        validation=split.validation,
        train_for_validation=split.train_for_validation,
        candidates=held,
        validation_candidates=validation_items if validation_fraction else None,
    )


def shuffle_item_ids(dataset: Dataset, seed: int = 0) -> Dataset:
    """The same dataset with its item indices permuted (seeded): interactions, labels and item
    features move together; a given split is dropped.

    Dense item indices are assigned in order of first appearance in the files, so they carry
    information (on TikTok, a held-out item's index correlates with its test popularity at
    Spearman -0.68). A model that cannot tell items apart ranks them in index order; on new
    items that order would pass for a signal. Cold-start protocols run on shuffled ids, so ties
    are broken at random.
    """
    log = dataset.interactions
    n = log.n_items
    new_of_old = np.random.default_rng(seed).permutation(n).astype(np.int64)
    old_of_new = np.argsort(new_of_old)
    labels = [log.item_labels[int(i)] for i in old_of_new]
    shuffled = Interactions(
        user=log.user,
        item=new_of_old[log.item],
        user_labels=log.user_labels,
        item_labels=labels,
        timestamp=log.timestamp,
        weight=log.weight,
        extra=log.extra,
    )
    items = dataset.items
    if items is not None:

        def move(values: Any, missing: Any) -> Any:
            if values is None:
                return None
            full = list(values) + [missing] * (n - len(values))
            return [full[int(i)] for i in old_of_new]

        items = ItemFeatures(
            text=move(items.text, ""),
            tags=move(items.tags, []),
            creator=move(items.creator, ""),
            vectors={k: np.asarray(v)[old_of_new] for k, v in items.vectors.items()},
        )
    return Dataset(
        name=dataset.name,
        interactions=shuffled,
        given_split=None,
        items=items,
        description=dataset.description,
    )


def random_holdout(
    interactions: Interactions, fraction: float = 0.1, seed: int = 0
) -> tuple[Interactions, Interactions]:
    """Hold out, per user with at least 2 distinct items, a seeded random ``fraction`` of those
    items (rounded down, at least 1); returns ``(kept, held_out)``.

    Whole (user, item) pairs move: all rows of a held-out pair are held out, so a held-out item is
    never also among the user's kept items. The same seed gives the same holdout.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), not {fraction}")
    # Pairs rather than rows: a repeated pair split across the parts would hide the answer.
    pair_key = interactions.user.astype(np.int64) * max(interactions.n_items, 1) + interactions.item
    pairs, row_pair = np.unique(pair_key, return_inverse=True)
    pair_user = (pairs // max(interactions.n_items, 1)).astype(np.int64)
    draw = np.random.default_rng(seed).random(len(pairs))
    order = np.lexsort((draw, pair_user)).astype(np.int64)
    position, counts = _rank_within_user(pair_user, order, interactions.n_users)
    quota = np.where(counts >= 2, np.maximum(1, np.floor(counts * fraction)), 0)
    held_pairs = _mask(len(pairs), order[position < quota[pair_user[order]]])
    held = held_pairs[row_pair.reshape(-1)]
    return interactions.take(~held), interactions.take(held)


def _part_counts(part: Interactions) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "users": int(np.unique(part.user).size),
        "items": int(np.unique(part.item).size),
        "interactions": len(part),
    }
    if part.timestamp is not None and len(part):
        counts["time_min"] = float(part.timestamp.min())
        counts["time_max"] = float(part.timestamp.max())
    return counts


def describe(split: Split) -> dict[str, Any]:
    """Counts for reports, JSON-ready.

    Keys: ``protocol``; ``n_users``/``n_items`` (the id spaces); per part present (``train``,
    ``test``, ``validation``, ``train_for_validation``) its distinct ``users``, ``items``,
    ``interactions`` and, with timestamps, ``time_min``/``time_max``; ``users_evaluated`` (users
    with a test interaction) and ``validation_users_evaluated``; ``test_users_without_train``
    (evaluated users with no training row), ``test_rows_unseen_item`` (test rows whose item has no
    training row) and ``test_rows_repeating_train`` (test rows whose (user, item) pair is also in
    train, which metrics excluding training items cannot credit).
    """
    train, test = split.train, split.test
    out: dict[str, Any] = {
        "protocol": split.protocol,
        "n_users": train.n_users,
        "n_items": train.n_items,
    }
    parts = {
        "train": train,
        "test": test,
        "validation": split.validation,
        "train_for_validation": split.train_for_validation,
    }
    for name, part in parts.items():
        if part is not None:
            out[name] = _part_counts(part)
    out["users_evaluated"] = out["test"]["users"]
    if split.validation is not None:
        out["validation_users_evaluated"] = out["validation"]["users"]
    train_users = np.bincount(train.user, minlength=train.n_users) > 0
    train_items = np.bincount(train.item, minlength=train.n_items) > 0
    out["test_users_without_train"] = int(
        np.count_nonzero(~train_users[np.unique(test.user)]) if len(test) else 0
    )
    out["test_rows_unseen_item"] = int(np.count_nonzero(~train_items[test.item]))
    width = max(train.n_items, 1)
    train_pairs = np.unique(train.user.astype(np.int64) * width + train.item)
    test_pairs = test.user.astype(np.int64) * width + test.item
    out["test_rows_repeating_train"] = int(np.count_nonzero(np.isin(test_pairs, train_pairs)))
    if split.candidates is not None:
        out["candidate_items"] = len(split.candidates)
    return out
