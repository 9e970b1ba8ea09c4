"""The data model every part of the evaluation harness speaks.

Loaders turn a dataset's native files into a :class:`Dataset`; protocols cut its
:class:`Interactions` into a :class:`Split` (train / validation / test over the same id spaces);
models and baselines are fit on ``train`` and asked for top-K lists that ``metrics`` score
against ``test``. Ids are dense integers (row = user index, column = item index); the original
labels are kept for reports and for writing recommendations back out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Interactions:
    """An implicit-feedback log: one row per (user, item) interaction, in log order.

    ``timestamp`` is seconds (or any monotone order key) when the source has one; ``weight`` is
    the interaction's strength (a rating, a listen count, a watch-based preference) when it has
    one. ``user_labels`` / ``item_labels`` map dense indices back to the source's ids and define
    the id spaces (``n_users`` / ``n_items``), which may include users or items without rows here.
    """

    user: IntArray
    item: IntArray
    user_labels: Sequence[str]
    item_labels: Sequence[str]
    timestamp: FloatArray | None = None
    weight: FloatArray | None = None
    extra: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)
    """Optional per-row columns (``watch_ratio``, ``duration``, ``event``) kept for rankers."""

    def __post_init__(self) -> None:
        n = len(self.user)
        if len(self.item) != n:
            raise ValueError("user and item columns differ in length")
        for name, column in (("timestamp", self.timestamp), ("weight", self.weight)):
            if column is not None and len(column) != n:
                raise ValueError(f"{name} column differs in length")
        for name, column in self.extra.items():
            if len(column) != n:
                raise ValueError(f"extra column {name!r} differs in length")

    @property
    def n_users(self) -> int:
        return len(self.user_labels)

    @property
    def n_items(self) -> int:
        return len(self.item_labels)

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: IntArray | npt.NDArray[np.bool_]) -> Interactions:
        """The interactions at ``rows`` (indices or a mask), same id spaces."""
        return replace(
            self,
            user=self.user[rows],
            item=self.item[rows],
            timestamp=None if self.timestamp is None else self.timestamp[rows],
            weight=None if self.weight is None else self.weight[rows],
            extra={k: v[rows] for k, v in self.extra.items()},
        )

    def matrix(self, weighted: bool = False) -> sp.csr_matrix:
        """Users x items CSR; repeated pairs are summed (weights) or counted once (binary)."""
        values = (
            self.weight.astype(np.float32)
            if weighted and self.weight is not None
            else np.ones(len(self), dtype=np.float32)
        )
        m = sp.csr_matrix(
            (values, (self.user, self.item)), shape=(self.n_users, self.n_items), dtype=np.float32
        )
        m.sum_duplicates()
        if not weighted:
            m.data[:] = 1.0
        return m

    def sequences(self) -> list[IntArray]:
        """Each user's items in log order (by timestamp when present, else by row order)."""
        order = (
            np.lexsort((np.arange(len(self)), self.timestamp, self.user))
            if self.timestamp is not None
            else np.lexsort((np.arange(len(self)), self.user))
        )
        users, items = self.user[order], self.item[order]
        bounds = np.searchsorted(users, np.arange(self.n_users + 1))
        return [items[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]


@dataclass(frozen=True)
class ItemFeatures:
    """What is known about items besides interactions, indexed like ``item_labels``."""

    text: Sequence[str] | None = None
    """Free text per item (title, caption); empty string when unknown."""
    tags: Sequence[Sequence[str]] | None = None
    creator: Sequence[str] | None = None
    vectors: Mapping[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    """Named dense vectors (e.g. ``image``, ``audio``), each ``n_items x dim``."""


@dataclass(frozen=True)
class Split:
    """Train, validation and test interactions over one id space.

    ``validation`` is carved from the training part for tuning (the model that is finally
    scored is refit on ``train`` with the chosen settings); ``train_for_validation`` is what is
    fit while tuning (``train`` minus ``validation``).
    """

    protocol: str
    train: Interactions
    test: Interactions
    validation: Interactions | None = None
    train_for_validation: Interactions | None = None
    candidates: IntArray | None = None
    """Items the test ranks among (cold-start protocols: the held-out items); None: all."""
    validation_candidates: IntArray | None = None
    """Items the validation ranks among, likewise."""

    def tuning_pair(self) -> tuple[Interactions, Interactions]:
        if self.validation is None or self.train_for_validation is None:
            raise ValueError(f"split {self.protocol!r} has no validation part")
        return self.train_for_validation, self.validation


@dataclass(frozen=True)
class Dataset:
    name: str
    interactions: Interactions
    """All interactions (for a dataset with a given split: train, validation and test together)."""
    given_split: Split | None = None
    items: ItemFeatures | None = None
    description: str = ""

    @property
    def has_timestamps(self) -> bool:
        return self.interactions.timestamp is not None


@dataclass(frozen=True)
class FitContext:
    """What a model may use when fitting besides the training matrix."""

    train: Interactions
    items: ItemFeatures | None = None
    seed: int = 0
    tuning: tuple[Interactions, Interactions] | None = None
    """``(fit part, validation part)`` of ``train`` for a model that tunes itself, when the
    caller has one (the harness passes the split's, so every model tunes on the same data); a
    model carves its own from ``train`` otherwise."""
    tuning_candidates: IntArray | None = None
    """Items the validation part ranks among when it is a cold-start validation (items held out
    of the fit part entirely); None: the whole catalog."""


class Recommender(Protocol):
    """A model or baseline under evaluation."""

    name: str

    def fit(self, train: sp.csr_matrix, context: FitContext) -> None:
        """Learn from the users x items training matrix (weights as in ``Interactions.weight``)."""
        ...

    def recommend(self, users: IntArray, k: int, exclude: sp.csr_matrix) -> IntArray:
        """Top-``k`` item indices per user (``len(users) x k``), best first; items in ``exclude``
        (a users x items matrix, usually the training matrix) never appear. ``-1`` pads lists
        when fewer than ``k`` items can be recommended."""
        ...
