"""A fast decoder for the 16-bit grayscale PNGs thermoscreen writes; None for any other PNG.

`thermoscreen convert` and `synth --kind png16` write 640x480 16-bit gray PNGs whose rows are all
filtered with PNG's Up filter (`recording.encode_png16`). Replaying one through libpng (OpenCV's
`imread`) costs about 5 ms of CPU a frame on the cores the model needs. Here the same file is
parsed chunk by chunk, its image data inflated by ISA-L (several times faster than zlib) and the
filters undone with numpy: Up rows are a running sum down the rows in uint8 arithmetic (wrapping,
as PNG's arithmetic does), Sub rows a running sum along the row, None rows as they are.

The fast path takes only what it can decode exactly as libpng does: gray, 16 bits, no interlace,
the critical chunks with valid CRCs, ancillary chunks that cannot change pixels (text, time,
physical size), filters None, Sub and Up, and a zlib stream that inflates to exactly the image's
size. Anything else (Average or Paeth rows, colour, palettes, other depths, interlace, gamma or
transparency chunks, a bad CRC, a truncated file) answers None, and the caller reads the file
with OpenCV as before: the same pixels, or the same error, whichever way it is read.
"""

from __future__ import annotations

import itertools
import math
import struct
from typing import cast

import numpy as np
import numpy.typing as npt
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that never change the decoded pixels (libpng reads and keeps them, OpenCV ignores them).
HARMLESS_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"})
# Pixels decoded on this path at most (OpenCV's own limit, CV_IO_MAX_IMAGE_PIXELS, is 2**30):
# larger images go to OpenCV, which refuses them with its own limit.
MAX_PIXELS = 1 << 26
MAX_SIDE = 1_000_000  # libpng's default limit on either side (PNG_USER_WIDTH/HEIGHT_MAX)
FILTER_NONE, FILTER_SUB, FILTER_UP = 0, 1, 2

_LENGTH_TYPE = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")
# what ISA-L raises for a stream it refuses (its stub declares the class as an instance)
_INFLATE_ERRORS = (OSError, EOFError, ValueError, cast(type[Exception], isal_zlib.error))


def _chunks(data: bytes) -> list[tuple[bytes, memoryview]] | None:
    """(type, payload) of every chunk up to IEND with valid CRCs; None when the layout is not
    exactly that (truncated, bad CRC, bytes after IEND, no IEND)."""
    view = memoryview(data)
    pos, out = len(SIGNATURE), []
    while pos + 12 <= len(data):
        length, kind = _LENGTH_TYPE.unpack_from(data, pos)
        end = pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > len(data):
            return None
        (crc,) = struct.unpack_from(">I", data, end)
        if isal_zlib.crc32(view[pos + 4 : end]) != crc:
            return None
        out.append((kind, view[pos + 8 : end]))
        pos = end + 4
        if kind == b"IEND":
            return out if pos == len(data) else None
    return None


def _header(chunks: list[tuple[bytes, memoryview]]) -> tuple[int, int] | None:
    """(height, width) when IHDR says gray, 16 bits, standard compression and filters, no
    interlace, and the image is within MAX_PIXELS; else None."""
    kind, payload = chunks[0]
    if kind != b"IHDR" or len(payload) != _IHDR.size:
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack(payload)
    if (depth, colour, compression, filtering, interlace) != (16, 0, 0, 0, 0):
        return None
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
        return None
    return height, width


def _image_data(chunks: list[tuple[bytes, memoryview]]) -> bytes | None:
    """The IDAT payloads joined, when they are consecutive and every other chunk is harmless."""
    kinds = [kind for kind, _ in chunks[1:-1]]
    idat = [i for i, kind in enumerate(kinds) if kind == b"IDAT"]
    if not idat or idat[-1] - idat[0] + 1 != len(idat):
        return None
    if any(kind != b"IDAT" and kind not in HARMLESS_CHUNKS for kind in kinds):
        return None
    return b"".join(payload for kind, payload in chunks[1:-1] if kind == b"IDAT")


def _inflate(stream: bytes, size: int) -> bytes | None:
    """The zlib stream inflated, when it holds exactly `size` bytes and nothing after them."""
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(stream, size + 1)
    except _INFLATE_ERRORS:
        return None
    if len(raw) != size or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        return None
    return raw


def unfilter(raw: npt.NDArray[np.uint8], bytes_per_pixel: int) -> npt.NDArray[np.uint8] | None:
    """Rows of filter type byte + scanline (HxR uint8, R - 1 a multiple of `bytes_per_pixel`)
    -> the scanlines (Hx(R-1)) with the filters undone; None when a row uses Average (3),
    Paeth (4) or no valid type."""
    filters = raw[:, 0]
    if int(filters.max()) > FILTER_UP:
        return None
    out = np.array(raw[:, 1:], dtype=np.uint8, order="C")
    sub = np.flatnonzero(filters == FILTER_SUB)
    if len(sub):  # Sub rows read no row above them: all of them at once, along the row
        pixel = np.dtype(f"u{bytes_per_pixel}")  # whole pixels move in the transposes
        along = np.ascontiguousarray(out[sub].view(pixel).T).view(np.uint8)
        _running_sum(along)
        out.view(pixel)[sub] = along.view(pixel).T
    # Up rows add the row above: a running sum down each run of Up rows and the None or Sub row
    # it starts from (or the first row, where Up reads a row of zeros)
    starts = (np.flatnonzero(filters[1:] != FILTER_UP) + 1).tolist()
    for start, stop in itertools.pairwise([0, *starts, len(out)]):
        if stop - start > 1:
            _running_sum(out[start:stop])
    return out


def _running_sum(rows: npt.NDArray[np.uint8]) -> None:
    """rows[i] += rows[i - 1] along axis 0 of a C-contiguous array, wrapping in uint8.

    np.cumsum along axis 0 runs one byte at a time (4 ns a byte); here blocks of about sqrt(H)
    rows are summed side by side, row by row, then each block gets the total of the blocks before
    it: about 3 sqrt(H) vectorized numpy operations, 8x faster on a 640x480 frame."""
    height = len(rows)
    size = max(math.isqrt(height), 1)
    blocks = height // size
    head = rows[: blocks * size].reshape(blocks, size, *rows.shape[1:])  # a view: contiguous
    for r in range(1, size):
        np.add(head[:, r], head[:, r - 1], out=head[:, r])
    carry = head[:, -1].copy()  # each block's total, then the total of it and all before it
    for b in range(1, blocks):
        np.add(carry[b], carry[b - 1], out=carry[b])
    np.add(head[1:], carry[:-1, None], out=head[1:])
    for i in range(blocks * size, height):
        np.add(rows[i], rows[i - 1], out=rows[i])


def decode_gray16(data: bytes) -> npt.NDArray[np.uint16] | None:
    """A 16-bit gray PNG's bytes -> uint16 HxW (native byte order), bit for bit what libpng
    gives; None for anything this decoder does not take (see the module's docstring)."""
    if not data.startswith(SIGNATURE):
        return None
    chunks = _chunks(data)
    shape = _header(chunks) if chunks else None
    stream = _image_data(chunks) if chunks and shape else None
    if chunks is None or shape is None or stream is None:
        return None
    height, width = shape
    raw = _inflate(stream, height * (1 + 2 * width))
    if raw is None:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + 2 * width)
    lines = unfilter(rows, 2)
    if lines is None:
        return None
    return lines.view(">u2").astype(np.uint16)
