"""The online trainer: joined examples from the bus → mini-batches → the served ranker, in seconds.

One :class:`OnlineTrainer` per region, owned by one thread. Each round (:meth:`OnlineTrainer.step`)
drains a batch from the bus (the consumer group ``ranker``; the in-process and the Redis Streams bus
behave the same here), skips redelivered examples, turns the rest into the ranker's inputs with the
features logged at impression time, and calls :meth:`~fyp.online.learner.OnlineRanker.partial_fit`.
At most every ``publish_interval_s`` it freezes the learner into a new ranker and hands it to
``publish`` (the engine swaps it into the region's model slot: a request holds the model it started
with, so a reader never sees a half-updated one); at most every ``checkpoint_interval_s`` it writes
a checkpoint, so a restart continues rather than forgets.

The learner always continues the region's latest *batch* model: when the retrainer swaps a new
snapshot in, the trainer starts again from it (that snapshot already learned from every stored
event), or from its own checkpoint if that continues the same snapshot.

**Which examples train.** The batch ranker learns from viewings (a ``play`` and what followed
it); an impression the viewer never reached carries no label. So the trainer keeps examples with
at least one engagement, and only those whose impression logged the ranker's inputs; the
others are counted, not trained on.

**Erasure.** :meth:`OnlineTrainer.forget_user` drops the viewer's row from the learner, remembers
the id so examples of theirs still on the bus are discarded, and makes the next checkpoint a full
one, so no file on disk keeps their row.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from fyp.bounded import RecentSet
from fyp.eval.metrics import auc
from fyp.models.ranker import Ranker
from fyp.models.ranker_data import LABEL_NAMES, MAX_TAGS, NUMERIC_FEATURES, ExampleSet
from fyp.online.arms import ArmResults, Estimate
from fyp.online.bus import Bus, IdempotenceFilter, drain_payloads
from fyp.online.embedding_table import EmbeddingTable
from fyp.online.joiner import packed_float_bytes
from fyp.online.learner import LearnerConfig, OnlineRanker
from fyp.storage.roles import ItemRecord

log = logging.getLogger(__name__)

GROUP: Final = "ranker"
"""The bus consumer group of the online ranker trainer."""
_COL: Final = {name: i for i, name in enumerate(LABEL_NAMES)}
OUTCOMES: Final = ("watch_ratio", "finish", "like", "quick_skip")
_VERIFIED_MAX: Final = 200_000
"""Viewers remembered as checked to exist (each costs one lookup again once forgotten)."""
"""The outcomes tallied per experiment arm."""


def _estimate(e: Estimate) -> dict[str, float | int | None]:
    def num(x: float) -> float | None:
        return round(x, 5) if math.isfinite(x) else None

    return {"n": e.n, "mean": num(e.mean), "low": num(e.low), "high": num(e.high)}


def to_example_set(
    payloads: Sequence[Mapping[str, Any]],
    items: Callable[[Sequence[str]], dict[str, ItemRecord]],
) -> tuple[ExampleSet, int]:
    """Joined examples, as they travel on the bus (``Example.to_dict``), as the ranker's inputs;
    and how many were left out (no engagement, no logged ranker inputs, or an item no longer in
    the catalog).

    Works on the payloads rather than on ``Example`` objects: building one per example cost the
    trainer a sixth of its time. The packed inputs of the batch are decoded in one go."""
    width = len(NUMERIC_FEATURES)
    records = items(list({p["item_id"] for p in payloads}))
    kept: list[tuple[Mapping[str, Any], ItemRecord]] = []
    packed: list[bytes] = []
    for p in payloads:
        record = records.get(p["item_id"])
        if record is None or p["n_events"] == 0:
            continue
        raw = _inputs_bytes(p.get("inputs"))
        if raw is None or len(raw) != 4 * width:
            continue
        kept.append((p, record))
        packed.append(raw)
    n = len(kept)
    numeric = np.frombuffer(b"".join(packed), dtype="<f4").reshape(n, width).astype(np.float32)
    labels = np.zeros((n, len(LABEL_NAMES)), dtype=np.float32)
    known = np.ones((n, len(LABEL_NAMES)), dtype=np.bool_)
    for k, (p, _) in enumerate(kept):
        ratio = p["watch_ratio"]
        row = labels[k]
        if ratio is None:
            known[k, _COL["watch_ratio"]] = known[k, _COL["long_watch"]] = False
            known[k, _COL["quick_skip"]] = p["skip"]
        else:
            row[_COL["watch_ratio"]] = min(ratio, 1.0)
            row[_COL["long_watch"]] = ratio >= 0.5
        row[_COL["quick_skip"]] = p["quick_skip"]
        row[_COL["finish"]] = p["finish"]
        row[_COL["like"]] = p["like"]
        row[_COL["share"]] = p["share"]
        row[_COL["follow"]] = p["follow"]
        row[_COL["not_interested"]] = p["negative"]
    return (
        ExampleSet(
            ts=np.asarray([p["ts"] for p, _ in kept], dtype=np.float64),
            user_ids=[p["user_id"] for p, _ in kept],
            item_ids=[p["item_id"] for p, _ in kept],
            creator_ids=[r.creator_id for _, r in kept],
            tags=[r.tags[:MAX_TAGS] for _, r in kept],
            numeric=numeric,
            labels=labels,
            known=known,
        ),
        len(payloads) - n,
    )


def _inputs_bytes(inputs: object) -> bytes | None:
    """The logged ranker inputs as little-endian float32 bytes: from their packed form
    (``pack_floats``), or from a list of numbers (what earlier versions put on the bus)."""
    if inputs is None:
        return None
    if isinstance(inputs, str):
        return packed_float_bytes(inputs)
    return np.asarray(inputs, dtype="<f4").tobytes()


@dataclass(frozen=True)
class TrainerConfig:
    batch_size: int = 256
    """Examples per optimizer step."""
    max_drain: int = 2048
    """Examples taken from the bus per round at most."""
    behind_batch_size: int | None = 1024
    """Examples per step in a round that took a full ``max_drain`` (the trainer is behind the
    bus): fewer, larger steps cost far less per example, so a backlog is caught up sooner.
    ``None``: ``batch_size`` always."""
    publish_interval_s: float = 2.0
    """A learner that trained since the last publish is frozen and served at most this often."""
    checkpoint_interval_s: float = 60.0
    poll_ms: int = 200
    """How long a round waits for the bus when it is empty."""
    reclaim_idle_ms: int = 30_000
    """Entries pending this long for a consumer that died are taken over."""
    seen_capacity: int = 100_000
    """Example ids remembered to skip a redelivered one. Redelivery comes from the bus, which
    keeps at most ``online.bus_max_len`` entries (50,000 by default), so twice that suffices."""
    erased_capacity: int = 100_000
    """Erased viewers remembered (their examples still on the bus are skipped). An erasure
    older than that many later ones is long out of the bus and of the full checkpoint written
    after it."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    group: str = GROUP
    """The bus consumer group: every group sees every example, so learners with their own group
    train on identical traffic (shadow training)."""
    version_tag: str = "online"
    """Published versions are ``<batch version>+<tag>.<n>``."""
    learn: bool = True
    """False: score each example with the batch model and never update (the batch-only arm)."""
    max_busy_share: float = 0.5
    """At most this share of the wall clock goes to learning a backlog (the trainer shares the
    process with the feeds it serves); 1 learns flat out."""
    compare_batch: bool = False
    """Also score each example with the batch model it continues (online vs batch, same
    examples)."""


