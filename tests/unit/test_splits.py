"""Patient-level splits: no patient on two sides, stratified within one patient, deterministic."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.datasets import ThermoItem, scan
from training.splits import Split, grouped_kfold, patient_split


def _make_items(sizes: dict[str, list[int]], pad: bool, shuffle_seed: int) -> list[ThermoItem]:
    """sizes: label -> images per patient. Patient ids are unique across labels."""
    items: list[ThermoItem] = []
    pid = 1
    for label, per_patient in sizes.items():
        for n_images in per_patient:
            patient = f"{pid:04d}" if pad else str(pid)
            for j in range(n_images):
                path = Path(f"/data/T{pid:04d}.1.1.D.2013-01-01.{j:02d}.txt")
                items.append(ThermoItem(path, patient, label, "1"))
            pid += 1
    random.Random(shuffle_seed).shuffle(items)
    return items


datasets = st.fixed_dictionaries(
    {
        "healthy": st.lists(st.integers(1, 5), min_size=3, max_size=30),
        "sick": st.lists(st.integers(1, 5), min_size=3, max_size=30),
    }
)


def _patients(items: list[ThermoItem]) -> set[str]:
    return {i.patient_id for i in items}


def _per_label_patients(items: list[ThermoItem]) -> Counter[str]:
    return Counter(label for _, label in {(i.patient_id, i.label) for i in items})


def _check_partition(all_items: list[ThermoItem], parts: list[list[ThermoItem]]) -> None:
    """Every item exactly once, and every patient in exactly one part."""
    assert Counter(map(id, (i for p in parts for i in p))) == Counter(map(id, all_items))
    seen: set[str] = set()
    for part in parts:
        ids = _patients(part)
        assert not ids & seen, f"patients on two sides: {sorted(ids & seen)}"
        seen |= ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=datasets,
    test_fraction=st.floats(0.1, 0.5),
    val_fraction=st.sampled_from([0.0, 0.1, 0.2]),
    seed=st.integers(0, 2**31),
    pad=st.booleans(),
    shuffle_seed=st.integers(0, 1000),
)
def test_patient_split_properties(
    sizes: dict[str, list[int]],
    test_fraction: float,
    val_fraction: float,
    seed: int,
    pad: bool,
    shuffle_seed: int,
) -> None:
    items = _make_items(sizes, pad, shuffle_seed)
    try:
        split = patient_split(items, test_fraction, val_fraction, seed)
    except ValueError as exc:  # only when a class is too small for the asked parts
        n_min = min(len(v) for v in sizes.values())
        assert "needs at least" in str(exc)
        assert n_min <= 3 or test_fraction + val_fraction > 0.5
        return
    _check_partition(items, [split.train, split.val, split.test])
    for label, per_patient in sizes.items():
        n = len(per_patient)
        for part, fraction in ((split.test, test_fraction), (split.val, val_fraction)):
            got = _per_label_patients(part)[label]
            assert abs(got - n * fraction) <= 1, (label, got, n, fraction)
        assert _per_label_patients(split.train)[label] >= 1
    if val_fraction == 0.0:
        assert split.val == []
    # deterministic per seed and independent of item order
    again = patient_split(list(reversed(items)), test_fraction, val_fraction, seed)
    assert again.patient_ids() == split.patient_ids()


@settings(max_examples=60, deadline=None)
@given(sizes=datasets, k=st.integers(2, 6), seed=st.integers(0, 2**31), pad=st.booleans())
def test_grouped_kfold_properties(
    sizes: dict[str, list[int]], k: int, seed: int, pad: bool
) -> None:
    items = _make_items(sizes, pad, seed)
    smallest = min(len(v) for v in sizes.values())
    if k > smallest:
        with pytest.raises(ValueError, match=f"k={k} folds need at least {k} patients per class"):
            grouped_kfold(items, k, seed)
        return
    folds = grouped_kfold(items, k, seed)
    assert len(folds) == k
    _check_partition(items, [test for _, test in folds])  # each patient in one test fold
    for train, test in folds:
        _check_partition(items, [train, test])
    for label, per_patient in sizes.items():
        counts = [_per_label_patients(test)[label] for _, test in folds]
        assert max(counts) - min(counts) <= 1
        assert sum(counts) == len(per_patient)
    sizes_total = [len(_patients(test)) for _, test in folds]
    assert max(sizes_total) - min(sizes_total) <= 1
    assert [[i.path for i in t] for _, t in grouped_kfold(items, k, seed)] == [
        [i.path for i in t] for _, t in folds
    ]


def test_real_shared_labels(shared_dmr: Path) -> None:
    items = scan(shared_dmr)
    split = patient_split(items, seed=0)
    _check_partition(items, [split.train, split.val, split.test])
    assert _per_label_patients(split.test) == Counter(healthy=19, sick=14)  # round(63*.3), 45*.3
    assert _per_label_patients(split.train) == Counter(healthy=44, sick=31)
    other = patient_split(items, seed=1)
    assert other.patient_ids()["test"] != split.patient_ids()["test"]
    assert patient_split(items, seed=0).patient_ids() == split.patient_ids()

    with_val = patient_split(items, test_fraction=0.2, val_fraction=0.15, seed=3)
    _check_partition(items, [with_val.train, with_val.val, with_val.test])
    assert _per_label_patients(with_val.val) == Counter(healthy=9, sick=7)

    folds = grouped_kfold(items, k=5, seed=0)
    _check_partition(items, [test for _, test in folds])
    for train, test in folds:
        assert not _patients(train) & _patients(test)


def test_split_serialisation_round_trip() -> None:
    items = _make_items({"healthy": [2] * 10, "sick": [1] * 6}, pad=True, shuffle_seed=0)
    split = patient_split(items, 0.3, 0.2, seed=7)
    data = json.loads(split.to_json())
    assert data["method"] == "patient-stratified"
    assert (data["seed"], data["test_fraction"], data["val_fraction"]) == (7, 0.3, 0.2)
    assert data["patients"] == split.patient_ids()
    assert data["summary"]["test"]["classes"]["healthy"] == {"patients": 3, "images": 6}
    rebuilt = Split.from_patient_ids(list(reversed(items)), data["patients"])
    for name in ("train", "val", "test"):
        assert [i.path for i in getattr(rebuilt, name)] == [i.path for i in getattr(split, name)]
    with pytest.raises(ValueError, match="in train and test"):
        Split.from_patient_ids(items, {"train": ["0001"], "test": ["1"]})


def test_impossible_requests() -> None:
    items = _make_items({"healthy": [1] * 4, "sick": [2]}, pad=False, shuffle_seed=0)
    with pytest.raises(ValueError, match="class 'sick' has 1 patient"):
        patient_split(items)
    with pytest.raises(ValueError, match="k=2 folds need at least 2 patients per class; 'sick'"):
        grouped_kfold(items, k=2)
    with pytest.raises(ValueError, match="k must be >= 2"):
        grouped_kfold(items, k=1)
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
            patient_split(items, test_fraction=bad)
    with pytest.raises(ValueError, match="test_fraction \\+ val_fraction < 1"):
        patient_split(items, test_fraction=0.5, val_fraction=0.5)
    with pytest.raises(ValueError, match="no items"):
        patient_split([])
    mixed = [*items, ThermoItem(Path("/x/T0001.png"), "1", "sick", None)]
    with pytest.raises(ValueError, match="patient 1 has images labelled 'healthy' and 'sick'"):
        patient_split(mixed)
