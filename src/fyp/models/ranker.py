"""The multi-task watch-time ranker: a multi-gate mixture of experts (MMoE) in PyTorch.

Inputs per (viewer, candidate): embeddings of the viewer, the item and its creator, a mean bag of
its tag embeddings, their dot products with the viewer (explicit interactions an MLP learns
slowly; they also reach every head's logit directly), and the standardized numeric features of
``fyp.models.ranker_data`` (duration, age, the item's smoothed engagement rates in the region, the
viewer's affinity to the creator and tags, follow, activity, hour of day, the learned source's
retrieval score). A few shared experts read that input; each task has its own softmax gate over
the experts and its own small tower: ``watch_ratio`` (BCE on the watch ratio clipped to [0, 1]),
``finish``, ``quick_skip``, ``like``, ``share``, ``follow``.

**ID embeddings** come from explicit vocabularies (``Vocabulary``): one row per id seen in the
training viewings, never two ids hashed into one row. Ids not in the vocabulary (new viewers, items,
creators, tags) all map to a dedicated *unknown* row per field; training replaces ``id_dropout`` of
the ids by that row, so it learns what an unseen id is worth instead of staying at its random start.

**Personal data.** The user-embedding rows and the user vocabulary are derived from one region's
viewers: they are saved only with that region's model snapshot, in the region's own model store,
and never belong in an exported algorithm package (which carries code, config and feature schema).

Training is bounded (``RankerConfig.epochs`` and ``max_train_seconds``); the epoch with the best
loss on the most recent tenth of the viewings is kept. Serving runs one batched forward pass per
request under ``torch.inference_mode`` with one thread.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fyp.config import RANKER_TASKS, RankerConfig
from fyp.models.ranker_data import (
    LABEL_NAMES,
    NUMERIC_FEATURES,
    TAG_PAD_ROW,
    UNKNOWN_ROW,
    BaseRates,
    EncodedBatch,
    ExampleSet,
    Vocabularies,
    encode,
    encode_tags,
    serving_numeric,
)
from fyp.storage.roles import ItemRecord, ItemStatsRecord, UserStateSnapshot

PREFIX: Final = "ranker."
"""Key prefix of the ranker's arrays inside a region's model snapshot."""
_VALIDATION_SHARE: Final = 0.1


class MMoE(nn.Module):
    """Shared experts, one gate and one tower per task; outputs one logit per task."""

    numeric_mean: torch.Tensor
    numeric_std: torch.Tensor

    def __init__(
        self,
        table_sizes: Mapping[str, int],
        n_numeric: int,
        n_tasks: int,
        dim: int,
        experts: int,
        hidden: int,
    ) -> None:
        super().__init__()
        self.user = nn.Embedding(table_sizes["users"], dim)
        self.item = nn.Embedding(table_sizes["items"], dim)
        self.creator = nn.Embedding(table_sizes["creators"], dim)
        self.tag = nn.Embedding(table_sizes["tags"], dim, padding_idx=TAG_PAD_ROW)
        for table in (self.user, self.item, self.creator, self.tag):
            nn.init.normal_(table.weight, std=0.1)
        with torch.no_grad():
            self.tag.weight[TAG_PAD_ROW].zero_()
        self.register_buffer("numeric_mean", torch.zeros(n_numeric))
        self.register_buffer("numeric_std", torch.ones(n_numeric))
        width = 4 * dim + n_numeric + 3
        out = max(hidden // 2, 2)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, out), nn.ReLU())
            for _ in range(experts)
        )
        self.gates = nn.ModuleList(nn.Linear(width, experts) for _ in range(n_tasks))
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(out, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(n_tasks)
        )
        # A direct path from the viewer's dot products to every task's logit: collaborative signal
        # (this viewer with this item) reaches the heads without passing through the experts.
        self.interaction = nn.Linear(3, n_tasks)

    def forward(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        creators: torch.Tensor,
        tags: torch.Tensor,
        numeric: torch.Tensor,
    ) -> torch.Tensor:
        u = self.user(users)
        present = (tags != TAG_PAD_ROW).unsqueeze(-1).to(u.dtype)
        bag = (self.tag(tags) * present).sum(1) / present.sum(1).clamp(min=1.0)
        return self.from_vectors(u, self.item(items), self.creator(creators), bag, numeric)

    def from_vectors(
        self,
        u: torch.Tensor,
        i: torch.Tensor,
        c: torch.Tensor,
        bag: torch.Tensor,
        numeric: torch.Tensor,
    ) -> torch.Tensor:
        """The logits from embedding vectors already looked up (the viewer, the item, its
        creator, the mean of its tags): what online training calls with rows of its own
        collisionless tables instead of this module's fixed ``nn.Embedding`` tables."""
        x_numeric = (numeric - self.numeric_mean) / self.numeric_std
        dots = torch.stack(((u * i).sum(-1), (u * c).sum(-1), (u * bag).sum(-1)), dim=-1)
        x = torch.cat((u, i, c, bag, x_numeric, dots), dim=-1)
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=1)
        logits = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)
            logits.append(tower((weights * expert_out).sum(1)).squeeze(-1))
        direct: torch.Tensor = self.interaction(dots)
        return torch.stack(logits, dim=-1) + direct


