"""The frame-size limit reads sizes from PNG and JPEG headers without decoding the image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.capture.limits import FrameLimit, check_image_files, image_size
from pipeline.config import AppConfig
from tests.helpers.images import flat_png


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("a.png", (37, 53), []),
        ("a16.png", (12, 13), []),
        ("a.jpg", (41, 67), []),
        ("p.jpg", (30, 70), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    ],
)
def test_image_size_reads_png_and_jpeg_headers(
    tmp_path: Path, name: str, shape: tuple[int, int], params: list[int]
) -> None:
    path = tmp_path / name
    dtype = np.uint16 if "16" in name else np.uint8
    assert cv2.imwrite(str(path), np.zeros(shape, dtype), params)
    assert image_size(path) == (shape[1], shape[0])


def test_image_size_of_other_files_is_none(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("30.1 30.2\n")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8" + b"\xff" * 5000)
    assert image_size(tmp_path / "m.txt") is None
    assert image_size(tmp_path / "junk.jpg") is None


def test_the_first_oversized_image_is_named(tmp_path: Path) -> None:
    small = flat_png(tmp_path / "a.png", 640, 480)
    huge = flat_png(tmp_path / "b.png", 16000, 16000)
    assert huge.stat().st_size < 1_000_000  # small on disk: only the header tells
    found = check_image_files([small, huge], FrameLimit())
    assert found is not None and found[0] == huge
    assert found[1] == (
        "frames are 16000x16000 pixels, over the limit of 4096x4096 "
        "(capture.max_frame_width/max_frame_height); scale the source down or raise the limit"
    )
    assert check_image_files([small], FrameLimit()) is None
    assert FrameLimit(640, 480).problem(640, 480) is None
    assert FrameLimit(640, 480).problem(641, 480) is not None


def test_the_limit_is_configurable_and_defaults_to_4096() -> None:
    fields = AppConfig().capture
    assert (fields.max_frame_width, fields.max_frame_height) == (4096, 4096)
    assert (
        AppConfig.model_validate({"capture": {"max_frame_width": 8000}}).capture.max_frame_width
        == 8000
    )
