"""What the ranker costs per feed request: its scoring step, measured inside real feeds.

Builds a sim world, loads it into an engine on a temporary data directory, trains (ALS, the
co-engagement table and the ranker), then serves feeds to random viewers and reads the ``ranker``
step's time from each trace, together with the number of candidates it scored. It also times the
scorer alone on exactly 300 candidates. Torch runs with one thread, as in serving.

    .venv/bin/python bench/ranker_serving.py [--users 1000] [--feeds 300] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fyp.config import load_config
from fyp.engine import Engine
from fyp.governance.policy import Principal
from fyp.pipeline.contracts import Candidate, FeedContext, FeedQuery
from fyp.pipeline.trace import Trace
from fyp.scoring.ranker import RankerScorer
from fyp.sim.world import WorldConfig, build_world

NOW = 1_767_225_600.0


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "median": float(np.median(array)),
        "p95": float(np.percentile(array, 95)),
        "mean": float(array.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--feeds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the measurements as JSON here")
    args = parser.parse_args()

    world = build_world(
        WorldConfig(
            seed=args.seed,
            n_creators=max(10, args.users * 3 // 10),
            n_items=max(200, args.users * 6),
            n_viewers=args.users,
            now=NOW,
        )
    )
    with tempfile.TemporaryDirectory() as directory:
        clock = iter(itertools.count(NOW + 60.0, 0.5))
        engine = Engine(load_config(Path(directory)), clock=lambda: next(clock))
        try:
            engine.put_items(world.items)
            engine.put_users(world.users)
            for start in range(0, len(world.history), 20_000):
                engine.ingest(world.history[start : start + 20_000])
            started = time.perf_counter()
            reports = engine.train()
            train_s = time.perf_counter() - started
            rng = np.random.default_rng(args.seed)
            viewers = [world.users[int(i)].user_id for i in rng.integers(0, len(world.users), 50)]
            for viewer in viewers[:5]:  # warm caches and torch's first-call paths
                engine.feed(viewer, n=10)
            step_ms: list[float] = []
            scored: list[int] = []
            feed_ms: list[float] = []
            for k in range(args.feeds):
                started = time.perf_counter()
                result = engine.feed(viewers[k % len(viewers)], n=10)
                feed_ms.append((time.perf_counter() - started) * 1000.0)
                filters = [s for s in result.trace.steps if s.stage == "filters"]
                [step] = [s for s in result.trace.steps if s.component == "ranker"]
                step_ms.append(step.ms)
                scored.append(filters[-1].candidates_out or 0)
            alone = _time_300(engine, viewers[0], [item.item_id for item in world.items[-300:]])
        finally:
            engine.close()
    out: dict[str, Any] = {
        "users": args.users,
        "events": len(world.history),
        "train_seconds_all_regions": train_s,
        "ranker_train": {r.region: (r.ranker or {}).get("train") for r in reports},
        "feeds": args.feeds,
        "candidates_scored": _percentiles([float(n) for n in scored]),
        "ranker_step_ms": _percentiles(step_ms),
        "feed_ms": _percentiles(feed_ms),
        "ranker_ms_300_candidates": _percentiles(alone),
        "torch_threads": 1,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


def _time_300(engine: Engine, user_id: str, item_ids: list[str]) -> list[float]:
    """The scorer alone on 300 hydrated candidates, 200 times."""
    region = engine.gate.locate(user_id)
    assert region is not None
    handle = engine.gate.open(region, Principal.service(region), "serve_feed")
    records = engine.catalog.get_items(item_ids)
    stats = handle.stats.stats(item_ids)
    now = engine.clock()
    state = handle.state.hydrate(user_id, now)
    context = FeedContext(engine.config, engine.catalog, handle, engine.slots[region].current)
    scorer = RankerScorer(engine.config.ranker)
    times = []
    for _ in range(200):
        cands = [Candidate(i, item=records[i], stats=stats.get(i)) for i in item_ids]
        query = FeedQuery("bench", user_id, region, 10, now, context, Trace(), state=state)
        started = time.perf_counter()
        scorer.score(query, cands)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


if __name__ == "__main__":
    main()
