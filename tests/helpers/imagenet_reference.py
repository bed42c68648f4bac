"""jetson-inference imageNet's input tensor, transcribed one destination pixel at a time.

A plain per-pixel transcription of imageNet's ONNX preprocessing (cudaTensorNormMeanRGB): for
each destination pixel, source = int(float32(dst) * float32(in / out)) per axis; value =
((float32(v) * float32(1 / 255)) - mean) / std in float32; planar RGB. It shares no code with
pipeline.preprocess, so serving's and training's tensors can be checked against it.
"""

from __future__ import annotations

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def reference_tensor(image: np.ndarray, out_h: int = 224, out_w: int = 224) -> np.ndarray:
    """imageNet's input tensor, one destination pixel at a time."""
    in_h, in_w = image.shape[:2]
    scale_x = np.float32(in_w) / np.float32(out_w)
    scale_y = np.float32(in_h) / np.float32(out_h)
    multiplier = np.float32(1.0) / np.float32(255.0)
    # each channel's value depends on the source byte only: tabulate it once per byte
    table = [
        [
            float((np.float32(v) * multiplier - np.float32(MEAN[c])) / np.float32(STD[c]))
            for v in range(256)
        ]
        for c in range(3)
    ]
    pixels = image.tolist()
    gray = image.ndim == 2
    planes = [[[0.0] * out_w for _ in range(out_h)] for _ in range(3)]
    for y in range(out_h):
        src_row = pixels[int(np.float32(y) * scale_y)]
        for x in range(out_w):
            px = src_row[int(np.float32(x) * scale_x)]
            for c in range(3):
                planes[c][y][x] = table[c][px if gray else px[c]]
    return np.array([planes], dtype=np.float32)


def crafted(h: int, w: int) -> np.ndarray:
    """Every column and row distinguishable, so a resize off by one pixel changes the tensor."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 7 + yy * 13 + (xx * yy) % 5) % 256).astype(np.uint8)
