"""`thermoscreen evaluate`: per-image and per-patient screening metrics with bootstrap intervals.

An exported model directory (`--model`) is scored through the pipeline's own ONNX Runtime path
(`render` -> `model_input` -> `OnnxRuntimeClassifier`), so the numbers describe what serving does.
A training run (`--run`) is scored in PyTorch from its checkpoint, on the split it saved.
Patient score = mean of its images' probabilities. Bootstrap intervals resample patients.
Metrics are also reported on patients with numeric ID < 300 alone: in DMR-IR every patient from
ID 300 on is sick and looks different, so a model can score well by recognising the era.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline import DISCLAIMER
from pipeline.classify.onnx import OnnxRuntimeClassifier
from pipeline.data.dmr import DataError
from pipeline.manifest import ModelError, load_model_dir
from pipeline.preprocess import PreprocessConfig, render
from training import datasets, metrics, runs, train
from training import evaluate_plots as plots
from training.models import ModelBuildError

log = logging.getLogger(__name__)

POSITIVE_LABEL = "sick"
OLD_ERA_LIMIT = 300
SPLITS = ("test", "val", "train", "all")
F32 = npt.NDArray[np.float32]


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated together; the message is one line."""


@dataclass(frozen=True)
class Scored:
    """Per-image results: probabilities [N, K] in the model's label order."""

    paths: list[str]
    patient_ids: list[str]
    targets: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float64]
    labels: tuple[str, ...]
    positive: int  # index of the class whose probability is the screening score
    threshold: float | None = None  # model.json's operating threshold on p(positive); None: argmax


def positive_index(labels: Sequence[str], positive_label: str = POSITIVE_LABEL) -> int:
    """The class whose probability is the screening score: 'sick', else the last label."""
    return list(labels).index(positive_label) if positive_label in labels else len(labels) - 1


def decide(
    probs: npt.NDArray[np.float64], pos: int, threshold: float | None
) -> npt.NDArray[np.intp]:
    """Predicted class per row, as serving decides: argmax (ties to the lowest index, like
    imageNet), or with a threshold p(positive) >= threshold, else the best other class."""
    preds = np.asarray(np.argmax(probs, axis=1), dtype=np.intp)
    if threshold is None:
        return preds
    others = probs.copy()
    others[:, pos] = -np.inf
    return np.asarray(
        np.where(probs[:, pos] >= threshold, pos, np.argmax(others, axis=1)), dtype=np.intp
    )


def label_targets(item_labels: Sequence[str], model_labels: Sequence[str], where: str) -> list[int]:
    """Data labels as model output indices; a label the model does not know is an error."""
    index = {label: i for i, label in enumerate(model_labels)}
    unknown = sorted(set(item_labels) - set(index))
    if unknown:
        raise EvaluationError(
            f"{where}: data label {unknown[0]!r} is not among the model's labels "
            f"{list(model_labels)}; evaluate on data labelled with the model's classes"
        )
    return [index[label] for label in item_labels]


def patient_key(patient_id: str) -> str:
    """ "0002" and "2" are one patient."""
    return str(int(patient_id)) if patient_id.isdigit() else patient_id


def numeric_id(patient_id: str) -> int | None:
    return int(patient_id) if str(patient_id).isdigit() else None


def is_old_era(patient_id: str) -> bool:
    """DMR-IR acquisitions before 2018: numeric patient ID below 300."""
    number = numeric_id(patient_id)
    return number is not None and number < OLD_ERA_LIMIT


# ---------------------------------------------------------------- metrics for one scored set


