"""The algorithm package: the feed's algorithm without anyone's data, signed and checkable.

``export_package`` writes a zip archive holding:

* ``manifest.json``: the code version (fyp's version and a hash of its source), the resolved
  algorithm configuration and its hash, the objective weights, the feature schema, the synthetic
  data generator (``fyp.sim`` and its settings, so a receiver can exercise the algorithm without
  real data), and the SHA-256 of every other file;
* optionally ``weights.safetensors`` and ``item_ids.json``: the non-personal weights of a region's
  current model (item factors and the item-to-item table; never user rows: the learned source
  keeps no user vectors, and only arrays named in ``NON_PERSONAL_ARRAYS`` are ever copied);
* ``signature.json``: an Ed25519 signature over the manifest, with the public key.

``verify_package`` checks every file against the manifest and the signature (against a pinned key
when given), then scans: any array or JSON key named like user or event data is refused, and with
a data directory to compare against, every string is checked against that directory's user ids
and every float array's rows against the per-user rows of its models. A package that carries any
is refused with the reason. ``import_package`` verifies, then starts the target region's model
from the package's weights; that region then retrains on its own events only. Export and import
are recorded in the region's audit log. Arrays are safetensors, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

import fyp
from fyp.config import SCORING_FEATURES, FypConfig
from fyp.errors import ConfigError, InvalidInput
from fyp.governance.gate import Gate
from fyp.governance.keys import Signer, Verifier
from fyp.governance.policy import Principal
from fyp.sim.world import WorldConfig
from fyp.types import EVENT_TYPES

FORMAT: Final = "fyp-algorithm-package/1"
NON_PERSONAL_ARRAYS: Final = (
    "item_factors",
    "neighbor_indptr",
    "neighbor_indices",
    "neighbor_scores",
    # The content towers: item vectors, the dense layer that pools a viewer's recent items, and
    # the content path that places new items. The towers' user-ID rows are never stored.
    "tower.item_vectors",
    "tower.history_weight",
    "tower.history_bias",
    "tower.content_mean",
    "tower.content_basis",
    "tower.mlp_in_weight",
    "tower.mlp_in_bias",
    "tower.mlp_out_weight",
    "tower.mlp_out_bias",
)
"""Snapshot arrays that describe items (or dense layers) only. Anything else stays home."""
_TOWER_META_KEYS: Final = ("dim", "history", "content_scale")
_PERSONAL_NAME = re.compile(r"user|viewer|event|member|person", re.IGNORECASE)
_MANIFEST = "manifest.json"
_SIGNATURE = "signature.json"
_WEIGHTS = "weights.safetensors"
_ITEM_IDS = "item_ids.json"
_TOWER_ITEM_IDS = "tower_item_ids.json"


class PackageRefused(InvalidInput):
    """A package that fails verification: tampered, unsigned, or carrying personal data."""


@dataclass
class PackageReport:
    path: str
    ok: bool = True
    key_id: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    checked_strings: int = 0
    checked_rows: int = 0
    problems: list[str] = field(default_factory=list)


def code_hash() -> str:
    """SHA-256 over fyp's own source files: which code the algorithm is."""
    digest = hashlib.sha256()
    root = resources.files("fyp")
    for path in sorted(_python_files(root), key=lambda p: p[0]):
        digest.update(path[0].encode() + b"\0" + path[1] + b"\0")
    return digest.hexdigest()


