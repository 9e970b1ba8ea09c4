"""Online learning against batch-only along the value model's trade-off between watch time and
finishes, on the closed loop's simulated viewers.

Why this comparison: the ranker's value mixes the predicted seconds watched
(``ranker.watch_seconds_weight`` x watch-ratio head x minutes) with ratio heads (finish, quick
skip), and the final score adds hand-weighted features to it. A learner whose predictions move
to another *level* (the online learner corrects the batch ranker's over-prediction of the watch
ratio on live traffic, ``bench/calibration_by_length.py``) therefore also moves the effective
weight of the seconds term, and with it the length of the videos served and the watch time per
session, whatever it learned about which video suits whom. Comparing two learners at one fixed
weight mixes the two effects. Here each learner is run at several weights, which traces its
curve of (finish rate, expected watch time per session); a learner is better when its curve lies
beyond the other's: more watch time at the same finish rate, and more finishes at the same watch
time.

For each seed (its own world, stream, budgets and draws, as ``bench/closed_loop.py
--replications``) and each weight of ``--weights``, one closed-loop run of the ``online`` and
``batch-only`` arms (``closed_loop.run``, the same schedule and defaults; the ``off`` arm is left
out). Per seed, the online arm's points are joined by straight lines (in order of weight); at each
of the batch-only arm's points the report reads

* *watch time at equal finish rate*: the online curve's expected watch time at batch-only's
  finish rate, minus batch-only's watch time;
* *finish rate at equal watch time*: the online curve's finish rate at batch-only's expected watch
  time, minus batch-only's finish rate;

each only where the online curve reaches that value (no extrapolation), with a Student-t interval
across seeds. Also reported: both arms' means per weight and the fixed-weight differences.

    .venv/bin/python bench/closed_loop_frontier.py [--weights 0,1.5,3,4.5] [--replications 6]

Writes the ``closed-loop-frontier`` section of docs/BENCHMARKS.md (``--section NAME`` another one,
``--no-docs`` none: only print).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import closed_loop as cl  # noqa: E402
from bench_report import machine_info, write_section  # noqa: E402
from fyp.online.arms import Estimate  # noqa: E402

SECTION = "closed-loop-frontier"
WEIGHT_KEY = "ranker.watch_seconds_weight"
ARMS = ("online", "batch-only")
POINT_METRICS = (
    # (key, label, digits, scale)
    ("xwatch", "expected watch time per session, s", 1, 1.0),
    ("finish", "finish rate, %", 2, 100.0),
    ("like", "like rate, %", 2, 100.0),
    ("fit", "page fit", 4, 1.0),
    ("duration", "length of the videos watched, s", 1, 1.0),
    ("per_session", "videos watched per session", 1, 1.0),
)


# ---- one (seed, weight) run, in a process of its own ---------------------------------------------


def worker(seed: int, weight: float, rounds: int, sets: list[str], out: Path) -> None:
    argv = ["--rounds", str(rounds), "--seed", str(seed), "--set", f"{WEIGHT_KEY}={weight}"]
    for pair in sets:
        argv += ["--set", pair]
    args = cl.parse_args(argv)
    args.arms = list(ARMS)
    result = cl.run(args)
    points = {}
    for arm in ARMS:
        a = result["arms"][arm]
        points[arm] = {
            "xwatch": a["xwatch"].mean,
            "watch": a["watch"].mean,
            "finish": a["finish"].mean,
            "like": a["like"].mean,
            "fit": a["fit"].mean,
            "duration": a["duration"].mean,
            "per_session": a["impressions"] / max(a["sessions"], 1),
        }
    out.write_text(json.dumps({"seed": seed, "weight": weight, "arms": points}))


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (seed, weight) run, ``args.jobs`` processes at a time."""
    tasks = [
        (args.seed + k, w) for k in range(args.replications) for w in args.weights
    ]  # seed-major, so a seed's runs finish together
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        running: list[tuple[int, float, Any, Path, Any]] = []
        while tasks or running:
            while tasks and len(running) < args.jobs:
                seed, weight = tasks.pop(0)
                out = Path(tmp) / f"s{seed}-w{weight}.json"
                log_path = Path(tmp) / f"s{seed}-w{weight}.log"
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    str(seed),
                    str(weight),
                    str(out),
                    "--rounds",
                    str(args.rounds),
                    *[x for pair in args.set for x in ("--set", pair)],
                ]
                log = log_path.open("w")  # closed when the process ends
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
                running.append((seed, weight, proc, out, log))
                print(f"seed {seed}, weight {weight}: started", flush=True)
            time.sleep(2.0)
            for entry in list(running):
                seed, weight, proc, out, log = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                log.close()
                if proc.returncode != 0:
                    tail = (Path(tmp) / f"s{seed}-w{weight}.log").read_text()[-2000:]
                    raise RuntimeError(f"seed {seed}, weight {weight} failed:\n{tail}")
                results.append(json.loads(out.read_text()))
                print(f"seed {seed}, weight {weight}: done", flush=True)
    return sorted(results, key=lambda r: (r["seed"], r["weight"]))


