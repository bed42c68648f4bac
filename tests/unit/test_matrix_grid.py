"""The fast matrix reader (byte grid) against the reference parser: same floats bit for bit, same
error line, on the real DMR-IR files and on crafted good and bad ones."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isal import igzip

from pipeline.data.dmr import PLAUSIBLE_C, DataError, read_matrix, read_matrix_reference
from pipeline.data.grid import parse_grid, parse_grid_chunks


def outcome(read, path: Path) -> tuple[object, ...]:
    """What a reader makes of a file: the float32 bytes, or the error line."""
    try:
        m = read(path)
    except DataError as exc:
        return ("error", str(exc))
    return ("ok", m.dtype.str, m.shape, m.tobytes())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _grid_text(m: np.ndarray, fmt: str, sep: str, eol: str, trailing: str = "") -> bytes:
    return "".join(sep.join(fmt.format(v) for v in row) + trailing + eol for row in m).encode()


def _line_end(text: bytes, line: int, end: bytes) -> bytes:
    """`text` with one line's end replaced by `end` (of the same length)."""
    lines = text.split(b"\n")
    lines[line] = lines[line][: -len(end)] + end
    return b"\n".join(lines)


def _real_names(shared: Path) -> list[Path]:
    return sorted(shared.glob("*.txt.gz"))


@pytest.mark.slow
def test_every_real_file_reads_bit_for_bit_as_the_reference_through_the_grid(
    shared_dmr: Path,
) -> None:
    files = _real_names(shared_dmr)
    assert len(files) == 108
    layouts = set()
    for path in files:
        data = igzip.decompress(path.read_bytes())
        grid = parse_grid(data, *PLAUSIBLE_C)
        assert grid is not None, f"{path.name} fell back to the reference parser"
        reference = read_matrix_reference(path)
        fast = read_matrix(path)
        assert fast.dtype == reference.dtype == np.float32
        assert fast.shape == reference.shape == (480, 640)
        assert fast.tobytes() == reference.tobytes(), path.name
        assert grid.tobytes() == reference.tobytes(), path.name
        layouts.add(b";" in data[:100])
    assert layouts == {True, False}  # both DMR-IR layouts were among them


# --- crafted files: (name, bytes, does the grid take it?) ---------------------------------------

RNG = np.random.default_rng(3)
M = (30.0 + 4.0 * RNG.random((7, 9))).round(5)
M2 = M.round(2)


def _edit(text: bytes, old: bytes, new: bytes, count: int = 1) -> bytes:
    assert old in text
    return text.replace(old, new, count)


SPACE = _grid_text(M2, "{:.2f}", " ", "\r\r\n")
SEMI = _grid_text(M, "{:.5f}", ";", "\r\n", trailing=";")
FIRST2 = f"{M2[0, 0]:.2f}".encode()
FIRST5 = f"{M[0, 0]:.5f}".encode()
MID = f"{M2[3, 4]:.2f}".encode()

