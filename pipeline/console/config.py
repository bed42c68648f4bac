"""The console's settings (`console:` in config/*.yaml) and the checks made before it listens.

The console binds to loopback unless told otherwise. Any other address is reachable from the
network, so it needs a password, read only from the environment
(`THERMOSCREEN_CONSOLE_PASSWORD`, never from a config file), or the console refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_CONSOLE_PASSWORD = "THERMOSCREEN_CONSOLE_PASSWORD"
MIN_PASSWORD_CHARS = 8
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class ConsoleError(Exception):
    """The console cannot start (address, password, TLS files, port in use): one line."""


class ConsoleConfig(BaseModel):
    """The operator console: where it listens and how it streams (DESIGN.md, "Operator
    console")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str | None = Field(
        default=None,
        description="HOST:PORT the console serves on (e.g. 127.0.0.1:8080; port 0 picks a free "
        "one); null: no console. Any address but loopback needs $THERMOSCREEN_CONSOLE_PASSWORD.",
    )
    stream_max_fps: float = Field(
        default=15.0,
        gt=0,
        le=120,
        description="At most this many annotated frames per second are JPEG-encoded for the "
        "live view (only while someone watches); a slower camera is shown at its own rate.",
    )
    stream_cpu_share: float = Field(
        default=0.03,
        gt=0,
        le=1,
        description="At most this share of the machine's CPU (all cores together) goes to "
        "drawing and encoding the live view; a small machine then shows it below the camera's "
        "rate, and the pipeline keeps its own.",
    )
    jpeg_quality: int = Field(
        default=80, ge=10, le=100, description="JPEG quality of the live view (10-100)."
    )
    max_viewers: int = Field(
        default=8, ge=1, le=64, description="Live views served at once; more are refused (503)."
    )
    stale_s: float = Field(
        default=5.0,
        gt=0,
        description="/healthz reports capture and classification unhealthy when no result came "
        "for this many seconds.",
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate: serve HTTPS (advised whenever the console is reachable "
        "from the network, so the password never crosses it in clear text).",
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


@dataclass(frozen=True)
class ListenAddress:
    """Where the console listens, and whether only this machine can reach it."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, port: int | None = None, tls: bool = False) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port if port is None else port}/"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and the usual names of this machine; everything else is the network."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> ListenAddress:
    """`HOST:PORT` or `[v6]:PORT` -> ListenAddress; ValueError (one line) otherwise. (Port 0,
    which mqtt.client.parse_host_port refuses for a broker, lets the system pick one here.)"""
    hint = (
        f"{text!r} is not HOST:PORT; use e.g. 127.0.0.1:8080 (loopback) or 0.0.0.0:8080 "
        "(the network, with a password)"
    )
    parts = urlsplit(f"//{str(text).strip()}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port out of range or not a number
        raise ValueError(hint) from exc
    if not host or port is None or parts.path or parts.username is not None:
        raise ValueError(hint)
    return ListenAddress(host, port)


@dataclass(frozen=True)
class ConsolePlan:
    """A checked console: the address, the password (None on loopback without one), TLS."""

    address: ListenAddress
    password: str | None
    tls_cert_file: Path | None
    tls_key_file: Path | None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def plan_console(cfg: ConsoleConfig, env: Mapping[str, str] | None = None) -> ConsolePlan | None:
    """The console to start, or None when `listen` is unset. ConsoleError (one line) for a
    network address without a password, a short password or half a TLS pair."""
    if cfg.listen is None:
        return None
    env = os.environ if env is None else env
    address = parse_listen(cfg.listen)
    password = env.get(ENV_CONSOLE_PASSWORD) or None
    where = f"console {cfg.listen}"
    if password is None and not address.loopback:
        raise ConsoleError(
            f"{where}: not a loopback address, so it needs a password: set "
            f"${ENV_CONSOLE_PASSWORD} (at least {MIN_PASSWORD_CHARS} characters) or listen on "
            "127.0.0.1"
        )
    if password is not None and len(password) < MIN_PASSWORD_CHARS:
        raise ConsoleError(
            f"{where}: ${ENV_CONSOLE_PASSWORD} is shorter than {MIN_PASSWORD_CHARS} characters; "
            "choose a longer one"
        )
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        raise ConsoleError(
            f"{where}: console.tls_cert_file and console.tls_key_file go together; set both"
        )
    for path in (cfg.tls_cert_file, cfg.tls_key_file):
        if path is not None and not Path(path).is_file():
            raise ConsoleError(f"{where}: TLS file {path} not found; fix console.tls_*_file")
    return ConsolePlan(address, password, cfg.tls_cert_file, cfg.tls_key_file)