# ---- the analysis --------------------------------------------------------------------------------


def curve_at(xs: list[float], ys: list[float], x: float) -> float | None:
    """The polyline through ``(xs[k], ys[k])`` (in the given order) read at ``x``: the first
    segment that spans ``x``, interpolated linearly; ``None`` when no segment reaches it."""
    for k in range(len(xs) - 1):
        x0, x1 = xs[k], xs[k + 1]
        low, high = min(x0, x1), max(x0, x1)
        if low <= x <= high:
            if x1 == x0:
                return (ys[k] + ys[k + 1]) / 2.0
            return ys[k] + (ys[k + 1] - ys[k]) * (x - x0) / (x1 - x0)
    return None


def out_of_reach(
    online: list[dict[str, Any]], batch: dict[str, Any], key: str
) -> Literal["online", "batch-only", "neither"]:
    """Who is ahead where the online curve does not reach batch-only's ``key`` value: online
    when one of its points is at least as good on both finish rate and watch time; batch-only
    when its point is at least as good as the online point nearest in ``key`` (the end the curve
    stops at); else neither (a trade-off the curve cannot settle)."""
    if any(p["finish"] >= batch["finish"] and p["xwatch"] >= batch["xwatch"] for p in online):
        return "online"
    end = min(online, key=lambda p: abs(p[key] - batch[key]))
    if batch["finish"] >= end["finish"] and batch["xwatch"] >= end["xwatch"]:
        return "batch-only"
    return "neither"


