"""8-bit renderings of a temperature matrix: what the pipeline sees from a radiometric camera
(window, then equalization) and from an 8-bit source (a DMR-IR JPEG, a non-radiometric camera:
a min-max or window rendering, JPEG-compressed, then the same equalization).

Used twice: as training augmentation (the model must score a JPEG as it scores a matrix) and to
measure rendering robustness in development, by scoring each test patient's matrix rendered to
an 8-bit JPEG and back through the pipeline's gray8 path.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.preprocess import PreprocessConfig, equalize, render_celsius

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Rendering:
    """Matrix -> 8 bits (a window in Celsius, or per-frame min-max when None), optionally a JPEG
    round trip at `jpeg_quality`, then the model's equalization."""

    name: str
    window_c: tuple[float, float] | None = (20.0, 38.0)
    jpeg_quality: int | None = None

    def __call__(self, celsius: F32, cfg: PreprocessConfig) -> U8:
        gray = render_celsius(celsius, self.window_c)
        if self.jpeg_quality is not None:
            gray = jpeg_round_trip(gray, self.jpeg_quality)
        return equalize(gray, cfg)


def jpeg_round_trip(gray: U8, quality: int) -> U8:
    """Encode as a baseline gray JPEG at `quality` and decode again (what a JPEG file holds)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(gray), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding at quality {quality} failed")
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), dtype=np.uint8)


MATRIX = Rendering("matrix (window 20-38 C)")
# the rendering-augmentation copies a frozen probe trains on, beside MATRIX (fixed in advance;
# one copy, because feature extraction is the study's slowest step on a shared CPU)
TRAIN_AUGMENT = (Rendering("min-max JPEG q70", None, 70),)
# how development patients are scored as 8-bit JPEGs (a quality never trained on)
TEST_JPEG = (Rendering("min-max JPEG q90", None, 90),)


def random_rendering(celsius: F32, cfg: PreprocessConfig, rng: np.random.Generator) -> U8:
    """One random rendering for end-to-end training: the matrix path half of the time, else a
    min-max or jittered-window rendering, JPEG-compressed (quality 50-95) two times in three."""
    if rng.random() < 0.5:
        return MATRIX(celsius, cfg)
    window: tuple[float, float] | None = None
    if rng.random() < 0.5:
        lo = float(rng.uniform(18.0, 26.0))
        window = (lo, lo + float(rng.uniform(10.0, 18.0)))
    quality = int(rng.integers(50, 96)) if rng.random() < 2 / 3 else None
    return Rendering("random", window, quality)(celsius, cfg)
