"""Benchmark the audit log checks a server runs when it starts, on a log of a million entries.

    .venv/bin/python bench/audit_startup.py [--entries 1000000] [--baseline-src DIR] [--no-docs]

Builds a data directory whose ``us`` audit log holds ``--entries`` entries (the bulk append
path) under a signed head. Then, each in a fresh process so that its time and peak memory are
its own: the startup check (``SqlAuditLog.quick_check``, O(log n) lookups and a count) and the
full check (``SqlAuditLog.verify``, every entry and tree node: what the server runs in the
background after it starts, and what ``fyp audit verify`` runs). With ``--baseline-src`` the
same two run again on the same file with another fyp source tree side by side, e.g. the commit
before the streamed check::

    git archive d36503e src | tar -x -C /tmp/fyp-base
    .venv/bin/python bench/audit_startup.py --baseline-src /tmp/fyp-base/src

Last, what the background check costs a serving process: an engine on that data directory
answers profile reads (``Engine.get_user``: a gated, recorded open and a read) in its main
thread before, during and after the full check runs in its background thread; p50 and p99 of
each phase. Writes the section between the ``bench:audit_startup`` markers of
``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
from fyp.governance.keys import Signer  # noqa: E402
from fyp.storage.audit import SqlAuditLog  # noqa: E402
from fyp.types import User  # noqa: E402

START = "<!-- bench:audit_startup:start -->"
END = "<!-- bench:audit_startup:end -->"

# Run in a child process: one check on the log, timed, with the process's peak memory.
_CHILD = """
import json, sys, time
from pathlib import Path
from fyp.governance.keys import Signer
from fyp.storage.audit import SqlAuditLog

def status_mib(field):
    # VmHWM, not getrusage: Linux keeps ru_maxrss across exec, so a child started from a big
    # parent would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

url, key, what = sys.argv[1:4]
log = SqlAuditLog(url, "us", Signer.load_or_create(Path(key)))
before = status_mib("VmRSS")
started = time.perf_counter()
if what == "quick":
    problem = log.quick_check()
    ok, entries = problem is None, None
else:
    report = log.verify()
    ok, entries, problem = report.ok, report.entries, report.problems[:1]
seconds = time.perf_counter() - started
peak = status_mib("VmHWM")
print(json.dumps({"seconds": seconds, "ok": ok, "entries": entries, "problem": problem,
                  "rss_before_mib": before, "peak_rss_mib": peak}))
