"""`thermoscreen export`: a training run -> a checked model directory (model.onnx, labels.txt,
model.json), the contract the pipeline loads on a Jetson or with ONNX Runtime.

Steps, each failing the export with one line: ONNX opset 13 through the TorchScript exporter
(fixed [1, 3, 224, 224] input `input_0`, softmax inside the graph, output `output_0`), then
`onnx.checker`, then ONNX Runtime against PyTorch on real thermograms of the run's data (max abs
difference of probabilities below 1e-4), then the test-split evaluation through the pipeline's own
ONNX Runtime classifier, and finally `pipeline.manifest.load_model_dir` as a self-check. Everything
is built in a temporary folder and moved into place only when all checks pass, so a failed export
never leaves a model.json behind.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pipeline import DISCLAIMER
from pipeline.data.dmr import DataError
from pipeline.manifest import (
    INPUT_NAME,
    INPUT_SHAPE,
    LABELS_NAME,
    MANIFEST_NAME,
    ONNX_NAME,
    OPSET,
    OUTPUT_NAME,
    ModelError,
    ModelManifest,
    TensorSpec,
    load_model_dir,
    sha256_file,
    write_labels,
    write_manifest,
)
from pipeline.preprocess import PreprocessConfig, model_input, render
from training import calibration, datasets, evaluate, runs
from training import metrics as metrics_lib
from training.models import ModelBuildError, WithSoftmax
from training.train_config import TrainError

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
PARITY_IMAGES = 8


class ExportError(ValueError):
    """An export that failed a check; the message is one line."""


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """Opset 13, fixed shape, probabilities out. The dynamo exporter cannot target opset 13."""
    wrapped = WithSoftmax(model).eval()
    dummy = torch.zeros(INPUT_SHAPE, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # legacy exporter notice
        torch.onnx.export(
            wrapped,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def check_onnx(path: Path, n_classes: int) -> None:
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"{path}: onnx.checker rejects the graph ({first})") from exc
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        raise ExportError(f"{path}: opset {opsets} but the contract needs {OPSET}")

    def dims(value: Any) -> list[int | str]:
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value.type.tensor_type.shape.dim
        ]

    inputs = [(i.name, dims(i)) for i in proto.graph.input]
    outputs = [(o.name, dims(o)) for o in proto.graph.output]
    if inputs != [(INPUT_NAME, list(INPUT_SHAPE))] or outputs != [(OUTPUT_NAME, [1, n_classes])]:
        raise ExportError(
            f"{path}: graph has inputs {inputs} and outputs {outputs}; expected "
            f"{INPUT_NAME} {list(INPUT_SHAPE)} and {OUTPUT_NAME} [1, {n_classes}]"
        )


def parity(model: torch.nn.Module, path: Path, tensors: list[np.ndarray]) -> float:
    """Max abs difference between ONNX Runtime's and PyTorch's probabilities on `tensors`."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    wrapped = WithSoftmax(model).eval()
    worst = 0.0
    with torch.no_grad():
        for x in tensors:
            ours = wrapped(torch.from_numpy(x)).numpy()
            theirs = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            worst = max(worst, float(np.max(np.abs(ours - theirs))))
    return worst


def parity_items(run: dict[str, Any], split: dict[str, list[str]], data: Path) -> list[Any]:
    """Real thermograms of the run: test patients first, then the others."""
    items = datasets.scan(data)
    ordered = split["test"] + split["val"] + split["train"]
    order = {evaluate.patient_key(p): i for i, p in enumerate(ordered)}
    known = [it for it in items if evaluate.patient_key(it.patient_id) in order]
    known.sort(key=lambda it: order[evaluate.patient_key(it.patient_id)])
    if not known:
        raise ExportError(
            f"{data}: none of the run's patients are there; the run's data folder moved? "
            "(run.json data.source)"
        )
    return known


def manifest_data(run: dict[str, Any], split: dict[str, list[str]]) -> dict[str, Any]:
    """model.json's `data`: the run's data record with every path relative to the data folder
    (its name in `source`, files as they lie in it), the split, and the patients the model was
    trained or tuned on (`trained_patients`: train and validation; `evaluate` refuses them)."""
    data = {k: v for k, v in run["data"].items() if k != "source"}
    data["source"] = run["data"].get("folder") or Path(str(run["data"].get("source", ""))).name
    data["paths"] = "relative to the data folder named in source"
    data["split_patients"] = split
    data["trained_patients"] = list(split.get("train", [])) + list(split.get("val", []))
    return data


def build_manifest(
    run: dict[str, Any],
    split: dict[str, list[str]],
    onnx_path: Path,
    name: str,
    version: str,
    synthetic: bool,
    checkpoint: str,
    metrics: dict[str, Any],
    threshold: float | None = None,
) -> ModelManifest:
    labels = tuple(run["labels"])
    data = manifest_data(run, split)
    data["checkpoint"] = checkpoint
    data["best_epoch"] = run.get("best_epoch")
    return ModelManifest(
        name=name,
        version=version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sha256=sha256_file(onnx_path),
        architecture=run["arch"],
        weights=run["weights"],
        input=TensorSpec(name=INPUT_NAME, shape=INPUT_SHAPE),
        output=TensorSpec(name=OUTPUT_NAME, shape=(1, len(labels))),
        preprocessing=PreprocessConfig.model_validate(run["preprocessing"]),
        labels=labels,
        positive_label=run.get("positive_label", labels[-1]),
        threshold=threshold,
        data=data,
        metrics=metrics,
        synthetic=synthetic,
    )