GOOD_GRIDS = {
    "space-crcrlf": SPACE,
    "semi-trailing": SEMI,
    "lf-only": _grid_text(M2, "{:.2f}", " ", "\n"),
    "tabs": _grid_text(M2, "{:.2f}", "\t", "\r\n", trailing="\t"),
    "mixed-separators": _edit(SPACE, b" ", b";", 3),
    "no-final-line-end": SPACE[:-3],
    "blank-lines-after": SPACE + b"\r\n\r\n;;\n",
    "one-column": _grid_text(M2[:, :1], "{:.2f}", " ", "\r\n"),
    "one-row": _grid_text(M2[:1], "{:.2f}", " ", "\n"),
    "negative-and-minus-zero": _edit(_edit(SPACE, MID, b"-1.25"), FIRST2, b"-0.00"),
    "leading-point": _grid_text(M2 / 100, "{:.3f}", " ", "\n").replace(b"0.", b"."),
    "many-digits-int64": _grid_text(M, "{:.12f}", " ", "\n"),
    "no-decimals-after-point": _grid_text(M2.round(0), "{:.0f}.", " ", "\n"),
}
NOT_GRIDS = {
    "ragged-width": _edit(SPACE, MID, b"9.5"),  # valid, read by the reference
    "integers": _grid_text(M2.round(0), "{:.0f}", " ", "\n"),
    "exponent": _edit(SPACE, FIRST2, b"3e+01"),
    "plus-sign": _edit(SPACE, MID, b"+1.20"),
    "leading-blank-line": b"\r\n" + SPACE,
    "blank-line-inside": _edit(SPACE, b"\r\r\n", b"\r\r\n\r\r\n"),
    "cr-inside-value": _edit(SPACE, MID, MID[:2] + b"\r" + MID[3:]),
    "cr-between-values": _edit(SPACE, b" ", b"\r"),
    "double-space": _edit(SPACE, b" ", b"  ", 480),
    "nan": _edit(SPACE, MID, b"nan.0"),
    "too-hot": _edit(SPACE, MID, b"500.00"),
    "too-cold": _edit(SPACE, MID, b"-60.0"),
    "non-number": _edit(SEMI, FIRST5, b"abc.0000"),
    "two-points": _edit(SPACE, MID, b"1.2.3"),
    "colon-digit": _edit(SPACE, MID, b"2:.00"),  # ':' is the byte after '9'
    "junk-in-line-end": _line_end(SPACE, 2, b"\rx"),
    "digit-in-line-end": _line_end(SPACE, 2, b"\r5"),  # the CR goes: 5 joins the last value
    "minus-inside": _edit(SPACE, MID, b"1-.23"),
    "lonely-minus": _edit(SPACE, MID, b"-.   "),
    "extra-value": _edit(SPACE, b"\r\r\n", b" 31.00\r\r\n"),
    "truncated-last-line": SPACE[:-9],
    "non-ascii": _edit(SPACE, MID, b"3\xb0.00"),
    "nul-bytes": _edit(SPACE, MID, b"\x00\x00\x00\x00\x00"),
    "empty": b"",
    "only-line-ends": b"\r\n\r\n",
    "too-many-digits": _grid_text(M, "{:.16f}", " ", "\n"),
}


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
@pytest.mark.parametrize("name", sorted(GOOD_GRIDS) + sorted(NOT_GRIDS))
def test_crafted_files_read_exactly_as_the_reference(
    tmp_path: Path, name: str, suffix: str
) -> None:
    data = GOOD_GRIDS.get(name, NOT_GRIDS.get(name, b""))
    path = _write(tmp_path / f"T0001{suffix}", data)
    fast, reference = outcome(read_matrix, path), outcome(read_matrix_reference, path)
    assert fast == reference
    if name in GOOD_GRIDS:
        assert parse_grid(data, *PLAUSIBLE_C) is not None, "the grid should take this layout"
        assert fast[0] == "ok"
    else:
        assert parse_grid(data, *PLAUSIBLE_C) is None, "the grid should leave this to the reference"
    if fast[0] == "error":
        assert str(path) in str(fast[1]) and "\n" not in str(fast[1])


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1000])
@pytest.mark.parametrize("name", sorted(GOOD_GRIDS) + sorted(NOT_GRIDS))
def test_any_chunking_reads_as_the_whole(name: str, size: int) -> None:
    """Lines cut anywhere between pieces (as inflated) give the whole text's answer."""
    data = GOOD_GRIDS.get(name, NOT_GRIDS.get(name, b""))
    whole = parse_grid(data, *PLAUSIBLE_C)
    pieces = parse_grid_chunks(
        (data[i : i + size] for i in range(0, len(data), size)), *PLAUSIBLE_C
    )
    assert (whole is None) == (pieces is None)
    if whole is not None and pieces is not None:
        assert whole.tobytes() == pieces.tobytes() and whole.shape == pieces.shape


def test_crafted_gzip_faults_give_the_reference_error(tmp_path: Path) -> None:
    good = gzip.compress(SPACE)
    cases = {
        "corrupt": b"\x1f\x8b\x08\x00garbage that is not deflate data",
        "truncated": good[: len(good) // 2],
        "trailing-garbage": good + b"xyz",
        "bad-crc": good[:-8] + b"\0\0\0\0" + good[-4:],
        "two-members": good + gzip.compress(SPACE),  # valid: read as one longer matrix
        "plain-text": SPACE,
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.txt.gz"
        path.write_bytes(data)
        fast, reference = outcome(read_matrix, path), outcome(read_matrix_reference, path)
        assert fast == reference, name
        assert fast[0] == ("ok" if name == "two-members" else "error"), name


@settings(max_examples=80, deadline=None)
@given(
    whole=st.integers(0, 3),
    decimals=st.integers(0, 11),
    seed=st.integers(0, 2**32 - 1),
    negative=st.booleans(),
    separator=st.sampled_from([" ", ";", "\t"]),
)
def test_any_fixed_width_grid_rounds_as_float(
    whole: int, decimals: int, seed: int, negative: bool, separator: str
) -> None:
    """Every fixed-width decimal text becomes the float32 of the double `float()` gives; values
    out of range, not numbers, or under 3 characters are left to the reference parser."""
    rng = np.random.default_rng(seed)

    def digits(n: int) -> str:
        return "".join(str(d) for d in rng.integers(0, 10, n))

    text = [[f"{digits(whole)}.{digits(decimals)}" for _ in range(6)] for _ in range(4)]
    if negative and whole > 0:
        text[1][2] = f"-{digits(whole - 1)}.{digits(decimals)}"
    data = "".join(separator.join(row) + "\r\r\n" for row in text).encode()
    grid = parse_grid(data, *PLAUSIBLE_C)
    try:
        expected = np.array([[float(t) for t in row] for row in text], dtype=np.float64)
    except ValueError:  # "." or "-." alone: not a number
        assert grid is None
        return
    low, high = PLAUSIBLE_C
    if whole + decimals < 2 or not ((expected >= low) & (expected <= high)).all():
        assert grid is None
        return
    assert grid is not None
    assert grid.tobytes() == expected.astype(np.float32).tobytes()
