"""``fyp eval-ranker`` on a tiny world: it runs, compares the three models on one split, and writes
its JSON and Markdown report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fyp.cli import main
from fyp.config import RANKER_TASKS, FypConfig
from fyp.eval.ranking import (
    ENGAGEMENT_TASKS,
    FULL,
    HAND,
    NO_WATCH,
    OUTCOMES,
    ModelResult,
    RankerEvalResult,
    across_seeds,
    hand_weighted_value,
    write_ranker_report,
)
from fyp.models.ranker_data import NUMERIC_FEATURES, BaseRates, ExampleSet

pytestmark = pytest.mark.slow


def test_eval_ranker_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    args = ["--users", "80", "--epochs", "1", "--seed", "3", "--out", str(out)]
    code = main(["eval-ranker", *args])
    assert code == 0
    printed = capsys.readouterr().out
    assert FULL in printed and NO_WATCH in printed and HAND in printed
    report = json.loads((out / "ranker-sim.json").read_text())
    assert [run["seed"] for run in report["runs"]] == [3]
    data = report["runs"][0]
    models = {m["name"]: m for m in data["models"]}
    assert set(models) == {FULL, NO_WATCH, HAND}
    assert set(models[FULL]["heads"]) == set(RANKER_TASKS)
    assert set(models[NO_WATCH]["heads"]) == {"like", "share", "follow"}
    for name in (FULL, NO_WATCH):
        assert models[name]["train_seconds"] > 0
        assert models[name]["parameters"] > 0
        assert 0.0 <= models[name]["heads"]["like"]["auc"] <= 1.0
    assert set(models[FULL]["value_gauc"]) == set(OUTCOMES)
    split = data["split"]
    assert split["train_viewings"] > 0 and split["test_viewings"] > 0
    assert data["verdict"]["value_gauc_delta"].keys() == set(OUTCOMES)
    markdown = (out / "ranker-sim.md").read_text()
    assert "| head |" in markdown and "fyp eval-ranker" in markdown
    assert "Verdict" in markdown and "Across" not in markdown


def test_several_worlds_are_summarised_with_their_spread(tmp_path: Path) -> None:
    model = ModelResult(
        name=FULL,
        description="",
        heads={t: {"auc": 0.7, "gauc": 0.7, "log_loss": 0.3} for t in RANKER_TASKS},
        value_gauc=dict.fromkeys(OUTCOMES, 0.75),
        value_auc=dict.fromkeys(OUTCOMES, 0.75),
        train_seconds=1.0,
        peak_memory_mb=1.0,
        parameters=10,
    )
    without = replace(
        model,
        name=NO_WATCH,
        heads={t: {"auc": 0.6, "gauc": 0.6, "log_loss": 0.3} for t in ENGAGEMENT_TASKS},
        value_gauc=dict.fromkeys(OUTCOMES, 0.7),
    )
    hand = replace(model, name=HAND)
    world = {"viewers": 9, "items": 9, "creators": 3, "events": 99}
    split = {"test_share_of_time": 0.2, "test_viewings": 5, "test_viewers": 2, "train_viewings": 9}
    first = RankerEvalResult(None, 0, world, split, {}, {}, [model, without, hand])
    worse = replace(model, value_gauc=dict.fromkeys(OUTCOMES, 0.65))
    second = replace(first, seed=1, models=[worse, without, hand])
    summary = across_seeds([first, second])
    assert summary["seeds"] == [0, 1]
    assert summary["value_gauc_delta"]["finish"] == pytest.approx([0.05, -0.05])
    assert summary["shared_heads_gauc_delta"]["like"] == pytest.approx([0.1, 0.1])
    files = write_ranker_report([first, second], tmp_path)
    text = files["markdown"].read_text()
    assert "Across 2 worlds (seeds 0, 1)" in text
    assert "| value vs finish | 0.0000 ± 0.0707 | 1/2 |" in text
    assert json.loads(files["json"].read_text())["across_seeds"]["seeds"] == [0, 1]


def test_the_hand_weighted_reference_uses_the_configured_weights() -> None:
    n = 4
    numeric = np.zeros((n, len(NUMERIC_FEATURES)), dtype=np.float32)
    col = NUMERIC_FEATURES.index
    rates = BaseRates()
    for rate in ("finish", "like", "share", "skip"):
        numeric[:, col(f"item_{rate}_rate")] = getattr(rates, rate)  # exactly average: lift 0
    numeric[:, col("creator_affinity")] = [0.0, 0.5, -0.5, 0.0]
    numeric[:, col("log_age_hours")] = math.log1p(1e6)  # old: no freshness
    examples = ExampleSet(
        ts=np.zeros(n),
        user_ids=["u"] * n,
        item_ids=list("abcd"),
        creator_ids=["c"] * n,
        tags=[()] * n,
        numeric=numeric,
        labels=np.zeros((n, 8), np.float32),
        known=np.ones((n, 8), np.bool_),
    )
    weights = FypConfig().scoring.weights
    value = hand_weighted_value(examples, rates, weights, 48.0)
    expected = weights["creator_affinity"] * np.array([0.0, 0.5, -0.5, 0.0])
    np.testing.assert_allclose(value, expected, atol=1e-5)
