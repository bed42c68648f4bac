"""Fake `jetson_utils`: the CUDA memory calls the jetson backend uses, backed by numpy arrays.

Interface as documented by jetson-utils' Python bindings (PyCUDA.cpp, PyNumpy.cpp):
`cudaAllocMapped(size=, width=, height=, format=, timestamp=, like=, clear=)` returns a cudaImage
when width/height/format are given; `cudaFromNumpy(array, isBGR=False, timestamp=0)` copies an
ndarray into a new mapped cudaImage (uint8 stays uint8, anything else becomes float32; the format
follows dtype and channel count); `cudaToNumpy(image)` wraps mapped memory without copying.
Every call is recorded in CALLS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CALLS: list[tuple[str, dict[str, Any]]] = []

# format -> (channels, dtype)
_FORMATS: dict[str, tuple[int, type]] = {
    "gray8": (1, np.uint8),
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "rgba8": (4, np.uint8),
    "bgra8": (4, np.uint8),
    "gray32f": (1, np.float32),
    "rgb32f": (3, np.float32),
    "bgr32f": (3, np.float32),
    "rgba32f": (4, np.float32),
    "bgra32f": (4, np.float32),
}


def reset() -> None:
    CALLS.clear()


class cudaImage:
    """Mapped image memory: `_data` stands for the zero-copy buffer both CPU and GPU see."""

    def __init__(
        self,
        width: int,
        height: int,
        format: str = "rgb8",
        timestamp: int = 0,
        mapped: bool = True,
    ) -> None:
        if format not in _FORMATS:
            raise Exception("cudaImage.__init()__ had invalid image format")
        if width <= 0 or height <= 0:
            raise Exception("cudaImage.__init()__ had invalid width/height")
        channels, dtype = _FORMATS[format]
        self.width = int(width)
        self.height = int(height)
        self.channels = channels
        self.format = format
        self.timestamp = timestamp
        self.mapped = mapped
        self.shape = (self.height, self.width, channels)
        self._data = np.zeros(self.shape, dtype=dtype)

    @property
    def size(self) -> int:
        return int(self._data.nbytes)


def cudaAllocMapped(
    size: int = 0,
    width: float = 0,
    height: float = 0,
    format: str | None = None,
    timestamp: int = 0,
    like: Any = None,
    clear: bool = True,
) -> cudaImage:
    CALLS.append(("cudaAllocMapped", {"width": width, "height": height, "format": format}))
    if like is not None:
        return cudaImage(like.width, like.height, like.format, timestamp)
    if width <= 0 or height <= 0 or format is None:
        # the real one returns a plain cudaMemory block for size=; the backend never asks for it
        raise Exception("fake cudaAllocMapped() supports images only (width, height, format)")
    return cudaImage(int(width), int(height), format, timestamp)


def cudaFromNumpy(array: Any, isBGR: bool = False, timestamp: int = 0) -> cudaImage:
    if not isinstance(array, np.ndarray):
        raise Exception("Object passed to cudaFromNumpy() wasn't a numpy ndarray")
    CALLS.append(("cudaFromNumpy", {"shape": array.shape, "dtype": str(array.dtype)}))
    data = array if array.dtype == np.uint8 else array.astype(np.float32)
    suffix = "8" if data.dtype == np.uint8 else "32f"
    channels = 1 if data.ndim == 2 else data.shape[2]
    names = {1: "gray", 3: "bgr" if isBGR else "rgb", 4: "bgra" if isBGR else "rgba"}
    if data.ndim not in (2, 3) or channels not in names:
        raise Exception("fake cudaFromNumpy() only models image arrays")
    img = cudaImage(data.shape[1], data.shape[0], names[channels] + suffix, timestamp)
    img._data[...] = data.reshape(img.shape)
    return img


def cudaToNumpy(image: cudaImage) -> np.ndarray:
    CALLS.append(("cudaToNumpy", {"format": image.format}))
    if not image.mapped:
        raise Exception(
            "cudaToNumpy() needs to use CUDA mapped memory as input (allocate with mapped=1)"
        )
    return image._data  # shares memory, like the real one


def cudaDeviceSynchronize() -> None:
    CALLS.append(("cudaDeviceSynchronize", {}))
