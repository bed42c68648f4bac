"""SYNTHETIC frontal breast thermograms for demos, tests and pipeline checks; never medical use.

Nothing made here comes from a person. The pictures are plausible enough to exercise the
pipeline end to end (a torso over a cooler background, two breasts, warmer curvy vessels, smooth
gradients, sensor noise) and, for the "sick" label, a localized hot region in one breast with a
left/right asymmetry, the two signs thermography readers look for. A model trained on them learns
these rules of this generator, not medicine.

Everything is seeded: the same seed gives the identical array, and `SyntheticStream` gives the
identical frame for the same (seed, index). numpy and OpenCV only (the runtime's `test://` source
uses this module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
LABELS = ("healthy", "sick")
SYNTHETIC_NOTICE = (
    "SYNTHETIC thermograms made by thermoscreen's generator (pipeline/synthetic.py): no patient, "
    "no medical meaning; for demos, tests and pipeline checks only."
)

_ANATOMY, _PATHOLOGY, _NOISE = 0, 1, 2  # independent random streams per seed


@dataclass(frozen=True, eq=False)
class SyntheticPatient:
    """A synthetic thermogram with the ground truth used to draw it (for tests and demos).

    `lesion_xy` is the hot region's centre in pixels (x, y) and `lesion_side` the image side
    ("left" = smaller x) of the affected breast; both None for healthy patients.
    """

    celsius: F32
    label: str
    seed: int
    midline_x: float
    breast_centers_xy: tuple[tuple[float, float], tuple[float, float]]
    lesion_xy: tuple[float, float] | None
    lesion_side: str | None


def _check(seed: int, label: str, size: tuple[int, int]) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (height, width) with both >= 32, got {size}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> F32:
    """Low-frequency random field in [-1, 1]-ish: a coarse grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, size=cells).astype(np.float32)
    return np.asarray(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), dtype=np.float32)


def _blur(image: F32, sigma: float) -> F32:
    return np.asarray(cv2.GaussianBlur(image, (0, 0), max(sigma, 0.5)), dtype=np.float32)


def _torso_mask(
    rng: np.random.Generator, h: int, w: int, cx: float, half_w: float
) -> npt.NDArray[np.uint8]:
    """Binary silhouette in the DMR-IR pose: chin at the top, arms raised behind the head."""
    ys = np.arange(h, dtype=np.float32) / np.float32(h)
    armpit_y = rng.uniform(0.16, 0.26)
    shoulders = 0.72 + 0.28 * np.clip((ys - 0.05) / max(armpit_y - 0.05, 1e-3), 0.0, 1.0)
    waist = 1.0 - 0.10 * np.clip((ys - 0.75) / 0.25, 0.0, 1.0)
    widths = half_w * shoulders * waist
    xs = np.arange(w, dtype=np.float32)[None, :]
    mask = (np.abs(xs - np.float32(cx)) < widths[:, None]).astype(np.uint8)
    mask[: int(0.05 * h)] = 0
    chin = (int(cx), int(-0.02 * h))
    cv2.ellipse(mask, chin, (int(0.12 * w), int(rng.uniform(0.17, 0.22) * h)), 0, 0, 360, 1, -1)
    arm = max(3, int(w * rng.uniform(0.11, 0.14)))
    for sign in (-1.0, 1.0):
        start = (int(cx + sign * half_w * 0.88), int(armpit_y * h + arm * 0.4))
        end = (int(cx + sign * w * rng.uniform(0.43, 0.5)), -arm)
        cv2.line(mask, start, end, 1, thickness=arm)
    return np.asarray(mask, dtype=np.uint8)


def _vessel_curve(
    rng: np.random.Generator, start: tuple[float, float], heading: float, step: float, n: int
) -> npt.NDArray[np.float32]:
    """A meandering polyline (a superficial vein) as an (n, 2) array of x, y points."""
    points = np.empty((n, 2), dtype=np.float32)
    x, y = start
    angle = heading
    for i in range(n):
        points[i] = (x, y)
        angle += rng.normal(0.0, 0.35)
        x += step * math.cos(angle)
        y += step * math.sin(angle)
    return points


