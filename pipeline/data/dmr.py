"""Readers for thermograms on disk: DMR-IR temperature matrices, 8-bit renderings, 16-bit PNGs.

The runtime's `dmr://folder` source and the training datasets both read files through this module,
so a matrix is parsed the same way for training and serving. numpy, OpenCV and ISA-L's gzip only
(no torch).

DMR-IR (visual.ic.uff.br/dmi) stores each capture as a 480x640 text matrix in degrees Celsius, in
two layouts: space-separated with 2 decimals (older patients) and semicolon-separated with 5
decimals (patients from about ID 300 on), with CRLF (sometimes CR CR LF) line ends.

Both layouts are fixed-width in practice: every value has the same number of characters, so every
line has the same length. `read_matrix` reads such a file as a byte grid with numpy (no Python
float per value); any file that is not such a grid, or that fails a check, goes to the line-by-line
reference parser, which takes every layout the format allows and words every error. So a file
gives exactly the same floats, or exactly the same error, whichever way it is read.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt
from isal import isal_zlib

from pipeline.data.grid import parse_grid_chunks
from pipeline.data.png16 import decode_gray16
from pipeline.types import Frame, FrameKind

MATRIX_SUFFIXES = (".txt", ".txt.gz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CHUNK_BYTES = 1 << 19  # text parsed at a time: below glibc's mmap threshold, even as tuned by run
# A matrix's text, inflated: a 640x480 DMR-IR matrix is about 2.5 MB; this leaves room for
# 4096x4096 frames and stops a gzip bomb before it fills memory.
MAX_MATRIX_TEXT_BYTES = 256 << 20
MAX_FAST_PNG_BYTES = 64 << 20  # larger 16-bit PNGs are read by OpenCV (libpng) alone
PLAUSIBLE_C = (-40.0, 150.0)  # outside this a "temperature" is a unit or parsing mistake
# .txt files that sit beside thermograms but are documentation, never matrices
NOT_THERMOGRAMS = frozenset(
    {"readme.txt", "synthetic.txt", "license.txt", "notes.txt", "labels.txt", "requirements.txt"}
)

# what ISA-L raises for data it refuses (its stub declares the class as an instance)
_INFLATE_ERRORS = (OSError, EOFError, ValueError, cast(type[Exception], isal_zlib.error))
_DELIMITERS = str.maketrans({";": " ", "\t": " ", "\r": None})
_NATURAL_SPLIT = re.compile(r"(\d+)")
# T<patient>[.<visit>[.<view>[.<S|D>[.<date>[.<frame>]]]]] with '.' or '_' between fields; anything
# after a further separator (e.g. "-mask", "_crop") is tolerated and ignored.
_DMR_NAME = re.compile(
    r"""^[Tt](?P<patient>\d{1,6})
    (?:[._](?P<visit>\d{1,3})
      (?:[._](?P<view>\d{1,2})
        (?:[._](?P<protocol>[SDsd])
          (?:[._](?P<date>\d{4}-\d{2}-\d{2}|\d{8})
            (?:[._](?P<frame>\d{1,4}))?
          )?
        )?
      )?
    )?
    (?:[._\- ].*)?$""",
    re.VERBOSE,
)


class DataError(Exception):
    """A thermogram file or dataset that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class DmrName:
    """What a DMR-IR file name says about its image. Only the patient is always present."""

    patient_id: str  # digits as written in the name, e.g. "0002"
    visit: int | None = None
    view: int | None = None  # 1 = frontal in DMR-IR; 2-5 lateral views
    protocol: str | None = None  # "S" static, "D" dynamic
    date: str | None = None  # as written: YYYY-MM-DD or YYYYMMDD
    frame: int | None = None  # frame number within a dynamic sequence

    @property
    def patient_number(self) -> int:
        """The patient as a number, so "0002", "002" and "2" compare equal."""
        return int(self.patient_id)


