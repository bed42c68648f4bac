"""The live view's frames: JPEG-encoded in the console's own thread, only while someone
watches, at most `stream_max_fps` and within a CPU budget, and handed to every viewer as the
newest one.

    stream = JpegStream(window, max_fps=15, quality=80, max_viewers=8, cpu_share=0.03)
    stream.start(loop)                        # the encoder thread; frames arrive on `loop`
    async for jpeg in viewer(stream): ...     # each viewer: the newest frame, skips counted

Nothing here waits on a stage: the encoder reads the run's newest annotated frame (the run
never waits for it), a viewer that cannot keep up gets the newest frame when it can take one,
and every frame not shown is counted, by reason: `encoder` (a result the encoder never took:
the rate cap, or it was busy) and `client` (an encoded frame a slow viewer skipped).

The budget: drawing the overlay and encoding one frame costs the encoder thread some CPU time
(measured, smoothed); the encoder waits long enough between frames that this stays under
`cpu_share` of the machine (all its cores). A small or busy machine therefore shows the live
view below the camera's rate; the pipeline's stages keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

import cv2

from pipeline.console.base import U8, LiveWindow

log = logging.getLogger(__name__)

POLL_S = 0.01  # how often the encoder looks for a newer frame while someone watches
IDLE_WAIT_S = 0.5
COST_SMOOTHING = 0.2  # weight of the newest frame in the encoder's smoothed CPU cost


@dataclass(frozen=True)
class Encoded:
    """One encoded frame: its number in this console (1, 2, ...) and the result's seq."""

    ordinal: int
    seq: int
    jpeg: bytes


@dataclass
class StreamCounters:
    """Each field has one writer: the encoder thread (encoded, skipped) or the event loop."""

    encoded: int = 0
    encode_cpu_ms: float = 0.0  # smoothed thread CPU per frame: overlay + JPEG
    skipped_by_encoder: int = 0
    skipped_by_clients: int = 0
    viewers: int = 0
    refused_viewers: int = 0


def encode_jpeg(image: U8, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return bytes(buf)


class JpegStream:
    """See the module docstring. Viewer methods run on the event loop; the encoder in its
    own thread."""

    def __init__(
        self,
        window: LiveWindow,
        max_fps: float,
        quality: int,
        max_viewers: int,
        cpu_share: float = 1.0,
    ) -> None:
        self.window = window
        self.period_s = 1.0 / max_fps
        self.cpu_budget = cpu_share * len(os.sched_getaffinity(0))  # CPU seconds per second
        self.quality = quality
        self.max_viewers = max_viewers
        self.counters = StreamCounters()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest: Encoded | None = None
        self._arrived: asyncio.Event | None = None
        self._closing = False

    # --- the encoder thread ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arrived = asyncio.Event()
        self._thread = threading.Thread(target=self._encode_loop, name="console-jpeg", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _encode_loop(self) -> None:
        last_seq: int | None = None
        ordinal = 0
        due = 0.0
        while not self._stop.is_set():
            if self.counters.viewers <= 0:
                last_seq = None  # frames nobody asked for are not drops
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            now = time.monotonic()
            if now < due:
                self._stop.wait(due - now)
                continue
            cpu_start = time.thread_time()
            got = self.window.annotated()  # drawn here, in this thread, once per new frame
            if got is None or got[0] == last_seq:
                self._stop.wait(POLL_S)
                continue
            seq, image = got
            if last_seq is not None and seq > last_seq + 1:
                self.counters.skipped_by_encoder += seq - last_seq - 1
            try:
                jpeg = encode_jpeg(image, self.quality)
            except (cv2.error, ValueError) as exc:  # the live view pauses; the run goes on
                log.error("console: frame %d not encoded: %s", seq, exc)
                last_seq, due = seq, now + IDLE_WAIT_S
                continue
            ordinal += 1
            self.counters.encoded += 1
            self._hand_over(Encoded(ordinal, seq, jpeg))
            last_seq, due = seq, now + self._pause_s(cpu_start)

    def _pause_s(self, cpu_start: float) -> float:
        """Seconds until the next frame: the rate cap, or longer when the smoothed cost of a
        frame would take more than the CPU budget at that rate."""
        cost_ms = (time.thread_time() - cpu_start) * 1000.0
        c = self.counters
        c.encode_cpu_ms = (
            cost_ms
            if c.encoded <= 1
            else (COST_SMOOTHING * cost_ms + (1.0 - COST_SMOOTHING) * c.encode_cpu_ms)
        )
        return max(self.period_s, c.encode_cpu_ms / 1000.0 / self.cpu_budget)

    def _hand_over(self, encoded: Encoded) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._arrive, encoded)
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            log.debug("console loop closed; frame %d not handed over", encoded.ordinal)

    # --- the event loop ----------------------------------------------------------------------

    def _arrive(self, encoded: Encoded) -> None:
        self._latest = encoded
        self._notify()

    def _notify(self) -> None:
        arrived, self._arrived = self._arrived, asyncio.Event()
        if arrived is not None:
            arrived.set()

    def close_viewers(self) -> None:
        """Shutdown: every viewer's wait ends now."""
        self._closing = True
        self._notify()

    def add_viewer(self) -> bool:
        """Count a viewer in (False when `max_viewers` already watch) and wake the encoder."""
        if self.counters.viewers >= self.max_viewers:
            self.counters.refused_viewers += 1
            return False
        self.counters.viewers += 1
        self._wake.set()
        return True

    def remove_viewer(self) -> None:
        self.counters.viewers -= 1

    async def next_after(self, ordinal: int, timeout_s: float) -> Encoded | None:
        """The newest frame after `ordinal`, waiting up to `timeout_s` (None: nothing new, or
        the console is closing: see `closing`)."""
        deadline = time.monotonic() + timeout_s
        while not self._closing:
            latest = self._latest
            if latest is not None and latest.ordinal > ordinal:
                return latest
            arrived = self._arrived
            left = deadline - time.monotonic()
            if arrived is None or left <= 0:
                return None
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except asyncio.TimeoutError:
                return None
        return None

    @property
    def closing(self) -> bool:
        return self._closing

    def count_skipped(self, frames: int) -> None:
        self.counters.skipped_by_clients += frames

    def snapshot(self) -> bytes | None:
        """One JPEG of the newest annotated frame, encoded in the caller's thread (for
        /frame.jpg; call it off the event loop)."""
        got = self.window.annotated()
        return None if got is None else encode_jpeg(got[1], self.quality)
