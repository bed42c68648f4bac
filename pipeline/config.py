"""Configuration: pydantic v2 models, unknown keys forbidden, loaded once and passed down.

Secrets (MQTT password) come only from the environment. This module holds the MQTT and outbox
settings used by the publisher and the logger; the runner's settings are added beside them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "THERMOSCREEN_"
ENV_MQTT_USERNAME = "THERMOSCREEN_MQTT_USERNAME"
ENV_MQTT_PASSWORD = "THERMOSCREEN_MQTT_PASSWORD"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    enabled: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(default=None, description="CA certificate that signed the broker's.")
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mutual TLS).")
    insecure: bool = Field(
        default=False, description="Skip hostname verification (testing only; never in a clinic)."
    )


class MqttConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    topic_prefix: str = Field(default="thermoscreen", description="First topic level.")
    client_id: str | None = Field(
        default=None, description="MQTT client id; default thermoscreen-<device_id>."
    )
    keepalive_s: int = Field(default=30, ge=5, description="MQTT keepalive in seconds.")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay.")
    result_expiry_s: int = Field(
        default=86400, ge=1, description="MQTT v5 message expiry on result messages."
    )
    session_expiry_s: int = Field(
        default=7 * 86400, ge=0, description="Session expiry for persistent (logger) sessions."
    )
    stats_interval_s: float = Field(default=10.0, gt=0, description="Seconds between stats messages.")
    username: str | None = Field(
        default=None, description=f"User name; overridden by ${ENV_MQTT_USERNAME}."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")

    def resolved_username(self) -> str | None:
        return os.environ.get(ENV_MQTT_USERNAME) or self.username

    @staticmethod
    def password() -> str | None:
        """Secrets come only from the environment, never from a config file."""
        return os.environ.get(ENV_MQTT_PASSWORD) or None


class OutboxConfig(_Strict):
    enabled: bool = Field(default=True, description="Write results to a durable outbox before publish.")
    path: Path = Field(
        default=Path("var/outbox.sqlite"), description="SQLite file holding unacknowledged results."
    )
    max_messages: int = Field(
        default=100_000, ge=1, description="Bound on unacknowledged results kept on disk."
    )
    when_full: Literal["block", "drop_oldest"] = Field(
        default="block",
        description="At the bound: block the producer (replay backpressure) or drop the oldest "
        "unacknowledged result and count it (live).",
    )