def _stem(name: str) -> str:
    """File name without the thermogram extension (.txt.gz, .txt, .jpg, .jpeg, .png)."""
    lower = name.lower()
    for suffix in (".txt.gz", ".txt", ".jpeg", ".jpg", ".png"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_dmr_name(name: str | Path) -> DmrName | None:
    """Parse `T<patient>.<visit>.<view>.<S|D>.<date>.<frame>` and its shorter variants.

    Accepts a bare name or a path (only the last component is read). Returns None when the name
    is not DMR-style, so callers can fall back to the file stem as the patient id.
    """
    stem = _stem(Path(name).name)
    match = _DMR_NAME.match(stem)
    if match is None:
        return None
    groups = match.groupdict()

    def _int(key: str) -> int | None:
        value = groups[key]
        return int(value) if value is not None else None

    protocol = groups["protocol"]
    return DmrName(
        patient_id=groups["patient"],
        visit=_int("visit"),
        view=_int("view"),
        protocol=protocol.upper() if protocol is not None else None,
        date=groups["date"],
        frame=_int("frame"),
    )


def is_matrix(path: str | Path) -> bool:
    """A temperature-matrix file name (.txt/.txt.gz), not a README or SYNTHETIC.txt notice."""
    name = Path(path).name.lower()
    return name.endswith(MATRIX_SUFFIXES) and name not in NOT_THERMOGRAMS


def is_image(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def natural_key(path: str | Path) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders frame_2 before frame_10 (digit runs compare as numbers)."""
    parts = _NATURAL_SPLIT.split(str(path))
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts)


def list_thermograms(folder: str | Path) -> list[Path]:
    """Supported thermogram files directly in `folder` (matrices and images), in natural order."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(
            f"{root}: not a folder; pass a folder of .txt/.txt.gz/.jpg/.png thermograms"
        )
    files = [p for p in root.iterdir() if p.is_file() and (is_matrix(p) or is_image(p))]
    return sorted(files, key=lambda p: natural_key(p.name))


def _too_large(path: Path) -> DataError:
    return DataError(
        f"{path}: inflates to more than {MAX_MATRIX_TEXT_BYTES >> 20} MiB of text, far larger "
        "than any temperature matrix; not a thermogram (or a gzip bomb)"
    )


def _gunzip(path: Path, data: bytes) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            text = stream.read(MAX_MATRIX_TEXT_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: corrupt or truncated gzip ({exc}); re-download or re-compress the file"
        ) from exc
    if len(text) > MAX_MATRIX_TEXT_BYTES:
        raise _too_large(path)
    return text


def _ascii(path: Path, data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: byte {exc.start} is not text; expected a temperature matrix in plain ASCII"
        ) from exc


def _read_text(path: Path) -> str:
    """The reference reader's input: the standard library's gzip, then ASCII."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); check the path") from exc
    if path.name.lower().endswith(".gz"):
        data = _gunzip(path, data)
    elif len(data) > MAX_MATRIX_TEXT_BYTES:
        raise _too_large(path)
    return _ascii(path, data)


def _bad_value_line(path: Path, lines: list[str], numbers: list[int]) -> DataError:
    """Find the first line holding a token that is not a number (only called on failure)."""
    for line_no in numbers:
        for token in lines[line_no - 1].split():
            try:
                float(token)
            except ValueError:
                return DataError(
                    f"{path}: line {line_no}: '{token[:20]}' is not a number; expected "
                    "space- or semicolon-separated Celsius values with '.' decimals"
                )
    return DataError(f"{path}: unreadable numbers; expected a Celsius temperature matrix")


def read_matrix(path: str | Path) -> npt.NDArray[np.float32]:
    """A DMR-IR temperature matrix (.txt or .txt.gz) -> float32 HxW degrees Celsius.

    Both DMR-IR layouts, trailing delimiters and CRLF are accepted. Raises DataError naming the
    file and line for corrupt gzip, ragged rows, non-numbers and implausible temperatures.
    A fixed-width file is read as a byte grid while it is inflated (`pipeline.data.grid`);
    anything else, and every file that fails a check there, by `read_matrix_reference`'s
    parser, so results and errors are the same either way.
    """
    path = Path(path)
    try:
        matrix = parse_grid_chunks(_chunks(path), *PLAUSIBLE_C)
    except _NotPlain:
        matrix = None
    if matrix is not None:
        return matrix
    return read_matrix_reference(path)


class _NotPlain(Exception):
    """The file is not one plain gzip member (or plain text) that reads without error: the
    reference path reads it and words what is wrong."""


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's text in pieces of CHUNK_BYTES, inflated as they are needed. Small pieces are
    reused from the heap, where one buffer of the whole text faults in fresh pages every file."""
    try:
        data = path.read_bytes()
    except OSError:
        raise _NotPlain from None
    if not path.name.lower().endswith(".gz"):
        if len(data) > MAX_MATRIX_TEXT_BYTES:
            raise _NotPlain
        yield from (data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES))
        return
    inflate = isal_zlib.decompressobj(31)  # one gzip member, header and CRC checked
    inflated = 0
    try:
        while True:
            piece = inflate.decompress(data, CHUNK_BYTES)
            data = inflate.unconsumed_tail
            inflated += len(piece)
            if inflated > MAX_MATRIX_TEXT_BYTES:
                raise _NotPlain  # the reference reader stops it with the one-line reason
            if piece:
                yield piece
            if inflate.eof or not (piece or data):
                break
    except _INFLATE_ERRORS:
        raise _NotPlain from None
    if not inflate.eof or inflate.unused_data:
        raise _NotPlain  # truncated, or more members or bytes after this one


def read_matrix_reference(path: str | Path) -> npt.NDArray[np.float32]:
    """The line-by-line parser (Python floats, standard-library gzip): the one `read_matrix`
    hands every file that is not a clean fixed-width grid, and the reference that tests and
    `pipeline.devtools.decode_bench` compare it with."""
    path = Path(path)
    return _parse_text(path, _read_text(path))


