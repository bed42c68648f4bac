"""Quality gates: each failure named, and real DMR-IR and synthetic frames pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.dmr import list_thermograms, load_frame
from pipeline.data.synthetic import SyntheticStream, render_patient
from pipeline.exam.config import GateConfig
from pipeline.exam.quality import (
    QualityGates,
    body_mask,
    percentile,
    work_frame,
)
from pipeline.preprocess import render_celsius
from pipeline.types import KELVIN_OFFSET, Frame, FrameKind
from tests.conftest import SHARED_DMR
from tests.helpers.exam import celsius_frame, gray_frame

DMR = SHARED_DMR
needs_dmr = pytest.mark.skipif(not DMR.is_dir(), reason="../shared/data/dmr-ir-frontal not found")
CFG = GateConfig()


def dmr_files() -> list[Path]:
    return [p for p in list_thermograms(DMR)] if DMR.is_dir() else []


def gate(frame: Frame, ambient_c: float | None = None) -> tuple[str, ...]:
    return QualityGates(CFG).check(frame, ambient_c).quality.reasons


@pytest.fixture(scope="module")
def body() -> np.ndarray:
    return render_patient(5, "healthy", (240, 320)).celsius


def raw16(celsius: np.ndarray) -> Frame:
    counts = np.rint((celsius + KELVIN_OFFSET) / 0.01).astype(np.uint16)
    return Frame(counts, FrameKind.RAW16, 0, "test", 0.0, 0, scale=0.01, offset=0.0)


@needs_dmr
def test_real_dmr_frames_pass_a_sample() -> None:
    files = dmr_files()
    picked = files[:: max(1, len(files) // 10)]  # old and new acquisitions alike
    for path in picked:
        outcome = QualityGates(CFG).check(load_frame(path), ambient_c=23.0)
        assert outcome.quality.accepted, (path.name, outcome.quality)
        assert 28.0 <= (outcome.quality.skin_p95_c or 0) <= 38.5


@pytest.mark.slow
@needs_dmr
def test_every_real_dmr_frame_passes() -> None:
    files = dmr_files()
    assert len(files) >= 100
    refused = [
        (p.name, q.reasons)
        for p in files
        if not (q := QualityGates(CFG).check(load_frame(p), ambient_c=23.0).quality).accepted
    ]
    assert refused == []


def test_synthetic_stream_passes_frame_after_frame() -> None:
    stream = SyntheticStream(seed=1, size=(240, 320), label_pattern=("healthy", "sick"))
    gates = QualityGates(CFG)
    outcomes = [gates.check(celsius_frame(stream.frame(i), i), 22.0).quality for i in range(40)]
    assert all(q.accepted for q in outcomes), [q for q in outcomes if not q.accepted][:2]
    assert outcomes[0].motion_levels is None and outcomes[1].motion_levels is not None


@pytest.mark.parametrize("label", ["healthy", "sick"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_patients_pass_as_celsius_raw16_and_8bit(seed: int, label: str) -> None:
    celsius = render_patient(seed, label, (240, 320)).celsius
    assert gate(celsius_frame(celsius), 22.0) == ()
    assert gate(raw16(celsius), 22.0) == ()
    assert gate(gray_frame(render_celsius(celsius, (20.0, 38.0))), 22.0) == ()


def test_skin_temperature_gate(body: np.ndarray) -> None:
    assert gate(celsius_frame(body - np.float32(7.0))) == ("skin-temperature",)  # cold skin
    assert gate(celsius_frame(body + np.float32(7.5))) == ("skin-temperature",)  # implausibly hot
    # an 8-bit frame has no temperature: the check does not apply
    assert gate(gray_frame(render_celsius(body - np.float32(7.0), (13.0, 31.0)))) == ()


def test_ambient_gate(body: np.ndarray) -> None:
    assert gate(celsius_frame(body), ambient_c=22.0) == ()
    assert gate(celsius_frame(body), ambient_c=36.0) == ("ambient",)
    assert gate(celsius_frame(body), ambient_c=None) == ()  # unknown ambient: nothing to check
    assert gate(gray_frame(render_celsius(body, (20.0, 38.0))), ambient_c=36.0) == ()


def test_framing_gate(body: np.ndarray) -> None:
    h, w = body.shape
    room = np.full((h * 3, w * 3), 21.0, dtype=np.float32)
    room[h : 2 * h, w : 2 * w] = body  # the patient far away: a ninth of the frame at most
    assert gate(celsius_frame(room)) == ("framing",)
    close_up = body[h // 3 : h - h // 10, w // 4 : w - w // 4]  # skin fills the frame
    assert "framing" in gate(celsius_frame(np.ascontiguousarray(close_up)))
    assert body_mask(render_celsius(close_up, (20.0, 38.0)), CFG.min_contrast_levels).sum() == 0
    assert gate(celsius_frame(np.full((h, w), 21.0, np.float32))) == ("skin-temperature", "framing")


def test_motion_gate(body: np.ndarray) -> None:
    gates = QualityGates(CFG)
    assert gates.check(celsius_frame(body)).quality.accepted
    noisy = body + np.random.default_rng(0).normal(0, 0.05, body.shape).astype(np.float32)
    steady = gates.check(celsius_frame(noisy)).quality
    assert steady.accepted and steady.motion_levels is not None and steady.motion_levels < 1.0
    moved = gates.check(celsius_frame(np.roll(noisy, 40, axis=1))).quality
    assert moved.reasons == ("motion",) and moved.motion_levels is not None
    gates.reset()  # a new view starts afresh
    assert gates.check(celsius_frame(body)).quality.motion_levels is None


def test_saturation_gate(body: np.ndarray) -> None:
    frame = raw16(body)
    clipped = frame.pixels.copy()
    mask = body_mask(render_celsius(body, (20.0, 38.0)))
    rows, cols = np.nonzero(mask)
    hot = slice(0, len(rows) // 10)  # a tenth of the body at the sensor's ceiling
    clipped[rows[hot], cols[hot]] = 65535
    assert "saturation" in gate(Frame(clipped, FrameKind.RAW16, 0, "t", 0.0, 0, scale=0.01))
    gray = render_celsius(body, (20.0, 38.0))
    gray[rows[hot], cols[hot]] = 255
    assert gate(gray_frame(gray)) == ("saturation",)
    ceiling = body.copy()
    ceiling[mask & (body > percentile(body[mask], 80))] = float(body.max())  # a Celsius plateau
    assert "saturation" in gate(celsius_frame(ceiling))


def test_frozen_gate(body: np.ndarray) -> None:
    gates = QualityGates(CFG)
    assert gates.check(celsius_frame(body, 0)).quality.accepted
    repeated = gates.check(celsius_frame(body.copy(), 1)).quality
    assert repeated.reasons == ("frozen",) and repeated.motion_levels == 0.0
    assert gates.check(celsius_frame(body + np.float32(0.01), 2)).quality.accepted


def test_reasons_are_all_named_in_order(body: np.ndarray) -> None:
    gates = QualityGates(CFG)
    cold = np.full_like(body, 21.0)
    gates.check(celsius_frame(cold))
    quality = gates.check(celsius_frame(cold.copy()), ambient_c=30.0).quality
    assert quality.reasons == ("skin-temperature", "ambient", "framing", "frozen")
    assert quality.to_dict() == {"accepted": False, "reasons": list(quality.reasons)}


def test_large_frames_are_measured_on_a_subsample() -> None:
    big = np.zeros((960, 1280), np.float32)
    assert work_frame(celsius_frame(big)).pixels.shape == (240, 320)
    small = celsius_frame(np.zeros((120, 160), np.float32))
    assert work_frame(small) is small


def test_percentile_matches_numpy() -> None:
    values = np.random.default_rng(1).normal(32, 1.5, 9999).astype(np.float32)
    for q in (0.0, 50.0, 95.0, 100.0):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-5)