@dataclass(frozen=True)
class ExportRequest:
    """What `thermoscreen export` was asked for."""

    name: str
    version: str = "0.1.0"
    synthetic: bool = False
    checkpoint: str = "best"
    bootstrap: int = 1000
    target_sensitivity: float | None = None  # choose the threshold on validation patients


def export_run(
    run_dir: Path,
    out: Path,
    name: str,
    version: str = "0.1.0",
    synthetic: bool = False,
    checkpoint: str = "best",
    bootstrap: int = 1000,
    target_sensitivity: float | None = None,
) -> dict[str, Any]:
    """Export, check, choose the threshold (with `target_sensitivity`, on the run's validation
    patients) and evaluate the test split; returns a summary (parity, sha256, test metrics)."""
    req = ExportRequest(name, version, synthetic, checkpoint, bootstrap, target_sensitivity)
    run = runs.read_run(run_dir)
    split = runs.read_split(run_dir)
    model = runs.load_run_model(run_dir, checkpoint)
    n_out = _head_classes(model)
    if n_out != len(run["labels"]):
        raise ExportError(
            f"{run_dir / runs.RUN_JSON}: {len(run['labels'])} labels {list(run['labels'])} but "
            f"the checkpoint outputs {n_out} classes; re-train or fix run.json"
        )
    if target_sensitivity is not None and not split["val"]:
        raise ExportError(
            f"{run_dir}: --target-sensitivity chooses the threshold on validation patients and "
            "this run has none; train with --val-fraction (e.g. 0.2)"
        )
    cfg = PreprocessConfig.model_validate(run["preprocessing"])
    items = parity_items(run, split, Path(run["data"]["source"]))
    tensors = [model_input(render(it.load(), cfg)) for it in items[:PARITY_IMAGES]]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        onnx_path, diff = _write_checked(model, tmp, tuple(run["labels"]), tensors)
        metrics: dict[str, Any] = {"parity_max_abs_diff": diff, "parity_images": len(tensors)}
        manifest = _scored_manifest(run, split, onnx_path, req, items, metrics)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_model_dir(out)
    return {"out": str(out), "sha256": manifest.sha256, "parity": diff, "metrics": metrics}


def _part(items: list[Any], patients: list[str]) -> list[Any]:
    keys = {evaluate.patient_key(p) for p in patients}
    return [it for it in items if evaluate.patient_key(it.patient_id) in keys]


def _scored_manifest(
    run: dict[str, Any],
    split: dict[str, list[str]],
    onnx_path: Path,
    req: ExportRequest,
    items: list[Any],
    metrics: dict[str, Any],
) -> ModelManifest:
    """Provisional manifests let the pipeline's own classifier score the validation patients
    (threshold for --target-sensitivity) and then the test patients; the final one is written
    beside the ONNX file and returned."""
    folder = onnx_path.parent

    def manifest(threshold: float | None) -> ModelManifest:
        return build_manifest(
            run, split, onnx_path, req.name, req.version, req.synthetic, req.checkpoint,
            metrics, threshold,
        )  # fmt: skip

    write_manifest(folder, manifest(None))
    threshold = None
    if req.target_sensitivity is not None:
        chosen = choose_on_validation(folder, _part(items, split["val"]), req.target_sensitivity)
        threshold = chosen.value
        metrics["threshold"] = {**chosen.as_dict(), "basis": "validation patients (per patient)"}
        write_manifest(folder, manifest(threshold))
    test_items = _part(items, split["test"])
    if test_items:
        scored = evaluate.score_with_model_dir(folder, test_items)
        report = evaluate.full_report(scored, req.bootstrap, seed=0)
        metrics.update(split="test", backend="onnxruntime", **_compact(report))
    else:
        metrics["split"] = "none (the run has no test patients)"
    final = manifest(threshold)
    write_manifest(folder, final)
    return final


def choose_on_validation(
    folder: Path, val_items: list[Any], target: float
) -> calibration.Threshold:
    """The highest p(positive) threshold whose sensitivity on the validation patients (mean
    score of each patient's images, as the exam verdict averages frames) reaches `target`."""
    scored = evaluate.score_with_model_dir(folder, val_items)
    _, groups = metrics_lib.group_indices(scored.patient_ids)
    pos = scored.positive
    p = metrics_lib.mean_by_group(scored.probs, groups)[:, pos]
    y = np.asarray([int(scored.targets[g[0]] == pos) for g in groups], dtype=np.int64)
    if y.sum() == 0:
        raise ExportError("--target-sensitivity: the validation patients include no positive one")
    return calibration.choose_threshold(y, p, target)


