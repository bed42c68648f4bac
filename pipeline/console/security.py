"""The console's guard: who may ask, and which requests may change anything.

- Host: on a loopback bind, only requests addressed to this machine's loopback names are
  answered, so a web page whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) cannot
  read the console from a browser.
- Password: with `THERMOSCREEN_CONSOLE_PASSWORD` set, every request needs HTTP basic auth with
  it (any user name); a wrong or missing one gets 401 and is counted.
- State changes: only POST changes anything, and a POST must carry the page's CSRF token in the
  `X-CSRF-Token` header, come from this console's own origin (Origin header, or no cross-site
  `Sec-Fetch-Site`) and be JSON (so a cross-site form cannot send it without a preflight).
- Every answer says: no sniffing, no framing, no referrer; pages get a Content-Security-Policy
  that allows only the console's own files (the exam report: its inline CSS and data images).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import BasicAuth, web

from pipeline.console.config import ConsolePlan, is_loopback
from pipeline.console.metrics import ConsoleCounters

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CSRF_HEADER = "X-CSRF-Token"
REALM = "thermoscreen console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)


def _refuse(status: int, text: str) -> web.Response:
    return web.json_response({"ok": False, "error": text}, status=status)


class Guard:
    """See the module docstring; `middleware` is installed on the console's app."""

    def __init__(self, plan: ConsolePlan, counters: ConsoleCounters) -> None:
        self.password = plan.password
        self.loopback = plan.address.loopback
        self.counters = counters
        self.csrf_token = secrets.token_urlsafe(32)

    def host_allowed(self, request: web.Request) -> bool:
        if not self.loopback:
            return True  # reachable by any name; the password guards it
        try:
            name = request.url.host or ""
        except ValueError:  # a Host header that is no host at all
            return False
        return is_loopback(name.strip("[]"))

    def authorized(self, request: web.Request) -> bool:
        if self.password is None:
            return True
        header = request.headers.get("Authorization", "")
        try:
            given = BasicAuth.decode(header).password if header else ""
        except ValueError:
            given = ""
        return hmac.compare_digest(given.encode("utf-8"), self.password.encode("utf-8"))

    def same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is not None:
            return origin == f"{request.scheme}://{request.host}"
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")

    def csrf_ok(self, request: web.Request) -> bool:
        given = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(given.encode("utf-8"), self.csrf_token.encode("utf-8"))

    def _check(self, request: web.Request) -> web.Response | None:
        """A refusal, or None when the request may go on."""
        if not self.host_allowed(request):
            self.counters.refused_requests["host"] += 1
            return _refuse(421, "this console answers only to its loopback address")
        if not self.authorized(request):
            self.counters.auth_failures += 1
            response = _refuse(401, "password required (HTTP basic auth, any user name)")
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            return response
        if request.method in SAFE_METHODS:
            return None
        if not self.same_origin(request):
            self.counters.refused_requests["origin"] += 1
            return _refuse(403, "cross-site request refused: send it from the console's page")
        if not self.csrf_ok(request):
            self.counters.refused_requests["csrf"] += 1
            return _refuse(403, f"missing or wrong {CSRF_HEADER}: reload the console's page")
        if request.content_type != "application/json":
            return _refuse(415, "send the command as application/json")
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self._check(request)
        if refusal is not None:
            harden(refusal)
            return refusal
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            harden(exc)
            raise
        if not response.prepared:
            harden(response)
        return response


def harden(response: web.StreamResponse, report: bool = False) -> None:
    """The headers every answer carries (a streaming handler calls it before `prepare`)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("Content-Security-Policy", REPORT_CSP if report else PAGE_CSP)
