"""Exam verdict arithmetic, its invariants, the rolling score and mirrored-halves asymmetry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.data.synthetic import render_patient
from pipeline.exam.quality import body_mask
from pipeline.exam.verdict import (
    ExamModel,
    ExamVerdict,
    RollingScore,
    ViewTally,
    asymmetry,
    body_midline_x,
    exam_verdict,
)
from pipeline.manifest import ModelManifest, TensorSpec
from pipeline.preprocess import PreprocessConfig, render_celsius
from tests.helpers.exam import MODEL


def tally(view: str, probs: list[float], rejected: int = 0) -> ViewTally:
    t = ViewTally(view)  # type: ignore[arg-type]
    for p in probs:
        t.accept(p, None, None, None)
    for _ in range(rejected):
        t.reject(["motion"])
    return t


def test_mean_of_accepted_frames_of_the_models_views() -> None:
    tallies = {
        "frontal": tally("frontal", [0.2, 0.4, 0.9], rejected=7),  # rejected frames never count
        "left-lateral": tally("left-lateral", [1.0, 1.0]),  # not a view the model knows
    }
    verdict = exam_verdict(tallies, MODEL, final=True)  # type: ignore[arg-type]
    assert verdict is not None
    assert verdict.frames == 3 and verdict.frames_by_view == {"frontal": 3}
    assert verdict.score == pytest.approx(0.5)
    assert verdict.positive and verdict.label == "sick" and verdict.threshold == 0.4


def test_below_threshold_is_the_other_label() -> None:
    verdict = exam_verdict({"frontal": tally("frontal", [0.1, 0.3])}, MODEL, final=False)
    assert verdict is not None and not verdict.positive and verdict.label == "healthy"
    assert verdict.score == pytest.approx(0.2) and not verdict.final


def test_at_the_threshold_is_positive_and_rounding_never_contradicts() -> None:
    exactly = exam_verdict({"frontal": tally("frontal", [0.4])}, MODEL, final=True)
    assert exactly is not None and exactly.positive
    # a mean a hair below the threshold that rounds onto it is published as 0.4 AND positive
    hair = exam_verdict({"frontal": tally("frontal", [0.39999996])}, MODEL, final=True)
    assert hair is not None and hair.score == 0.4 and hair.positive
    below = exam_verdict({"frontal": tally("frontal", [0.3999994])}, MODEL, final=True)
    assert below is not None and below.score == 0.399999 and not below.positive


def test_no_accepted_frames_no_verdict() -> None:
    assert exam_verdict({}, MODEL, final=True) is None
    only_rejected = {"frontal": tally("frontal", [], rejected=5)}
    assert exam_verdict(only_rejected, MODEL, final=True) is None  # type: ignore[arg-type]
    other_view = {"right-oblique": tally("right-oblique", [0.9])}
    assert exam_verdict(other_view, MODEL, final=True) is None  # type: ignore[arg-type]


def test_models_with_several_views_pool_them() -> None:
    model = dataclasses.replace(MODEL, views=("frontal", "left-lateral"))
    tallies = {
        "frontal": tally("frontal", [0.0, 0.0]),
        "left-lateral": tally("left-lateral", [0.9]),
    }
    verdict = exam_verdict(tallies, model, final=True)  # type: ignore[arg-type]
    assert verdict is not None and verdict.frames == 3
    assert verdict.frames_by_view == {"frontal": 2, "left-lateral": 1}
    assert verdict.score == pytest.approx(0.3)


@pytest.mark.parametrize(
    "change",
    [
        {"positive": False},  # contradicts score >= threshold
        {"label": "healthy"},  # contradicts positive
        {"frames": 4},  # contradicts the per-view counts
        {"frames_by_view": {"frontal": 2}},
        {"score": 1.5},
    ],
)
def test_a_contradicting_verdict_cannot_exist(change: dict[str, object]) -> None:
    good = exam_verdict({"frontal": tally("frontal", [0.5, 0.6, 0.7])}, MODEL, final=True)
    assert good is not None
    with pytest.raises(ValueError):
        dataclasses.replace(good, **change)  # type: ignore[arg-type]
    assert isinstance(good, ExamVerdict)


def test_rolling_score_keeps_the_last_n() -> None:
    rolling = RollingScore(3)
    assert rolling.to_dict(MODEL) is None
    for p in (0.9, 0.9, 0.1, 0.1, 0.1):
        rolling.add(p)
    shown = rolling.to_dict(MODEL)
    assert shown is not None and shown["frames"] == 3 and shown["score"] == pytest.approx(0.1)
    assert shown["label"] == "healthy" and "not the exam result" in shown["score_is"]


def manifest(threshold: float | None, data: dict[str, object]) -> ModelManifest:
    return ModelManifest(
        name="m",
        version="2",
        created="2026-01-01T00:00:00Z",
        sha256="b" * 64,
        architecture="resnet18",
        weights="none",
        input=TensorSpec(name="input_0", shape=(1, 3, 224, 224)),
        output=TensorSpec(name="output_0", shape=(1, 2)),
        preprocessing=PreprocessConfig(),
        labels=("healthy", "sick"),
        threshold=threshold,
        data=data,
        synthetic=True,
    )


def test_model_from_manifest() -> None:
    m = ExamModel.from_manifest(manifest(0.35, {}))
    assert (m.threshold, m.threshold_source, m.views, m.synthetic) == (
        0.35,
        "manifest",
        ("frontal",),
        True,
    )
    assert ExamModel.from_manifest(manifest(0.35, {}), threshold=0.6).threshold_source == "config"
    assert ExamModel.from_manifest(manifest(None, {})).threshold_source == "default-0.5"
    views = ExamModel.from_manifest(manifest(None, {"views": ["frontal", "left-lateral"]})).views
    assert views == ("frontal", "left-lateral")
    odd = ExamModel.from_manifest(manifest(None, {"views": ["top"]}))
    assert odd.views == ("frontal",)
    with pytest.raises(ValueError, match="positive label"):
        dataclasses.replace(MODEL, positive_label="cancer")


# --- asymmetry ------------------------------------------------------------------------------


def mirrored_body(seed: int = 4) -> tuple[np.ndarray, int]:
    """A synthetic torso whose right half is the exact mirror of its left (axis column c)."""
    celsius = render_patient(seed, "healthy", (240, 320)).celsius
    c = 150
    left = celsius[:, :c]
    symmetric = np.concatenate([left, celsius[:, c : c + 1], left[:, ::-1]], axis=1)
    return np.ascontiguousarray(symmetric), c


def mask_of(celsius: np.ndarray) -> np.ndarray:
    return body_mask(render_celsius(celsius, (20.0, 38.0)), 25.0)


def test_a_mirrored_body_has_no_asymmetry() -> None:
    body, c = mirrored_body()
    mask = mask_of(body)
    assert body_midline_x(mask) == pytest.approx(c)
    result = asymmetry(body, mask)
    assert result is not None and result.pairs > 1000
    assert result.mean_abs_diff_c == pytest.approx(0.0, abs=1e-9)
    assert result.left_minus_right_c == pytest.approx(0.0, abs=1e-9)


def test_a_warmer_side_shows_in_sign_and_size() -> None:
    body, c = mirrored_body()
    mask = mask_of(body)
    warmer = body.copy()
    warmer[:, :c][mask[:, :c]] += np.float32(0.8)  # the image-left half of the body warms 0.8 C
    result = asymmetry(warmer, mask)
    assert result is not None
    assert result.left_minus_right_c == pytest.approx(0.8, abs=1e-4)
    assert result.mean_abs_diff_c == pytest.approx(0.8, abs=1e-4)
    cooler = asymmetry(
        body - np.where(np.arange(body.shape[1]) < c, 0.5, 0.0).astype(np.float32), mask
    )
    assert cooler is not None and cooler.left_minus_right_c == pytest.approx(-0.5, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_a_synthetic_lesion_raises_its_side(seed: int) -> None:
    healthy = render_patient(seed, "healthy", (240, 320))
    sick = render_patient(seed, "sick", (240, 320))
    mask = mask_of(healthy.celsius)
    before = asymmetry(healthy.celsius, mask)
    after = asymmetry(sick.celsius, mask)
    assert before is not None and after is not None
    shift = after.left_minus_right_c - before.left_minus_right_c
    assert (shift > 0) == (sick.lesion_side == "left")  # "left" is the image's left here
    assert after.mean_abs_diff_c > before.mean_abs_diff_c


def test_no_body_no_asymmetry() -> None:
    empty = np.zeros((10, 10), bool)
    assert body_midline_x(empty) is None
    assert asymmetry(np.zeros((10, 10), np.float32), empty) is None
    edge = np.zeros((10, 10), bool)
    edge[:, 0] = True  # a body on the frame's edge has nothing to mirror
    assert asymmetry(np.zeros((10, 10), np.float32), edge) is None
