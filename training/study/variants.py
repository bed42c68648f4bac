"""Preprocessing and region variants of the shortcut checks: the pipeline's render with another
window or equalization, the abdominal marker inpainted, or the frame cropped to the breast band.

Region variants are diagnostics only: the pipeline renders whole frames, so only `full` variants
can be served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.preprocess import PreprocessConfig, equalize, render_celsius

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
Region = Literal["full", "mask_marker", "crop_breast"]
Equalization = Literal["global", "clahe", "none"]
# Geometry of the region checks, as fractions of the frame (decided by looking at renders of
# patients of both eras, not by scores): the breasts lie between rows ~25% and ~80%; a cold square
# marker sits on the abdomen below the breasts (rows ~65-95%, central columns) in most pictures
# of both eras, higher in the frame in the 2018-2020 ones.
CROP_ROWS = (0.25, 0.80)
CROP_COLS = (0.10, 0.90)
MARKER_ROWS = (0.45, 1.0)
MARKER_COLS = (0.30, 0.70)
MARKER_COLDER_C = 2.5  # marker pixels are this much colder than the body's median, or more
MARKER_SIDE_PX = (10, 90)  # side of the square in a 640x480 frame
MARKER_RIM_PX = 3  # the marker's blurred rim, inpainted too


@dataclass(frozen=True)
class Variant:
    """A preprocessing candidate: the pipeline's PreprocessConfig plus a region check."""

    name: str
    preprocessing: PreprocessConfig
    region: Region = "full"

    @property
    def servable(self) -> bool:
        """The pipeline renders whole frames; region checks are diagnostics only."""
        return self.region == "full"


def variant(
    window: tuple[float, float] | None, eq: Equalization, region: Region = "full"
) -> Variant:
    """The variant named like `20-38C/global`, `minmax/clahe+mask_marker`."""
    wname = "minmax" if window is None else f"{window[0]:g}-{window[1]:g}C"
    cfg = PreprocessConfig(window_c=window, equalization=eq)
    suffix = "" if region == "full" else f"+{region}"
    return Variant(f"{wname}/{eq}{suffix}", cfg, region)


DEFAULT_VARIANT = variant((20.0, 38.0), "global")


def ablation_variants(quick: bool) -> list[Variant]:
    """The preprocessing and region checks (fixed in advance; never used to choose)."""
    if quick:
        return [DEFAULT_VARIANT, variant((20.0, 38.0), "global", "crop_breast")]
    return [
        DEFAULT_VARIANT,
        variant((20.0, 38.0), "clahe"),
        variant(None, "global"),
        variant(None, "none"),
        variant((20.0, 38.0), "global", "mask_marker"),
        variant((20.0, 38.0), "global", "crop_breast"),
    ]


def _is_marker(stats: npt.NDArray[np.int32], shape: tuple[int, ...]) -> bool:
    """A connected cold blob that is square, solid, of marker size and inside the search box."""
    x, y, bw, bh, area = (int(v) for v in stats)
    touches = x == 0 or y == 0 or x + bw == shape[1] or y + bh == shape[0]
    square = 0.6 <= bw / bh <= 1.6 and area >= 0.6 * bw * bh
    return not touches and square and MARKER_SIDE_PX[0] <= max(bw, bh) <= MARKER_SIDE_PX[1]


def mask_marker(celsius: F32) -> tuple[F32, bool]:
    """Fill the abdominal marker (a cold, uniform, roughly square blob below the breasts) with the
    temperature of the skin around it. Returns the new matrix and whether a marker was found."""
    h, w = celsius.shape
    r0, r1 = int(h * MARKER_ROWS[0]), int(h * MARKER_ROWS[1])
    c0, c1 = int(w * MARKER_COLS[0]), int(w * MARKER_COLS[1])
    body = float(np.median(celsius[int(h * 0.3) : int(h * 0.7), int(w * 0.25) : int(w * 0.75)]))
    sub = celsius[r0:r1, c0:c1]
    cold = (sub < body - MARKER_COLDER_C).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(cold, connectivity=4)
    mask = np.zeros((h, w), dtype=np.uint8)
    m = MARKER_RIM_PX
    for i in range(1, n):
        if not _is_marker(stats[i], sub.shape):
            continue
        x, y, bw, bh = (int(v) for v in stats[i][:4])
        mask[max(r0 + y - m, 0) : r0 + y + bh + m, max(c0 + x - m, 0) : c0 + x + bw + m] = 1
    if not mask.any():
        return celsius, False
    filled = cv2.inpaint(celsius.astype(np.float32), mask, 7, cv2.INPAINT_TELEA)
    return np.asarray(filled, dtype=np.float32), True


def render_variant(celsius: F32, v: Variant) -> list[U8]:
    """The pipeline's render (window or min-max, then equalization) with the region check first."""
    out = []
    for c in celsius:
        h, w = c.shape
        if v.region == "mask_marker":
            c, _ = mask_marker(c)
        elif v.region == "crop_breast":
            c = c[
                int(h * CROP_ROWS[0]) : int(h * CROP_ROWS[1]),
                int(w * CROP_COLS[0]) : int(w * CROP_COLS[1]),
            ]
        gray = render_celsius(c, v.preprocessing.window_c)
        out.append(equalize(gray, v.preprocessing))
    return out
