"""The operator console: an aiohttp server in its own thread (and event loop) inside `run`.

    window = LiveView()
    console = open_console(cfg, window)        # None without console.listen; ConsoleError:
                                               # no password off loopback, port taken, TLS
    run(cfg, consumers=console.consumers, live=window)
    console.stop()

The console's thread serves HTTP; a second thread JPEG-encodes the live view while someone
watches. Neither holds anything a stage waits for (see pipeline.console.stream).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from pipeline.config import AppConfig
from pipeline.console.app import ConsoleContext, build_app
from pipeline.console.base import LiveWindow
from pipeline.console.config import ConsoleConfig, ConsoleError, ConsolePlan, plan_console
from pipeline.console.health import CachedHealth, HealthLimits
from pipeline.console.metrics import ConsoleCounters, build_registry
from pipeline.console.security import Guard
from pipeline.console.state import CameraInfo
from pipeline.console.stream import JpegStream
from pipeline.run.base import FrameConsumer

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def _ssl_context(plan: ConsolePlan) -> ssl.SSLContext | None:
    if plan.tls_cert_file is None or plan.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(plan.tls_cert_file, plan.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConsoleError(
            f"console TLS: cannot load {plan.tls_cert_file} / {plan.tls_key_file}: {exc}; "
            "give a PEM certificate and its key"
        ) from exc
    return context


class Console:
    """See the module docstring."""

    def __init__(
        self,
        plan: ConsolePlan,
        cfg: ConsoleConfig,
        window: LiveWindow,
        camera: CameraInfo,
        exams_dir: Path,
        outbox_capacity: int | None,
    ) -> None:
        self.plan = plan
        self.counters = ConsoleCounters()
        self.stream = JpegStream(
            window, cfg.stream_max_fps, cfg.jpeg_quality, cfg.max_viewers, cfg.stream_cpu_share
        )
        self.health = CachedHealth(window.health)
        self.registry, self.result_metrics = build_registry(
            self.health, window.exam_state, self.stream.counters, self.counters
        )
        self.guard = Guard(plan, self.counters)
        self.context = ConsoleContext(
            window=window,
            health=self.health,
            camera=camera,
            exams_dir=Path(exams_dir),
            limits=HealthLimits(cfg.stale_s, outbox_capacity),
            guard=self.guard,
            stream=self.stream,
            registry=self.registry,
            counters=self.counters,
        )
        self._ssl = _ssl_context(plan)
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: str | None = None

    @property
    def consumers(self) -> Sequence[FrameConsumer]:
        """What `run` must feed per result (the latency histogram of /metrics)."""
        return (self.result_metrics,)

    @property
    def url(self) -> str:
        return self.plan.address.url(self.port, tls=self._ssl is not None)

    def start(self) -> Console:
        """Listen, or raise ConsoleError (one line: the port is taken, the address is wrong)."""
        self._thread = threading.Thread(target=self._main, name="console", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise ConsoleError(f"console {self.plan.address.host}: did not start in time")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT_S)
            raise ConsoleError(self._error)
        return self

    def stop(self) -> None:
        """Close every viewer, stop listening and join both threads (bounded)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                log.debug("console loop already closed")
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        self.stream.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(build_app(self.context), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        address = self.plan.address
        site = web.TCPSite(runner, address.host, address.port, ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as exc:
            self._error = (
                f"console {address.host}:{address.port}: cannot listen ({exc.strerror or exc}); "
                "choose another --console HOST:PORT"
            )
            await runner.cleanup()
            return
        self.port = int(runner.addresses[0][1])
        self.stream.start(asyncio.get_running_loop())
        self._started.set()
        log.info("operator console on %s", self.url)
        await self._stopping.wait()
        self.stream.close_viewers()
        await runner.cleanup()


def open_console(
    cfg: AppConfig, window: LiveWindow, env: Mapping[str, str] | None = None
) -> Console | None:
    """The console `cfg.console` asks for, listening; None when `console.listen` is unset.
    ConsoleError (one line): a network address without a password, the port taken, bad TLS."""
    plan = plan_console(cfg.console, env)
    if plan is None:
        return None
    if not plan.address.loopback and not plan.tls:
        log.warning(
            "console %s is reachable from the network over plain HTTP: its password crosses "
            "the network in clear text; set console.tls_cert_file and console.tls_key_file",
            cfg.console.listen,
        )
    capacity = cfg.outbox.max_messages if cfg.outbox.enabled else None
    camera = CameraInfo(cfg.device_id, cfg.camera_id)
    return Console(plan, cfg.console, window, camera, cfg.exam.exams_dir, capacity).start()
