"""What waiting for the disk costs each kind of acknowledged write: SQLite FULL against NORMAL.

    .venv/bin/python bench/durability.py [--rounds 4] [--block 15] [--no-docs]

SQLite runs in WAL mode. With ``synchronous=NORMAL`` a commit is written to the WAL file but not
flushed (``fsync``) until the next checkpoint: it survives a crash of the process, not a power
loss. With ``FULL`` every commit flushes the WAL before it returns. fyp picks one per
transaction (``Database.write(durable=...)``). This script times each kind of write the API
acknowledges, through the engine calls the routes make (no HTTP), once with every transaction
forced to NORMAL and once forced to FULL, in alternating blocks of the same run (so both see the
same machine and disk), and prints medians per write. It also says which setting fyp uses for
each kind. Writes the section between the ``bench:durability`` markers of
``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.governance.policy import Principal  # noqa: E402
from fyp.storage import sql  # noqa: E402
from fyp.types import Event, Item, User  # noqa: E402

START = "<!-- bench:durability:start -->"
END = "<!-- bench:durability:end -->"
T0 = 1_790_000_000.0
MODES = ("NORMAL", "FULL")

_forced: dict[str, bool | None] = {"durable": None}
_original_write = sql.Database.write


def _write(self: sql.Database, durable: bool = False) -> contextlib.AbstractContextManager[Any]:
    forced = _forced["durable"]
    return _original_write(self, durable if forced is None else forced)


@contextlib.contextmanager
def forced(mode: str) -> Iterator[None]:
    """Every write transaction in ``mode`` (``NORMAL`` or ``FULL``) while inside."""
    _forced["durable"] = mode == "FULL"
    try:
        yield
    finally:
        _forced["durable"] = None


SHIPPED = {
    "event batch (1 event)": "FULL",
    "event batch (100 events)": "FULL",
    "user upsert (1 user)": "FULL",
    "item upsert (1 item)": "FULL",
    "controls (PUT)": "FULL",
    "interests reset": "FULL",
    "erasure (user with 20 events)": "FULL",
    "export (its audit entry)": "FULL",
    "gate open (its audit entry)": "NORMAL",
    "feed (served log, seen items)": "NORMAL",
    "signed tree head": "FULL",
}
"""What fyp uses for each kind (see docs/TRUST.md, "Durability")."""


class Bench:
    """A fresh data directory with a small catalog and users to write about."""

    def __init__(self, tmp: Path) -> None:
        self.engine = Engine(load_config(tmp), clock=lambda: T0 + 3600)
        self.engine.put_items(
            [
                Item(
                    item_id=f"v{i}",
                    creator_id=f"c{i % 50}",
                    created_at=T0 - i,
                    duration_s=30,
                    caption=f"video {i}",
                    tags=[f"t{i % 20}"],
                )
                for i in range(2000)
            ]
        )
        self.engine.put_users([User(user_id=f"u{i}", region="us") for i in range(200)])
        self.engine.ingest(
            [
                Event(
                    event_id=f"s{u}-{j}",
                    user_id=f"u{u}",
                    item_id=f"v{(u * 7 + j) % 2000}",
                    type="like",
                    ts=T0 + j,
                )
                for u in range(200)
                for j in range(20)
            ]
        )
        self.counter = itertools.count()

    def ops(self) -> dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]]:
        """Per kind: (prepare, write). ``prepare`` is not timed; ``write`` gets its result."""
        e = self.engine
        n = self.counter

        def events(size: int) -> Callable[[Any], Any]:
            def write(_: Any) -> Any:
                k = next(n)
                return e.ingest(
                    [
                        Event(
                            event_id=f"b{k}-{j}",
                            user_id=f"u{k % 200}",
                            item_id=f"v{(k + j) % 2000}",
                            type="play",
                            ts=T0 + k,
                            watch_ms=9000,
                        )
                        for j in range(size)
                    ]
                )

            return write

        def new_user() -> str:
            user = f"x{next(n)}"
            e.put_users([User(user_id=user, region="us")])
            e.ingest(
                [
                    Event(event_id=f"{user}-{j}", user_id=user, item_id=f"v{j}", type="like", ts=T0)
                    for j in range(20)
                ]
            )
            return user

        def nothing() -> None:
            return None

        def user_id() -> str:
            return f"u{next(n) % 200}"

        return {
            "event batch (1 event)": (nothing, events(1)),
            "event batch (100 events)": (nothing, events(100)),
            "user upsert (1 user)": (
                nothing,
                lambda _: e.put_users([User(user_id=f"n{next(n)}", region="us")]),
            ),
            "item upsert (1 item)": (
                nothing,
                lambda _: e.put_items(
                    [Item(item_id=f"w{next(n)}", creator_id="c1", created_at=T0, duration_s=9)]
                ),
            ),
            "controls (PUT)": (
                user_id,
                lambda u: e.rights.put_controls(u, True, [f"k{next(n)}"], []),
            ),
            "interests reset": (user_id, lambda u: e.rights.delete_interests(u)),
            "erasure (user with 20 events)": (new_user, lambda u: e.rights.erase(u)),
            "export (its audit entry)": (user_id, lambda u: e.rights.export(u)),
            "gate open (its audit entry)": (
                nothing,
                lambda _: e.gate.open("us", Principal.service("us"), "serve_feed"),
            ),
            "feed (served log, seen items)": (user_id, lambda u: e.feed(u, 10)),
            "signed tree head": (
                lambda: e.gate.open("us", Principal.service("us"), "operate"),
                lambda _: e.gate.sign_audit_head("us"),
            ),
        }

    def close(self) -> None:
        self.engine.close()


def run(rounds: int, block: int) -> dict[str, dict[str, list[float]]]:
    """Per kind and mode, the time of each write (ms): ``rounds`` alternating blocks of
    ``block`` writes in each mode (the order of the two modes swaps every round)."""
    sql.Database.write = _write  # type: ignore[method-assign,assignment]
    times: dict[str, dict[str, list[float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(Path(tmp))
            try:
                ops = bench.ops()
                for kind, (prepare, write) in ops.items():
                    times[kind] = {mode: [] for mode in MODES}
                    for r in range(rounds):
                        for mode in MODES if r % 2 == 0 else MODES[::-1]:
                            with forced(mode):
                                for _ in range(block):
                                    arg = prepare()
                                    started = time.perf_counter()
                                    write(arg)
                                    times[kind][mode].append(
                                        (time.perf_counter() - started) * 1000.0
                                    )
            finally:
                bench.close()
    finally:
        sql.Database.write = _original_write  # type: ignore[method-assign]
    return times


def _disk() -> str:
    try:
        out = (
            subprocess.run(
                ["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, check=True
            )
            .stdout.splitlines()[-1]
            .split()
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"
    return f"{out[1]} on {out[0]}"


def section(times: dict[str, dict[str, list[float]]], command: str, rounds: int, block: int) -> str:
    m = machine_info(REPO)
    lines = [
        START,
        "## Durability: what FULL costs against NORMAL (`bench/durability.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); data on {_disk()}; a shared machine, so treat times as indicative",
        "",
        "Embedded default (SQLite, WAL), a data directory with 2,000 items and 200 users of 20 "
        "events each; each write through the engine call its API route makes (no HTTP), every "
        f"transaction forced to NORMAL or to FULL in {rounds} alternating blocks of {block} "
        "writes each (same run, same disk). Median and 90th percentile per write; the extra is "
        "FULL's median minus NORMAL's. `fyp uses` is the setting shipped for that write (why: "
        "docs/TRUST.md, Durability).",
        "",
        "| write | NORMAL p50 / p90 (ms) | FULL p50 / p90 (ms) | extra per write | fyp uses |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, by_mode in times.items():
        normal, full = by_mode["NORMAL"], by_mode["FULL"]
        n50, f50 = statistics.median(normal), statistics.median(full)
        lines.append(
            f"| {kind} | {n50:.2f} / {_p90(normal):.2f} | {f50:.2f} / {_p90(full):.2f} | "
            f"{f50 - n50:+.2f} ms | {SHIPPED[kind]} |"
        )
    lines += [
        "",
        "A FULL commit also flushes every NORMAL commit before it in the same database file "
        "(one WAL): after a durable write, everything written earlier to that file is on disk "
        "too.",
        END,
    ]
    return "\n".join(lines)


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=15)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    times = run(args.rounds, args.block)
    command = ".venv/bin/python bench/durability.py"
    if (args.rounds, args.block) != (4, 15):
        command += f" --rounds {args.rounds} --block {args.block}"
    text = section(times, command, args.rounds, args.block)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
