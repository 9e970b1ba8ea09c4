"""Collisionless, expirable embedding tables: admission, expiry, sparse optimizer steps, and
incremental snapshots that restore exactly and never leave a readable half file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fyp.errors import Conflict, InvalidInput
from fyp.online.embedding_table import (
    EmbeddingTable,
    HashedEmbeddingTable,
    TableConfig,
    collision_rate,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def assert_same_state(a: EmbeddingTable, b: EmbeddingTable) -> None:
    assert sorted(a.ids()) == sorted(b.ids())
    ids = sorted(a.ids())
    np.testing.assert_array_equal(a.lookup(ids), b.lookup(ids))
    np.testing.assert_array_equal(a.last_used(ids), b.last_used(ids))
    for name in ("acc",) if a.config.optimizer == "adagrad" else ("m", "v"):
        np.testing.assert_array_equal(a.slot(name, ids), b.slot(name, ids))
    assert a.pending() == b.pending()
    assert a.config == b.config


def test_every_id_gets_its_own_row_and_the_table_grows() -> None:
    table = EmbeddingTable(TableConfig(dim=8, initial_capacity=4))
    ids = [f"user-{i}" for i in range(5000)]
    rows = table.observe(ids, now=0.0)
    assert len(set(rows.tolist())) == 5000
    assert (rows >= 0).all()
    assert len(table) == 5000
    assert table.capacity >= 5000
    vectors = table.lookup(ids)
    # Distinct rows hold independent vectors: no two ids read the same one.
    assert len({v.tobytes() for v in vectors}) == 5000
    # Observing again maps to the same rows.
    np.testing.assert_array_equal(table.observe(ids[::7], now=1.0), rows[::7])


def test_frequency_filter_admits_only_after_min_count() -> None:
    table = EmbeddingTable(TableConfig(dim=4, min_count=3))
    assert table.observe(["a", "a", "b"], now=0.0).tolist() == [-1, -1, -1]
    assert "a" not in table
    assert table.pending() == {"a": (2, 0.0), "b": (1, 0.0)}
    np.testing.assert_array_equal(table.lookup(["a", "b"]), np.zeros((2, 4), np.float32))
    # A gradient on an id below the filter changes nothing.
    assert table.apply_gradients(["a"], np.ones((1, 4)), now=0.0) == 0
    np.testing.assert_array_equal(table.lookup(["a"]), np.zeros((1, 4), np.float32))
    row = table.observe(["a"], now=1.0)
    assert row.tolist() == [0]
    assert "a" in table
    assert "a" not in table.pending()
    assert np.abs(table.lookup(["a"])).sum() > 0


def test_ttl_evicts_unused_rows_and_their_slots_are_reused() -> None:
    table = EmbeddingTable(TableConfig(dim=4, ttl_s=100.0, initial_capacity=8))
    table.observe([f"old-{i}" for i in range(8)], now=0.0)
    table.observe(["old-0"], now=90.0)  # used recently: survives
    assert table.capacity == 8
    assert table.evict_expired(now=150.0) == 7
    assert table.ids() == ["old-0"]
    np.testing.assert_array_equal(table.lookup(["old-3"]), np.zeros((1, 4), np.float32))
    # Seven new ids fit in the freed rows: the arrays do not grow.
    rows = table.observe([f"new-{i}" for i in range(7)], now=151.0)
    assert table.capacity == 8
    assert sorted([*rows.tolist(), int(table.rows(["old-0"])[0])]) == list(range(8))
    # A reused row starts fresh: its optimizer state is not the evicted id's.
    np.testing.assert_array_equal(table.slot("acc", ["new-0"]), np.full((1, 4), 0.1, np.float32))


def test_ttl_also_expires_pending_counters() -> None:
    table = EmbeddingTable(TableConfig(dim=2, min_count=2, ttl_s=10.0))
    table.observe(["rare"], now=0.0)
    table.evict_expired(now=20.0)
    assert table.pending() == {}
    # The count starts over: one more sighting is not enough.
    assert table.observe(["rare"], now=21.0).tolist() == [-1]


def test_no_ttl_means_no_eviction() -> None:
    table = EmbeddingTable(TableConfig(dim=2))
    table.observe(["a"], now=0.0)
    assert table.evict_expired(now=1e12) == 0
    assert "a" in table


def test_forget_removes_rows_and_counters() -> None:
    table = EmbeddingTable(TableConfig(dim=2, min_count=2))
    table.observe(["a", "a", "b"], now=0.0)
    assert table.forget(["a", "b", "never-seen"]) == 1
    assert "a" not in table
    assert table.pending() == {}


def test_adagrad_step_matches_the_formula_and_sums_repeated_ids() -> None:
    cfg = TableConfig(dim=3, lr=0.5, adagrad_init=0.1)
    table = EmbeddingTable(cfg)
    table.observe(["a", "b"], now=0.0)
    before = table.lookup(["a", "b"]).astype(np.float64)
    grads = np.array([[1.0, 0.0, -2.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    assert table.apply_gradients(["a", "b", "a"], grads, now=1.0) == 2
    g_a = grads[0] + grads[2]
    acc_a = 0.1 + g_a**2
    expected_a = before[0] - 0.5 * g_a / (np.sqrt(acc_a) + cfg.eps)
    np.testing.assert_allclose(table.lookup(["a"])[0], expected_a, rtol=1e-6)
    np.testing.assert_allclose(table.slot("acc", ["a"])[0], acc_a, rtol=1e-6)
    np.testing.assert_allclose(table.slot("acc", ["b"])[0], 0.1 + grads[1] ** 2, rtol=1e-6)
    assert table.last_used(["a"])[0] == 1.0


def test_adam_keeps_moments_and_a_step_per_row() -> None:
    cfg = TableConfig(dim=2, optimizer="adam", lr=0.1)
    table = EmbeddingTable(cfg)
    table.observe(["a", "b"], now=0.0)
    w = table.lookup(["a"]).astype(np.float64)[0]
    m = np.zeros(2)
    v = np.zeros(2)
    for t, g in enumerate([np.array([1.0, -1.0]), np.array([0.5, 2.0])], start=1):
        table.apply_gradients(["a"], g[None, :], now=float(t))
        m = cfg.beta1 * m + (1 - cfg.beta1) * g
        v = cfg.beta2 * v + (1 - cfg.beta2) * g * g
        w = w - cfg.lr * (m / (1 - cfg.beta1**t)) / (np.sqrt(v / (1 - cfg.beta2**t)) + cfg.eps)
    np.testing.assert_allclose(table.lookup(["a"])[0], w, rtol=1e-5)
    np.testing.assert_allclose(table.slot("m", ["a"])[0], m, rtol=1e-5)
    # "b" took no step: its moments are untouched.
    np.testing.assert_array_equal(table.slot("v", ["b"]), np.zeros((1, 2), np.float32))


def test_gradient_shape_is_checked() -> None:
    table = EmbeddingTable(TableConfig(dim=2))
    with pytest.raises(InvalidInput):
        table.apply_gradients(["a"], np.ones((1, 3)))


def test_a_torch_model_learns_through_the_table() -> None:
    """Lookup → torch autograd → apply_gradients: a dot-product model fits its targets."""
    users = EmbeddingTable(TableConfig(dim=4, lr=0.3, init_scale=0.3, seed=1))
    items = EmbeddingTable(TableConfig(dim=4, lr=0.3, init_scale=0.3, seed=2))
    pairs = [("u1", "i1", 1.0), ("u1", "i2", 0.0), ("u2", "i1", 0.0), ("u2", "i2", 1.0)]
    u_ids = [p[0] for p in pairs]
    i_ids = [p[1] for p in pairs]
    target = torch.tensor([p[2] for p in pairs])
    losses = []
    for step in range(200):
        users.observe(u_ids, now=float(step))
        items.observe(i_ids, now=float(step))
        u = torch.from_numpy(users.lookup(u_ids)).requires_grad_()
        i = torch.from_numpy(items.lookup(i_ids)).requires_grad_()
        loss = torch.nn.functional.binary_cross_entropy_with_logits((u * i).sum(1), target)
        loss.backward()  # type: ignore[no-untyped-call]
        assert u.grad is not None and i.grad is not None
        users.apply_gradients(u_ids, u.grad.numpy(), now=float(step))
        items.apply_gradients(i_ids, i.grad.numpy(), now=float(step))
        losses.append(loss.item())
    assert losses[-1] < 0.2 < losses[0]


# ---- snapshots -----------------------------------------------------------------------------------


def test_base_and_deltas_restore_exactly_and_deltas_hold_only_changes(tmp_path: Path) -> None:
    table = EmbeddingTable(TableConfig(dim=4, min_count=2, ttl_s=50.0, initial_capacity=4))
    table.observe([f"id{i}" for i in range(20)] * 2 + ["rare"], now=0.0)
    base = table.save_base(tmp_path / "base.safetensors")
    assert (base.kind, base.seq, base.rows_written) == ("base", 0, 20)

    table.apply_gradients(["id1", "id2"], np.ones((2, 4)), now=10.0)
    d1 = table.save_delta(tmp_path / "d1.safetensors")
    assert (d1.seq, d1.rows_written, d1.rows_removed) == (1, 2, 0)
    assert d1.bytes < base.bytes

    table.observe(["id1", "id2", "fresh", "fresh"], now=55.0)
    table.evict_expired(now=60.0)  # all but id1, id2, fresh; and the pending "rare"
    d2 = table.save_delta(tmp_path / "d2.safetensors")
    assert (d2.seq, d2.rows_written, d2.rows_removed) == (2, 3, 18)

    empty = table.save_delta(tmp_path / "d3.safetensors")
    assert (empty.rows_written, empty.rows_removed) == (0, 0)

    restored = EmbeddingTable.load(
        tmp_path / "base.safetensors",
        [tmp_path / "d1.safetensors", tmp_path / "d2.safetensors", tmp_path / "d3.safetensors"],
    )
    assert_same_state(table, restored)
    # The restored table continues the lineage.
    restored.apply_gradients(["fresh"], np.ones((1, 4)), now=61.0)
    restored.save_delta(tmp_path / "d4.safetensors")
    again = EmbeddingTable.load(
        tmp_path / "base.safetensors",
        [tmp_path / f"d{i}.safetensors" for i in range(1, 5)],
    )
    assert_same_state(restored, again)


def test_deltas_must_follow_their_base_in_order(tmp_path: Path) -> None:
    table = EmbeddingTable(TableConfig(dim=2))
    with pytest.raises(Conflict):
        table.save_delta(tmp_path / "too-early")
    table.observe(["a"], now=0.0)
    table.save_base(tmp_path / "base")
    table.save_delta(tmp_path / "d1")
    table.save_delta(tmp_path / "d2")
    with pytest.raises(Conflict):
        EmbeddingTable.load(tmp_path / "base", [tmp_path / "d2"])
    with pytest.raises(InvalidInput):
        EmbeddingTable.load(tmp_path / "d1")
    other = EmbeddingTable(TableConfig(dim=2))
    other.save_base(tmp_path / "other-base")
    with pytest.raises(Conflict):
        EmbeddingTable.load(tmp_path / "other-base", [tmp_path / "d1"])


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), st.lists(st.sampled_from("abcdefghij"), max_size=6)),
        st.tuples(st.just("grad"), st.lists(st.sampled_from("abcdefghij"), max_size=6)),
        st.tuples(st.just("evict"), st.just([])),
        st.tuples(st.just("forget"), st.lists(st.sampled_from("abcdefghij"), max_size=2)),
        st.tuples(st.just("save"), st.just([])),
    ),
    max_size=30,
)


@given(ops=OPS, optimizer=st.sampled_from(["adagrad", "adam"]))
def test_any_history_of_saves_restores_exactly(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, list[str]]], optimizer: str
) -> None:
    folder = tmp_path_factory.mktemp("snap")
    cfg = TableConfig(dim=3, min_count=2, ttl_s=5.0, optimizer=optimizer, initial_capacity=2)  # type: ignore[arg-type]
    table = EmbeddingTable(cfg)
    table.save_base(folder / "base")
    deltas: list[Path] = []
    for now, (op, ids) in enumerate(ops):
        if op == "observe":
            table.observe(ids, now=float(now))
        elif op == "grad":
            table.apply_gradients(ids, np.full((len(ids), 3), 0.25), now=float(now))
        elif op == "evict":
            table.evict_expired(now=float(now))
        elif op == "forget":
            table.forget(ids)
        else:
            deltas.append(folder / f"d{len(deltas) + 1}")
            table.save_delta(deltas[-1])
    deltas.append(folder / f"d{len(deltas) + 1}")
    table.save_delta(deltas[-1])
    assert_same_state(table, EmbeddingTable.load(folder / "base", deltas))


def test_a_failed_save_leaves_no_file_and_loses_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = EmbeddingTable(TableConfig(dim=2))
    table.observe(["a"], now=0.0)
    table.save_base(tmp_path / "base")
    table.apply_gradients(["a"], np.ones((1, 2)), now=1.0)

    def fail(self: Path, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        table.save_delta(tmp_path / "d1")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp file left behind
    # The change was not marked saved: the retried delta carries it.
    info = table.save_delta(tmp_path / "d1")
    assert info.rows_written == 1
    assert_same_state(table, EmbeddingTable.load(tmp_path / "base", [tmp_path / "d1"]))


def test_a_process_killed_mid_snapshot_leaves_the_previous_snapshots_intact(
    tmp_path: Path,
) -> None:
    """The writer dies (``os._exit``, no cleanup) after writing the data, before the rename."""
    script = textwrap.dedent(
        f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {str(SRC)!r})
        from fyp.online.embedding_table import EmbeddingTable, TableConfig
        folder = {str(tmp_path)!r}
        table = EmbeddingTable(TableConfig(dim=16))
        table.observe([f"id{{i}}" for i in range(2000)], now=0.0)
        table.save_base(folder + "/base")
        table.apply_gradients(["id1"], np.ones((1, 16)), now=1.0)
        table.save_delta(folder + "/d1")
        np.save(folder + "/expected.npy", table.lookup(["id1", "id2"]))
        table.apply_gradients(["id2"], np.ones((1, 16)), now=2.0)
        os.fsync = lambda fd: os._exit(9)  # die the moment the new file's bytes are written
        table.save_delta(folder + "/d2")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
    assert result.returncode == 9, result.stderr.decode()
    assert not (tmp_path / "d2").exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written temp file exists, under a name nobody loads
    restored = EmbeddingTable.load(tmp_path / "base", [tmp_path / "d1"])
    np.testing.assert_array_equal(
        restored.lookup(["id1", "id2"]), np.load(tmp_path / "expected.npy")
    )
    # A torn file is refused, not half-read.
    torn = tmp_path / "torn"
    data = (tmp_path / "d1").read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput):
        EmbeddingTable.load(tmp_path / "base", [torn])


# ---- the hashed baseline -------------------------------------------------------------------------


def test_hashed_table_collides_and_collision_rate_counts_it() -> None:
    ids = [f"id{i}" for i in range(1000)]
    assert collision_rate(ids, num_rows=10**9) == 0.0
    assert collision_rate(ids, num_rows=1) == 1.0
    rate = collision_rate(ids, num_rows=1000)
    # Balls in bins: a given id shares its row with probability 1 - (1 - 1/n)^(n-1) ≈ 63 %.
    assert 0.55 < rate < 0.70
    hashed = HashedEmbeddingTable(num_rows=10, dim=2)
    rows = hashed.rows(ids)
    assert len(set(rows.tolist())) <= 10
    same = [i for i in ids if hashed.rows([i])[0] == rows[0]]
    hashed.apply_gradients([ids[0]], np.ones((1, 2)))
    # Updating one id moved every id hashed to its row: what collisions cost.
    np.testing.assert_array_equal(
        hashed.lookup(same), np.repeat(hashed.lookup([ids[0]]), len(same), 0)
    )


def test_a_restored_table_does_not_replay_its_initialisations(tmp_path: Path) -> None:
    table = EmbeddingTable(TableConfig(dim=4))
    table.observe(["a"], now=0.0)
    table.save_base(tmp_path / "base")
    restored = EmbeddingTable.load(tmp_path / "base")
    restored.observe(["b"], now=1.0)
    assert not np.array_equal(restored.lookup(["b"]), table.lookup(["a"]))
