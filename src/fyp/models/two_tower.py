"""A two-tower retrieval model trained in PyTorch, with a content tower for items nobody has seen.

**Item tower.** ``v_i = normalise(e_i + g(c_i))``: ``e_i`` is the item's own ID embedding (one row
per item index, no hashing, so two items never share a row) and ``g`` a small MLP over the item's
dense content features ``c_i`` (text embeddings from :mod:`fyp.models.text`, image or audio
vectors an app supplies, concatenated). Content is centred and reduced to at most
``content_rank`` principal directions at fit time (the same transform is stored with the model
and applied to new items), which keeps every training step cheap however wide the raw features
are. During training the ID part of a random ``id_dropout`` share of the items in each batch is
switched off, so the content path alone must place an item well: an item with content but no
interactions (a new upload) gets a useful vector from :meth:`TwoTowerModel.content_item_vectors`.
Items without training interactions never use their (untrained) ID row.

**User tower.** ``u = normalise(a_u + W · mean(v_h for h in the user's last history_len items))``:
a user-ID embedding plus the mean of the item-tower vectors of what the user did just before
(in time order when there are timestamps, log order otherwise). The user ID is dropped out like
the item IDs, so a user known only by a history (a new viewer, a viewer whose vector is folded
in at request time) gets a good vector from :meth:`TwoTowerModel.user_vectors_from_history`.

**Training.** Each interaction is an example: the user's preceding items are the history, the
item is the positive, and the other positives of the batch are the negatives (in-batch sampled
softmax with temperature ``temperature``). Popular items appear as in-batch negatives more
often than rare ones, which would push them down unfairly, so each logit is corrected by
subtracting the log of its item's sampling probability (logQ correction; the probability is the
item's share of training interactions). In-batch copies of a row's own positive are masked.
Sparse Adam updates the embedding tables (only the rows a batch touches), Adam the rest.

**Determinism.** For a given ``seed`` the same data gives the same vectors: torch's generator is
seeded, shuffling and dropout masks come from a seeded ``numpy.random.Generator``, and the
computation runs on the CPU. (``max_seconds``, off by default, trades that for a time budget.)

Public API (stable; the feed's serving builds on it)::

    model = TwoTower(TwoTowerConfig(dim=64, epochs=8)).fit(
        user_idx, item_idx, n_users, n_items, content=None, timestamps=None
    )
    model.item_vectors()                     # (n_items, dim), rows L2-normalised (zeros: unknown)
    model.content_item_vectors(content)      # (n, dim) for new items, from content alone
    model.user_vectors_from_history(histories, users=None)  # (n, dim); histories oldest first
    model.save(path); TwoTowerModel.load(path)               # safetensors, never pickle

``content`` is ``n_items x d`` float (a row of zeros means "no content for this item");
``timestamps`` orders each user's interactions (row order otherwise). Scores are dot products of
user and item vectors (cosine, since both are normalised).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

__all__ = ["TwoTower", "TwoTowerConfig", "TwoTowerModel", "prepare_content", "torch_threads"]

log = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
FORMAT: Final = "fyp-two-tower/1"


@dataclass(frozen=True)
class TwoTowerConfig:
    """Settings of :class:`TwoTower` (the defaults are the ones fyp uses)."""

    dim: int = 64
    epochs: int = 8
    batch_size: int = 1024
    lr: float = 0.005
    temperature: float = 0.1
    id_dropout: float = 0.3
    """Share of a batch's items (and users) whose ID embedding is switched off."""
    history_len: int = 10
    content_rank: int = 128
    """Content features are reduced to at most this many principal directions."""
    hidden: int = 128
    """Width of the content MLP's hidden layer."""
    seed: int = 0
    max_seconds: float | None = None
    """Stop after the epoch during which this much training time has passed (None: never)."""
    threads: int = 1
    """torch threads while fitting (restored afterwards). One is the default: on a shared
    machine several threads that wait on each other are many times slower than one."""

    def __post_init__(self) -> None:
        if self.dim < 1 or self.epochs < 0 or self.batch_size < 2 or self.history_len < 1:
            raise ValueError(f"invalid two-tower settings: {self}")
        if self.threads < 1:
            raise ValueError(f"invalid two-tower settings: {self}")
        if not 0 <= self.id_dropout < 1 or self.temperature <= 0 or self.lr <= 0:
            raise ValueError(f"invalid two-tower settings: {self}")


