"""Folder replay decodes files ahead on a thread pool: in order, bounded, errors at their turn."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.capture.base import EndOfStream, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.capture.folder import DecodeAhead, decode_workers
from pipeline.config import ConfigError, load_config
from pipeline.data.dmr import Decoded, decode_file
from pipeline.run.wiring import source_options
from pipeline.types import FrameKind


def _png16_folder(folder: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 65536, size=(24, 32), dtype=np.uint16) for _ in range(count)]
    for i, image in enumerate(frames):
        assert cv2.imwrite(str(folder / f"frame_{i:05d}.png"), image)
    return frames


class Counting:
    """decode_file, counting the decodes started and optionally holding them at a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.started: list[str] = []
        self.gate = gate
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> Decoded:
        with self._lock:
            self.started.append(path.name)
        if self.gate is not None:
            assert self.gate.wait(10)
        return decode_file(path)


@pytest.mark.parametrize("workers", [None, 0, 1, 3])
def test_replay_is_in_order_and_bit_exact_with_any_number_of_decoders(
    tmp_path: Path, workers: int | None
) -> None:
    written = _png16_folder(tmp_path, 23)
    source = open_source(f"dmr://{tmp_path}", SourceOptions(jetson=False, decode_workers=workers))
    source.open()
    got = []
    try:
        with pytest.raises(EndOfStream):
            for _ in range(100):
                frame = source.read(5.0)
                assert frame is not None and frame.kind is FrameKind.RAW16
                assert frame.index == len(got)
                got.append(frame.pixels)
    finally:
        source.close()
    assert len(got) == 23
    for a, b in zip(written, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_decoding_runs_ahead_in_parallel(tmp_path: Path) -> None:
    """Two files decode at the same moment (the barrier needs both) before any is taken."""
    _png16_folder(tmp_path, 6)
    barrier = threading.Barrier(2, timeout=10)

    def together(path: Path) -> Decoded:
        barrier.wait()
        return decode_file(path)

    files = sorted(tmp_path.glob("*.png"))
    ahead = DecodeAhead(files, together, workers=2, depth=4)
    try:
        first = ahead.take(10.0)
        assert first is not None
        np.testing.assert_array_equal(first.pixels, decode_file(files[0]).pixels)
    finally:
        ahead.close()


def test_backpressure_bounds_the_files_in_flight(tmp_path: Path) -> None:
    _png16_folder(tmp_path, 12)
    files = sorted(tmp_path.glob("*.png"))
    gate = threading.Event()
    decode = Counting(gate)
    ahead = DecodeAhead(files, decode, workers=2, depth=3)
    try:
        assert ahead.take(0.05) is None  # nothing decoded yet: the caller hears None, not a hang
        assert len(decode.started) <= 3
        gate.set()
        taken = [ahead.take(10.0) for _ in range(4)]
        assert all(t is not None for t in taken)
        # 4 taken, so at most 4 + depth started, never the whole folder
        assert len(decode.started) <= 4 + 3
        assert decode.started == [p.name for p in files[: len(decode.started)]]  # in file order
    finally:
        ahead.close()
    started = len(decode.started)
    assert started < len(files)  # closing stopped the rest


def test_a_bad_file_fails_at_its_turn_as_one_line(tmp_path: Path) -> None:
    written = _png16_folder(tmp_path, 5)
    (tmp_path / "frame_00002.png").write_bytes(b"not a png")
    source = open_source(str(tmp_path), SourceOptions(jetson=False, decode_workers=2))
    source.open()
    try:
        for i in range(2):  # the broken third file, decoded ahead, does not spoil these
            frame = source.read(5.0)
            assert frame is not None
            np.testing.assert_array_equal(frame.pixels, written[i])
        with pytest.raises(SourceError) as caught:
            source.read(5.0)
        message = str(caught.value)
        assert "frame_00002.png" in message and "\n" not in message
        assert source.stats.errors == 1
    finally:
        source.close()


def test_loop_keeps_counting_across_rounds(tmp_path: Path) -> None:
    written = _png16_folder(tmp_path, 3)
    source = open_source(str(tmp_path), SourceOptions(jetson=False, loop=True, decode_workers=2))
    source.open()
    try:
        frames = [source.read(5.0) for _ in range(8)]
    finally:
        source.close()
    assert [f.index for f in frames if f is not None] == list(range(8))
    for i, frame in enumerate(frames):
        assert frame is not None
        np.testing.assert_array_equal(frame.pixels, written[i % 3])


def test_close_while_waiting_ends_quietly(tmp_path: Path) -> None:
    _png16_folder(tmp_path, 4)
    gate = threading.Event()
    ahead = DecodeAhead(sorted(tmp_path.glob("*.png")), Counting(gate), workers=1, depth=2)
    answers: list[object] = []
    waiter = threading.Thread(target=lambda: answers.append(ahead.take(10.0)))
    waiter.start()
    closer = threading.Thread(target=ahead.close)
    closer.start()
    gate.set()  # let the running decode finish so close can join the pool
    waiter.join(10)
    closer.join(10)
    assert not waiter.is_alive() and not closer.is_alive()
    assert len(answers) == 1  # a frame or None, never an exception


def test_auto_workers() -> None:
    assert decode_workers(0) == 0
    assert decode_workers(5) == 5
    assert 1 <= decode_workers(None) <= 2


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, 0), (3, 3)])
def test_config_sets_the_decoders(value: int | None, expected: int | None) -> None:
    cfg = load_config(None, {"capture.decode_workers": value}, env={})
    assert source_options(cfg).decode_workers == expected


def test_config_refuses_negative_decoders() -> None:
    with pytest.raises(ConfigError, match="decode_workers"):
        load_config(None, {"capture.decode_workers": -1}, env={})
