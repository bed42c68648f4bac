"""`thermoscreen convert`: a radiometric source -> a compact, lossless 16-bit PNG recording.

Any source `thermoscreen run` reads that carries temperature works: a DMR-IR matrix folder, a
16-bit PNG sequence, a radiometric camera (`v4l2:///dev/video0?format=y16&profile=lepton`,
`aravis://`), `test://`. Each frame becomes `frame_NNNNN.png` in a new folder, beside
`recording.json` (the count scale) and `frames.csv` (each frame's source file and DMR-IR patient);
see `pipeline.data.recording`. Celsius frames are stored as centi-kelvin, so a DMR-IR matrix comes
back within the 0.01 K quantization (2-decimal matrices exactly); 16-bit frames keep their counts
and scale, so they come back bit for bit. The folder replays with `thermoscreen run <folder>`,
without the text parsing a matrix needs.

Frames are decoded ahead (the folder source's pool) and PNGs encoded on a small pool, in order.
The recording appears under its name only when complete: it is written to a hidden folder beside
it first. A live source runs until --max-frames or Ctrl-C; what was captured is kept.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.capture.base import EndOfStream, Source, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.capture.folder import FolderSource, decode_workers
from pipeline.data.dmr import DataError
from pipeline.data.recording import (
    CountScale,
    FrameOrigin,
    celsius_to_centikelvin,
    encode_png16,
    frame_file,
    private_dir,
    write_private,
    write_recording,
)
from pipeline.signals import stop_on_signals
from pipeline.types import Frame, FrameKind
from pipeline.uri import redact

DEFAULT_COMPRESSION = 3  # zlib level: higher levels write far slower for hardly smaller files
STALL_S = 30.0  # a source that gives no frame for this long is stuck


class ConvertError(Exception):
    """A conversion that cannot go on; one line naming the source, frame or folder."""


@dataclass(frozen=True)
class ConvertSummary:
    out: Path
    frames: int
    scale: CountScale
    png_bytes: int  # all frames together


def frame_counts(frame: Frame, where: str) -> tuple[npt.NDArray[np.uint16], CountScale]:
    """A frame's 16-bit counts and their scale: RAW16 as it is, CELSIUS as centi-kelvin."""
    if frame.kind is FrameKind.RAW16:
        return np.asarray(frame.pixels, dtype=np.uint16), CountScale(frame.scale, frame.offset)
    celsius = frame.celsius()
    if celsius is None:
        raise ConvertError(
            f"{where}: 8-bit frames carry no temperature; convert needs a radiometric source "
            "(temperature matrices, 16-bit PNGs, a Y16 camera)"
        )
    counts = celsius_to_centikelvin(celsius)
    if counts is None:
        raise ConvertError(
            f"{where}: a temperature outside -273.15..382.20 C does not fit in 16-bit "
            "centi-kelvin; check the source's units"
        )
    return counts, CountScale()


class PngWriter:
    """Encodes and writes frames on `workers` threads, at most 2 x workers in flight; the first
    failure is raised by the next `put` or by `close`."""

    def __init__(self, folder: Path, compression: int, workers: int) -> None:
        self.folder = folder
        self.compression = compression
        self.bytes = 0
        self._pool = ThreadPoolExecutor(max(workers, 1), thread_name_prefix="thermoscreen-png")
        self._limit = 2 * max(workers, 1)
        self._pending: deque[Future[int]] = deque()

    def put(self, index: int, counts: npt.NDArray[np.uint16]) -> None:
        while len(self._pending) >= self._limit:
            self.bytes += self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, index, counts))

    def _write(self, index: int, counts: npt.NDArray[np.uint16]) -> int:
        data = encode_png16(counts, self.compression)
        write_private(self.folder / frame_file(index), data)
        return len(data)

    def close(self) -> None:
        """Wait for every frame; raises the first failure."""
        try:
            while self._pending:
                self.bytes += self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _next_frame(source: Source, stop: threading.Event) -> Frame | None:
    """The next frame; None at the end of a replay or when stopped. ConvertError when stuck."""
    since = time.monotonic()
    while not stop.is_set():
        try:
            frame = source.read(0.5)
        except EndOfStream:
            return None
        except SourceError as exc:
            raise ConvertError(str(exc)) from None
        if frame is not None:
            return frame
        if time.monotonic() - since > STALL_S:
            raise ConvertError(f"source '{source.uri}': no frame for {STALL_S:g} s")
    return None


