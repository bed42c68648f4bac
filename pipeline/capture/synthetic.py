"""`test://`: a live SYNTHETIC thermogram stream for demos and tests (no camera, no GStreamer).

`test://?fps=30&seed=1` produces CELSIUS frames from `pipeline.data.synthetic.SyntheticStream` on
its own thread at the set rate, like a camera: the newest frame wins and frames a slow consumer
misses are counted as dropped (frame indices then show the gaps). The frames are synthetic and
carry no medical meaning.

`test://?settle_s=20` shows ONE synthetic patient who has just undressed: the skin starts
`SETTLE_START_C` warmer than its steady temperature and cools exponentially, time constant
settle_s / 4 (so after settle_s less than 2 % of the excess is left), counted from `open()`.
Real skin takes minutes (the seed's protocol rests 15); settle_s compresses that, so an exam's
acclimatization by measured drift can be tested in seconds. The slow whole-frame wave of the
plain stream is off for it, as a camera's drift would be a fault, not a patient settling.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import numpy.typing as npt

from pipeline.capture.base import LatestSlot, ParsedUri, SourceOptions, SourceStats
from pipeline.data.synthetic import SyntheticStream
from pipeline.types import Frame, FrameKind

log = logging.getLogger(__name__)

DEFAULT_SIZE = (480, 640)  # (height, width), as DMR-IR matrices
SETTLE_START_C = 1.5  # how much warmer than steady the skin starts
BODY_ABOVE_C = 27.0  # body pixels of the synthetic patient: warmer than this at rest


class SettlingSkin:
    """The excess skin temperature of a patient who has just undressed (see the module)."""

    def __init__(self, settle_s: float, rest_frame: npt.NDArray[np.float32]) -> None:
        self.settle_s = settle_s
        self.body = (rest_frame > BODY_ABOVE_C).astype(np.float32)

    def excess_c(self, elapsed_s: float) -> float:
        return SETTLE_START_C * math.exp(-4.0 * max(elapsed_s, 0.0) / self.settle_s)

    def apply(self, pixels: npt.NDArray[np.float32], elapsed_s: float) -> npt.NDArray[np.float32]:
        excess = np.float32(self.excess_c(elapsed_s))
        return np.asarray(pixels + self.body * excess, dtype=np.float32)


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
        settle_s = self._opts.settle_s
        if settle_s is None:
            stream = SyntheticStream(self._opts.seed, self.size)
            skin = None
        else:  # one patient for the whole run, settling
            stream = SyntheticStream(self._opts.seed, self.size, ("healthy",), 2**31, 1, 0.0)
            skin = SettlingSkin(settle_s, stream.frame(0))
        self._thread = threading.Thread(
            target=self._produce,
            args=(stream, skin),
            name=f"test-source-{self._opts.camera_id}",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, stream: SyntheticStream, skin: SettlingSkin | None) -> None:
        period = 1.0 / self._opts.fps
        start = opened = time.monotonic()
        index = 0
        while not self._stop.is_set():
            pixels = stream.frame(index)
            if skin is not None:
                pixels = skin.apply(pixels, time.monotonic() - opened)
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
