"""Benchmark encryption at rest: ingest and training reads sealed vs plaintext, and KEK rotation.

    .venv/bin/python bench/encryption.py [--users 2000] [--events 200000] [--rotate-users 100000]
                                         [--rounds 2] [--no-docs]

The baseline is the region store as it was before encryption at rest (``src/fyp/storage/region.py``
at ``--baseline-rev``, loaded from git into this process), run side by side with the current one
in the same run, in alternating rounds, each on a fresh SQLite file: the same users, the same
events in batches of 1,000 (the API's batch limit), the same full scan of the event log
(``scan``, what training reads; the data key cache is emptied first, as in a new trainer
process), and the same viewer hydrations (the feed's per-request read of the viewer's state).
Then a region with ``--rotate-users`` users gets a new KEK: every data key re-wrapped, no row
touched. Writes the section between the ``bench:encryption`` markers of ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_info, write_section  # noqa: E402
from fyp.config import FypConfig  # noqa: E402
from fyp.engine import fold_policy  # noqa: E402
from fyp.storage import region as sealed_region  # noqa: E402
from fyp.storage.envelope import KeyFile  # noqa: E402
from fyp.storage.roles import ItemRecord  # noqa: E402
from fyp.types import Event, User, from_epoch  # noqa: E402

START = "<!-- bench:encryption:start -->"
END = "<!-- bench:encryption:end -->"
BASELINE_REV = "beaafadb27a9d8bf54a4d52aeb1f6d28144f1439"
"""The last commit before encryption at rest."""
NOW = 1_790_000_000.0
TYPES = ("play", "play", "play", "skip", "like", "finish", "share", "play", "skip", "comment")


def plaintext_module(rev: str) -> types.ModuleType:
    source = subprocess.check_output(
        ["git", "-C", str(REPO), "show", f"{rev}:src/fyp/storage/region.py"], text=True
    )
    module = types.ModuleType("fyp_plaintext_region")
    module.__file__ = f"<{rev[:7]}:src/fyp/storage/region.py>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def workload(
    users: int, events: int, seed: int = 7
) -> tuple[list[User], list[Event], dict[str, ItemRecord]]:
    rng = random.Random(seed)
    items = {
        f"item{i:05d}": ItemRecord(
            item_id=f"item{i:05d}",
            creator_id=f"creator{i % 300}",
            created_at=NOW - 86_400,
            duration_s=30.0,
            caption="",
            tags=(f"tag{i % 50}", f"tag{(i * 7) % 50}"),
            language=None,
            regions=(),
        )
        for i in range(6_000)
    }
    ids = list(items)
    people = [
        User(user_id=f"viewer{u:06d}", region="us", attributes={"cohort": "bench", "n": u})
        for u in range(users)
    ]
    evs = []
    for i in range(events):
        kind = TYPES[rng.randrange(len(TYPES))]
        evs.append(
            Event(
                event_id=f"e{i:08d}",
                user_id=people[rng.randrange(users)].user_id,
                item_id=ids[rng.randrange(len(ids))],
                type=kind,  # type: ignore[arg-type]
                ts=from_epoch(NOW - events + i),
                watch_ms=rng.randrange(500, 30_000) if kind == "play" else None,
                request_id=f"req{i // 10:07d}",
            )
        )
    return people, evs, items


def one_round(
    mode: str,
    module: Any,
    people: Sequence[User],
    evs: Sequence[Event],
    items: dict[str, ItemRecord],
    hydrations: int,
) -> dict[str, float]:
    policy = fold_policy(FypConfig())
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/region-us.db"
        if mode == "sealed":
            store = module.SqlRegionStore(
                url, "us", policy, keys=KeyFile(Path(tmp) / "keys" / "kek-us.json", "us")
            )
        else:
            store = module.SqlRegionStore(url, "us", policy)
        started = time.perf_counter()
        for first in range(0, len(people), 1_000):
            store.upsert_users(people[first : first + 1_000], NOW)
        out["users_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for first in range(0, len(evs), 1_000):
            store.append(evs[first : first + 1_000], items, NOW)
        out["ingest_s"] = time.perf_counter() - started
        if mode == "sealed":
            store.forget_keys()  # a trainer in a new process starts with no key unwrapped
        started = time.perf_counter()
        read = sum(len(batch) for batch in store.scan(len(evs) + 1))
        out["scan_s"] = time.perf_counter() - started
        assert read == len(evs), (read, len(evs))
        rng = random.Random(3)
        picks = [people[rng.randrange(len(people))].user_id for _ in range(hydrations)]
        started = time.perf_counter()
        for user_id in picks:
            store.hydrate(user_id, NOW)
            store.recent_for_user(user_id, 50)
        out["hydrate_ms"] = (time.perf_counter() - started) / hydrations * 1000
        store.close()
        out["db_mib"] = sum(p.stat().st_size for p in Path(tmp).glob("region-us.db*")) / 2**20
    return out


def rotation(users: int) -> dict[str, float]:
    policy = fold_policy(FypConfig())
    out: dict[str, float] = {"users": users}
    with tempfile.TemporaryDirectory() as tmp:
        store = sealed_region.SqlRegionStore(
            f"sqlite:///{tmp}/region-us.db",
            "us",
            policy,
            keys=KeyFile(Path(tmp) / "keys" / "kek-us.json", "us"),
        )
        batch = [User(user_id=f"u{u:07d}", region="us", attributes={"n": u}) for u in range(users)]
        started = time.perf_counter()
        for first in range(0, users, 5_000):
            store.upsert_users(batch[first : first + 5_000], NOW)
        out["create_s"] = time.perf_counter() - started
        started = time.perf_counter()
        report = store.rotate_kek(NOW, batch=2_000)
        out["rotate_s"] = time.perf_counter() - started
        assert report.rewrapped == users and len(report.retired) == 1
        store.close()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    plain = plaintext_module(args.baseline_rev)
    people, evs, items = workload(args.users, args.events)
    results: dict[str, list[dict[str, float]]] = {"plain": [], "sealed": []}
    for r in range(args.rounds):
        order = ("plain", "sealed") if r % 2 == 0 else ("sealed", "plain")
        for mode in order:
            module = sealed_region if mode == "sealed" else plain
            got = one_round(mode, module, people, evs, items, args.hydrations)
            print(mode, {k: round(v, 4) for k, v in got.items()}, file=sys.stderr)
            results[mode].append(got)
    medians = {
        mode: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        for mode, rounds in results.items()
    }
    return {"medians": medians, "rotation": rotation(args.rotate_users)}


def section(r: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    m = machine_info(REPO)
    p, s = r["medians"]["plain"], r["medians"]["sealed"]
    n, u = args.events, args.users

    def change(a: float, b: float) -> str:
        return f"{(b / a - 1) * 100:+.0f} %"

    rot = r["rotation"]
    rows = [
        (
            f"create {u:,} users, 1,000 per transaction",
            f"{p['users_s']:.2f} s",
            f"{s['users_s']:.2f} s",
            change(p["users_s"], s["users_s"]),
        ),
        (
            f"**ingest {n:,} events**, 1,000 per transaction (state, stats folded in)",
            f"{n / p['ingest_s']:,.0f} events/s",
            f"{n / s['ingest_s']:,.0f} events/s",
            change(n / p["ingest_s"], n / s["ingest_s"]),
        ),
        (
            "**full event log read** (`scan`, what training reads; key cache cold)",
            f"{n / p['scan_s']:,.0f} events/s",
            f"{n / s['scan_s']:,.0f} events/s",
            change(n / p["scan_s"], n / s["scan_s"]),
        ),
        (
            "viewer hydration + 50 recent events (the feed's per-request reads)",
            f"{p['hydrate_ms']:.2f} ms",
            f"{s['hydrate_ms']:.2f} ms",
            change(p["hydrate_ms"], s["hydrate_ms"]),
        ),
        (
            "database size (file + WAL)",
            f"{p['db_mib']:.0f} MiB",
            f"{s['db_mib']:.0f} MiB",
            change(p["db_mib"], s["db_mib"]),
        ),
    ]
    return "\n".join(
        [
            START,
            "## Encryption at rest: sealed vs plaintext, and KEK rotation (`bench/encryption.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            "One region on SQLite (WAL). *Plaintext* is the region store before encryption at rest "
            f"(`src/fyp/storage/region.py` at {args.baseline_rev[:7]}, loaded from git into the "
            "same process); *sealed* is the current one (AES-256-GCM per value under per-user "
            "data keys). Both run on the same data in the same run, in alternating rounds on "
            f"fresh files; medians of {args.rounds} rounds each. {u:,} viewers, {n:,} events over "
            "6,000 items.",
            "",
            "| measure | plaintext | sealed | change |",
            "|---|---:|---:|---:|",
            *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
            "",
            f"**`fyp keys rotate`** on a region with {int(rot['users']):,} users (each with a "
            f"data key): **{rot['rotate_s']:.1f} s** to write a new KEK version, re-wrap every "
            "data key under it (2,000 per transaction) and retire the old one; no event or "
            f"profile row is rewritten (creating those users took {rot['create_s']:.1f} s).",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rotate-users", type=int, default=100_000)
    parser.add_argument("--hydrations", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args)
    flags = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name, default in (
            ("users", 2_000),
            ("events", 200_000),
            ("rotate_users", 100_000),
            ("rounds", 2),
        )
        if getattr(args, name) != default
    ]
    command = " ".join([".venv/bin/python bench/encryption.py", *flags])
    text = section(result, args, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
