"""Labelled thermogram datasets on disk -> a flat list of items that know their patient.

Three layouts are understood (see `scan`): the shared DMR-IR subset (`labels.csv` beside files
named `T<patient>...`), the DMR-IR download (a `labels.csv` and folders per patient holding
DMR-named files), and class folders (`healthy/`, `sick/`, any names). Every item carries its
patient id, because every split in this project is by patient.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.dmr import (
    DataError,
    is_image,
    is_matrix,
    load_frame,
    natural_key,
    parse_dmr_name,
)
from pipeline.types import Frame

log = logging.getLogger(__name__)

DIAGNOSES = ("healthy", "sick")  # allowed values of labels.csv's diagnosis (any case)
LABELS_CSV = "labels.csv"
_PREFERENCE = {".txt": 0, ".gz": 0, ".png": 1, ".jpg": 2, ".jpeg": 2}  # one picture, many files


@dataclass(frozen=True)
class ThermoItem:
    """One thermogram file with its patient and label (lowercase, e.g. `healthy`, `sick`)."""

    path: Path
    patient_id: str
    label: str
    view: str | None = None

    def load(self) -> Frame:
        """Read the file as a Frame (celsius for matrices, gray8 or raw16 for images)."""
        return load_frame(self.path, source_id=str(self.path))


def _thermograms_under(root: Path) -> list[Path]:
    """Supported files anywhere under `root` (hidden folders skipped), naturally sorted.

    When one picture exists as both a matrix and an image (DMR-IR ships a .txt and a .jpg per
    capture), only the matrix is kept, so no image is counted twice.
    """
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and (is_matrix(p) or is_image(p))
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    best: dict[tuple[Path, str], Path] = {}
    for p in files:
        name = p.name.lower()
        stem = name[: -len(".txt.gz")] if name.endswith(".txt.gz") else name.rsplit(".", 1)[0]
        key = (p.parent, stem)
        rank = _PREFERENCE[p.suffix.lower()]
        if key not in best or rank < _PREFERENCE[best[key].suffix.lower()]:
            best[key] = p
    return sorted(best.values(), key=lambda p: natural_key(p.relative_to(root)))


def _patient_key(patient: str) -> str:
    """Ids compare without leading zeros when numeric: "0002", "002" and "2" are one patient."""
    return str(int(patient)) if patient.isdigit() else patient


def _view(path: Path) -> str | None:
    name = parse_dmr_name(path.name)
    return str(name.view) if name is not None and name.view is not None else None


def read_labels(csv_path: Path) -> dict[str, tuple[str, str, int]]:
    """labels.csv -> {patient key: (patient_id as written, label, line number)}."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read ({exc}); expected a UTF-8 CSV") from exc
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "patient_id" not in fields or "diagnosis" not in fields:
        raise DataError(
            f"{csv_path}: header is {','.join(fields) or 'missing'}; expected "
            "'patient_id,diagnosis'"
        )
    reader.fieldnames = fields
    rows: dict[str, tuple[str, str, int]] = {}
    for line_no, row in enumerate(reader, start=2):
        patient = (row.get("patient_id") or "").strip()
        diagnosis = (row.get("diagnosis") or "").strip()
        if not patient and not diagnosis:
            continue
        if not patient:
            raise DataError(
                f"{csv_path}: line {line_no}: empty patient_id; fill it or drop the row"
            )
        label = diagnosis.lower()
        if label not in DIAGNOSES:
            raise DataError(
                f"{csv_path}: line {line_no}: diagnosis {diagnosis!r} for patient {patient} is "
                f"unknown; allowed: {', '.join(d.capitalize() for d in DIAGNOSES)} (any case)"
            )
        key = _patient_key(patient)
        if key in rows:
            raise DataError(
                f"{csv_path}: line {line_no}: patient {patient} already listed on line "
                f"{rows[key][2]}; keep one row per patient"
            )
        rows[key] = (patient, label, line_no)
    if not rows:
        raise DataError(f"{csv_path}: no rows; add one 'patient_id,diagnosis' row per patient")
    return rows