def _section(
    targets: npt.NDArray[np.int64],
    probs: npt.NDArray[np.float64],
    groups: list[npt.NDArray[np.intp]],
    n_classes: int,
    pos: int,
    threshold: float | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    preds = decide(probs, pos, threshold)
    y = (targets == pos).astype(np.int64)
    yp = (preds == pos).astype(np.int64)
    score = probs[:, pos]

    def stat(idx: npt.NDArray[np.intp]) -> dict[str, float]:
        return metrics.binary_metrics(y[idx], yp[idx], score[idx])

    intervals = metrics.bootstrap(groups, stat, n_boot, seed)
    out: dict[str, Any] = {name: intervals[name].as_dict() for name in metrics.METRIC_NAMES}
    out["n"] = int(targets.size)
    out["n_positive"] = int(y.sum())
    out["confusion_matrix"] = metrics.confusion_matrix(targets, preds, n_classes).tolist()
    return out


def report_for(scored: Scored, n_boot: int, seed: int) -> dict[str, Any]:
    """Per-image and per-patient sections (point estimates, 95% intervals, confusion matrices)."""
    pos, thr, k = scored.positive, scored.threshold, len(scored.labels)
    patients, groups = metrics.group_indices(scored.patient_ids)
    per_image = _section(scored.targets, scored.probs, groups, k, pos, thr, n_boot, seed)
    patient_probs = metrics.mean_by_group(scored.probs, groups)
    patient_targets = np.asarray([scored.targets[g[0]] for g in groups], dtype=np.int64)
    singletons = [np.asarray([i], dtype=np.intp) for i in range(len(patients))]
    per_patient = _section(patient_targets, patient_probs, singletons, k, pos, thr, n_boot, seed)
    return {
        "n_images": int(scored.targets.size),
        "n_patients": len(patients),
        "per_image": per_image,
        "per_patient": per_patient,
    }


def subset(scored: Scored, keep: Callable[[str], bool]) -> Scored:
    idx = [i for i, p in enumerate(scored.patient_ids) if keep(p)]
    return Scored(
        paths=[scored.paths[i] for i in idx],
        patient_ids=[scored.patient_ids[i] for i in idx],
        targets=scored.targets[idx],
        probs=scored.probs[idx],
        labels=scored.labels,
        positive=scored.positive,
        threshold=scored.threshold,
    )


def full_report(scored: Scored, n_boot: int, seed: int) -> dict[str, Any]:
    """The whole report: all patients, and the pre-2018 acquisitions (ID < 300) when they are a
    proper subset of the data."""
    if scored.targets.size == 0:
        raise EvaluationError("no images to evaluate; check --data and --split")
    out: dict[str, Any] = {
        "labels": list(scored.labels),
        "positive_label": scored.labels[scored.positive],
        "decision": "argmax (ties to the lowest index)"
        if scored.threshold is None
        else f"p({scored.labels[scored.positive]}) >= {scored.threshold} (model.json threshold)",
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95, "unit": "patient"},
        "all": report_for(scored, n_boot, seed),
    }
    old = [is_old_era(p) for p in scored.patient_ids]
    if any(old) and not all(old):
        older = subset(scored, is_old_era)
        out["id_below_300"] = report_for(older, n_boot, seed)
        out["id_below_300"]["note"] = (
            "DMR-IR patients with ID >= 300 (2018-2020) are all sick and look different; "
            "these metrics exclude them"
        )
    return out


# ---------------------------------------------------------------- scoring


def _items_for_split(
    items: list[Any], split_ids: dict[str, list[str]] | None, split: str
) -> list[Any]:
    if split == "all":
        return items
    if split_ids is None:
        raise EvaluationError(
            f"--split {split} needs the run's split.json (or a model whose model.json records "
            "the split); use --split all"
        )
    wanted = {patient_key(str(p)) for p in split_ids.get(split, [])}
    if not wanted:
        raise EvaluationError(f"the saved split has no {split!r} patients; use another --split")
    chosen = [it for it in items if patient_key(str(it.patient_id)) in wanted]
    if not chosen:
        raise EvaluationError(
            f"none of the {len(wanted)} {split!r} patients of the saved split are in --data; "
            "pass the folder the model was trained on, or --split all"
        )
    return chosen


