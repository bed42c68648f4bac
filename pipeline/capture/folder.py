"""Folder replay: DMR-IR temperature matrices, 8-bit renderings and 16-bit PNG sequences.

`dmr://folder` or a plain folder path. Files are read in natural order (frame_2 before frame_10)
by `pipeline.data.dmr`, with replay semantics: every file once, in order, `EndOfStream` at the end
(or back to the first file with `loop`).

No GStreamer here, on purpose: 16-bit PNG recordings (`frame_00000.png`, as written by
`GRAY16_BE ! pngenc ! multifilesink` or `thermoscreen synth --kind png16`) must replay bit-exact,
and `pipeline.data.dmr.read_png16` (libpng through OpenCV, IMREAD_UNCHANGED) returns the stored
uint16
values as they are, with no caps negotiation, endianness or stride to get wrong; the same reader
serves matrices and images, so a folder can mix them and training reads files the same way.
The equivalent GStreamer pipeline would be
`multifilesrc location=DIR/frame_%05d.png index=0 caps=image/png ! pngdec
! video/x-raw,format=GRAY16_BE ! appsink`; it needs the naming pattern and cannot read matrices.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from pipeline.capture.base import EndOfStream, ParsedUri, SourceError, SourceOptions, SourceStats
from pipeline.data.dmr import DataError, list_thermograms, load_frame
from pipeline.types import Frame

log = logging.getLogger(__name__)


class FolderSource:
    """Replays a folder of thermograms, one file per frame."""

    is_live = False

    def __init__(self, parsed: ParsedUri, options: SourceOptions) -> None:
        self.uri = parsed.text
        self.folder = Path(parsed.location).expanduser()
        self._opts = options
        self._files: list[Path] = []
        self._next = 0  # position in self._files
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
        self._started_mono = time.monotonic()
        log.info("%s: replaying %d files", self.uri, len(self._files))

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """The next file as a Frame; EndOfStream after the last one (unless looping)."""
        if self._closed:
            raise EndOfStream(self.uri)
        if self._next >= len(self._files):
            if not self._opts.loop or not self._files:
                raise EndOfStream(self.uri)
            self._next = 0
        if self._opts.realtime and not self._pace(timeout_s):
            return None
        path = self._files[self._next]
        try:
            frame = load_frame(
                path,
                index=self._index,
                source_id=self._opts.camera_id,
                png16_scale=self._opts.png16_scale,
                png16_offset=self._opts.png16_offset,
            )
        except DataError as exc:
            self._stats.errors += 1
            raise SourceError(f"source '{self.uri}': {exc}") from None
        self._next += 1
        self._index += 1
        self._stats.frames += 1
        return replace(frame, file=path.name)  # results and exams name the file they came from

    def _pace(self, timeout_s: float) -> bool:
        """Wait until this frame's time at opts.fps; False when that is beyond timeout_s."""
        due = self._started_mono + self._index / self._opts.fps
        wait = due - time.monotonic()
        if wait > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    def close(self) -> None:
        self._closed = True
