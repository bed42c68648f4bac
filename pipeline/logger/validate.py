"""What the logger accepts: route a message by topic, parse it strictly, check it fits the store.

Any device account may publish anything under its own prefix, so every byte that arrives is
hostile until checked. A message is accepted only when it is strict JSON (no NaN or Infinity,
which SQL columns and PostgreSQL's jsonb cannot hold), nests no deeper than a payload of the
contract ever does, holds only values every store can keep (64-bit integers, text without NUL
characters or unpaired surrogates), and passes its JSON Schema. Everything else becomes a
`Reject` with the reason, which the logger stores, acknowledges and counts: a message the store
cannot take must never be left unacknowledged, or the broker re-sends it after every restart and
every other device's results wait behind it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.mqtt.client import is_id
from pipeline.mqtt.payload import schema_errors

STATUS_VALUES = frozenset({"online", "stopped", "offline"})
# Payloads of the contract nest 4 levels (result.top_k[i].score); deeper input is hostile, and
# Python's decoder and encoders recurse, so it is refused before parsing.
MAX_DEPTH = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TOKENS = re.compile(rb'[\[\]{}"\\]')

Kind = Literal[
    "result",
    "state",
    "session",
    "status",
    "stats",
    "stored",
    "exam",
    "exam-summary",
    "exam-command",
]
_KINDS: dict[int, tuple[Kind, ...]] = {
    3: ("status", "stats"),
    4: ("result", "state", "session", "stored", "exam"),
    5: ("exam-summary", "exam-command"),  # <camera>/exam/summary, <camera>/exam/set
}
_LEVEL = {"exam-summary": "exam/summary", "exam-command": "exam/set"}  # kind -> topic levels
# not stored: telemetry, loggers' own delivery confirmations, requests to a run
NOT_STORED: tuple[Kind, ...] = ("stats", "stored", "exam-command")


@dataclass(frozen=True)
class Reject:
    """Why a message is kept in `rejects` instead of its table."""

    reason: str


@dataclass(frozen=True)
class Accepted:
    """A valid message: its kind, the ids from its topic, and its decoded payload."""

    kind: Kind
    ids: list[str]  # [device] or [device, camera]
    payload: Any  # dict for result/state/session, str for status, None for stats/stored


def classify(topic: str, raw: bytes, prefix: str, max_payload_bytes: int) -> Accepted | Reject:
    """The accepted message, or the reason to reject it; never raises for any input."""
    if len(raw) > max_payload_bytes:
        return Reject(f"oversized: {len(raw)} bytes > limit {max_payload_bytes}")
    routed = _route(topic, prefix)
    if isinstance(routed, Reject):
        return routed
    kind, ids = routed
    if kind in NOT_STORED:
        return Accepted(kind, ids, None)
    if kind == "status":
        text = raw.decode("utf-8", errors="replace").strip()
        if text not in STATUS_VALUES:
            return Reject(f"status: {text[:40]!r} is not one of {', '.join(sorted(STATUS_VALUES))}")
        return Accepted(kind, ids, text)
    payload = parse_json(raw)
    if isinstance(payload, Reject):
        return payload
    if not isinstance(payload, dict):
        return Reject(f"not a JSON object: {type(payload).__name__}")
    problem = unstorable(payload)
    if problem:
        return Reject(f"cannot be stored: {problem}")
    errors = schema_errors(payload, kind)  # every stored kind has its schema, by that name
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return Reject(f"{kind} schema: {errors[0]}{more}")
    if [payload["device_id"], payload["camera_id"]] != ids:
        return Reject(
            f"topic ids {'/'.join(ids)} differ from payload "
            f"{payload['device_id']}/{payload['camera_id']}"
        )
    return Accepted(kind, ids, payload)


def _route(topic: str, prefix: str) -> tuple[Kind, list[str]] | Reject:
    parts = topic.split("/")
    if parts[0] != prefix or len(parts) not in _KINDS:
        return Reject(f"unknown topic (expected {prefix}/<device>[/<camera>]/<kind>)")
    split = 2 if len(parts) == 5 else 1
    ids, kind = parts[1:-split], "/".join(parts[-split:])
    known = _KINDS[len(parts)]
    found = [k for k in known if _LEVEL.get(k, k) == kind]
    if not found:
        names = ", ".join(_LEVEL.get(k, k) for k in known)
        return Reject(f"unknown topic kind {kind!r} (expected one of {names})")
    bad = [i for i in ids if not is_id(i)]
    if bad:
        return Reject(f"unknown topic: id {bad[0]!r} is not [A-Za-z0-9_.-]{{1,64}}")
    return found[0], ids


def nesting_depth(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in JSON text (brackets inside strings do not count);
    stops counting once past `limit`. One linear pass over the structural characters only."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position a backslash inside a string escapes
    for match in _TOKENS.finditer(raw):
        pos, char = match.start(), match.group()
        if pos == escaped_at:
            continue
        if in_string:
            if char == b"\\":
                escaped_at = pos + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range for a 64-bit float")
    return value


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN, Infinity or overflowing floats, bounded nesting), or a Reject."""
    if nesting_depth(raw) > MAX_DEPTH:
        return Reject(f"nests deeper than {MAX_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        return Reject(f"not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})")
    except RecursionError:
        return Reject("nests too deep to parse")
    except ValueError as exc:  # JSONDecodeError, the constants above, too many digits
        return Reject(f"not valid JSON: {exc}")


def unstorable(payload: Any) -> str | None:
    """Why a decoded payload cannot be stored by every engine (its path and the value), or None.

    SQL integer columns and JSON consumers hold signed 64-bit integers; PostgreSQL text and jsonb
    refuse NUL characters; UTF-8 (both engines' encoding) cannot carry unpaired surrogates.
    """
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                problem = _bad_text(key)
                if problem:
                    return f"{path or '(root)'}: key {problem}"
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            problem = _bad_text(value)
            if problem:
                return f"{path}: {problem}"
        elif _is_int(value) and not INT64_MIN <= value <= INT64_MAX:
            return f"{path}: integer {_short(str(value))} is outside the 64-bit range"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "text contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text contains an unpaired surrogate (not UTF-8)"
    return None


def _short(text: str, keep: int = 24) -> str:
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} digits)"
