"""train -> export -> evaluate end to end, with real torch, a real ONNX file and real ONNX Runtime.

Data: a tiny synthetic set written by `thermoscreen synth`, and a few real DMR-IR patients from
../shared (symlinked into tmp with a reduced labels.csv). Runs are 1-2 short epochs: these tests
check the contracts (files, manifest, parity, report arithmetic), not model quality.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.cli import main as cli
from pipeline.manifest import load_model_dir, sha256_file
from pipeline.preprocess import PreprocessConfig, model_input, render
from training import datasets, export, runs, train

FAST = ["--batch-size", "4", "--min-epoch-samples", "0"]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert (
        cli(["synth", "--out", str(out), "--patients", "12", "--kind", "matrices", "--seed", "5"])
        == 0
    )
    return out


@pytest.fixture(scope="module")
def synth_model(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet18 from scratch, 1 epoch, with a validation part, exported as a synthetic model."""
    root = tmp_path_factory.mktemp("synth-run")
    run, model = root / "run", root / "model"
    rc = cli(
        ["train", "--data", str(synth_data), "--out", str(run), "--arch", "resnet18",
         "--weights", "none", "--epochs", "1", "--seed", "2", "--val-fraction", "0.2", *FAST]
    )  # fmt: skip
    assert rc == 0
    rc = cli(
        ["export", "--run", str(run), "--out", str(model), "--name", "tiny-synthetic",
         "--version", "0.0.1", "--synthetic", "--bootstrap", "100"]
    )  # fmt: skip
    assert rc == 0
    return {"run": run, "model": model, "root": root}


def _check_section(section: dict[str, Any]) -> None:
    """Metrics lie in [0, 1] and agree with the confusion matrix they come with."""
    cm = np.asarray(section["confusion_matrix"])
    assert cm.sum() == section["n"]
    assert cm[1].sum() == section["n_positive"]
    for name in ("accuracy", "sensitivity", "specificity", "auc"):
        m = section[name]
        if m["value"] is not None:
            assert 0.0 <= m["value"] <= 1.0
            lo, hi = m["ci95"]
            assert 0.0 <= lo <= hi <= 1.0
    assert section["accuracy"]["value"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
    if cm[1].sum():
        assert section["sensitivity"]["value"] == pytest.approx(cm[1, 1] / cm[1].sum(), abs=1e-6)
    else:
        assert section["sensitivity"]["value"] is None
    if cm[0].sum():
        assert section["specificity"]["value"] == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-6)


@pytest.mark.slow
def test_synthetic_run_files_split_and_run_json(synth_model: dict[str, Path]) -> None:
    run = synth_model["run"]
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    split = json.loads((run / "split.json").read_text())
    parts = {k: set(v) for k, v in split["patients"].items()}
    assert parts["train"] and parts["val"] and parts["test"]
    assert not (
        parts["train"] & parts["test"]
        or parts["train"] & parts["val"]
        or parts["val"] & parts["test"]
    )
    assert split["seed"] == 2 and "patient" in split["method"]
    info = json.loads((run / "run.json").read_text())
    assert info["arch"] == "resnet18" and info["weights"] == "none" and info["seed"] == 2
    assert info["labels"] == ["healthy", "sick"]
    assert "class-weighted" in info["imbalance"]["method"]
    assert info["data"]["summary"]["train"]["patients"] == len(parts["train"])
    assert info["history"][0]["epoch"] == 1 and "val_auc" in info["history"][0]
    assert PreprocessConfig.model_validate(info["preprocessing"]) == PreprocessConfig()


