"""The operator console's cost: the same replay with a viewer watching the console's live view
against without, and a live run with the console open and watched.

The viewer stands in for a browser: `MjpegViewer` reads `/stream.mjpg` from the child's console
in a thread of the bench process for the whole run, as an operator's page would (it connects as
soon as the console listens, before the first frame). The replay's throughput is taken exactly
as for the plain replay (`measure_replay`), in the same repeat, on the same model and source, so
the ratio is within one repeat; the order of the two alternates between repeats. The live run
is held to the same p99 bound as the plain live run.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.devtools.bench.collector import BenchError
from pipeline.devtools.bench.live import measure_live
from pipeline.devtools.bench.replay import Rig, measure_replay
from pipeline.devtools.bench.sources import Recording
from pipeline.devtools.broker import free_port

CONNECT_RETRY_S = 0.05
READ_TIMEOUT_S = 1.0


def read_part(stream: BinaryIO) -> tuple[int, bytes] | None:
    """One part of the console's MJPEG stream: (the result's seq, the JPEG); None at its end."""
    headers: dict[str, str] = {}
    line = stream.readline()
    while line and (line.strip() == b"" or line.startswith(b"--")):
        line = stream.readline()
    while line.strip():
        name, _, value = line.decode("ascii").partition(":")
        headers[name.strip().lower()] = value.strip()
        line = stream.readline()
    if "content-length" not in headers:
        return None
    jpeg = stream.read(int(headers["content-length"]))
    return int(headers.get("x-seq", "-1")), jpeg


class MjpegViewer:
    """A stand-in browser on `http://127.0.0.1:<port>/stream.mjpg` (see the module docstring)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frames = 0
        self.bytes = 0
        self.connected_mono: float | None = None
        self.first_frame_mono: float | None = None
        self.last_frame_mono: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-viewer", daemon=True)

    def __enter__(self) -> MjpegViewer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=READ_TIMEOUT_S)
            try:
                conn.request("GET", "/stream.mjpg")
                answer = conn.getresponse()
                if answer.status != 200:
                    raise BenchError(f"the console answered {answer.status} to its live view")
                self.connected_mono = self.connected_mono or time.monotonic()
                self._read(answer)
            except (OSError, http.client.HTTPException):
                self._stop.wait(CONNECT_RETRY_S)  # not listening yet, or the run has ended
            finally:
                conn.close()

    def _read(self, answer: http.client.HTTPResponse) -> None:
        while not self._stop.is_set():
            try:
                part = read_part(answer)
            except TimeoutError:
                continue  # no new frame within the timeout (the run may be starting)
            if part is None:
                return
            self.frames += 1
            self.bytes += len(part[1])
            self.last_frame_mono = time.monotonic()
            self.first_frame_mono = self.first_frame_mono or self.last_frame_mono

    def figures(self) -> dict[str, Any]:
        if self.frames == 0:
            raise BenchError("the console's live view sent no frame to the bench's viewer")
        flowing = (self.last_frame_mono or 0.0) - (self.first_frame_mono or 0.0)
        return {
            "frames_streamed": self.frames,
            "kib_per_frame": round(self.bytes / self.frames / 1024, 1),
            # from the first frame to the last (the viewer waited through the start-up)
            "stream_fps": round((self.frames - 1) / flowing, 2) if flowing > 0 else None,
        }


def _watched(measure: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Run `measure(config overrides)` with the console on a free loopback port (the child's
    `console.listen`) and a viewer on it."""
    port = free_port()
    with MjpegViewer(port) as viewer:
        row = measure({"console.listen": f"127.0.0.1:{port}"})
    row["console"] = viewer.figures()
    return row


def measure_console_replay(
    rig: Rig, model_dir: Path, recording: Recording, frames: int, device: str
) -> dict[str, Any]:
    """`measure_replay` with the console open and watched."""
    return _watched(
        lambda console: measure_replay(rig, model_dir, recording, frames, device, overrides=console)
    )


def measure_console_live(
    rig: Rig, model_dir: Path, fps: int, seconds: float, device: str
) -> dict[str, Any]:
    """`measure_live` with the console open and watched."""
    return _watched(
        lambda console: measure_live(rig, model_dir, fps, seconds, device, overrides=console)
    )


def console_source(recordings: dict[str, Recording]) -> str:
    """The source kind the console's replay row uses: MP4 where it runs, else the first."""
    return "mp4" if "mp4" in recordings else next(iter(recordings))