"""


def _entry(i: int) -> tuple[str, str, str, str, dict[str, str], float]:
    return (
        "service:us",
        "serve_feed",
        "open",
        "allow",
        {"principal_region": "us", "reason": f"service in its home region (request {i})"},
        1_790_000_000.0 + i * 0.001,
    )


def build(data_dir: Path, entries: int) -> float:
    config = load_config(data_dir)
    engine = Engine(config)
    engine.put_users([User(user_id="ana", region="us")])
    engine.close()
    log = SqlAuditLog(
        config.audit_url("us"), "us", Signer.load_or_create(config.audit_key_path("us"))
    )
    started = time.perf_counter()
    have = log.size()
    batch = 10_000
    for first in range(have, entries, batch):
        log.append_many([_entry(i) for i in range(first, min(entries, first + batch))])
    log.sign_head(time.time())
    log.close()
    return time.perf_counter() - started


def child(src: Path, data_dir: Path, what: str) -> dict[str, Any]:
    config = load_config(data_dir)
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            config.audit_url("us"),
            str(config.audit_key_path("us")),
            what,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise SystemExit(f"the {what} check failed on an untouched log: {result['problem']}")
    return result


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def serving(data_dir: Path, requests: int) -> dict[str, Any]:
    """Profile reads in the main thread before, during and after the background check."""
    engine = Engine(load_config(data_dir))
    try:
        engine.get_user("ana")  # warm: routing cache, connections

        def timed(n: int | None, while_running: bool = False) -> list[float]:
            samples: list[float] = []
            while (n is not None and len(samples) < n) or (
                while_running and engine.audit_check.status()["us"] in ("pending", "running")
            ):
                started = time.perf_counter()
                engine.get_user("ana")
                samples.append(time.perf_counter() - started)
            return samples

        before = timed(requests)
        started = time.perf_counter()
        engine.audit_check.start()
        during = timed(None, while_running=True)
        engine.audit_check.wait()
        check_s = time.perf_counter() - started
        status = engine.audit_check.status()
        after = timed(requests)
    finally:
        engine.close()
    if status["us"] != "verified":
        raise SystemExit(f"the background check did not verify the log: {status}")
    return {
        "check_s": check_s,
        "before": _percentiles(before),
        "during": _percentiles(during),
        "after": _percentiles(after),
    }


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    n = r["entries"]
    rows = [
        ("startup check (`quick_check`): counts, O(log n) lookups, latest head", "quick", "ms"),
        ("full check (`verify`): every entry, node and head", "full", "s"),
    ]
    has_base = "base_quick" in r
    lines = [
        START,
        "## Audit log checks at server start (`bench/audit_startup.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); a shared machine (load average {r['load']:.1f} at the start), "
        "so treat times as indicative",
        "",
        f"One region's log of {n:,} entries on SQLite (WAL) under one signed head, built with "
        f"the bulk path in {r['build_s']:.0f} s. Each check ran in a fresh process; peak memory "
        "is that process's peak RSS over its RSS before the check (the log open, fyp imported)."
        + (
            f" Baseline: the same checks of `{r['base_label']}` on the same file, in the same "
            "run (its full check held every leaf and tree level in memory; its startup check "
            "did not count nodes past the end nor check the last entry)."
            if has_base
            else ""
        ),
        "",
        "| check | time | peak memory added |"
        + (" baseline time | baseline peak memory added |" if has_base else ""),
        "|---|---:|---:|" + ("---:|---:|" if has_base else ""),
    ]
    for label, key, unit in rows:
        scale = 1000 if unit == "ms" else 1
        cells = [
            f"{r[key]['seconds'] * scale:,.1f} {unit}",
            f"{r[key]['peak_rss_mib'] - r[key]['rss_before_mib']:,.0f} MiB",
        ]
        if has_base:
            base = r[f"base_{key}"]
            cells += [
                f"{base['seconds'] * scale:,.1f} {unit}",
                f"{base['peak_rss_mib'] - base['rss_before_mib']:,.0f} MiB",
            ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak memory includes the database file's pages that SQLite maps into memory (up to "
        "256 MiB, `mmap_size`), which a count or a full read touches; beyond them the full "
        "check keeps one hash per tree level.",
    ]
    full = r["full"]["seconds"]
    s = r["serving"]
    lines += [
        "",
        f"The full check reads {n / full:,.0f} entries/s. A server runs it in a background thread "
        f"after it starts (`audit_full_check`, on by default); in that server it took "
        f"{s['check_s']:.1f} s while the main thread answered profile reads "
        "(`Engine.get_user`: a gated, recorded open and a read) back to back:",
        "",
        "| phase | reads | p50 | p99 |",
        "|---|---:|---:|---:|",
    ]
    for phase in ("before", "during", "after"):
        p = s[phase]
        lines.append(
            f"| {phase} the check | {p['n']:,} | {p['p50_ms']:.2f} ms | {p['p99_ms']:.2f} ms |"
        )
    lines += [
        "",
        "The check shares the interpreter with the requests (Python's GIL), so requests during "
        "it wait their turn; it runs once per server start.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2_000, help="reads before and after")
    parser.add_argument("--baseline-src", default=None, help="another fyp src/ to compare")
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"entries": args.entries, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        result["build_s"] = build(data_dir, args.entries)
        here = REPO / "src"
        result["quick"] = child(here, data_dir, "quick")
        result["full"] = child(here, data_dir, "full")
        if args.baseline_src:
            result["base_label"] = args.baseline_src
            result["base_quick"] = child(Path(args.baseline_src), data_dir, "quick")
            result["base_full"] = child(Path(args.baseline_src), data_dir, "full")
        result["serving"] = serving(data_dir, args.requests)
    command = ".venv/bin/python bench/audit_startup.py" + (
        f" --entries {args.entries}" if args.entries != 1_000_000 else ""
    )
    if args.baseline_src:
        command += f" --baseline-src {args.baseline_src}"
    text = section(result, command)
    print(text)
    print(json.dumps(result, indent=2), file=sys.stderr)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
