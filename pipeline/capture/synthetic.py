"""`test://`: a live SYNTHETIC thermogram stream for demos and tests (no camera, no GStreamer).

`test://?fps=30&seed=1` produces CELSIUS frames from `pipeline.data.synthetic.SyntheticStream` on
its
own thread at the set rate, like a camera: the newest frame wins and frames a slow consumer
misses are counted as dropped (frame indices then show the gaps). The frames are synthetic and
carry no medical meaning.
"""

from __future__ import annotations

import logging
import threading
import time

from pipeline.capture.base import LatestSlot, ParsedUri, SourceOptions, SourceStats
from pipeline.data.synthetic import SyntheticStream
from pipeline.types import Frame, FrameKind

log = logging.getLogger(__name__)

DEFAULT_SIZE = (480, 640)  # (height, width), as DMR-IR matrices


class TestSource:
    """Synthetic live camera."""

    __test__ = False  # not a pytest class
    is_live = True

    def __init__(self, parsed: ParsedUri, options: SourceOptions) -> None:
        self.uri = parsed.shown
        self._opts = options
        self.size = (options.height or DEFAULT_SIZE[0], options.width or DEFAULT_SIZE[1])
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frames = 0

    @property
    def stats(self) -> SourceStats:
        return SourceStats(frames=self._frames, dropped=self._slot.dropped, rebuilds=0, errors=0)

    def open(self) -> None:
        stream = SyntheticStream(self._opts.seed, self.size)
        self._thread = threading.Thread(
            target=self._produce,
            args=(stream,),
            name=f"test-source-{self._opts.camera_id}",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, stream: SyntheticStream) -> None:
        period = 1.0 / self._opts.fps
        start = time.monotonic()
        index = 0
        while not self._stop.is_set():
            pixels = stream.frame(index)
            frame = Frame(
                pixels=pixels,
                kind=FrameKind.CELSIUS,
                index=index,
                source_id=self._opts.camera_id,
                capture_ts=time.time(),
                capture_mono_ns=time.monotonic_ns(),
                pts_ns=round(index * period * 1e9),
            )
            self._slot.put(frame)
            index += 1
            # fixed schedule; when generation falls behind, skip ahead instead of bursting
            due = start + index * period
            now = time.monotonic()
            if now - due > period:
                start = now - index * period
                due = now
            self._stop.wait(max(due - now, 0.0))

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        frame = self._slot.get(timeout_s)
        if frame is not None:
            self._frames += 1
        return frame

    def close(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._thread = None
