"""Soak test (not in CI): a real ``fyp serve`` under mixed load at half its measured maximum.

    .venv/bin/python bench/soak.py [--minutes 30] [--window-minutes 5] [--data-dir DIR]

1. A demo-sized data directory (``fyp demo --no-serve``, cached under ``bench/.out/soak-demo``,
   or ``--data-dir``), copied so the run starts from the same state every time.
2. ``fyp serve`` as shipped (retraining and online learning on) on a free loopback port.
3. The maximum: ``--probe-seconds`` of the mixed workload (:mod:`mixed_load`: feeds, event
   batches, controls, user upserts, item updates, exports, erasures) with
   ``--probe-concurrency`` requests back to back.
4. The soak: the same mix at half that rate, on a fixed schedule (latency counts from each
   request's scheduled start), for ``--minutes``; resident memory, open files (``/proc/<pid>/fd``)
   and threads sampled every few seconds.
5. After a clean stop: every table and column of the region databases (and their audit logs),
   and every file under the models directory, searched for the ids of the users whose erasure
   was answered 200. Any hit is listed: an erased user left something behind.

Reports p50/p99 per window (all requests and per kind), memory after warm-up (the end of the
first window) and at the end (the target is a drift under 10 %), open files, and the leftovers;
writes ``bench/.out/soak-*.json`` and the section between the ``bench:soak`` markers of
``docs/BENCHMARKS.md`` (labelled as a short run below 30 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / ".out"
sys.path.insert(0, str(BENCH_DIR))

from bench_report import machine_info, write_section  # noqa: E402
from mixed_load import OK, Sample, Workload, read_world, run_closed, run_open  # noqa: E402
from server_proc import loadavg, memory_mib, start_server  # noqa: E402

START = "<!-- bench:soak:start -->"
END = "<!-- bench:soak:end -->"
DRIFT_TARGET = 0.10
WARMUP_MINUTES = 10.0
"""The online joiner holds each served impression for its window (``online.window_s``, 600 s)
before it becomes an example: memory climbs for that long under any steady load, then holds."""
ID_CHARS = r"A-Za-z0-9_.:@+\-"


def log(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"[soak {stamp}] {message}", file=sys.stderr, flush=True)


# ---- the data directory ------------------------------------------------------------------------


def demo_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    cached = OUT_DIR / "soak-demo"
    if not (cached / "demo-world.json").exists():
        log(f"building the demo world in {cached} (once)")
        fyp = Path(sys.executable).with_name("fyp")
        command = [str(fyp), "demo", "--no-serve", "--fresh", "--data-dir", str(cached)]
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        with (OUT_DIR / "soak-demo.log").open("wb") as out:
            subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    return cached


# ---- the server's resources --------------------------------------------------------------------


def open_files(pid: int) -> int | None:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def threads(pid: int) -> int | None:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None


# ---- what erased users left ---------------------------------------------------------------------


def _id_pattern(ids: list[str]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(i.encode()) for i in sorted(ids, key=len, reverse=True))
    edge = ID_CHARS.encode()
    return re.compile(b"(?<![" + edge + b"])(?:" + alternatives + b")(?![" + edge + b"])")


def leftovers(data_dir: Path, ids: list[str]) -> dict[str, int]:
    """Where the ``ids`` still appear: ``file:table.column`` -> rows, ``models/<path>`` -> hits.

    Every column of every table of each region database (data and audit log) is read whole,
    text and bytes alike, and searched for each id as a whole token (``u1`` does not match
    ``u10``); every file under ``models/`` likewise."""
    if not ids:
        return {}
    pattern = _id_pattern(ids)
    found: dict[str, int] = {}
    for path in sorted(data_dir.glob("region-*.db")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                columns = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
                for column in columns:
                    hits = 0
                    for (value,) in db.execute(f'SELECT "{column}" FROM "{table}"'):
                        if isinstance(value, str):
                            value = value.encode()
                        if isinstance(value, bytes) and pattern.search(value):
                            hits += 1
                    if hits:
                        found[f"{path.name}:{table}.{column}"] = hits
    models = data_dir / "models"
    for path in sorted(p for p in models.rglob("*") if p.is_file()):
        hits = len(pattern.findall(path.read_bytes()))
        if hits:
            found[f"models/{path.relative_to(models)}"] = hits
    return found


# ---- the run -----------------------------------------------------------------------------------


def _percentiles(samples: list[Sample]) -> dict[str, float | int | None]:
    ok = [s.ms for s in samples if s.status in OK]
    out: dict[str, float | int | None] = {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
    }
    if ok:
        p50, p99 = np.percentile(np.asarray(ok), [50, 99])
        out.update(p50_ms=float(p50), p99_ms=float(p99))
    else:
        out.update(p50_ms=None, p99_ms=None)
    return out


def windows(samples: list[Sample], window_s: float, seconds: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start = 0.0
    while start < seconds - 1e-9:
        end = min(start + window_s, seconds)
        inside = [s for s in samples if start <= s.at_s < end]
        kinds = sorted({s.kind for s in inside})
        out.append(
            {
                "from_s": start,
                "to_s": end,
                "all": _percentiles(inside),
                "kinds": {k: _percentiles([s for s in inside if s.kind == k]) for k in kinds},
                "statuses": dict(Counter(s.status for s in inside)),
            }
        )
        start = end
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = demo_dir(args.data_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    work = OUT_DIR / f"soak-{stamp}"
    data = work / "data"
    log(f"copying {source} to {data}")
    shutil.copytree(source, data, ignore=shutil.ignore_patterns("demo-input", ".retrainer.lock"))
    server = start_server(data, work / "server.log", background_training=True)
    pid = server.pid
    log(f"fyp serve (pid {pid}) on {server.base_url}, started in {server.startup_s:.1f}s")
    result: dict[str, Any] = {"started_rss_mib": memory_mib(pid), "load_before": loadavg()}
    workload = Workload(read_world(data), f"soak{os.getpid()}", seed=args.seed)
    try:
        log(f"maximum: {args.probe_seconds:.0f}s, {args.probe_concurrency} in flight")
        probe, probe_s = asyncio.run(
            run_closed(server.base_url, workload, args.probe_seconds, args.probe_concurrency)
        )
        ok = sum(1 for s in probe if s.status in OK)
        max_rps = ok / probe_s
        rate = max_rps * args.load_share
        result["probe"] = {"seconds": probe_s, **_percentiles(probe), "max_rps": max_rps}
        log(f"maximum {max_rps:.1f} requests/s; soaking at {rate:.1f}/s for {args.minutes} min")
        memory: list[dict[str, Any]] = []

        def sample(elapsed: float) -> None:
            memory.append(
                {
                    "at_s": elapsed,
                    **memory_mib(pid),
                    "open_files": open_files(pid),
                    "threads": threads(pid),
                }
            )
            if len(memory) % 12 == 0:
                m = memory[-1]
                log(
                    f"  {elapsed / 60:5.1f} min  rss {m.get('VmRSS', 0):.0f} MiB "
                    f"(anon {m.get('RssAnon', 0):.0f})  files {m['open_files']}  "
                    f"threads {m['threads']}"
                )

        seconds = args.minutes * 60.0
        sample(0.0)
        samples, soak_s = asyncio.run(
            run_open(server.base_url, workload, seconds, rate, on_tick=sample, tick_s=5.0)
        )
        sample(soak_s)
        result["soak"] = {
            "rate": rate,
            "seconds": soak_s,
            "offered": len(samples),
            **_percentiles(samples),
            "statuses": dict(Counter(s.status for s in samples)),
        }
        result["windows"] = windows(samples, args.window_minutes * 60.0, seconds)
        result["memory"] = memory
        result["alive"] = server.process.poll() is None
    finally:
        log("stopping the server")
        result["exit_code"] = server.stop(timeout_s=120.0)
    erased = [u for u, status in workload.erase_answers.items() if status == 200]
    failed = {u: s for u, s in workload.erase_answers.items() if s != 200}
    log(f"searching the data directory for {len(erased)} erased users")
    result["erasures"] = {
        "answered_200": len(erased),
        "other_answers": dict(Counter(str(s) for s in failed.values())),
        "leftovers": leftovers(data, erased),
        "leftovers_of_failed_erasures": leftovers(data, sorted(failed)),
    }
    result["errors_in_log"] = _errors_in_log(work / "server.log")
    result["data_dir"] = str(data)
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    return result


def _errors_in_log(path: Path) -> dict[str, int]:
    """The last line of each traceback in the server log, counted (what failed, how often)."""
    found: Counter[str] = Counter()
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            if j < len(lines):
                found[lines[j][:160]] += 1
    return dict(found.most_common(10))


# ---- the report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _memory_at(memory: list[dict[str, Any]], at_s: float) -> dict[str, Any]:
    """The first sample at or after ``at_s`` (the last one if none)."""
    return next((m for m in memory if m["at_s"] >= at_s - 1e-6), memory[-1])


def memory_summary(result: dict[str, Any], warmup_s: float) -> dict[str, Any]:
    memory = result["memory"]
    warm = _memory_at(memory, warmup_s)
    end = memory[-1]
    drift = (end["VmRSS"] - warm["VmRSS"]) / warm["VmRSS"]
    files = [m["open_files"] for m in memory if m["open_files"] is not None]
    return {
        "warm": warm,
        "end": end,
        "peak_rss": max(m.get("VmHWM", 0.0) for m in memory),
        "drift": drift,
        "files": (files[0], warm["open_files"], end["open_files"], max(files)),
        "threads": (warm["threads"], end["threads"], max(m["threads"] or 0 for m in memory)),
    }


def section(result: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    m = machine_info(REPO)
    mem = memory_summary(result, args.warmup_minutes * 60.0)
    label = "" if args.minutes >= 30 else f" (short run: {args.minutes:g} minutes)"
    soak = result["soak"]
    lines = [
        START,
        f"## Soak: mixed load at half the maximum{label} (`bench/soak.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']:.0f} GiB, Python {m['python']}, "
        f"fyp {m['fyp']} (commit {m['git']}); a shared machine (load average "
        f"{result['load_before'][0]:.1f} at the start), so treat times as indicative",
        "",
        "`fyp serve` as shipped (retraining and online learning on) on the demo world "
        "(6,000 videos, 1,000 viewers, 105,000 past events), one process. The mix: "
        + ", ".join(f"{k} {v:.0%}" for k, v in workload_mix().items())
        + " (feeds of 10 items; event batches of 5; created users erased oldest first once 40 "
        "are alive). Maximum measured first: "
        f"{result['probe']['max_rps']:.1f} requests/s ({args.probe_seconds:.0f} s, "
        f"{args.probe_concurrency} in flight); the soak offers "
        f"{soak['rate']:.1f} requests/s on a fixed schedule (latency from the scheduled start).",
        "",
        "| window | requests | errors | p50 (ms) | p99 (ms) | feed p50 / p99 | events p50 / p99 "
        "| erase p50 / p99 | RSS at its end (MiB) | open files |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in result["windows"]:
        kinds = w["kinds"]

        def pair(kind: str, kinds: dict[str, Any] = kinds) -> str:
            k = kinds.get(kind)
            return "n/a" if k is None else f"{_ms(k['p50_ms'])} / {_ms(k['p99_ms'])}"

        at_end = _memory_at(result["memory"], w["to_s"])
        lines.append(
            f"| {w['from_s'] / 60:g}-{w['to_s'] / 60:g} min | {w['all']['requests']:,} | "
            f"{w['all']['errors']:,} | {_ms(w['all']['p50_ms'])} | {_ms(w['all']['p99_ms'])} | "
            f"{pair('feed')} | {pair('events')} | {pair('erase')} | "
            f"{at_end.get('VmRSS', 0):.0f} | {at_end.get('open_files')} |"
        )
    warm, end = mem["warm"], mem["end"]
    verdict = "met" if mem["drift"] < DRIFT_TARGET else "NOT met"
    er = result["erasures"]
    errors = {k: v for k, v in soak["statuses"].items() if k not in OK}
    lines += [
        "",
        f"Memory (resident, the server process): {warm['VmRSS']:.0f} MiB after a warm-up of "
        f"{args.warmup_minutes:g} min ({warm['RssAnon']:.0f} MiB heap), {end['VmRSS']:.0f} MiB "
        f"at the end ({end['RssAnon']:.0f} MiB heap), peak {mem['peak_rss']:.0f} MiB: drift "
        f"{mem['drift']:+.1%} (target under {DRIFT_TARGET:.0%}: {verdict}).  ",
        f"Open files: {mem['files'][0]} at the start, {mem['files'][1]} after warm-up, "
        f"{mem['files'][2]} at the end (most {mem['files'][3]}); threads {mem['threads'][0]} "
        f"after warm-up, {mem['threads'][1]} at the end (most {mem['threads'][2]}).  ",
        "Answers other than 200 (and 404 for a user being erased): "
        + (", ".join(f"{k} x {v}" for k, v in sorted(errors.items())) or "none")
        + ".  ",
        f"Erasures answered 200: {er['answered_200']}; other answers: "
        + (", ".join(f"{k} x {v}" for k, v in er["other_answers"].items()) or "none")
        + ".  ",
        "Left behind by users whose erasure was answered 200 (every column of every table of "
        "the region databases and audit logs, every file under `models/`): "
        + (
            ", ".join(f"`{k}` {v}" for k, v in sorted(er["leftovers"].items()))
            if er["leftovers"]
            else "nothing"
        )
        + ".",
    ]
    if er["leftovers_of_failed_erasures"]:
        lines.append(
            "Left behind by users whose erasure failed: "
            + ", ".join(f"`{k}` {v}" for k, v in sorted(er["leftovers_of_failed_erasures"].items()))
            + "."
        )
    if result["errors_in_log"]:
        lines += ["", "Tracebacks in the server log (last line, count):", ""]
        lines += [f"- `{k}` x {v}" for k, v in result["errors_in_log"].items()]
    lines.append(END)
    return "\n".join(lines)


def workload_mix() -> dict[str, float]:
    from mixed_load import MIX

    return MIX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window-minutes", type=float, default=5.0)
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="memory drift is measured from here (default 10, the online joiner's window; "
        "the first window in runs shorter than 20 minutes)",
    )
    parser.add_argument("--probe-seconds", type=float, default=60.0)
    parser.add_argument("--probe-concurrency", type=int, default=8)
    parser.add_argument("--load-share", type=float, default=0.5, help="of the maximum")
    parser.add_argument("--data-dir", type=Path, default=None, help="a demo data dir (copied)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", action="store_true", help="keep the run's data directory")
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    if args.warmup_minutes is None:
        args.warmup_minutes = WARMUP_MINUTES if args.minutes >= 20 else args.window_minutes
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = run(args)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"soak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    command = ".venv/bin/python bench/soak.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-docs"
    )
    text = section(result, args, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
