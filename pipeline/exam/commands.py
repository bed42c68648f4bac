"""Exam commands as they arrive on `exam/set`: strict validation of hostile input.

A command is a JSON object `{"action": "start"|"ready"|"view"|"close"|"abort", "exam_id"?,
"view"?, "ambient_c"?, "humidity_pct"?, "reason"?}` (DESIGN.md, "MQTT additions"). Anything a
sender gets wrong (unknown action or field, a field the action does not take, wrong type, NaN,
infinity, a huge number, nesting, an oversized payload, a malformed exam id, an unknown view, an
ambient value out of range) raises `CommandError` with one line naming the field and the fix;
the exam is then left unchanged by the caller. Nothing here knows the exam's state: the state
machine (`pipeline.exam.machine`) decides whether a valid command fits the current state.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

Action = Literal["start", "ready", "view", "close", "abort"]
View = Literal["frontal", "left-oblique", "right-oblique", "left-lateral", "right-lateral"]
ACTIONS: tuple[Action, ...] = get_args(Action)
VIEWS: tuple[View, ...] = get_args(View)  # DMR-IR's five static views

EXAM_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_COMMAND_BYTES = 4096
MAX_REASON_CHARS = 200
HUMIDITY_RANGE_PCT = (0.0, 100.0)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Which optional fields each action takes; "view" is required by the view action.
_FIELDS: dict[Action, frozenset[str]] = {
    "start": frozenset({"exam_id", "view", "ambient_c", "humidity_pct", "reason"}),
    "ready": frozenset({"reason", "ambient_c", "humidity_pct"}),
    "view": frozenset({"view", "ambient_c", "humidity_pct"}),
    "close": frozenset({"ambient_c", "humidity_pct"}),
    "abort": frozenset({"reason"}),
}
_ALL_FIELDS = frozenset({"action"}).union(*_FIELDS.values())


class ExamState(str, enum.Enum):
    """Where an exam stands (DESIGN.md): idle -> acclimatizing -> ready -> capturing -> closed,
    or aborted from any state with an exam."""

    IDLE = "idle"
    ACCLIMATIZING = "acclimatizing"
    READY = "ready"
    CAPTURING = "capturing"
    CLOSED = "closed"
    ABORTED = "aborted"

    @property
    def in_progress(self) -> bool:
        """True while an exam is open (a crash now leaves an unfinished record)."""
        return self in (ExamState.ACCLIMATIZING, ExamState.READY, ExamState.CAPTURING)


class CommandError(ValueError):
    """A refused command; the message is one line naming the field and the fix."""


@dataclass(frozen=True)
class ExamCommand:
    """One validated command. Absent fields are None."""

    action: Action
    exam_id: str | None = None
    view: View | None = None
    ambient_c: float | None = None
    humidity_pct: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class SensorReading:
    """A room sensor's reading (config `exam.ambient_topic`); either value may be absent."""

    ambient_c: float | None
    humidity_pct: float | None


