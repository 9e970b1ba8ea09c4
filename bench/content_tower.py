"""The content towers in the feed: what they cost per request and what they find for new uploads.

One demo world, trained once (the towers alongside the region's other models). Then:

* **cost**: the towers' source fetch (viewer vector from recent positives, faiss search) timed
  per request beside the learned ALS source's fetch, for the same viewers in the same run, and
  whole feeds with the towers on and off (alternating blocks of requests);
* **new uploads**: after training, new videos are uploaded in every topic (captions and tags
  written like the topic's, no events); one sync places them. For viewers with a clear favourite
  topic, how many of the new videos in the towers' candidates are in that topic, against the
  fresh source (the newest items, the only other path for a video nobody has watched), and how
  often the top new candidate is on topic.

Writes a section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
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
from fyp.pipeline.contracts import FeedContext, FeedQuery  # noqa: E402
from fyp.pipeline.trace import Trace  # noqa: E402
from fyp.sim.world import WorldConfig, build_world  # noqa: E402
from fyp.sources.content_tower import ContentTowerSource  # noqa: E402
from fyp.sources.embedding import EmbeddingSource  # noqa: E402
from fyp.sources.fresh import FreshSource  # noqa: E402
from fyp.types import Item, from_epoch  # noqa: E402

START = "<!-- bench:content_tower:start -->"
END = "<!-- bench:content_tower:end -->"


def _pct(values: list[float]) -> dict[str, float]:
    data = np.asarray(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(data, 50)),
        "p99": float(np.percentile(data, 99)),
        "mean": float(data.mean()),
    }


def run(viewers: int, items: int, uploads_per_topic: int, seed: int) -> dict[str, Any]:
    now = float(int(time.time()))
    world = build_world(WorldConfig(seed=seed, n_viewers=viewers, n_items=items, now=now))
    out: dict[str, Any] = {"viewers": viewers, "items": items, "events": len(world.history)}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_config(Path(tmp)), clock=time.time)
        load_world(engine, world)
        started = time.perf_counter()
        reports = engine.train()
        out["train_s"] = time.perf_counter() - started
        out["towers"] = {r.region: r.content_tower for r in reports}
        engine.warm()
        config = engine.config
        towers = ContentTowerSource(
            config.sources.content_tower, config.sources.embedding, config.training
        )
        als = EmbeddingSource(config.sources.embedding, config.training)
        fresh = FreshSource(config.sources.fresh)

        def query(user_id: str, region: str) -> FeedQuery:
            handle = engine.gate.open(region, engine.service(region), "serve_feed")
            model = engine.slots[region].current
            context = FeedContext(config=config, catalog=engine.catalog, data=handle, model=model)
            return FeedQuery(
                request_id="bench",
                user_id=user_id,
                region=region,
                n=10,
                now=time.time(),
                context=context,
                trace=Trace(),
            )

        # ---- cost: the two learned sources on the same requests, then whole feeds ----------
        users = [(u.user_id, u.region) for u in world.users]
        random.Random(seed).shuffle(users)
        timing: dict[str, list[float]] = {"content_tower": [], "embedding": []}
        n_cost = min(1000, len(users) // 3)
        for user_id, region in users[:n_cost]:
            q = query(user_id, region)
            q.recent_events(config.sources.embedding.history)  # shared read, not timed
            for name, source in (("content_tower", towers), ("embedding", als)):
                t0 = time.perf_counter()
                source.fetch(q)
                timing[name].append((time.perf_counter() - t0) * 1000)
        out["source_ms"] = {name: _pct(v) for name, v in timing.items()}
        feed_ms: dict[str, list[float]] = {"on": [], "off": []}
        with_towers = engine.pipeline
        without = dataclasses.replace(
            with_towers, sources=[s for s in with_towers.sources if s.name != "content_tower"]
        )
        cursor, block, arm = n_cost, 100, "on"
        while cursor + block <= min(len(users), n_cost + 2 * 800):
            engine.pipeline = with_towers if arm == "on" else without
            for user_id, _ in users[cursor : cursor + block]:
                t0 = time.perf_counter()
                engine.feed(user_id, 10)
                feed_ms[arm].append((time.perf_counter() - t0) * 1000)
            cursor += block
            arm = "off" if arm == "on" else "on"
        engine.pipeline = with_towers
        out["feed_ms"] = {arm: _pct(v) for arm, v in feed_ms.items()}

        # ---- new uploads: found by content before anyone watched them -----------------------
        # Captions and tags for the uploads come from another world built from the same topics
        # (new sentences, not copies of trained items' captions).
        other = build_world(WorldConfig(seed=seed + 100, n_viewers=1, n_items=items // 4, now=now))
        by_topic: dict[str, list[Item]] = {}
        for item in other.items:
            by_topic.setdefault(other.item_topic[item.item_id], []).append(item)
        rng = random.Random(seed + 1)
        uploads: list[Item] = []
        upload_topic: dict[str, str] = {}
        for topic, its in sorted(by_topic.items()):
            for n, base in enumerate(rng.sample(its, min(uploads_per_topic, len(its)))):
                item_id = f"upload-{topic}-{n}"
                upload_topic[item_id] = topic
                uploads.append(
                    Item(
                        item_id=item_id,
                        creator_id=f"newcomer-{topic}",
                        created_at=from_epoch(time.time()),
                        duration_s=base.duration_s,
                        caption=base.caption,
                        tags=list(base.tags),
                    )
                )
        trained_captions = {i.caption for i in world.items}
        out["uploads_with_new_captions"] = sum(u.caption not in trained_captions for u in uploads)
        engine.put_items(uploads)
        t0 = time.perf_counter()
        placed = 0
        for region in engine.config.served_regions:
            # Sync rounds until the region's towers hold every recent item (64 per round).
            while (added := engine.place_new_items(region)) > 0:
                placed += added
        out["placed"] = placed
        out["place_s"] = time.perf_counter() - t0
        positives: dict[str, list[str]] = {}
        for event in world.history:
            if event.type in ("finish", "like", "share"):
                positives.setdefault(event.user_id, []).append(event.item_id)
        fans = []
        region_of = dict(users)
        for user_id, liked in positives.items():
            if len(liked) < 8:
                continue
            topic, count = Counter(world.item_topic[i] for i in liked).most_common(1)[0]
            if count / len(liked) >= 0.5:
                fans.append((user_id, topic))
        fans = fans[:400]
        stats = {"towers": Counter[str](), "fresh": Counter[str]()}
        for user_id, topic in fans:
            q = query(user_id, region_of[user_id])
            for name, source in (("towers", towers), ("fresh", fresh)):
                found = [c.item_id for c in source.fetch(q) if c.item_id in upload_topic]
                stats[name]["viewers"] += 1
                stats[name]["new_found"] += len(found)
                stats[name]["on_topic"] += sum(upload_topic[i] == topic for i in found)
                if found:
                    stats[name]["with_new"] += 1
                    stats[name]["top_on_topic"] += upload_topic[found[0]] == topic
        out["uploads"] = len(uploads)
        out["topics"] = len(by_topic)
        out["new_items"] = {name: dict(c) for name, c in stats.items()}
        engine.close()
    return out


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    s, f = r["source_ms"], r["feed_ms"]

    def share(name: str, key: str, of: str) -> str:
        c = r["new_items"][name]
        return f"{100 * c.get(key, 0) / max(c.get(of, 0), 1):.0f} %"

    tower = next(iter(t for t in r["towers"].values() if t and "examples" in t), {})
    return "\n".join(
        [
            START,
            "## Content towers in the feed (`bench/content_tower.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            f"Demo world: {r['items']:,} videos, {r['viewers']:,} viewers, {r['events']:,} events; "
            f"training both regions took {r['train_s']:.1f} s (the towers of one region: "
            f"{tower.get('examples', 0):,} positive events, {tower.get('items_with_text', 0):,} "
            f"captions embedded in {tower.get('embed_seconds', 0):.1f} s, "
            f"{tower.get('epochs_run', 0)} epochs, {tower.get('seconds', 0):.1f} s in all).",
            "",
            "Cost per request, measured through the engine (no HTTP), same viewers, same run:",
            "",
            "| | requests | p50 ms | p99 ms | mean ms |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {label} | {v['n']:,} | {v['p50']:.2f} | {v['p99']:.2f} | {v['mean']:.2f} |"
                for label, v in (
                    ("content towers source fetch", s["content_tower"]),
                    ("learned ALS source fetch (baseline)", s["embedding"]),
                    ("whole feed, towers on", f["on"]),
                    ("whole feed, towers off", f["off"]),
                )
            ),
            "",
            f"New uploads: {r['uploads']:,} videos in {r['topics']} topics uploaded after "
            f"training with no events ({r['uploads_with_new_captions']:,} with captions no trained "
            f"item has); one sync placed every recent item the towers did not hold yet, these "
            f"among them ({r['placed']:,} placements over both regions, {r['place_s']:.1f} s "
            "with caption embedding). For "
            f"{r['new_items']['towers'].get('viewers', 0)} viewers with a clear favourite topic "
            f"(chance: {100 / r['topics']:.0f} % per topic):",
            "",
            "| source | viewers offered a new upload | new uploads on the viewer's topic | "
            "first new upload on topic |",
            "|---|---:|---:|---:|",
            f"| content towers | {share('towers', 'with_new', 'viewers')} | "
            f"{share('towers', 'on_topic', 'new_found')} | "
            f"{share('towers', 'top_on_topic', 'with_new')} |",
            f"| fresh (newest items; baseline) | {share('fresh', 'with_new', 'viewers')} | "
            f"{share('fresh', 'on_topic', 'new_found')} | "
            f"{share('fresh', 'top_on_topic', 'with_new')} |",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=3000)
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--uploads-per-topic", type=int, default=5)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.viewers, args.items, args.uploads_per_topic, args.seed)
    text = section(result, ".venv/bin/python bench/content_tower.py")
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
