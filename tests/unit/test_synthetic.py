"""Synthetic thermograms: deterministic, plausible temperatures, and a visible "sick" signal."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.synthetic import (
    LABELS,
    SyntheticStream,
    patient_seed,
    render_patient,
    synth_thermogram,
)

SEEDS = range(12)


def _mirror_gap(c: np.ndarray, midline_x: float, rows: slice) -> float:
    """Mean |T(x) - T(mirror x)| about the body midline over the given rows."""
    m = round(midline_x)
    half = min(m, c.shape[1] - 1 - m)
    left = c[rows, m - half : m]
    right = c[rows, m + 1 : m + half + 1][:, ::-1]
    return float(np.abs(left - right).mean())


def _patch(c: np.ndarray, x: float, y: float, r: int = 3) -> float:
    xi, yi = round(x), round(y)
    return float(c[yi - r : yi + r + 1, xi - r : xi + r + 1].mean())


def test_same_seed_same_array_and_seeds_differ() -> None:
    a = synth_thermogram(5, "sick")
    b = synth_thermogram(5, "sick")
    assert a.dtype == np.float32
    assert a.shape == (480, 640)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, synth_thermogram(6, "sick"))
    assert not np.array_equal(a, synth_thermogram(5, "healthy"))


def test_custom_size() -> None:
    small = synth_thermogram(1, "healthy", size=(120, 160))
    assert small.shape == (120, 160)
    assert small.dtype == np.float32


@pytest.mark.parametrize("label", LABELS)
def test_background_and_skin_ranges(label: str) -> None:
    for seed in SEEDS:
        p = render_patient(seed, label)
        c, h = p.celsius, p.celsius.shape[0]
        corner = c[int(0.9 * h) :, :8]  # below the arms, outside the torso
        assert 20.0 <= float(corner.mean()) <= 25.0, seed
        chest = _patch(c, p.midline_x, 0.45 * h, r=6)  # sternum, above the breasts
        assert 30.0 <= chest <= 36.0, seed
        assert float(c.min()) > 18.0 and float(c.max()) < 40.0, seed


def test_sick_adds_a_localized_hot_region_on_one_side() -> None:
    for seed in SEEDS:
        healthy = render_patient(seed, "healthy")
        sick = render_patient(seed, "sick")
        assert healthy.lesion_xy is None and healthy.lesion_side is None
        assert sick.lesion_xy is not None and sick.lesion_side in ("left", "right")
        # same anatomy, so the difference is the pathology alone
        diff = sick.celsius - healthy.celsius
        m = round(sick.midline_x)
        affected, other = (diff[:, :m], diff[:, m:])
        if sick.lesion_side == "right":
            affected, other = other, affected
        assert float(np.abs(affected).sum()) > 10 * float(np.abs(other).sum()), seed
        x, y = sick.lesion_xy
        gain = _patch(diff, x, y)
        assert 0.8 <= gain <= 3.5, seed
        # hotter than the mirrored spot on the other breast
        assert _patch(sick.celsius, x, y) - _patch(sick.celsius, 2 * sick.midline_x - x, y) > 0.5


def test_sick_is_hotter_and_more_asymmetric_on_average() -> None:
    def stats(label: str) -> tuple[float, float]:
        hot, gap = [], []
        for seed in SEEDS:
            p = render_patient(seed, label)
            c = p.celsius
            rows = slice(int(0.45 * c.shape[0]), int(0.95 * c.shape[0]))
            skin = c[c > 28.0]
            hot.append(float(np.percentile(skin, 99.9) - np.median(skin)))
            gap.append(_mirror_gap(c, p.midline_x, rows))
        return float(np.mean(hot)), float(np.mean(gap))

    hot_h, gap_h = stats("healthy")
    hot_s, gap_s = stats("sick")
    assert hot_s > hot_h + 0.4
    assert gap_s > 1.3 * gap_h


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label must be one of healthy, sick"):
        synth_thermogram(0, "Benign")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        synth_thermogram(-1, "sick")
    with pytest.raises(ValueError, match="size must be"):
        synth_thermogram(0, "sick", size=(10, 10))
    with pytest.raises(ValueError, match="frames_per_patient"):
        SyntheticStream(0, size=(64, 80), frames_per_patient=0)


def test_patient_seed_is_stable_and_distinct() -> None:
    seeds = {patient_seed(1, p) for p in range(200)}
    assert len(seeds) == 200
    assert patient_seed(1, 3) == patient_seed(1, 3)
    assert patient_seed(1, 3) != patient_seed(2, 3)


def test_stream_deterministic_labels_and_content() -> None:
    size = (120, 160)
    a = SyntheticStream(4, size=size, frames_per_patient=3)
    b = SyntheticStream(4, size=size, frames_per_patient=3)
    assert a.distinct_patients == 4
    labels = [a.label(i) for i in range(12)]
    assert labels == ["healthy"] * 3 + ["sick"] * 3 + ["healthy"] * 3 + ["sick"] * 3
    assert [a.patient(i) for i in range(0, 15, 3)] == [0, 1, 2, 3, 0]
    for i in (0, 1, 5, 13, 1000):
        f = a.frame(i)
        assert f.dtype == np.float32 and f.shape == size
        np.testing.assert_array_equal(f, b.frame(i))
        # the frame is its patient's thermogram, moved a little and with fresh noise
        base = synth_thermogram(patient_seed(4, a.patient(i)), a.label(i), size)
        assert float(np.abs(f - base).mean()) < 0.3
    assert not np.array_equal(a.frame(0), a.frame(1))
    assert not np.array_equal(a.frame(0), SyntheticStream(5, size=size).frame(0))
    with pytest.raises(ValueError, match="frame index"):
        a.frame(-1)


def test_stream_custom_pattern() -> None:
    s = SyntheticStream(0, size=(64, 80), label_pattern=["sick"], frames_per_patient=2)
    assert {s.label(i) for i in range(20)} == {"sick"}
    assert s.distinct_patients == 4
    s3 = SyntheticStream(
        0, size=(64, 80), label_pattern=["healthy", "sick", "sick"], distinct_patients=4
    )
    assert s3.distinct_patients == 6  # rounded up to whole patterns
    assert [s3.label(i * 150) for i in range(7)] == [
        "healthy",
        "sick",
        "sick",
        "healthy",
        "sick",
        "sick",
        "healthy",
    ]
