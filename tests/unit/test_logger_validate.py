"""The logger's validation as pure functions: nesting is measured without parsing (linearly,
strings ignored), valid payloads pass, and stored JSON compares by value."""

from __future__ import annotations

import pytest

from pipeline.logger.store import same_json
from pipeline.logger.validate import MAX_DEPTH, Reject, classify, nesting_depth, parse_json
from pipeline.mqtt.payload import encode
from tests.helpers.mqtt_logger import make_payload, result_topic


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b'{"a": "[[[{{", "b": [[1]]}', 3),
        (b'["\\"[", ["\\\\"], [{"x": "]]]"}]]', 3),
        (b'"\\' * 32_000, 0),  # linear: a quadratic scanner takes minutes on this
        (b"[" * 65_000, MAX_DEPTH + 1),
    ],
)
def test_nesting_depth_ignores_brackets_inside_strings(raw: bytes, depth: int) -> None:
    assert nesting_depth(raw) == depth


def test_valid_payloads_of_every_kind_pass() -> None:
    payload = make_payload(3)
    accepted = classify(result_topic(payload), encode(payload), "thermoscreen", 65536)
    assert not isinstance(accepted, Reject)
    assert accepted.payload == payload
    assert parse_json(b'{"x": 1.5e3, "y": -0.0}') == {"x": 1500.0, "y": -0.0}


def test_same_json_compares_numbers_by_value_the_way_jsonb_returns_them() -> None:
    assert same_json({"a": [1e2, 0.5]}, {"a": [100, 0.5]})
    assert not same_json({"a": 1}, {"a": True})
    assert not same_json({"a": 2**63 - 1}, {"a": 2**63 - 2})
    assert not same_json({"a": 1}, {"a": 1, "b": 2})
