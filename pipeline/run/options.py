"""What each stage of a run needs to know, and nothing more.

`pipeline.run.wiring` maps the whole `AppConfig` onto these small frozen dataclasses once, before
the first frame; the stage threads read only their own options, never the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.preprocess import PreprocessConfig


@dataclass(frozen=True)
class CaptureOptions:
    """The capture loop: how long one read waits and when a silent replay counts as stuck."""

    read_timeout_s: float = 0.5  # one `Source.read` waits this long before re-checking stop
    stall_s: float = 0.0  # fail when no frame arrives for this long; 0 waits forever (live)
    max_frames: int | None = None  # stop after this many captured frames


@dataclass(frozen=True)
class ClassifyOptions:
    """The classify workers: how a frame becomes model input."""

    preprocess: PreprocessConfig


@dataclass(frozen=True)
class PublishOptions:
    """The publish loop: the topic ids and how often state and stats go out."""

    device_id: str
    camera_id: str
    state_interval_s: float = 0.5  # the retained state at most this often (0: every result),
    # and at once when the rolling verdict's label changes
    stats_interval_s: float = 10.0  # a `stats` message at most this often


@dataclass(frozen=True)
class QueueOptions:
    """How frames travel between stages: live (newest wins, one worker) or a replay with
    `workers` classify lanes, each with its own bounded frame and result queue."""

    live: bool
    workers: int = 1
    frames_per_worker: int = 8  # replay capture -> classify bound (backpressure)
    results_per_worker: int = 32  # classify -> publish bound
    output: int = 4  # publish -> annotated output bound (live drops the oldest)

    def __post_init__(self) -> None:
        if self.workers < 1 or (self.live and self.workers != 1):
            raise ValueError(f"workers must be 1 live and >= 1 in a replay, got {self.workers}")
        for name in ("frames_per_worker", "results_per_worker", "output"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StageOptions:
    """Everything the stages of one run are told, one part per stage."""

    queues: QueueOptions
    capture: CaptureOptions
    classify: ClassifyOptions
    publish: PublishOptions

    @property
    def live(self) -> bool:
        return self.queues.live

    @property
    def workers(self) -> int:
        return self.queues.workers