@dataclass(frozen=True)
class TrainStats:
    examples: int
    validation_examples: int
    epochs: int
    best_epoch: int
    train_loss: float
    validation_loss: float
    seconds: float
    peak_rss_mb: float
    """Growth of the process's resident memory during training, sampled every 20 ms."""
    parameters: int
    parameter_mb: float

    def to_json(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Ranker:
    """A trained ranker: network, vocabularies and feature constants. Safe to call from threads."""

    def __init__(
        self,
        network: MMoE,
        tasks: Sequence[str],
        vocabs: Vocabularies,
        rates: BaseRates,
        prior_plays: float,
        stats: TrainStats | None = None,
    ) -> None:
        self.network = network.eval()
        self.tasks = tuple(tasks)
        self.vocabs = vocabs
        self.rates = rates
        self.prior_plays = prior_plays
        self.stats = stats

    def forget_user(self, user_id: str) -> bool:
        """Erase a viewer's embedding row: it becomes a copy of the unknown viewer's row and the
        id is unmapped, so the ranker treats them as it treats someone it never met."""
        row = self.vocabs.users.forget(user_id)
        if row is None:
            return False
        with torch.no_grad():
            table = self.network.user.weight
            table[row] = table[self.vocabs.users.unknown_row]
        return True

    def predict(self, batch: EncodedBatch) -> npt.NDArray[np.float32]:
        """Probabilities (n, tasks) in ``self.tasks`` order; ``watch_ratio`` is a mean ratio."""
        if len(batch) == 0:
            return np.zeros((0, len(self.tasks)), dtype=np.float32)
        with torch.inference_mode():
            logits = self.network(*_tensors(batch))
            return torch.sigmoid(logits).numpy()

    def score_candidates(
        self,
        user_id: str,
        items: Sequence[ItemRecord],
        stats: Sequence[ItemStatsRecord | None],
        viewer: UserStateSnapshot,
        now: float,
        als_scores: Sequence[float | None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Head probabilities (n, tasks) for one viewer's candidates, in one forward pass."""
        return self.predict(self.serving_batch(user_id, items, stats, viewer, now, als_scores))

    def serving_batch(
        self,
        user_id: str,
        items: Sequence[ItemRecord],
        stats: Sequence[ItemStatsRecord | None],
        viewer: UserStateSnapshot,
        now: float,
        als_scores: Sequence[float | None] | None = None,
    ) -> EncodedBatch:
        """The model inputs of one viewer's candidates (ids as rows, numeric features)."""
        n = len(items)
        return EncodedBatch(
            users=np.full(n, self.vocabs.users.row(user_id), dtype=np.int64),
            items=self.vocabs.items.rows([item.item_id for item in items]),
            creators=self.vocabs.creators.rows([item.creator_id for item in items]),
            tags=encode_tags(self.vocabs.tags, [item.tags for item in items]),
            numeric=serving_numeric(
                items, stats, viewer, now, self.rates, self.prior_plays, als_scores
            ),
        )

    def predict_examples(
        self, examples: ExampleSet, chunk: int = 65_536
    ) -> npt.NDArray[np.float32]:
        batch = encode(self.vocabs, examples)
        parts = [self.predict(_slice(batch, s, s + chunk)) for s in range(0, len(batch), chunk)]
        if not parts:
            return np.zeros((0, len(self.tasks)), dtype=np.float32)
        return np.concatenate(parts)

    # ---- persistence through the region's model store -------------------------------------------

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
        """Meta (JSON) and arrays (state dict tensors, vocabularies) under ``PREFIX``."""
        arrays: dict[str, npt.NDArray[Any]] = {
            f"{PREFIX}state.{name}": tensor.detach().cpu().numpy()
            for name, tensor in self.network.state_dict().items()
        }
        arrays.update(self.vocabs.to_arrays(PREFIX))
        meta = {
            "tasks": list(self.tasks),
            "numeric_features": list(NUMERIC_FEATURES),
            "rates": self.rates.to_json(),
            "prior_plays": self.prior_plays,
            "dim": int(self.network.user.embedding_dim),
            "experts": len(self.network.experts),
            "hidden": int(self.network.experts[0][0].out_features),  # type: ignore[index]
            "train": self.stats.to_json() if self.stats else None,
        }
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> Ranker:
        if list(meta["numeric_features"]) != list(NUMERIC_FEATURES):
            raise ValueError("the ranker was trained on another feature schema; retrain it")
        vocabs = Vocabularies.from_arrays(arrays, PREFIX)
        tasks = [str(t) for t in meta["tasks"]]
        network = MMoE(
            _table_sizes(vocabs),
            len(NUMERIC_FEATURES),
            len(tasks),
            int(meta["dim"]),
            int(meta["experts"]),
            int(meta["hidden"]),
        )
        state_prefix = f"{PREFIX}state."
        state = {
            key[len(state_prefix) :]: torch.from_numpy(np.array(value))
            for key, value in arrays.items()
            if key.startswith(state_prefix)
        }
        network.load_state_dict(state)
        return cls(
            network,
            tasks,
            vocabs,
            BaseRates.from_json(meta["rates"]),
            float(meta["prior_plays"]),
        )


def load_for_serving(meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> Ranker:
    """The ranker of a snapshot, with torch set to one thread: a request is one small batch, and
    intra-op threads would only contend with the other requests being served."""
    torch.set_num_threads(1)
    return Ranker.from_arrays(meta, arrays)


def _table_sizes(vocabs: Vocabularies) -> dict[str, int]:
    return {
        "users": len(vocabs.users),
        "items": len(vocabs.items),
        "creators": len(vocabs.creators),
        "tags": len(vocabs.tags),
    }


def _tensors(batch: EncodedBatch) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(batch.users),
        torch.from_numpy(batch.items),
        torch.from_numpy(batch.creators),
        torch.from_numpy(batch.tags),
        torch.from_numpy(np.ascontiguousarray(batch.numeric, dtype=np.float32)),
    )


def _slice(batch: EncodedBatch, start: int, end: int) -> EncodedBatch:
    return EncodedBatch(
        batch.users[start:end],
        batch.items[start:end],
        batch.creators[start:end],
        batch.tags[start:end],
        batch.numeric[start:end],
    )


# ---- training -----------------------------------------------------------------------------------


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * 4096


@contextlib.contextmanager
def _peak_rss() -> Iterator[list[float]]:
    """Yields a one-element list that holds, afterwards, the RSS growth (MB) seen meanwhile."""
    baseline = _rss_bytes()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = [0.0]
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_bytes())
        out[0] = (peak[0] - baseline) / 2**20


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _drop_ids(
    rows: torch.Tensor, share: float, unknown: int, gen: torch.Generator, pad: int | None = None
) -> torch.Tensor:
    """Replace a random ``share`` of the rows by ``unknown`` (padding stays padding)."""
    if share <= 0:
        return rows
    mask = torch.rand(rows.shape, generator=gen) < share
    if pad is not None:
        mask &= rows != pad
    return torch.where(mask, torch.full_like(rows, unknown), rows)


def validation_size(n: int) -> int:
    """How many of ``n`` time-ordered viewings (the latest) ``train_ranker`` holds out to pick
    its best epoch: a tenth, none below 20 viewings."""
    return max(1, int(n * _VALIDATION_SHARE)) if n >= 20 else 0


def train_ranker(
    examples: ExampleSet,
    rates: BaseRates,
    config: RankerConfig,
    tasks: Sequence[str] | None = None,
) -> Ranker:
    """Train on ``examples`` (time-ordered); the last tenth in time is the validation slice.

    ``tasks`` defaults to every head of ``RANKER_TASKS``; a subset trains a ranker with only those
    heads (the evaluation's ranker without the watch-time heads).
    """
    tasks = tuple(tasks or RANKER_TASKS)
    if len(examples) < 2:
        raise ValueError("the ranker needs at least two viewings to train")
    started = time.perf_counter()
    with _peak_rss() as peak_mb, torch_threads(config.train_threads):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        n = len(examples)
        n_valid = validation_size(n)
        train_rows = np.arange(n - n_valid)
        train = examples.subset(train_rows)
        vocabs = Vocabularies.build(train)
        network = MMoE(
            _table_sizes(vocabs),
            len(NUMERIC_FEATURES),
            len(tasks),
            config.embedding_dim,
            config.experts,
            config.expert_hidden,
        )
        std, mean = torch.std_mean(torch.from_numpy(train.numeric), dim=0)
        network.numeric_mean.copy_(mean)
        network.numeric_std.copy_(std.clamp(min=1e-3))
        columns = [LABEL_NAMES.index(t) for t in tasks]
        x_train = _tensors(encode(vocabs, train))
        y_train = torch.from_numpy(train.labels[:, columns])
        k_train = torch.from_numpy(train.known[:, columns])
        # Per-viewing loss weights only with a half-life: without one every weight would be 1.
        w_train = (
            torch.from_numpy(recency_weights(train.ts, config.recency_half_life_days))
            if config.recency_half_life_days is not None
            else None
        )
        if n_valid:
            valid = examples.subset(np.arange(n - n_valid, n))
            x_valid = _tensors(encode(vocabs, valid))
            y_valid = torch.from_numpy(valid.labels[:, columns])
            k_valid = torch.from_numpy(valid.known[:, columns])
        optimizer = torch.optim.Adam(
            network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        best_state = {k: v.clone() for k, v in network.state_dict().items()}
        best_loss, best_epoch, train_loss, epochs = math.inf, 0, math.inf, 0
        for epoch in range(1, config.epochs + 1):
            network.train()
            order = torch.randperm(len(train), generator=gen)
            total, batches = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                rows = order[start : start + config.batch_size]
                users, items, creators, tag_rows, numeric = (t[rows] for t in x_train)
                users = _drop_ids(users, config.id_dropout, UNKNOWN_ROW, gen)
                items = _drop_ids(items, config.id_dropout, UNKNOWN_ROW, gen)
                creators = _drop_ids(creators, config.id_dropout, UNKNOWN_ROW, gen)
                tag_rows = _drop_ids(
                    tag_rows, config.id_dropout, vocabs.tags.unknown_row, gen, TAG_PAD_ROW
                )
                logits = network(users, items, creators, tag_rows, numeric)
                weights = w_train[rows] if w_train is not None else None
                loss = task_loss(logits, y_train[rows], k_train[rows], weights)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(loss.detach())
                batches += 1
            epochs = epoch
            train_loss = total / max(batches, 1)
            if n_valid:
                network.eval()
                with torch.inference_mode():
                    val = float(task_loss(network(*x_valid), y_valid, k_valid))
            else:
                val = train_loss
            if val < best_loss:
                best_loss, best_epoch = val, epoch
                best_state = {k: v.clone() for k, v in network.state_dict().items()}
            if time.perf_counter() - started > config.max_train_seconds:
                break
        network.load_state_dict(best_state)
    parameters = sum(p.numel() for p in network.parameters())
    stats = TrainStats(
        examples=len(train),
        validation_examples=n_valid,
        epochs=epochs,
        best_epoch=best_epoch,
        train_loss=train_loss,
        validation_loss=best_loss,
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak_mb[0],
        parameters=parameters,
        parameter_mb=parameters * 4 / 2**20,
    )
    return Ranker(network, tasks, vocabs, rates, config.prior_plays, stats)


def recency_weights(
    ts: npt.NDArray[np.float64], half_life_days: float | None
) -> npt.NDArray[np.float32]:
    """Per-viewing training weights: 1 for the newest, halving every ``half_life_days`` back
    (all 1 without a half-life)."""
    if half_life_days is None or not len(ts):
        return np.ones(len(ts), dtype=np.float32)
    age_days = (float(ts.max()) - ts) / 86_400.0
    return np.exp2(-age_days / half_life_days).astype(np.float32)


def task_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over tasks of the mean binary cross-entropy over the examples where the target is known
    (the watch-ratio head's target is the ratio itself, a soft label); with ``sample_weight``
    (one per example), the weighted mean."""
    per = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    weight = known.to(per.dtype)
    if sample_weight is not None:
        weight = weight * sample_weight.to(per.dtype).unsqueeze(-1)
    return ((per * weight).sum(0) / weight.sum(0).clamp(min=1.0)).sum()
