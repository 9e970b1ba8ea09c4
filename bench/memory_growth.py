"""Where a serving process's memory goes under mixed load: tracemalloc and object counts.

Runs the same app as ``fyp serve`` (one process, background training on unless
``--no-background-training``) in a child process, drives it with :mod:`mixed_load` in a closed
loop, prints the size of every in-process cache and queue (:func:`inventory`) after each slice of
load, and compares the child at the end of a warm-up with the child at the end of the run:

* resident memory, split into the process's own heap (``RssAnon``) and mapped files
  (``RssFile``: SQLite's memory map, model files), and SQLite's own allocations;
* Python allocations by where they were made (tracemalloc, grouped by the innermost fyp frame
  and by line), largest growth first;
* live objects by type (``gc.get_objects``), largest growth first; ``gc`` counters.

Tracing slows the server many times over, so it starts only after the warm-up and the load is a
closed loop with few requests in flight; ``--no-trace`` watches cache sizes and resident memory
at full speed. Not a test: a tool to find what grows, e.g.::

    fyp demo --no-serve --data-dir /tmp/demo
    python bench/memory_growth.py --data-dir /tmp/demo --warmup-s 60 --seconds 180
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import ctypes.util
import gc
import json
import linecache
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from mixed_load import Workload, read_world, run_closed  # noqa: E402
from server_proc import free_port, memory_mib  # noqa: E402

FRAMES = 8


# ---- the child: the server with tracing --------------------------------------------------------


def _sqlite_memory() -> int | None:
    """Bytes SQLite holds (page caches, statements) in this process, if its library is found."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return int(lib.sqlite3_memory_used())


def _fyp_frame(trace: tracemalloc.Traceback) -> str:
    """The innermost frame in fyp's own code (else the innermost frame): who asked for it."""
    for frame in reversed(trace):  # most recent call last
        if "/fyp/" in frame.filename and "/site-packages/" not in frame.filename:
            return f"{frame.filename.split('/fyp/', 1)[1]}:{frame.lineno}"
    frame = trace[-1]
    return f"{frame.filename}:{frame.lineno}"


