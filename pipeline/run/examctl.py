"""`thermoscreen exam start|ready|view|close|abort`: drive a running camera's screening exam.

The command publishes one `exam/set` message to `<prefix>/<device>/<camera>/exam/set` with a
random MQTT v5 correlation id, waits for the retained `exam` state that answers it (the run
sends its answer with the same correlation id), prints one line and exits:

    0  accepted (the line says where the exam stands now)
    1  refused by the run: the line is the run's `last_error`; nothing changed
    2  bad arguments or config
    3  no answer: the broker is unreachable or no `thermoscreen run` serves that camera

The run validates everything (actions, states, exam ids, views, ambient ranges from ITS config),
so a command from this CLI, the console or any MQTT client is judged the same way. The exam id is
an accession code, never a patient's name. Thermography is an adjunct to mammography only.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pipeline import DISCLAIMER
from pipeline.config import AppConfig, ConfigError, load_config
from pipeline.exam.commands import ACTIONS, VIEWS
from pipeline.mqtt.client import (
    MqttSetupError,
    add_broker_arguments,
    broker_overrides,
    connack_refusal,
    make_client,
    new_properties,
)
from pipeline.mqtt.payload import encode
from pipeline.run.command import DEFAULT_CONFIG

EXIT_ACCEPTED, EXIT_REFUSED, EXIT_BAD_INPUT, EXIT_NO_ANSWER = 0, 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do with the camera's exam")
    parser.add_argument(
        "view",
        nargs="?",
        help=f"`view` (and `start` without rest): the view now shown: {', '.join(VIEWS)}",
    )
    parser.add_argument(
        "--id",
        dest="exam_id",
        help="`start`: the exam's accession code (A-Z a-z 0-9 . _ -, at most 64; never a name); "
        "default: generated",
    )
    parser.add_argument("--ambient-c", type=float, help="room temperature now, Celsius")
    parser.add_argument("--humidity-pct", type=float, help="room relative humidity now, %%")
    parser.add_argument(
        "--reason",
        help="`ready` before the criteria: why; `abort`: why; `start VIEW`: why no rest",
    )
    parser.add_argument("--config", type=Path, help=f"YAML config (default {DEFAULT_CONFIG})")
    parser.add_argument("--device-id", help="the device running the camera (config device_id)")
    parser.add_argument("--camera-id", help="the camera (config camera_id)")
    add_broker_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the answer (10)"
    )
    parser.epilog = (
        "exit codes: 0 accepted; 1 refused (the run's reason); 2 bad arguments; 3 no answer. "
        + DISCLAIMER
    )


def command_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `exam/set` JSON object (only the fields given; the run judges them)."""
    command: dict[str, Any] = {"action": args.action}
    for key in ("exam_id", "view", "ambient_c", "humidity_pct", "reason"):
        value = getattr(args, key, None)
        if value is not None:
            command[key] = value
    return command


def describe(state: dict[str, Any]) -> str:
    """One line: where the exam stands after an accepted command."""
    exam_id, where = state.get("exam_id"), state.get("state")
    line = f"exam {exam_id}: {where}"
    accl = state.get("acclimatization") or {}
    if where == "acclimatizing" and accl:
        line += f" (rest {accl['elapsed_s']:.0f} s of {accl['required_s']:.0f} s"
        drift = accl.get("drift_c_per_min")
        line += ")" if drift is None else f", drift {drift:+.2f} C/min)"
    if where == "capturing":
        frames = state.get("frames") or {}
        line += (
            f", view {state.get('view')} (accepted {frames.get('accepted', 0)}, rejected "
            f"{frames.get('rejected', 0)} frames so far)"
        )
    verdict = state.get("exam_verdict")
    if where == "closed":
        if verdict:
            line += (
                f"; exam verdict {verdict['label']} (mean {verdict['positive_label']} "
                f"probability {verdict['score']:.3f} vs threshold {verdict['threshold']:.3f}, "
                f"{verdict['frames']} frames)"
            )
        else:
            line += "; no verdict (no accepted frame of the model's views)"
    if where == "aborted":
        line += f" ({state.get('abort_reason')})"
    if state.get("synthetic_model"):
        line += "; SYNTHETIC MODEL (demo, not a medical model)"
    return line


class Exchange:
    """One command and its answer over MQTT (paho's thread fills in the answer)."""

    def __init__(self, cfg: AppConfig, command: dict[str, Any]) -> None:
        base = f"{cfg.mqtt.topic_prefix}/{cfg.device_id}/{cfg.camera_id}/exam"
        self.state_topic, self.set_topic = base, f"{base}/set"
        self.command = command
        self.correlation = secrets.token_bytes(16)
        self.answer: dict[str, Any] | None = None
        self.failure: str | None = None
        self.done = threading.Event()
        self.cfg = cfg
        self.client = make_client(cfg.mqtt, f"thermoscreen-exam-{secrets.token_hex(6)}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def run(self, timeout_s: float) -> None:
        mqtt_cfg = self.cfg.mqtt
        self.client.connect_async(mqtt_cfg.host, mqtt_cfg.port, keepalive=mqtt_cfg.keepalive_s)
        self.client.loop_start()
        try:
            self.done.wait(timeout_s)
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self.failure = connack_refusal(rc, self.cfg.mqtt.host, self.cfg.mqtt.port)[0]
            self.done.set()
            return
        client.subscribe(self.state_topic, qos=1)

    def _on_subscribe(self, client: mqtt.Client, *_: Any) -> None:
        props = new_properties(PacketTypes.PUBLISH)
        props.CorrelationData = self.correlation
        props.ContentType = "application/json"
        client.publish(self.set_topic, encode(self.command), qos=1, properties=props)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        props: Properties | None = getattr(message, "properties", None)
        if getattr(props, "CorrelationData", None) != self.correlation:
            return  # the retained state before our command, or another sender's answer
        try:
            self.answer = mqtt_json(bytes(message.payload))
        except ValueError:
            self.failure = f"{self.state_topic}: the answer is not a JSON object"
        self.done.set()


def mqtt_json(payload: bytes) -> dict[str, Any]:
    data = json.loads(payload.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


def main(args: argparse.Namespace) -> int:
    flat: dict[str, Any] = {"device_id": args.device_id, "camera_id": args.camera_id}
    try:
        flat.update(broker_overrides(args))
        path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        cfg = load_config(path, {k: v for k, v in flat.items() if v is not None})
        exchange = Exchange(cfg, command_from_args(args))
    except (ConfigError, MqttSetupError) as exc:
        print(f"thermoscreen exam: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    exchange.run(args.timeout)
    if exchange.failure is not None:
        print(f"thermoscreen exam: {exchange.failure}", file=sys.stderr)
        return EXIT_NO_ANSWER
    answer = exchange.answer
    if answer is None:
        print(
            f"thermoscreen exam: no answer on {exchange.state_topic} within {args.timeout:g} s: "
            f"is `thermoscreen run` serving device {cfg.device_id} camera {cfg.camera_id} "
            f"through {cfg.mqtt.host}:{cfg.mqtt.port}?",
            file=sys.stderr,
        )
        return EXIT_NO_ANSWER
    if answer.get("last_error"):
        print(f"thermoscreen exam: refused: {answer['last_error']}", file=sys.stderr)
        return EXIT_REFUSED
    print(describe(answer))
    return EXIT_ACCEPTED
