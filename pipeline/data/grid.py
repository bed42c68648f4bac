"""Fixed-width temperature matrices read as a byte grid, with numpy and no Python float per value.

DMR-IR's matrices are fixed-width: every value has the same number of characters and the same
decimal places (`28.92`, or `21.88124` in the semicolon layout), one separator byte between
values, and the same line end on every line. Such a file is a 2-D byte array: row r, value c,
character k sits at a fixed offset, so a strided numpy view reaches every character of every
value at once. The digits are checked and combined column by column into an exact integer (the
decimal digits without the point), and one IEEE division by the exact power of ten gives the
correctly rounded double: the same double that Python's `float()` gives for the same text.

Lines are parsed as their bytes arrive (`parse_grid_chunks`), a block at a time, so the whole
text never sits in one buffer and the temporaries stay small enough to be reused from the heap.

`parse_grid` answers None for anything that is not such a grid or that a check refuses (a
non-digit, a ragged line, a second line end, a temperature out of range): the caller then reads
the file with the line-by-line reference parser, which accepts every layout the format allows and
words the error. So this module never decides an error message, and never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_SEPARATORS = (ord(" "), ord(";"), ord("\t"))  # between two values on a line
_LINE_TAIL = (*_SEPARATORS, ord("\r"))  # after the last value: trailing delimiter, CRs
_TOKEN = re.compile(rb"[-0-9.]*")
_MAX_DIGITS = 15  # 10**15 < 2**53: the digits make an exact double
_INT32_DIGITS = 9  # 999_999_999 < 2**31
# values worked on at once: the block's temporaries stay in the CPU cache and below glibc's mmap
# threshold, so they are reused from the heap instead of faulting in fresh pages every frame
BLOCK_VALUES = 1 << 16


@dataclass(frozen=True)
class GridLayout:
    """Where the values sit on every line of a fixed-width matrix file (offsets in bytes)."""

    line_bytes: int  # one line, its line end included
    width: int  # values per line
    value_bytes: int  # characters of one value
    point: int  # offset of the decimal point within a value


def grid_layout(first: bytes) -> GridLayout | None:
    """The layout the first line (its LF included) sets for every line, if it has one."""
    if len(first) < 2 or not first.endswith(b"\n"):
        return None
    token = _TOKEN.match(first)
    value_bytes = token.end() if token is not None else 0
    point = first.find(b".", 0, value_bytes)
    if not 3 <= value_bytes <= _MAX_DIGITS + 1 or point < 0:
        return None
    content = len(first[:-1].rstrip(b" ;\t\r"))
    stride = value_bytes + 1
    if (content + 1) % stride:
        return None
    return GridLayout(len(first), (content + 1) // stride, value_bytes, point)


def parse_grid(data: bytes, low_c: float, high_c: float) -> npt.NDArray[np.float32] | None:
    """A fixed-width matrix -> float32 rows x width, or None when `data` is not one, or holds
    anything the reference parser would refuse or read differently, or a value outside
    [low_c, high_c]."""
    return parse_grid_chunks([data], low_c, high_c)


def parse_grid_chunks(
    chunks: Iterable[bytes], low_c: float, high_c: float
) -> npt.NDArray[np.float32] | None:
    """`parse_grid` over the file's bytes in pieces of any size (as they are inflated), so no
    buffer of the whole text is ever needed."""
    reader = _GridReader(low_c, high_c)
    for chunk in chunks:
        if not reader.feed(chunk):
            return None
    return reader.finish()


class _GridReader:
    """Whole lines are parsed as they arrive; the bytes of a line not yet complete wait."""

    def __init__(self, low_c: float, high_c: float) -> None:
        self.low_c, self.high_c = low_c, high_c
        self.layout: GridLayout | None = None
        self.line_end = b"\n"  # the first line's end: completes a last line without one
        self.pending = b""
        self.blocks: list[npt.NDArray[np.float32]] = []

    def feed(self, chunk: bytes) -> bool:
        buf = self.pending + chunk if self.pending else chunk
        if self.layout is None:
            newline = buf.find(b"\n")
            if newline < 0:
                self.pending = buf
                return True
            first = buf[: newline + 1]
            self.layout = grid_layout(first)
            self.line_end = first[len(first[:-1].rstrip(b"\r")) :]
            if self.layout is None:
                return False
        lines = len(buf) // self.layout.line_bytes
        self.pending = buf[lines * self.layout.line_bytes :]
        return lines == 0 or self._lines(buf, lines, self.layout)

    def finish(self) -> npt.NDArray[np.float32] | None:
        """The matrix, once the rest is only blank lines (a last line without its line end
        is completed first, as the reference parser reads it)."""
        incomplete = self.pending and not self.pending.endswith(b"\n")
        if incomplete and not self.feed(self.line_end):
            return None
        if self.pending.strip(b" ;\t\r\n") or not self.blocks:
            return None
        return self.blocks[0] if len(self.blocks) == 1 else np.concatenate(self.blocks)

    def _lines(self, buf: bytes, lines: int, layout: GridLayout) -> bool:
        grid = np.frombuffer(buf, np.uint8, count=lines * layout.line_bytes)
        grid = grid.reshape(lines, layout.line_bytes)
        stride = layout.value_bytes + 1
        values = grid[:, : layout.width * stride].reshape(lines, layout.width, stride)
        if not _frame_ok(grid, values, layout):
            return False
        step = max(1, BLOCK_VALUES // layout.width)
        for top in range(0, lines, step):
            number = _digits(values[top : top + step], layout)
            if number is None:
                return False
            if not (float(number.min()) >= self.low_c and float(number.max()) <= self.high_c):
                return False
            self.blocks.append(number.astype(np.float32))
        return True


def _is_any(column: npt.NDArray[np.uint8], allowed: tuple[int, ...]) -> bool:
    ok = column == allowed[0]
    for byte in allowed[1:]:
        ok |= column == byte
    return bool(ok.all())


def _frame_ok(
    grid: npt.NDArray[np.uint8], values: npt.NDArray[np.uint8], layout: GridLayout
) -> bool:
    """Every line ends in LF, one separator sits between values, and only trailing delimiters
    and CRs follow the last value; a CR between values would join them, so it is refused."""
    if not bool((grid[:, -1] == ord("\n")).all()):
        return False
    if layout.width > 1 and not _is_any(values[:, :-1, -1], _SEPARATORS):
        return False
    tail = grid[:, layout.width * (layout.value_bytes + 1) - 1 : -1]
    return tail.size == 0 or _is_any(tail, _LINE_TAIL)


def _digits(values: npt.NDArray[np.uint8], layout: GridLayout) -> npt.NDArray[np.float64] | None:
    """Decimal text -> float64, exactly as `float()` rounds it; None when a character is not a
    digit where a digit belongs (a minus sign may only lead a value)."""
    point = layout.point
    if not bool((values[:, :, point] == ord(".")).all()):
        return None
    digit_columns = [k for k in range(layout.value_bytes) if k != point]
    wide = np.int64 if len(digit_columns) > _INT32_DIGITS else np.int32
    negative = values[:, :, 0] == ord("-") if point > 0 else None
    any_negative = negative is not None and bool(negative.any())
    shape = values.shape[:2]
    digit = np.empty(shape, np.uint8)
    mantissa = np.zeros(shape, wide)
    for k in digit_columns:
        np.subtract(values[:, :, k], ord("0"), out=digit)  # wraps below '0': > 9 too
        if k == 0 and any_negative:
            np.copyto(digit, 0, where=negative)
        if int(digit.max()) > 9:
            return None
        mantissa *= 10
        mantissa += digit
    number = mantissa.astype(np.float64)
    # an integer below 2**53 divided by an exact power of ten: one correctly rounded division
    number /= 10.0 ** (layout.value_bytes - 1 - point)
    if any_negative:
        np.negative(number, out=number, where=negative)
    return number
