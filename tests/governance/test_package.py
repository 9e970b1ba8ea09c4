"""The algorithm package: exported without personal data, signed, verified, scanned, imported."""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from fyp.cli import main
from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import InvalidInput
from fyp.governance import package
from fyp.governance.keys import Signer, Verifier

TAGS = ["cats", "cooking", "travel", "music"]


def _trained(data_dir: Path, now: float, make_item: Any, make_user: Any, make_event: Any) -> Engine:
    engine = Engine(load_config(data_dir, training={"min_events": 10, "factors": 4}))
    rng = random.Random(3)
    engine.put_items([make_item(f"i{k:02d}", f"c{k % 6}", tags=[TAGS[k % 4]]) for k in range(40)])
    engine.put_users([make_user(f"user-{u:02d}", "us") for u in range(15)])
    engine.ingest(
        [
            make_event(f"user-{u:02d}", f"i{rng.randrange(40):02d}", "like", ts=now - rng.random())
            for u in range(15)
            for _ in range(8)
        ]
    )
    engine.train(["us"])
    return engine


@pytest.fixture
def source(
    tmp_path: Path, now: float, make_item: Any, make_user: Any, make_event: Any
) -> Iterator[Engine]:
    engine = _trained(tmp_path / "source", now, make_item, make_user, make_event)
    yield engine
    engine.close()