def score_with_model_dir(model_dir: Path, items: list[Any]) -> Scored:
    """Scores through serving's path: render -> model_input -> ONNX Runtime classifier."""
    model = load_model_dir(model_dir)
    targets = label_targets([it.label for it in items], model.labels, str(model_dir))
    classifier = OnnxRuntimeClassifier(model, intra_op_threads=2)
    cfg = model.manifest.preprocessing
    probs = [classifier.probabilities(classifier.tensor(render(it.load(), cfg))) for it in items]
    classifier.close()
    return Scored(
        paths=[str(it.path) for it in items],
        patient_ids=[str(it.patient_id) for it in items],
        targets=np.asarray(targets, dtype=np.int64),
        probs=np.asarray(probs, dtype=np.float64).reshape(len(items), -1),
        labels=model.labels,
        positive=positive_index(model.labels, model.manifest.positive_label),
        threshold=model.manifest.threshold,
    )


def score_with_run(run_dir: Path, items: list[Any], checkpoint: str) -> Scored:
    """Scores a training run's checkpoint in PyTorch (same tensors as serving: EvalPreset)."""
    run = runs.read_run(run_dir)
    labels = tuple(run["labels"])
    targets = label_targets([it.label for it in items], labels, str(run_dir))
    model = runs.load_run_model(run_dir, checkpoint)
    cfg = PreprocessConfig.model_validate(run["preprocessing"])
    images = [render(it.load(), cfg) for it in items]
    probs = train.predict(model, images)
    return Scored(
        paths=[str(it.path) for it in items],
        patient_ids=[str(it.patient_id) for it in items],
        targets=np.asarray(targets, dtype=np.int64),
        probs=probs.astype(np.float64),
        labels=labels,
        positive=positive_index(labels, run.get("positive_label", POSITIVE_LABEL)),
    )


# ---------------------------------------------------------------- outputs


def write_outputs(report: dict[str, Any], scored: Scored, out: Path) -> None:
    """report.json, predictions.csv, confusion.png and roc.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    pos = scored.positive
    preds = decide(scored.probs, pos, scored.threshold)
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "label", "predicted", f"p_{scored.labels[pos]}"])
        for i, path in enumerate(scored.paths):
            w.writerow(
                [
                    path,
                    scored.patient_ids[i],
                    scored.labels[scored.targets[i]],
                    scored.labels[int(preds[i])],
                    f"{scored.probs[i, pos]:.6f}",
                ]
            )
    report["figures"] = plot(report, scored, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def plot(report: dict[str, Any], scored: Scored, out: Path) -> dict[str, str]:
    """confusion.png (with the decision rule), roc.png (with the operating point) and
    reliability.png, all patients."""
    labels, pos = list(scored.labels), scored.positive
    _, groups = metrics.group_indices(scored.patient_ids)
    y_img = (scored.targets == pos).astype(np.int64)
    y_pat = np.asarray([y_img[g[0]] for g in groups], dtype=np.int64)
    p_pat = metrics.mean_by_group(scored.probs, groups)[:, pos]
    curves = {"per image": (y_img, scored.probs[:, pos]), "per patient": (y_pat, p_pat)}
    rule = plots.decision_rule(labels, pos, scored.threshold)
    plots.confusion_figure(report, labels, rule, out / "confusion.png")
    plots.roc_figure(curves, labels[pos], scored.threshold, out / "roc.png")
    plots.reliability_figure(curves, out / "reliability.png")
    return {"confusion": "confusion.png", "roc": "roc.png", "reliability": "reliability.png"}


SECTION_TITLES = {
    "all": "All patients",
    "id_below_300": "Pre-2018 acquisitions only (DMR-IR ID < 300, where no era shortcut exists)",
    "per_image": "per image",
    "per_patient": "per patient (mean score of its images)",
}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Human-readable summary for the terminal, one titled section per part."""

    def fmt(m: dict[str, Any]) -> str:
        v, (lo, hi) = m["value"], m["ci95"]
        if v is None:
            return "   n/a"
        ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "[n/a]"
        return f"{v:.3f} {ci}"

    lines = [f"Decision rule: {report['decision']}"]
    if report.get("warning"):
        lines.append(f"WARNING: {report['warning']}")
    for part in ("all", "id_below_300"):
        if part not in report:
            continue
        sec = report[part]
        title = SECTION_TITLES[part]
        lines.append(f"{title}: {sec['n_patients']} patients, {sec['n_images']} images")
        for level in ("per_image", "per_patient"):
            cells = "  ".join(f"{n} {fmt(sec[level][n])}" for n in metrics.METRIC_NAMES)
            lines.append(f"  {SECTION_TITLES[level]}: {cells}")
    return lines


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", type=Path, help="exported model directory (scored with ONNX Runtime)"
    )
    src.add_argument("--run", type=Path, help="training run directory (scored in PyTorch)")
    parser.add_argument("--data", type=Path, required=True, help="labelled thermogram folder")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="patients to score: default 'all' for --model, 'test' (from split.json) for --run",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="with --run: which checkpoint",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for report.json and plots")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples (patients)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--allow-trained-patients",
        action="store_true",
        help="score patients the model was trained on (model.json data.trained_patients) anyway; "
        "the report then carries a warning, because such scores overstate performance",
    )


