"""The study's unit of analysis: one picture per patient, with its label and acquisition era.

DMR-IR patients with ID >= 300 (the 2018-2020 acquisitions) are all sick and look different, so
every result is also given on ID < 300; `Cohort.old` marks those patients.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.datasets import ThermoItem, limit_images, scan

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
OLD_ERA_LIMIT = 300


class StudyError(ValueError):
    """A study request that cannot run; the message is one line."""


def numeric_id(patient: str) -> int:
    """The patient's number; a non-numeric id counts as the newer era (never as ID < 300)."""
    return int(patient) if str(patient).isdigit() else OLD_ERA_LIMIT


@dataclass(frozen=True)
class Cohort:
    """One picture per patient (the shared DMR-IR subset; other folders: the first picture)."""

    items: Sequence[ThermoItem | None]
    patient_ids: list[str]
    y: I64  # 1 = sick

    @property
    def old(self) -> npt.NDArray[np.bool_]:
        """True for the pre-2018 acquisitions (numeric ID < 300)."""
        return np.asarray([numeric_id(p) < OLD_ERA_LIMIT for p in self.patient_ids], dtype=bool)

    @property
    def strata(self) -> I64:
        """Label x era (0..3): what the folds balance."""
        return 2 * self.y + self.old.astype(np.int64)

    def take(self, idx: Sequence[int] | npt.NDArray[np.intp]) -> Cohort:
        pick = [int(i) for i in idx]
        return Cohort(
            [self.items[i] for i in pick], [self.patient_ids[i] for i in pick], self.y[pick]
        )

    def item(self, i: int) -> ThermoItem:
        it = self.items[i]
        if it is None:
            raise StudyError(f"patient {self.patient_ids[i]}: no file behind this cohort entry")
        return it


def load_cohort(data: Path, max_patients: int | None, seed: int) -> Cohort:
    """Scan `data`, keep the first picture of each patient; needs healthy and sick patients."""
    items = scan(data)
    if max_patients is not None:
        items = limit_images(items, max_patients, seed)
    seen: dict[str, ThermoItem] = {}
    for it in items:
        seen.setdefault(str(it.patient_id), it)
    if len(seen) != len(items):
        log.warning("%s: several pictures per patient; the study uses the first of each", data)
    chosen = list(seen.values())
    labels = {it.label for it in chosen}
    if not labels <= {"healthy", "sick"} or len(labels) < 2:
        raise StudyError(
            f"{data}: needs patients labelled healthy and sick, found {sorted(labels)}"
        )
    return Cohort(
        chosen,
        [str(it.patient_id) for it in chosen],
        np.asarray([int(it.label == "sick") for it in chosen], dtype=np.int64),
    )


def load_celsius(cohort: Cohort, cache: Path) -> F32:
    """[N, H, W] Celsius matrices, parsed once and kept in `cache` (parsing text is slow)."""
    items = [cohort.item(i) for i in range(len(cohort.y))]
    key = hashlib.sha256(
        "\n".join(f"{it.path}:{it.path.stat().st_mtime_ns}" for it in items).encode()
    ).hexdigest()[:16]
    path = cache / f"celsius-{key}.npy"
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    frames = []
    for it in items:
        c = it.load().celsius()
        if c is None:
            raise StudyError(f"{it.path}: not a temperature matrix; the study needs Celsius data")
        frames.append(c.astype(np.float32))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise StudyError(f"matrices of several shapes {sorted(shapes)}; expected one camera size")
    arr = np.stack(frames)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return arr
