"""Exploring new items in a closed loop with the demo world's simulated viewers.

One demo world, trained once, copied into two engines that differ only in how exploration slots
are given: staged pools with Beta posteriors and Thompson draws (fyp's default) against the plain
rule (any fresh item under the view cap, best-scored first). After training, new videos are
uploaded whose hidden quality the engine cannot see: half good, half poor. Then the same seeded
stream of viewers asks each engine for pages, watches them (the world's viewer model reacts to
each item) and the events go back in, so the counters exploration reads move as they would in
production. Reported per arm: the views the good and the poor uploads got, where the policy
placed them at the end (exploring, promoted, held, retired), the share of served items that were
exploration, and the engagement of exploration impressions and of all impressions.

Writes a section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_report import load_world, machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.selectors.basic import ReserveExploration  # noqa: E402
from fyp.selectors.exploration import ExplorationPolicy, Phase, successes  # noqa: E402
from fyp.sim.viewers import ItemFacts  # noqa: E402
from fyp.sim.world import WorldConfig, build_world  # noqa: E402
from fyp.types import Item, from_epoch  # noqa: E402

START = "<!-- bench:exploration:start -->"
END = "<!-- bench:exploration:end -->"


def run(viewers: int, items: int, uploads: int, requests: int, seed: int) -> dict[str, Any]:
    now = float(int(time.time()))
    world = build_world(WorldConfig(seed=seed, n_viewers=viewers, n_items=items, now=now))
    facts = next(iter(world.viewers.values())).catalog
    assert isinstance(facts, dict)
    other = build_world(WorldConfig(seed=seed + 7, n_viewers=1, n_items=uploads * 2, now=now))
    rng = random.Random(seed)
    new_items: list[Item] = []
    quality: dict[str, str] = {}
    for n, base in enumerate(rng.sample(other.items, uploads)):
        good = n % 2 == 0
        item_id = f"upload-{n}"
        quality[item_id] = "good" if good else "poor"
        facts[item_id] = ItemFacts(
            topic=other.item_topic[base.item_id], quality=0.95 if good else 0.02
        )
        new_items.append(
            Item(
                item_id=item_id,
                creator_id=f"newcomer-{n}",
                created_at=from_epoch(now),
                duration_s=base.duration_s,
                caption=base.caption,
                tags=list(base.tags),
            )
        )
    out: dict[str, Any] = {
        "viewers": viewers,
        "items": items,
        "uploads": uploads,
        "requests": requests,
        "arms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        engine = Engine(load_config(base_dir), clock=lambda: now)
        load_world(engine, world)
        engine.train()
        engine.close()
        for arm, pools in (("staged pools (default)", True), ("plain rule", False)):
            data_dir = Path(tmp) / ("pools" if pools else "plain")
            shutil.copytree(base_dir, data_dir)
            clock = [now + 60.0]
            eng = Engine(
                load_config(data_dir, selectors={"exploration_pools": pools}),
                clock=lambda clock=clock: clock[0],
            )
            eng.put_items(new_items)
            out["arms"][arm] = _loop(eng, world, quality, requests, seed, clock)
            eng.close()
    return out


def _loop(
    engine: Engine,
    world: Any,
    quality: dict[str, str],
    requests: int,
    seed: int,
    clock: list[float],
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    order = random.Random(seed)
    users = [u.user_id for u in world.users]
    views: Counter[str] = Counter()
    engaged_all = served_all = engaged_explore = served_explore = 0
    started = time.perf_counter()
    for _ in range(requests):
        user_id = order.choice(users)
        viewer = world.viewers[user_id]
        page = engine.feed(user_id, 10)
        events = []
        for entry in page.items:
            item = world.item_by_id.get(entry.item_id) or _new_item(engine, entry.item_id)
            reaction = viewer.react(item, clock[0], rng, request_id=page.request_id)
            events.extend(reaction)
            clock[0] += 8.0
            kinds = {e.type for e in reaction}
            engaged = bool(kinds & {"finish", "like"})
            served_all += 1
            engaged_all += engaged
            if any(r.code == "exploration" for r in entry.reasons):
                served_explore += 1
                engaged_explore += engaged
            if entry.item_id in quality:
                views[quality[entry.item_id]] += 1
        engine.ingest(events)
    seconds = time.perf_counter() - started
    selector = next(s for s in engine.pipeline.selectors if isinstance(s, ReserveExploration))
    policy = ExplorationPolicy(engine.config.selectors)
    handle = engine.gate.open("us", engine.service("us"), "serve_feed")
    stats = {**handle.stats.stats(list(quality))}
    handle_eu = engine.gate.open("eu", engine.service("eu"), "serve_feed")
    for item_id, record in handle_eu.stats.stats(list(quality)).items():
        mine = stats.get(item_id)
        if mine is None or record.views > mine.views:
            stats[item_id] = record
    totals = handle.stats.totals()
    v, e = successes(totals)
    bar = e / v if v else 0.5
    phases: dict[str, Counter[str]] = {"good": Counter(), "poor": Counter()}
    for item_id, label in quality.items():
        standing = policy.standing(stats.get(item_id), bar)
        phase = standing.phase.value
        if standing.phase is Phase.EXPLORING and standing.stage > 0:
            phase = "promoted"
        phases[label][phase] += 1
    return {
        "views": dict(views),
        "phases": {k: dict(c) for k, c in phases.items()},
        "exploration_share": served_explore / max(served_all, 1),
        "selector_share": selector.counters.share(),
        "engaged_rate_all": engaged_all / max(served_all, 1),
        "engaged_rate_exploration": engaged_explore / max(served_explore, 1),
        "served": served_all,
        "seconds": seconds,
    }


def _new_item(engine: Engine, item_id: str) -> Item:
    record = engine.get_item(item_id)
    return Item(
        item_id=record.item_id,
        creator_id=record.creator_id,
        created_at=from_epoch(record.created_at),
        duration_s=record.duration_s,
        caption=record.caption,
        tags=list(record.tags),
    )


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    rows = []
    for arm, a in r["arms"].items():
        good, poor = a["phases"]["good"], a["phases"]["poor"]

        def fmt(c: dict[str, int]) -> str:
            keys = ("exploring", "promoted", "graduated", "held", "retired")
            return ", ".join(f"{k} {c[k]}" for k in keys if c.get(k))

        rows.append(
            f"| {arm} | {a['views'].get('good', 0):,} | {a['views'].get('poor', 0):,} | "
            f"{fmt(good)} | {fmt(poor)} | {100 * a['exploration_share']:.1f} % | "
            f"{100 * a['engaged_rate_exploration']:.1f} % | {100 * a['engaged_rate_all']:.1f} % |"
        )
    return "\n".join(
        [
            START,
            "## Exploring new items in a closed loop (`bench/exploration.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']})",
            "",
            f"Demo world of {r['items']:,} videos and {r['viewers']:,} viewers, trained; then "
            f"{r['uploads']} new videos (half of hidden quality 0.95, half 0.02; the engine sees "
            f"only their captions) and {r['requests']:,} pages of 10 requested by the same seeded "
            "stream of simulated viewers in each arm, each page watched by the world's viewer "
            "model and its events ingested before the next request. Engaged: finished or liked. "
            "Phases at the end as the staged policy judges the counters (for the plain arm too, "
            "for comparison).",
            "",
            "| arm | views of good uploads | views of poor uploads | good uploads at the end | "
            "poor uploads at the end | exploration share of served items | engaged, "
            "exploration items | engaged, all items |",
            "|---|---:|---:|---|---|---:|---:|---:|",
            *rows,
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1500)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.viewers, args.items, args.uploads, args.requests, args.seed)
    text = section(result, ".venv/bin/python bench/exploration.py")
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