def _vessels(
    rng: np.random.Generator, center: tuple[float, float], radius: float, count: int
) -> list[tuple[npt.NDArray[np.float32], float]]:
    """`count` vessels (polyline, strength) starting in a breast's upper part."""
    out = []
    for _ in range(count):
        start = (
            center[0] + rng.uniform(-0.6, 0.6) * radius,
            center[1] + rng.uniform(-0.9, 0.2) * radius,
        )
        heading = rng.uniform(-math.pi, 0.0)  # upward-ish, as veins run toward the axilla/neck
        pts = _vessel_curve(rng, start, heading, radius * 0.12, int(rng.integers(8, 16)))
        out.append((pts, float(rng.uniform(0.6, 1.0))))
    return out


def _draw(
    canvas: F32, vessels: list[tuple[npt.NDArray[np.float32], float]], thickness: int
) -> None:
    for pts, strength in vessels:
        cv2.polylines(
            canvas,
            [np.round(pts).astype(np.int32)],
            isClosed=False,
            color=strength,
            thickness=thickness,
            lineType=cv2.LINE_AA,
        )


def _mirrored(
    rng: np.random.Generator,
    vessels: list[tuple[npt.NDArray[np.float32], float]],
    mirror_x: float,
    jitter: float,
) -> list[tuple[npt.NDArray[np.float32], float]]:
    """The same vessels reflected about the midline, with a little jitter."""
    out = []
    for pts, strength in vessels:
        flipped = pts.copy()
        flipped[:, 0] = 2.0 * mirror_x - flipped[:, 0]
        flipped += rng.normal(0.0, jitter, size=flipped.shape).astype(np.float32)
        out.append((flipped, strength * float(rng.uniform(0.85, 1.15))))
    return out


def _ellipse_radius(xx: F32, yy: F32, center: tuple[float, float], rx: float, ry: float) -> F32:
    """Normalised elliptical radius: 1.0 on the breast outline."""
    return np.sqrt(((xx - center[0]) / rx) ** 2 + ((yy - center[1]) / ry) ** 2).astype(np.float32)


@dataclass(frozen=True)
class _Breasts:
    centers: tuple[tuple[float, float], tuple[float, float]]
    rx: float
    ry: float
    masks: tuple[F32, F32]


def _background(anat: np.random.Generator, yy: F32, h: int, w: int) -> F32:
    """A cool room with a gentle gradient."""
    t_bg = anat.uniform(20.5, 23.5)
    return (
        np.float32(t_bg)
        + np.float32(anat.uniform(-0.6, 0.6)) * (yy / np.float32(h) - 0.5)
        + np.float32(0.25) * _smooth_field(anat, h, w, (4, 5))
    )


def _skin(
    anat: np.random.Generator, xx: F32, h: int, w: int, unit: float
) -> tuple[F32, npt.NDArray[np.uint8], float]:
    """The torso silhouette and its skin: cooler towards the outline, warm on the sternum."""
    cx = w * (0.5 + anat.uniform(-0.04, 0.04))
    half_w = w * anat.uniform(0.36, 0.42)
    mask = _torso_mask(anat, h, w, cx, half_w)
    dist = np.asarray(cv2.distanceTransform(mask, cv2.DIST_L2, 5), dtype=np.float32)
    t_skin = anat.uniform(31.8, 33.8)
    skin = (
        np.float32(t_skin)
        - np.float32(anat.uniform(1.2, 2.2)) * np.exp(-dist / np.float32(18.0 * unit))
        + np.float32(0.5) * np.exp(-(((xx - np.float32(cx)) / np.float32(0.12 * w)) ** 2))
        + np.float32(0.35) * _smooth_field(anat, h, w, (6, 8))
    )
    return skin, mask, float(cx)