def _parse_text(path: Path, text: str) -> npt.NDArray[np.float32]:
    lines = text.translate(_DELIMITERS).split("\n")
    numbers = [i + 1 for i, line in enumerate(lines) if line.strip()]
    if not numbers:
        raise DataError(f"{path}: empty file; expected rows of Celsius values")
    widths = [len(lines[n - 1].split()) for n in numbers]
    width = widths[0]
    for line_no, count in zip(numbers, widths, strict=True):
        if count != width:
            raise DataError(
                f"{path}: line {line_no} has {count} values but line {numbers[0]} has {width}; "
                "the file is truncated or ragged, re-export it"
            )
    rows = [lines[n - 1] for n in numbers]
    try:
        flat = np.array(" ".join(rows).split(), dtype=np.float64)
    except ValueError:
        raise _bad_value_line(path, lines, numbers) from None
    matrix = flat.reshape(len(rows), width)
    low, high = PLAUSIBLE_C
    bad = ~((matrix >= low) & (matrix <= high))  # also catches nan
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: line {numbers[row]} column {col + 1}: {matrix[row, col]} is not a plausible "
            f"temperature ({low:g}..{high:g} C); the file must hold degrees Celsius"
        )
    return matrix.astype(np.float32)


def _read_bytes(path: Path, limit: int) -> bytes:
    """The file's bytes, or b"" when it is larger than `limit` (left to OpenCV's reader)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        with path.open("rb", buffering=0) as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                return b""
            return fh.readall()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); check the path") from exc


def _imread(path: Path) -> npt.NDArray[np.generic]:
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: not a readable JPEG/PNG image; re-export or remove it")
    return np.asarray(image)


def read_image(path: str | Path) -> npt.NDArray[np.uint8]:
    """An 8-bit JPEG/PNG rendering -> uint8 HxW gray (colour renderings are converted to gray)."""
    path = Path(path)
    image = _imread(path)
    if image.dtype != np.uint8:
        raise DataError(
            f"{path}: {image.dtype} image; 16-bit PNGs are radiometric, read them with read_png16"
        )
    gray = np.asarray(image, dtype=np.uint8)
    if gray.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if gray.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        gray = np.asarray(cv2.cvtColor(gray, code), dtype=np.uint8)
    return np.ascontiguousarray(gray)


def read_png16(path: str | Path) -> npt.NDArray[np.uint16]:
    """A 16-bit grayscale PNG (radiometric counts) -> uint16 HxW, bit-exact. The PNGs
    thermoscreen writes are decoded by `png16.decode_gray16` (ISA-L and numpy, about 4x less
    CPU than libpng); any other PNG, or a damaged one, is read by OpenCV as before."""
    path = Path(path)
    fast = decode_gray16(_read_bytes(path, MAX_FAST_PNG_BYTES))
    if fast is not None:
        return fast
    image = _imread(path)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise DataError(
            f"{path}: {image.dtype} image with shape {image.shape}; expected a 16-bit grayscale "
            "PNG (GRAY16), e.g. written by `GRAY16_BE ! pngenc`"
        )
    return np.ascontiguousarray(image, dtype=np.uint16)


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from the PNG header (IHDR), without decoding the image."""
    try:
        with path.open("rb") as fh:
            head = fh.read(25)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); check the path") from exc
    if len(head) < 25 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24]


@dataclass(frozen=True)
class Decoded:
    """One file's pixels and what they mean, before they become a Frame: what a decode worker
    hands back, so the Frame's capture time is taken when it is handed on, not when decoded."""

    pixels: npt.NDArray[np.generic]
    kind: FrameKind
    scale: float = 1.0  # kelvin per count (RAW16 only)
    offset: float = 0.0  # kelvin at count 0 (RAW16 only)

    def frame(self, index: int, source_id: str) -> Frame:
        """This file as frame `index`, captured now."""
        return Frame(
            pixels=self.pixels,
            kind=self.kind,
            index=index,
            source_id=source_id,
            capture_ts=time.time(),
            capture_mono_ns=time.monotonic_ns(),
            scale=self.scale,
            offset=self.offset,
        )


def decode_file(path: str | Path, png16_scale: float = 0.01, png16_offset: float = 0.0) -> Decoded:
    """Read one thermogram file: matrices become CELSIUS, 8-bit images GRAY8, 16-bit PNGs RAW16
    with kelvin = raw * scale + offset (default centi-kelvin, as FLIR Lepton, `thermoscreen
    synth --kind png16` and `thermoscreen convert` write)."""
    path = Path(path)
    if is_matrix(path):
        return Decoded(read_matrix(path), FrameKind.CELSIUS)
    if path.name.lower().endswith(".png") and _png_bit_depth(path) == 16:
        return Decoded(read_png16(path), FrameKind.RAW16, png16_scale, png16_offset)
    if is_image(path):
        return Decoded(read_image(path), FrameKind.GRAY8)
    raise DataError(
        f"{path}: unsupported file type; use .txt/.txt.gz matrices or .jpg/.jpeg/.png images"
    )


def load_frame(
    path: str | Path,
    index: int = 0,
    source_id: str | None = None,
    png16_scale: float = 0.01,
    png16_offset: float = 0.0,
) -> Frame:
    """Read one thermogram file as a Frame (see `decode_file` for the kinds)."""
    path = Path(path)
    sid = source_id if source_id is not None else str(path)
    return decode_file(path, png16_scale, png16_offset).frame(index, sid)
