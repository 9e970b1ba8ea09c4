"""Model snapshots: round trip, an atomic CURRENT pointer, no pickles, bounded history."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fyp.storage.models import ModelStore


def arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "item_ids": np.asarray(["a", "b", "c"], dtype=np.str_),
        "item_factors": rng.standard_normal((3, 4)).astype(np.float32),
    }


def save_spaced(store: ModelStore, versions: list[str]) -> None:
    """Save versions as a trainer does, minutes apart (snapshot directories carry their mtime)."""
    for k, version in enumerate(versions):
        store.save(version, {"k": k}, arrays(k))
        stamp = 1_700_000_000 + 600 * k
        os.utime(store.root / version, (stamp, stamp))


def test_an_empty_store_has_no_current_snapshot(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models" / "us")
    assert store.current_version() is None
    assert store.load_current() is None


def test_save_then_load_round_trips_meta_and_arrays(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models" / "us")
    saved = arrays(1)
    store.save("v1", {"events": 12, "alpha": 4.0}, saved)
    snapshot = store.load_current()
    assert snapshot is not None
    assert snapshot.version == "v1" == store.current_version()
    assert snapshot.meta == {"events": 12, "alpha": 4.0, "version": "v1"}
    assert set(snapshot.arrays) == set(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(snapshot.arrays[name], value)
        assert snapshot.arrays[name].dtype == value.dtype


def test_the_latest_save_becomes_current(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("v1", {}, arrays(1))
    store.save("v2", {}, arrays(2))
    snapshot = store.load_current()
    assert snapshot is not None and snapshot.version == "v2"
    np.testing.assert_array_equal(snapshot.arrays["item_factors"], arrays(2)["item_factors"])


def test_a_version_is_never_overwritten(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("v1", {}, arrays(1))
    with pytest.raises(FileExistsError):
        store.save("v1", {}, arrays(2))
    snapshot = store.load_current()
    assert snapshot is not None
    np.testing.assert_array_equal(snapshot.arrays["item_factors"], arrays(1)["item_factors"])


def test_object_arrays_are_refused_so_a_snapshot_never_holds_a_pickle(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("v1", {}, arrays(1))
    with pytest.raises(ValueError, match="pickle"):
        store.save("v2", {}, {"bad": np.array([{"x": 1}], dtype=object)})
    assert store.current_version() == "v1"
    assert not (tmp_path / "v2").exists()


def test_a_leftover_staging_directory_does_not_change_current(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("v1", {}, arrays(1))
    staging = tmp_path / ".v2.crashed"
    staging.mkdir()
    (staging / "arrays.npz").write_bytes(b"half a file")
    assert store.current_version() == "v1"
    snapshot = store.load_current()
    assert snapshot is not None and snapshot.version == "v1"
    store.save("v3", {}, arrays(3))
    assert store.current_version() == "v3"
    assert not staging.exists(), "the next save clears stale staging directories"


def test_a_crash_before_the_rename_leaves_the_previous_version_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    store.save("v1", {}, arrays(1))

    def crash(self: Path, target: Path) -> Path:
        raise OSError("disk vanished")

    monkeypatch.setattr(Path, "rename", crash)
    with pytest.raises(OSError, match="disk vanished"):
        store.save("v2", {}, arrays(2))
    monkeypatch.undo()
    assert store.current_version() == "v1"
    assert store.load_current() is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "HISTORY", "v1"]


def test_a_crash_before_the_pointer_swap_leaves_the_previous_version_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    store.save("v1", {}, arrays(1))

    def crash(self: Path, target: Path) -> Path:
        raise OSError("killed")

    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        store.save("v2", {}, arrays(2))
    monkeypatch.undo()
    snapshot = store.load_current()
    assert snapshot is not None and snapshot.version == "v1"
    assert (tmp_path / "CURRENT").read_text() == "v1"


def test_pruning_keeps_the_last_three_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    save_spaced(store, ["v1", "v2", "v3", "v4", "v5"])
    store.save("v6", {}, arrays(6))
    versions = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert versions == ["v4", "v5", "v6"]
    assert store.current_version() == "v6"
