"""``fyp eval-ranker`` on a tiny world: it runs, compares the three models on one split, and writes
its JSON and Markdown report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fyp.cli import main
from fyp.config import RANKER_TASKS, FypConfig
from fyp.eval.ranking import FULL, HAND, NO_WATCH, OUTCOMES, hand_weighted_value
from fyp.models.ranker_data import NUMERIC_FEATURES, BaseRates, ExampleSet

pytestmark = pytest.mark.slow


def test_eval_ranker_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    args = ["--users", "80", "--epochs", "1", "--seed", "3", "--repeats", "2", "--out", str(out)]
    code = main(["eval-ranker", *args])
    assert code == 0
    printed = capsys.readouterr().out
    assert FULL in printed and NO_WATCH in printed and HAND in printed
    report = json.loads((out / "ranker-sim.json").read_text())
    assert [run["seed"] for run in report["runs"]] == [3, 4]
    assert len(report["across_seeds"]["value_gauc_delta"]["finish"]) == 2
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
    assert "Verdict" in markdown and "Across 2 worlds" in markdown


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