class ProgressiveScore:
    """Train-then-test quality: every example is scored by the model *before* it learns from it;
    kept per task as the log loss over everything and the AUC over the latest ``window``."""

    def __init__(self, tasks: Sequence[str], window: int = 20_000) -> None:
        self.tasks = tuple(tasks)
        self._window = window
        self._labels: dict[str, list[npt.NDArray[np.float32]]] = {t: [] for t in self.tasks}
        self._scores: dict[str, list[npt.NDArray[np.float32]]] = {t: [] for t in self.tasks}
        self._loss = dict.fromkeys(self.tasks, 0.0)
        self._n = dict.fromkeys(self.tasks, 0)

    def add(self, batch: ExampleSet, predictions: npt.NDArray[np.float32]) -> None:
        for k, task in enumerate(self.tasks):
            column = LABEL_NAMES.index(task)
            known = batch.known[:, column]
            if not known.any():
                continue
            y = batch.labels[known, column]
            p = np.clip(predictions[known, k], 1e-6, 1 - 1e-6)
            self._loss[task] += float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())
            self._n[task] += int(known.sum())
            self._labels[task].append(y)
            self._scores[task].append(p.astype(np.float32))
            self._trim(task)

    def _trim(self, task: str) -> None:
        labels, scores = self._labels[task], self._scores[task]
        while len(labels) > 1 and sum(len(a) for a in labels[1:]) >= self._window:
            labels.pop(0)
            scores.pop(0)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for task in self.tasks:
            n = self._n[task]
            y = np.concatenate(self._labels[task]) if self._labels[task] else np.zeros(0)
            p = np.concatenate(self._scores[task]) if self._scores[task] else np.zeros(0)
            binary = bool(np.isin(y, (0.0, 1.0)).all())
            value = auc(y, p) if binary and 0 < y.sum() < len(y) else None
            out[task] = {
                "n": n,
                "log_loss": round(self._loss[task] / n, 5) if n else None,
                "auc_recent": round(value, 5) if value is not None else None,
            }
        return out