def _breasts(
    anat: np.random.Generator, skin: F32, xx: F32, yy: F32, cx: float, unit: float
) -> _Breasts:
    """Breasts drawn into `skin`: cooler lower-outer surface, warm inframammary fold."""
    h, w = skin.shape
    dx = w * anat.uniform(0.16, 0.2)
    by = h * anat.uniform(0.6, 0.72)
    rx = w * anat.uniform(0.12, 0.155)
    ry = rx * anat.uniform(0.8, 0.98)
    centers = ((cx - dx, by + anat.normal(0, 2) * unit), (cx + dx, by + anat.normal(0, 2) * unit))
    masks: list[F32] = []
    for center in centers:
        r = _ellipse_radius(xx, yy, center, rx, ry)
        inside = _blur((r < 1.0).astype(np.float32), 6.0 * unit)
        below = np.clip((yy - np.float32(center[1])) / np.float32(ry), 0.0, 1.0)
        skin -= np.float32(anat.uniform(0.4, 0.9)) * inside * r**2 * (0.4 + 0.6 * below)
        skin += np.float32(anat.uniform(0.6, 1.1)) * np.exp(-(((r - 1.0) / 0.1) ** 2)) * below
        masks.append(inside)
    natural = anat.uniform(-0.15, 0.15)  # healthy people are not perfectly symmetric either
    skin += np.float32(natural) * (masks[0] - masks[1])
    return _Breasts(centers, float(rx), float(ry), (masks[0], masks[1]))


def _lesion(
    seed: int, breasts: _Breasts, xx: F32, yy: F32, vessels: F32, thickness: int
) -> tuple[F32, tuple[float, float], str]:
    """A localized hot region in one breast, that breast warmer, extra vessels drawn into
    `vessels` on that side: the lesion's temperature field, its centre and its side."""
    w = xx.shape[1]
    path = _rng(seed, _PATHOLOGY)
    side = int(path.integers(0, 2))
    center = breasts.centers[side]
    angle = path.uniform(0.0, 2.0 * math.pi)
    reach = path.uniform(0.0, 0.6)
    lesion_xy = (
        center[0] + reach * breasts.rx * math.cos(angle),
        center[1] + reach * breasts.ry * math.sin(angle),
    )
    sigma = w * path.uniform(0.025, 0.045)
    spot = np.exp(
        -((xx - np.float32(lesion_xy[0])) ** 2 + (yy - np.float32(lesion_xy[1])) ** 2)
        / np.float32(2.0 * sigma * sigma)
    )
    lesion = np.zeros(xx.shape, dtype=np.float32)
    lesion += np.float32(path.uniform(0.8, 2.5)) * spot
    lesion += np.float32(path.uniform(0.3, 0.7)) * breasts.masks[side]
    _draw(vessels, _vessels(path, center, breasts.rx, int(path.integers(2, 5))), thickness)
    return lesion, lesion_xy, ("left", "right")[side]


def render_patient(seed: int, label: str, size: tuple[int, int] = (480, 640)) -> SyntheticPatient:
    """Draw one SYNTHETIC patient; the same seed gives the same anatomy for both labels.

    The anatomy and the sensor noise depend only on the seed; "sick" adds a localized hot region
    (+0.8..2.5 C) in one breast, extra vessels on that side and a warmer affected breast.
    """
    _check(seed, label, size)
    h, w = int(size[0]), int(size[1])
    unit = min(h / 480.0, w / 640.0)
    anat = _rng(seed, _ANATOMY)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = _background(anat, yy, h, w)
    skin, mask, cx = _skin(anat, xx, h, w, unit)
    breasts = _breasts(anat, skin, xx, yy, cx, unit)

    # vessels: roughly mirrored on both sides
    vessels = np.zeros((h, w), dtype=np.float32)
    thickness = max(1, round(3 * unit))
    left = _vessels(anat, breasts.centers[0], breasts.rx, int(anat.integers(2, 5)))
    _draw(vessels, left + _mirrored(anat, left, cx, breasts.rx * 0.03), thickness)
    vessel_amp = np.float32(anat.uniform(0.4, 0.8))

    lesion_xy: tuple[float, float] | None = None
    lesion_side: str | None = None
    lesion = np.zeros((h, w), dtype=np.float32)
    if label == "sick":
        lesion, lesion_xy, lesion_side = _lesion(seed, breasts, xx, yy, vessels, thickness)

    vessels = _blur(vessels, 1.5 * unit) * vessel_amp
    skin += vessels + lesion

    soft = _blur(mask.astype(np.float32), 2.0 * unit)
    celsius = background + soft * (skin - background)
    noise = _rng(seed, _NOISE).standard_normal((h, w), dtype=np.float32) * np.float32(0.05)
    celsius = np.asarray(celsius + noise, dtype=np.float32)
    return SyntheticPatient(
        celsius=celsius,
        label=label,
        seed=seed,
        midline_x=float(cx),
        breast_centers_xy=(
            (float(breasts.centers[0][0]), float(breasts.centers[0][1])),
            (float(breasts.centers[1][0]), float(breasts.centers[1][1])),
        ),
        lesion_xy=lesion_xy,
        lesion_side=lesion_side,
    )


