"""fyp's default model, the harness, reports and the offline contract, on planted synthetic data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fyp.cli import main
from fyp.eval.data import Dataset, FitContext, Interactions, ItemFeatures
from fyp.eval.harness import run, table
from fyp.eval.metrics import evaluate
from fyp.eval.offline import offline_recommend, read_users
from fyp.eval.protocols import leave_last_n_out
from fyp.eval.report import verdict, write_report
from fyp.models.fusion import FusionRecommender


def planted(seed: int = 0, users: int = 120, items: int = 60) -> Dataset:
    """Two tastes, and within each a fixed order in which items are consumed (a sequence)."""
    rng = np.random.default_rng(seed)
    rows_u, rows_i, rows_t = [], [], []
    for u in range(users):
        group = u % 2
        block = np.arange(group * items // 2, (group + 1) * items // 2)
        start = int(rng.integers(0, len(block) - 12))
        for step, item in enumerate(block[start : start + int(rng.integers(6, 12))]):
            rows_u.append(u)
            rows_i.append(int(item))
            rows_t.append(1_000.0 * u + step)
    tags = [["left" if i < items // 2 else "right", f"t{i % 7}"] for i in range(items)]
    log = Interactions(
        user=np.asarray(rows_u),
        item=np.asarray(rows_i),
        user_labels=[f"u{u}" for u in range(users)],
        item_labels=[f"i{i}" for i in range(items)],
        timestamp=np.asarray(rows_t),
    )
    return Dataset(name="planted", interactions=log, items=ItemFeatures(tags=tags))


def test_fusion_learns_the_planted_structure_and_respects_the_contract() -> None:
    data = planted()
    split = leave_last_n_out(data.interactions, 1)
    train = split.train.matrix()
    model = FusionRecommender(seed=1)
    result = evaluate(
        model, train, split.test, ks=(5,), context=FitContext(train=split.train, items=data.items)
    )
    assert result.metrics["hit@5"] > 0.6  # chance is about 5 / 50
    chosen = {c.name: c for c in model.report.components}
    assert {"popularity", "item_linear", "factors", "transitions", "content"} <= set(chosen)
    assert any(c.weight > 0 for c in chosen.values())
    assert chosen["transitions"].validation_ndcg > chosen["popularity"].validation_ndcg
    users = np.arange(data.interactions.n_users)
    recs = model.recommend(users, 10, train)
    for u in users:
        row = recs[u][recs[u] >= 0]
        assert len(set(row)) == len(row)
        assert not set(row) & set(train[u].indices)


def test_fusion_is_deterministic_for_a_seed() -> None:
    data = planted()
    train = data.interactions.matrix()
    lists = []
    for _ in range(2):
        model = FusionRecommender(seed=3)
        model.fit(train, FitContext(train=data.interactions, items=data.items, seed=3))
        lists.append(model.recommend(np.arange(20), 5, train))
    assert np.array_equal(lists[0], lists[1])


def test_harness_runs_every_model_and_reports(tmp_path: Path) -> None:
    result = run(planted(), "loo", ks=(5, 10, 20))
    names = [r.name for r in result.results]
    assert names == ["most-popular", "item-knn", "ease", "ials", "bpr", "fyp"]
    fyp = result.result("fyp")
    best = result.best_baseline()
    assert fyp is not None and best is not None and best.name != "fyp"
    assert fyp.metrics["ndcg@20"] > result.result("most-popular").metrics["ndcg@20"]  # type: ignore[union-attr]
    assert "fyp" in table(result)
    assert verdict(result).startswith("**fyp ")
    files = write_report(result, tmp_path, command="fyp eval planted")
    for name in ("json", "ndcg", "recall", "coverage", "activity", "markdown"):
        assert files[name].exists() and files[name].stat().st_size > 0
    text = files["markdown"].read_text()
    assert "| fyp |" in text and "fusion:" in text


def _write_log(path: Path, data: Dataset) -> None:
    log = data.interactions
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "timestamp"])
        for u, i, t in zip(log.user, log.item, log.timestamp, strict=True):  # type: ignore[arg-type]
            writer.writerow([log.user_labels[u], log.item_labels[i], t])


def test_offline_recommend_writes_top_k_unseen_items(tmp_path: Path) -> None:
    data = planted()
    _write_log(tmp_path / "train.csv", data)
    (tmp_path / "users.txt").write_text("user_id\nu1\nu2\nnobody\nu1\n")
    assert read_users(tmp_path / "users.txt") == ["u1", "u2", "nobody"]
    report = offline_recommend(
        tmp_path / "train.csv", tmp_path / "users.txt", 5, tmp_path / "r.csv"
    )
    assert (report.users, report.unknown_users) == (3, 1)
    with (tmp_path / "r.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["user_id"] for r in rows} == {"u1", "u2", "nobody"}
    seen = {
        (data.interactions.user_labels[u], data.interactions.item_labels[i])
        for u, i in zip(data.interactions.user, data.interactions.item, strict=True)
    }
    for user in ("u1", "u2", "nobody"):
        ranks = [int(r["rank"]) for r in rows if r["user_id"] == user]
        assert ranks == [1, 2, 3, 4, 5]
    assert not any((r["user_id"], r["item_id"]) in seen for r in rows)


def test_offline_recommend_cli_is_deterministic(tmp_path: Path) -> None:
    data = planted()
    _write_log(tmp_path / "train.csv", data)
    (tmp_path / "users.txt").write_text("\n".join(data.interactions.user_labels[:30]))
    outputs = []
    for name in ("a.csv", "b.csv"):
        argv = [
            "offline-recommend",
            "--train",
            str(tmp_path / "train.csv"),
            "--users",
            str(tmp_path / "users.txt"),
            "--k",
            "10",
            "--out",
            str(tmp_path / name),
            "--seed",
            "4",
        ]
        assert main(argv) == 0
        outputs.append((tmp_path / name).read_text())
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == 1 + 30 * 10


def test_offline_recommend_rejects_a_bad_log(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("user,item\n1,2\n")
    (tmp_path / "users.txt").write_text("1\n")
    argv = [
        "offline-recommend",
        "--train",
        str(tmp_path / "train.csv"),
        "--users",
        str(tmp_path / "users.txt"),
        "--out",
        str(tmp_path / "r.csv"),
    ]
    assert main(argv) == 1
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("protocol", ["loo", "temporal"])
def test_eval_command_writes_a_report(tmp_path: Path, protocol: str) -> None:
    data = planted()
    _write_log(tmp_path / "log.csv", data)
    argv = [
        "eval",
        str(tmp_path / "log.csv"),
        "--protocol",
        protocol,
        "--models",
        "most-popular,fyp",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 0
    assert (tmp_path / "out" / f"log-{protocol}.md").exists()
