"""Model snapshots on disk: one directory per region, one sub-directory per version.

A snapshot is written to a temporary directory and renamed into place, then the ``CURRENT`` pointer
is replaced atomically; a reader therefore sees either the old or the new snapshot, never a partial
one, even if the writer dies mid-way. Arrays are stored with ``numpy.savez`` and loaded with
``allow_pickle=False``: a snapshot can never execute code.
"""

from __future__ import annotations

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
_ONLINE: Final = "online"


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
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        try:
            with (staging / "arrays.npz").open("wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            (staging / "meta.json").write_text(json.dumps({**meta, "version": version}, indent=2))
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        history = [*self._history(), version]
        self._write_atomically(_HISTORY, "\n".join(history) + "\n")
        self._write_atomically(_CURRENT, version)
        self._prune(history)

    def _write_atomically(self, name: str, text: str) -> None:
        staging = self.root / f".{name}.tmp"
        staging.write_text(text)
        staging.replace(self.root / name)

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
        self._write_atomically(_ERASED, repr(float(now)))
        # The online checkpoint holds the erased viewer's row: drop it; a running trainer
        # (which forgets the viewer in memory) writes a fresh one without them.
        shutil.rmtree(self.root / _ONLINE, ignore_errors=True)

    def online_dir(self) -> Path:
        """Where the online trainer keeps its checkpoints (they hold viewer rows: personal)."""
        return self.root / _ONLINE

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
        directory = self.root / version
        meta = json.loads((directory / "meta.json").read_text())
        with np.load(directory / "arrays.npz", allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return ModelSnapshot(version=version, meta=meta, arrays=arrays)

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
