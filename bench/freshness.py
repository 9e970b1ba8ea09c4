"""Freshness of the feed: from an engagement to its effect on the viewer's very next page.

One demo world, trained. For each of a few hundred viewers: ask for a page, then send one event
about its first item and ask for the next page, in one process (the engine, no HTTP). Three kinds
of event, in turn: not-interested (the item and its creator must be gone from the next page), a
finish of a new item (the item must never come back: it is seen), and a like (the item's
creator's affinity must rise in the viewer's state). Timed: the event's ingestion (committed and
applied to the viewer's state), the next feed, and both together, the time from the engagement
to a page that reflects it. Every check is asserted; a miss is counted, never skipped.

Writes a section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
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
from fyp.sim.world import WorldConfig, build_world  # noqa: E402
from fyp.types import Event, from_epoch  # noqa: E402

START = "<!-- bench:freshness:start -->"
END = "<!-- bench:freshness:end -->"
KINDS = ("not_interested", "finish", "like")


def run(viewers: int, items: int, requests: int, seed: int) -> dict[str, Any]:
    now = float(int(time.time()))
    world = build_world(WorldConfig(seed=seed, n_viewers=viewers, n_items=items, now=now))
    timings: dict[str, dict[str, list[float]]] = {
        k: {"ingest": [], "feed": [], "total": []} for k in KINDS
    }
    misses: dict[str, int] = dict.fromkeys(KINDS, 0)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_config(Path(tmp)))
        load_world(engine, world)
        engine.train()
        engine.warm()
        users = [u.user_id for u in world.users]
        random.Random(seed).shuffle(users)
        for n, user_id in enumerate(users[:requests]):
            kind = KINDS[n % len(KINDS)]
            page = engine.feed(user_id, 10)
            if not page.items:
                misses[kind] += 1
                continue
            item_id = page.items[0].item_id
            creator = engine.get_item(item_id).creator_id
            region = engine.gate.locate(user_id)
            assert region is not None
            before = _creator_affinity(engine, region, user_id, creator)
            event = Event(
                event_id=uuid.uuid4().hex,
                user_id=user_id,
                item_id=item_id,
                type=kind,
                ts=from_epoch(time.time()),
            )
            t0 = time.perf_counter()
            result = engine.ingest([event])
            t1 = time.perf_counter()
            following = engine.feed(user_id, 10)
            t2 = time.perf_counter()
            served = {i.item_id for i in following.items}
            creators = {engine.get_item(i).creator_id for i in served}
            if kind == "not_interested":
                ok = item_id not in served and creator not in creators
            elif kind == "finish":
                ok = item_id not in served
            else:
                ok = _creator_affinity(engine, region, user_id, creator) > before
            if result.accepted != 1 or not ok:
                misses[kind] += 1
            timings[kind]["ingest"].append((t1 - t0) * 1000)
            timings[kind]["feed"].append((t2 - t1) * 1000)
            timings[kind]["total"].append((t2 - t0) * 1000)
        engine.close()
    return {
        "viewers": viewers,
        "items": items,
        "events": len(world.history),
        "misses": misses,
        "ms": {
            kind: {
                part: {
                    "n": len(v),
                    "p50": float(np.percentile(v, 50)),
                    "p99": float(np.percentile(v, 99)),
                }
                for part, v in parts.items()
            }
            for kind, parts in timings.items()
        },
    }


def _creator_affinity(engine: Engine, region: str, user_id: str, creator: str) -> float:
    handle = engine.gate.open(region, engine.service(region), "serve_feed")
    state = handle.state.hydrate(user_id, time.time())
    return float(state.creator_affinity.get(creator, 0.0))


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    rows = []
    for kind, parts in r["ms"].items():
        i, f, t = parts["ingest"], parts["feed"], parts["total"]
        rows.append(
            f"| {kind} | {t['n']:,} | {r['misses'][kind]} | {i['p50']:.1f} / {i['p99']:.1f} | "
            f"{f['p50']:.1f} / {f['p99']:.1f} | **{t['p50']:.1f}** / {t['p99']:.1f} |"
        )
    return "\n".join(
        [
            START,
            "## Freshness: an engagement's effect on the very next page (`bench/freshness.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            f"Demo world of {r['items']:,} videos, {r['viewers']:,} viewers, {r['events']:,} "
            "events, trained; one process (the engine, no HTTP). Per viewer: a page, one event "
            "about its first item, the next page. Checked on every next page: not-interested: the "
            "item and its creator are gone; finish: the item is gone for good (seen); like: the "
            "creator's affinity in the viewer's state rose. Target (issue 5): under 100 ms from "
            "the engagement to a page that reflects it, in one process.",
            "",
            "| event | viewers | checks missed | ingest ms p50 / p99 | next feed ms p50 / p99 | "
            "engagement to reflected page ms p50 / p99 |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=2000)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.viewers, args.items, args.requests, args.seed)
    text = section(result, ".venv/bin/python bench/freshness.py")
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
