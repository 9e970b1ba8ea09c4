"""Benchmark users' rights on the embedded default: export and erasure of a heavy user.

    .venv/bin/python bench/rights.py [--events 100000] [--no-docs]

Builds a fresh data directory with a small catalog, one user with ``--events`` events (plus a
few hundred light users around them), and times, through the engine the API calls: the export
of the heavy user (everything held about them, as the JSON the API returns), the switch of
personalization off and the next feed, and the erasure (rows, routing cache, audit entry, signed
head, inclusion proof). Baseline in the same run: a light user's export and erasure. Writes the
section between the ``bench:rights`` markers of ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.types import Event, Item, User  # noqa: E402

START = "<!-- bench:rights:start -->"
END = "<!-- bench:rights:end -->"
T0 = 1_790_000_000.0
KINDS = ("play", "finish", "like", "skip", "share")
T = TypeVar("T")


def _timed(fn: Callable[..., T], *args: object) -> tuple[float, T]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def run(heavy_events: int) -> dict[str, float]:
    out: dict[str, float] = {"events": heavy_events}
    with tempfile.TemporaryDirectory() as tmp:
        # The heavy user's events are a second apart from T0 on: the clock is a day past the
        # last one, or the ingest window would refuse the tail as dated in the future.
        engine = Engine(load_config(Path(tmp)), clock=lambda: T0 + heavy_events + 86_400)
        items = [
            Item(
                item_id=f"v{i}",
                creator_id=f"c{i % 300}",
                created_at=T0 - i,
                duration_s=30,
                caption=f"video {i}",
                tags=[f"t{i % 40}"],
            )
            for i in range(5000)
        ]
        engine.put_items(items)
        engine.put_users([User(user_id=f"u{i}", region="us") for i in range(300)])
        started = time.perf_counter()
        batch: list[Event | None] = []
        for i in range(heavy_events):
            batch.append(
                Event(
                    event_id=f"h{i}",
                    user_id="u0",
                    item_id=f"v{i % 5000}",
                    type=KINDS[i % len(KINDS)],
                    ts=T0 + i,
                    watch_ms=12_000 if i % len(KINDS) == 0 else None,
                )
            )
            if len(batch) == 5000:
                engine.ingest(batch)
                batch = []
        light = [
            Event(event_id=f"l{u}-{j}", user_id=f"u{u}", item_id=f"v{j}", type="like", ts=T0 + j)
            for u in range(1, 300)
            for j in range(20)
        ]
        engine.ingest([*batch, *light])
        out["load_s"] = time.perf_counter() - started
        engine.feed("u0", 10)

        out["export_s"], exported = _timed(engine.rights.export, "u0")
        out["export_mib"] = len(json.dumps(exported)) / 2**20
        out["export_light_s"], _ = _timed(engine.rights.export, "u1")
        out["controls_s"], _ = _timed(engine.rights.put_controls, "u0", False, [], [])
        out["plain_feed_s"], _ = _timed(engine.feed, "u0", 10)
        out["erase_s"], receipt = _timed(engine.rights.erase, "u0")
        out["erase_rows"] = float(sum(receipt["rows_deleted"].values()))
        out["erase_light_s"], _ = _timed(engine.rights.erase, "u1")
        engine.close()
    return out


def section(r: dict[str, float], command: str) -> str:
    m = machine_info(REPO)
    return "\n".join(
        [
            START,
            "## Users' rights: export and erasure (`bench/rights.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            f"Embedded default (SQLite), one heavy user with {int(r['events']):,} events among "
            "300 users; times through the engine calls the API routes make (no HTTP). The light "
            "user (20 events) is the baseline in the same run.",
            "",
            "| measure | heavy user | light user |",
            "|---|---:|---:|",
            f"| export everything held (JSON {r['export_mib']:.1f} MiB for the heavy user) | "
            f"{r['export_s']:.2f} s | {r['export_light_s'] * 1000:.1f} ms |",
            f"| erase ({int(r['erase_rows']):,} rows), sign a tree head, build the receipt's "
            f"proof | {r['erase_s']:.2f} s | {r['erase_light_s'] * 1000:.1f} ms |",
            f"| switch personalization off | {r['controls_s'] * 1000:.1f} ms | |",
            f"| the next (non-personalized) feed | {r['plain_feed_s'] * 1000:.1f} ms | |",
            "",
            "Targets (issue 4): export of a 100,000-event user in under a minute; the user's feed "
            "and profile gone within a second of the erasure call.",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.events)
    command = ".venv/bin/python bench/rights.py" + (
        f" --events {args.events}" if args.events != 100_000 else ""
    )
    text = section(result, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
