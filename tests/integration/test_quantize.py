"""`thermoscreen quantize`: real ONNX Runtime static INT8 quantization of a real (tiny) model,
calibrated on real DMR-IR frames, loaded back through the pipeline's own model checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.classify.factory import load_classifier
from pipeline.cli import main as cli_main
from pipeline.data.dmr import list_thermograms, load_frame
from pipeline.manifest import load_model_dir, sha256_file, write_manifest
from pipeline.preprocess import render
from training.quantize import QuantizeError, calibration_files, quantize_model_dir, split_files


def test_int8_model_dir_is_loadable_checked_and_agrees_with_fp32(
    tmp_path: Path, tiny_model: Path, shared_dmr: Path
) -> None:
    out = tmp_path / "int8"
    model, check = quantize_model_dir(tiny_model, shared_dmr, out, max_images=4, check_images=3)
    fp32 = load_model_dir(tiny_model)
    m = model.manifest
    assert m.sha256 == sha256_file(out / "model.onnx") != fp32.manifest.sha256
    assert m.labels == fp32.manifest.labels and m.preprocessing == fp32.manifest.preprocessing
    assert m.input == fp32.manifest.input and m.output == fp32.manifest.output
    assert m.quantization is not None
    assert m.quantization["from_sha256"] == fp32.manifest.sha256
    assert m.quantization["calibration"]["frames"] == 4
    assert m.quantization["check"]["frames"] == check.frames == 3
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert check.top1_agreement >= 0.9 and 0 <= check.max_prob_diff < 0.2
    # the pipeline's own backend runs it on a real frame and gives probabilities
    frame = load_frame(list_thermograms(shared_dmr)[0])
    gray = render(frame, m.preprocessing)
    clf = load_classifier(out, backend="onnxruntime")
    ref = load_classifier(tiny_model, backend="onnxruntime")
    p8, p32 = clf.classify(gray), ref.classify(gray)
    assert sum(p8.scores) == pytest.approx(1.0, abs=1e-3)
    assert np.max(np.abs(np.subtract(p8.scores, p32.scores))) < 0.2


def test_calibration_and_check_frames_never_overlap() -> None:
    files = [Path(f"T{i}.txt.gz") for i in range(20)]
    calib, check = split_files(files, 8, 5)
    assert len(calib) == 8 and len(check) == 5
    assert not set(calib) & set(check)
    with pytest.raises(QuantizeError, match="at least 2 thermograms"):
        split_files(files[:1], 8, 5)


def test_cli_names_a_missing_calibration_folder(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    rc = cli_main(
        [
            "quantize",
            "--model",
            str(tiny_model),
            "--calib",
            str(missing),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and str(missing) in err[0]
    assert not (tmp_path / "o" / "model.json").exists()


def test_cli_writes_the_check_as_json(
    tmp_path: Path, tiny_model: Path, shared_dmr: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    rc = cli_main(
        ["quantize", "--model", str(tiny_model), "--calib", str(shared_dmr), "--out", str(out),
         "--max-images", "2", "--check-images", "2", "--per-tensor"]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    summary = json.loads(text[: text.rindex("}") + 1])
    assert summary["check"]["frames"] == 2
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["quantization"]["weights"].endswith("per-tensor")


def test_calibration_uses_only_the_models_training_patients(
    tmp_path: Path, tiny_model: Path
) -> None:
    data = tmp_path / "synth"
    rc = cli_main(["synth", "--kind", "matrices", "--patients", "6", "--out", str(data)])
    assert rc == 0
    ids = sorted(p.name.split(".")[0][1:] for p in list_thermograms(data))
    model = load_model_dir(tiny_model)
    split = {"train": ids[:4], "val": [], "test": ids[4:]}
    write_manifest(
        tiny_model, model.manifest.model_copy(update={"data": {"split_patients": split}})
    )
    chosen = calibration_files(load_model_dir(tiny_model), data, None)
    assert sorted(p.name.split(".")[0][1:] for p in chosen) == ids[:4]
    assert len(calibration_files(load_model_dir(tiny_model), data, "all")) == 6
