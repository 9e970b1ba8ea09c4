"""The offline contract outside evaluators use: ``fyp offline-recommend``.

Given a training log (``user_id,item_id,timestamp`` plus optional ``weight``, ``watch_ratio``,
``duration``) and a list of users, fit fyp's default model on that log alone and write the top-K
items each user has not interacted with, as ``user_id,item_id,rank``. The model is not told what
the data is; it tunes itself on a validation part carved from the training log. The same seed
gives the same output. A user absent from the log gets the most popular items.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fyp.errors import InvalidInput
from fyp.eval.data import FitContext
from fyp.eval.datasets import load_interactions_csv
from fyp.models.fusion import FusionRecommender


@dataclass(frozen=True)
class OfflineReport:
    users: int
    unknown_users: int
    interactions: int
    items: int
    fit_seconds: float
    recommend_seconds: float


def read_users(path: Path) -> list[str]:
    """One user id per line; a first line reading ``user_id`` is a header; blanks are skipped."""
    users = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    users = [u for u in users if u]
    if users and users[0].lower() == "user_id":
        users = users[1:]
    return list(dict.fromkeys(users))


def offline_recommend(
    train: Path,
    users: Path,
    k: int,
    out: Path,
    items: Path | None = None,
    seed: int = 0,
) -> OfflineReport:
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    try:
        dataset = load_interactions_csv(train, items)
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"cannot read {train}: {exc}") from exc
    wanted = read_users(users)
    log = dataset.interactions
    index = {label: i for i, label in enumerate(log.user_labels)}
    matrix = log.matrix()
    started = time.perf_counter()
    model = FusionRecommender(seed=seed)
    model.fit(matrix, FitContext(train=log, items=dataset.items, seed=seed))
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    known = [u for u in wanted if u in index]
    rows = np.array([index[u] for u in known], dtype=np.int64)
    recs = model.recommend(rows, k, matrix) if len(rows) else np.zeros((0, k), np.int64)
    popular = np.argsort(-np.asarray((matrix > 0).sum(axis=0)).ravel(), kind="stable")[:k]
    lists = dict(zip(known, recs, strict=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "rank"])
        for user in wanted:
            chosen = [int(i) for i in lists.get(user, popular) if i >= 0]
            for rank, item in enumerate(chosen, 1):
                writer.writerow([user, log.item_labels[item], rank])
    return OfflineReport(
        users=len(wanted),
        unknown_users=len(wanted) - len(known),
        interactions=len(log),
        items=log.n_items,
        fit_seconds=fit_seconds,
        recommend_seconds=time.perf_counter() - started,
    )


__all__ = ["OfflineReport", "offline_recommend", "read_users"]