@dataclass
class TrainerStats:
    delivered: int = 0
    duplicates: int = 0
    trained: int = 0
    skipped: int = 0
    """Delivered examples that cannot train (no engagement, no logged inputs, unknown item)."""
    erased_skipped: int = 0
    steps: int = 0
    behind_rounds: int = 0
    """Rounds that took a full drain from the bus and so stepped in ``behind_batch_size``."""
    publishes: int = 0
    checkpoints: int = 0
    rebases: int = 0
    last_loss: float = math.nan
    last_publish_at: float = 0.0
    trained_at_publish: int = 0
    """``trained`` when the served version was frozen: the examples it has learned from."""
    base_version: str = ""
    served_version: str = ""
    user_rows: int = 0
    item_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not math.isfinite(out["last_loss"]):
            out["last_loss"] = None
        return out


BaseProvider = Callable[[], "tuple[str, Ranker] | None"]
"""The region's current batch model: (snapshot version, its ranker), or ``None`` without one."""
Publisher = Callable[[str, Ranker, str], bool]
"""``publish(base_version, ranker, version)``: serve it if the slot still holds that base."""


class OnlineTrainer:
    def __init__(
        self,
        region: str,
        bus: Bus,
        items: Callable[[Sequence[str]], dict[str, ItemRecord]],
        base: BaseProvider,
        publish: Publisher,
        config: TrainerConfig | None = None,
        *,
        checkpoint_dir: Path | None = None,
        consumer: str = "trainer",
        clock: Callable[[], float] = time.time,
        arm_of: Callable[[str], str] | None = None,
        last_erasure: Callable[[], float] | None = None,
        existing_users: Callable[[Sequence[str]], set[str]] | None = None,
        feed: Callable[[], object] | None = None,
        on_forget: Callable[[str], object] | None = None,
    ) -> None:
        """``arm_of`` (viewer id -> experiment arm): when given, the outcomes of every example
        are also tallied per arm that served it (``outcomes``).

        ``last_erasure`` and ``existing_users`` let the trainer notice an erasure carried out by
        another process (which cannot call :meth:`forget_user` here): when the region's erasure
        mark moves, every viewer row whose user no longer exists is forgotten. With
        ``existing_users`` the trainer also learns only from viewers it has checked exist since
        the mark last moved: an example another process logged just before erasing its viewer
        may reach this bus after the erasure, and must not make a row for them again.

        ``feed`` runs at the start of every round (the join pump that turns relayed impressions
        and events into the examples this trainer consumes); ``on_forget`` is told every viewer
        the trainer forgets (so the joiner drops their open impressions too)."""
        self.region = region
        self.bus = bus
        self.config = config or TrainerConfig()
        self._items = items
        self._base = base
        self._publish = publish
        self._checkpoint_dir = checkpoint_dir
        self._consumer = consumer
        self._clock = clock
        self._seen = IdempotenceFilter(self.config.seen_capacity)
        self._lock = threading.Lock()  # the learner: trained here, erased from API threads
        self._erased: RecentSet[str] = RecentSet(self.config.erased_capacity)
        self._verified: set[str] = set()
        """Viewers checked to exist since the erasure mark last moved (see ``existing_users``)."""
        self._full_checkpoint = False
        self.learner: OnlineRanker | None = None
        self.stats = TrainerStats()
        self._progress: ProgressiveScore | None = None
        self._batch_progress: ProgressiveScore | None = None
        self._batch_ranker: Ranker | None = None
        self._arm_of = arm_of
        self._feed = feed
        self._on_forget = on_forget
        self._last_erasure = last_erasure
        self._existing_users = existing_users
        self._erasure_seen = last_erasure() if last_erasure is not None else 0.0
        self.outcomes = {name: ArmResults(name) for name in OUTCOMES}
        """Per arm: watch ratio, finish, like and quick skip of the examples joined."""
        self._dirty = False
        self.last_delivered = 0
        """Entries the latest round took from the bus."""
        self._last_publish = 0.0
        self._last_checkpoint = clock()
        self.paused = threading.Event()
        """Set to stop learning (examples stay on the bus); cleared to resume."""

    # ---- one round -----------------------------------------------------------------------------

    def _ensure_learner(self) -> OnlineRanker | None:
        current = self._base()
        if current is None:
            return None
        version, ranker = current
        if self.learner is not None and self.learner.base_version == version:
            return self.learner
        learner = None
        if self._checkpoint_dir is not None:
            try:
                learner = OnlineRanker.restore(
                    self._checkpoint_dir, ranker, version, clock=self._clock
                )
            except Exception:  # a damaged checkpoint: start again from the batch model
                log.exception("region %s: online checkpoint not restored", self.region)
        if learner is not None:
            for user_id in self._erased:
                learner.forget_user(user_id)
        else:
            learner = OnlineRanker(
                ranker, self.config.learner, base_version=version, clock=self._clock
            )
        self.learner = learner
        self._batch_ranker = ranker
        if self._progress is None:
            self._progress = ProgressiveScore(learner.tasks)
            self._batch_progress = ProgressiveScore(learner.tasks)
        self.stats.rebases += 1
        self.stats.base_version = version
        self._dirty = False
        return learner

    def step(self, block_ms: int | None = None) -> int:
        """Drain one batch from the bus and learn from it; returns the examples trained on.

        Without a batch model to continue, nothing is consumed: the examples wait on the bus.
        """
        self.last_delivered = 0
        if self.paused.is_set():
            return 0
        if self._feed is not None:
            self._feed()
        with self._lock:
            learner = self._ensure_learner()
        if learner is None:
            return 0
        self._catch_up_erasures(learner)
        trained = 0

        def handle(examples: list[Mapping[str, Any]]) -> None:
            nonlocal trained
            with self._lock:
                kept = self._of_existing_viewers(
                    [e for e in examples if e["user_id"] not in self._erased]
                )
                self.stats.erased_skipped += len(examples) - len(kept)
                batch, skipped = to_example_set(kept, self._items)
                if self._arm_of is not None:
                    self._tally(batch)
                self.stats.skipped += skipped
                size = self.config.batch_size
                if len(examples) >= self.config.max_drain and self.config.behind_batch_size:
                    size = max(size, self.config.behind_batch_size)
                    self.stats.behind_rounds += 1
                for start in range(0, len(batch), size):
                    part = batch.subset(np.arange(start, min(start + size, len(batch))))
                    self._learn(learner, part)
                trained = len(batch)
                self.stats.trained += trained
                self._dirty = self._dirty or (trained > 0 and self.config.learn)

        result = drain_payloads(
            self.bus,
            self.config.group,
            self._consumer,
            handle,
            self._seen,
            max_count=self.config.max_drain,
            block_ms=self.config.poll_ms if block_ms is None else block_ms,
            reclaim_idle_ms=self.config.reclaim_idle_ms,
        )
        self.last_delivered = result.delivered
        self.stats.delivered += result.delivered
        self.stats.duplicates += result.skipped_duplicates
        now = self._clock()
        if self._dirty and now - self._last_publish >= self.config.publish_interval_s:
            self.publish_now()
        if now - self._last_checkpoint >= self.config.checkpoint_interval_s:
            self.checkpoint()
        return trained

    def _of_existing_viewers(self, examples: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The examples whose viewer exists (checked once per viewer between erasures)."""
        if self._existing_users is None or not examples:
            return examples
        unknown = sorted({e["user_id"] for e in examples} - self._verified)
        if unknown:
            present = self._existing_users(unknown)
            if len(self._verified) + len(present) > _VERIFIED_MAX:
                self._verified.clear()  # re-checked as they come back: a bound, not a loss
            self._verified.update(present)
        return [e for e in examples if e["user_id"] in self._verified]

    def _catch_up_erasures(self, learner: OnlineRanker) -> None:
        if self._last_erasure is None or self._existing_users is None:
            return
        mark = self._last_erasure()
        if mark <= self._erasure_seen:
            return
        with self._lock:
            self._verified.clear()
        users = learner.tables["users"]
        ids = users.ids() if isinstance(users, EmbeddingTable) else []
        existing = self._existing_users(ids) if ids else set()
        gone = [user_id for user_id in ids if user_id not in existing]
        if gone:
            self.forget_users(gone)
        self._erasure_seen = mark

    def _learn(self, learner: OnlineRanker, part: ExampleSet) -> None:
        if self.config.learn:
            result = learner.partial_fit(part)
            predictions = result.predictions
            self.stats.last_loss = result.loss
            self.stats.steps += 1
        else:
            predictions = learner.predict(part)
        if self._progress is not None:
            self._progress.add(part, predictions)
        if self.config.compare_batch and self._batch_ranker is not None:
            assert self._batch_progress is not None
            self._batch_progress.add(part, self._batch_ranker.predict_examples(part))

    def _tally(self, batch: ExampleSet) -> None:
        assert self._arm_of is not None
        arms = [self._arm_of(user_id) for user_id in batch.user_ids]
        for name in OUTCOMES:
            column = LABEL_NAMES.index(name)
            results = self.outcomes[name]
            for arm, value, known in zip(
                arms, batch.labels[:, column].tolist(), batch.known[:, column].tolist(), strict=True
            ):
                if known:
                    results.add(arm, value)

    def outcome_report(self, control: str = "main") -> dict[str, Any]:
        """Per outcome: each arm's mean with its 95 % interval, and each arm minus ``control``
        with Welch's interval."""
        out: dict[str, Any] = {}
        for name, results in self.outcomes.items():
            arms = results.summary()
            out[name] = {
                "arms": {a: _estimate(e) for a, e in arms.items()},
                "vs_" + control: {
                    a: _estimate(results.difference(a, control)) for a in arms if a != control
                },
            }
        return out

    def progressive(self) -> dict[str, Any]:
        """Train-then-test scores so far (this learner's, and the batch model's if compared)."""
        out: dict[str, Any] = {}
        if self._progress is not None:
            out[self.config.version_tag] = self._progress.summary()
        if self.config.compare_batch and self._batch_progress is not None:
            out["batch"] = self._batch_progress.summary()
        return out

    def publish_now(self) -> str | None:
        """Freeze the learner and serve it; returns the served version (``None`` if refused)."""
        with self._lock:
            learner = self.learner
            if learner is None:
                return None
            learner.evict_expired()
            ranker = learner.to_ranker()
            self.stats.publishes += 1
            trained_so_far = self.stats.trained
            version = f"{learner.base_version}+{self.config.version_tag}.{self.stats.publishes}"
            self.stats.user_rows = learner.ids("users")
            self.stats.item_rows = learner.ids("items")
            self._dirty = False
        self._last_publish = self._clock()
        if not self._publish(learner.base_version, ranker, version):
            return None  # a newer batch model arrived meanwhile; the next round rebases
        self.stats.last_publish_at = self._last_publish
        self.stats.served_version = version
        self.stats.trained_at_publish = trained_so_far
        return version

    def publish_if_changed(self) -> str | None:
        """Publish now if the learner learned anything since its last publish."""
        return self.publish_now() if self._dirty else None

    def checkpoint(self) -> bool:
        """Write the learner's checkpoint (full after an erasure); False when there is none."""
        self._last_checkpoint = self._clock()
        if self._checkpoint_dir is None:
            return False
        with self._lock:
            if self.learner is None:
                return False
            self.learner.save(self._checkpoint_dir, full=self._full_checkpoint)
            self._full_checkpoint = False
        self.stats.checkpoints += 1
        return True

    def user_vector(self, user_id: str) -> list[float] | None:
        """The learner's row for a viewer (for their export); ``None`` if it has none."""
        with self._lock:
            learner = self.learner
            table = learner.tables["users"] if learner is not None else None
            if not isinstance(table, EmbeddingTable) or user_id not in table:
                return None
            return [float(x) for x in table.lookup([user_id])[0]]

    def viewer_ids(self) -> set[str]:
        """The viewers the learner holds a row for."""
        with self._lock:
            table = self.learner.tables["users"] if self.learner is not None else None
            return set(table.ids()) if isinstance(table, EmbeddingTable) else set()

    def forget_user(self, user_id: str) -> None:
        """Erasure: the viewer's row leaves the learner now and every later checkpoint."""
        self.forget_users([user_id])

    def forget_users(self, user_ids: Sequence[str]) -> None:
        with self._lock:
            for user_id in user_ids:
                self._erased.add(user_id)
                self._verified.discard(user_id)
                if self.learner is not None:
                    self.learner.forget_user(user_id)
            self._full_checkpoint = True
            if self._on_forget is not None:
                for user_id in user_ids:
                    self._on_forget(user_id)
            # The next publish carries a ranker without them (other processes serve it too).
            self._dirty = self.learner is not None and self.config.learn
        if self._checkpoint_dir is not None and self.learner is not None:
            self.checkpoint()

    def run(self, stop: threading.Event) -> None:
        """Learn until ``stop`` is set; a failing round is logged and the next one tries again."""
        # One intra-op thread: a mini-batch is small, and a second OpenMP thread spin-waits for
        # the core the feeds are using (measured 9-100x slower on 2 busy cores).
        torch.set_num_threads(1)
        share = self.config.max_busy_share
        while not stop.is_set():
            try:
                if self.paused.is_set():
                    stop.wait(self.config.poll_ms / 1000.0)
                    continue
                started = time.perf_counter()
                self.step()  # waits up to poll_ms on an empty bus
                if self.learner is None:  # no batch model yet: nothing is consumed meanwhile
                    stop.wait(self.config.poll_ms / 1000.0)
                elif share < 1.0 and self.last_delivered:
                    # Leave the rest of the time to the requests this process serves: a backlog
                    # is learned at most ``max_busy_share`` of the wall clock.
                    stop.wait((time.perf_counter() - started) * (1.0 - share) / share)
            except Exception:
                log.exception("region %s: online training round failed", self.region)
                stop.wait(1.0)
        try:
            if self._dirty:
                self.publish_now()
            self.checkpoint()
        except Exception:
            log.exception("region %s: final online checkpoint failed", self.region)
