"""Golden: real DMR-IR thermograms through the replay path, against stored expectations.

A few frontal matrices from ../shared (read there, never copied: the test links them into a
temporary folder) go through what `thermoscreen run dmr://...` does before MQTT: the folder
source, `preprocess.render` and the ONNX Runtime classifier, here with the small model that
tests/helpers/tiny_model.py builds from a fixed seed. `dmr_frames.json` beside this file holds
what came out when it was generated: the temperature statistics, a hash and statistics of every
rendered image (so a changed window, rounding or equalization shows up, and the statistics say
how far it moved) and the model's scores.

After an intended change, refresh it with `pytest tests/golden --generate`, review the diff
of dmr_frames.json, and commit it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.capture.base import EndOfStream, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.classify.onnx import OnnxRuntimeClassifier
from pipeline.manifest import load_model_dir
from pipeline.preprocess import PreprocessConfig, render
from pipeline.types import Frame, ThermalStats
from tests.helpers.tiny_model import make_tiny_model_dir

GOLDEN = Path(__file__).with_name("dmr_frames.json")
# two healthy and one sick patient of the older acquisitions (space-separated, 2 decimals), and
# one of the 2018-2020 ones (semicolon-separated, 5 decimals)
FRAMES = ("T0002.txt.gz", "T0008.txt.gz", "T0179.txt.gz", "T0318.txt.gz")
RENDERINGS = {
    "default": PreprocessConfig(),  # 20-38 C window, global equalization
    "minmax_clahe": PreprocessConfig(window_c=None, equalization="clahe"),
}
MODEL_SEED = 11  # a seed whose scores sit mid-range and differ between these frames
SCORE_ABS_TOL = 1e-5  # ONNX Runtime's float kernels may round differently across CPUs


def _image_record(image: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(image.shape),
        "sha256": hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(),
        "mean": round(float(image.mean()), 4),
        "std": round(float(image.std()), 4),
    }


def _frame_record(frame: Frame, clf: OnnxRuntimeClassifier) -> dict[str, Any]:
    thermal = ThermalStats.of(frame.celsius())
    assert thermal is not None, "a DMR-IR matrix is radiometric"
    images = {name: render(frame, cfg) for name, cfg in RENDERINGS.items()}
    prediction = clf.classify(images["default"])
    return {
        "kind": frame.kind.value,
        "thermal": {"t_min_c": thermal.t_min_c, "t_max_c": thermal.t_max_c,
                    "t_mean_c": thermal.t_mean_c},
        "render": {name: _image_record(image) for name, image in images.items()},
        "label": prediction.label,
        "scores": [round(s, 7) for s in prediction.scores],
    }  # fmt: skip


def _replay(folder: Path, model_dir: Path) -> dict[str, dict[str, Any]]:
    clf = OnnxRuntimeClassifier(load_model_dir(model_dir), threshold=0.0, top_k=0)
    source = open_source(f"dmr://{folder}", SourceOptions(jetson=False))
    source.open()
    records: dict[str, dict[str, Any]] = {}
    try:
        while True:
            frame = source.read(timeout_s=5.0)
            if frame is not None:
                records[FRAMES[frame.index]] = _frame_record(frame, clf)
    except EndOfStream:
        pass
    finally:
        source.close()
        clf.close()
    return records


@pytest.fixture(scope="module")
def produced(shared_dmr: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("dmr-golden")
    for name in FRAMES:
        (folder / name).symlink_to(shared_dmr / name)  # a link: the data stays in ../shared
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny", seed=MODEL_SEED)
    return {
        "model": {"builder": "tests/helpers/tiny_model.py", "seed": MODEL_SEED},
        "renderings": {name: cfg.model_dump(mode="json") for name, cfg in RENDERINGS.items()},
        "frames": _replay(folder, model_dir),
    }


@pytest.fixture(scope="module")
def expected(produced: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.config.getoption("--generate"):
        GOLDEN.write_text(json.dumps(produced, indent=2) + "\n")
        pytest.skip(f"--generate: wrote {GOLDEN}; review its diff and commit it")
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN} is missing; create it with `pytest tests/golden --generate`")
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


def test_the_golden_file_describes_this_test(
    expected: dict[str, Any], produced: dict[str, Any]
) -> None:
    assert expected["model"] == produced["model"]
    assert expected["renderings"] == produced["renderings"]
    assert sorted(expected["frames"]) == sorted(FRAMES) == sorted(produced["frames"])


@pytest.mark.parametrize("name", FRAMES)
def test_temperatures_are_read_as_recorded(
    name: str, expected: dict[str, Any], produced: dict[str, Any]
) -> None:
    want, got = expected["frames"][name], produced["frames"][name]
    assert got["kind"] == want["kind"] == "celsius"
    assert got["thermal"] == want["thermal"]


@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
@pytest.mark.parametrize("name", FRAMES)
def test_rendered_images_are_bit_exact(
    name: str, rendering: str, expected: dict[str, Any], produced: dict[str, Any]
) -> None:
    want = expected["frames"][name]["render"][rendering]
    got = produced["frames"][name]["render"][rendering]
    assert got["shape"] == want["shape"]
    # the statistics first: on a mismatch they say how far the picture moved
    assert (got["mean"], got["std"]) == pytest.approx((want["mean"], want["std"]), abs=1e-4)
    assert got["sha256"] == want["sha256"]


@pytest.mark.parametrize("name", FRAMES)
def test_model_scores_match(name: str, expected: dict[str, Any], produced: dict[str, Any]) -> None:
    want, got = expected["frames"][name], produced["frames"][name]
    assert got["scores"] == pytest.approx(want["scores"], abs=SCORE_ABS_TOL)
    assert got["label"] == want["label"]


def test_the_frames_are_not_all_alike(expected: dict[str, Any]) -> None:
    # guards the golden file itself: distinct pictures and scores, so the checks above can fail
    frames = expected["frames"].values()
    assert len({f["render"]["default"]["sha256"] for f in frames}) == len(FRAMES)
    assert len({round(f["scores"][0], 4) for f in frames}) == len(FRAMES)
