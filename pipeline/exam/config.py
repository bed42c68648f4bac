"""The exam's settings (`exam:` in config/*.yaml): protocol times, drift limit, quality gates.

Defaults follow the seed's protocol (15 minutes of acclimatization, then a skin-temperature drift
under 0.1 C/min) and DESIGN.md's gate examples. Every limit is configurable because cameras,
rooms and clinics differ; the values in force are written into each exam record.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_range(name: str, low_high: tuple[float, float]) -> None:
    if not low_high[0] < low_high[1]:
        raise ValueError(f"{name} must be [low, high] with low < high, got {list(low_high)}")


class AcclimatizationConfig(_Strict):
    """When a resting patient counts as acclimatized (DESIGN.md, "The screening exam")."""

    min_s: float = Field(
        default=900.0,
        ge=0,
        le=7200,
        description="Minimum rest before the exam can become ready, in seconds (seed: 15 min).",
    )
    drift_limit_c_per_min: float = Field(
        default=0.1,
        gt=0,
        le=5,
        description="Ready only when |skin-temperature drift| is at most this (C/min); "
        "radiometric sources only.",
    )
    drift_window_s: float = Field(
        default=180.0,
        ge=10,
        le=1800,
        description="The drift is the least-squares slope of the body's mean skin temperature "
        "over this many most recent seconds.",
    )
    min_coverage: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="A drift counts only when its samples span at least this fraction of "
        "drift_window_s (a camera that just started has no trend yet).",
    )
    sample_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between skin-temperature samples during acclimatization.",
    )


class GateConfig(_Strict):
    """Per-frame quality gates; a frame failing any is published with its reasons and not
    counted for the exam."""

    window_c: tuple[float, float] = Field(
        default=(20.0, 38.0),
        description="Celsius window that renders radiometric frames to 8 bits for the body mask "
        "and the motion gate (not the model's rendering).",
    )
    min_contrast_levels: float = Field(
        default=25.0,
        ge=0,
        le=255,
        description="The body mask must be at least this many grey levels of the gate rendering "
        "warmer than the rest of the frame (about 1.8 C with the default window), else the frame "
        "shows no body (skin filling the frame, an empty room).",
    )
    skin_p95_c: tuple[float, float] = Field(
        default=(28.0, 38.5),
        description="Plausible skin temperature: the body's 95th percentile must lie in "
        "[low, high] Celsius (radiometric sources).",
    )
    body_fraction: tuple[float, float] = Field(
        default=(0.2, 0.95),
        description="Framing: the body mask's share of the frame must lie in [low, high].",
    )
    motion_max_levels: float = Field(
        default=6.0,
        gt=0,
        le=255,
        description="Motion/blur: largest mean absolute change from the previous frame, in "
        "8-bit grey levels of the gate rendering.",
    )
    saturation_max_fraction: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Saturation: largest share of body pixels at the sensor's ceiling or floor.",
    )
    ambient_margin_c: float = Field(
        default=0.0,
        ge=-10,
        le=10,
        description="Ambient gate: refuse frames when ambient_c > body mean skin temperature "
        "+ this margin (radiometric sources with a known ambient temperature).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> GateConfig:
        _check_range("window_c", self.window_c)
        _check_range("skin_p95_c", self.skin_p95_c)
        _check_range("body_fraction", self.body_fraction)
        return self


class ExamConfig(_Strict):
    """The screening exam: where records go, the protocol and the quality gates."""

    exams_dir: Path = Field(
        default=Path("var/exams"),
        description="Folder of exam records (<exams_dir>/<exam_id>/exam.json, key frames, "
        "report.html); created 0700, files 0600.",
    )
    acclimatization: AcclimatizationConfig = Field(
        default_factory=AcclimatizationConfig, description="When the patient counts as rested."
    )
    gates: GateConfig = Field(default_factory=GateConfig, description="Per-frame quality gates.")
    ambient_c_range: tuple[float, float] = Field(
        default=(10.0, 40.0),
        description="Ambient temperatures accepted from commands and sensors (Celsius); values "
        "outside are refused as a typo or a broken sensor.",
    )
    rolling_frames: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="The rolling score (live display only, never the exam's result) averages the "
        "last N accepted frames of the model's views.",
    )
    max_score_points: int = Field(
        default=2000,
        ge=10,
        le=100_000,
        description="Score-over-time points kept per exam for the report (thinned evenly beyond).",
    )
    ambient_topic: str | None = Field(
        default=None,
        description="MQTT topic of a room sensor publishing ambient_c/humidity_pct JSON; null for "
        "none (ambient then comes only from exam commands).",
    )

    @model_validator(mode="after")
    def _ranges(self) -> ExamConfig:
        _check_range("ambient_c_range", self.ambient_c_range)
        return self
