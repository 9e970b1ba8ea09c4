"""Online training of the ranker: how many examples a second it learns, what that costs the feeds
served meanwhile, and how soon an engagement reaches the ranker as served.

    .venv/bin/python bench/online_training.py [--viewers 1000] [--items 4000] [--no-docs]

One demo world, trained by the engine (``Engine.train``: the batch ranker with the default
``RankerConfig``, embedding width 16, 4 experts, hidden 64). Then, in one process:

1. **Throughput.** ``OnlineRanker.partial_fit`` alone on pre-built ``ExampleSet`` mini-batches
   (the region's viewings, the same rows the batch ranker learned from), 1 and 2 torch threads,
   batches of 256 and 1,024; and end to end, one torch thread (as the engine's trainer runs):
   the same viewings as joiner ``Example`` s with their logged ranker inputs, published on an
   ``InProcessBus`` and consumed by ``OnlineTrainer.step`` (JSON decode, catalog lookup,
   ``to_example_set``, ``partial_fit``, a publish every 2 s). Rates on the wall clock and per
   CPU-second of the process (the machine is shared). When the target is missed, cProfile says
   where the time goes.
2. **Serving while training.** The engine's background trainer (``start_background(train=True)``)
   kept busy by a steady stream of examples published on its region's bus, while the main thread
   asks for feeds in process; blocks with the trainer training and paused (``trainer.paused``)
   alternate, and the latencies of each state are pooled.
3. **Freshness of the served ranker.** Real clock, background trainer running: a page for a
   viewer, the viewer's reactions to it (the sim's viewer model) posted through
   ``engine.ingest``, then the served model's version polled every 5 ms until it is a publish
   made after the trainer consumed the examples those events closed. Default
   ``publish_interval_s`` (2 s) and a shorter one, each with other viewers' examples arriving
   meanwhile (a busy trainer, publishing every interval); and 2 s with nothing else arriving.

Writes the ``online-training`` section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import fyp.online.learner as learner_module  # noqa: E402
import fyp.online.trainer as trainer_module  # noqa: E402
from bench_report import load_world, machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine, fold_policy  # noqa: E402
from fyp.models.ranker import Ranker  # noqa: E402
from fyp.models.ranker_data import (  # noqa: E402
    LABEL_NAMES,
    ExampleSet,
    base_rates,
    build_examples,
    from_events,
)
from fyp.online.bus import InProcessBus, publish_examples  # noqa: E402
from fyp.online.joiner import Example  # noqa: E402
from fyp.online.learner import LearnerConfig, OnlineRanker  # noqa: E402
from fyp.online.trainer import OnlineTrainer, TrainerConfig  # noqa: E402
from fyp.sim.world import World, WorldConfig, build_world  # noqa: E402

START = "<!-- online-training:start -->"
END = "<!-- online-training:end -->"
TARGET_EXAMPLES_S = 20_000.0
TARGET_FRESHNESS_S = 5.0
POLL_S = 0.005
_COL = {name: i for i, name in enumerate(LABEL_NAMES)}


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": float(max(values)) if len(values) else float("nan"),
        "mean": float(np.mean(values)) if len(values) else float("nan"),
    }


# ---- the data -----------------------------------------------------------------------------------


def region_viewings(engine: Engine, world: World, region: str) -> ExampleSet:
    """The region's viewings as the ranker's inputs, built the way the batch training builds them
    (``build_examples`` over the region's history; the ALS score stays unknown)."""
    users = {u.user_id for u in world.users if u.region == region}
    events = from_events(e for e in world.history if e.user_id in users)
    items = engine.catalog.get_items(list({e.item_id for e in events}))
    r = engine.config.ranker
    return build_examples(
        events,
        items,
        fold_policy(engine.config),
        base_rates(events, items),
        prior_plays=r.prior_plays,
        label_window_s=r.label_window_s,
    )


def joiner_examples(rows: ExampleSet, tag: str, model_version: str) -> list[Example]:
    """The viewings as the joiner emits them: one ``Example`` each, with the impression's logged
    features (score, position, a reason flag), the ranker's inputs and labels."""
    out = []
    wr = _COL["watch_ratio"]
    for k in range(len(rows)):
        label = rows.labels[k]
        known = bool(rows.known[k, wr])
        ratio = float(label[wr]) if known else None
        flags = {
            name: bool(label[_COL[name]] > 0.5)
            for name in ("finish", "quick_skip", "like", "share", "follow", "not_interested")
        }
        features = {"score": 0.5, "position": float(k % 10), "reason:similar_to": 1.0}
        request_id = f"{tag}{k:07x}"
        out.append(
            Example(
                example_id=f"{request_id}/{rows.item_ids[k]}",
                request_id=request_id,
                user_id=rows.user_ids[k],
                item_id=rows.item_ids[k],
                position=k % 10,
                model_version=model_version,
                ts=float(rows.ts[k]),
                features=features,
                watch_ms=None if ratio is None else int(ratio * 30_000),
                watch_ratio=ratio,
                finish=flags["finish"],
                quick_skip=flags["quick_skip"],
                like=flags["like"],
                share=flags["share"],
                comment=False,
                follow=flags["follow"],
                skip=flags["quick_skip"],
                negative=flags["not_interested"],
                n_events=1 + sum(flags.values()),
                closed_by="next_play",
                inputs=tuple(rows.numeric[k].tolist()),
            )
        )
    return out


# ---- 1. throughput ------------------------------------------------------------------------------


def fit_rate(
    ranker: Ranker, version: str, rows: ExampleSet, batch: int, threads: int, seconds: float
) -> dict[str, float]:
    """``partial_fit`` on pre-built mini-batches for about ``seconds``; examples per second."""
    batches = [
        rows.subset(np.arange(s, min(s + batch, len(rows))))
        for s in range(0, len(rows) - batch + 1, batch)
    ]
    learner = OnlineRanker(ranker, LearnerConfig(), base_version=version)
    torch.set_num_threads(threads)
    try:
        for b in batches[:3]:  # warm-up
            learner.partial_fit(b)
        done = steps = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            b = batches[steps % len(batches)]
            learner.partial_fit(b)
            done += len(b)
            steps += 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(1)
    return {
        "batch": batch,
        "threads": threads,
        "examples": done,
        "seconds": elapsed,
        "examples_s": done / elapsed,
        "examples_cpu_s": done / cpu,
        "cores_used": cpu / elapsed,
        "ms_per_step": 1000.0 * elapsed / steps,
    }


def make_trainer(
    engine: Engine,
    ranker: Ranker,
    version: str,
    items: Any = None,
    config: TrainerConfig | None = None,
) -> OnlineTrainer:
    """A trainer on its own in-process bus, continuing ``ranker``; publishing freezes the learner
    (``to_ranker``) as in serving and hands the result to nobody."""
    return OnlineTrainer(
        "bench",
        InProcessBus(),
        items or engine.catalog.get_items,
        lambda: (version, ranker),
        lambda _base, _ranker, _version: True,
        config or TrainerConfig(),
    )


def trainer_rate(
    engine: Engine,
    ranker: Ranker,
    version: str,
    examples: list[Example],
    threads: int,
    profile: cProfile.Profile | None = None,
    config: TrainerConfig | None = None,
) -> dict[str, Any]:
    """Publish ``examples`` on a fresh trainer's bus; time ``step`` until the bus is drained.
    Every round takes a full drain (the bus holds the whole backlog), so a trainer with
    ``behind_batch_size`` steps in those batches throughout."""
    config = config or TrainerConfig()
    trainer = make_trainer(engine, ranker, version, config=config)
    trainer.step(block_ms=0)  # builds the learner (nothing is on the bus yet)
    t0 = time.perf_counter()
    for s in range(0, len(examples), 2048):
        publish_examples(trainer.bus, examples[s : s + 2048])
    publish_s = time.perf_counter() - t0
    torch.set_num_threads(threads)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        while True:
            trainer.step(block_ms=0)
            if trainer.last_delivered == 0:
                break
        if profile is not None:
            profile.disable()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(1)
    s = trainer.stats
    return {
        "threads": threads,
        "batch_size": config.batch_size,
        "behind_batch_size": config.behind_batch_size,
        "behind_rounds": s.behind_rounds,
        "steps": s.steps,
        "delivered": s.delivered,
        "trained": s.trained,
        "skipped": s.skipped,
        "publishes": s.publishes,
        "seconds": elapsed,
        "examples_s": s.trained / elapsed,
        "examples_cpu_s": s.trained / cpu,
        "cores_used": cpu / elapsed,
        "publish_examples_s": len(examples) / publish_s,
        "json_bytes": len(json.dumps(examples[0].to_dict(), separators=(",", ":"))),
    }


class Timers:
    """Exclusive CPU time per label of wrapped callables: time spent in a wrapped call made from
    inside another counts for the inner label only, so the labels and the rest add up to the
    whole. Two clock reads per call; one thread at a time."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self._stack = [0.0]
        self._undo: list[tuple[Any, str, Any]] = []

    def timed(self, fn: Any, label: str) -> Any:
        self.cpu.setdefault(label, 0.0)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.process_time() - t0
                self.cpu[label] += elapsed - self._stack.pop()
                self._stack[-1] += elapsed

        return wrapper

    def patch(self, owner: Any, name: str, label: str) -> None:
        """Time ``owner.name`` (an instance's method, a class's method or a module's function)
        until :meth:`restore`."""
        raw = vars(owner).get(name)
        if isinstance(raw, (classmethod, staticmethod)):
            setattr(owner, name, staticmethod(self.timed(getattr(owner, name), label)))
        elif isinstance(owner, type) and raw is not None:
            setattr(owner, name, self.timed(raw, label))
        else:
            setattr(owner, name, self.timed(getattr(owner, name), label))
        self._undo.append((owner, name, raw))

    def restore(self) -> None:
        for owner, name, raw in reversed(self._undo):
            if raw is None:
                delattr(owner, name)
            else:
                setattr(owner, name, raw)
        self._undo.clear()

    def shares(self, total: float, rest: str) -> list[tuple[str, float, float]]:
        rows = [(label, t, t / total) for label, t in self.cpu.items()]
        other = total - sum(t for _, t, _ in rows)
        return [*rows, (rest, other, other / total)]


def fit_breakdown(learner: OnlineRanker, batches: list[ExampleSet]) -> dict[str, Any]:
    """Where ``partial_fit``'s CPU time goes (``Timers``), over ``batches``."""
    timers = Timers()
    for table in learner.tables.values():
        timers.patch(table, "observe", "`EmbeddingTable.observe` (count each id, mark it used)")
        timers.patch(table, "rows", "`EmbeddingTable.rows` (id → row, one dict probe per id)")
        timers.patch(table, "lookup", "`EmbeddingTable.lookup` (gather the rows, besides `rows`)")
        timers.patch(
            table,
            "apply_gradients",
            "`EmbeddingTable.apply_gradients` (sparse Adagrad, besides `rows`)",
        )
    timers.patch(learner.network, "from_vectors", "the network's forward (`MMoE.from_vectors`)")
    timers.patch(learner_module, "task_loss", "loss (`task_loss`)")
    timers.patch(torch.autograd, "backward", "backward (autograd)")
    timers.patch(learner.optimizer, "step", "dense optimizer (Adam step)")
    timers.patch(learner.optimizer, "zero_grad", "`zero_grad`")
    try:
        c0 = time.process_time()
        for b in batches:
            learner.partial_fit(b)
        total = time.process_time() - c0
    finally:
        timers.restore()
    rest = "the rest of `partial_fit` (tag bag, unknown-vector fill, tensors from arrays, sigmoid)"
    return {"total_s": total, "batches": len(batches), "parts": timers.shares(total, rest)}


def step_breakdown(
    engine: Engine, ranker: Ranker, version: str, examples: list[Example]
) -> dict[str, Any]:
    """Where ``OnlineTrainer.step``'s CPU time goes (``Timers``), draining ``examples``."""
    timers = Timers()
    items = timers.timed(
        engine.catalog.get_items, "catalog lookup (`get_items`, inside `to_example_set`)"
    )
    trainer = make_trainer(engine, ranker, version, items)
    trainer.step(block_ms=0)  # builds the learner
    assert trainer.learner is not None
    for s in range(0, len(examples), 2048):
        publish_examples(trainer.bus, examples[s : s + 2048])
    timers.patch(trainer.bus, "consume", "bus: take the entries, decode their JSON (`consume`)")
    timers.patch(trainer.bus, "ack", "bus: `ack`")
    timers.patch(
        trainer_module,
        "to_example_set",
        "`to_example_set` (bus payloads: inputs, labels → arrays)",
    )
    timers.patch(ExampleSet, "subset", "`ExampleSet.subset` (the mini-batches)")
    timers.patch(trainer.learner, "partial_fit", "`OnlineRanker.partial_fit`")
    if hasattr(trainer_module, "ProgressiveScore"):
        timers.patch(
            trainer_module.ProgressiveScore, "add", "train-then-test score (`ProgressiveScore.add`)"
        )
    timers.patch(trainer, "publish_now", "freeze and publish (`publish_now`)")
    try:
        c0 = time.process_time()
        while True:
            trainer.step(block_ms=0)
            if trainer.last_delivered == 0:
                break
        total = time.process_time() - c0
    finally:
        timers.restore()
    rest = "the rest (drain loop, idempotence filter, step bookkeeping)"
    return {
        "total_s": total,
        "examples": trainer.stats.trained,
        "parts": timers.shares(total, rest),
    }


def top_self(profile: cProfile.Profile, n: int = 8) -> list[tuple[str, float]]:
    """The functions with the most self time in a cProfile run, as shares of the run."""
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    top = sorted(((v[2], k) for k, v in raw.items()), reverse=True)[:n]
    return [(f"{Path(k[0]).name}:{k[2]}" if k[0] != "~" else k[2], t / total) for t, k in top]


def throughput(
    engine: Engine, ranker: Ranker, version: str, rows: ExampleSet, seconds: float, n_e2e: int
) -> dict[str, Any]:
    fits = [
        fit_rate(ranker, version, rows, batch, threads, seconds)
        for batch in (256, 1024)
        for threads in (1, 2)
    ]
    reps = -(-n_e2e // len(rows))
    examples = [e for r in range(reps) for e in joiner_examples(rows, f"t{r}-", version)][:n_e2e]
    # One torch thread, as the engine's trainer runs: loading a ranker for serving sets torch to
    # one thread for the whole process. About ``seconds`` of work, sized by partial_fit alone.
    alone = next(f for f in fits if f["batch"] == 256 and f["threads"] == 1)
    n = int(min(max(alone["examples_s"] * seconds, 5_000), len(examples)))
    # The library's defaults (larger steps while behind, as every round here is), and steps of
    # batch_size throughout (the path before behind_batch_size existed). A short warm-up of each
    # first, then the two interleaved twice and the faster of each pair kept, so neither gains
    # from running second on a warmed-up process or loses to a burst of other load.
    configs = [TrainerConfig(), TrainerConfig(behind_batch_size=None)]
    for config in configs:
        trainer_rate(engine, ranker, version, examples[:5_000], 1, config=config)
    runs: list[list[dict[str, Any]]] = [[], []]
    for _ in range(2):
        for k, config in enumerate(configs):
            runs[k].append(trainer_rate(engine, ranker, version, examples[:n], 1, config=config))
    e2e = [max(pair, key=lambda r: r["examples_cpu_s"]) for pair in runs]
    out: dict[str, Any] = {"viewings": len(rows), "seconds": seconds, "fit": fits, "e2e": e2e}
    if min(r["examples_s"] for r in e2e) < TARGET_EXAMPLES_S:
        batches = [rows.subset(np.arange(s, s + 256)) for s in range(0, len(rows) - 255, 256)]
        batches = batches[:100]
        learner = OnlineRanker(ranker, LearnerConfig(), base_version=version)
        out["breakdown_fit"] = fit_breakdown(learner, batches)
        part = examples[: min(len(examples), 20_000)]
        out["breakdown_step"] = step_breakdown(engine, ranker, version, part)
        fit_prof = cProfile.Profile()
        fit_prof.enable()
        for b in batches:
            learner.partial_fit(b)
        fit_prof.disable()
        step_prof = cProfile.Profile()
        trainer_rate(engine, ranker, version, part, 1, profile=step_prof)
        out["top_self_fit"] = top_self(fit_prof)
        out["top_self_step"] = top_self(step_prof)
    return out


# ---- 2. serving while training ------------------------------------------------------------------


def fresh_payloads(
    payloads: list[dict[str, Any]], start: int, n: int, tag: str
) -> list[dict[str, Any]]:
    """``n`` bus payloads cycling through ``payloads``, each with its own example id."""
    out = []
    for k in range(start, start + n):
        d = payloads[k % len(payloads)]
        request_id = f"{tag}{k:x}"
        out.append({**d, "example_id": f"{request_id}/{d['item_id']}", "request_id": request_id})
    return out


class Stream:
    """Keeps a trainer busy: a thread tops its bus up whenever fewer than ``low`` examples wait
    (chunks of ``chunk``, each with fresh example ids, so none is skipped as a duplicate)."""

    def __init__(
        self, bus: Any, trainer: OnlineTrainer, source: list[Example], low: int = 4096
    ) -> None:
        self.bus = bus
        self.trainer = trainer
        self.low = low
        self.chunk = 512
        self.published = 0
        self.stop = threading.Event()
        self._payloads = [e.to_dict() for e in source]
        self._thread = threading.Thread(target=self._run, name="bench-stream", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            while self.published - self.trainer.stats.delivered < self.low:
                self.bus.publish(fresh_payloads(self._payloads, self.published, self.chunk, "s"))
                self.published += self.chunk
                if self.stop.is_set():
                    return

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join()


def wait_idle(trainer: OnlineTrainer, quiet_s: float = 0.5, timeout_s: float = 10.0) -> None:
    """Until the trainer's delivered count has not moved for ``quiet_s`` (a paused trainer ends
    the round it is in first)."""
    deadline = time.monotonic() + timeout_s
    last, since = trainer.stats.delivered, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = trainer.stats.delivered
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def serving_under_training(
    engine: Engine,
    world: World,
    region: str,
    rows: ExampleSet,
    requests: int,
    blocks: int,
    seed: int,
) -> dict[str, Any]:
    version = engine.slots[region].base_version
    trainer = engine.trainers[region]
    users = [u.user_id for u in world.users if u.region == region]
    rng = random.Random(seed)
    for _ in range(30):  # warm-up
        engine.feed(rng.choice(users), 10)
    stream = Stream(engine.online[region].bus, trainer, joiner_examples(rows, "s-", version))
    stream.start()
    ms: dict[str, list[float]] = {"training": [], "paused": []}
    spent = {k: {"s": 0.0, "cpu": 0.0, "trained": 0, "published": 0, "publishes": 0} for k in ms}
    load = os.getloadavg()[0]
    retrains = engine.retrainer.runs
    try:
        time.sleep(1.0)
        for block in range(2 * blocks):
            mode = "training" if block % 2 == 0 else "paused"
            if mode == "paused":
                trainer.paused.set()
                wait_idle(trainer)
            else:
                trainer.paused.clear()
                time.sleep(0.5)  # the trainer's wait between rounds is 200 ms
            trained0, published0 = trainer.stats.trained, stream.published
            publishes0 = trainer.stats.publishes
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(requests):
                user = rng.choice(users)
                t = time.perf_counter()
                engine.feed(user, 10)
                ms[mode].append((time.perf_counter() - t) * 1000.0)
            spent[mode]["s"] += time.perf_counter() - t0
            spent[mode]["cpu"] += time.process_time() - c0
            spent[mode]["trained"] += trainer.stats.trained - trained0
            spent[mode]["published"] += stream.published - published0
            spent[mode]["publishes"] += trainer.stats.publishes - publishes0
        backlog = stream.published - trainer.stats.delivered
    finally:
        trainer.paused.clear()
        stream.close()
    return {
        "region": region,
        "load_avg_1m": load,
        "retrained": engine.retrainer.runs - retrains,
        "requests_per_block": requests,
        "blocks": blocks,
        "backlog_end": backlog,
        "ms": {k: summary(v) for k, v in ms.items()},
        "trained_s": {k: v["trained"] / v["s"] for k, v in spent.items()},
        "published_s": {k: v["published"] / v["s"] for k, v in spent.items()},
        "model_publishes_s": {k: v["publishes"] / v["s"] for k, v in spent.items()},
        "feeds_s": {k: len(ms[k]) / spent[k]["s"] for k in ms},
        "cores_busy": {k: v["cpu"] / v["s"] for k, v in spent.items()},
    }


# ---- 3. freshness of the served ranker ----------------------------------------------------------


@dataclass(frozen=True)
class Published:
    at: float
    version: str
    delivered: int


def online_number(version: str) -> int:
    _, sep, n = version.rpartition("+online.")
    return int(n) if sep and n.isdigit() else 0


def probe_publishes(engine: Engine, region: str, log: list[Published]) -> None:
    """Record each publish of the region's trainer with the bus entries it had consumed when it
    froze the learner. Installed on the slot before the trainer exists (the trainer captures
    ``slot.publish_ranker`` when ``Engine.trainer`` builds it); the real publish still runs."""
    slot = engine.slots[region]
    publish = slot.publish_ranker

    def recorded(base_version: str, ranker: Ranker, version: str) -> bool:
        ok = publish(base_version, ranker, version)
        if ok:
            delivered = engine.trainers[region].stats.delivered
            log.append(Published(time.perf_counter(), version, delivered))
        return ok

    slot.publish_ranker = recorded  # type: ignore[method-assign]


class Trickle:
    """Other viewers' examples at a steady rate on each region's bus (a server with traffic), so
    each trainer always has something new and publishes every ``publish_interval_s``. Holding
    ``lock`` stops it between two publishes."""

    def __init__(self, buses: dict[str, Any], source: list[Example], rate: float) -> None:
        self.buses = buses
        self.rate = rate
        self.lock = threading.Lock()
        self.sent = dict.fromkeys(buses, 0)
        self.stop = threading.Event()
        self._payloads = [e.to_dict() for e in source]
        self._thread = threading.Thread(target=self._run, name="bench-trickle", daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        done = 0
        while not self.stop.wait(0.02):
            due = min(int(self.rate * (time.perf_counter() - t0)) - done, 1024)
            if due <= 0:
                continue
            for region, bus in self.buses.items():
                batch = fresh_payloads(self._payloads, done, due, f"b{region}")
                with self.lock:
                    bus.publish(batch)
                    self.sent[region] += due
            done += due

    def start(self) -> None:
        if self.rate > 0:
            self._thread.start()

    def close(self) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join()


def freshness(
    data_dir: Path,
    world: World,
    source: list[Example],
    interval: float,
    rate: float,
    reps: int,
    seed: int,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if interval != 2.0:
        overrides["online"] = {"publish_interval_s": interval}
    load = os.getloadavg()[0]
    engine = Engine(load_config(data_dir, **overrides))
    try:
        engine.warm()
        regions = list(engine.online)
        logs: dict[str, list[Published]] = {r: [] for r in regions}
        for r in regions:
            probe_publishes(engine, r, logs[r])
        engine.start_background(train=True)
        deadline = time.monotonic() + 30
        while any(engine.trainers[r].learner is None for r in regions):
            if time.monotonic() > deadline:
                raise RuntimeError("the background trainers did not start")
            time.sleep(0.05)
        trickle = Trickle({r: engine.online[r].bus for r in regions}, source, rate)
        trickle.start()
        rng = np.random.default_rng(seed)
        pick = random.Random(seed)
        users = [u.user_id for u in world.users]
        pick.shuffle(users)
        served: list[float] = []
        at_publish: list[float] = []
        consumed: list[float] = []
        ingest_ms: list[float] = []
        examples_per_post: list[int] = []
        misses = {"no_example": 0, "not_trained": 0, "timeout": 0}
        unscored_pages = 0
        t_start = time.perf_counter()
        delivered0 = {r: engine.trainers[r].stats.delivered for r in regions}
        publishes0 = {r: engine.trainers[r].stats.publishes for r in regions}
        for user_id in users[:reps]:
            time.sleep(pick.uniform(0.0, interval))  # a random point of the publish cycle
            region = engine.gate.locate(user_id)
            assert region is not None
            online, trainer, slot = (
                engine.online[region],
                engine.trainers[region],
                engine.slots[region],
            )
            page = engine.feed(user_id, 10)
            unscored_pages += any(item.ranker_inputs is None for item in page.items)
            viewer = world.viewers[user_id]
            events = []
            ts = time.time() + 0.05
            for item in page.items:
                reaction = viewer.react(world.item_by_id[item.item_id], ts, rng, page.request_id)
                events += reaction
                ts = reaction[-1].ts.timestamp() + 0.05
            trained0 = trainer.stats.trained
            with trickle.lock:  # the bus entries up to and including this post's examples
                before = online.published
                t0 = time.perf_counter()
                engine.ingest(events)
                ingest_ms.append((time.perf_counter() - t0) * 1000.0)
                emitted = online.published - before
                target = online.published + trickle.sent[region]
            if emitted == 0:
                misses["no_example"] += 1
                continue
            examples_per_post.append(emitted)
            seen_consumed: float | None = None
            while True:
                now = time.perf_counter()
                if seen_consumed is None and trainer.stats.delivered >= target:
                    seen_consumed = now
                need = next((p for p in list(logs[region]) if p.delivered >= target), None)
                current = slot.current
                if (
                    need is not None
                    and current is not None
                    and online_number(current.version) >= online_number(need.version)
                ):
                    served.append(now - t0)
                    at_publish.append(need.at - t0)
                    consumed.append((seen_consumed or now) - t0)
                    break
                if (
                    rate == 0
                    and seen_consumed is not None
                    and now - seen_consumed > interval + 1.0
                    and trainer.stats.trained == trained0
                ):
                    misses["not_trained"] += 1  # nothing trainable: no publish will come
                    break
                if now - t0 > 30.0:
                    misses["timeout"] += 1
                    break
                time.sleep(POLL_S)
        elapsed = time.perf_counter() - t_start
        trickle.close()
        retrained = engine.retrainer.runs
        trainers = {
            r: {
                "examples_s": (engine.trainers[r].stats.delivered - delivered0[r]) / elapsed,
                "publishes_s": (engine.trainers[r].stats.publishes - publishes0[r]) / elapsed,
            }
            for r in regions
        }
    finally:
        engine.close()
    return {
        "interval": interval,
        "rate": rate,
        "reps": reps,
        "load_avg_1m": load,
        "served_s": summary(served),
        "publish_s": summary(at_publish),
        "consumed_s": summary(consumed),
        "ingest_ms": summary(ingest_ms),
        "examples_per_post": float(np.mean(examples_per_post)) if examples_per_post else 0.0,
        "unscored_pages": unscored_pages,
        "retrained": retrained,
        "misses": misses,
        "trainers": trainers,
    }


# ---- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(1)
    world = build_world(
        WorldConfig(seed=args.seed, n_viewers=args.viewers, n_items=args.items, now=time.time())
    )
    out: dict[str, Any] = {
        "load_start": os.getloadavg()[0],
        "viewers": args.viewers,
        "items": args.items,
        "events": len(world.history),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        engine = Engine(load_config(data_dir))
        try:
            load_world(engine, world)
            t0 = time.perf_counter()
            engine.train()
            out["train_s"] = time.perf_counter() - t0
            engine.warm()
            region = max(
                engine.config.served_regions,
                key=lambda r: sum(u.region == r for u in world.users),
            )
            model = engine.slots[region].current
            assert model is not None and model.batch_ranker is not None, "no ranker trained"
            ranker, version = model.batch_ranker, model.base_version
            rows = region_viewings(engine, world, region)
            out["region"] = region
            out["ranker_parameters"] = sum(p.numel() for p in ranker.network.parameters())
            print(
                f"setup {time.perf_counter() - started:.0f} s; {len(rows):,} viewings", flush=True
            )
            out["throughput"] = throughput(engine, ranker, version, rows, args.seconds, args.e2e)
            print(f"throughput done at {time.perf_counter() - started:.0f} s", flush=True)
            engine.start_background(train=True)
            out["serving"] = serving_under_training(
                engine, world, region, rows, args.requests, args.blocks, args.seed
            )
            print(f"serving done at {time.perf_counter() - started:.0f} s", flush=True)
        finally:
            engine.close()
        source = joiner_examples(rows, "b-", version)
        runs = [
            (2.0, args.background_rate, args.reps),
            (args.short_interval, args.background_rate, args.reps),
            (2.0, 0.0, args.idle_reps),
        ]
        out["freshness"] = []
        for k, (interval, rate, reps) in enumerate(runs):
            out["freshness"].append(
                freshness(data_dir, world, source, interval, rate, reps, args.seed + k)
            )
            done = time.perf_counter() - started
            print(f"freshness {interval:g} s, {rate:g}/s done at {done:.0f} s", flush=True)
    out["runtime_s"] = time.perf_counter() - started
    return out


# ---- the report --------------------------------------------------------------------------------


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _batch_text(e: dict[str, Any]) -> str:
    behind = e.get("behind_batch_size")
    if behind and e.get("behind_rounds"):
        return f"{e['batch_size']:,}; {behind:,} behind"
    return f"{e.get('batch_size', 256):,}"


def _s(x: float) -> str:
    return f"{x:.2f}"


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    t = r["throughput"]
    rows = [
        f"| `partial_fit` alone, pre-built batches | {f['batch']:,} | {f['threads']} | "
        f"{_n(f['examples_s'])} | {_n(f['examples_cpu_s'])} | {f['cores_used']:.2f} | "
        f"{f['ms_per_step']:.1f} ms per step |"
        for f in t["fit"]
    ]
    rows += [
        "| end to end: bus → `OnlineTrainer.step()`"
        + (" (defaults)" if k == 0 else ", `behind_batch_size=None`")
        + f" | {_batch_text(e)} | {e['threads']} | "
        + (f"**{_n(e['examples_s'])}**" if k == 0 else _n(e["examples_s"]))
        + f" | {_n(e['examples_cpu_s'])} | {e['cores_used']:.2f} | "
        f"{e['trained']:,} examples, {e['steps']:,} steps, {e['publishes']} publishes |"
        for k, e in enumerate(t["e2e"])
    ]
    e2e = t["e2e"]
    e1 = e2e[0]  # the library's defaults: what the verdict is about
    wall = e1["examples_s"]
    cpu = e1["examples_cpu_s"]
    verdict = "met" if wall >= TARGET_EXAMPLES_S else "not met"
    lines = [
        START,
        "## Online training: throughput, feeds while training, freshness "
        "(`bench/online_training.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch "
        f"{torch.__version__}, fyp {m['fyp']} (commit {m['git']}); shared with other "
        f"benchmarks running at the same time (1-minute load average {r['load_start']:.1f} at "
        "the start), so treat wall-clock rates and times as indicative  ",
        f"Runtime: {r['runtime_s']:.0f} s",
        "",
        f"Demo world of {r['items']:,} videos, {r['viewers']:,} viewers, {r['events']:,} events, "
        f"trained by the engine ({r['train_s']:.0f} s); the default ranker (`RankerConfig()`: "
        f"embedding width 16, 4 experts, hidden 64; {r['ranker_parameters']:,} parameters in "
        f"region `{r['region']}`); online learner defaults (`LearnerConfig()`: Adam 1e-3 on the "
        "dense part, Adagrad 0.05 on collisionless embedding rows, min_count 2).",
        "",
        "### 1. Throughput",
        "",
        f"The region's {t['viewings']:,} viewings (the rows its batch ranker learned from), in "
        "time order. *Alone*: `OnlineRanker.partial_fit` on `ExampleSet` mini-batches built "
        f"beforehand, about {t['seconds']:g} s each. *End to end*: the same viewings as joiner "
        "`Example`s with logged features (score, position, a reason flag) and the 19 ranker "
        f"inputs as one vector ({e1['json_bytes']:,} bytes of JSON each) published on an "
        "`InProcessBus` "
        f"beforehand (not timed: {_n(e1['publish_examples_s'])} examples/s to publish), then "
        "`OnlineTrainer.step()` until the bus is empty: JSON decode, idempotence filter, "
        "catalog lookup, `to_example_set` (straight from the JSON payloads), mini-batches of "
        "256, or of 1,024 in a round that took a full drain of 2,048 from the bus (the trainer "
        "is behind it: every round here, since the whole backlog waits from the start), a "
        "freeze and publish every 2 s (`TrainerConfig()` defaults); and the same with steps of "
        "256 throughout (`behind_batch_size=None`); after a warm-up of each, the two run "
        "interleaved twice, the faster run of each shown. *Per CPU-second* "
        "divides by the "
        "process's CPU time instead of the wall clock: with one torch thread, roughly what a core "
        "of its own would do (other load still slows a core down through shared caches and a "
        "busy sibling hyperthread, so it varies between runs too).",
        "",
        "| path | batch | torch threads | examples/s | examples per CPU-second | cores busy | |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        f"| target (the issue) | | | {_n(TARGET_EXAMPLES_S)} | | | |",
        "",
        f"**Target {verdict}** for the default ranker: end to end at most {_n(wall)} examples/s "
        f"on the wall clock and {_n(cpu)} per CPU-second, against {_n(TARGET_EXAMPLES_S)}.",
        "",
        *throughput_reading(t),
    ]
    if "breakdown_step" in t:
        lines += ["", *profile_text(t)]
    lines += [
        "",
        *serving_text(r["serving"], t["e2e"][0]["examples_s"]),
        "",
        *freshness_text(r["freshness"]),
        END,
    ]
    return "\n".join(lines)


def throughput_reading(t: dict[str, Any]) -> list[str]:
    fit = {(f["batch"], f["threads"]): f for f in t["fit"]}
    one, big = fit[(256, 1)], fit[(1024, 1)]
    slow = min(fit[(256, 1)]["examples_s"] / max(fit[(256, 2)]["examples_s"], 1e-9), 1e6)
    e, fixed = t["e2e"][0], t["e2e"][-1]
    e_fit = big if e.get("behind_rounds") else one
    text = (
        f"Reading it: `partial_fit` alone, one thread, does {_n(one['examples_cpu_s'])} examples "
        f"per CPU-second in batches of 256 ({_n(big['examples_cpu_s'])} in batches of 1,024): "
        f"{'above' if one['examples_cpu_s'] >= TARGET_EXAMPLES_S else 'below'} the target on a "
        "core of its own. Two torch threads "
        + (
            f"were {slow:.1f}x slower than one"
            if slow >= 1.1
            else f"did {1 / slow:.2f}x the rate of one on the wall clock, for twice the CPU,"
        )
        + " in batches of 256 on this machine: the layers are tiny "
        "(256 x 64), and torch's OpenMP threads most likely wait for each other at every "
        "operation while the other core is busy with other processes (`OMP_WAIT_POLICY` "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}). End to end the trainer does "
        f"{_n(e['examples_cpu_s'])} per CPU-second with its defaults, "
        f"{e['examples_cpu_s'] / e_fit['examples_cpu_s']:.0%} of `partial_fit` alone in "
        f"batches of {e_fit['batch']:,}"
        + (
            f" (with steps of 256 throughout: {_n(fixed['examples_cpu_s'])}, "
            f"{fixed['examples_cpu_s'] / one['examples_cpu_s']:.0%} of `partial_fit` alone in "
            "batches of 256)"
            if fixed is not e
            else ""
        )
    )
    if "breakdown_step" in t:
        parts = {label: share for label, _, share in t["breakdown_step"]["parts"]}
        moving = sum(
            share for label, share in parts.items() if label.startswith(("bus", "`to_", "catalog"))
        )
        learning = parts["`OnlineRanker.partial_fit`"]
        text += (
            f": {moving:.0%} of its time goes to moving examples (JSON decode, "
            f"`to_example_set`: Python work per example and per feature) "
            f"and {learning:.0%} to learning (below)"
        )
    return [text + "."]


def profile_text(t: dict[str, Any]) -> list[str]:
    step, fit = t["breakdown_step"], t["breakdown_fit"]
    return [
        "Where the time goes: each part's CPU time (the process's, so waiting for a core is not "
        "counted), exclusive of the other parts listed (a part called from inside another "
        "counts for the inner one only), as a share of the whole; one torch thread. Measured by "
        "wrapping those functions for the run (two clock reads per call); cProfile's view follows.",
        "",
        f"| end to end: `OnlineTrainer.step()`, {step['examples']:,} examples, "
        f"{step['total_s']:.2f} CPU-s | share |",
        "|---|---:|",
        *[f"| {label} | {share:.0%} |" for label, _, share in step["parts"]],
        "",
        f"| `partial_fit` alone: {fit['batches']} batches of 256, {fit['total_s']:.2f} CPU-s "
        "| share |",
        "|---|---:|",
        *[f"| {label} | {share:.0%} |" for label, _, share in fit["parts"]],
        "",
        "cProfile, most self time (its per-call overhead inflates Python-heavy code such as "
        "the per-id generators): end to end "
        + ", ".join(f"`{name}` {share:.0%}" for name, share in t["top_self_step"][:6])
        + "; `partial_fit` alone "
        + ", ".join(f"`{name}` {share:.0%}" for name, share in t["top_self_fit"][:6])
        + ".",
    ]


def serving_text(s: dict[str, Any], alone: float) -> list[str]:
    tr, pa = s["ms"]["training"], s["ms"]["paused"]
    out = [
        "### 2. Feed latency while the trainer trains vs paused",
        "",
        "The engine's background threads (`start_background(train=True)`: sync, retrainer, one "
        f"online trainer per region; {retrained_text(s['retrained'])}). A publisher thread kept "
        f"region `{s['region']}`'s bus topped up (at least 4,096 examples waiting), so its "
        "trainer never ran dry; the main thread asked for pages of 10 for random viewers of "
        f"`{s['region']}` (`engine.feed`, in process, back to back): {s['blocks']} blocks of "
        f"{s['requests_per_block']} with the trainer training alternating with {s['blocks']} "
        "with it paused (`trainer.paused.set()`, after its round in flight ended), pooled per "
        f"state. 1-minute load average {s['load_avg_1m']:.1f} at the start.",
        "",
        "| trainer | feeds | p50 ms | p95 ms | p99 ms | max ms | feeds/s | trainer examples/s "
        "| examples published on the bus /s | model publishes /s | process cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, d in (("training", tr), ("paused", pa)):
        out.append(
            f"| {mode} | {d['n']:,} | {d['p50']:.1f} | {d['p95']:.1f} | {d['p99']:.1f} | "
            f"{d['max']:.1f} | {s['feeds_s'][mode]:.1f} | {_n(s['trained_s'][mode])} | "
            f"{_n(s['published_s'][mode])} | {s['model_publishes_s'][mode]:.2f} | "
            f"{s['cores_busy'][mode]:.2f} |"
        )
    out += [
        "",
        f"Training alongside costs the feeds {tr['p50'] / pa['p50'] - 1:+.0%} at p50, "
        f"{tr['p95'] / pa['p95'] - 1:+.0%} at p95 and {tr['p99'] / pa['p99'] - 1:+.0%} at p99. "
        "The publisher's own work (encoding the examples the trainer consumes) falls in the "
        "training blocks, as the joiner's would in a server. Alongside the feeds the trainer "
        f"learned {_n(s['trained_s']['training'])} examples/s, "
        f"{s['trained_s']['training'] / alone:.0%} of its rate alone (section 1), and the "
        f"process kept {s['cores_busy']['training']:.2f} cores busy against "
        f"{s['cores_busy']['paused']:.2f} with the trainer paused"
        + (
            ": the feeds and the trainer are both mostly Python and take turns holding the "
            "interpreter lock, so the trainer thread competes with the requests rather than "
            "using the second core."
            if s["cores_busy"]["training"] - s["cores_busy"]["paused"] < 0.5
            else "."
        ),
    ]
    return out


def freshness_text(runs: list[dict[str, Any]]) -> list[str]:
    busy = next((f["rate"] for f in runs if f["rate"] > 0), 0.0)
    out = [
        "### 3. Freshness: from an engagement to the ranker as served having learned from it",
        "",
        "Real clock, the engine's background threads running (`start_background(train=True)`; a "
        "fresh engine on the trained data directory per row, `publish_interval_s` set through "
        "`load_config(dir, online={...})`). Per viewer, each viewer once, both regions: a page "
        "of 10, the viewer's reactions to every item from the sim's viewer model (each item's "
        "play after the previous item's events, so the joiner closes a viewing at the next play "
        "or a skip), posted in one `engine.ingest`; then `engine.slots[region].current.version` "
        "polled every 5 ms until it is a `+online.N` publish made after the trainer consumed the "
        "examples that post closed. A random pause of 0 to `publish_interval_s` before each "
        "page puts the post at a random point of the publish cycle. *Busy*: other viewers' "
        f"examples arrive on each region's bus at {_n(busy)}/s meanwhile, so the trainer always "
        "has learned something since its last publish and publishes every interval, as in a "
        "server with traffic; *idle*: only these posts, so a trainer that has not published for "
        "an interval publishes as soon as it has trained. Times from the start of `ingest`: "
        "*consumed* when the poll saw the trainer's delivered count pass the post's examples, "
        "*published* when the trainer's publish returned (a probe wrapping "
        "`slot.publish_ranker`), *served* when the poll saw the slot's version.",
        "",
        "| publish_interval_s | trainer | posts | examples per post | ingest ms p50 | "
        "consumed s p50 | published s p50 | served s p50 | p95 | max | misses |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in runs:
        sv = f["served_s"]
        miss = ", ".join(f"{k} {v}" for k, v in f["misses"].items() if v) or "0"
        mode = f"busy ({_n(f['rate'])}/s)" if f["rate"] > 0 else "idle"
        out.append(
            f"| {f['interval']:g} | {mode} | {sv['n']} | {f['examples_per_post']:.1f} | "
            f"{f['ingest_ms']['p50']:.1f} | {_s(f['consumed_s']['p50'])} | "
            f"{_s(f['publish_s']['p50'])} | **{_s(sv['p50'])}** | {_s(sv['p95'])} | "
            f"{_s(sv['max'])} | {miss} |"
        )
    worst = max(f["served_s"]["max"] for f in runs)
    verdict = "met" if worst < TARGET_FRESHNESS_S else "not met"
    unscored = sum(f["unscored_pages"] for f in runs)
    retrained = sum(f["retrained"] for f in runs)
    out += [
        f"| target | | | | | | | under {TARGET_FRESHNESS_S:g} s | | | |",
        "",
        f"Target (under {TARGET_FRESHNESS_S:g} s) {verdict}: the slowest post of any row was "
        f"served after {_s(worst)} s. Pages with an item the ranker did not score (no logged "
        f"inputs, so its example cannot train): {unscored}; {retrained_text(retrained)}.",
    ]
    return out


def retrained_text(n: int) -> str:
    return "the retrainer had nothing due" if n == 0 else f"the retrainer retrained {n} times"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=4.0, help="per partial_fit variant")
    parser.add_argument("--e2e", type=int, default=40_000, help="examples per end-to-end run")
    parser.add_argument("--requests", type=int, default=150, help="feeds per latency block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per trainer state")
    parser.add_argument("--reps", type=int, default=50, help="freshness posts per interval")
    parser.add_argument("--short-interval", type=float, default=0.5)
    parser.add_argument(
        "--background-rate", type=float, default=500.0, help="other examples/s per region"
    )
    parser.add_argument("--idle-reps", type=int, default=30, help="freshness posts, idle trainer")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    text = section(result, ".venv/bin/python bench/online_training.py")
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
