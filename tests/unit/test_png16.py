"""The fast 16-bit PNG decoder: bit for bit what libpng (OpenCV) gives, or None and OpenCV reads."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from pipeline.data.dmr import DataError, list_thermograms, read_matrix, read_png16
from pipeline.data.png16 import decode_gray16, unfilter
from pipeline.data.recording import celsius_to_centikelvin, encode_png16

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def _paeth(
    a: npt.NDArray[np.int32], b: npt.NDArray[np.int32], c: npt.NDArray[np.int32]
) -> npt.NDArray[np.int32]:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_row(line: U8, prior: U8, kind: int) -> U8:
    """PNG's forward filter `kind` of one scanline of 2-byte pixels (the spec's arithmetic)."""
    x, up = line.astype(np.int32), prior.astype(np.int32)
    left = np.concatenate([np.zeros(2, np.int32), x[:-2]])
    upleft = np.concatenate([np.zeros(2, np.int32), up[:-2]])
    predictor = [np.zeros_like(x), left, up, (left + up) // 2, _paeth(left, up, upleft)][kind]
    return ((x - predictor) % 256).astype(np.uint8)


def _png(image: U16, filters: list[int], extra: bytes = b"", level: int = 6) -> bytes:
    """A 16-bit gray PNG of `image` with the given filter type on each row, by hand."""
    height, width = image.shape
    lines = image.astype(">u2").view(np.uint8).reshape(height, 2 * width)
    prior = np.zeros(2 * width, np.uint8)
    body = b""
    for line, kind in zip(lines, filters, strict=True):
        body += bytes([kind]) + _filter_row(line, prior, kind).tobytes()
        prior = line
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", zlib.compress(body, level))
        + _chunk(b"IEND", b"")
    )


def _opencv(data: bytes) -> U16 | None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return None if image is None else np.asarray(image)


def _same_as_opencv(path: Path) -> None:
    """read_png16 gives what OpenCV's imread gives: the same pixels or the same one-line error."""
    expected = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if expected is None:
        with pytest.raises(
            DataError, match=re.escape(f"{path}: not a readable JPEG/PNG image; re-export")
        ):
            read_png16(path)
    elif expected.dtype != np.uint16 or expected.ndim != 2:
        with pytest.raises(
            DataError, match=re.escape(str(path)) + ": .* expected a 16-bit grayscale PNG"
        ):
            read_png16(path)
    else:
        got = read_png16(path)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 7), (37, 64), (61, 33)])
@pytest.mark.parametrize("pattern", ["up", "none", "sub", "mixed"])
def test_filters_none_sub_up_decode_exactly(shape: tuple[int, int], pattern: str) -> None:
    """Random counts (every byte wraps somewhere), odd widths, every mix of the three filters."""
    rng = np.random.default_rng(sum(shape) + len(pattern))
    image = rng.integers(0, 65536, shape, dtype=np.uint16)
    height = shape[0]
    filters = {
        "up": [2] * height,
        "none": [0] * height,
        "sub": [1] * height,
        "mixed": rng.choice([0, 1, 2, 2, 2], height).tolist(),
    }[pattern]
    data = _png(image, filters)
    got = decode_gray16(data)
    assert got is not None
    assert got.dtype == np.uint16 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, image)
    np.testing.assert_array_equal(got, _opencv(data))


def test_unfilter_runs_restart_at_none_and_sub_rows() -> None:
    """A None or Sub row starts a new running sum; the rows above it do not leak into it."""
    lines = np.array(
        [[2, 10, 20], [2, 1, 1], [0, 5, 6], [2, 1, 1], [1, 3, 250], [2, 1, 10]], np.uint8
    )
    got = unfilter(lines, 1)
    assert got is not None
    expected = [[10, 20], [11, 21], [5, 6], [6, 7], [3, 253], [4, 7]]
    np.testing.assert_array_equal(got, np.array(expected, np.uint8))


