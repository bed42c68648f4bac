"""The console's routes (aiohttp). Handlers never wait on the event loop: anything that reads
files, converts a frame or waits for the run's answer runs in the loop's thread pool.

| route | what |
|---|---|
| `GET /` | the operator page |
| `GET /static/<file>` | its CSS and JavaScript |
| `GET /stream.mjpg` | the live view, MJPEG (newest annotated frame, skips counted) |
| `GET /frame.jpg` | one JPEG of the newest annotated frame |
| `GET /api/state` | exam state, frame temperatures, verdicts, health (JSON) |
| `POST /api/exam` | an exam command, judged like MQTT `exam/set` (CSRF token needed) |
| `GET /exams`, `/exams/<id>` | past exams, an exam's report |
| `GET /healthz` | health JSON, 200 or 503 |
| `GET /metrics` | Prometheus text |
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pipeline.console.base import LiveWindow
from pipeline.console.health import HealthLimits, evaluate
from pipeline.console.metrics import ConsoleCounters
from pipeline.console.pages import (
    STATIC_FILES,
    NoSuchExam,
    exams_page,
    index_page,
    report_page,
    static_file,
)
from pipeline.console.security import Guard, harden
from pipeline.console.state import CameraInfo, page_state
from pipeline.console.stream import JpegStream
from pipeline.exam.commands import MAX_COMMAND_BYTES
from pipeline.exam.record import RecordError

log = logging.getLogger(__name__)

T = TypeVar("T")
BOUNDARY = "thermoscreenframe"
VIEWER_POLL_S = 2.0  # a viewer with no new frame checks this often whether it is still there
COMMAND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ConsoleContext:
    """Everything the handlers use (one per console, shared by every request)."""

    window: LiveWindow
    health: Callable[[], dict[str, Any]]  # the window's health numbers, cached briefly
    camera: CameraInfo
    exams_dir: Path
    limits: HealthLimits
    guard: Guard
    stream: JpegStream
    registry: CollectorRegistry
    counters: ConsoleCounters


CONTEXT = web.AppKey("context", ConsoleContext)


def _ctx(request: web.Request) -> ConsoleContext:
    return request.app[CONTEXT]


async def _off_loop(func: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func)


async def index(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    page = index_page(ctx.guard.csrf_token, ctx.camera.device_id, ctx.camera.camera_id)
    return web.Response(text=page, content_type="text/html", charset="utf-8")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = STATIC_FILES.get(name)
    if kind is None:
        raise web.HTTPNotFound(text=f"no file {name!r} here")
    return web.Response(body=static_file(name), content_type=kind, charset="utf-8")


async def stream_mjpeg(request: web.Request) -> web.StreamResponse:
    """The newest annotated frames as multipart JPEG, while the viewer stays."""
    stream = _ctx(request).stream
    if not stream.add_viewer():
        raise web.HTTPServiceUnavailable(
            text=f"{stream.max_viewers} live views are open already; close one and reload"
        )
    try:
        response = web.StreamResponse(
            headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"}
        )
        harden(response)
        await response.prepare(request)
        await _send_frames(request, response, stream)
        return response
    finally:
        stream.remove_viewer()


async def _send_frames(
    request: web.Request, response: web.StreamResponse, stream: JpegStream
) -> None:
    last = 0
    while not stream.closing:
        encoded = await stream.next_after(last, VIEWER_POLL_S)
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if encoded is None:
            continue
        if last and encoded.ordinal > last + 1:
            stream.count_skipped(encoded.ordinal - last - 1)
        head = (
            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(encoded.jpeg)}"
            f"\r\nX-Seq: {encoded.seq}\r\n\r\n"
        ).encode("ascii")
        try:
            await response.write(head + encoded.jpeg + b"\r\n")
        except (ConnectionResetError, RuntimeError):  # the viewer went away mid-frame
            return
        last = encoded.ordinal


async def frame_jpeg(request: web.Request) -> web.Response:
    jpeg = await _off_loop(_ctx(request).stream.snapshot)
    if jpeg is None:
        raise web.HTTPServiceUnavailable(text="no frame yet: the camera has sent nothing")
    return web.Response(body=jpeg, content_type="image/jpeg")


async def api_state(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    state = await _off_loop(lambda: page_state(ctx.window, ctx.health, ctx.camera, ctx.limits))
    return web.json_response(state)


async def _command_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > MAX_COMMAND_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_COMMAND_BYTES, actual_size=len(raw), text="command too large"
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"the command is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='the command must be a JSON object {"action": ...}')
    return data


async def api_exam(request: web.Request) -> web.Response:
    """One exam command through the run's command path (the same validator as MQTT)."""
    ctx = _ctx(request)
    data = await _command_body(request)
    if not ctx.window.exams_enabled:
        return web.json_response(
            {"ok": False, "error": "exams are off for this run (see its log)", "state": None},
            status=503,
        )
    answer = await _off_loop(lambda: ctx.window.submit_exam_command(data, COMMAND_TIMEOUT_S))
    ctx.counters.commands["accepted" if answer.ok else "refused"] += 1
    body = {"ok": answer.ok, "error": answer.error, "state": answer.state}
    return web.json_response(body, status=200 if answer.ok else 409)


async def exams(request: web.Request) -> web.Response:
    page = await _off_loop(lambda: exams_page(_ctx(request).exams_dir))
    return web.Response(text=page, content_type="text/html", charset="utf-8")


async def exam_report(request: web.Request) -> web.Response:
    ctx, exam_id = _ctx(request), request.match_info["exam_id"]
    try:
        page = await _off_loop(lambda: report_page(ctx.exams_dir, exam_id))
    except NoSuchExam as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    except RecordError as exc:
        log.error("exam report %s: %s", exam_id, exc)
        raise web.HTTPInternalServerError(text=str(exc)) from exc
    response = web.Response(text=page, content_type="text/html", charset="utf-8")
    harden(response, report=True)  # its own CSP: inline CSS and data images, no script
    return response


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)  # no icon; answered so browsers log no error


async def healthz(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    healthy, body = evaluate(ctx.health(), ctx.limits)
    return web.json_response(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    registry = _ctx(request).registry
    body = await _off_loop(lambda: generate_latest(registry))
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def build_app(ctx: ConsoleContext) -> web.Application:
    app = web.Application(middlewares=[ctx.guard.middleware], client_max_size=64 * 1024)
    app[CONTEXT] = ctx
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/stream.mjpg", stream_mjpeg)
    app.router.add_get("/frame.jpg", frame_jpeg)
    app.router.add_get("/api/state", api_state)
    app.router.add_post("/api/exam", api_exam)
    app.router.add_get("/exams", exams)
    app.router.add_get("/exams/{exam_id}", exam_report)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