def _type_counts() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _len(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def inventory(engine: Any) -> dict[str, int | None]:
    """The size (entries) of every in-process cache and queue of a serving engine, by name.

    Reads private attributes on purpose: this is the list docs/TRUST.md bounds, measured.
    """
    out: dict[str, int | None] = {"gate.home_routes": _len(engine.gate._home)}
    for region, store in engine.gate._stores.items():
        out[f"{region}.item_stats_cache"] = _len(store._stats_cache)
        out[f"{region}.data_key_cache"] = _len(store._deks)
    out["catalog.items_cache"] = _len(engine.catalog._cache)
    out["catalog.newest_cache"] = _len(engine.catalog._newest_cache)
    for region, join in engine._joins.items():
        j = join.joiner
        out[f"{region}.joiner.open"] = _len(j._open)
        out[f"{region}.joiner.closed_keys"] = _len(j._closed)
        out[f"{region}.joiner.closed_heap"] = _len(j._closed_heap)
        out[f"{region}.joiner.open_heap"] = _len(j._open_heap)
        out[f"{region}.joiner.held_events"] = _len(j._orphans)
        out[f"{region}.joiner.by_viewer"] = _len(j._by_viewer)
        out[f"{region}.bus.entries"] = _len(join.bus)
        entries = getattr(join.bus, "_entries", None)
        if entries is not None:
            out[f"{region}.bus.kib"] = sum(len(v) for v in list(entries.values())) // 1024
    for region, arms in engine.arm_trainers.items():
        for arm, trainer in arms.items():
            out[f"{region}.{arm}.trainer.seen_filter"] = _len(trainer._seen)
            out[f"{region}.{arm}.trainer.erased"] = _len(trainer._erased)
            learner = trainer.learner
            if learner is not None:
                for name, table in learner.tables.items():
                    out[f"{region}.{arm}.learner.{name}.rows"] = _len(table)
                    pending = getattr(table, "pending_count", None)
                    out[f"{region}.{arm}.learner.{name}.pending"] = (
                        pending() if callable(pending) else pending
                    )
    for region, slot in engine.slots.items():
        model = slot.current
        if model is not None:
            out[f"{region}.model.recent_vectors"] = _len(model._recent_vectors)
    out["retrainer.reports"] = _len(engine.retrainer.reports)
    databases = {"catalog": engine.catalog.db}
    for region, store in engine.gate._stores.items():
        databases[region] = store.db
        databases[f"{region}-audit"] = engine.gate._audit[region].db
    for name, db in databases.items():
        out[f"{name}.db.compiled_statements"] = _len(db._compiled)
    return out


class Probe:
    """Takes the snapshots the parent asks for on the child's stdin."""

    def __init__(self, out: Path, engine: Any) -> None:
        self.out = out
        self.engine = engine
        self.snaps: dict[str, Any] = {}

    def take(self, name: str, trace: bool = True) -> None:
        types = _type_counts()
        if not trace:
            snap, traced = None, 0
        elif tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            traced, _ = tracemalloc.get_traced_memory()
        else:
            # Traced from the first snapshot on: what grows after warm-up is allocated after it
            # (tracing the warm-up too would make it crawl).
            tracemalloc.start(FRAMES)
            snap, traced = tracemalloc.take_snapshot(), 0
        self.snaps[name] = {
            "inventory": inventory(self.engine),
            "snapshot": snap,
            "types": types,
            "rss": memory_mib(os.getpid()),
            "traced_mib": traced / 2**20,
            "sqlite_mib": (_sqlite_memory() or 0) / 2**20,
            "gc": gc.get_stats(),
            "threads": threading.active_count(),
            "fds": sum(1 for _ in Path(f"/proc/{os.getpid()}/fd").iterdir()),
        }

    def report(self, first: str, last: str, top: int) -> dict[str, Any]:
        a, b = self.snaps[first], self.snaps[last]
        by_frame: collections.Counter[str] = collections.Counter()
        count_by_frame: collections.Counter[str] = collections.Counter()
        by_line: list[Any] = []
        if a["snapshot"] is not None and b["snapshot"] is not None:
            for stat in b["snapshot"].compare_to(a["snapshot"], "traceback"):
                key = _fyp_frame(stat.traceback)
                by_frame[key] += stat.size_diff
                count_by_frame[key] += stat.count_diff
            by_line = b["snapshot"].compare_to(a["snapshot"], "lineno")[:top]
        types = b["types"].copy()
        types.subtract(a["types"])
        inventory_growth = {
            key: {first: a["inventory"].get(key), last: value}
            for key, value in b["inventory"].items()
        }
        return {
            "inventory": inventory_growth,
            "rss": {first: a["rss"], last: b["rss"]},
            "traced_mib": {first: a["traced_mib"], last: b["traced_mib"]},
            "sqlite_mib": {first: a["sqlite_mib"], last: b["sqlite_mib"]},
            "threads": {first: a["threads"], last: b["threads"]},
            "fds": {first: a["fds"], last: b["fds"]},
            "gc_collections": [s["collections"] for s in b["gc"]],
            "growth_by_fyp_frame": [
                {
                    "where": key,
                    "kib": size / 1024,
                    "blocks": count_by_frame[key],
                    "code": _source(key),
                }
                for key, size in by_frame.most_common(top)
            ],
            "growth_by_line": [
                {
                    "where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                    "kib": s.size_diff / 1024,
                    "blocks": s.count_diff,
                }
                for s in by_line
            ],
            "growth_by_type": [
                {"type": name, "objects": n} for name, n in types.most_common(top) if n > 0
            ],
        }


def _source(where: str) -> str:
    path, _, line = where.rpartition(":")
    for root in sys.path:
        candidate = Path(root) / "fyp" / path
        if candidate.exists():
            return linecache.getline(str(candidate), int(line)).strip()
    return linecache.getline(path, int(line)).strip() if line.isdigit() else ""


def serve_traced(data_dir: Path, port: int, out: Path, background_training: bool) -> None:
    import uvicorn

    from fyp.api.app import create_app
    from fyp.config import load_config
    from fyp.engine import Engine

    config = load_config(data_dir, server={"host": "127.0.0.1", "port": port})
    engine = Engine(config)
    engine.warm()
    app = create_app(engine, background_training=background_training)
    probe = Probe(out, engine)

    def commands() -> None:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "snap":
                probe.take(words[1], trace=words[2:] != ["notrace"])
            elif words[0] == "inventory":
                out.with_suffix(".inventory.json").write_text(json.dumps(inventory(engine)))
            elif words[0] == "report":
                result = probe.report(words[1], words[2], int(words[3]))
                out.write_text(json.dumps(result, indent=1))
            print("done", flush=True)

    threading.Thread(target=commands, name="probe", daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the parent: load and report ---------------------------------------------------------------


def _ask(child: subprocess.Popen[str], command: str) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()
    if child.stdout.readline().strip() != "done":
        raise SystemExit(f"the traced server did not answer {command!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a demo data dir (copied)")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="requests in flight (closed loop)"
    )
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=180.0, help="measured, after warm-up")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="no tracemalloc (full speed): resident memory and cache sizes only",
    )
    parser.add_argument(
        "--watch",
        default="joiner.open,joiner.closed_keys,bus.entries,seen_filter,compiled_statements",
        help="inventory entries (substrings) printed after every slice",
    )
    parser.add_argument("--no-background-training", action="store_true")
    parser.add_argument(
        "--no-retraining",
        action="store_true",
        help="online learning on, batch retraining off (it dominates a traced run's time)",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / ".out" / "memory_growth.json")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_traced(
            args.data_dir, int(args.serve[0]), Path(args.serve[1]), not args.no_background_training
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="fyp-memory-") as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.data_dir, data, ignore=shutil.ignore_patterns("demo-input"))
        if args.no_retraining:
            (data / "fyp.toml").write_text("[training]\ncheck_interval_s = 1e9\n")
        port = free_port()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, "--data-dir", str(data), "--serve", str(port)]
        command.append(str(args.out))
        if args.no_background_training:
            command.append("--no-background-training")
        log = (Path(tmp) / "server.log").open("w")
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        try:
            return _drive(child, port, data, args)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
            log.close()


