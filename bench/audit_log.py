"""Benchmark a region's tamper-evident audit log: append, sign, prove and verify at scale.

    .venv/bin/python bench/audit_log.py [--entries 1000000] [--no-docs]

On a fresh SQLite file in a temporary directory: append ``--entries`` decisions in batches (the
bulk path), then time the per-request path (one transaction per decision, what the gate does)
side by side with a plain insert into a table of the same columns without the Merkle tree (the
baseline: what the log cost before it was tamper-evident); sign a tree head; time inclusion and
consistency proofs; and verify the whole log from scratch (``SqlAuditLog.verify``, what
``fyp audit verify`` runs). Writes the section between the ``bench:audit_log`` markers of
``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import Column, Float, Integer, MetaData, Table, Text  # noqa: E402

from bench_report import machine_info, write_section  # noqa: E402
from fyp.governance import merkle  # noqa: E402
from fyp.storage.audit import SqlAuditLog  # noqa: E402

START = "<!-- bench:audit_log:start -->"
END = "<!-- bench:audit_log:end -->"


def _entry(i: int) -> tuple[str, str, str, str, dict[str, str], float]:
    region = "us"
    return (
        f"service:{region}",
        "serve_feed",
        "open",
        "allow",
        {"principal_region": region, "reason": f"service in its home region (request {i})"},
        1_790_000_000.0 + i * 0.001,
    )


def run(entries: int, single: int, proofs: int) -> dict[str, float]:
    out: dict[str, float] = {"entries": entries}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.db"
        log = SqlAuditLog(f"sqlite:///{path}", "us")
        started = time.perf_counter()
        batch = 10_000
        for first in range(0, entries, batch):
            log.append_many([_entry(i) for i in range(first, min(entries, first + batch))])
        out["bulk_s"] = time.perf_counter() - started

        started = time.perf_counter()
        for i in range(single):
            log.append(*_entry(entries + i))
        out["single_ms"] = (time.perf_counter() - started) / single * 1000
        total = entries + single

        # Baseline: the same write transaction and statement path, into a table with no tree.
        plain = Table(
            "audit_plain",
            MetaData(),
            Column("seq", Integer, primary_key=True, autoincrement=False),
            Column("ts", Float),
            *(Column(name, Text) for name in ("principal", "purpose", "action", "decision")),
            Column("detail", Text),
        )
        plain.create(log.db.engine)
        started = time.perf_counter()
        for i in range(single):
            p, u, a, d, detail, ts = _entry(i)
            with log.db.write() as conn:
                conn.execute(
                    plain.insert().values(
                        seq=i + 1,
                        ts=ts,
                        principal=p,
                        purpose=u,
                        action=a,
                        decision=d,
                        detail=json.dumps(detail, sort_keys=True),
                    )
                )
        out["plain_single_ms"] = (time.perf_counter() - started) / single * 1000

        started = time.perf_counter()
        head = log.sign_head(time.time())
        out["sign_ms"] = (time.perf_counter() - started) * 1000

        rng = random.Random(1)
        started = time.perf_counter()
        for _ in range(proofs):
            seq = rng.randint(1, total)
            _, leaf = log.leaf(seq)
            size, audit_path = log.inclusion_proof(seq, head.size)
            merkle.verify_inclusion(seq - 1, size, leaf, audit_path, head.root)
        out["inclusion_ms"] = (time.perf_counter() - started) / proofs * 1000
        out["path_len"] = len(audit_path)
        started = time.perf_counter()
        for _ in range(proofs):
            first = rng.randint(1, total - 1)
            _, first_root = log.root(first)
            _, proof = log.consistency_proof(first, head.size)
            merkle.verify_consistency(first, head.size, first_root, head.root, proof)
        out["consistency_ms"] = (time.perf_counter() - started) / proofs * 1000

        started = time.perf_counter()
        report = log.verify()
        out["verify_s"] = time.perf_counter() - started
        if not report.ok or report.entries != total:
            raise SystemExit(f"verification failed on an untouched log: {report.problems}")
        out["db_mib"] = path.stat().st_size / 2**20
        log.close()
    return out


def section(r: dict[str, float], command: str) -> str:
    m = machine_info(REPO)
    n = int(r["entries"])
    total = n + int(r.get("single", 0))
    return "\n".join(
        [
            START,
            "## Audit log: append, prove, verify (`bench/audit_log.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            "One region's log on SQLite (WAL), each entry a gate decision of the size the gate "
            "writes. The baseline is the same write transaction inserting the same row into a "
            "table with no tree, in the same run: what tamper evidence adds per request.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| bulk append of {n:,} entries, 10,000 per transaction | {r['bulk_s']:.1f} s "
            f"({n / r['bulk_s']:,.0f} entries/s) |",
            f"| one decision per transaction, with the Merkle tree (the gate's path) | "
            f"{r['single_ms']:.3f} ms |",
            f"| one decision per transaction, plain table (baseline) | "
            f"{r['plain_single_ms']:.3f} ms |",
            f"| sign a tree head (root from stored subtrees + Ed25519) | {r['sign_ms']:.2f} ms |",
            f"| inclusion proof, built and verified (path of {int(r['path_len'])} hashes) | "
            f"{r['inclusion_ms']:.2f} ms |",
            f"| consistency proof, built and verified | {r['consistency_ms']:.2f} ms |",
            f"| **verify the whole log from its entries** ({total:,} entries) | "
            f"**{r['verify_s']:.1f} s ({total / r['verify_s']:,.0f} entries/s)** |",
            f"| database size | {r['db_mib']:.0f} MiB |",
            "",
            "Target (issue 4): a million entries verified in under a minute.",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=2_000, help="one-per-transaction appends")
    parser.add_argument("--proofs", type=int, default=1_000)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.entries, args.single, args.proofs)
    result["single"] = args.single
    command = ".venv/bin/python bench/audit_log.py" + (
        f" --entries {args.entries}" if args.entries != 1_000_000 else ""
    )
    text = section(result, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