def _python_files(root: Any, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    for entry in root.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _python_files(entry, f"{name}/")
        elif entry.name.endswith(".py"):
            yield name, entry.read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(
    config: FypConfig, region: str | None, model: dict[str, Any] | None
) -> dict[str, Any]:
    algorithm = config.algorithm()
    return {
        "format": FORMAT,
        "created_at": time.time(),
        "code": {"fyp_version": fyp.__version__, "source_sha256": code_hash()},
        "config": algorithm,
        "config_hash": config.algorithm_hash,
        "objective_weights": {
            "value_model": dict(config.scoring.weights),
            "training_event_weights": dict(config.training.event_weights),
            "play_weight": config.training.play_weight,
            "ranker_heads": dict(config.ranker.objective_weights),
        },
        "feature_schema": {
            "value_model_features": list(SCORING_FEATURES),
            "event_types": sorted(EVENT_TYPES),
            "candidate_sources": [
                name for name, source in config.sources if getattr(source, "enabled", False)
            ],
        },
        "synthetic_data": {
            "generator": "fyp.sim.world.build_world",
            "config": {k: v for k, v in asdict(WorldConfig(seed=7)).items() if k != "now"},
        },
        "weights": model,
        "source_region": region,
        "files": {},
    }


def export_package(
    config: FypConfig, gate: Gate, out: Path, signer: Signer, region: str | None = None
) -> dict[str, Any]:
    """Write the package; with ``region``, include that region's non-personal model weights."""
    files: dict[str, bytes] = {}
    model_info: dict[str, Any] | None = None
    if region is not None:
        handle = gate.open(region, Principal.operator(region), "train")
        snapshot = handle.models.load_current()
        if snapshot is None:
            raise InvalidInput(f"region {region!r} has no trained model to package")
        arrays: dict[str, npt.NDArray[Any]] = {
            name: np.ascontiguousarray(snapshot.arrays[name])
            for name in NON_PERSONAL_ARRAYS
            if name in snapshot.arrays
        }
        files[_WEIGHTS] = save_tensors(arrays)
        item_ids = [str(x) for x in snapshot.arrays["item_ids"]]
        files[_ITEM_IDS] = json.dumps(item_ids).encode()
        tower = snapshot.meta.get("content_tower")
        if "tower.item_ids" in snapshot.arrays and isinstance(tower, dict):
            tower_ids = [str(x) for x in snapshot.arrays["tower.item_ids"]]
            files[_TOWER_ITEM_IDS] = json.dumps(tower_ids).encode()
        model_info = {
            "model_version": snapshot.version,
            "kind": snapshot.meta.get("kind"),
            "arrays": {name: list(a.shape) for name, a in arrays.items()},
            "meta": {
                k: snapshot.meta[k]
                for k in ("factors", "regularization", "alpha", "items")
                if k in snapshot.meta
            },
        }
        if _TOWER_ITEM_IDS in files and isinstance(tower, dict):
            model_info["meta"]["content_tower"] = {
                k: tower[k] for k in _TOWER_META_KEYS if k in tower
            }
    manifest = _manifest(config, region, model_info)
    manifest["files"] = {name: _sha256(data) for name, data in files.items()}
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    signature = {
        "key_id": signer.verifier.key_id,
        "public_key": signer.verifier.hex(),
        "signature": signer.sign(manifest_bytes).hex(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(_MANIFEST, manifest_bytes)
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(_SIGNATURE, json.dumps(signature, indent=2))
    staging.replace(out)
    if region is not None and model_info is not None:
        gate.record_action(
            region,
            Principal.operator(region),
            "train",
            "package_export",
            {
                "package_sha256": _sha256(out.read_bytes()),
                "model_version": model_info["model_version"],
            },
        )
    return manifest


def _strings(value: Any) -> Iterator[str]:
    """Every key and string value in a JSON document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


_MANIFEST_KEYS: Final = frozenset(
    {
        "format",
        "created_at",
        "code",
        "config",
        "config_hash",
        "objective_weights",
        "feature_schema",
        "synthetic_data",
        "weights",
        "source_region",
        "files",
    }
)
_WEIGHTS_KEYS: Final = frozenset({"model_version", "kind", "arrays", "meta"})


def _schema_problems(manifest: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    unknown = set(manifest) - _MANIFEST_KEYS
    if unknown:
        problems.append(f"the manifest has unexpected keys {sorted(unknown)}")
    try:
        # Strict: a configuration with any key fyp does not know is refused.
        FypConfig.model_validate(manifest.get("config", {}))
        WorldConfig(**manifest.get("synthetic_data", {}).get("config", {}))
    except (ValueError, TypeError) as exc:
        problems.append(f"the manifest's configuration is not fyp's: {str(exc)[:200]}")
    weights = manifest.get("weights") or {}
    if set(weights) - _WEIGHTS_KEYS:
        problems.append(
            f"unexpected keys in the weights entry: {sorted(set(weights) - _WEIGHTS_KEYS)}"
        )
    if set(weights.get("arrays", {})) - set(NON_PERSONAL_ARRAYS):
        problems.append("the weights entry lists arrays a package may not carry")
    return problems


def verify_package(
    path: Path,
    pinned: Verifier | None = None,
    user_ids: set[str] | None = None,
    user_rows: set[bytes] | None = None,
) -> PackageReport:
    """Check integrity, signature and the absence of personal data; never raises on content."""
    report = PackageReport(str(path))

    def fail(problem: str) -> None:
        report.ok = False
        report.problems.append(problem)

    try:
        with zipfile.ZipFile(path) as archive:
            contents = {name: archive.read(name) for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as exc:
        fail(f"not a readable package: {exc}")
        return report
    if _MANIFEST not in contents or _SIGNATURE not in contents:
        fail("the manifest or the signature is missing")
        return report
    try:
        manifest = json.loads(contents[_MANIFEST])
        signature = json.loads(contents[_SIGNATURE])
        verifier = Verifier.from_hex(signature["public_key"])
        signed = bytes.fromhex(signature["signature"])
    except (ValueError, KeyError, ConfigError) as exc:
        fail(f"unreadable manifest or signature: {exc}")
        return report
    report.manifest = manifest
    report.key_id = verifier.key_id
    if pinned is not None and pinned.key_id != verifier.key_id:
        fail(f"signed by key {verifier.key_id}, not by the pinned key {pinned.key_id}")
    if not verifier.valid(contents[_MANIFEST], signed):
        fail("the signature does not match the manifest")
    if manifest.get("format") != FORMAT:
        fail(f"unknown package format {manifest.get('format')!r}")
    listed = manifest.get("files", {})
    extra = set(contents) - set(listed) - {_MANIFEST, _SIGNATURE}
    if extra:
        fail(f"files not listed in the manifest: {sorted(extra)}")
    for name, digest in listed.items():
        if name not in contents:
            fail(f"{name} is listed but missing")
        elif _sha256(contents[name]) != digest:
            fail(f"{name} does not match its hash in the manifest")
    # The manifest has a fixed shape, so nothing can ride along under a key of its own.
    for problem in _schema_problems(manifest):
        fail(problem)
    arrays: dict[str, npt.NDArray[Any]] = {}
    if _WEIGHTS in contents:
        try:
            arrays = load_tensors(contents[_WEIGHTS])
        except Exception as exc:  # safetensors raises its own error types
            fail(f"weights are not valid safetensors: {exc}")
    for name in arrays:
        if name not in NON_PERSONAL_ARRAYS or _PERSONAL_NAME.search(name):
            fail(f"array {name!r} is not one of the non-personal arrays a package may carry")
    # Personal data, by value: the receiver's own users and their model rows.
    documents: list[Any] = [manifest]
    for name, data in contents.items():
        if name.endswith(".json") and name not in (_MANIFEST, _SIGNATURE):
            try:
                documents.append(json.loads(data))
            except ValueError as exc:
                fail(f"{name} is not valid JSON: {exc}")
    if user_ids:
        for document in documents:
            for text in _strings(document):
                report.checked_strings += 1
                if text in user_ids:
                    fail(f"the package carries a user identifier ({_sha256(text.encode())[:12]})")
                    break
    if user_rows:
        for name, array in arrays.items():
            if array.ndim == 2 and array.dtype.kind == "f":
                rows = np.ascontiguousarray(array)
                report.checked_rows += rows.shape[0]
                if any(row.tobytes() in user_rows for row in rows):
                    fail(f"array {name!r} contains a user's model row")
    return report


def import_package(gate: Gate, region: str, path: Path, report: PackageReport) -> str:
    """Start ``region``'s model from a verified package; returns the new model version."""
    if not report.ok:
        raise PackageRefused("package refused: " + "; ".join(report.problems))
    with zipfile.ZipFile(path) as archive:
        weights = load_tensors(archive.read(_WEIGHTS)) if _WEIGHTS in archive.namelist() else {}
        item_ids = json.loads(archive.read(_ITEM_IDS)) if weights else []
        tower_ids = (
            json.loads(archive.read(_TOWER_ITEM_IDS))
            if _TOWER_ITEM_IDS in archive.namelist()
            else None
        )
    if not weights:
        raise InvalidInput("the package carries no weights to start a model from")
    manifest = report.manifest
    info = manifest.get("weights") or {}
    handle = gate.open(region, Principal.operator(region), "train")
    version = f"{region}-imported-{int(time.time() * 1e6)}"
    arrays: dict[str, npt.NDArray[Any]] = {
        "item_ids": np.asarray(item_ids, dtype=np.str_),
        **{name: np.asarray(weights[name]) for name in NON_PERSONAL_ARRAYS if name in weights},
    }
    if tower_ids is not None:
        arrays["tower.item_ids"] = np.asarray(tower_ids, dtype=np.str_)
    meta = {
        **info.get("meta", {}),
        "kind": info.get("kind"),
        "region": region,
        "trained_at": time.time(),
        "events": 0,
        "last_seq": 0,
        "imported_from": {
            "region": manifest.get("source_region"),
            "model_version": info.get("model_version"),
            "config_hash": manifest.get("config_hash"),
            "key_id": report.key_id,
        },
        "algorithm_hash": manifest.get("config_hash"),
    }
    handle.models.save(version, meta, arrays)
    handle.record(
        "package_import",
        {"package_sha256": _sha256(path.read_bytes()), "model_version": version},
    )
    return version


def local_personal_data(gate: Gate, regions: list[str]) -> tuple[set[str], set[bytes]]:
    """User ids of every region and the per-user rows of their models, to scan packages for."""
    ids: set[str] = set()
    rows: set[bytes] = set()
    for region in regions:
        handle = gate.open(region, Principal.auditor(region), "scan_package")
        ids.update(handle.users.user_ids())
        snapshot = handle.models.load_current()
        if snapshot is not None:
            for name, array in snapshot.arrays.items():
                if _PERSONAL_NAME.search(name) and array.ndim == 2 and array.dtype.kind == "f":
                    rows.update(np.ascontiguousarray(r).tobytes() for r in array)
    return ids, rows
