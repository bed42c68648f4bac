"""16-bit PNG recordings: lossless radiometric frames, with their scale and origin beside them.

A recording folder holds `frame_00000.png`, `frame_00001.png`, ... (16-bit grayscale PNGs of
counts), `recording.json` (kelvin = count * kelvin_per_count + kelvin_at_zero: how to read the
counts back) and `frames.csv` (per frame: the file it was converted from and that file's DMR-IR
patient, when its name says). `thermoscreen convert` writes them; the folder replay reads
`recording.json`, so a recording replays with the scale it was written with, and `read_origins`
gives back which patient and file each frame came from.

Celsius sources are stored as centi-kelvin (0.01 K per count, 0 K at count 0: the FLIR Lepton
convention, -273.15..382.20 C); 16-bit sources keep their own counts and scale, bit for bit.
Files are created 0600 in a 0700 folder: thermograms are medical images.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline import DISCLAIMER, __version__
from pipeline.data.dmr import DataError, parse_dmr_name
from pipeline.types import KELVIN_OFFSET

RECORDING_FILE = "recording.json"
FRAMES_FILE = "frames.csv"
FORMAT = "thermoscreen-png16"
FORMAT_VERSION = 1
CENTIKELVIN = 0.01  # kelvin per count of a converted Celsius source
COUNTS_PER_KELVIN = 100.0
FILE_MODE = 0o600
DIR_MODE = 0o700
ORIGIN_COLUMNS = ("frame", "file", "source_file", "patient_id")


@dataclass(frozen=True)
class CountScale:
    """How a 16-bit count reads as temperature: kelvin = count * kelvin_per_count +
    kelvin_at_zero."""

    kelvin_per_count: float = CENTIKELVIN
    kelvin_at_zero: float = 0.0


@dataclass(frozen=True)
class FrameOrigin:
    """Where one frame of a recording came from."""

    frame: int  # position in the recording, from 0
    file: str  # its PNG, e.g. frame_00000.png
    source_file: str  # the file it was recorded in first; "" for a camera or a video
    patient_id: str  # DMR-IR patient of that file, e.g. "0002"; "" when its name does not say

    @staticmethod
    def of(frame: int, file: str, source_file: str) -> FrameOrigin:
        """The origin, with the patient read from the source file's DMR-IR name."""
        name = parse_dmr_name(source_file) if source_file else None
        patient = name.patient_id if name is not None else ""
        return FrameOrigin(frame, file, source_file, patient)


def frame_file(index: int) -> str:
    """The PNG name of frame `index` (natural order keeps frame_99999 before frame_100000)."""
    return f"frame_{index:05d}.png"


def celsius_to_centikelvin(celsius: npt.NDArray[np.floating]) -> npt.NDArray[np.uint16] | None:
    """Celsius -> uint16 centi-kelvin, rounded to the nearest count; None when a value does not
    fit in 16 bits (below -273.15 C or above 382.20 C, or not a number)."""
    counts = np.round((celsius.astype(np.float64) + KELVIN_OFFSET) * COUNTS_PER_KELVIN)
    low, high = float(counts.min()), float(counts.max())
    if not (low >= 0 and high <= np.iinfo(np.uint16).max):
        return None
    return counts.astype(np.uint16)


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a new 0600 file (never through an existing link or file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def encode_png16(counts: npt.NDArray[np.uint16], compression: int) -> bytes:
    """A 16-bit grayscale PNG of `counts`, lossless at any zlib `compression` (0-9). Every row
    is stored as its difference from the row above (PNG's Up filter): smooth thermograms
    compress about as well as with adaptive filters, and undoing it is the cheapest filter to
    decode."""
    params = [
        cv2.IMWRITE_PNG_COMPRESSION,
        compression,
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_UP,
    ]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(counts, dtype=np.uint16), params)
    if not ok:
        raise DataError(f"PNG encoding of a {counts.shape} frame failed")
    return bytes(buf.tobytes())


def write_recording(
    folder: Path, scale: CountScale, origins: list[FrameOrigin], source: str
) -> None:
    """`recording.json` and `frames.csv` for the frames already written to `folder`."""
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kelvin_per_count": scale.kelvin_per_count,
        "kelvin_at_zero": scale.kelvin_at_zero,
        "frames": len(origins),
        "source": source,
        "written_by": f"thermoscreen {__version__} convert",
        "disclaimer": DISCLAIMER,
    }
    write_private(folder / RECORDING_FILE, (json.dumps(info, indent=2) + "\n").encode())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(ORIGIN_COLUMNS)
    for o in origins:
        writer.writerow([o.frame, o.file, o.source_file, o.patient_id])
    write_private(folder / FRAMES_FILE, text.getvalue().encode())


def read_scale(folder: Path) -> CountScale | None:
    """The scale `recording.json` records, or None when the folder has none (a recording made
    by other tools: the caller's own scale applies). DataError for an unreadable one."""
    path = folder / RECORDING_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc}); re-run thermoscreen convert") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} description; remove it or re-run convert")
    per_count, at_zero = info.get("kelvin_per_count"), info.get("kelvin_at_zero")
    numbers = (per_count, at_zero)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
        raise DataError(f"{path}: kelvin_per_count and kelvin_at_zero must be numbers")
    assert isinstance(per_count, int | float) and isinstance(at_zero, int | float)
    if not (math.isfinite(per_count) and per_count > 0 and math.isfinite(at_zero)):
        raise DataError(f"{path}: kelvin_per_count must be > 0 and both values finite")
    return CountScale(float(per_count), float(at_zero))


def read_origins(folder: Path) -> list[FrameOrigin]:
    """Each frame's origin from the `frames.csv` of a recording `thermoscreen convert` wrote;
    empty for any other folder (`thermoscreen synth` writes a frames.csv of its own)."""
    path = folder / FRAMES_FILE
    if not path.is_file() or not (folder / RECORDING_FILE).is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [
            FrameOrigin(int(r["frame"]), r["file"], r["source_file"], r["patient_id"]) for r in rows
        ]
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable ({exc}); expected columns {','.join(ORIGIN_COLUMNS)}"
        ) from None
