"""`thermoscreen quantize`: INT8 static quantization of an exported model, beside the FP32 one.

Why static INT8: on a small CPU the FP32 ResNet18 is the pipeline's bottleneck; ONNX Runtime's
QDQ INT8 kernels run it faster. Calibration uses real thermograms rendered exactly as serving
renders them (`pipeline.preprocess`), so the activation ranges are the ones the model sees in use.
The result is a full model directory (model.onnx, labels.txt, model.json with its own sha256 and a
`quantization` record) that `pipeline.manifest.load_model_dir` and the ONNX Runtime backend load
like any other. The Jetson backend keeps the FP32 model and builds its FP16 TensorRT engine from
it.

Every run checks the INT8 model against FP32 on held-out frames (not used for calibration): top-1
agreement and the largest probability difference, and fails below `--min-agreement`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from pipeline import DISCLAIMER
from pipeline.data.dmr import DataError, list_thermograms, load_frame
from pipeline.manifest import (
    LABELS_NAME,
    ONNX_NAME,
    ModelDir,
    ModelError,
    load_model_dir,
    sha256_file,
    write_manifest,
)
from pipeline.preprocess import model_input, render
from training import datasets, metrics

log = logging.getLogger(__name__)
# onnxruntime.quantization logs every bias copy at INFO on the root logger: the CLI keeps the
# root at WARNING for this command (`pipeline.cli.setup_logging`).
LOG_LEVEL = "WARNING"

F32 = npt.NDArray[np.float32]


class QuantizeError(ValueError):
    """A quantization that cannot be done or fails its check; the message is one line."""


@dataclass(frozen=True)
class Agreement:
    """INT8 vs FP32 on held-out frames."""

    frames: int
    top1_agreement: float
    max_prob_diff: float
    mean_prob_diff: float


def serving_tensors(model: ModelDir, files: list[Path]) -> list[F32]:
    """Each file rendered and turned into model input exactly as the pipeline does it."""
    m = model.manifest
    size = (int(m.input.shape[2]), int(m.input.shape[3]))
    out: list[F32] = []
    for i, path in enumerate(files):
        gray = render(load_frame(path, index=i), m.preprocessing)
        out.append(model_input(gray, size, m.mean, m.std))
    return out


def calibration_files(model: ModelDir, folder: Path, split: str | None) -> list[Path]:
    """Frames to calibrate on: the model's own training patients when its manifest records the
    split (so the evaluation patients stay unseen), else every thermogram in `folder`."""
    split_ids = model.manifest.data.get("split_patients")
    if split == "all" or (split is None and not split_ids):
        return list_thermograms(folder)
    from training.evaluate import _items_for_split  # loads torch: only for a split's patients

    items = _items_for_split(datasets.scan(folder), split_ids, split or "train")
    return sorted({it.path for it in items})


def split_files(files: list[Path], n_calib: int, n_check: int) -> tuple[list[Path], list[Path]]:
    """Calibration and check frames, disjoint, each spread evenly over the folder's order."""
    if len(files) < 2:
        raise QuantizeError(
            f"need at least 2 thermograms (calibration + check), found {len(files)}; "
            "pass a folder of training frames with --calib"
        )
    n_calib = max(1, min(n_calib, len(files) - 1))
    pick = np.unique(np.linspace(0, len(files) - 1, n_calib).round().astype(int))
    calib = [files[i] for i in pick]
    rest = [f for i, f in enumerate(files) if i not in set(pick.tolist())]
    step = max(1, len(rest) // max(1, n_check))
    check = rest[::step][:n_check]
    return calib, check


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds ready tensors to ONNX Runtime's calibrator, one frame per batch."""

    def __init__(self, input_name: str, tensors: list[F32]) -> None:
        self._feeds = iter([{input_name: t} for t in tensors])

    def get_next(self) -> dict[str, F32] | None:
        return next(self._feeds, None)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def agreement(fp32: Path, int8: Path, input_name: str, tensors: list[F32]) -> Agreement:
    """Top-1 agreement and probability differences between two ONNX files on the same tensors."""
    a, b = _session(fp32), _session(int8)
    same, diffs = 0, []
    for t in tensors:
        pa = np.asarray(a.run(None, {input_name: t})[0]).reshape(-1)
        pb = np.asarray(b.run(None, {input_name: t})[0]).reshape(-1)
        same += int(np.argmax(pa) == np.argmax(pb))
        diffs.append(float(np.max(np.abs(pa - pb))))
    return Agreement(
        frames=len(tensors),
        top1_agreement=same / len(tensors),
        max_prob_diff=max(diffs),
        mean_prob_diff=float(np.mean(diffs)),
    )


def auc_change(fp32_dir: Path, int8_dir: Path, data: Path, split: str | None) -> dict[str, Any]:
    """ROC AUC of both models on the evaluation set, per image and per patient, scored through
    serving's path (render -> model_input -> ONNX Runtime), and how much INT8 moved it."""
    from training.evaluate import _items_for_split, positive_index, score_with_model_dir  # torch

    fp32 = load_model_dir(fp32_dir)
    split_ids = fp32.manifest.data.get("split_patients")
    split = split or ("test" if split_ids else "all")
    items = _items_for_split(datasets.scan(data), split_ids, split)
    out: dict[str, Any] = {"data": str(data), "split": split, "images": len(items)}
    for name, root in (("fp32", fp32_dir), ("int8", int8_dir)):
        scored = score_with_model_dir(root, items)
        pos = positive_index(scored.labels)
        y = (scored.targets == pos).astype(np.int64)
        _, groups = metrics.group_indices(scored.patient_ids)
        patient_p = metrics.mean_by_group(scored.probs, groups)[:, pos]
        patient_y = np.asarray([y[g[0]] for g in groups], dtype=np.int64)
        out[name] = {
            "auc_per_image": metrics.roc_auc(y, scored.probs[:, pos]),
            "auc_per_patient": metrics.roc_auc(patient_y, patient_p),
        }
        out["patients"] = len(groups)
    for unit in ("auc_per_image", "auc_per_patient"):
        out[f"delta_{unit}"] = out["int8"][unit] - out["fp32"][unit]
    return out


def quantize_onnx(
    source: Path, target: Path, input_name: str, calib: list[F32], per_channel: bool = True
) -> None:
    """ONNX Runtime static INT8 (QDQ, MinMax) of `source` into `target`, calibrated on `calib`
    (serving's tensors); the final softmax stays float."""
    with tempfile.TemporaryDirectory(prefix="thermoscreen-quant-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(source), str(prepped), skip_symbolic_shape=False)
        # Probabilities stay float: a uint8 softmax would round them to steps of 1/255.
        ops = {n.op_type for n in onnx.load(str(prepped)).graph.node} - {"Softmax"}
        quantize_static(
            str(prepped),
            str(target),
            calibration_data_reader=_Reader(input_name, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=sorted(ops),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


def _record(
    src: ModelDir, calib_dir: Path, calib_split: str | None, frames: int, check: Agreement,
    per_channel: bool,
) -> dict[str, Any]:  # fmt: skip
    """The manifest's `quantization` record."""
    m = src.manifest
    return {
        "method": "onnxruntime static, QDQ",
        "weights": "int8 symmetric, per-channel" if per_channel else "int8 symmetric, per-tensor",
        "activations": "uint8 asymmetric, MinMax calibration; the final softmax stays float",
        "onnxruntime": ort.__version__,
        "from_sha256": m.sha256,
        "from_version": m.version,
        "calibration": {
            "folder": calib_dir.resolve().name,
            "split": calib_split or ("train" if m.data.get("split_patients") else "all"),
            "frames": frames,
            "preprocessing": "pipeline.preprocess (render + model_input), as serving",
        },
        "check": asdict(check),
        "backend": "onnxruntime CPU; the jetson backend builds FP16 TensorRT from the FP32 model",
    }


def quantize_model_dir(
    model_dir: Path,
    calib_dir: Path,
    out_dir: Path,
    max_images: int = 64,
    check_images: int = 32,
    per_channel: bool = True,
    min_agreement: float = 0.9,
    calib_split: str | None = None,
) -> tuple[ModelDir, Agreement]:
    """Quantize `model_dir` into `out_dir` (a new model directory) and check it against FP32."""
    src = load_model_dir(model_dir)
    files = calibration_files(src, calib_dir, calib_split)
    calib_files, check_files = split_files(files, max_images, check_images)
    log.info("calibrating on %d frames, checking on %d", len(calib_files), len(check_files))
    input_name = src.manifest.input.name
    calib = serving_tensors(src, calib_files)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ONNX_NAME
    quantize_onnx(src.onnx_path, target, input_name, calib, per_channel)
    check = agreement(src.onnx_path, target, input_name, serving_tensors(src, check_files))
    if check.top1_agreement < min_agreement:
        raise QuantizeError(
            f"{target}: INT8 top-1 agrees with FP32 on {check.top1_agreement:.1%} of "
            f"{check.frames} held-out frames, below --min-agreement {min_agreement:.0%}; "
            "calibrate on more or more typical frames (--max-images)"
        )
    shutil.copyfile(src.labels_path, out_dir / LABELS_NAME)
    record = _record(src, calib_dir, calib_split, len(calib_files), check, per_channel)
    m = src.manifest
    manifest = m.model_copy(
        update={
            "name": f"{m.name}-int8",
            "version": f"{m.version}+int8",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "sha256": sha256_file(target),
            "quantization": record,
        }
    )
    write_manifest(out_dir, manifest)
    return load_model_dir(out_dir), check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="FP32 model directory")
    parser.add_argument(
        "--calib",
        type=Path,
        required=True,
        help="folder of training thermograms (DMR matrices or images) for calibration",
    )
    parser.add_argument("--out", type=Path, required=True, help="INT8 model directory to write")
    parser.add_argument(
        "--max-images", type=int, default=64, help="calibration frames (default 64)"
    )
    parser.add_argument(
        "--check-images",
        type=int,
        default=32,
        help="held-out frames for the INT8 vs FP32 check (default 32)",
    )
    parser.add_argument(
        "--calib-split",
        choices=("train", "all"),
        default=None,
        help="calibrate on the model's training patients (default when model.json records its "
        "split) or on every thermogram of --calib",
    )
    parser.add_argument(
        "--eval-data",
        type=Path,
        default=None,
        help="labelled folder to report the AUC change on (recorded in model.json)",
    )
    parser.add_argument(
        "--eval-split",
        default=None,
        help="patients of --eval-data to score: test (default when the model records its split) "
        "or all",
    )
    parser.add_argument(
        "--per-tensor", action="store_true", help="per-tensor weights instead of per-channel"
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.9,
        help="fail when INT8 top-1 agrees with FP32 on fewer held-out frames (default 0.9)",
    )


def main(args: argparse.Namespace) -> int:
    log.setLevel(logging.INFO)  # our own lines, while the root logger stays at LOG_LEVEL
    if args.max_images < 1 or args.check_images < 1:
        print(
            "thermoscreen quantize: --max-images and --check-images must be >= 1", file=sys.stderr
        )
        return 2
    try:
        model, check = quantize_model_dir(
            args.model,
            args.calib,
            args.out,
            max_images=args.max_images,
            check_images=args.check_images,
            per_channel=not args.per_tensor,
            min_agreement=args.min_agreement,
            calib_split=args.calib_split,
        )
        if args.eval_data is not None:
            evaluation = auc_change(args.model, args.out, args.eval_data, args.eval_split)
            record = {**(model.manifest.quantization or {}), "evaluation": evaluation}
            manifest = model.manifest.model_copy(update={"quantization": record})
            write_manifest(args.out, manifest)
    except (ModelError, DataError, QuantizeError, ValueError) as exc:
        print(f"thermoscreen quantize: {exc}", file=sys.stderr)
        return 1
    summary: dict[str, Any] = {"model": str(model.root), "check": asdict(check)}
    if args.eval_data is not None:
        summary["evaluation"] = evaluation
    print(json.dumps(summary, indent=2))
    print(DISCLAIMER)
    return 0
