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
_KEEP: Final = 3


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
        pointer = self.root / f".{_CURRENT}.tmp"
        pointer.write_text(version)
        pointer.replace(self.root / _CURRENT)
        self._prune(keep=version)

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

    def _prune(self, keep: str) -> None:
        versions = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        for old in versions[:-_KEEP]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".*.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
