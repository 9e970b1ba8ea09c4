"""Collisionless, expirable ID embeddings.

An :class:`EmbeddingTable` maps each raw string id to its own row; two ids never share one. A row is
created only once an id has been *observed* ``min_count`` times (ids below that read the shared
default vector, all zeros, and cost only a counter); a row unused for ``ttl_s`` is evicted and its
slot reused by the next new id. Each row carries its optimizer state (an Adagrad accumulator, or
Adam's two moments and a step count), updated by a sparse :meth:`EmbeddingTable.apply_gradients`.

Snapshots are incremental: :meth:`EmbeddingTable.save_base` writes the whole table,
:meth:`EmbeddingTable.save_delta` only what changed since the previous save (rows written, rows
removed, frequency counters moved), and :meth:`EmbeddingTable.load` replays a base and its deltas
into exactly the saved state. Files are safetensors (tensors and a JSON header; never pickle),
written to a temporary name, flushed, and renamed into place: a crash mid-write leaves either the
previous file set or the new complete file, never a readable half snapshot.

The storage is numpy (float32 rows); ``torch.from_numpy(table.lookup(ids))`` is a zero-copy view for
a PyTorch model, and a ``.grad`` taken from it goes back through :meth:`apply_gradients`.

:class:`HashedEmbeddingTable` is the baseline the collisionless table replaces: ``hash(id) % rows``,
same optimizer, no id map; :func:`collision_rate` measures what hashing costs on a real id set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import save as st_save

from fyp.errors import Conflict, InvalidInput

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

FORMAT: Final = "fyp.embedding_table/1"
_NO_ROW: Final = -1


@dataclass(frozen=True, slots=True)
class TableConfig:
    """Shape, admission, expiry and optimizer of one embedding table."""

    dim: int
    """Width of each row."""
    min_count: int = 1
    """Observations an id needs before it gets a row; below that it reads the default vector."""
    ttl_s: float | None = None
    """Rows (and pending counters) unused for this long are dropped by :meth:`evict_expired`."""
    optimizer: Literal["adagrad", "adam"] = "adagrad"
    """Per-row optimizer: Adagrad keeps one accumulator per weight, Adam two moments and a step."""
    lr: float = 0.05
    """Learning rate of :meth:`apply_gradients`."""
    init_scale: float = 0.01
    """Standard deviation of a new row's normal initialisation."""
    adagrad_init: float = 0.1
    """Initial Adagrad accumulator: damps the first steps of a fresh row."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    initial_capacity: int = 1024
    """Rows allocated up front; the arrays double when full."""
    max_rows: int | None = None
    """Rows held at most: admitting beyond it evicts the least recently used rows (a bound on
    memory whatever the traffic; ``ttl_s`` expires rows by age). ``None``: no bound."""
    max_pending: int | None = None
    """Counters of ids below ``min_count`` held at most; the least recently seen go first."""
    seed: int = 0
    """Seeds new rows' initialisation."""

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise InvalidInput("dim must be at least 1")
        if self.min_count < 1:
            raise InvalidInput("min_count must be at least 1")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise InvalidInput("ttl_s must be positive (or None for no expiry)")
        if self.optimizer not in ("adagrad", "adam"):
            raise InvalidInput(f"unknown optimizer {self.optimizer!r}")
        if self.initial_capacity < 1:
            raise InvalidInput("initial_capacity must be at least 1")
        if (self.max_rows is not None and self.max_rows < 1) or (
            self.max_pending is not None and self.max_pending < 0
        ):
            raise InvalidInput("max_rows must be at least 1 and max_pending not negative")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What one save wrote."""

    path: Path
    kind: Literal["base", "delta"]
    seq: int
    rows_written: int
    rows_removed: int
    bytes: int


def _slot_names(optimizer: str) -> tuple[str, ...]:
    return ("acc",) if optimizer == "adagrad" else ("m", "v")


def _pack_strings(values: Sequence[str]) -> tuple[npt.NDArray[np.uint8], I64]:
    """Strings as one UTF-8 byte array and end offsets (safetensors holds only tensors)."""
    encoded = [v.encode() for v in values]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def _unpack_strings(data: npt.NDArray[np.uint8], ends: I64) -> list[str]:
    raw = data.tobytes()
    out: list[str] = []
    start = 0
    for end in ends.tolist():
        out.append(raw[start:end].decode())
        start = end
    return out


def atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that ``path`` is either absent/old or complete."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class EmbeddingTable:
    """A growable id → row map with frequency admission, TTL expiry and per-row optimizer state.

    Invariants: each live id owns exactly one row and each live row exactly one id; a freed row is
    zeroed and reused before the arrays grow; ids without a row read zeros; nothing here hashes.
    Not thread-safe: one writer (the trainer) owns a table, serving reads its snapshots.
    """

    def __init__(self, config: TableConfig, *, clock: Any = time.time) -> None:
        self.config = config
        self._clock = clock
        self._rng = np.random.default_rng(config.seed)
        cap = config.initial_capacity
        self._weights: F32 = np.zeros((cap, config.dim), dtype=np.float32)
        self._slots: dict[str, F32] = {
            name: np.zeros((cap, config.dim), dtype=np.float32)
            for name in _slot_names(config.optimizer)
        }
        self._steps: I64 = np.zeros(cap, dtype=np.int64)  # Adam's per-row step (unused by Adagrad)
        self._last_used = np.zeros(cap, dtype=np.float64)
        self._live = np.zeros(cap, dtype=np.bool_)
        self._dirty = np.zeros(cap, dtype=np.bool_)
        self._row_of: dict[str, int] = {}
        self._id_at: list[str | None] = [None] * cap
        self._free: list[int] = list(range(cap - 1, -1, -1))  # pop() hands out low rows first
        # Frequency filter: exact counts of ids not yet admitted, with when each was last seen.
        self._pending: dict[str, tuple[int, float]] = {}
        # Changes since the last save, for deltas.
        self._removed: set[str] = set()
        self._pending_dirty: set[str] = set()
        self._pending_removed: set[str] = set()
        self._lineage: str | None = None
        self._seq = 0
        self.evicted_total = 0
        self.admitted_total = 0

    # ---- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    @property
    def capacity(self) -> int:
        return int(self._weights.shape[0])

    @property
    def pending_count(self) -> int:
        """Ids seen but not yet admitted (each costs a counter, not a row)."""
        return len(self._pending)

    def ids(self) -> list[str]:
        return list(self._row_of)

    def rows(self, ids: Sequence[str]) -> I64:
        """Row of each id, ``-1`` for ids without one. Rows are internal; they are reused."""
        get = self._row_of.get
        return np.fromiter((get(i, _NO_ROW) for i in ids), dtype=np.int64, count=len(ids))

    def lookup(self, ids: Sequence[str]) -> F32:
        """``(len(ids), dim)`` vectors; an id without a row reads zeros. No side effects."""
        return self.lookup_rows(self.rows(ids))

    def lookup_rows(self, rows: I64) -> F32:
        """:meth:`lookup` for rows already found with :meth:`rows` (``-1`` reads zeros)."""
        out = self._weights[np.maximum(rows, 0)]
        out[rows < 0] = 0.0
        return out

    def slot(self, name: str, ids: Sequence[str]) -> F32:
        """Optimizer state ``name`` (``acc``, or ``m``/``v``) of each id; zeros without a row."""
        rows = self.rows(ids)
        out = self._slots[name][np.maximum(rows, 0)]
        out[rows < 0] = 0.0
        return out

    def last_used(self, ids: Sequence[str]) -> npt.NDArray[np.float64]:
        """When each id's row was last used; ``nan`` for ids without a row."""
        rows = self.rows(ids)
        out = self._last_used[np.maximum(rows, 0)]
        out[rows < 0] = np.nan
        return out

    def pending(self) -> dict[str, tuple[int, float]]:
        """Ids below the frequency filter: ``id -> (observations, last seen)``."""
        return dict(self._pending)

    def memory_bytes(self) -> int:
        """Bytes held by the row arrays (allocated capacity), not counting the id map."""
        arrays: list[npt.NDArray[Any]] = [
            self._weights,
            self._steps,
            self._last_used,
            self._live,
            self._dirty,
        ]
        return sum(a.nbytes for a in arrays) + sum(s.nbytes for s in self._slots.values())

    # ---- admission, use, expiry ------------------------------------------------------------------

    def observe(self, ids: Iterable[str], now: float | None = None) -> I64:
        """Count one occurrence of each id (a training example using it) and mark it used.

        An id reaching ``min_count`` gets a fresh row. Returns each id's row (``-1`` while it is
        still below the filter).
        """
        now = self._clock() if now is None else now
        out: list[int] = []
        min_count = self.config.min_count
        for item_id in ids:
            row = self._row_of.get(item_id)
            if row is None:
                count = self._pending.get(item_id, (0, now))[0] + 1
                if count >= min_count:
                    if self._pending.pop(item_id, None) is not None:
                        self._pending_dirty.discard(item_id)
                        self._pending_removed.add(item_id)
                    row = self._admit(item_id)
                else:
                    # Re-inserted at the end, so the dict runs from least to most recently seen.
                    self._pending.pop(item_id, None)
                    self._pending[item_id] = (count, now)
                    self._pending_dirty.add(item_id)
                    self._trim_pending()
                    out.append(_NO_ROW)
                    continue
            self._last_used[row] = now
            self._dirty[row] = True  # its use time moved: the next delta carries it
            out.append(row)
        self._trim_rows(now)  # after the loop: every row handed out here was used at ``now``
        return np.asarray(out, dtype=np.int64)

    def seed(self, ids: Sequence[str], vectors: npt.ArrayLike, now: float | None = None) -> int:
        """Give each id a row holding its vector now, whatever its count (a model trained in
        batch hands its learned rows to online training). Ids that already have a row are
        overwritten. Returns the rows written."""
        v = np.asarray(vectors, dtype=np.float32)
        if v.shape != (len(ids), self.config.dim):
            raise InvalidInput(
                f"vectors must have shape ({len(ids)}, {self.config.dim}), got {v.shape}"
            )
        now = self._clock() if now is None else now
        for item_id, vector in zip(ids, v, strict=True):
            row = self._row_of.get(item_id)
            if row is None:
                if self._pending.pop(item_id, None) is not None:
                    self._pending_dirty.discard(item_id)
                    self._pending_removed.add(item_id)
                row = self._admit(item_id)
            self._weights[row] = vector
            self._last_used[row] = now
        self._trim_rows(now)
        return len(ids)

    def _trim_pending(self) -> None:
        limit = self.config.max_pending
        if limit is None:
            return
        while len(self._pending) > limit:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self._pending_dirty.discard(oldest)
            self._pending_removed.add(oldest)

    def _trim_rows(self, now: float) -> int:
        """Above ``max_rows``, free the least recently used rows (never one used at ``now``);
        a little more than the excess, so admissions at the bound do not each scan the table."""
        limit = self.config.max_rows
        if limit is None or len(self._row_of) <= limit:
            return 0
        wanted = len(self._row_of) - limit + max(1, limit // 64)
        candidates = np.flatnonzero(self._live & (self._last_used < now))
        k = min(wanted, len(candidates))
        if k == 0:
            return 0
        oldest = candidates[np.argpartition(self._last_used[candidates], k - 1)[:k]]
        for row in oldest.tolist():
            self._release(row)
        self.evicted_total += k
        return k

    def _admit(self, item_id: str) -> int:
        if not self._free:
            self._grow()
        row = self._free.pop()
        cfg = self.config
        self._weights[row] = self._rng.normal(0.0, cfg.init_scale, cfg.dim).astype(np.float32)
        if cfg.optimizer == "adagrad":
            self._slots["acc"][row] = cfg.adagrad_init
        self._row_of[item_id] = row
        self._id_at[row] = item_id
        self._live[row] = True
        self._dirty[row] = True
        self.admitted_total += 1
        return row

    def _grow(self) -> None:
        old = self.capacity
        new = old * 2

        def widen(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            bigger = np.zeros((new, *a.shape[1:]), dtype=a.dtype)
            bigger[:old] = a
            return bigger

        self._weights = widen(self._weights)
        self._slots = {k: widen(v) for k, v in self._slots.items()}
        self._steps = widen(self._steps)
        self._last_used = widen(self._last_used)
        self._live = widen(self._live)
        self._dirty = widen(self._dirty)
        self._id_at.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))

    def _release(self, row: int) -> None:
        item_id = self._id_at[row]
        assert item_id is not None
        del self._row_of[item_id]
        self._id_at[row] = None
        self._live[row] = False
        self._dirty[row] = False
        self._weights[row] = 0.0
        for s in self._slots.values():
            s[row] = 0.0
        self._steps[row] = 0
        self._last_used[row] = 0.0
        self._free.append(row)
        self._removed.add(item_id)

    def evict_expired(self, now: float | None = None) -> int:
        """Drop rows and pending counters unused for ``ttl_s``; returns the rows freed."""
        ttl = self.config.ttl_s
        if ttl is None:
            return 0
        now = self._clock() if now is None else now
        cutoff = now - ttl
        stale = np.flatnonzero(self._live & (self._last_used < cutoff))
        for row in stale.tolist():
            self._release(row)
        for item_id in [i for i, (_, seen) in self._pending.items() if seen < cutoff]:
            del self._pending[item_id]
            self._pending_dirty.discard(item_id)
            self._pending_removed.add(item_id)
        self.evicted_total += len(stale)
        return len(stale)

    def forget(self, ids: Iterable[str]) -> int:
        """Remove these ids' rows and counters now (erasure); the next delta records it."""
        removed = 0
        for item_id in ids:
            row = self._row_of.get(item_id)
            if row is not None:
                self._release(row)
                removed += 1
            if self._pending.pop(item_id, None) is not None:
                self._pending_dirty.discard(item_id)
                self._pending_removed.add(item_id)
        return removed

    # ---- learning ------------------------------------------------------------------------------

    def apply_gradients(
        self, ids: Sequence[str], grads: npt.ArrayLike, now: float | None = None
    ) -> int:
        """One sparse optimizer step on the rows of ``ids``; returns the rows updated.

        ``grads`` is ``(len(ids), dim)``. Repeated ids have their gradients summed into one step
        (the gradient of a batch that used the row several times). Ids without a row (below the
        frequency filter, or evicted) are skipped: they read the constant default vector.
        """
        return self.apply_gradients_rows(self.rows(ids), grads, now)

    def apply_gradients_rows(
        self, rows: I64, grads: npt.ArrayLike, now: float | None = None
    ) -> int:
        """:meth:`apply_gradients` for rows already found with :meth:`rows` in this step."""
        g = np.asarray(grads, dtype=np.float32)
        if g.shape != (len(rows), self.config.dim):
            raise InvalidInput(
                f"grads must have shape ({len(rows)}, {self.config.dim}), got {g.shape}"
            )
        keep = rows >= 0
        if not keep.any():
            return 0
        uniq, inverse = np.unique(rows[keep], return_inverse=True)
        summed = np.zeros((len(uniq), self.config.dim), dtype=np.float32)
        np.add.at(summed, inverse, g[keep])
        cfg = self.config
        if cfg.optimizer == "adagrad":
            acc = self._slots["acc"][uniq] + summed * summed
            self._slots["acc"][uniq] = acc
            self._weights[uniq] -= cfg.lr * summed / (np.sqrt(acc) + cfg.eps)
        else:
            step = self._steps[uniq] + 1
            self._steps[uniq] = step
            m = cfg.beta1 * self._slots["m"][uniq] + (1.0 - cfg.beta1) * summed
            v = cfg.beta2 * self._slots["v"][uniq] + (1.0 - cfg.beta2) * summed * summed
            self._slots["m"][uniq] = m
            self._slots["v"][uniq] = v
            t = step.astype(np.float32)[:, None]
            m_hat = m / (1.0 - np.power(np.float32(cfg.beta1), t))
            v_hat = v / (1.0 - np.power(np.float32(cfg.beta2), t))
            self._weights[uniq] -= (cfg.lr * m_hat / (np.sqrt(v_hat) + cfg.eps)).astype(np.float32)
        self._last_used[uniq] = self._clock() if now is None else now
        self._dirty[uniq] = True
        return len(uniq)

    # ---- snapshots -----------------------------------------------------------------------------

    def save_base(self, path: str | Path) -> SnapshotInfo:
        """Write the whole table; later deltas apply on top of it. Starts a new lineage."""
        self._lineage = uuid.uuid4().hex
        self._seq = 0
        live = np.flatnonzero(self._live)
        pending = list(self._pending)
        return self._write(Path(path), "base", live, [], pending, [])

    def save_delta(self, path: str | Path) -> SnapshotInfo:
        """Write only what changed since the previous save (base or delta).

        Raises :class:`Conflict` before any base was saved: a delta needs something to apply to.
        Until the file is renamed into place, nothing is marked clean, so a failed save loses
        nothing: the next delta carries its changes.
        """
        if self._lineage is None:
            raise Conflict("save_delta needs a base snapshot first (save_base)")
        rows = np.flatnonzero(self._live & self._dirty)
        return self._write(
            Path(path),
            "delta",
            rows,
            sorted(self._removed),
            sorted(self._pending_dirty),
            sorted(self._pending_removed),
        )

    def _write(
        self,
        path: Path,
        kind: Literal["base", "delta"],
        rows: I64,
        removed: list[str],
        pending: list[str],
        pending_removed: list[str],
    ) -> SnapshotInfo:
        seq = 0 if kind == "base" else self._seq + 1
        row_ids = [self._id_at[r] or "" for r in rows.tolist()]
        tensors: dict[str, npt.NDArray[Any]] = {
            "rows": rows.astype(np.int64),
            "weights": np.ascontiguousarray(self._weights[rows]),
            "steps": self._steps[rows],
            "last_used": self._last_used[rows],
            "pending_counts": np.asarray([self._pending[i][0] for i in pending], dtype=np.int64),
            "pending_seen": np.asarray([self._pending[i][1] for i in pending], dtype=np.float64),
        }
        for name, arr in self._slots.items():
            tensors[f"slot.{name}"] = np.ascontiguousarray(arr[rows])
        for name, values in (
            ("ids", row_ids),
            ("removed", removed),
            ("pending_ids", pending),
            ("pending_removed", pending_removed),
        ):
            tensors[f"{name}.utf8"], tensors[f"{name}.ends"] = _pack_strings(values)
        metadata = {
            "format": FORMAT,
            "kind": kind,
            "lineage": str(self._lineage),
            "seq": str(seq),
            "capacity": str(self.capacity),
            "config": json.dumps(asdict(self.config), sort_keys=True),
        }
        payload = st_save(tensors, metadata=metadata)
        atomic_write(path, payload)
        # The file is in place: only now are these changes "saved".
        self._seq = seq
        self._dirty[:] = False
        self._removed.clear()
        self._pending_dirty.clear()
        self._pending_removed.clear()
        return SnapshotInfo(
            path=path,
            kind=kind,
            seq=seq,
            rows_written=len(rows),
            rows_removed=len(removed),
            bytes=len(payload),
        )

    @classmethod
    def load(
        cls,
        base: str | Path,
        deltas: Sequence[str | Path] = (),
        *,
        clock: Any = time.time,
    ) -> EmbeddingTable:
        """Rebuild a table from a base snapshot and its deltas, in order.

        Raises :class:`Conflict` when a delta belongs to another base or one is missing or out of
        order; :class:`InvalidInput` when a file is not a table snapshot. The result saves further
        deltas in the same lineage.
        """
        tensors, meta = _read(Path(base))
        if meta["kind"] != "base":
            raise InvalidInput(f"{base} is a {meta['kind']} snapshot, not a base")
        config = TableConfig(**json.loads(meta["config"]))
        table = cls(config, clock=clock)
        while table.capacity < int(meta["capacity"]):
            table._grow()
        table._lineage = meta["lineage"]
        table._apply(tensors)
        # A restored table must not replay the initialisations its rows already drew.
        for delta in deltas:
            tensors, meta = _read(Path(delta))
            if meta["kind"] != "delta" or meta["lineage"] != table._lineage:
                raise Conflict(f"{delta} is not a delta of this base")
            if int(meta["seq"]) != table._seq + 1:
                raise Conflict(f"{delta} has seq {meta['seq']}, expected {table._seq + 1}")
            while table.capacity < int(meta["capacity"]):
                table._grow()
            table._apply(tensors)
            table._seq = int(meta["seq"])
        table._rng = np.random.default_rng(
            [config.seed, int(str(table._lineage)[:15], 16), table._seq]
        )
        table._free = sorted(np.flatnonzero(~table._live).tolist(), reverse=True)
        table._dirty[:] = False
        table._removed.clear()
        table._pending_dirty.clear()
        table._pending_removed.clear()
        return table

    def _apply(self, t: dict[str, npt.NDArray[Any]]) -> None:
        for item_id in _unpack_strings(t["removed.utf8"], t["removed.ends"]):
            row = self._row_of.get(item_id)
            if row is not None:
                self._release(row)
        for item_id in _unpack_strings(t["pending_removed.utf8"], t["pending_removed.ends"]):
            self._pending.pop(item_id, None)
        pending_ids = _unpack_strings(t["pending_ids.utf8"], t["pending_ids.ends"])
        for item_id, count, seen in zip(
            pending_ids, t["pending_counts"].tolist(), t["pending_seen"].tolist(), strict=True
        ):
            self._pending[item_id] = (int(count), float(seen))
        ids = _unpack_strings(t["ids.utf8"], t["ids.ends"])
        rows = t["rows"]
        for item_id, row in zip(ids, rows.tolist(), strict=True):
            holder = self._id_at[row]
            if holder is not None and holder != item_id:
                raise Conflict(f"row {row} holds {holder!r}, snapshot writes {item_id!r}")
            old = self._row_of.get(item_id)
            if old is not None and old != row:
                raise Conflict(f"{item_id!r} is at row {old}, snapshot writes row {row}")
            self._row_of[item_id] = row
            self._id_at[row] = item_id
            self._pending.pop(item_id, None)
        self._live[rows] = True
        self._weights[rows] = t["weights"]
        self._steps[rows] = t["steps"]
        self._last_used[rows] = t["last_used"]
        for name in self._slots:
            self._slots[name][rows] = t[f"slot.{name}"]