# ---- content preprocessing ---------------------------------------------------------------------


@dataclass(frozen=True)
class ContentTransform:
    """Centre, project on principal directions, scale: fitted once, applied to any item."""

    mean: FloatMatrix  # (d,)
    basis: FloatMatrix  # (d, r)
    scale: float

    def apply(self, content: npt.ArrayLike) -> FloatMatrix:
        c = np.asarray(content, dtype=np.float32)
        if c.ndim != 2 or c.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"content must be (n, {self.mean.shape[0]}), not {getattr(c, 'shape', None)}"
            )
        present = np.abs(c).sum(axis=1) > 0
        reduced = ((c - self.mean) @ self.basis) * self.scale
        reduced[~present] = 0.0
        return reduced.astype(np.float32, copy=False)


def prepare_content(content: npt.ArrayLike, rank: int) -> ContentTransform:
    """Fit the content transform on the rows that have content (at least one non-zero)."""
    c = np.asarray(content, dtype=np.float32)
    present = np.abs(c).sum(axis=1) > 0
    rows = c[present] if present.any() else c
    mean = rows.mean(axis=0).astype(np.float32)
    centred = rows - mean
    cov = (centred.T @ centred).astype(np.float64) / max(len(rows), 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][: max(1, min(rank, c.shape[1]))]
    basis = vectors[:, order].astype(np.float32)
    total = float(values[order].clip(min=0).sum())
    scale = 1.0 / np.sqrt(total) if total > 1e-12 else 1.0
    return ContentTransform(mean=mean, basis=basis, scale=float(scale))


# ---- the network ---------------------------------------------------------------------------------