def _show(value: object) -> str:
    """A short, safe rendering of a refused value for the one-line message."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**12:
        return "a huge integer"  # repr() of a 5000-digit int raises
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_exam_id(value: object, where: str = "exam_id") -> str:
    """An accession code `[A-Za-z0-9._-]{1,64}` (never a name); raise CommandError otherwise."""
    if not isinstance(value, str):
        raise CommandError(f"{where}: expected a string, got {type(value).__name__}")
    if not EXAM_ID_RE.fullmatch(value) or value in (".", ".."):
        raise CommandError(
            f"{where}: {_show(value)} is not an exam id; use 1-64 characters from A-Z a-z 0-9 . _ -"
            " (an accession code, never a patient name)"
        )
    return value


def generate_exam_id(now_s: float) -> str:
    """An opaque id from the UTC time and 6 random hex digits, e.g. `ex-20260114-093012-4f2a9c`."""
    moment = dt.datetime.fromtimestamp(now_s, tz=dt.timezone.utc)
    return f"ex-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"{name}: expected a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > 10**6:
        raise CommandError(f"{name}: {_show(value)} is out of range; use {low:g} to {high:g}")
    number = float(value)
    if not math.isfinite(number):
        raise CommandError(f"{name}: {_show(value)} is not a finite number")
    if not low <= number <= high:
        raise CommandError(f"{name}: {number:g} is out of range; use {low:g} to {high:g}")
    return number


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise CommandError(f"{name}: expected a string, got {type(value).__name__}")
    if not value.strip() or len(value) > MAX_REASON_CHARS or _CONTROL.search(value):
        raise CommandError(
            f"{name}: use 1-{MAX_REASON_CHARS} printable characters on one line "
            "(no patient identity)"
        )
    return value.strip()


def _view(value: object) -> View:
    if not isinstance(value, str) or value not in VIEWS:
        raise CommandError(f"view: {_show(value)} is not a view; use one of {', '.join(VIEWS)}")
    return value  # narrowed by the membership test


def _action(data: Mapping[str, Any]) -> Action:
    action = data.get("action")
    if action is None:
        raise CommandError(f"action: missing; use one of {', '.join(ACTIONS)}")
    if not isinstance(action, str) or action not in ACTIONS:
        raise CommandError(
            f"action: {_show(action)} is not an action; use one of {', '.join(ACTIONS)}"
        )
    return action  # narrowed by the membership test


def parse_command(data: object, ambient_c_range: tuple[float, float] = (10.0, 40.0)) -> ExamCommand:
    """A decoded `exam/set` object -> ExamCommand, or CommandError naming what is wrong.

    Fields set to null count as absent. A field the action does not take is refused rather than
    ignored, so a sender learns about a typo instead of losing a value.
    """
    if not isinstance(data, Mapping):
        raise CommandError(f"command: expected a JSON object, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str) or key not in _ALL_FIELDS:
            raise CommandError(
                f"command: unknown field {_show(key)}; fields: {', '.join(sorted(_ALL_FIELDS))}"
            )
    action = _action(data)
    given = {k: v for k, v in data.items() if k != "action" and v is not None}
    for key in given:
        if key not in _FIELDS[action]:
            takes = ", ".join(sorted(_FIELDS[action])) or "no fields"
            raise CommandError(f"{key}: '{action}' does not take it; '{action}' takes {takes}")
    if action == "view" and "view" not in given:
        raise CommandError(f"view: missing; name the view: {', '.join(VIEWS)}")
    if action == "start" and "reason" in given and "view" not in given:
        raise CommandError(
            "reason: 'start' takes a reason only with a view (why acclimatization was skipped)"
        )
    return ExamCommand(
        action=action,
        exam_id=check_exam_id(given["exam_id"]) if "exam_id" in given else None,
        view=_view(given["view"]) if "view" in given else None,
        ambient_c=_number("ambient_c", given["ambient_c"], *ambient_c_range)
        if "ambient_c" in given
        else None,
        humidity_pct=_number("humidity_pct", given["humidity_pct"], *HUMIDITY_RANGE_PCT)
        if "humidity_pct" in given
        else None,
        reason=_text("reason", given["reason"]) if "reason" in given else None,
    )


def _refuse_constant(name: str) -> Any:
    raise CommandError(f"command: {name} is not a number JSON allows; send a finite number")


def decode_json_object(raw: bytes | str, what: str) -> Any:
    """Strict JSON for small control payloads: size-limited, no NaN/Infinity, no deep nesting.

    Raises CommandError with one line. Oversized integers (Python's digit limit) and nesting
    beyond the recursion limit are refused, never crash the caller.
    """
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > MAX_COMMAND_BYTES:
        raise CommandError(f"{what}: {size} bytes is too large; send at most {MAX_COMMAND_BYTES}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_refuse_constant)
    except CommandError:
        raise
    except UnicodeDecodeError as exc:
        raise CommandError(f"{what}: not UTF-8 text (byte {exc.start}); send JSON") from exc
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:  # int digit limit, deep nesting
        raise CommandError(
            f"{what}: unreadable JSON ({type(exc).__name__}); send a flat object"
        ) from exc


def decode_command(
    raw: bytes | str, ambient_c_range: tuple[float, float] = (10.0, 40.0)
) -> ExamCommand:
    """An `exam/set` MQTT payload (JSON bytes) -> ExamCommand, or CommandError."""
    return parse_command(decode_json_object(raw, "command"), ambient_c_range)


def decode_sensor_reading(
    raw: bytes | str, ambient_c_range: tuple[float, float] = (10.0, 40.0)
) -> SensorReading:
    """A room sensor's payload: a bare number (ambient C) or `{"ambient_c"?, "humidity_pct"?}`."""
    data = decode_json_object(raw, "sensor")
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return SensorReading(_number("ambient_c", data, *ambient_c_range), None)
    if not isinstance(data, Mapping):
        raise CommandError("sensor: expected a number or an object with ambient_c/humidity_pct")
    unknown = set(data) - {"ambient_c", "humidity_pct"}
    if unknown or not data:
        raise CommandError("sensor: expected an object with ambient_c and/or humidity_pct only")
    ambient = data.get("ambient_c")
    humidity = data.get("humidity_pct")
    return SensorReading(
        _number("ambient_c", ambient, *ambient_c_range) if ambient is not None else None,
        _number("humidity_pct", humidity, *HUMIDITY_RANGE_PCT) if humidity is not None else None,
    )
