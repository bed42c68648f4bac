"""Camera profiles: how a radiometric camera's raw buffer becomes kelvin.

A profile names the caps a capture pipeline asks the camera for, the linear raw -> kelvin map
(`K = raw * scale_k + offset_k`, the same map `Frame.celsius()` applies to RAW16 frames) and,
for cameras that pack temperature into a video format, the function that cuts the raw counts out
of the buffer.

- `lepton`: FLIR Lepton 3.5 on a PureThermal board, UVC Y16 (`GRAY16_LE`) in TLinear mode,
  centi-kelvin: K = raw * 0.01.
- `p2pro` / `tc001`: InfiRay P2 Pro and TOPDON TC001 (same module). The UVC stream is YUY2
  256x384: the top 192 rows are the rendered image, the bottom 192 rows carry one little-endian
  uint16 per pixel, K = raw / 64.
- `ax5`: FLIR A35/A65 (Ax5) GigE Vision through `aravissrc`, Mono16 (`GRAY16_LE`) in TLinear
  low-resolution mode, K = raw * 0.04.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.types import KELVIN_OFFSET

U16 = npt.NDArray[np.uint16]
SplitFn = Callable[[npt.NDArray[np.uint8], int, int, int], U16]


class ProfileError(ValueError):
    """Unknown profile name or a buffer that does not fit the profile."""


def split_p2pro(data: npt.NDArray[np.uint8], width: int, height: int, stride: int) -> U16:
    """YUY2 256x384 buffer -> the bottom half's raw counts (192x256 uint16, little-endian).

    `data` is the whole buffer as bytes (uint8), `stride` the bytes per row (>= width * 2).
    Only a view is taken; the caller owns the copy.
    """
    if height % 2 != 0:
        raise ProfileError(f"p2pro frame height {height} is odd; expected 384 (image + raw halves)")
    if data.size < stride * height:
        raise ProfileError(
            f"p2pro buffer has {data.size} bytes, "
            f"expected {stride * height} ({width}x{height} YUY2)"
        )
    half = height // 2
    rows = data[half * stride : height * stride].reshape(half, stride)[:, : width * 2]
    return np.ascontiguousarray(rows).view("<u2").reshape(half, width).astype(np.uint16, copy=False)


@dataclass(frozen=True)
class CameraProfile:
    """What a radiometric camera sends and how its counts map to kelvin."""

    name: str
    gst_format: str  # GStreamer raw video format asked for in the caps
    scale_k: float  # kelvin per count
    offset_k: float = 0.0  # kelvin at count 0
    width: int | None = None  # fixed frame size the camera must deliver, when it has one
    height: int | None = None
    split: SplitFn | None = None  # cuts raw counts out of a packed buffer
    description: str = ""

    @property
    def resolution_c(self) -> float:
        """Smallest temperature step one count represents (the profile's precision)."""
        return self.scale_k

    def caps(self, width: int | None = None, height: int | None = None) -> str:
        """Caps string for the capture pipeline; the profile's fixed size wins over options."""
        parts = ["video/x-raw", f"format={self.gst_format}"]
        w = self.width or width
        h = self.height or height
        if w:
            parts.append(f"width={w}")
        if h:
            parts.append(f"height={h}")
        return ",".join(parts)

    def to_kelvin(self, raw: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        return raw.astype(np.float32) * np.float32(self.scale_k) + np.float32(self.offset_k)

    def to_celsius(self, raw: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        return self.to_kelvin(raw) - np.float32(KELVIN_OFFSET)

    def from_celsius(self, celsius: npt.ArrayLike) -> U16:
        """Inverse map (rounded, clipped to uint16): used to craft buffers and recordings."""
        kelvin = np.asarray(celsius, dtype=np.float64) + KELVIN_OFFSET
        counts = np.rint((kelvin - self.offset_k) / self.scale_k)
        return np.clip(counts, 0, 65535).astype(np.uint16)


_P2PRO = CameraProfile(
    name="p2pro",
    gst_format="YUY2",
    scale_k=1.0 / 64.0,
    width=256,
    height=384,
    split=split_p2pro,
    description="InfiRay P2 Pro / TOPDON TC001: YUY2 256x384, bottom half uint16 LE, K = raw/64",
)

PROFILES: dict[str, CameraProfile] = {
    "lepton": CameraProfile(
        name="lepton",
        gst_format="GRAY16_LE",
        scale_k=0.01,
        description="FLIR Lepton / PureThermal Y16 TLinear: K = raw * 0.01",
    ),
    "p2pro": _P2PRO,
    "tc001": CameraProfile(**{**_P2PRO.__dict__, "name": "tc001"}),
    "ax5": CameraProfile(
        name="ax5",
        gst_format="GRAY16_LE",
        scale_k=0.04,
        description="FLIR Ax5 (A35/A65) GigE via aravissrc, Mono16 TLinear: K = raw * 0.04",
    ),
}


def get_profile(name: str) -> CameraProfile:
    """Profile by name; a ProfileError lists the known names."""
    try:
        return PROFILES[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ProfileError(f"unknown camera profile '{name}'; use one of: {known}") from None


def extract_raw(
    profile: CameraProfile, data: npt.NDArray[np.uint8], width: int, height: int, stride: int
) -> U16:
    """Raw counts (HxW uint16) from one buffer of this profile's format."""
    if profile.split is not None:
        return profile.split(data, width, height, stride)
    row_bytes = width * 2
    if data.size < stride * height:
        raise ProfileError(
            f"{profile.name} buffer has {data.size} bytes, expected {stride * height} "
            f"({width}x{height} {profile.gst_format})"
        )
    rows = data[: stride * height].reshape(height, stride)
    if stride != row_bytes:
        rows = np.ascontiguousarray(rows[:, :row_bytes])
    return rows.view("<u2").reshape(height, width).astype(np.uint16, copy=False)
