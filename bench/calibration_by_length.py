"""Calibration of the online learner and of the batch ranker it continues, by video length, on the
closed loop's own traffic.

One closed-loop run of the online arm (``bench/closed_loop.py``'s world, schedule and viewers; no
retrain unless ``--retrain-after R``: then the batch ranker is retrained on history plus live
traffic after round R and only the later rounds are reported), recording every mini-batch the
online trainer learns from: the labels, the learner's predictions before it steps on the batch
(train-then-test), and the batch ranker's predictions on the same examples. Reported per bucket of
video length: the mean label and the two models' mean predictions of the watch ratio, the finish
and the quick skip. A model that follows the data has its mean prediction near the mean label in
every bucket; the closed loop showed the learners shifting the served mix towards short videos,
and this table says whether the predictions that drive it are right about length.

The same batch ranker is also scored on the viewings it held out for validation when it was
trained (the latest tenth of each region's history): on the traffic it learned from, against on
the traffic it then serves.

Writes the ``calibration-by-length`` section of docs/BENCHMARKS.md (``--no-docs`` to only print).
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import closed_loop as cl  # noqa: E402
from bench_report import load_world, machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine, fold_policy  # noqa: E402
from fyp.eval.metrics import auc, soft_log_loss  # noqa: E402
from fyp.models.ranker import validation_size  # noqa: E402
from fyp.models.ranker_data import LABEL_NAMES, ExampleSet, from_events  # noqa: E402
from fyp.models.training import ranker_examples  # noqa: E402
from fyp.online import trainer as online_trainer  # noqa: E402
from fyp.online.learner import OnlineRanker  # noqa: E402
from fyp.sim.world import WorldConfig, build_world  # noqa: E402

START = "<!-- calibration-by-length:start -->"
END = "<!-- calibration-by-length:end -->"
EDGES = (0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 1e9)
TASKS = ("watch_ratio", "finish", "quick_skip")


Kept = tuple[list[str], Any, Any, Any, Any, int]


def record_batches() -> list[Kept]:
    """Wrap ``OnlineTrainer._learn`` so each mini-batch's labels and both models' predictions
    (before the learner steps on it) are kept, with the batch ranker's generation in its trainer
    (0: the one the run started with, 1: its first retraining, ...)."""
    kept: list[Kept] = []
    generations: dict[int, list[int]] = {}
    original = online_trainer.OnlineTrainer._learn

    def learn(self: Any, learner: OnlineRanker, part: ExampleSet) -> None:
        online = learner.predict(part)
        ranker = self._batch_ranker
        if ranker is not None:
            seen = generations.setdefault(id(self), [])
            if id(ranker) not in seen:
                seen.append(id(ranker))
            batch = ranker.predict_examples(part)
            labels, known = part.labels.copy(), part.known.copy()
            kept.append((list(part.item_ids), labels, known, online, batch, seen.index(id(ranker))))
        original(self, learner, part)

    online_trainer.OnlineTrainer._learn = learn  # type: ignore[method-assign]
    return kept


def held_out_history(engine: Engine, world: Any) -> tuple[Any, Any, Any, Any]:
    """The batch ranker on the viewings it held out for validation (the latest tenth of each
    region's history): lengths, labels, known, predictions. The features are rebuilt by the
    training's own ``ranker_examples`` from the region's history."""
    config = engine.config
    parts = []
    for region, slot in engine.slots.items():
        model = slot.current
        ranker = model.batch_ranker if model is not None else None
        if ranker is None:
            continue
        events = from_events(e for e in world.history if world.viewers[e.user_id].region == region)
        items = engine.catalog.get_items(list({e.item_id for e in events}))
        examples, _, _ = ranker_examples(
            events, items, config.training, config.ranker, fold_policy(config)
        )
        n = len(examples)
        held = examples.subset(np.arange(n - validation_size(n), n))
        parts.append(
            (
                np.array([items[i].duration_s for i in held.item_ids]),
                held.labels,
                held.known,
                ranker.predict_examples(held),
            )
        )
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))  # type: ignore[return-value]


def by_length(length: Any, labels: Any, known: Any, *predictions: Any) -> list[dict[str, Any]]:
    """Per bucket of ``EDGES``: the mean label and each model's mean prediction, per task."""
    rows = []
    for low, high in itertools.pairwise(EDGES):
        inside = (length >= low) & (length < high)
        row: dict[str, Any] = {"low": low, "high": high, "n": int(inside.sum())}
        for task in TASKS:
            col = LABEL_NAMES.index(task)
            mask = inside & known[:, col]
            row[task] = (
                tuple(float(x[mask, col].mean()) for x in (labels, *predictions))
                if mask.any()
                else None
            )
        rows.append(row)
    return rows


def overall(labels: Any, known: Any, *predictions: Any) -> dict[str, list[tuple[float, float]]]:
    """Per task, each model's log loss and AUC over every reported example (the watch ratio's
    log loss is against its soft label; its AUC against finishing, the ratio's top)."""
    out = {}
    for task in TASKS:
        col = LABEL_NAMES.index(task)
        mask = known[:, col]
        y = labels[mask, col].astype(np.float64)
        target = labels[mask, LABEL_NAMES.index("finish")] if task == "watch_ratio" else y
        rows = []
        for p in predictions:
            q = p[mask, col].astype(np.float64)
            rows.append((soft_log_loss(y, q), auc(target > 0.5, q)))
        out[task] = rows
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    kept = record_batches()
    now = float(int(time.time()))
    world = build_world(
        WorldConfig(seed=args.seed, n_viewers=args.viewers, n_items=args.items, now=now)
    )
    oracle = cl.Oracle(world)
    ids = [u.user_id for u in world.users]
    newcomers = set(random.Random(args.seed + 1).sample(ids, args.newcomers))
    established = [uid for uid in ids if uid not in newcomers]
    rounds, joins = cl.schedule(
        established, sorted(newcomers), args.rounds, args.sessions, 4, args.seed
    )
    visible = cl.without_history_of(world, newcomers)
    overrides = cl.config_overrides(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        engine = Engine(load_config(data, **overrides), clock=lambda: now)
        load_world(engine, visible)
        engine.train()
        history = held_out_history(engine, visible)
        engine.close()
        clock = [now + 60.0]
        engine = Engine(load_config(data, **overrides), clock=lambda: clock[0])
        retrain = args.retrain_after or 0
        cl.run_arm("online", engine, world, oracle, rounds, joins, 5, retrain, 10, args.seed, clock)
        engine.close()
    # With a retraining, only what the retrained batch ranker (and the learner continuing it) saw.
    kept = [k for k in kept if k[5] >= (1 if retrain else 0)]
    length = np.array([world.item_by_id[i].duration_s for k in kept for i in k[0]])
    labels = np.concatenate([k[1] for k in kept])
    known = np.concatenate([k[2] for k in kept])
    online = np.concatenate([k[3] for k in kept])
    batch = np.concatenate([k[4] for k in kept])
    return {
        "rows": by_length(length, labels, known, online, batch),
        "overall": overall(labels, known, online, batch),
        "history_rows": by_length(*history),
        "history_examples": len(history[0]),
        "examples": len(length),
        "args": vars(args),
    }


def section(r: dict[str, Any], command: str) -> str:
    m = machine_info(REPO)
    a = r["args"]

    def cell(values: tuple[float, ...] | None) -> str:
        return "n/a" if values is None else " / ".join(f"{v:.3f}" for v in values)

    def bucket(row: dict[str, Any]) -> str:
        return (
            f"{row['low']:.0f}+ s" if row["high"] > 1e8 else f"{row['low']:.0f}-{row['high']:.0f} s"
        )

    lines = [
        START,
        "## Calibration by video length on live traffic (`bench/calibration_by_length.py`)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']})",
        "",
        f"The closed loop's online arm (seed {a['seed']}, {a['items']:,} videos, "
        f"{a['viewers']:,} viewers, {a['rounds']} rounds of {a['sessions']} established "
        f"sessions plus newcomers, "
        + (
            f"the batch ranker retrained on history plus live traffic after round "
            f"{a['retrain_after']}, only the rounds after it reported"
            if a.get("retrain_after")
            else "no retrain"
        )
        + f"); {r['examples']:,} train-then-test examples, "
        "each scored by the online learner before it stepped on it and by the batch ranker it "
        "continues. Per bucket of video length: mean label / online learner's mean prediction "
        "/ batch ranker's mean prediction.",
        "",
        "| length | examples | watch ratio | finish | quick skip |",
        "|---|---:|---|---|---|",
        *(
            f"| {bucket(row)} | {row['n']:,} | {cell(row['watch_ratio'])} | "
            f"{cell(row['finish'])} | {cell(row['quick_skip'])} |"
            for row in r["rows"]
        ),
        "",
        "Over all lengths, log loss / AUC (the watch ratio's AUC is against finishing):",
        "",
        "| model | watch ratio | finish | quick skip |",
        "|---|---|---|---|",
        *(
            f"| {name} | "
            + " | ".join(
                f"{r['overall'][task][k][0]:.4f} / {r['overall'][task][k][1]:.3f}" for task in TASKS
            )
            + " |"
            for k, name in enumerate(("online learner", "batch ranker"))
        ),
        "",
        "For comparison, "
        + (
            "the batch ranker the run started with (trained on history only)"
            if a.get("retrain_after")
            else "the same batch ranker"
        )
        + " on the viewings it held out for validation when "
        f"it was trained (the latest tenth of each region's history, {r['history_examples']:,} "
        "viewings, features rebuilt as training built them): mean label / batch ranker's mean "
        "prediction. The history was served by the app's feed before fyp (popular, random, "
        "favourite topic), so it holds far more poorly fitting videos than fyp's own pages.",
        "",
        "| length | viewings | watch ratio | finish | quick skip |",
        "|---|---:|---|---|---|",
        *(
            f"| {bucket(row)} | {row['n']:,} | {cell(row['watch_ratio'])} | "
            f"{cell(row['finish'])} | {cell(row['quick_skip'])} |"
            for row in r["history_rows"]
        ),
        "",
        *slope_reading(r),
        END,
    ]
    return "\n".join(lines)


def slope_reading(r: dict[str, Any]) -> list[str]:
    """The watch ratio from the shortest to the longest bucket, label against predictions; a
    model *follows* the slope when its drop is at least half the label's."""

    def ends(rows: list[dict[str, Any]], k: int) -> tuple[float, float]:
        known = [row["watch_ratio"] for row in rows if row["watch_ratio"] is not None]
        return known[0][k], known[-1][k]

    def text(rows: list[dict[str, Any]], k: int) -> str:
        first, last = ends(rows, k)
        return f"{first:.3f} → {last:.3f}"

    def follows(rows: list[dict[str, Any]], k: int) -> str:
        label, model = ends(rows, 0), ends(rows, k)
        return (
            "follows" if model[0] - model[1] >= 0.5 * (label[0] - label[1]) else "does not follow"
        )

    live, history = r["rows"], r["history_rows"]
    return [
        "Watch ratio from the shortest to the longest videos: on the held-out history, label "
        f"{text(history, 0)}, batch ranker {text(history, 1)} ({follows(history, 1)} the "
        f"slope); on live traffic, label {text(live, 0)}, online learner {text(live, 1)} "
        f"({follows(live, 1)}), batch ranker {text(live, 2)} ({follows(live, 2)}). A model "
        "follows the slope here when its drop is at least half the label's."
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--newcomers", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument(
        "--retrain-after",
        type=int,
        default=None,
        metavar="R",
        help="retrain the batch ranker (history plus live traffic) after round R, and report "
        "only the rounds after it",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a configuration override for the run (repeatable), as in bench/closed_loop.py",
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args)
    command = ".venv/bin/python bench/calibration_by_length.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    text = section(result, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