@pytest.mark.parametrize("kind", [3, 4])
def test_average_and_paeth_rows_go_to_opencv(tmp_path: Path, kind: int) -> None:
    image = np.random.default_rng(kind).integers(0, 65536, (9, 11), dtype=np.uint16)
    data = _png(image, [2, kind] + [2] * 7)
    assert decode_gray16(data) is None
    (tmp_path / "f.png").write_bytes(data)
    np.testing.assert_array_equal(read_png16(tmp_path / "f.png"), image)


def test_real_dmr_matrices_at_every_compression(shared_dmr: Path) -> None:
    files = list_thermograms(shared_dmr)[::27]
    assert len(files) >= 4
    for path in files:
        counts = celsius_to_centikelvin(read_matrix(path))
        assert counts is not None
        for level in (0, 3, 9):
            data = encode_png16(counts, level)
            got = decode_gray16(data)
            assert got is not None, f"{path.name} level {level} left the fast path"
            np.testing.assert_array_equal(got, counts)
            np.testing.assert_array_equal(got, _opencv(data))


def test_opencv_default_filters_and_chunks(tmp_path: Path) -> None:
    """cv2.imwrite's own (adaptive) filters, harmless and pixel-changing ancillary chunks."""
    image = np.random.default_rng(3).integers(30000, 31000, (48, 63), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "cv.png"), image)
    np.testing.assert_array_equal(decode_gray16((tmp_path / "cv.png").read_bytes()), image)
    _same_as_opencv(tmp_path / "cv.png")

    text = _chunk(b"tEXt", b"Comment\x00thermoscreen") + _chunk(b"tIME", bytes(7))
    data = _png(image, [2] * 48, extra=text)
    np.testing.assert_array_equal(decode_gray16(data), image)
    for name, extra in {
        "gamma": _chunk(b"gAMA", struct.pack(">I", 45455)),
        "sbit": _chunk(b"sBIT", b"\x0c"),
        "trns": _chunk(b"tRNS", struct.pack(">H", 30500)),
        "bad-text-crc": text[:-4] + b"\0\0\0\0",
    }.items():
        data = _png(image, [2] * 48, extra=extra)
        assert decode_gray16(data) is None, name
        (tmp_path / f"{name}.png").write_bytes(data)
        _same_as_opencv(tmp_path / f"{name}.png")


def _with_ihdr(data: bytes, **fields: int) -> bytes:
    names = ("width", "height", "depth", "colour", "compression", "filter", "interlace")
    values = dict(zip(names, struct.unpack(">IIBBBBB", data[16:29]), strict=True)) | fields
    return data[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", *values.values())) + data[33:]


def test_damaged_files_give_opencvs_error(tmp_path: Path) -> None:
    image = np.random.default_rng(5).integers(0, 65536, (20, 21), dtype=np.uint16)
    good = _png(image, [2] * 20)
    idat = good.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", good[idat : idat + 4])
    stream = good[idat + 8 : idat + 8 + length]
    flipped = bytearray(good)
    flipped[idat + 20] ^= 0x10
    tail = _chunk(b"IEND", b"")
    cases = {
        "truncated-in-idat": good[: idat + 40],
        "truncated-before-iend": good[:-12],
        "truncated-header": good[:20],
        "idat-crc": bytes(flipped),  # a bit flipped in the image data, the chunk's CRC as it was
        "adler": good[:idat] + _chunk(b"IDAT", stream[:-1] + bytes([stream[-1] ^ 1])) + tail,
        "short-stream": _with_ihdr(good, height=21),
        "long-stream": _with_ihdr(good, height=19),
        "interlaced": _with_ihdr(good, interlace=1),
        "8-bit": _with_ihdr(good, depth=8, width=42),
        "rgb": _with_ihdr(_png(image[:, :3], [0] * 20), colour=2, width=1),
        "trailing": good + b"junk",
    }
    for name, data in cases.items():
        assert decode_gray16(data) is None, name
        (tmp_path / f"{name}.png").write_bytes(data)
        _same_as_opencv(tmp_path / f"{name}.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: not a readable JPEG/PNG image; re-export"):
        read_png16(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"missing\.png: file not found; check the path"):
        read_png16(tmp_path / "missing.png")
