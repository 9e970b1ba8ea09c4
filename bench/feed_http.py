"""Benchmark the For You feed over HTTP at scale, next to the stack's own ceiling (``make bench``).

Steps, all on this machine and loopback only:

1. Build a data directory (cached under ``bench/.out/data/<scale key>/``; ``--rebuild`` forces):
   generate a synthetic world as Parquet (:mod:`synth_data`), import it with the real importer
   (``fyp.ingest.importer.import_file``), train every region (``Engine.train``). Each run then
   works on a fresh copy, so feed requests of one run (seen items, logs) never leak into the next.
2. Start ``fyp serve --no-background-training --workers N`` on a free 127.0.0.1 port and wait
   until every worker has loaded the catalog and ``/healthz`` answers.
3. Load it from a separate client process (:mod:`load_client`), three phases:

   * ``trivial``: ``GET /healthz`` over 8 connections, the ceiling of the stack (uvicorn + FastAPI
     + middleware, no engine work);
   * ``feed``: ``GET /v1/users/{id}/feed?n=10`` for random users of both regions over 8
     connections, which keeps the server saturated: the feed's throughput;
   * ``feed_1conn``: the same over one connection, so no request waits behind another inside the
     server: its server-side latency is the feed's service time.

   Each phase is bounded by a request count and a time limit and starts with an uncounted
   warm-up. Feed phases draw distinct users, so no user is asked for twice.
4. Report throughput, errors, client and server (``Server-Timing``) latency, CPU and memory (summed
   over the server's processes); print a table, write ``bench/.out/feed_http-*.json`` and the
   section of ``docs/BENCHMARKS.md`` for this worker count.

``--quick`` is a smoke run (20,000 items, 2,000 users); it leaves the docs alone unless ``--docs``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / ".out"
DOCS = REPO / "docs" / "BENCHMARKS.md"

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/implicit load BLAS (Makefile too)

if str(BENCH_DIR) not in sys.path:  # run as a script or imported from elsewhere
    sys.path.insert(0, str(BENCH_DIR))

from bench_report import (  # noqa: E402
    git_revision,
    machine_info,
    markdown_section,
    terminal_report,
    update_docs,
)
from server_proc import (  # noqa: E402
    MemorySampler,
    catalog_loads,
    idle_cpu,
    loadavg,
    run_phase,
    self_peak_mib,
    start_server,
)
from synth_data import Scale, generate, user_ids_by_region  # noqa: E402

CLEAN_EXITS = (0, 130, -2)
"""How ``fyp serve`` ends after SIGINT: 0, 130 (the CLI's KeyboardInterrupt), or the signal."""


def log(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# ---- step 1: the data directory -----------------------------------------------------------------


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024.0 / 1024.0


def build(scale: Scale, root: Path) -> dict[str, Any]:
    """Generate, import and train into ``root/fyp-data``; returns what happened (also saved)."""
    from fyp.config import load_config
    from fyp.engine import Engine
    from fyp.ingest.importer import KINDS, import_file

    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    log(
        f"generating {scale.items:,} items, {scale.users:,} users, "
        f"~{scale.events_per_user:g} events/user"
    )
    generated = generate(scale, root / "input")
    peaks = {"after_generate": self_peak_mib()}
    log(f"generated {generated.counts} in {generated.seconds:.1f}s")
    data_dir = root / "fyp-data"
    engine = Engine(load_config(data_dir))
    imports: dict[str, Any] = {}
    training: dict[str, Any] = {}
    try:
        for kind in KINDS:
            log(f"importing {kind} ({generated.counts[kind]:,} records)")
            report = import_file(engine, kind, generated.paths[kind], progress=True)
            rate = report.records / report.seconds if report.seconds > 0 else 0.0
            imports[kind] = {
                "records": report.records,
                "created": report.created,
                "updated": report.updated,
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "error_count": report.error_count,
                "errors": report.errors[:10],
                "seconds": report.seconds,
                "records_per_s": rate,
            }
            log(
                f"imported {kind}: {report.records:,} records, {report.error_count} errors in "
                f"{report.seconds:.1f}s ({rate:,.0f} records/s)"
            )
            for error in report.errors[:5]:
                log(f"  import error: {error}")
        peaks["after_import"] = self_peak_mib()
        log("training every region")
        train_started = time.perf_counter()
        reports = engine.train()
        training = {
            "seconds": time.perf_counter() - train_started,
            "regions": [asdict(r) for r in reports],
        }
        for r in reports:
            log(f"trained {r.region}: {r.version} in {r.seconds:.1f}s ({r.skipped_reason or 'ok'})")
    finally:
        engine.close()
    peaks["after_train"] = self_peak_mib()
    info = {
        "cached": False,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(REPO),
        "key": scale.key(),
        "generate": generated.to_json(),
        "imports": imports,
        "training": training,
        "bench_peak_rss_mib": peaks,
        "data_dir_mib": {
            p.name: _dir_mib(p) if p.is_dir() else p.stat().st_size / 2**20
            for p in sorted(data_dir.iterdir())
        },
        "seconds": time.perf_counter() - started,
    }
    (root / "build.json").write_text(json.dumps(info, indent=2))  # written last: marks complete
    return info


def prepare(scale: Scale, rebuild: bool) -> tuple[dict[str, Any], Path, Path]:
    """The build info, a fresh working copy of the data directory, and the generated users file."""
    root = OUT_DIR / "data" / scale.key()
    manifest = root / "build.json"
    if rebuild or not manifest.exists():
        info = build(scale, root)
    else:
        info = json.loads(manifest.read_text())
        info["cached"] = True
        log(f"reusing {root} (built {info['built_at']}; --rebuild to regenerate)")
    work = OUT_DIR / "run" / scale.key()
    if work.exists():
        shutil.rmtree(work)
    started = time.perf_counter()
    shutil.copytree(root / "fyp-data", work)
    info["copy_seconds"] = time.perf_counter() - started
    return info, work, root / "input" / "users.parquet"


# ---- steps 2-3: serve and load ------------------------------------------------------------------


def _phase_spec(
    name: str,
    base_url: str,
    targets: list[dict[str, str]],
    warmup_targets: list[dict[str, str]],
    args: argparse.Namespace,
    requests: int,
    duration_s: float,
    warmup_requests: int,
    warmup_s: float,
    concurrency: int,
    feed_n: int | None = None,
) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "name": name,
        "targets": targets,
        "warmup_targets": warmup_targets,
        "requests": requests,
        "duration_s": duration_s,
        "warmup_requests": warmup_requests,
        "warmup_s": warmup_s,
        "concurrency": concurrency,
        "client": args.client,
        "timeout_s": args.request_timeout,
        "feed_n": feed_n,
    }


def _feed_targets(
    users_path: Path, count: int, n: int, seed: int
) -> tuple[list[dict[str, str]], int]:
    """``count`` feed paths for users drawn at random (no repeats while users last)."""
    by_region = user_ids_by_region(users_path)
    ids = [u for region in sorted(by_region) for u in by_region[region]]
    labels = [region for region in sorted(by_region) for _ in by_region[region]]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    if count > len(ids):
        order = np.concatenate([order, rng.integers(0, len(ids), count - len(ids))])
    paths = [{"path": f"/v1/users/{ids[i]}/feed?n={n}", "label": labels[i]} for i in order[:count]]
    return paths, len(ids)


def serve_and_load(
    work: Path, users_path: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    log(f"starting fyp serve --workers {args.workers} on a copy of the data ({work})")
    log_path = OUT_DIR / "server.log"
    server = start_server(work, log_path, timeout_s=args.startup_timeout, workers=args.workers)
    tree = server.tree
    startup = tree.snapshot()
    info: dict[str, Any] = {
        "workers": args.workers,
        "startup_s": server.startup_s,
        "first_answer_s": server.first_answer_s,
        "catalog_loads": catalog_loads(log_path),
        "worker_pids": tree.workers(),
        "rss_after_startup_mib": startup["total"].get("VmRSS"),
        "memory_after_startup": startup,
        "model_versions": server.health.get("model_versions"),
        "port": server.port,
    }
    log(
        f"server pid {server.pid} (workers {info['worker_pids']}) ready on :{server.port} in "
        f"{server.startup_s:.1f}s (catalog loads {info['catalog_loads']}), RSS "
        f"{info['rss_after_startup_mib']:.0f} MiB, models {info['model_versions']}"
    )
    if args.idle_s > 0:
        info["idle"] = idle_cpu(tree, args.idle_s)
        log(f"server CPU while idle for {args.idle_s:g}s: {info['idle']['cores']:.3f} cores")
    phases: dict[str, Any] = {}
    sampler = MemorySampler(tree)
    try:
        sampler.start()
        hard = args.request_timeout * 2 + 120

        def run(spec: dict[str, Any], what: str) -> None:
            log(
                f"phase {spec['name']}: {what} over {spec['concurrency']} connection(s), up to "
                f"{spec['requests']:,} requests / {spec['duration_s']:g}s"
            )
            limit = hard + spec["duration_s"] + spec["warmup_s"]
            phases[spec["name"]] = run_phase(server, spec, limit)
            log(_phase_line(phases[spec["name"]]))

        healthz = [{"path": "/healthz", "label": ""}]
        trivial = _phase_spec(
            "trivial",
            server.base_url,
            healthz,
            healthz,
            args,
            args.trivial_requests,
            args.duration,
            args.trivial_warmup,
            args.warmup_s,
            concurrency=args.concurrency,
        )
        run(trivial, "GET /healthz")
        # Distinct users for both feed phases, in this order: 8-connection warm-up and measured
        # requests, then 1-connection warm-up and measured requests.
        counts = [args.feed_warmup, args.feed_requests, args.single_warmup, args.single_requests]
        targets, _ = _feed_targets(users_path, sum(counts), args.n, args.seed + 1)
        cuts = np.cumsum([0, *counts]).tolist()
        warm8, feed8, warm1, feed1 = (targets[a:b] for a, b in itertools.pairwise(cuts))
        feed_path = f"GET /v1/users/{{id}}/feed?n={args.n}"
        feed = _phase_spec(
            "feed",
            server.base_url,
            feed8,
            warm8 or feed8[:1],
            args,
            args.feed_requests,
            args.feed_duration,
            args.feed_warmup,
            args.warmup_s * 3,
            concurrency=args.concurrency,
            feed_n=args.n,
        )
        run(feed, feed_path)
        single = _phase_spec(
            "feed_1conn",
            server.base_url,
            feed1,
            warm1 or feed1[:1],
            args,
            args.single_requests,
            args.single_duration,
            args.single_warmup,
            args.warmup_s * 3,
            concurrency=1,
            feed_n=args.n,
        )
        run(single, feed_path)
        if args.httpx_reference and args.client != "httpx":
            reference = {
                **trivial,
                "name": "trivial_httpx",
                "client": "httpx",
                "requests": max(1, args.trivial_requests // 4),
                "duration_s": args.duration / 3,
            }
            run(reference, "GET /healthz with httpx.AsyncClient (cross-check)")
        info["memory_sampled_peaks_mib"] = sampler.stop()
        info["peak_rss_mib"] = server.peak_rss_mib()
        after = tree.snapshot()
        info["rss_after_load_mib"] = after["total"].get("VmRSS")
        info["memory_after_load"] = after
        info["worker_pids_after_load"] = tree.workers()
    finally:
        sampler.stop()
        info["exit_code"] = server.stop()
    server_log = server.log_path.read_text(errors="replace")
    info["catalog_loads_total"] = len(catalog_loads(log_path))
    info["log_tracebacks"] = server_log.count("Traceback")
    info["log_tail"] = server_log.splitlines()[-20:]
    return info, phases


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _phase_line(p: dict[str, Any]) -> str:
    return (
        f"  {p['name']} ({p['client']}): {p['requests']:,} requests, {p['errors']} errors, "
        f"{p['throughput_rps']:,.1f} req/s, client p50/p99 {_f(p['client_ms']['p50'])}/"
        f"{_f(p['client_ms']['p99'])} ms, server p50/p99 {_f(p['server_ms']['p50'])}/"
        f"{_f(p['server_ms']['p99'])} ms, CPU ms/request server "
        f"{_f(p.get('server_cpu_ms_per_request'))} client {_f(p['client_cpu_ms_per_request'])}"
    )


# ---- the run ------------------------------------------------------------------------------------


def _warnings(build: dict[str, Any], server: dict[str, Any], phases: dict[str, Any]) -> list[str]:
    found = []
    for kind, report in build["imports"].items():
        if report["error_count"]:
            found.append(
                f"import {kind}: {report['error_count']} records failed: {report['errors'][:3]}"
            )
    for report in build["training"]["regions"]:
        if report["version"] is None:
            found.append(f"training {report['region']} skipped: {report['skipped_reason']}")
    for name, p in phases.items():
        if p["errors"]:
            found.append(
                f"{name}: {p['errors']} of {p['requests']} requests failed: {p['statuses']}"
            )
            found += [f"{name} error sample: {s}" for s in p["error_samples"][:3]]
        if p["missing_server_timing"]:
            found.append(f"{name}: {p['missing_server_timing']} responses had no Server-Timing")
        if name != "trivial_httpx" and p.get("client_cpu_share", 0) > 0.85:
            found.append(
                f"{name}: the load client used {p['client_cpu_share']:.2f} cores; the client may "
                "be the bottleneck of this phase, so its throughput is a lower bound"
            )
        if "server_pids_changed" in p:
            found.append(
                f"{name}: the server's processes changed during the phase (a worker restarted?): "
                f"{p['server_pids_changed']}"
            )
        if not p.get("server_alive", True):
            found.append(f"{name}: the server was gone after the phase")
        feed = p.get("feed") or {}
        if feed.get("short_pages"):
            found.append(f"{name}: {feed['short_pages']} pages had fewer than {feed['n']} items")
        if {"untrained", "None"} & set(feed.get("model_versions") or {}):
            found.append(f"{name}: some responses were served without a trained model")
    loads, workers = server.get("catalog_loads_total"), server.get("workers", 1)
    idle = (server.get("idle") or {}).get("cores", 0.0)
    if idle > 0.05 * workers:
        found.append(
            f"the server used {idle:.2f} cores while idle (no requests, "
            f"{server['idle']['seconds']:.0f} s after startup): background work competes with "
            "the requests"
        )
    if loads is not None and loads != workers:
        found.append(
            f"the server log reports {loads} catalog loads for {workers} worker(s): "
            "a worker was restarted or did not start"
        )
    if server.get("worker_pids_after_load", server.get("worker_pids")) != server.get("worker_pids"):
        found.append(
            f"worker pids changed: {server.get('worker_pids')} at startup, "
            f"{server.get('worker_pids_after_load')} after the load"
        )
    if server.get("log_tracebacks"):
        found.append(
            f"server log has {server['log_tracebacks']} tracebacks (bench/.out/server.log)"
        )
    if server.get("exit_code") not in (*CLEAN_EXITS, None):
        found.append(f"server exited with code {server['exit_code']}")
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 items, 2,000 users")
    parser.add_argument("--items", type=int, default=None, help="catalog size (1,000,000)")
    parser.add_argument("--users", type=int, default=None, help="users (100,000)")
    parser.add_argument("--events-per-user", type=float, default=20.0, help="mean events per user")
    parser.add_argument("--creators", type=int, default=None, help="creators (items / 20)")
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true", help="regenerate, reimport and retrain")
    parser.add_argument(
        "--keep-copy", action="store_true", help="keep the served copy of the data (bench/.out/run)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (fyp serve --workers)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="client connections (trivial, feed phases)"
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="HTTP layer of the load client (raw: minimal asyncio HTTP/1.1; see load_client.py)",
    )
    parser.add_argument(
        "--no-httpx-reference",
        dest="httpx_reference",
        action="store_false",
        help="skip the short /healthz cross-check with httpx.AsyncClient",
    )
    parser.add_argument("--trivial-requests", type=int, default=None, help="(50,000; quick 3,000)")
    parser.add_argument("--feed-requests", type=int, default=None, help="(5,000; quick 500)")
    parser.add_argument("--duration", type=float, default=None, help="trivial time limit s (30)")
    parser.add_argument("--feed-duration", type=float, default=None, help="feed time limit s (90)")
    parser.add_argument(
        "--single-requests", type=int, default=None, help="feed, 1 connection (600; quick 200)"
    )
    parser.add_argument(
        "--single-duration", type=float, default=None, help="its time limit s (60; quick 20)"
    )
    parser.add_argument("--trivial-warmup", type=int, default=500, help="uncounted requests")
    parser.add_argument("--feed-warmup", type=int, default=None, help="uncounted (200; quick 50)")
    parser.add_argument(
        "--single-warmup", type=int, default=None, help="uncounted, 1 connection (30; quick 10)"
    )
    parser.add_argument("--warmup-s", type=float, default=3.0, help="warm-up time limit (feed x3)")
    parser.add_argument(
        "--idle-s", type=float, default=None, help="measure idle server CPU first, s (10; quick 4)"
    )
    parser.add_argument("-n", type=int, default=10, help="feed page size")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", dest="docs", action="store_true", default=None)
    docs.add_argument("--no-docs", dest="docs", action="store_false", help="leave docs alone")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults: dict[str, Any] = {
        "items": 20_000 if quick else 1_000_000,
        "users": 2_000 if quick else 100_000,
        "trivial_requests": 3_000 if quick else 50_000,
        "feed_requests": 500 if quick else 5_000,
        "duration": 10.0 if quick else 30.0,
        "feed_duration": 30.0 if quick else 90.0,
        "feed_warmup": 50 if quick else 200,
        "single_requests": 200 if quick else 600,
        "single_duration": 20.0 if quick else 60.0,
        "single_warmup": 10 if quick else 30,
        "idle_s": 4.0 if quick else 10.0,
        "docs": not quick,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.creators is None:
        args.creators = max(10, args.items // 20)
    positive = (
        args.items,
        args.users,
        args.workers,
        args.concurrency,
        args.trivial_requests,
        args.feed_requests,
        args.single_requests,
    )
    if min(positive) < 1:
        parser.error("sizes, counts, workers and concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = Scale(
        items=args.items,
        users=args.users,
        events_per_user=args.events_per_user,
        creators=args.creators,
        topics=args.topics,
        seed=args.seed,
    )
    python = os.path.relpath(sys.executable, Path.cwd())
    command = shlex.join(
        [python, "bench/feed_http.py", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.perf_counter()
    load_start = loadavg()
    machine = machine_info(REPO)  # before the run: the commit that is measured
    steps: dict[str, float] = {}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    build_info, work, users_path = prepare(scale, args.rebuild)
    steps["build"] = 0.0 if build_info["cached"] else build_info["seconds"]
    steps["copy_data_dir"] = build_info["copy_seconds"]
    t = time.perf_counter()
    try:
        server, phases = serve_and_load(work, users_path, args)
    finally:
        if not args.keep_copy:
            shutil.rmtree(work, ignore_errors=True)
    steps["serve_and_load"] = time.perf_counter() - t
    steps["total"] = time.perf_counter() - started
    trivial_rps = phases["trivial"]["throughput_rps"]
    results: dict[str, Any] = {
        "command": command,
        "workers": args.workers,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "loadavg_start": list(load_start),
        "loadavg_end": list(loadavg()),
        "scale": asdict(scale),
        "build": build_info,
        "server": server,
        "phases": phases,
        "feed_trivial_ratio": phases["feed"]["throughput_rps"] / trivial_rps
        if trivial_rps
        else None,
        "steps_s": steps,
    }
    results["warnings"] = _warnings(build_info, server, phases)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    raw_file = OUT_DIR / f"feed_http-{stamp}{'-quick' if args.quick else ''}.json"
    results["raw_file"] = str(raw_file.relative_to(REPO))
    raw = json.dumps(results, indent=2, default=str)
    raw_file.write_text(raw)
    (OUT_DIR / "feed_http-latest.json").write_text(raw)
    print(terminal_report(results))
    print(f"\n  steps: {', '.join(f'{k} {v:.1f}s' for k, v in steps.items())}")
    print(f"  raw results: {OUT_DIR / 'feed_http-latest.json'}")
    if args.docs:
        update_docs(DOCS, markdown_section(results), args.workers)
        print(f"  wrote the feed_http section for {args.workers} worker(s) of {DOCS}")
    return 1 if server.get("exit_code") not in (*CLEAN_EXITS, None) else 0


if __name__ == "__main__":
    raise SystemExit(main())
