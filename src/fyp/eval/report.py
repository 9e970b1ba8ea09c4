"""Reports of evaluation runs: JSON, a Markdown page and PNG plots.

Plots: each metric against the cut-off K for every model; NDCG@20 by user activity (how many
training interactions a user has); catalog coverage against K. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt

from fyp.eval.harness import SELECTION_METRIC, RunResult


def write_json(run: RunResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_json(), indent=2, default=str), encoding="utf-8")
    return path


def _stem(run: RunResult) -> str:
    return f"{run.dataset}-{run.protocol}"


def plot_metric_vs_k(run: RunResult, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in run.results:
        if r.skipped:
            continue
        ks = [k for k in run.ks if f"{metric}@{k}" in r.metrics]
        ax.plot(ks, [r.metrics[f"{metric}@{k}"] for k in ks], marker="o", label=r.name)
    ax.set_xscale("log")
    ax.set_xticks(list(run.ks), [str(k) for k in run.ks])
    ax.set_xlabel("K")
    ax.set_ylabel(metric)
    ax.set_title(f"{run.dataset} ({run.protocol}): {metric}@K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_activity(run: RunResult, path: Path, metric: str = SELECTION_METRIC) -> Path:
    models = [r for r in run.results if not r.skipped]
    buckets: list[str] = []
    for r in models:
        for b in r.by_activity:
            if b not in buckets:
                buckets.append(b)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / max(len(models), 1)
    for i, r in enumerate(models):
        xs = [j + i * width for j in range(len(buckets))]
        ax.bar(
            xs, [r.by_activity.get(b, {}).get(metric, 0.0) for b in buckets], width, label=r.name
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(buckets))], buckets)
    ax.set_xlabel("training interactions per user")
    ax.set_ylabel(metric)
    ax.set_title(f"{run.dataset} ({run.protocol}): {metric} by user activity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run: RunResult, directory: Path, command: str | None = None) -> dict[str, Path]:
    """JSON, plots and a Markdown summary of ``run`` in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = _stem(run)
    files = {
        "json": write_json(run, directory / f"{stem}.json"),
        "ndcg": plot_metric_vs_k(run, "ndcg", directory / f"{stem}-ndcg.png"),
        "recall": plot_metric_vs_k(run, "recall", directory / f"{stem}-recall.png"),
        "coverage": plot_metric_vs_k(run, "coverage", directory / f"{stem}-coverage.png"),
        "activity": plot_activity(run, directory / f"{stem}-activity.png"),
    }
    markdown = directory / f"{stem}.md"
    markdown.write_text(markdown_section(run, command, {k: v.name for k, v in files.items()}))
    files["markdown"] = markdown
    return files


def markdown_section(
    run: RunResult, command: str | None = None, images: dict[str, str] | None = None
) -> str:
    """One dataset/protocol as Markdown: the table, the verdict, settings, timings."""
    lines = [f"### {run.dataset} · {run.protocol}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    s = run.split
    lines += [
        f"Split: {s.get('protocol', run.protocol)}; train {_part(s, 'train')}, "
        f"test {_part(s, 'test')}; {s.get('users_evaluated', '?')} users evaluated. "
        f"Run {run.started}, {run.seconds:.0f} s in all ({run.environment.get('processor', '')}).",
        "",
    ]
    columns = ["ndcg@20", "recall@20", "hit@20", "mrr@20", "ndcg@10", "coverage@20", "novelty@20"]
    lines.append(
        "| model | " + " | ".join(columns) + " | tune s | fit s | recommend s | settings |"
    )
    lines.append("|---|" + "---:|" * (len(columns) + 3) + "---|")
    for r in run.results:
        if r.skipped:
            lines.append(
                f"| {r.name} | " + " | ".join("—" for _ in columns) + f" | | | | {r.skipped} |"
            )
            continue
        cells = " | ".join(_fmt(r.metrics.get(c)) for c in columns)
        lines.append(
            f"| {r.name} | {cells} | {r.tune_seconds:.1f} | {r.fit_seconds:.1f} | "
            f"{r.recommend_seconds:.1f} | {_settings(r.name, r.settings)} |"
        )
    lines += ["", verdict(run), ""]
    if images:
        lines += [f"![{name}]({file})" for name, file in images.items() if file.endswith(".png")]
        lines.append("")
    return "\n".join(lines)


def verdict(run: RunResult, metric: str = SELECTION_METRIC) -> str:
    fyp = run.result("fyp")
    best = run.best_baseline(metric)
    if fyp is None or best is None or fyp.skipped:
        return "No comparison (fyp or every baseline missing)."
    ours, theirs = fyp.metrics.get(metric, 0.0), best.metrics.get(metric, 0.0)
    gap = (ours - theirs) / theirs * 100 if theirs else float("inf")
    numbers = f"{ours:.4f} vs {theirs:.4f} ({gap:+.1f} %)"
    if ours > theirs:
        return f"**fyp beats the best baseline ({best.name}) in {metric}: {numbers}.**"
    return f"**fyp does not beat the best baseline ({best.name}) in {metric}: {numbers}.**"


def _part(split: dict[str, Any], name: str) -> str:
    part = split.get(name) or {}
    return f"{part.get('interactions', '?'):,} interactions" if part else "?"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _settings(name: str, settings: dict[str, Any]) -> str:
    if name != "fyp":
        return ", ".join(f"{k}={v}" for k, v in settings.items()) or "—"
    parts: Sequence[dict[str, Any]] = settings.get("components", [])
    used = [
        f"{c['name']} w={c['weight']:g}" + (f" ({_kv(c['settings'])})" if c["settings"] else "")
        for c in parts
        if c.get("weight")
    ]
    return "fusion: " + "; ".join(used)


def _kv(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())
