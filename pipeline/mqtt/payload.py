"""Wire payloads: a FrameResult becomes the JSON the result JSON Schema describes.

The schema file (pipeline/schemas/result.schema.json) is the contract for subscribers; the
publisher and the logger both validate against it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from pipeline.types import FrameResult, ModelInfo

RESULT_SCHEMA_VERSION = 2  # 2: exam_id, view, quality, file, synthetic_model


def rfc3339_ms(ts: float) -> str:
    """Wall-clock seconds -> RFC 3339 UTC with milliseconds, e.g. 2026-11-24T01:02:03.456Z."""
    moment = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def result_payload(
    result: FrameResult, device_id: str, model: ModelInfo, message_id: str | None = None
) -> dict[str, Any]:
    """The result message. `message_id` is fixed here, before the outbox, so re-sends keep it."""
    pred = result.prediction
    payload: dict[str, Any] = {
        "schema": RESULT_SCHEMA_VERSION,
        "message_id": message_id or str(uuid.uuid4()),
        "seq": result.seq,
        "device_id": device_id,
        "camera_id": result.camera_id,
        "session_id": result.session_id,
        "mode": result.mode,
        "frame_index": result.frame_index,
        "capture_ts": rfc3339_ms(result.capture_ts),
        "source": result.source,
        "model": {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "backend": model.backend,
        },
        "result": {
            "label": pred.label,
            "index": pred.index,
            "score": round(pred.score, 6),
            "top_k": [
                {"index": t.index, "label": t.label, "score": round(t.score, 6)} for t in pred.top_k
            ],
        },
        "exam_id": result.exam.exam_id,
        "view": result.exam.view,
        "quality": None
        if result.exam.accepted is None
        else {"accepted": result.exam.accepted, "reasons": list(result.exam.reasons)},
        "file": result.file,
        "synthetic_model": model.synthetic,
        "latency_ms": {
            "capture_to_result": round(max(result.capture_to_result_ms, 0.0), 3),
            "inference": round(max(pred.inference_ms, 0.0), 3),
        },
    }
    if result.thermal is not None:
        payload["thermal"] = {
            "t_min_c": result.thermal.t_min_c,
            "t_max_c": result.thermal.t_max_c,
            "t_mean_c": result.thermal.t_mean_c,
        }
    return payload


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    text = resources.files("pipeline.mqtt.schemas").joinpath(f"{name}.schema.json").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(payload: Any, name: str = "result") -> list[str]:
    """Every way `payload` breaks the named schema, as 'field: message' lines (empty when valid)."""
    errors = sorted(_validator(name).iter_errors(payload), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors]


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
