"""Patient-level splits: no patient's images ever sit on two sides of a split.

Images of one patient are strongly correlated (same body, same visit), so splitting by image
leaks the test set into training. Both splitters here work on patients, stratified by label,
and depend only on the seed and the set of patients (not on the order of `items`).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.datasets import ThermoItem, summary

PARTS = ("train", "val", "test")


def _key(patient_id: str) -> str:
    return str(int(patient_id)) if patient_id.isdigit() else patient_id


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _patients_by_label(items: Iterable[ThermoItem]) -> dict[str, list[str]]:
    """label -> sorted patient keys; a patient with two labels is an error."""
    label_of: dict[str, str] = {}
    for item in items:
        key = _key(item.patient_id)
        if label_of.setdefault(key, item.label) != item.label:
            raise ValueError(
                f"patient {item.patient_id} has images labelled {label_of[key]!r} and "
                f"{item.label!r}; a patient needs one label for a patient-level split"
            )
    if not label_of:
        raise ValueError("no items to split; scan a dataset first")
    groups: dict[str, list[str]] = defaultdict(list)
    for key, label in label_of.items():
        groups[label].append(key)
    return {label: sorted(keys, key=_sort_key) for label, keys in sorted(groups.items())}


def _sort_key(key: str) -> tuple[int, int, str]:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _shuffled(keys: Sequence[str], seed: int, label: str) -> list[str]:
    out = list(keys)
    random.Random(f"{seed}:{label}").shuffle(out)
    return out


def _select(items: Sequence[ThermoItem], patients: set[str]) -> list[ThermoItem]:
    chosen = [i for i in items if _key(i.patient_id) in patients]
    return sorted(chosen, key=lambda i: (_sort_key(_key(i.patient_id)), str(i.path)))


@dataclass(frozen=True)
class Split:
    """Train/validation/test items, by patient. `val` is empty unless a fraction was asked."""

    train: list[ThermoItem]
    val: list[ThermoItem]
    test: list[ThermoItem]
    method: str = "patient"
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, list[ThermoItem]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def patient_ids(self) -> dict[str, list[str]]:
        """Patient ids per part, as the items spell them, in numeric order."""
        return {
            name: sorted({i.patient_id for i in part}, key=lambda p: _sort_key(_key(p)))
            for name, part in self.parts().items()
        }

    def to_dict(self) -> dict[str, Any]:
        """What a manifest or split.json records: method, seed, patients and counts per part."""
        return {
            "method": self.method,
            "seed": self.seed,
            **self.params,
            "patients": self.patient_ids(),
            "summary": {name: summary(part) for name, part in self.parts().items() if part},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @staticmethod
    def from_patient_ids(
        items: Sequence[ThermoItem], patient_ids: dict[str, list[str]], method: str = "saved"
    ) -> Split:
        """Rebuild a split from saved patient ids (e.g. a run's split.json) over scanned items."""
        sets = {name: {_key(str(p)) for p in patient_ids.get(name, [])} for name in PARTS}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = sets[a] & sets[b]
            if both:
                raise ValueError(f"saved split puts patient {sorted(both)[0]} in {a} and {b}")
        return Split(
            train=_select(items, sets["train"]),
            val=_select(items, sets["val"]),
            test=_select(items, sets["test"]),
            method=method,
        )


def patient_split(
    items: Sequence[ThermoItem],
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Stratified patient-level split (the seed project's 70/30 train/test by default).

    Per label, `round(n * test_fraction)` patients go to test and `round(n * val_fraction)` to
    validation (at least one each when the fraction is positive); the rest train. Fractions are
    of the whole set of patients.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0 or test_fraction + val_fraction >= 1.0:
        raise ValueError(
            f"val_fraction must be >= 0 and test_fraction + val_fraction < 1, got "
            f"{val_fraction} + {test_fraction}"
        )
    groups = _patients_by_label(items)
    chosen: dict[str, set[str]] = {name: set() for name in PARTS}
    for label, keys in groups.items():
        n = len(keys)
        n_test = max(1, _round(n * test_fraction))
        n_val = max(1, _round(n * val_fraction)) if val_fraction > 0 else 0
        if n - n_test - n_val < 1:
            need = 2 + (1 if val_fraction > 0 else 0)
            raise ValueError(
                f"class {label!r} has {n} patient(s); a train/{'val/' if n_val else ''}test "
                f"split needs at least {need}"
            )
        order = _shuffled(keys, seed, label)
        chosen["test"].update(order[:n_test])
        chosen["val"].update(order[n_test : n_test + n_val])
        chosen["train"].update(order[n_test + n_val :])
    return Split(
        train=_select(items, chosen["train"]),
        val=_select(items, chosen["val"]),
        test=_select(items, chosen["test"]),
        method="patient-stratified",
        seed=seed,
        params={"test_fraction": test_fraction, "val_fraction": val_fraction},
    )


def grouped_kfold(
    items: Sequence[ThermoItem], k: int = 5, seed: int = 0
) -> list[tuple[list[ThermoItem], list[ThermoItem]]]:
    """k (train, test) folds: every patient is in exactly one test fold, stratified by label.

    Patients of each label are shuffled and dealt round-robin; each label continues where the
    previous one stopped, so fold sizes differ by at most one patient per label.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 for k-fold cross-validation, got {k}")
    groups = _patients_by_label(items)
    smallest = min(groups, key=lambda label: len(groups[label]))
    if k > len(groups[smallest]):
        raise ValueError(
            f"k={k} folds need at least {k} patients per class; {smallest!r} has "
            f"{len(groups[smallest])}"
        )
    folds: list[set[str]] = [set() for _ in range(k)]
    start = 0
    for label, keys in groups.items():
        order = _shuffled(keys, seed, label)
        for i, key in enumerate(order):
            folds[(start + i) % k].add(key)
        start = (start + len(order)) % k
    everyone = set().union(*folds)
    return [(_select(items, everyone - fold), _select(items, fold)) for fold in folds]