def _read(path: Path) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]:
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # OSError, or safetensors' own error on a torn or foreign file
        raise InvalidInput(f"{path} is not a readable snapshot: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not an fyp embedding-table snapshot")
    return tensors, meta


# ---- the hashed baseline -------------------------------------------------------------------------


def stable_hash(item_id: str) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


class HashedEmbeddingTable:
    """The baseline: ``stable_hash(id) % num_rows``, every id always has a (possibly shared) row.

    Same optimizer arithmetic as :class:`EmbeddingTable` (Adagrad), no id map, no admission, no
    expiry: what a fixed-size hashed table gives up is exactly what collisions cost.
    """

    def __init__(
        self,
        num_rows: int,
        dim: int,
        *,
        lr: float = 0.05,
        seed: int = 0,
        hash_fn: Callable[[str], int] = stable_hash,
    ) -> None:
        """``hash_fn`` must be stable wherever rows are saved and reloaded; Python's salted
        ``hash`` is only fit for a table that lives and dies in one process."""
        if num_rows < 1 or dim < 1:
            raise InvalidInput("num_rows and dim must be at least 1")
        rng = np.random.default_rng(seed)
        self._hash = hash_fn
        self.num_rows = num_rows
        self.dim = dim
        self.lr = lr
        self._weights: F32 = rng.normal(0.0, 0.01, (num_rows, dim)).astype(np.float32)
        self._acc: F32 = np.full((num_rows, dim), 0.1, dtype=np.float32)

    def seed(self, ids: Sequence[str], vectors: npt.ArrayLike) -> int:
        """Write each id's vector into its hashed row (colliding ids: the last one wins)."""
        self._weights[self.rows(ids)] = np.asarray(vectors, dtype=np.float32)
        return len(ids)

    def rows(self, ids: Sequence[str]) -> I64:
        n, h = self.num_rows, self._hash
        return np.fromiter((h(i) % n for i in ids), dtype=np.int64, count=len(ids))

    def lookup(self, ids: Sequence[str]) -> F32:
        return self._weights[self.rows(ids)]

    def apply_gradients(self, ids: Sequence[str], grads: npt.ArrayLike) -> int:
        g = np.asarray(grads, dtype=np.float32)
        uniq, inverse = np.unique(self.rows(ids), return_inverse=True)
        summed = np.zeros((len(uniq), self.dim), dtype=np.float32)
        np.add.at(summed, inverse, g)
        acc = self._acc[uniq] + summed * summed
        self._acc[uniq] = acc
        self._weights[uniq] -= self.lr * summed / (np.sqrt(acc) + 1e-8)
        return len(uniq)

    def memory_bytes(self) -> int:
        return self._weights.nbytes + self._acc.nbytes


def collision_rate(ids: Iterable[str], num_rows: int) -> float:
    """Share of distinct ids whose hashed row also holds another id (0 when collisionless)."""
    distinct = set(ids)
    if not distinct:
        return 0.0
    rows = np.fromiter((stable_hash(i) % num_rows for i in distinct), dtype=np.int64)
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).sum()) / len(distinct)
