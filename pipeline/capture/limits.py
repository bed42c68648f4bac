"""The frame-size limit: an oversized frame is refused from what declares its size, before it is
decoded.

A PNG or JPEG states its width and height in its first bytes and may compress a huge, flat image
into a few hundred kilobytes; decoding it first and checking afterwards is what takes gigabytes.
So folder replays read the image headers, and GStreamer sources check the caps a parser or
decoder announces, against `capture.max_frame_width` x `capture.max_frame_height`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless...): C0-CF except DHT, JPG, DAC
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI, EOI stand alone
_MAX_JPEG_SEGMENTS = 256
_MAX_FILL_BYTES = 64


@dataclass(frozen=True)
class FrameLimit:
    """The largest frame a source may deliver, in pixels."""

    max_width: int = 4096
    max_height: int = 4096

    def problem(self, width: int, height: int) -> str | None:
        """Why a width x height frame is refused, or None when it fits."""
        if width <= self.max_width and height <= self.max_height:
            return None
        return (
            f"frames are {width}x{height} pixels, over the limit of {self.max_width}x"
            f"{self.max_height} (capture.max_frame_width/max_frame_height); scale the source "
            "down or raise the limit"
        )


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding it; None for other files or
    when the header does not say. Raises OSError when the file cannot be read."""
    with path.open("rb") as fh:
        head = fh.read(24)
        if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) == 24:
            width, height = struct.unpack(">II", head[16:24])
            return int(width), int(height)
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            return _jpeg_size(fh)
    return None


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Walk the JPEG segments up to the first start-of-frame; None when there is none."""
    for _ in range(_MAX_JPEG_SEGMENTS):
        if fh.read(1) != b"\xff":
            return None  # not at a marker: nothing we can walk
        marker = fh.read(1)
        for _fill in range(_MAX_FILL_BYTES):
            if marker != b"\xff":
                break
            marker = fh.read(1)
        if not marker or marker == b"\xff":
            return None
        code = marker[0]
        if code in _NO_LENGTH:
            continue
        size = fh.read(2)
        if len(size) < 2:
            return None
        (length,) = struct.unpack(">H", size)
        if code in _SOF_MARKERS:
            body = fh.read(5)  # precision, height, width
            if len(body) < 5:
                return None
            height, width = struct.unpack(">HH", body[1:5])
            return int(width), int(height)
        if code == 0xDA:  # start of scan: image data without a frame header first
            return None
        fh.seek(max(length - 2, 0), 1)
    return None


def check_image_files(files: list[Path], limit: FrameLimit) -> tuple[Path, str] | None:
    """The first PNG/JPEG whose header declares a frame over the limit, and why; None when all
    fit (other files, e.g. temperature matrices, are not images and are skipped)."""
    for path in files:
        try:
            size = image_size(path)
        except OSError:
            continue  # unreadable: the reader names it when the frame is due
        problem = limit.problem(*size) if size is not None else None
        if problem:
            return path, problem
    return None
