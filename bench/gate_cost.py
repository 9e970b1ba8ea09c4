"""What the gate costs a feed: policy decisions per second, and feed latency with the gate's
checks and audit log on, side by side with them switched off, in the same run.

    .venv/bin/python bench/gate_cost.py [--viewers 2000] [--requests 1500] [--no-docs]

Builds the demo world (fyp.sim) in a temporary data directory, imports and trains it, then serves
feeds in alternating blocks of 100 requests: "gate on" is the engine as it runs; "gate off" swaps
in a policy that allows everything without evaluating rules and an audit log that writes nothing
(the purpose checks of handles stay: they are attribute lookups). Each block draws users no block
asked for before, so both arms see first requests of the same kind. Writes the ``bench:gate_cost``
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import load_world, machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.governance.policy import Decision, DeclarativePolicy, Principal  # noqa: E402
from fyp.sim.world import WorldConfig, build_world  # noqa: E402

START = "<!-- bench:gate_cost:start -->"
END = "<!-- bench:gate_cost:end -->"


class _AllowAll:
    def decide(self, principal: Principal, region: str, purpose: str) -> Decision:
        return Decision(True, "bench: checks off")


class _NoAudit:
    def append(self, *args: Any, **kwargs: Any) -> int:
        return 0


def _decisions_per_second(n: int = 200_000) -> float:
    policy = DeclarativePolicy.default()
    principals = [Principal.service("us"), Principal.operator("eu"), Principal.auditor("us")]
    purposes = ["serve_feed", "train", "audit", "export_user"]
    started = time.perf_counter()
    for i in range(n):
        policy.decide(principals[i % 3], "us" if i % 2 else "eu", purposes[i % 4])
    return n / (time.perf_counter() - started)


def run(viewers: int, requests: int, seed: int) -> dict[str, Any]:
    world = build_world(WorldConfig(seed=seed, n_viewers=viewers, n_items=4000))
    out: dict[str, Any] = {"viewers": viewers, "decisions_per_s": _decisions_per_second()}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_config(Path(tmp)), clock=lambda: world.now)
        load_world(engine, world)
        engine.train()
        engine.warm()
        users = [u.user_id for u in world.users]
        random.Random(seed).shuffle(users)
        gate = engine.gate
        real_policy, real_record = gate._policy, gate.record
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        for u in users[:50]:  # warm-up, uncounted
            engine.feed(u, 10)
        cursor, block = 50, 100
        arm = "on"
        while sum(len(v) for v in latencies.values()) < 2 * requests and cursor < len(users):
            if arm == "off":
                gate._policy = _AllowAll()
                gate.record = _NoAudit().append  # type: ignore[method-assign]
            for user_id in users[cursor : cursor + block]:
                started = time.perf_counter()
                engine.feed(user_id, 10)
                latencies[arm].append((time.perf_counter() - started) * 1000)
            gate._policy, gate.record = real_policy, real_record  # type: ignore[method-assign]
            cursor += block
            arm = "off" if arm == "on" else "on"
        engine.close()
    for arm, values in latencies.items():
        data = np.asarray(values)
        out[arm] = {
            "n": len(values),
            "p50": float(np.percentile(data, 50)),
            "p90": float(np.percentile(data, 90)),
            "p99": float(np.percentile(data, 99)),
            "mean": float(data.mean()),
        }
    return out


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    on, off = r["on"], r["off"]

    def added(key: str) -> str:
        return f"{(on[key] / off[key] - 1) * 100:+.1f} %"

    return "\n".join(
        [
            START,
            "## What the gate costs a feed (`bench/gate_cost.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            f"Demo world with {r['viewers']:,} viewers, trained; feeds of 10 through the engine "
            "(no HTTP) in alternating blocks of 100 requests, each user asked once. Gate on: the "
            "declarative policy decides and every open is appended to the region's Merkle audit "
            "log (two opens for a user's first request: routing and serving). Gate off: allow "
            "without rules, write no audit entry.",
            "",
            "| | requests | p50 ms | p90 ms | p99 ms | mean ms |",
            "|---|---:|---:|---:|---:|---:|",
            f"| gate on | {on['n']:,} | {on['p50']:.2f} | {on['p90']:.2f} | {on['p99']:.2f} | "
            f"{on['mean']:.2f} |",
            f"| gate off | {off['n']:,} | {off['p50']:.2f} | {off['p90']:.2f} | {off['p99']:.2f} | "
            f"{off['mean']:.2f} |",
            f"| added by the gate | | {added('p50')} | {added('p90')} | **{added('p99')}** | "
            f"{added('mean')} |",
            "",
            f"Policy decisions (the default policy file): {r['decisions_per_s']:,.0f} per second "
            "on one core. Target (issue 4): under 10 % added p99.",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=1500, help="per arm")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.viewers, args.requests, args.seed)
    text = section(result, ".venv/bin/python bench/gate_cost.py")
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