def analyse(results: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
    seeds = sorted({r["seed"] for r in results})
    point = {(r["seed"], r["weight"], arm): r["arms"][arm] for r in results for arm in ARMS}
    means: dict[str, dict[float, dict[str, Estimate]]] = {arm: {} for arm in ARMS}
    fixed: dict[float, dict[str, Estimate]] = {}
    for w in weights:
        for arm in ARMS:
            means[arm][w] = {
                key: cl._t_interval([point[(s, w, arm)][key] for s in seeds])
                for key, *_ in POINT_METRICS
            }
        fixed[w] = {
            key: cl._t_interval(
                [point[(s, w, "online")][key] - point[(s, w, "batch-only")][key] for s in seeds]
            )
            for key, *_ in POINT_METRICS
        }
    matched: dict[float, dict[str, Any]] = {}
    for w in weights:
        watch_gaps: list[float] = []
        finish_gaps: list[float] = []
        # Seeds left out of a matched comparison, by who is ahead there: leaving them out
        # silently could hide seeds where one learner is simply better.
        unreached: dict[str, dict[str, int]] = {
            "watch": {"online": 0, "batch-only": 0, "neither": 0},
            "finish": {"online": 0, "batch-only": 0, "neither": 0},
        }
        for s in seeds:
            online = [point[(s, v, "online")] for v in weights]
            batch = point[(s, w, "batch-only")]
            finishes = [p["finish"] for p in online]
            watches = [p["xwatch"] for p in online]
            at_finish = curve_at(finishes, watches, batch["finish"])
            if at_finish is not None:
                watch_gaps.append(at_finish - batch["xwatch"])
            else:
                unreached["watch"][out_of_reach(online, batch, "finish")] += 1
            at_watch = curve_at(watches, finishes, batch["xwatch"])
            if at_watch is not None:
                finish_gaps.append(at_watch - batch["finish"])
            else:
                unreached["finish"][out_of_reach(online, batch, "xwatch")] += 1
        matched[w] = {
            "watch_at_equal_finish": cl._t_interval(watch_gaps),
            "finish_at_equal_watch": cl._t_interval(finish_gaps),
            "watch_gaps": watch_gaps,
            "finish_gaps": finish_gaps,
            "unreached": unreached,
        }
    return {"seeds": seeds, "weights": weights, "means": means, "fixed": fixed, "matched": matched}


# ---- the report ----------------------------------------------------------------------------------


def _ci(e: Estimate, digits: int, scale: float = 1.0, signed: bool = False) -> str:
    if e.n == 0 or not math.isfinite(e.mean):
        return "n/a"
    sign = "+" if signed else ""
    mean = f"{e.mean * scale:{sign}.{digits}f}"
    if not math.isfinite(e.low):
        return f"{mean} (n = {e.n})"
    return f"{mean} [{e.low * scale:{sign}.{digits}f}, {e.high * scale:{sign}.{digits}f}]"


def _unreached(matched: dict[str, Any], which: str) -> str:
    counts = matched.get("unreached", {}).get(which, {})
    short = {"online": "online", "batch-only": "batch", "neither": "neither"}
    text = ", ".join(f"{short[k]} {v}" for k, v in counts.items() if v)
    return text or "-"


def _holds(e: Estimate) -> str:
    if e.n < 2 or not math.isfinite(e.low):
        return "too few seeds"
    if e.low > 0:
        return "online ahead"
    if e.high < 0:
        return "batch-only ahead"
    return "no difference"


def verdict(a: dict[str, Any]) -> str:
    labels = {
        "watch_at_equal_finish": "watch time at equal finish rate",
        "finish_at_equal_watch": "finish rate at equal watch time",
    }
    outcomes: dict[str, list[str]] = {"online ahead": [], "batch-only ahead": []}
    compared = 0
    for w in a["weights"]:
        for key, label in labels.items():
            outcome = _holds(a["matched"][w][key])
            if outcome == "too few seeds":
                continue
            compared += 1
            if outcome in outcomes:
                outcomes[outcome].append(f"{label} at batch-only's weight {w:g}")
    ahead, behind = outcomes["online ahead"], outcomes["batch-only ahead"]
    if compared == 0:
        return "no matched comparison had enough seeds"
    if ahead and not behind:
        head = "the online learner is ahead of batch-only or level with it along the whole curve"
    elif behind and not ahead:
        head = "batch-only is ahead of the online learner or level with it along the whole curve"
    elif ahead and behind:
        head = "the curves cross"
    else:
        head = "the curves cannot be told apart"
    parts = [
        f"{head}: of {compared} matched comparisons with enough seeds, online is ahead in "
        f"{len(ahead)}, behind in {len(behind)}, and the interval contains 0 in "
        f"{compared - len(ahead) - len(behind)}"
    ]
    if ahead:
        parts.append("ahead: " + "; ".join(ahead))
    if behind:
        parts.append("behind: " + "; ".join(behind))
    unreached = {"online": 0, "batch-only": 0, "neither": 0}
    for w in a["weights"]:
        for counts in a["matched"][w].get("unreached", {}).values():
            for who, n in counts.items():
                unreached[who] += n
    if any(unreached.values()):
        parts.append(
            "where the online curve does not reach batch-only's point (left out above), "
            f"online is ahead on {unreached['online']}, batch-only on "
            f"{unreached['batch-only']}, neither on {unreached['neither']}"
        )
    return ". ".join(parts)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section(
    r: dict[str, Any],
    a: dict[str, Any],
    command: str,
    total_s: float,
    jobs: int,
    name: str = SECTION,
) -> str:
    m = machine_info(REPO)
    weights = a["weights"]
    seeds = a["seeds"]
    lines = [
        markers(name)[0],
        "## Closed loop along the watch-time / finish trade-off (`bench/closed_loop_frontier.py`)"
        + (f", seeds {seeds[0]}-{seeds[-1]}" if name != SECTION else ""),
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); a shared machine, so treat times as indicative  ",
        f"Runtime: {total_s / 60:.1f} min for {len(seeds)} seeds x {len(weights)} weights "
        f"({jobs} runs at a time)"
        + (
            f"  \nConfig overrides (both arms): {', '.join(f'`{s}`' for s in r['sets'])}"
            if r["sets"]
            else ""
        ),
        "",
        "Why: with one fixed value model, a learner that predicts a different *level* of watch "
        "ratio also shifts the weight the seconds term effectively gets, and with it the length "
        "of what is served; the online learner corrects the batch ranker's over-prediction of the "
        "watch ratio on live traffic (see *Calibration by video length*), so at one fixed "
        "weight it serves shorter videos. Sweeping "
        f"`{WEIGHT_KEY}` traces each learner's curve of (finish rate, expected watch time per "
        "session); the better learner's curve lies beyond the other's.",
        "",
        f"Seeds {seeds[0]}-{seeds[-1]}: each builds its own world, stream, leaving budgets and "
        "reaction draws, and runs the closed loop of `bench/closed_loop.py` (its defaults: "
        f"{r['rounds']} rounds, a retrain after round 4) for the `online` and `batch-only` arms "
        f"at each weight {', '.join(f'{w:g}' for w in weights)}. Per weight, the mean over "
        "seeds with a 95 % t interval:",
        "",
    ]
    head = "| weight | arm | " + " | ".join(label for _, label, *_ in POINT_METRICS) + " |"
    lines += [head, "|---:|---|" + "---:|" * len(POINT_METRICS)]
    for w in weights:
        for arm in ARMS:
            e = a["means"][arm][w]
            cells = " | ".join(
                _ci(e[key], digits, scale) for key, _, digits, scale in POINT_METRICS
            )
            lines.append(f"| {w:g} | {arm} | {cells} |")
    lines += [
        "",
        "At one fixed weight, online - batch-only (paired by seed):",
        "",
        "| weight | " + " | ".join(label for _, label, *_ in POINT_METRICS) + " |",
        "|---:|" + "---:|" * len(POINT_METRICS),
    ]
    for w in weights:
        e = a["fixed"][w]
        cells = " | ".join(
            _ci(e[key], digits, scale, signed=True) for key, _, digits, scale in POINT_METRICS
        )
        lines.append(f"| {w:g} | {cells} |")
    lines += [
        "",
        "Matched comparisons at each of batch-only's points (the online curve read at "
        "batch-only's finish rate, or at its watch time; seeds where the online curve does not "
        "reach that value are left out, so *n* can be below the number of seeds; *out of "
        "reach* says who is ahead on those seeds: *online* when one of its points is at least "
        "as good on both finish rate and watch time, *batch* when batch-only's point is at "
        "least as good as the end of the online curve nearest to it, *neither* otherwise):",
        "",
        "| batch-only at weight | online's watch time at equal finish rate, s | n | out of reach "
        "| online's finish rate at equal watch time, pp | n | out of reach |",
        "|---:|---:|---:|---|---:|---:|---|",
    ]
    for w in weights:
        mw = a["matched"][w]
        ew, ef = mw["watch_at_equal_finish"], mw["finish_at_equal_watch"]
        lines.append(
            f"| {w:g} | {_ci(ew, 1, signed=True)} | {ew.n} | {_unreached(mw, 'watch')} | "
            f"{_ci(ef, 2, 100.0, signed=True)} | {ef.n} | {_unreached(mw, 'finish')} |"
        )
    lines += ["", f"**Verdict: {verdict(a)}.**", markers(name)[1]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--weights", default="0,1.5,3,4.5", help="comma-separated")
    parser.add_argument("--replications", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a configuration override for both arms (repeatable)",
    )
    parser.add_argument(
        "--worker", nargs=3, metavar=("SEED", "WEIGHT", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="re-render the report of an earlier run from its --json file (nothing is run)",
    )
    parser.add_argument(
        "--section",
        default=SECTION,
        help="docs markers to write (another name keeps the default section's report)",
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    if args.worker:
        seed, weight, out = args.worker
        worker(int(seed), float(weight), args.rounds, args.set, Path(out))
        return 0
    args.weights = sorted(float(w) for w in args.weights.split(","))
    if len(args.weights) < 2 or args.replications < 2:
        parser.error("the frontier needs at least two weights and two replications")
    command = ".venv/bin/python bench/closed_loop_frontier.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results, command, total_s = saved["runs"], saved["command"], saved["seconds"]
        args.weights = sorted({float(r["weight"]) for r in results})
        report = saved["report"]
    else:
        started = time.perf_counter()
        results = run_all(args)
        total_s = time.perf_counter() - started
        report = {"rounds": args.rounds, "sets": args.set, "jobs": args.jobs}
    analysis = analyse(results, args.weights)
    text = section(report, analysis, command, total_s, report["jobs"], args.section)
    print(text)
    if args.json and not args.from_json:
        saved = {
            "command": command,
            "seconds": total_s,
            "report": report,
            "analysis": analysis,
            "runs": results,
        }
        args.json.write_text(json.dumps(saved, default=cl._jsonable, indent=1))
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", *markers(args.section), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