class _Towers(nn.Module):
    content: torch.Tensor
    item_seen: torch.Tensor
    user_seen: torch.Tensor

    def __init__(self, n_users: int, n_items: int, content_rank: int, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_id = nn.Embedding(n_items + 1, cfg.dim, padding_idx=n_items, sparse=True)
        self.user_id = nn.Embedding(max(n_users, 1), cfg.dim, sparse=True)
        nn.init.normal_(self.item_id.weight, std=0.1)
        nn.init.normal_(self.user_id.weight, std=0.1)
        with torch.no_grad():
            self.item_id.weight[n_items].zero_()
        self.history = nn.Linear(cfg.dim, cfg.dim)
        self.has_content = content_rank > 0
        if self.has_content:
            self.content_mlp: nn.Module = nn.Sequential(
                nn.Linear(content_rank, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim)
            )
        # Reduced content per item (row n_items: padding); trained items' ID use flags.
        self.register_buffer("content", torch.zeros(n_items + 1, max(content_rank, 1)))
        self.register_buffer("item_seen", torch.zeros(n_items + 1, dtype=torch.bool))
        self.register_buffer("user_seen", torch.zeros(max(n_users, 1), dtype=torch.bool))

    def content_part(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.content_mlp(features)
        return out

    def items(self, idx: torch.Tensor, keep_id: torch.Tensor) -> torch.Tensor:
        """Item-tower vectors of ``idx``; ``keep_id`` (float 0/1) switches the ID part."""
        vec = self.item_id(idx) * keep_id.unsqueeze(1)
        if self.has_content:
            vec = vec + self.content_part(self.content[idx])
        return functional.normalize(vec, dim=1)

    def users(
        self,
        users: torch.Tensor,
        keep_user: torch.Tensor,
        history_vectors: torch.Tensor,
        history_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``history_vectors``: (B, L, dim) item-tower vectors; ``history_mask``: (B, L) 0/1."""
        counts = history_mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        pooled = (history_vectors * history_mask.unsqueeze(2)).sum(dim=1) / counts
        has_history = (history_mask.sum(dim=1, keepdim=True) > 0).float()
        vec = self.user_id(users) * keep_user.unsqueeze(1) + self.history(pooled) * has_history
        return functional.normalize(vec, dim=1)


# ---- the trained model ------------------------------------------------------------------------


class TwoTowerModel:
    """A fitted two-tower model (see the module docstring for the API)."""

    def __init__(
        self,
        config: TwoTowerConfig,
        net: _Towers,
        transform: ContentTransform | None,
        n_users: int,
        n_items: int,
    ) -> None:
        self.config = config
        self.net = net
        self.transform = transform
        self.n_users = n_users
        self.n_items = n_items
        self.epochs_run = 0
        self.seconds = 0.0
        self.losses: list[float] = []

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def has_content(self) -> bool:
        return self.transform is not None

    def item_vectors(self) -> FloatMatrix:
        """Every item's vector, ``(n_items, dim)``: ID and content for items seen in training,
        content alone for the others; all-zero rows for items with neither."""
        net = self.net
        out = np.zeros((self.n_items, self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, self.n_items, 8192):
                idx = torch.arange(start, min(start + 8192, self.n_items))
                keep = net.item_seen[idx].float()
                vec = net.items(idx, keep)
                known = keep > 0
                if net.has_content:
                    known = known | (net.content[idx].abs().sum(dim=1) > 0)
                vec = vec * known.float().unsqueeze(1)
                out[start : start + len(idx)] = vec.numpy()
        return out

    def content_item_vectors(self, content: npt.ArrayLike) -> FloatMatrix:
        """Item-tower vectors of items described only by ``content`` (rows like the ``content``
        given to fit, same width); an all-zero row gives an all-zero vector."""
        if self.transform is None:
            raise ValueError("this model was fitted without content features")
        reduced = torch.from_numpy(self.transform.apply(content))
        with torch.inference_mode():
            vec = functional.normalize(self.net.content_part(reduced), dim=1)
            vec = vec * (reduced.abs().sum(dim=1, keepdim=True) > 0).float()
        return np.ascontiguousarray(vec.numpy(), dtype=np.float32)

    def user_vectors_from_history(
        self,
        histories: Sequence[npt.ArrayLike],
        users: npt.ArrayLike | None = None,
    ) -> FloatMatrix:
        """User-tower vectors from item-index histories (each oldest first; the last
        ``history_len`` count). ``users`` (optional, one per history) adds the user's own ID
        embedding when the user was seen in training; ``-1`` or an unseen index means "unknown"."""
        length = self.config.history_len
        n = len(histories)
        hist = np.full((n, length), self.n_items, dtype=np.int64)
        for r, h in enumerate(histories):
            items = np.asarray(h, dtype=np.int64).ravel()
            items = items[(items >= 0) & (items < self.n_items)][-length:]
            if len(items):
                hist[r, length - len(items) :] = items
        user_idx = (
            np.full(n, -1, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
        )
        if len(user_idx) != n:
            raise ValueError("users and histories differ in length")
        out = np.zeros((n, self.dim), dtype=np.float32)
        net = self.net
        with torch.inference_mode():
            for start in range(0, n, 4096):
                h = torch.from_numpy(hist[start : start + 4096])
                u = torch.from_numpy(user_idx[start : start + 4096])
                known = (u >= 0) & (u < self.n_users)
                safe_u = torch.where(known, u, torch.zeros_like(u))
                keep_user = (known & net.user_seen[safe_u]).float()
                flat = h.reshape(-1)
                uniq, inverse = torch.unique(flat, return_inverse=True)
                vecs = net.items(uniq, net.item_seen[uniq].float())
                hv = vecs[inverse].reshape(h.shape[0], length, -1)
                mask = (h < self.n_items).float()
                out[start : start + len(h)] = net.users(safe_u, keep_user, hv, mask).numpy()
        return out

    # ---- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the model to one safetensors file (tensors plus JSON settings as metadata)."""
        tensors = {
            f"net.{k}": v.detach().contiguous().clone() for k, v in self.net.state_dict().items()
        }
        if self.transform is not None:
            tensors["content.mean"] = torch.from_numpy(self.transform.mean.copy())
            tensors["content.basis"] = torch.from_numpy(np.ascontiguousarray(self.transform.basis))
        meta = {
            "format": FORMAT,
            "config": json.dumps(asdict(self.config)),
            "n_users": str(self.n_users),
            "n_items": str(self.n_items),
            "content_scale": repr(self.transform.scale) if self.transform is not None else "",
            "epochs_run": str(self.epochs_run),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> TwoTowerModel:
        """Read a model written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a fyp two-tower model")
        tensors = load_file(str(path))
        config = TwoTowerConfig(**json.loads(meta["config"]))
        n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
        transform = None
        if "content.mean" in tensors:
            transform = ContentTransform(
                mean=tensors["content.mean"].numpy(),
                basis=tensors["content.basis"].numpy(),
                scale=float(meta["content_scale"]),
            )
        rank = 0 if transform is None else transform.basis.shape[1]
        net = _Towers(n_users, n_items, rank, config)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        net.eval()
        model = cls(config, net, transform, n_users, n_items)
        model.epochs_run = int(meta.get("epochs_run", "0"))
        return model


# ---- training ---------------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    if n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TwoTower:
    """Trains a :class:`TwoTowerModel` (see the module docstring)."""

    def __init__(self, config: TwoTowerConfig | None = None) -> None:
        self.config = config or TwoTowerConfig()

    def fit(
        self,
        user_idx: npt.ArrayLike,
        item_idx: npt.ArrayLike,
        n_users: int,
        n_items: int,
        content: npt.ArrayLike | None = None,
        timestamps: npt.ArrayLike | None = None,
    ) -> TwoTowerModel:
        """Train on the interactions ``(user_idx[k], item_idx[k])`` (see the module docstring)."""
        with torch_threads(self.config.threads):
            return self._fit(user_idx, item_idx, n_users, n_items, content, timestamps)

    def _fit(
        self,
        user_idx: npt.ArrayLike,
        item_idx: npt.ArrayLike,
        n_users: int,
        n_items: int,
        content: npt.ArrayLike | None,
        timestamps: npt.ArrayLike | None,
    ) -> TwoTowerModel:
        cfg = self.config
        started = time.perf_counter()
        users = np.asarray(user_idx, dtype=np.int64).ravel()
        items = np.asarray(item_idx, dtype=np.int64).ravel()
        if len(users) != len(items):
            raise ValueError("user_idx and item_idx differ in length")
        if len(users) and (users.min() < 0 or users.max() >= n_users):
            raise ValueError("user index out of range")
        if len(items) and (items.min() < 0 or items.max() >= n_items):
            raise ValueError("item index out of range")
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)

        transform = None
        reduced = None
        if content is not None:
            c = np.asarray(content, dtype=np.float32)
            if c.shape[0] != n_items:
                raise ValueError(f"content has {c.shape[0]} rows, not n_items={n_items}")
            if np.abs(c).sum() > 0:
                transform = prepare_content(c, cfg.content_rank)
                reduced = transform.apply(c)
        rank = 0 if transform is None else transform.basis.shape[1]
        net = _Towers(n_users, n_items, rank, cfg)
        with torch.no_grad():
            if reduced is not None:
                net.content[:n_items] = torch.from_numpy(reduced)
            net.item_seen[torch.from_numpy(np.unique(items))] = True
            if len(users):
                net.user_seen[torch.from_numpy(np.unique(users))] = True
        model = TwoTowerModel(cfg, net, transform, n_users, n_items)
        if len(users) < 2 or cfg.epochs == 0:
            net.eval()
            model.seconds = time.perf_counter() - started
            return model

        # Examples in (user, time) order; the history of row k is the rows before it of its user.
        order = (
            np.lexsort((np.arange(len(users)), np.asarray(timestamps, dtype=np.float64), users))
            if timestamps is not None
            else np.lexsort((np.arange(len(users)), users))
        )
        seq_users, seq_items = users[order], items[order]
        first = np.searchsorted(seq_users, seq_users, side="left")
        counts = np.bincount(items, minlength=n_items).astype(np.float64)
        log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / len(items)).astype(np.float32))
        padded_items = np.concatenate([seq_items, [n_items]])
        offsets = np.arange(-cfg.history_len, 0, dtype=np.int64)

        sparse_params = [net.item_id.weight, net.user_id.weight]
        dense_params = [p for n, p in net.named_parameters() if not n.endswith("_id.weight")]
        sparse_opt = torch.optim.SparseAdam(sparse_params, lr=cfg.lr)
        dense_opt = torch.optim.Adam(dense_params, lr=cfg.lr)
        use_dropout = cfg.id_dropout > 0 and net.has_content
        n = len(seq_items)
        net.train()
        for epoch in range(cfg.epochs):
            perm = rng.permutation(n)
            total, batches = 0.0, 0
            for start in range(0, n - 1, cfg.batch_size):
                rows = perm[start : start + cfg.batch_size]
                if len(rows) < 2:
                    continue
                pos = torch.from_numpy(seq_items[rows])
                hist_rows = rows[:, None] + offsets[None, :]
                valid = hist_rows >= first[rows][:, None]
                hist = np.where(valid, padded_items[np.where(valid, hist_rows, n)], n_items)
                hist_t = torch.from_numpy(hist)
                uniq, inverse = torch.unique(
                    torch.cat([pos, hist_t.reshape(-1)]), return_inverse=True
                )
                if use_dropout:
                    keep_np = (rng.random(len(uniq)) >= cfg.id_dropout).astype(np.float32)
                    keep_user_np = (rng.random(len(rows)) >= cfg.id_dropout).astype(np.float32)
                else:
                    keep_np = np.ones(len(uniq), dtype=np.float32)
                    keep_user_np = np.ones(len(rows), dtype=np.float32)
                vecs = net.items(uniq, torch.from_numpy(keep_np))
                b = len(rows)
                # index_select: its backward is an index_add, much cheaper than indexing's.
                pos_vec = vecs.index_select(0, inverse[:b])
                hist_vec = vecs.index_select(0, inverse[b:]).reshape(b, cfg.history_len, -1)
                mask = torch.from_numpy(valid.astype(np.float32))
                user_vec = net.users(
                    torch.from_numpy(seq_users[rows]),
                    torch.from_numpy(keep_user_np),
                    hist_vec,
                    mask,
                )
                logits = (user_vec @ pos_vec.T) / cfg.temperature - log_q[pos].unsqueeze(0)
                same = pos.unsqueeze(0) == pos.unsqueeze(1)
                same.fill_diagonal_(False)
                logits = logits.masked_fill(same, float("-inf"))
                loss = functional.cross_entropy(logits, torch.arange(b))
                sparse_opt.zero_grad()
                dense_opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                sparse_opt.step()  # type: ignore[no-untyped-call]
                dense_opt.step()
                total += float(loss.detach())
                batches += 1
            model.losses.append(total / max(batches, 1))
            model.epochs_run = epoch + 1
            log.info("two-tower: epoch %d loss %.4f", epoch + 1, model.losses[-1])
            if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds:
                break
        net.eval()
        model.seconds = time.perf_counter() - started
        return model
