"""Folder replay: DMR-IR temperature matrices, 8-bit renderings and 16-bit PNG sequences.

`dmr://folder` or a plain folder path. Files are read in natural order (frame_2 before frame_10)
by `pipeline.data.dmr`, with replay semantics: every file once, in order, `EndOfStream` at the end
(or back to the first file with `loop`).

Decoding a file (inflating a PNG or a gzipped matrix, turning its text into numbers) takes a few
milliseconds that the model's threads need not wait for: `DecodeAhead` decodes the next files on a
small thread pool while the current frame is classified (zlib, ISA-L, libpng and numpy release
the GIL while they work), and hands them back strictly in file order. At most `depth` files are
decoding or waiting, so memory stays bounded and a slow consumer holds the decoders back
(backpressure); a file's error surfaces when its turn comes, as one line, as if read then.

No GStreamer here, on purpose: 16-bit PNG recordings (`frame_00000.png`, as written by
`GRAY16_BE ! pngenc ! multifilesink`, `thermoscreen synth --kind png16` or `thermoscreen
convert`) must replay bit-exact, and `pipeline.data.dmr.read_png16` (`pipeline.data.png16`:
ISA-L inflate and numpy for the PNGs we write, libpng through OpenCV for any other) returns the
stored uint16 values as they are, with no caps negotiation, endianness or stride to get
wrong; the same reader serves matrices and images, so a folder can mix them and training reads
files the same way. The equivalent GStreamer pipeline would be
`multifilesrc location=DIR/frame_%05d.png index=0 caps=image/png ! pngdec
! video/x-raw,format=GRAY16_BE ! appsink`; it needs the naming pattern and cannot read matrices.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from pipeline.capture.base import EndOfStream, ParsedUri, SourceError, SourceOptions, SourceStats
from pipeline.capture.limits import check_image_files
from pipeline.data.dmr import DataError, Decoded, decode_file, list_thermograms
from pipeline.data.recording import RECORDING_FILE, FrameOrigin, read_origins, read_scale
from pipeline.types import Frame

log = logging.getLogger(__name__)

MAX_AUTO_DECODE_WORKERS = 2  # a replay's decoding needs a fraction of the model's time per frame
DEFAULT_PNG16 = (SourceOptions.png16_scale, SourceOptions.png16_offset)


def decode_workers(setting: int | None) -> int:
    """Files decoded at once: the setting, else one per core up to MAX_AUTO_DECODE_WORKERS."""
    if setting is not None:
        return max(0, setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, MAX_AUTO_DECODE_WORKERS)


class DecodeAhead:
    """The files of a replay decoded ahead on `workers` threads, handed back in order.

    At most `depth` files are decoding or decoded and not yet taken. With `workers=0` each file
    is decoded when it is taken, on the caller's thread (no pool, nothing ahead). `close` may
    come from another thread while `take` waits: `take` then answers None.
    """

    def __init__(
        self,
        files: Sequence[Path],
        decode: Callable[[Path], Decoded],
        workers: int,
        depth: int,
        loop: bool = False,
    ) -> None:
        self._files = list(files)
        self._decode = decode
        self._loop = loop
        self._depth = max(depth, 1)
        self._next = 0  # position in files of the next file to start
        self._pending: deque[Future[Decoded]] = deque()
        self._lock = threading.Lock()  # the queue and the pool, against a concurrent close
        self._closed = False
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="thermoscreen-decode")
            if workers > 0
            else None
        )

    @property
    def finished(self) -> bool:
        """True when every file has been taken (never while looping)."""
        self._fill()
        return not self._pending and not self._left()

    def take(self, timeout_s: float) -> Decoded | None:
        """The next file decoded, in order; None when it is not ready within timeout_s. Raises
        the file's DataError when that file's turn comes. Call only while not `finished`."""
        if self._pool is None:
            return self._decode(self._advance())
        self._fill()
        with self._lock:
            if not self._pending:
                return None  # closed
            head = self._pending[0]
        done, _ = wait([head], timeout=max(timeout_s, 0.0))
        with self._lock:
            if not done or self._closed:
                return None
            self._pending.popleft()
        self._fill()  # start the next file before this one is even handed on
        return head.result()

    def close(self) -> None:
        """Drop what is queued and wait for the files being decoded (a few ms each)."""
        with self._lock:
            self._closed = True
            for future in self._pending:
                future.cancel()
            self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _left(self) -> bool:
        return bool(self._files) and (self._loop or self._next < len(self._files))

    def _advance(self) -> Path:
        if self._next >= len(self._files):
            self._next = 0  # only reached while looping: `finished` guards the end
        path = self._files[self._next]
        self._next += 1
        return path

    def _fill(self) -> None:
        if self._pool is None:
            return
        with self._lock:
            while not self._closed and len(self._pending) < self._depth and self._left():
                self._pending.append(self._pool.submit(self._decode, self._advance()))


class FolderSource:
    """Replays a folder of thermograms, one file per frame."""

    is_live = False

    def __init__(self, parsed: ParsedUri, options: SourceOptions) -> None:
        self.uri = parsed.shown
        self.folder = Path(parsed.location).expanduser()
        self._opts = options
        self._files: list[Path] = []
        self._converted: dict[str, FrameOrigin] = {}  # frames.csv of a converted recording
        self._ahead: DecodeAhead | None = None
        self._index = 0  # frame index, counting on across loops
        self._stats = SourceStats()
        self._started_mono = 0.0
        self._closed = False

    @property
    def stats(self) -> SourceStats:
        return SourceStats(self._stats.frames, 0, 0, self._stats.errors)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def origin_of(self, index: int) -> FrameOrigin:
        """Where frame `index` comes from: its file and, for a `thermoscreen convert`
        recording, the file it was converted from (else the file itself) and that file's
        DMR-IR patient, so results and exams can name the patient and file of every frame."""
        name = self._files[index % len(self._files)].name
        converted = self._converted.get(name)
        source_file = converted.source_file if converted is not None else name
        return FrameOrigin.of(index, name, source_file)

    def open(self) -> None:
        """List the folder; SourceError when it is missing or holds no thermograms."""
        try:
            self._files = list_thermograms(self.folder)
        except DataError as exc:
            raise SourceError(f"source '{self.uri}': {exc}") from None
        if not self._files:
            raise SourceError(
                f"source '{self.uri}': folder {self.folder} holds no thermograms; add "
                f".txt/.txt.gz matrices, .jpg/.png images or frame_00000.png 16-bit PNGs"
            )
        oversized = check_image_files(self._files, self._opts.frame_limit)
        if oversized is not None:  # before anything is decoded ahead
            raise SourceError(f"source '{self.uri}': {oversized[0]}: {oversized[1]}")
        workers = decode_workers(self._opts.decode_workers)
        scale, offset = self._png16_scale()
        try:
            self._converted = {o.file: o for o in read_origins(self.folder)}
        except DataError as exc:
            raise SourceError(f"source '{self.uri}': {exc}") from None
        decode = functools.partial(decode_file, png16_scale=scale, png16_offset=offset)
        self._ahead = DecodeAhead(self._files, decode, workers, 2 * workers, self._opts.loop)
        self._started_mono = time.monotonic()
        log.info("%s: replaying %d files, %d decoding ahead", self.uri, len(self._files), workers)

    def _png16_scale(self) -> tuple[float, float]:
        """The scale of 16-bit PNGs: what the folder's recording.json records (a `thermoscreen
        convert` recording), else the options'. Asking for another than the recorded one is an
        error, not a silent choice between two calibrations."""
        asked = (self._opts.png16_scale, self._opts.png16_offset)
        try:
            recorded = read_scale(self.folder)
        except DataError as exc:
            raise SourceError(f"source '{self.uri}': {exc}") from None
        if recorded is None:
            return asked
        theirs = (recorded.kelvin_per_count, recorded.kelvin_at_zero)
        if asked not in (DEFAULT_PNG16, theirs):
            raise SourceError(
                f"source '{self.uri}': {RECORDING_FILE} records kelvin = count x {theirs[0]:g} + "
                f"{theirs[1]:g}, but scale={asked[0]:g} offset={asked[1]:g} was asked; drop "
                "the ?scale=/?offset= parameters"
            )
        return theirs

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next file as a Frame; EndOfStream after the last one (unless looping)."""
        if self._closed or self._ahead is None or self._ahead.finished:
            raise EndOfStream(self.uri)
        if self._opts.realtime and not self._pace(timeout_s):
            return None
        try:
            decoded = self._ahead.take(timeout_s)
        except DataError as exc:
            self._stats.errors += 1
            raise SourceError(f"source '{self.uri}': {exc}") from None
        if decoded is None:
            return None
        frame = decoded.frame(self._index, self._opts.camera_id)
        # files come back in order (looping from the first): results and exams name theirs
        name = self._files[self._index % len(self._files)].name
        self._index += 1
        self._stats.frames += 1
        return replace(frame, file=name)

    def _pace(self, timeout_s: float) -> bool:
        """Wait until this frame's time at opts.fps; False when that is beyond timeout_s."""
        due = self._started_mono + self._index / self._opts.fps
        wait_s = due - time.monotonic()
        if wait_s > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return False
        if wait_s > 0:
            time.sleep(wait_s)
        return True

    def close(self) -> None:
        self._closed = True
        if self._ahead is not None:
            self._ahead.close()
