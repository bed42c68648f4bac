"""Dataset scanning: the shared DMR-IR layout, the DMR-IR download layout, class folders, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.dmr import DataError
from pipeline.types import FrameKind
from training.datasets import ThermoItem, scan, summary


def _matrix_file(path: Path, value: float = 31.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(" ".join(f"{value + 0.01 * c:.2f}" for c in range(5)) for _ in range(4))
    path.write_text(rows + "\n")
    return path


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((6, 8), value, dtype=np.uint8))
    return path


def test_shared_dmr_layout(shared_dmr: Path) -> None:
    items = scan(shared_dmr)
    assert len(items) == 108
    by_patient = {i.patient_id: i for i in items}
    assert by_patient["2"].path.name == "T0002.txt.gz"  # id spelled as in labels.csv
    assert by_patient["2"].label == "healthy"
    assert by_patient["418"].label == "sick"
    assert summary(items) == {
        "patients": 108,
        "images": 108,
        "classes": {
            "healthy": {"patients": 63, "images": 63},
            "sick": {"patients": 45, "images": 45},
        },
    }
    frame = items[0].load()
    assert frame.kind is FrameKind.CELSIUS
    assert frame.pixels.shape == (480, 640)


def test_labels_csv_flat_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "labels.csv").write_text("patient_id,diagnosis\r\n0002,HEALTHY\r\n17,sick\r\n")
    _matrix_file(tmp_path / "T2.txt")
    _matrix_file(tmp_path / "T0017.txt")
    _matrix_file(tmp_path / "T0099.txt")  # no row: ignored with a warning
    with caplog.at_level(logging.WARNING):
        items = scan(tmp_path)
    assert [(i.path.name, i.patient_id, i.label) for i in items] == [
        ("T2.txt", "0002", "healthy"),
        ("T0017.txt", "17", "sick"),
    ]
    assert "1 thermogram files belong to no patient" in caplog.text
    assert items[0].load().kind is FrameKind.CELSIUS


def test_dmr_download_layout_with_patient_folders(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("patient_id,diagnosis\n1,Healthy\n300,Sick\n")
    p1 = tmp_path / "T0001"
    _matrix_file(p1 / "T0001.1.1.S.2012-10-08.00.txt")
    _png(p1 / "T0001.1.1.S.2012-10-08.00.jpg")  # same capture as the matrix: not counted twice
    _matrix_file(p1 / "T0001.1.2.S.2012-10-08.00.txt")
    _png(tmp_path / "T0300" / "dynamic" / "T0300.1.1.D.2018-06-01.03.png")
    items = scan(tmp_path)
    assert [(i.path.name, i.patient_id, i.label, i.view) for i in items] == [
        ("T0001.1.1.S.2012-10-08.00.txt", "1", "healthy", "1"),
        ("T0001.1.2.S.2012-10-08.00.txt", "1", "healthy", "2"),
        ("T0300.1.1.D.2018-06-01.03.png", "300", "sick", "1"),
    ]
    assert summary(items)["classes"]["healthy"] == {"patients": 1, "images": 2}


def test_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "Healthy" / "T0005.png")
    _png(tmp_path / "Healthy" / "img_10.png")
    _png(tmp_path / "Healthy" / "img_9.png")
    _matrix_file(tmp_path / "Sick" / "T0006.1.1.S.2013-01-01.00.txt")
    _matrix_file(tmp_path / "Sick" / "T0006.1.1.S.2013-01-01.01.txt")
    (tmp_path / ".cache").mkdir()
    items = scan(tmp_path)
    assert [(i.path.name, i.patient_id, i.label) for i in items] == [
        ("img_9.png", "img_9", "healthy"),
        ("img_10.png", "img_10", "healthy"),
        ("T0005.png", "0005", "healthy"),
        ("T0006.1.1.S.2013-01-01.00.txt", "0006", "sick"),
        ("T0006.1.1.S.2013-01-01.01.txt", "0006", "sick"),
    ]
    assert summary(items)["classes"]["sick"] == {"patients": 1, "images": 2}
    assert items[0] == ThermoItem(tmp_path / "Healthy" / "img_9.png", "img_9", "healthy", None)
    assert items[0].load().kind is FrameKind.GRAY8


def test_explicit_labels_path(tmp_path: Path) -> None:
    csv_path = tmp_path / "meta" / "my-labels.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("Patient_ID,Diagnosis,notes\n3,sick,x\n")
    _matrix_file(tmp_path / "data" / "T0003.txt")
    items = scan(tmp_path / "data", labels=csv_path)
    assert [(i.patient_id, i.label) for i in items] == [("3", "sick")]
    with pytest.raises(DataError, match="labels file not found"):
        scan(tmp_path / "data", labels=tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no thermograms found; expected labels.csv"),
        (lambda d: ((d / "healthy").mkdir(), _png(d / "sick" / "a.png")), "class 'healthy' has no"),
        (
            lambda d: (
                (d / "labels.csv").write_text("patient_id,diagnosis\n1,healthy\n2,sick\n"),
                _matrix_file(d / "T0001.txt"),
            ),
            r"line 3: no thermogram for patient 2 .* \(expected a file like T0002.txt.gz\)",
        ),
        (
            lambda d: (d / "labels.csv").write_text("patient_id,diagnosis\n1,Benign\n"),
            r"line 2: diagnosis 'Benign' for patient 1 is unknown; allowed: Healthy, Sick",
        ),
        (
            lambda d: (d / "labels.csv").write_text("id,label\n1,healthy\n"),
            "header is id,label; expected 'patient_id,diagnosis'",
        ),
        (
            lambda d: (d / "labels.csv").write_text("patient_id,diagnosis\n1,sick\n001,sick\n"),
            "line 3: patient 001 already listed on line 2",
        ),
        (
            lambda d: (d / "labels.csv").write_text("patient_id,diagnosis\n"),
            "no rows",
        ),
        (
            lambda d: (_png(d / "healthy" / "T0001.png"), _png(d / "sick" / "T1.1.1.S.png")),
            "patient 1 is in both 'healthy' and 'sick'",
        ),
    ],
    ids=[
        "empty",
        "empty-class",
        "missing-file",
        "unknown-diagnosis",
        "bad-header",
        "duplicate",
        "no-rows",
        "two-classes",
    ],
)
def test_scan_errors(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        scan(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        scan(tmp_path / "absent")
