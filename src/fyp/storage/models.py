"""Model snapshots on disk: one directory per region, one sub-directory per version.

A snapshot is written to a temporary directory and renamed into place, then the ``CURRENT`` pointer
is replaced atomically; a reader therefore sees either the old or the new snapshot, never a partial
one, even if the writer dies mid-way. Arrays are stored with ``numpy.savez`` and loaded with
``allow_pickle=False``: a snapshot can never execute code.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

_CURRENT: Final = "CURRENT"
_HISTORY: Final = "HISTORY"
"""Saved versions, one per line, in save order: pruning follows it, not file timestamps."""
_KEEP: Final = 3
_ERASED: Final = "LAST_ERASURE"
_ERASED_LOCK: Final = ".LAST_ERASURE.lock"
_ONLINE: Final = "online"
_PUBLISHED: Final = "published"


@dataclass(frozen=True)
class ModelSnapshot:
    version: str
    meta: dict[str, Any]
    arrays: dict[str, npt.NDArray[Any]]


class ModelStore:
    """Versioned snapshots of one region's trained models."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, version: str, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / version
        if final.exists():
            raise FileExistsError(f"snapshot {version} already exists in {self.root}")
        _write_snapshot_dir(self.root, version, meta, arrays)
        history = [*self._history(), version]
        self._write_atomically(_HISTORY, "\n".join(history) + "\n")
        self._write_atomically(_CURRENT, version)
        self._prune(history)

    def _write_atomically(self, name: str, text: str) -> None:
        # A staging file of its own per writer: concurrent erasures (threads or processes) each
        # write the mark, and with one shared staging name one's rename took the other's file.
        fd, staging = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            Path(staging).replace(self.root / name)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

    def _history(self) -> list[str]:
        try:
            lines = (self.root / _HISTORY).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if line and (self.root / line).is_dir()]

    def mark_erasure(self, now: float) -> None:
        """Note that a user was erased at ``now``: models trained before it must be retrained.

        Only the instant is written (no id): the retrainer compares it with the current model's
        training time, so the erased user's rows leave the stored model at the next training.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # One marker at a time, across threads and processes (an exclusive lock on a file
        # beside it), so the mark never moves back when erasures finish out of order.
        with (self.root / _ERASED_LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._write_atomically(_ERASED, repr(max(float(now), self.last_erasure())))
            # The online checkpoint holds the erased viewer's row: drop it; a running trainer
            # (which forgets the viewer in memory) writes a fresh one without them.
            shutil.rmtree(self.root / _ONLINE, ignore_errors=True)

    def online_dir(self) -> Path:
        """Where the online trainer keeps its checkpoints (they hold viewer rows: personal)."""
        return self.root / _ONLINE

    # ---- the online learner's latest published ranker (for the other serving processes) ----------

    def save_published(
        self, version: str, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]
    ) -> None:
        """Write the ranker the online trainer just served, so other processes serve it too.

        Written like a snapshot (staging directory renamed into place, then the pointer), and
        only the latest two are kept: a reader holding the previous one can still load it.
        """
        root = self.root / _ONLINE / _PUBLISHED
        root.mkdir(parents=True, exist_ok=True)
        _write_snapshot_dir(root, version, meta, arrays)
        fd, pointer = tempfile.mkstemp(prefix=f".{_CURRENT}.", suffix=".tmp", dir=root)
        with os.fdopen(fd, "w") as fh:
            fh.write(version)
        Path(pointer).replace(root / _CURRENT)
        kept = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in kept[:-2]:
            if old.name != version:
                shutil.rmtree(old, ignore_errors=True)

    def published_version(self) -> str | None:
        try:
            text = (self.root / _ONLINE / _PUBLISHED / _CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def load_published(self) -> ModelSnapshot | None:
        """The latest published online ranker (``None`` if none, or if it vanished meanwhile)."""
        version = self.published_version()
        if version is None:
            return None
        try:
            return _read_snapshot_dir(self.root / _ONLINE / _PUBLISHED / version, version)
        except FileNotFoundError:
            return None  # replaced (or erased) between the pointer and the read

    def last_erasure(self) -> float:
        try:
            return float((self.root / _ERASED).read_text().strip() or 0.0)
        except FileNotFoundError:
            return 0.0

    def current_version(self) -> str | None:
        try:
            version = (self.root / _CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def load_current(self) -> ModelSnapshot | None:
        version = self.current_version()
        if version is None:
            return None
        return _read_snapshot_dir(self.root / version, version)

    def _prune(self, history: list[str]) -> None:
        """Keep the last ``_KEEP`` saves (by save order) and remove staging left by a crash."""
        keep = set(history[-_KEEP:])
        for path in self.root.iterdir():
            if not path.is_dir() or path.name == _ONLINE:
                continue
            if path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True)  # a save that died before its rename
            elif path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
        self._write_atomically(_HISTORY, "\n".join(history[-_KEEP:]) + "\n")


def _write_snapshot_dir(
    root: Path, version: str, meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]
) -> None:
    """``root/version`` holding ``arrays.npz`` and ``meta.json``, written in a staging directory
    and renamed into place: readers see all of it or none."""
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    try:
        with (staging / "arrays.npz").open("wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        (staging / "meta.json").write_text(json.dumps({**meta, "version": version}, indent=2))
        staging.rename(root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_snapshot_dir(directory: Path, version: str) -> ModelSnapshot:
    meta = json.loads((directory / "meta.json").read_text())
    with np.load(directory / "arrays.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    return ModelSnapshot(version=version, meta=meta, arrays=arrays)
