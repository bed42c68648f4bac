"""The one place that turns a thermal frame into model input (training imports this module).

Math (DESIGN.md, "Preprocessing"):

1. render: celsius or raw16 -> uint8 through a thermal window (default 20-38 C) or per-frame
   min-max; gray8 is used as is. Scaling: v = floor(clip((C - lo) / (hi - lo), 0, 1) * 255 + 0.5).
2. equalize: global histogram equalization (OpenCV's equalizeHist, the seed's method), CLAHE, or
   none.
3. model input, exactly as jetson-inference imageNet prepares an ONNX model's input: gray replicated
   to RGB; nearest-neighbour stretch of the whole frame with source index
   floor(dst_index * float32(in_size / out_size)); x / 255, minus mean, divided by std; NCHW
   float32.
"""

from __future__ import annotations

import functools
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.types import Frame, FrameKind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


class PreprocessConfig(BaseModel):
    """How frames become model input. Stored in every model manifest; the pipeline refuses a
    model whose preprocessing disagrees with its own unless told to follow the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_c: tuple[float, float] | None = Field(
        default=(20.0, 38.0),
        description="Thermal window [low, high] in Celsius mapped to 0-255; null for per-frame "
        "min-max.",
    )
    equalization: Literal["global", "clahe", "none"] = Field(
        default="global", description="Histogram equalization after rendering to 8 bits."
    )
    clahe_clip_limit: float = Field(default=2.0, gt=0, description="CLAHE clip limit.")
    clahe_tile_grid: int = Field(default=8, ge=1, description="CLAHE tiles per side.")

    @model_validator(mode="after")
    def _window_order(self) -> PreprocessConfig:
        if self.window_c is not None and not self.window_c[0] < self.window_c[1]:
            raise ValueError(f"window_c must be [low, high] with low < high, got {self.window_c}")
        return self


def scale_to_u8(values: npt.NDArray[np.floating], low: float, high: float) -> U8:
    """Map [low, high] linearly onto 0-255 with clipping and round-half-up.

    The float32 steps run in one scratch buffer (the same operations in the same order as
    `floor(clip((v - low) / span, 0, 1) * 255 + 0.5)`, so the same bits): one allocation per
    frame instead of six."""
    span = np.float32(high - low)
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    buf = np.subtract(values, np.float32(low), dtype=np.float32)
    np.divide(buf, span, out=buf)
    np.clip(buf, 0.0, 1.0, out=buf)
    np.multiply(buf, np.float32(255.0), out=buf)
    np.add(buf, np.float32(0.5), out=buf)
    np.floor(buf, out=buf)
    out: U8 = buf.astype(np.uint8)
    return out


@functools.lru_cache(maxsize=16)
def raw16_table(scale: float, offset: float, window_c: tuple[float, float]) -> U8:
    """uint8 rendering of every 16-bit count: entry n is what `render` makes of a pixel n.

    A radiometric frame's counts are 16-bit, so the whole thermal window is a 65,536-entry
    table computed once with the frame's own float32 steps (`Frame.celsius`, then
    `scale_to_u8`): the same bits for a quarter of the work, and no float frame."""
    counts = np.arange(1 << 16, dtype=np.uint16)
    frame = Frame(counts, FrameKind.RAW16, 0, "", 0.0, 0, scale=scale, offset=offset)
    celsius = frame.celsius()
    assert celsius is not None
    table = scale_to_u8(celsius, window_c[0], window_c[1])
    table.setflags(write=False)
    return table


def render_celsius(celsius: npt.NDArray[np.floating], window_c: tuple[float, float] | None) -> U8:
    """Celsius matrix -> uint8, through the window or per-frame min-max (window_c=None)."""
    if window_c is not None:
        return scale_to_u8(celsius, window_c[0], window_c[1])
    return scale_to_u8(celsius, float(np.min(celsius)), float(np.max(celsius)))


def equalize(gray: U8, cfg: PreprocessConfig) -> U8:
    """Histogram equalization as configured (global is OpenCV's equalizeHist)."""
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    if cfg.equalization == "global":
        out: U8 = np.asarray(cv2.equalizeHist(gray), dtype=np.uint8)
        return out
    if cfg.equalization == "clahe":
        clahe = cv2.createCLAHE(
            clipLimit=cfg.clahe_clip_limit, tileGridSize=(cfg.clahe_tile_grid, cfg.clahe_tile_grid)
        )
        out = np.asarray(clahe.apply(gray), dtype=np.uint8)
        return out
    return gray


def render_on_calling_threads() -> None:
    """OpenCV's own thread pool off for the rest of the process: each classify worker renders
    its frames on its own thread. On a core that another worker's model run keeps busy, the
    pool split every `equalizeHist` in two, woke a pool thread and spun waiting for it: about
    a quarter of a classify thread's CPU outside the model (docs/benchmark.md, 2026-12-01).
    The results are the same bits either way."""
    cv2.setNumThreads(1)


def render(frame: Frame, cfg: PreprocessConfig) -> U8:
    """A frame -> equalized uint8 gray image, the picture the model and the operator see."""
    if frame.kind is FrameKind.GRAY8:
        gray = np.asarray(frame.pixels, dtype=np.uint8)
    elif frame.kind is FrameKind.RAW16 and cfg.window_c is not None:
        table = raw16_table(float(frame.scale), float(frame.offset), tuple(cfg.window_c))
        gray = np.take(table, np.asarray(frame.pixels, dtype=np.uint16))
    else:
        celsius = frame.celsius()
        assert celsius is not None
        gray = render_celsius(celsius, cfg.window_c)
    return equalize(gray, cfg)


def gray_to_rgb(gray: U8) -> U8:
    """R = G = B, HxWx3."""
    return np.repeat(gray[:, :, None], 3, axis=2)


def nearest_indices(in_size: int, out_size: int) -> npt.NDArray[np.intp]:
    """Source index per destination index, as imageNet's CUDA kernel computes it in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    idx = (np.arange(out_size, dtype=np.float32) * scale).astype(np.intp)
    return np.minimum(idx, in_size - 1)


def model_input(
    image: U8,
    size: tuple[int, int] = (224, 224),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> F32:
    """uint8 gray (HxW) or RGB (HxWx3) -> float32 [1, 3, size_h, size_w], imageNet's tensor.

    `size` is (height, width). Gray input is treated as R = G = B without materialising RGB.
    A uint8 pixel has 256 possible values, so each channel's (v / 255 - mean) / std comes from a
    256-entry table computed with the same float32 operations: bit-identical, and no per-frame
    float temporaries (`thermoscreen bench`: fewer page faults beside ONNX Runtime).
    """
    out_h, out_w = size
    rows = nearest_indices(image.shape[0], out_h)
    cols = nearest_indices(image.shape[1], out_w)
    small = np.ascontiguousarray(image[rows][:, cols])  # rows, then columns: 5x faster
    tables = channel_tables(tuple(float(v) for v in mean), tuple(float(v) for v in std))
    out = np.empty((1, 3, out_h, out_w), dtype=np.float32)
    for c in range(3):
        plane = small if small.ndim == 2 else np.ascontiguousarray(small[:, :, c])
        cv2.LUT(plane, tables[c], dst=out[0, c])
    return out


@functools.lru_cache(maxsize=8)
def channel_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> F32:
    """[3, 256] float32: entry v of channel c is (float32(v) / 255 - mean[c]) / std[c]."""
    unit = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
    tables = np.empty((3, 256), dtype=np.float32)
    for c in range(3):
        np.subtract(unit, np.float32(mean[c]), out=tables[c])
        tables[c] /= np.float32(std[c])
    tables.setflags(write=False)
    return tables