def _scan_labelled(root: Path, csv_path: Path) -> list[ThermoItem]:
    rows = read_labels(csv_path)
    items: list[ThermoItem] = []
    unmatched = 0
    seen: set[str] = set()
    for path in _thermograms_under(root):
        name = parse_dmr_name(path.name)
        patient = name.patient_id if name is not None else path.name.split(".")[0]
        key = _patient_key(patient)
        if key not in rows:
            unmatched += 1
            continue
        written, label, _ = rows[key]
        items.append(ThermoItem(path=path, patient_id=written, label=label, view=_view(path)))
        seen.add(key)
    for key, (written, _, line_no) in rows.items():
        if key not in seen:
            example = f"T{int(written):04d}.txt.gz" if written.isdigit() else f"{written}.png"
            raise DataError(
                f"{csv_path}: line {line_no}: no thermogram for patient {written} under {root} "
                f"(expected a file like {example}); add it or remove the row"
            )
    if unmatched:
        log.warning("%s: %d thermogram files belong to no patient in %s", root, unmatched, csv_path)
    return items


def _scan_class_folders(root: Path) -> list[ThermoItem]:
    classes = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: natural_key(d.name),
    )
    if not classes:
        raise DataError(
            f"{root}: no thermograms found; expected {LABELS_CSV} (patient_id,diagnosis) with "
            "T<patient> files, or class folders such as healthy/ and sick/"
        )
    items: list[ThermoItem] = []
    owner: dict[str, str] = {}
    for folder in classes:
        label = folder.name.lower()
        files = _thermograms_under(folder)
        if not files:
            raise DataError(
                f"{folder}: class '{label}' has no thermograms (.txt, .txt.gz, .jpg, .png); "
                "add some or remove the folder"
            )
        for path in files:
            name = parse_dmr_name(path.name)
            patient = name.patient_id if name is not None else path.name.split(".")[0]
            other = owner.setdefault(_patient_key(patient), label)
            if other != label:
                raise DataError(
                    f"{path}: patient {patient} is in both '{other}' and '{label}'; a patient "
                    "has one diagnosis, move or rename the files"
                )
            items.append(ThermoItem(path=path, patient_id=patient, label=label, view=_view(path)))
    return items


def scan(folder: str | Path, labels: str | Path | None = None) -> list[ThermoItem]:
    """Every labelled thermogram under `folder`, naturally sorted.

    With a labels CSV (`labels`, or `folder/labels.csv` when present) every supported file under
    `folder` whose DMR name (`T<patient>...`) or stem matches a row's patient_id is an item; ids
    match with or without leading zeros and keep the CSV's spelling. Without one, each
    sub-folder is a class named after the folder. Raises DataError on anything unusable.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; pass --data pointing at it")
    csv_path = Path(labels) if labels is not None else root / LABELS_CSV
    if labels is not None and not csv_path.is_file():
        raise DataError(f"{csv_path}: labels file not found; pass a patient_id,diagnosis CSV")
    items = _scan_labelled(root, csv_path) if csv_path.is_file() else _scan_class_folders(root)
    if not items:
        raise DataError(f"{root}: no thermograms found (.txt, .txt.gz, .jpg, .jpeg, .png)")
    return items


def summary(items: list[ThermoItem]) -> dict[str, Any]:
    """Patients and images, in total and per class (for logs and the model manifest)."""
    patients: dict[str, set[str]] = defaultdict(set)
    images: dict[str, int] = defaultdict(int)
    for item in items:
        patients[item.label].add(_patient_key(item.patient_id))
        images[item.label] += 1
    return {
        "patients": len({_patient_key(i.patient_id) for i in items}),
        "images": len(items),
        "classes": {
            label: {"patients": len(patients[label]), "images": images[label]}
            for label in sorted(patients)
        },
    }


def limit_images(items: list[ThermoItem], max_images: int, seed: int) -> list[ThermoItem]:
    """Whole patients, alternating classes in seeded order, until `max_images` images."""
    by_label: dict[str, dict[str, list[ThermoItem]]] = {}
    for it in items:
        by_label.setdefault(it.label, {}).setdefault(str(it.patient_id), []).append(it)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_label):
        pids = sorted(by_label[label])
        rng.shuffle(pids)
        queues.append([by_label[label][p] for p in pids])
    chosen: list[ThermoItem] = []
    while any(queues) and len(chosen) < max_images:
        for q in queues:
            if q and len(chosen) + len(q[0]) <= max_images:
                chosen.extend(q.pop(0))
            elif q:
                q.pop(0)
    return chosen