def synth_thermogram(seed: int, label: str, size: tuple[int, int] = (480, 640)) -> F32:
    """A SYNTHETIC frontal thermogram in degrees Celsius (float32, `size` = (height, width))."""
    return render_patient(seed, label, size).celsius


def patient_seed(seed: int, patient: int) -> int:
    """The seed of patient number `patient` in a dataset or stream made with `seed`."""
    if seed < 0 or patient < 0:
        raise ValueError(f"seed and patient must be >= 0, got {seed}, {patient}")
    return int(np.random.SeedSequence([seed, patient, 7]).generate_state(1)[0])


class SyntheticStream:
    """An endless SYNTHETIC thermal video: patients in turn, each breathing for a while.

    Patient p shows `label_pattern[p % len(label_pattern)]` for `frames_per_patient` frames.
    The distinct patients are rendered once up front; a frame is a base image shifted by a
    sub-pixel breathing motion plus a slow drift and sensor noise, so it costs a few
    milliseconds. `frame(index)` is a pure function of (seed, index).
    """

    NOISE_BANK = 6

    def __init__(
        self,
        seed: int,
        size: tuple[int, int] = (480, 640),
        label_pattern: Sequence[str] = LABELS,
        frames_per_patient: int = 150,
        distinct_patients: int | None = None,
        wave_c: float = 0.04,
    ) -> None:
        """`wave_c`: amplitude of the slow whole-frame drift (a 300-frame sine), in C."""
        pattern = tuple(label_pattern)
        if not pattern:
            raise ValueError("label_pattern must name at least one label")
        for label in pattern:
            _check(seed, label, size)
        if frames_per_patient < 1:
            raise ValueError(f"frames_per_patient must be >= 1, got {frames_per_patient}")
        n = distinct_patients if distinct_patients is not None else max(4, len(pattern))
        if n < 1:
            raise ValueError(f"distinct_patients must be >= 1, got {distinct_patients}")
        n = -(-n // len(pattern)) * len(pattern)  # a multiple, so label(p) is the base's label
        self.seed = seed
        self.size = (int(size[0]), int(size[1]))
        self.label_pattern = pattern
        self.frames_per_patient = frames_per_patient
        self.wave_c = wave_c
        self._bases = [
            synth_thermogram(patient_seed(seed, b), pattern[b % len(pattern)], self.size)
            for b in range(n)
        ]
        noise_rng = _rng(seed, _NOISE + 10)
        self._noise = [
            noise_rng.standard_normal(self.size, dtype=np.float32) * np.float32(0.05)
            for _ in range(self.NOISE_BANK)
        ]

    @property
    def distinct_patients(self) -> int:
        return len(self._bases)

    def patient(self, index: int) -> int:
        """Which distinct patient (0 .. distinct_patients-1) frame `index` shows."""
        return (index // self.frames_per_patient) % len(self._bases)

    def label(self, index: int) -> str:
        """The label of the synthetic patient shown in frame `index`."""
        return self.label_pattern[(index // self.frames_per_patient) % len(self.label_pattern)]

    def frame(self, index: int) -> F32:
        """Frame `index` in degrees Celsius (float32 HxW); identical for the same (seed, index)."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        base = self._bases[self.patient(index)]
        phase = 2.0 * math.pi * index / 120.0  # ~4 s breathing cycle at 30 fps
        shift = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.5 * math.sin(phase)]], dtype=np.float32)
        h, w = self.size
        out = np.asarray(
            cv2.warpAffine(
                base, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            ),
            dtype=np.float32,
        )
        noise = self._noise[(index * 7 + index // self.NOISE_BANK) % self.NOISE_BANK]
        out += noise
        out += np.float32(self.wave_c * math.sin(2.0 * math.pi * index / 300.0))
        return out