def _write_checked(
    model: torch.nn.Module, folder: Path, labels: tuple[str, ...], tensors: list[np.ndarray]
) -> tuple[Path, float]:
    """model.onnx (checked) and labels.txt into `folder`; ExportError unless ONNX Runtime agrees
    with PyTorch on `tensors`. Returns the ONNX path and the largest difference."""
    onnx_path = folder / ONNX_NAME
    export_onnx(model, onnx_path)
    check_onnx(onnx_path, len(labels))
    diff = parity(model, onnx_path, tensors)
    if not diff < PARITY_ATOL:
        raise ExportError(
            f"{onnx_path}: ONNX Runtime and PyTorch disagree by {diff:.2e} on real inputs "
            f"(limit {PARITY_ATOL:g}); the export is wrong, do not ship it"
        )
    log.info("parity: max abs difference %.2e on %d real thermograms", diff, len(tensors))
    write_labels(folder / LABELS_NAME, labels)
    return onnx_path, diff


def _install(tmp: Path, out: Path) -> None:
    """Check the finished folder with the pipeline's loader, then move it over `out`."""
    load_model_dir(tmp)  # the pipeline's own check, before anything is moved into place
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for stale in out.glob(f"{ONNX_NAME}*.engine"):  # TensorRT caches of the previous model
        log.info("removing %s (built from the model being replaced)", stale)
        stale.unlink()
    for fname in (ONNX_NAME, LABELS_NAME, MANIFEST_NAME):  # manifest last
        shutil.move(str(tmp / fname), str(out / fname))


def export_module(
    model: torch.nn.Module,
    out: Path,
    run: dict[str, Any],
    split: dict[str, list[str]],
    tensors: list[np.ndarray],
    name: str,
    version: str = "0.1.0",
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A logits module built in memory (no run folder) -> a checked model folder: the same ONNX
    export, checker and ONNX Runtime parity on `tensors` (real thermograms) as `export_run`,
    without scoring any split (the caller decides what is scored, and when)."""
    labels = tuple(run["labels"])
    model = model.eval()
    n_out = _head_classes(model)
    if n_out != len(labels):
        raise ExportError(f"{name}: {len(labels)} labels but the module outputs {n_out} classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        onnx_path, diff = _write_checked(model, tmp, labels, tensors)
        all_metrics = {"parity_max_abs_diff": diff, "parity_images": len(tensors)}
        all_metrics.update(metrics or {})
        manifest = build_manifest(
            run, split, onnx_path, name, version, False, "in-memory", all_metrics
        )
        write_manifest(tmp, manifest)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_model_dir(out)
    return {"out": str(out), "sha256": manifest.sha256, "parity": diff}


def _head_classes(model: torch.nn.Module) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(INPUT_SHAPE)).shape[1])


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest keeps point estimates, intervals and confusion matrices, not the raw report."""
    out: dict[str, Any] = {"bootstrap": report["bootstrap"]}
    for part in ("all", "id_below_300"):
        if part in report:
            out[part] = report[part]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", type=Path, required=True, help="run folder from `thermoscreen train`"
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--name", required=True, help="model name stored in model.json")
    parser.add_argument("--version", default="0.1.0", help="model version stored in model.json")
    parser.add_argument(
        "--synthetic", action="store_true", help="mark a demo model trained on synthetic data"
    )
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for test intervals")
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        metavar="S",
        help="store in model.json the highest p(sick) threshold whose per-patient sensitivity on "
        "the run's validation patients is at least S (e.g. 0.9); default: none (argmax)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        if args.target_sensitivity is not None and not 0.0 < args.target_sensitivity <= 1.0:
            raise ExportError(
                f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}"
            )
        result = export_run(
            args.run,
            args.out,
            args.name,
            args.version,
            args.synthetic,
            args.checkpoint,
            args.bootstrap,
            args.target_sensitivity,
        )
    except (
        DataError,
        ModelError,
        ModelBuildError,
        TrainError,
        evaluate.EvaluationError,
        ExportError,
    ) as exc:
        print(f"thermoscreen export: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch.onnx / load_state_dict failures
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"thermoscreen export: {args.run}: {first}", file=sys.stderr)
        return 2
    m = result["metrics"].get("all")
    thr = result["metrics"].get("threshold")
    if thr:
        sens, spec = thr["sensitivity_on_validation"], thr["specificity_on_validation"]
        print(
            f"threshold p(sick) >= {thr['value']}: on validation patients sensitivity "
            f"{sens:.3f}, specificity {spec:.3f}"
        )
    print(
        f"model: {result['out']} (sha256 {result['sha256'][:12]}…, parity {result['parity']:.1e})"
    )
    if m:
        img, pat = m["per_image"]["auc"], m["per_patient"]["auc"]
        print(
            f"test AUC per image {img['value']} {img['ci95']}, "
            f"per patient {pat['value']} {pat['ci95']}"
        )
    print(DISCLAIMER)
    return 0