@pytest.mark.slow
def test_synthetic_export_manifest_and_onnxruntime_parity(
    synth_model: dict[str, Path], synth_data: Path
) -> None:
    model_dir = load_model_dir(synth_model["model"])
    m = model_dir.manifest
    assert m.name == "tiny-synthetic" and m.version == "0.0.1" and m.synthetic
    assert m.architecture == "resnet18" and m.weights == "none" and m.opset == 13
    assert m.input.name == "input_0" and m.input.shape == (1, 3, 224, 224)
    assert m.output.name == "output_0" and m.output.shape == (1, 2)
    assert m.labels == ("healthy", "sick") and m.positive_label == "sick"
    assert m.sha256 == sha256_file(model_dir.onnx_path)
    assert (synth_model["model"] / "labels.txt").read_text() == "healthy\nsick\n"
    split = json.loads((synth_model["run"] / "split.json").read_text())
    assert m.data["split_patients"]["test"] == split["patients"]["test"]
    assert m.data["summary"]["test"]["patients"] == len(split["patients"]["test"])
    assert m.metrics["parity_max_abs_diff"] < 1e-4 and m.metrics["backend"] == "onnxruntime"
    _check_section(m.metrics["all"]["per_patient"])

    # independent parity check: our own ORT session against the PyTorch checkpoint
    session = ort.InferenceSession(str(model_dir.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_0"]
    assert [o.name for o in session.get_outputs()] == ["output_0"]
    net = runs.load_run_model(synth_model["run"], "best")
    item = datasets.scan(synth_data)[0]
    x = model_input(render(item.load(), m.preprocessing))
    onnx_p = session.run(None, {"input_0": x})[0]
    with torch.no_grad():
        torch_p = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert onnx_p.shape == (1, 2) and abs(float(onnx_p.sum()) - 1.0) < 1e-5
    assert np.max(np.abs(onnx_p - torch_p)) < 1e-4


@pytest.mark.slow
def test_evaluate_model_dir_report_is_consistent(
    synth_model: dict[str, Path], synth_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = synth_model["root"] / "eval"
    argv = ["evaluate", "--model", str(synth_model["model"]), "--data", str(synth_data)]
    # the folder holds the patients the model was trained on: refused in one line ...
    capsys.readouterr()
    assert cli([*argv, "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert "trained_patients" in err and "--allow-trained-patients" in err
    # ... and scored, with a warning in the report, when asked to
    rc = cli([*argv, "--out", str(out), "--bootstrap", "100", "--seed", "1",
              "--allow-trained-patients"])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert "overstate" in report["warning"]
    assert report["split"] == "all" and report["source"]["backend"] == "onnxruntime"
    assert report["all"]["n_patients"] == 12 and report["all"]["n_images"] == 12
    assert "id_below_300" not in report  # synthetic ids are all >= 9000
    for level in ("per_image", "per_patient"):
        _check_section(report["all"][level])
    for png in ("confusion.png", "roc.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].endswith("p_sick")
    assert "adjunct to mammography" in capsys.readouterr().out

    # --split test uses the split recorded in model.json and matches export's own numbers
    rc = cli(
        ["evaluate", "--model", str(synth_model["model"]), "--data", str(synth_data),
         "--split", "test", "--out", str(out / "test"), "--bootstrap", "100", "--seed", "0"]
    )  # fmt: skip
    assert rc == 0
    test_report = json.loads((out / "test" / "report.json").read_text())
    manifest_metrics = load_model_dir(synth_model["model"]).manifest.metrics
    assert test_report["all"]["per_image"] == manifest_metrics["all"]["per_image"]


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run_and_mobilenet_exports(
    synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["--data", str(synth_data), "--arch", "mobilenet_v3_small", "--seed", "4", *FAST]
    whole, cut, grown = tmp_path / "whole", tmp_path / "cut", tmp_path / "grown"
    assert cli(["train", *common, "--epochs", "2", "--out", str(whole)]) == 0

    # interrupted (Ctrl-C) in the middle of epoch 2, then resumed with the same flags
    real_epoch = train.train_one_epoch

    def interrupt_second_epoch(*args: Any) -> float:
        if args[4] == 1:
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(train, "train_one_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli(["train", *common, "--epochs", "2", "--out", str(cut)])
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    assert json.loads((cut / "run.json").read_text())["status"] == "training"
    assert cli(["train", *common, "--epochs", "2", "--out", str(cut), "--resume"]) == 0

    # finished after 1 epoch, then extended to 2 (the cosine schedule follows the new total)
    assert cli(["train", *common, "--epochs", "1", "--out", str(grown)]) == 0
    assert cli(["train", *common, "--epochs", "2", "--out", str(grown), "--resume"]) == 0

    a = torch.load(whole / "last.pt", weights_only=True)
    for other in (cut, grown):
        b = torch.load(other / "last.pt", weights_only=True)
        assert a["epoch"] == b["epoch"] == 2
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), key
    assert json.loads((cut / "run.json").read_text())["status"] == "done"

    # exporting over a folder drops the TensorRT engine cached for the previous model
    model = tmp_path / "model"
    model.mkdir()
    stale = model / "model.onnx.1.1.8201.GPU.FP16.engine"
    stale.write_bytes(b"engine of an older model")
    argv = ["export", "--run", str(cut), "--out", str(model), "--name", "mnv3", "--bootstrap", "50"]
    assert cli(argv) == 0
    assert not stale.exists()
    loaded = load_model_dir(model)
    assert loaded.manifest.architecture == "mobilenet_v3_small" and not loaded.manifest.synthetic
    assert loaded.manifest.metrics["parity_max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_real_dmr_patients_train_export_evaluate(shared_dmr: Path, tmp_path: Path) -> None:
    rows = [r.split(",") for r in (shared_dmr / "labels.csv").read_text().split()[1:]]
    healthy = [p for p, d in rows if d == "Healthy"][:3]
    sick_old = [p for p, d in rows if d == "Sick" and int(p) < 300][:2]
    sick_new = [p for p, d in rows if int(p) >= 300][:2]
    data = tmp_path / "dmr"
    data.mkdir()
    chosen = [(p, "Healthy") for p in healthy] + [(p, "Sick") for p in sick_old + sick_new]
    (data / "labels.csv").write_text(
        "patient_id,diagnosis\n" + "".join(f"{p},{d}\n" for p, d in chosen)
    )
    for p, _ in chosen:
        name = f"T{int(p):04d}.txt.gz"
        os.symlink(shared_dmr / name, data / name)
    run, model = tmp_path / "run", tmp_path / "model"
    argv = ["train", "--data", str(data), "--out", str(run), "--arch", "mobilenet_v3_small",
            "--epochs", "1", "--seed", "0", *FAST]  # fmt: skip
    assert cli(argv) == 0
    assert (
        cli(
            [
                "export",
                "--run",
                str(run),
                "--out",
                str(model),
                "--name",
                "dmr-tiny",
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    manifest = load_model_dir(model).manifest
    assert manifest.synthetic is False and manifest.data["summary"]["train"]["images"] >= 2
    out = tmp_path / "eval"
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(model),
                "--data",
                str(data),
                "--out",
                str(out),
                "--bootstrap",
                "50",
                "--allow-trained-patients",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["all"]["n_patients"] == len(chosen)
    older = report["id_below_300"]
    assert older["n_patients"] == len(healthy) + len(sick_old)
    for level in ("per_image", "per_patient"):
        _check_section(report["all"][level])
        _check_section(older[level])
    # --run scores the saved test split in PyTorch
    assert cli(["evaluate", "--run", str(run), "--data", str(data), "--bootstrap", "20"]) == 0
    run_report = json.loads((run / "eval-test" / "report.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert run_report["split"] == "test" and run_report["source"]["backend"] == "pytorch"
    assert run_report["all"]["n_patients"] == len(split["patients"]["test"])


# ---------------------------------------------------------------- bad input: one line, exit 2


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error is the last stderr line; the data summary logged before it may precede it."""
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("thermoscreen "), err
    return last


def test_train_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli(["train", "--data", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert str(missing) in _one_line_error(capsys)


def test_train_unknown_architecture(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli(["train", "--data", str(synth_data), "--out", str(tmp_path / "r"), "--arch", "vgg11"])
        == 2
    )
    err = _one_line_error(capsys)
    assert "vgg11" in err and "resnet18" in err and "densenet121" in err


def test_train_class_without_images(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "healthy-only"
    data.mkdir()
    lines = (synth_data / "labels.csv").read_text().splitlines()
    kept = [ln for ln in lines[1:] if ln.endswith("Healthy")]
    (data / "labels.csv").write_text("\n".join([lines[0], *kept]) + "\n")
    for ln in kept:
        name = f"T{ln.split(',')[0]}.txt.gz"
        os.symlink(synth_data / name, data / name)
    assert cli(["train", "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    assert "class 'sick' has no images" in _one_line_error(capsys)


def test_train_weights_file_that_does_not_fit(
    synth_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    argv = ["train", "--data", str(synth_data), "--out", str(tmp_path / "r"), "--weights", str(bad)]
    assert cli(argv) == 2
    err = _one_line_error(capsys)
    assert str(bad) in err and "does not fit resnet18" in err


@pytest.mark.slow
def test_export_refuses_labels_that_disagree_with_the_outputs(
    synth_model: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(synth_model["run"], run)
    info = json.loads((run / "run.json").read_text())
    info["labels"] = ["healthy", "sick", "unsure"]
    (run / "run.json").write_text(json.dumps(info))
    out = tmp_path / "model"
    assert cli(["export", "--run", str(run), "--out", str(out), "--name", "x"]) == 2
    err = _one_line_error(capsys)
    assert "run.json" in err and "unsure" in err
    assert not (out / "model.json").exists()


@pytest.mark.slow
def test_failed_parity_leaves_no_model_json(
    synth_model: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(export, "PARITY_ATOL", 0.0)  # no real export can meet a zero tolerance
    out = tmp_path / "model"
    assert cli(["export", "--run", str(synth_model["run"]), "--out", str(out), "--name", "x"]) == 2
    assert "disagree" in _one_line_error(capsys)
    assert not (out / "model.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model-")]  # temp dir removed


@pytest.mark.slow
def test_evaluate_refuses_data_labels_the_model_lacks(
    synth_model: dict[str, Path], synth_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = tmp_path / "classes"
    for label in ("healthy", "benign"):
        (data / label).mkdir(parents=True)
    items = datasets.scan(synth_data)
    os.symlink(items[0].path, data / "healthy" / "T9101.txt.gz")
    os.symlink(items[1].path, data / "benign" / "T9102.txt.gz")
    argv = ["evaluate", "--model", str(synth_model["model"]), "--data", str(data)]
    assert cli(argv) == 2
    err = _one_line_error(capsys)
    assert "'benign'" in err and "healthy" in err


@pytest.mark.slow
def test_export_chooses_the_threshold_on_validation_patients_and_records_relative_sources(
    synth_model: dict[str, Path], synth_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model-thr"
    rc = cli(
        ["export", "--run", str(synth_model["run"]), "--out", str(out), "--name", "thr",
         "--synthetic", "--bootstrap", "20", "--target-sensitivity", "0.9"]
    )  # fmt: skip
    assert rc == 0
    manifest = load_model_dir(out).manifest
    chosen = manifest.metrics["threshold"]
    assert manifest.threshold == pytest.approx(chosen["value"], abs=1e-6)  # the record is rounded
    assert chosen["sensitivity_on_validation"] >= 0.9
    split = json.loads((synth_model["run"] / "split.json").read_text())["patients"]
    assert chosen["n_positive"] + chosen["n_negative"] == len(split["val"])
    assert sorted(manifest.data["trained_patients"]) == sorted(split["train"] + split["val"])
    text = (out / "model.json").read_text()
    assert str(synth_data.resolve()) not in text and manifest.data["source"] == synth_data.name
    assert all(not f.startswith("/") for f in manifest.data["files"]["train"])
    # the run without validation patients cannot choose one: one line naming the fix
    assert cli(["export", "--run", str(synth_model["run"]), "--out", str(tmp_path / "x"),
                "--name", "x", "--target-sensitivity", "1.5"]) == 2  # fmt: skip
