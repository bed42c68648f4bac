"""Thermogram readers: both DMR-IR matrix layouts, images, 16-bit PNGs, names, and bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data import dmr
from pipeline.data.dmr import (
    DataError,
    DmrName,
    list_thermograms,
    load_frame,
    parse_dmr_name,
    read_image,
    read_matrix,
    read_png16,
)
from pipeline.types import FrameKind


def _matrix(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (30.0 + 4.0 * rng.random((h, w))).round(2)


def _write(path: Path, text: str) -> Path:
    data = text.encode("ascii")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _space_layout(m: np.ndarray, eol: str = "\r\r\n", trailing: str = "") -> str:
    return "".join(" ".join(f"{v:.2f}" for v in row) + trailing + eol for row in m)


def _semicolon_layout(m: np.ndarray, eol: str = "\r\n", trailing: str = ";") -> str:
    return "".join(";".join(f"{v:.5f}" for v in row) + trailing + eol for row in m)


# --- real DMR-IR files, both layouts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first"), [("T0002.txt.gz", "28.92"), ("T0418.txt.gz", "21.88124")]
)
def test_real_matrices_both_layouts(shared_dmr: Path, name: str, first: str) -> None:
    path = shared_dmr / name
    m = read_matrix(path)
    assert m.shape == (480, 640)
    assert m.dtype == np.float32
    assert m[0, 0] == pytest.approx(float(first), abs=1e-5)
    text = gzip.decompress(path.read_bytes()).decode()
    delimiter = ";" if ";" in text[:200] else None
    reference = np.loadtxt(text.splitlines(), delimiter=delimiter)
    np.testing.assert_allclose(m, reference, atol=1e-4)
    assert 15.0 < float(m.min()) < float(m.max()) < 40.0


# --- layouts and tolerated quirks ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
@pytest.mark.parametrize(
    "layout",
    [
        lambda m: _space_layout(m),
        lambda m: _space_layout(m, eol="\n", trailing=" "),
        lambda m: _space_layout(m, eol="\r\n", trailing="\t") + "\r\n\r\n",
        lambda m: _semicolon_layout(m),
        lambda m: _semicolon_layout(m, eol="\n", trailing=""),
    ],
    ids=["space-crcrlf", "space-trailing-space", "space-trailing-tab-blank-end", "semi", "semi-lf"],
)
def test_layouts_round_trip(tmp_path: Path, suffix: str, layout) -> None:
    m = _matrix()
    path = _write(tmp_path / f"T0001{suffix}", layout(m))
    out = read_matrix(path)
    assert out.shape == m.shape
    np.testing.assert_allclose(out, m, atol=1e-5)


# --- bad files: one line naming the file and the line -------------------------------------------


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "T0001.txt.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate data")
    with pytest.raises(DataError, match=r"T0001\.txt\.gz: corrupt or truncated gzip"):
        read_matrix(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(_space_layout(_matrix(40, 40)).encode())
    path = tmp_path / "T0001.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_matrix(path)


def test_truncated_text_is_ragged(tmp_path: Path) -> None:
    text = _space_layout(_matrix(), eol="\n")
    path = _write(tmp_path / "T0001.txt", text[: len(text) - 8])
    with pytest.raises(DataError, match=r"T0001\.txt: line 6 has 4 values but line 1 has 5"):
        read_matrix(path)


def test_ragged_row_names_line(tmp_path: Path) -> None:
    lines = _space_layout(_matrix(), eol="\n").splitlines()
    lines[2] += " 31.00"
    path = _write(tmp_path / "T0001.txt", "\n".join(lines))
    with pytest.raises(DataError, match="line 3 has 6 values"):
        read_matrix(path)


def test_non_numeric_names_line_and_token(tmp_path: Path) -> None:
    lines = _semicolon_layout(_matrix(), eol="\n").splitlines()
    lines[3] = lines[3].replace(lines[3].split(";")[1], "abc", 1)
    path = _write(tmp_path / "T0400.txt", "\n".join(lines))
    with pytest.raises(DataError, match=r"T0400\.txt: line 4: 'abc' is not a number"):
        read_matrix(path)


@pytest.mark.parametrize("value", ["500.00", "-60.00", "nan"])
def test_implausible_temperature(tmp_path: Path, value: str) -> None:
    lines = _space_layout(_matrix(), eol="\n").splitlines()
    tokens = lines[1].split()
    tokens[2] = value
    lines[1] = " ".join(tokens)
    path = _write(tmp_path / "T0001.txt", "\n".join(lines))
    with pytest.raises(DataError, match=r"line 2 column 3: .* not a plausible temperature"):
        read_matrix(path)


def test_empty_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty file"):
        read_matrix(_write(tmp_path / "a.txt", "\r\n\r\n"))
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\x00\xff\xfe")
    with pytest.raises(DataError, match=r"b\.txt: byte 1 is not text"):
        read_matrix(binary)
    with pytest.raises(DataError, match="cannot read"):
        read_matrix(tmp_path / "missing.txt")


# --- images -------------------------------------------------------------------------------------


def test_read_image_gray_and_colour(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), gray)
    bgr = np.zeros((8, 25, 3), dtype=np.uint8)
    bgr[..., 2] = 255  # pure red
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    out = read_image(tmp_path / "c.png")
    assert out.shape == (8, 25)
    assert out.dtype == np.uint8
    assert int(out[0, 0]) == 76  # ITU-R BT.601 luma of red
    cv2.imwrite(str(tmp_path / "j.jpg"), gray)
    assert np.abs(read_image(tmp_path / "j.jpg").astype(int) - gray).max() < 12


def test_png16_exact_and_errors(tmp_path: Path) -> None:
    raw = np.array([[30315, 30815], [0, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "r.png"), raw)
    np.testing.assert_array_equal(read_png16(tmp_path / "r.png"), raw)
    cv2.imwrite(str(tmp_path / "e.png"), raw.astype(np.uint8))
    with pytest.raises(DataError, match=r"e\.png: uint8 .* expected a 16-bit grayscale"):
        read_png16(tmp_path / "e.png")
    with pytest.raises(DataError, match="read them with read_png16"):
        read_image(tmp_path / "r.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png: not a readable"):
        read_image(tmp_path / "bad.png")


def test_load_frame_kinds(tmp_path: Path) -> None:
    m = _matrix()
    matrix = load_frame(_write(tmp_path / "T0001.txt", _space_layout(m)), index=3)
    assert matrix.kind is FrameKind.CELSIUS
    assert matrix.index == 3
    assert matrix.source_id == str(tmp_path / "T0001.txt")
    np.testing.assert_allclose(matrix.celsius(), m, atol=1e-5)

    raw = np.round((m + 273.15) * 100).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "frame_00000.png"), raw)
    frame16 = load_frame(tmp_path / "frame_00000.png", source_id="cam")
    assert frame16.kind is FrameKind.RAW16
    assert frame16.source_id == "cam"
    assert (frame16.scale, frame16.offset) == (0.01, 0.0)
    np.testing.assert_allclose(frame16.celsius(), m, atol=0.006)

    lepton64 = load_frame(tmp_path / "frame_00000.png", png16_scale=1 / 64, png16_offset=1.0)
    assert (lepton64.scale, lepton64.offset) == (1 / 64, 1.0)

    cv2.imwrite(str(tmp_path / "T0001.jpg"), np.full((4, 4), 128, dtype=np.uint8))
    gray = load_frame(tmp_path / "T0001.jpg")
    assert gray.kind is FrameKind.GRAY8
    assert gray.celsius() is None

    with pytest.raises(DataError, match="unsupported file type"):
        load_frame(_write(tmp_path / "x.csv", "1,2\n"))


# --- names and listing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("T0174.1.1.S.2013-03-20.00.txt", DmrName("0174", 1, 1, "S", "2013-03-20", 0)),
        ("T0138.2.1.S.2013-09-06.00.jpg", DmrName("0138", 2, 1, "S", "2013-09-06", 0)),
        ("T0001.1.1.D.2012-10-08.17.txt.gz", DmrName("0001", 1, 1, "D", "2012-10-08", 17)),
        ("t0001_1_3_d_20121008_05.png", DmrName("0001", 1, 3, "D", "20121008", 5)),
        ("T0221.1.4.S.2013-11-18.00-mask.png", DmrName("0221", 1, 4, "S", "2013-11-18", 0)),
        ("T0221.1.2", DmrName("0221", 1, 2)),
        ("T0002.txt.gz", DmrName("0002")),
        ("T0002.txt", DmrName("0002")),
        ("T0002.jpg", DmrName("0002")),
        ("T2.JPEG", DmrName("2")),
        ("T0418", DmrName("0418")),
        (
            "data/patients/T0400/T0400.1.1.S.2019-01-02.00.txt",
            DmrName("0400", 1, 1, "S", "2019-01-02", 0),
        ),
    ],
)
def test_parse_dmr_name(name: str, expected: DmrName) -> None:
    assert parse_dmr_name(name) == expected


@pytest.mark.parametrize(
    "name", ["frame_00001.png", "labels.csv", "Tomato.png", "IR_0002.jpg", "0002.txt", "T.txt"]
)
def test_parse_dmr_name_rejects(name: str) -> None:
    assert parse_dmr_name(name) is None


def test_patient_number_ignores_leading_zeros() -> None:
    a, b = parse_dmr_name("T0002.txt.gz"), parse_dmr_name("T2.1.1.S.2013-01-01.00.txt")
    assert a is not None and b is not None
    assert a.patient_id != b.patient_id
    assert a.patient_number == b.patient_number == 2


def test_list_thermograms_natural_order_and_filter(tmp_path: Path) -> None:
    names = ["frame_10.png", "frame_2.png", "frame_1.png", "T0003.txt.gz", "notes.md", "x.csv"]
    for name in [*names, "SYNTHETIC.txt", "README.txt"]:  # notices beside data, not matrices
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "T0001.JPG").write_bytes(b"")
    names = [p.name for p in list_thermograms(tmp_path)]
    # digit runs compare as numbers, letters without case
    assert names == ["frame_1.png", "frame_2.png", "frame_10.png", "T0001.JPG", "T0003.txt.gz"]
    with pytest.raises(DataError, match="not a folder"):
        list_thermograms(tmp_path / "nope")


def test_a_gzip_bomb_is_refused_before_it_fills_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small .txt.gz that inflates past the text limit stops with one line on both paths."""
    monkeypatch.setattr(dmr, "MAX_MATRIX_TEXT_BYTES", 1 << 20)
    bomb = tmp_path / "T0001.txt.gz"
    bomb.write_bytes(gzip.compress(b"30.00 " * 400_000))  # 2.4 MB of text, 1 MB allowed
    with pytest.raises(DataError, match=r"T0001\.txt\.gz: inflates to more than 1 MiB"):
        dmr.read_matrix(bomb)
    plain = tmp_path / "T0002.txt"
    plain.write_bytes(b"30.00 " * 400_000)
    with pytest.raises(DataError, match=r"T0002\.txt: inflates to more than 1 MiB"):
        dmr.read_matrix(plain)