def _drive(child: subprocess.Popen[str], port: int, data: Path, args: argparse.Namespace) -> int:
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if child.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the traced server did not start")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    workload = Workload(read_world(data), f"mg{os.getpid()}", seed=1)

    def phase(name: str, seconds: float) -> None:
        # Closed loop in short slices: a traced server is slow, and a fixed rate would only pile
        # up requests; between slices, its memory is printed.
        print(f"{name}: {seconds:.0f}s, {args.concurrency} in flight", file=sys.stderr)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            samples, elapsed = asyncio.run(
                run_closed(base, workload, min(left, 15.0), args.concurrency)
            )
            mem = memory_mib(child.pid)
            _ask(child, "inventory")
            sizes = json.loads(args.out.with_suffix(".inventory.json").read_text())
            watched = " ".join(f"{k}={v}" for k, v in sizes.items() if any(w in k for w in watch))
            print(
                f"  {len(samples) / elapsed:5.1f} req/s  rss {mem.get('VmRSS', 0):6.1f} MiB "
                f"(anon {mem.get('RssAnon', 0):6.1f}, file {mem.get('RssFile', 0):6.1f})  "
                + watched,
                file=sys.stderr,
                flush=True,
            )

    watch = [w for w in args.watch.split(",") if w]
    phase("warm-up", args.warmup_s)
    _ask(child, "snap warm" + ("" if args.trace else " notrace"))
    phase("measured", args.seconds)
    _ask(child, "snap end" + ("" if args.trace else " notrace"))
    _ask(child, f"report warm end {args.top}")
    report = json.loads(args.out.read_text())
    print(json.dumps({k: v for k, v in report.items() if k != "growth_by_line"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