def _copy_frames(
    source: Source, writer: PngWriter, max_frames: int | None, stop: threading.Event
) -> tuple[list[FrameOrigin], CountScale]:
    origins: list[FrameOrigin] = []
    scale: CountScale | None = None
    while max_frames is None or len(origins) < max_frames:
        frame = _next_frame(source, stop)
        if frame is None:
            break
        index = len(origins)
        if isinstance(source, FolderSource):  # a converted recording keeps its first origin
            read_from = source.origin_of(frame.index)
            origin = FrameOrigin.of(index, frame_file(index), read_from.source_file)
            where = f"source '{source.uri}' frame {index} ({read_from.file})"
        else:
            origin = FrameOrigin.of(index, frame_file(index), "")
            where = f"source '{source.uri}' frame {index}"
        counts, frame_scale = frame_counts(frame, where)
        if scale is not None and frame_scale != scale:
            raise ConvertError(f"{where}: scale {frame_scale} differs from the first {scale}")
        scale = frame_scale
        writer.put(index, counts)
        origins.append(origin)
    if scale is None:
        raise ConvertError(f"source '{source.uri}': no frame to convert")
    return origins, scale


def convert(
    uri: str,
    out: Path,
    max_frames: int | None = None,
    compression: int = DEFAULT_COMPRESSION,
    workers: int | None = None,
    stop: threading.Event | None = None,
) -> ConvertSummary:
    """Convert `uri` into the new recording folder `out`; ConvertError (one line) on failure,
    leaving nothing behind."""
    out = out.expanduser()
    if out.exists():
        raise ConvertError(f"{out}: already exists; choose a new folder for the recording")
    stop = stop or threading.Event()
    pool = decode_workers(workers)
    source = _open(uri, pool)
    partial = out.parent / f".{out.name}.partial"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove(partial)  # left by a conversion that was killed
        private_dir(partial)
        writer = PngWriter(partial, compression, max(pool, 1))
        try:
            origins, scale = _copy_frames(source, writer, max_frames, stop)
        finally:
            source.close()
            writer.close()
        write_recording(partial, scale, origins, redact(uri))
        partial.rename(out)
    except (DataError, OSError) as exc:
        _remove(partial)
        raise ConvertError(f"{out}: {exc}") from None
    except BaseException:
        _remove(partial)
        raise
    return ConvertSummary(out, len(origins), scale, writer.bytes)


def _open(uri: str, workers: int) -> Source:
    source = None
    try:
        source = open_source(uri, SourceOptions(camera_id="convert", decode_workers=workers))
        source.open()
    except SourceError as exc:
        if source is not None:
            source.close()
        raise ConvertError(str(exc)) from None
    return source


def _remove(folder: Path) -> None:
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a DMR-IR matrix folder, a 16-bit PNG folder, or any radiometric source URI "
        "(v4l2:///dev/video0?format=y16&profile=lepton, aravis://, test://)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="new folder for frame_00000.png..., recording.json (scale) and frames.csv (origins)",
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help="stop after N frames (live sources)"
    )
    parser.add_argument(
        "--compression",
        type=int,
        choices=range(10),
        default=DEFAULT_COMPRESSION,
        metavar="0-9",
        help=f"PNG zlib level, lossless at any level (default {DEFAULT_COMPRESSION})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="frames decoded and encoded at once (default: one per core, at most 2)",
    )


def main(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        print("thermoscreen convert: --max-frames must be >= 1", file=sys.stderr)
        return 2
    try:
        with stop_on_signals(threading.Event(), "finishing the recording") as stop:
            done = convert(
                args.source, args.out, args.max_frames, args.compression, args.workers, stop
            )
    except ConvertError as exc:
        print(f"thermoscreen convert: {exc}", file=sys.stderr)
        return 2
    print(
        f"thermoscreen convert: {done.frames} frames -> {done.out} "
        f"({done.png_bytes / 1e6:.1f} MB, kelvin = count x {done.scale.kelvin_per_count:g} "
        f"+ {done.scale.kelvin_at_zero:g}); replay with `thermoscreen run {done.out}`"
    )
    return 0
