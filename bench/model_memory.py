"""Training time and memory of every model in the quality runs, each fit in a process of its own.

For each run named on the command line (``dataset:protocol``, default: every run in
``docs/quality``), every model of that run (the five baselines with the settings the run tuned,
and fyp's default) is fitted on the run's training part in a fresh process: the wall time of the
fit and the growth of the process's resident memory during it (peak sampled every 20 ms, minus
the resident size just before the fit, data already loaded) are recorded. Tuning is not
repeated: the settings come from the run's JSON file. fyp's fit includes its own tuning on a
validation part, as in the runs.

Writes a section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_report import machine_info, write_section  # noqa: E402

START = "<!-- bench:model_memory:start -->"
END = "<!-- bench:model_memory:end -->"
QUALITY = REPO / "docs" / "quality"
_MODELS = ("most-popular", "item-knn", "ease", "ials", "bpr", "fyp")
DATA = REPO.parent / "shared" / "data"


def _rss_mib() -> float:
    with Path("/proc/self/status").open(encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fit_one(
    dataset_dir: str, protocol: str, model: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """In a fresh process: load, split, fit one model; time and memory growth of the fit."""
    import dataclasses

    from fyp.eval.baselines import BASELINES
    from fyp.eval.data import FitContext
    from fyp.eval.datasets import load_dataset
    from fyp.eval.harness import make_split
    from fyp.models.fusion import FusionRecommender

    dataset = load_dataset(dataset_dir)
    split = make_split(dataset, protocol, 0)
    train = split.train.matrix()
    tuning = split.tuning_pair() if split.validation is not None else None
    context = FitContext(train=split.train, items=dataset.items, seed=0, tuning=tuning)
    if model == "fyp":
        recommender: Any = FusionRecommender(seed=0)
    else:
        [cls] = [b for b in BASELINES if b.name == model]
        config_type = type(cls.grid()[0])
        fields = {f.name for f in dataclasses.fields(config_type)}
        recommender = cls(config_type(**{k: v for k, v in settings.items() if k in fields}))
    before = _rss_mib()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    recommender.fit(train, context)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mib())
    return {"seconds": seconds, "growth_mib": peak[0] - before, "rss_before_mib": before}


def _child(queue: Any, *args: Any) -> None:
    try:
        queue.put(_fit_one(*args))
    except Exception as exc:  # reported in the table, never hidden
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(run: str) -> dict[str, Any]:
    report = json.loads((QUALITY / f"{run}.json").read_text())
    dataset, protocol = report["dataset"], report["protocol"]
    rows = []
    ctx = mp.get_context("spawn")
    for result in report["results"]:
        name = result["name"]
        if name not in _MODELS:
            continue  # a fyp component shown alone in a cold-start run: part of fyp's fit
        if result.get("skipped"):
            rows.append({"model": name, "skipped": result["skipped"]})
            continue
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_child, args=(queue, str(DATA / dataset), protocol, name, result["settings"])
        )
        proc.start()
        out = queue.get()
        proc.join()
        rows.append({"model": name, **out})
        print(f"{run} {name}: {out}", flush=True)
    return {"run": run, "dataset": dataset, "protocol": protocol, "rows": rows}


def section(results: list[dict[str, Any]], command: str) -> str:
    m = machine_info(REPO)
    lines = [
        START,
        "## Training time and memory per model (`bench/model_memory.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); a shared machine, so treat times as indicative",
        "",
        "Each model fitted alone in a fresh process on the run's training part, with the settings "
        "its quality run tuned (fyp: its default, tuning itself on a validation part inside the "
        "fit). Memory: growth of resident memory during the fit (peak, sampled every 20 ms) over "
        "the process with the data loaded.",
        "",
        "| run | model | fit s | memory growth MiB |",
        "|---|---|---:|---:|",
    ]
    for r in results:
        for row in r["rows"]:
            if "skipped" in row:
                lines.append(f"| {r['run']} | {row['model']} | — | {row['skipped'][:70]} |")
            elif "error" in row:
                lines.append(f"| {r['run']} | {row['model']} | — | error: {row['error'][:60]} |")
            else:
                lines.append(
                    f"| {r['run']} | {row['model']} | {row['seconds']:.1f} | "
                    f"{row['growth_mib']:,.0f} |"
                )
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="*", help="dataset-protocol names (default: all runs)")
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    runs = args.runs or sorted(
        p.stem for p in QUALITY.glob("*.json") if not p.stem.startswith("ranker")
    )
    results = [measure(run) for run in runs]
    command = ".venv/bin/python bench/model_memory.py" + "".join(f" {r}" for r in args.runs)
    text = section(results, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
