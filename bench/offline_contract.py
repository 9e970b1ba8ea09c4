"""The offline contract at one million interactions: `fyp offline-recommend` timed and checked.

Generates a training log of about a million interactions (users with a heavy-tailed activity,
items with a heavy-tailed popularity, tastes over latent groups, timestamps, an optional weight
column), runs `fyp offline-recommend --k 20` on it as an outside evaluator would (a separate
process, the default configuration), twice with the same seed, and checks the output: the
header, K ranked items per requested user, no item the user had in training, and identical files
for the same seed. Records wall time and the process's peak memory (``ru_maxrss``).

Writes a section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_report import machine_info, write_section  # noqa: E402

START = "<!-- bench:offline_contract:start -->"
END = "<!-- bench:offline_contract:end -->"


def generate(path: Path, interactions: int, users: int, items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = 40
    item_group = rng.integers(0, groups, items)
    popularity = rng.pareto(1.2, items) + 1.0
    by_group = [np.flatnonzero(item_group == g) for g in range(groups)]
    weights = [popularity[ids] / popularity[ids].sum() for ids in by_group]
    activity = rng.pareto(1.5, users) + 1.0
    counts = np.maximum(1, (activity / activity.sum() * interactions).astype(int))
    # Rounding down leaves a remainder: spread it so the log has the requested size exactly.
    short = interactions - int(counts.sum())
    if short > 0:
        np.add.at(counts, rng.integers(0, users, short), 1)
    start = 1_600_000_000
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["user_id", "item_id", "timestamp", "weight"])
        for user in range(users):
            n = int(counts[user])
            taste = rng.choice(groups, size=3, replace=False)
            picks_group = taste[rng.choice(3, size=n, p=[0.6, 0.3, 0.1])]
            t = start + int(rng.integers(0, 86_400 * 300))
            for g in picks_group:
                item = int(rng.choice(by_group[g], p=weights[g]))
                t += int(rng.exponential(3600))
                out.writerow([f"u{user}", f"i{item}", t, int(rng.integers(1, 6))])


def run_contract(train: Path, users: Path, out: Path, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "fyp"),
            "offline-recommend",
            "--train",
            str(train),
            "--users",
            str(users),
            "--k",
            "20",
            "--out",
            str(out),
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "returncode": proc.returncode,
        "seconds": seconds,
        "peak_mib": max(peak_kib, before) / 1024,
        "stdout": proc.stdout.strip().splitlines()[-3:],
        "stderr": proc.stderr.strip().splitlines()[-3:],
    }


def check(train: Path, wanted: list[str], recs: Path) -> dict[str, Any]:
    had: dict[str, set[str]] = defaultdict(set)
    n_train = 0
    with train.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            had[row["user_id"]].add(row["item_id"])
            n_train += 1
    lists: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with recs.open(encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        for user, item, rank in reader:
            lists[user].append((int(rank), item))
    full = sum(1 for u in wanted if len(lists.get(u, [])) == 20)
    leaked = sum(1 for u, rows in lists.items() for _, item in rows if item in had[u])
    ranks_ok = all(
        sorted(r for r, _ in rows) == list(range(1, len(rows) + 1)) for rows in lists.values()
    )
    return {
        "train_rows": n_train,
        "header": header,
        "users_with_20": full,
        "users_wanted": len(wanted),
        "train_items_recommended": leaked,
        "ranks_ok": ranks_ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        train = d / "train.csv"
        generate(train, args.interactions, args.users, args.items, args.seed)
        wanted = [f"u{u}" for u in range(0, args.users, 5)]
        (d / "users.txt").write_text("user_id\n" + "\n".join(wanted) + "\n", encoding="utf-8")
        first = run_contract(train, d / "users.txt", d / "recs1.csv", 0)
        second = run_contract(train, d / "users.txt", d / "recs2.csv", 0)
        same = (d / "recs1.csv").read_bytes() == (d / "recs2.csv").read_bytes()
        digest = hashlib.sha256((d / "recs1.csv").read_bytes()).hexdigest()[:16]
        checked = check(train, wanted, d / "recs1.csv")
    m = machine_info(REPO)
    ok = first["returncode"] == 0 and second["returncode"] == 0
    text = "\n".join(
        [
            START,
            "## The offline contract at one million interactions (`bench/offline_contract.py`)",
            "",
            "Command: `.venv/bin/python bench/offline_contract.py`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']}); a shared machine, so treat times as indicative",
            "",
            f"A generated log of {checked['train_rows']:,} interactions ({args.users:,} users "
            f"with heavy-tailed activity, {args.items:,} items with heavy-tailed popularity, "
            "tastes over 40 latent groups, timestamps and a weight column); "
            f"`fyp offline-recommend --k 20` for {len(wanted):,} users, run twice with seed 0 in "
            "a process of its own, as an outside evaluator runs it. Target: under five minutes.",
            "",
            "| run | exit | wall time | peak memory |",
            "|---|---:|---:|---:|",
            f"| first | {first['returncode']} | {first['seconds']:.0f} s | "
            f"{first['peak_mib']:,.0f} MiB |",
            f"| second (same seed) | {second['returncode']} | {second['seconds']:.0f} s | "
            f"{second['peak_mib']:,.0f} MiB |",
            "",
            f"Output checks: header `{','.join(checked['header'])}`; "
            f"{checked['users_with_20']:,} of {checked['users_wanted']:,} users got 20 items; "
            f"{checked['train_items_recommended']} recommended items were in the user's training "
            f"rows; ranks 1..K in every list: {checked['ranks_ok']}; the two runs' files are "
            f"identical: {same} (sha256 {digest}…)."
            + ("" if ok else f" Errors: {first['stderr']} {second['stderr']}"),
            END,
        ]
    )
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
