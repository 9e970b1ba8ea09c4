"""What the backfill costs a feed request, by how much of the catalog the viewer has already seen.

    .venv/bin/python bench/backfill_cost.py [--items 200000] [--requests 15] [--no-docs]

Builds a catalog of ``--items`` items (available everywhere) and one viewer per level of "seen":
each has watched (a skip event) the newest ``S`` items and switched personalization off, so the
followed-creators and trending sources find nothing new and every page comes from the backfill,
whose newest-first walk must first get past the ``S`` seen items. Each viewer then asks for
``--requests`` pages of 10; reported per level, for the first request (which walks past the
seen items and leaves a resume hint) and the later ones (which start from it): the backfill
stage's time (from the trace), the whole request's time, the catalog rows the walk read and its
round trips to the catalog. The level above ``sources.more_from_catalog.max_examined`` shows the
bound: the first walk stops there, the page is short and no hint is left. Writes the
``bench:backfill`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.storage.roles import CatalogPage, CatalogPosition  # noqa: E402
from fyp.types import Event, Item, User, from_epoch  # noqa: E402

START = "<!-- bench:backfill:start -->"
END = "<!-- bench:backfill:end -->"
NOW = 1_800_000_000.0
TAGS = [f"tag{i}" for i in range(200)]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(items: int, levels: list[int], requests: int, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    results: dict[str, Any] = {"items": items, "requests": requests, "levels": []}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_config(tmp), clock=lambda: NOW)
        started = time.perf_counter()
        # Item k is k seconds older than item 0: the newest-first order is i0, i1, ...
        for first in range(0, items, 20_000):
            engine.put_items(
                [
                    Item(
                        item_id=f"i{k}",
                        creator_id=f"c{rnd.randrange(2_000)}",
                        created_at=from_epoch(NOW - 60.0 - k),
                        duration_s=30.0,
                        caption=f"video {k}",
                        tags=rnd.sample(TAGS, 2),
                    )
                    for k in range(first, min(first + 20_000, items))
                ]
            )
        results["build_s"] = time.perf_counter() - started
        # As `fyp serve` does at start: the catalog's records in memory.
        results["warmed"] = engine.warm()
        max_examined = engine.config.sources.more_from_catalog.max_examined
        results["max_examined"] = max_examined
        engine.put_users([User(user_id=f"v{s}", region="us") for s in levels])
        for seen in levels:
            viewer = f"v{seen}"
            for first in range(0, seen, 5_000):
                engine.ingest(
                    [
                        Event(
                            event_id=f"{viewer}-{k}",
                            user_id=viewer,
                            item_id=f"i{k}",
                            type="skip",
                            ts=from_epoch(NOW - 1.0),
                        )
                        for k in range(first, min(first + 5_000, seen))
                    ]
                )
            engine.rights.put_controls(viewer, False, [], [])

        scan = engine.catalog.scan_newest
        reads: list[int] = []

        def counted(region: str, after: CatalogPosition | None, limit: int) -> CatalogPage:
            page = scan(region, after, limit)
            reads.append(page.examined)
            return page

        engine.catalog.scan_newest = counted  # type: ignore[method-assign]
        for seen in levels:
            backfill_ms, total_ms, rows, trips, sizes = [], [], [], [], []
            for _ in range(requests):
                reads.clear()
                t0 = time.perf_counter()
                result = engine.feed(f"v{seen}", 10)
                total_ms.append((time.perf_counter() - t0) * 1000.0)
                [step] = [s for s in result.trace.steps if s.stage == "backfill"]
                backfill_ms.append(step.ms)
                rows.append(sum(reads))
                trips.append(len(reads))
                sizes.append(len(result.items))
            # The first request walks past what the viewer has seen; the later ones start from
            # the resume hint it left.
            later = slice(1, None)
            results["levels"].append(
                {
                    "seen": seen,
                    "first_backfill_ms": backfill_ms[0],
                    "first_rows": rows[0],
                    "first_trips": trips[0],
                    "backfill_ms_p50": statistics.median(backfill_ms[later]),
                    "backfill_ms_p90": _percentile(backfill_ms[later], 0.9),
                    "request_ms_p50": statistics.median(total_ms[later]),
                    "rows_p50": statistics.median(rows[later]),
                    "trips_p50": statistics.median(trips[later]),
                    "page_sizes": sorted(set(sizes)),
                }
            )
            print(results["levels"][-1], flush=True)
        engine.close()
    return results


def render(results: dict[str, Any], command: str) -> str:
    machine = machine_info(REPO)
    lines = [
        START,
        "## The backfill's cost by how much the viewer has seen (`bench/backfill_cost.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"fyp {machine['fyp']} (commit {machine['git']}); a shared machine, so treat times as "
        "indicative",
        "",
        f"A catalog of {results['items']:,} items (built in {results['build_s']:.0f} s; SQLite, "
        "the embedded default; its records warmed into memory as `fyp serve` does). Per row "
        "one viewer who has watched the newest *seen* items and "
        "switched personalization off, so every page comes from the backfill's newest-first walk, "
        f"which must first get past what they have seen; {results['requests']} pages of 10 each "
        "(each page adds 10 to what they have seen). The walk reads at most "
        f"`max_examined` = {results['max_examined']:,} entries per request.",
        "",
        "The viewer's first request walks past everything they have seen and leaves a resume "
        "hint; the later requests start from it (columns *later*: the median, and p90, over "
        "requests 2 to the last).",
        "",
        "| seen | first request: backfill ms | rows read | round trips | later: backfill ms p50 "
        "| p90 | whole request ms p50 | rows read p50 | round trips p50 | page sizes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for level in results["levels"]:
        lines.append(
            f"| {level['seen']:,} | {level['first_backfill_ms']:.1f} | {level['first_rows']:,}"
            f" | {level['first_trips']} | {level['backfill_ms_p50']:.1f}"
            f" | {level['backfill_ms_p90']:.1f} | {level['request_ms_p50']:.1f}"
            f" | {level['rows_p50']:,.0f} | {level['trips_p50']:.0f}"
            f" | {', '.join(str(s) for s in level['page_sizes'])} |"
        )
    lines += [
        "",
        "The whole request's time also holds the other stages, among them the viewer-state "
        "hydrator, which reads the viewer's latest events and so grows with their history, "
        "backfill or not. "
        "When the sources fill the page (the usual case for a personalized feed) the stage only "
        "records that it was not needed. Past the bound the page comes back short and the trace "
        "says the bound was reached: that is the price of a request whose work does not grow "
        "with the catalog.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1_000, 5_000, 9_000, 20_000])
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    results = run(args.items, args.levels, args.requests, args.seed)
    command = ".venv/bin/python bench/backfill_cost.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = render(results, command.strip())
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