def trained_patients(manifest_data: dict[str, Any]) -> set[str]:
    """Patient keys the model was trained or tuned on: `trained_patients`, else the recorded
    split's train and validation parts."""
    ids = manifest_data.get("trained_patients")
    if ids is None:
        split = manifest_data.get("split_patients") or {}
        ids = list(split.get("train", [])) + list(split.get("val", []))
    return {patient_key(str(p)) for p in ids}


def check_unseen(items: list[Any], trained: set[str], data: Path, allow: bool) -> str | None:
    """Refuse (EvaluationError) patients the model was trained on; with `allow`, a warning."""
    seen = sorted(
        {str(it.patient_id) for it in items if patient_key(str(it.patient_id)) in trained}
    )
    if not seen:
        return None
    total = len({patient_key(str(it.patient_id)) for it in items})
    what = f"{len(seen)} of the {total} patients in {data} (e.g. {', '.join(seen[:3])})"
    if not allow:
        raise EvaluationError(
            f"{what} were used to train the model (model.json data.trained_patients); their "
            "scores would overstate performance. Score unseen patients, use --split test, or "
            "pass --allow-trained-patients"
        )
    warning = f"{what} were used to train the model: these metrics overstate its performance"
    log.warning("%s", warning)
    return warning


def evaluate(
    data: Path,
    model: Path | None = None,
    run: Path | None = None,
    split: str | None = None,
    checkpoint: str = "best",
    n_boot: int = 1000,
    seed: int = 0,
    allow_trained: bool = False,
) -> tuple[dict[str, Any], Scored]:
    """Score `data` with a model directory or a run and build the report."""
    if n_boot < 1:
        raise EvaluationError(f"--bootstrap must be >= 1, got {n_boot}")
    items = datasets.scan(data)
    warning = None
    if model is not None:
        split = split or "all"
        m = load_model_dir(model).manifest
        chosen = _items_for_split(items, m.data.get("split_patients"), split)
        warning = check_unseen(chosen, trained_patients(m.data), data, allow_trained)
        scored = score_with_model_dir(model, chosen)
        source: dict[str, Any] = {"model": str(model), "backend": "onnxruntime"}
        source.update(name=m.name, version=m.version, sha256=m.sha256, synthetic=m.synthetic)
    else:
        assert run is not None
        split = split or "test"
        chosen = _items_for_split(items, runs.read_split(run), split)
        scored = score_with_run(run, chosen, checkpoint)
        source = {"run": str(run), "checkpoint": checkpoint, "backend": "pytorch"}
    report = {"disclaimer": DISCLAIMER, "source": source, "data": str(data), "split": split}
    if warning:
        report["warning"] = warning
    report.update(full_report(scored, n_boot, seed))
    return report, scored


def main(args: argparse.Namespace) -> int:
    try:
        report, scored = evaluate(
            args.data, args.model, args.run, args.split, args.checkpoint, args.bootstrap,
            args.seed, args.allow_trained_patients,
        )  # fmt: skip
        out = args.out or (
            args.run / f"eval-{report['split']}" if args.run else Path("results/evaluation")
        )
        write_outputs(report, scored, out)
    except (DataError, ModelError, ModelBuildError, EvaluationError) as exc:
        print(f"thermoscreen evaluate: {exc}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    print(f"report: {out / 'report.json'}")
    print(DISCLAIMER)
    return 0