def _rewrite(path: Path, change: dict[str, bytes], signer: Signer | None = None) -> None:
    """Replace files in a package (and re-sign its manifest when a signer is given)."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files.update(change)
    if signer is not None:
        manifest = json.loads(files["manifest.json"])
        for name in change:
            if name not in ("manifest.json", "signature.json"):
                manifest["files"][name] = package._sha256(change[name])
        files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
        files["signature.json"] = json.dumps(
            {
                "key_id": signer.verifier.key_id,
                "public_key": signer.verifier.hex(),
                "signature": signer.sign(files["manifest.json"]).hex(),
            }
        ).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_a_package_carries_the_algorithm_and_item_weights_only(
    source: Engine, tmp_path: Path
) -> None:
    signer = Signer.generate()
    out = tmp_path / "algo.zip"
    manifest = package.export_package(source.config, source.gate, out, signer, "us")
    assert manifest["config_hash"] == source.config.algorithm_hash
    assert manifest["objective_weights"]["value_model"] == source.config.scoring.weights
    assert manifest["code"]["source_sha256"] == package.code_hash()
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        weights = load_tensors(archive.read("weights.safetensors"))
    assert names == {"manifest.json", "signature.json", "weights.safetensors", "item_ids.json"}
    assert set(weights) <= set(package.NON_PERSONAL_ARRAYS) and "item_factors" in weights
    ids, rows = package.local_personal_data(source.gate, ["us", "eu"])
    assert len(ids) == 15
    report = package.verify_package(out, signer.verifier, ids, rows)
    assert report.ok, report.problems
    assert report.checked_strings > 0
    # The export is in the region's audit log.
    actions = [r.action for r in source.gate.audit_log("us").tail(5)]
    assert "package_export" in actions


def test_tampering_and_foreign_keys_are_refused(source: Engine, tmp_path: Path) -> None:
    signer = Signer.generate()
    out = tmp_path / "algo.zip"
    package.export_package(source.config, source.gate, out, signer, "us")
    stranger = Verifier.from_hex(Signer.generate().verifier.hex())
    assert any("pinned key" in p for p in package.verify_package(out, stranger).problems)
    _rewrite(out, {"item_ids.json": b'["i00"]'})
    problems = package.verify_package(out, signer.verifier).problems
    assert any("does not match its hash" in p for p in problems)


def test_planted_user_identifiers_and_user_rows_are_refused(source: Engine, tmp_path: Path) -> None:
    signer = Signer.generate()
    ids, rows = package.local_personal_data(source.gate, ["us"])
    out = tmp_path / "algo.zip"
    package.export_package(source.config, source.gate, out, signer, "us")
    with zipfile.ZipFile(out) as archive:
        item_ids = json.loads(archive.read("item_ids.json"))
        weights = load_tensors(archive.read("weights.safetensors"))
    # A user id smuggled in among the item ids, re-signed so only the scan can catch it.
    planted = tmp_path / "planted-id.zip"
    planted.write_bytes(out.read_bytes())
    _rewrite(planted, {"item_ids.json": json.dumps([*item_ids, "user-07"]).encode()}, signer)
    report = package.verify_package(planted, signer.verifier, ids, rows)
    assert not report.ok and any("user identifier" in p for p in report.problems)
    # A user-vector table under an innocent name, and one under a telling name.
    user_matrix = np.random.default_rng(0).normal(size=(15, 4)).astype(np.float32)
    rows = {r.tobytes() for r in user_matrix}
    smuggled = tmp_path / "smuggled.zip"
    smuggled.write_bytes(out.read_bytes())
    disguised = {**weights, "item_factors": np.vstack([weights["item_factors"], user_matrix[:2]])}
    _rewrite(smuggled, {"weights.safetensors": save_tensors(disguised)}, signer)
    report = package.verify_package(smuggled, signer.verifier, ids, rows)
    assert any("contains a user's model row" in p for p in report.problems)
    named = tmp_path / "named.zip"
    named.write_bytes(out.read_bytes())
    _rewrite(
        named,
        {"weights.safetensors": save_tensors({**weights, "user_factors": user_matrix})},
        signer,
    )
    report = package.verify_package(named, signer.verifier)
    assert any("'user_factors' is not one of the non-personal arrays" in p for p in report.problems)


def test_import_starts_the_other_regions_model_and_refuses_a_bad_package(
    source: Engine, tmp_path: Path
) -> None:
    signer = Signer.generate()
    out = tmp_path / "algo.zip"
    package.export_package(source.config, source.gate, out, signer, "us")
    target = Engine(load_config(tmp_path / "target"))
    try:
        ids, rows = package.local_personal_data(target.gate, ["us", "eu"])
        report = package.verify_package(out, signer.verifier, ids, rows)
        version = package.import_package(target.gate, "eu", out, report)
        target.reload_model("eu")
        assert target.slots["eu"].version == version
        assert target.slots["eu"].current is not None
        meta = target.slots["eu"].current.meta
        assert meta["imported_from"]["region"] == "us" and meta["events"] == 0
        bad = package.PackageReport(str(out), ok=False, problems=["planted"])
        with pytest.raises(InvalidInput, match="planted"):
            package.import_package(target.gate, "eu", out, bad)
    finally:
        target.close()


def test_the_package_commands(
    source: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(source.config.data_dir)
    out = str(tmp_path / "algo.zip")
    source.close()
    assert main(["package", "export", out, "--region", "us", "--data-dir", data_dir]) == 0
    assert "weights of us-" in capsys.readouterr().out
    assert main(["package", "verify", out, "--data-dir", data_dir]) == 0
    assert "against 15 local user ids" in capsys.readouterr().out
    target = str(tmp_path / "target")
    assert main(["package", "import", out, "--region", "eu", "--data-dir", target]) == 0
    assert "eu: started model" in capsys.readouterr().out
    wrong_key = ["--public-key", "22" * 32]
    assert main(["package", "verify", out, *wrong_key, "--data-dir", target]) == 3


def test_the_content_towers_travel_item_side_only_and_serve_after_import(
    tmp_path: Path, now: float, make_item: Any, make_user: Any, make_event: Any
) -> None:
    """The towers' item vectors, dense layers and content path go; no viewer row does."""
    config = load_config(
        tmp_path / "source",
        training={"min_events": 10, "factors": 4},
        sources={"content_tower": {"min_positives": 50, "epochs": 2}},
    )
    source = Engine(config)
    target = Engine(load_config(tmp_path / "target"))
    try:
        rng = random.Random(5)
        source.put_items(
            [
                make_item(
                    f"i{k:02d}", f"c{k % 6}", tags=[TAGS[k % 4]], caption=f"all about {TAGS[k % 4]}"
                )
                for k in range(40)
            ]
        )
        source.put_users([make_user(f"user-{u:02d}", "us") for u in range(15)])
        source.ingest(
            [
                make_event(f"user-{u:02d}", f"i{rng.randrange(40):02d}", "like", ts=now - k)
                for u in range(15)
                for k in range(8)
            ]
        )
        [report] = source.train(["us"])
        assert report.content_tower is not None and "examples" in report.content_tower
        signer = Signer.generate()
        out = tmp_path / "algo.zip"
        package.export_package(source.config, source.gate, out, signer, "us")
        with zipfile.ZipFile(out) as archive:
            weights = load_tensors(archive.read("weights.safetensors"))
            tower_ids = json.loads(archive.read("tower_item_ids.json"))
        assert {"tower.item_vectors", "tower.history_weight", "tower.mlp_in_weight"} <= set(weights)
        assert not [name for name in weights if "user" in name]
        assert weights["tower.item_vectors"].shape[0] == len(tower_ids)
        assert set(tower_ids) <= {f"i{k:02d}" for k in range(40)}
        ids, rows = package.local_personal_data(source.gate, ["us"])
        assert package.verify_package(out, signer.verifier, ids, rows).ok
        # A user id planted among the tower's item ids is caught by the string scan.
        planted = tmp_path / "planted.zip"
        planted.write_bytes(out.read_bytes())
        _rewrite(
            planted, {"tower_item_ids.json": json.dumps([*tower_ids, "user-03"]).encode()}, signer
        )
        assert not package.verify_package(planted, signer.verifier, ids, rows).ok

        report_t = package.verify_package(out, signer.verifier)
        package.import_package(target.gate, "eu", out, report_t)
        target.reload_model("eu")
        model = target.slots["eu"].current
        assert model is not None and model.tower is not None
        assert model.tower.size == len(tower_ids)
        vector = model.tower.user_vector(["i00", "i04", "i08"])
        assert vector is not None and model.tower.nearest(vector, 5)
    finally:
        source.close()
        target.close()
