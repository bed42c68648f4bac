"""exam/set commands: strict validation of hostile input, one line per refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.exam.commands import (
    MAX_COMMAND_BYTES,
    CommandError,
    ExamCommand,
    check_exam_id,
    decode_command,
    decode_sensor_reading,
    generate_exam_id,
    parse_command,
)
from pipeline.mqtt.payload import schema_errors
from tests.helpers.exam import T0


def test_valid_commands_parse() -> None:
    cmd = parse_command(
        {"action": "start", "exam_id": "ACC-2026.01_7", "ambient_c": 22, "humidity_pct": 45.5}
    )
    assert cmd == ExamCommand("start", exam_id="ACC-2026.01_7", ambient_c=22.0, humidity_pct=45.5)
    assert parse_command({"action": "view", "view": "left-oblique"}).view == "left-oblique"
    assert parse_command({"action": "abort", "reason": "patient left"}).reason == "patient left"
    # null counts as absent (CLIs and consoles send every key)
    assert parse_command({"action": "close", "exam_id": None, "view": None}) == ExamCommand("close")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "action: missing"),
        ({"action": "begin"}, "action: 'begin' is not an action"),
        ({"action": 1}, "action: 1 is not an action"),
        ({"action": "start", "patient": "x"}, "unknown field 'patient'"),
        ({"action": "start", "exam_id": "Jane Doe"}, "exam_id: 'Jane Doe' is not an exam id"),
        ({"action": "start", "exam_id": "a" * 65}, "is not an exam id"),
        ({"action": "start", "exam_id": ".."}, "is not an exam id"),
        ({"action": "start", "exam_id": "../etc"}, "is not an exam id"),
        ({"action": "start", "exam_id": 12}, "exam_id: expected a string"),
        ({"action": "view"}, "view: missing"),
        ({"action": "view", "view": "side"}, "view: 'side' is not a view"),
        ({"action": "view", "view": ["frontal"]}, "is not a view"),
        ({"action": "start", "ambient_c": 55}, "ambient_c: 55 is out of range"),
        ({"action": "start", "ambient_c": 5}, "ambient_c: 5 is out of range"),
        ({"action": "start", "ambient_c": True}, "ambient_c: expected a number, got bool"),
        ({"action": "start", "ambient_c": "22"}, "ambient_c: expected a number, got str"),
        ({"action": "start", "ambient_c": float("nan")}, "ambient_c: nan is not a finite"),
        ({"action": "start", "ambient_c": 10**5000}, "ambient_c: a huge integer is out of range"),
        ({"action": "start", "humidity_pct": 101}, "humidity_pct: 101 is out of range"),
        ({"action": "close", "view": "frontal"}, "view: 'close' does not take it"),
        ({"action": "abort", "ambient_c": 20}, "ambient_c: 'abort' does not take it"),
        ({"action": "start", "reason": "x"}, "'start' takes a reason only with a view"),
        ({"action": "abort", "reason": "a\nb"}, "reason: use 1-200 printable"),
        ({"action": "abort", "reason": "x" * 201}, "reason: use 1-200 printable"),
        ({"action": "abort", "reason": {"a": {"b": 1}}}, "reason: expected a string"),
        (["action", "start"], "command: expected a JSON object, got list"),
        ("start", "command: expected a JSON object, got str"),
    ],
)
def test_bad_commands_are_refused_with_one_line(data: Any, field: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_command(data)
    message = str(err.value)
    assert field in message
    assert "\n" not in message and len(message) < 200


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"action": "start", "ambient_c": NaN}', "NaN is not a number JSON allows"),
        (b'{"action": "start", "ambient_c": Infinity}', "Infinity is not a number"),
        (b'{"action": "start", "ambient_c": 1e999}', "inf is not a finite number"),
        (b'{"action": "start", "ambient_c": ' + b"9" * 5000 + b"}", "too large"),
        (b'{"action": "start", "ambient_c": ' + b"9" * 4050 + b"}", "huge integer is out of range"),
        (b"[" * 3000 + b"]" * 3000, "too large"),
        (b"[" * 2000 + b"]" * 2000, "unreadable JSON"),
        (b'{"action": "start"', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "not valid JSON"),
        (b"null", "expected a JSON object, got NoneType"),
        (b'{"action": "start", "exam_id": {"a": [1, {"b": 2}]}}', "exam_id: expected a string"),
    ],
)
def test_hostile_payloads_are_refused(raw: bytes, field: str) -> None:
    with pytest.raises(CommandError) as err:
        decode_command(raw)
    assert field in str(err.value)
    assert len(str(err.value)) < 200


def test_size_limit_is_exact() -> None:
    padding = MAX_COMMAND_BYTES - len(b'{"action":"abort","reason":""}')
    ok = b'{"action":"abort","reason":"' + b"x" * 0 + b'"}' + b" " * padding
    with pytest.raises(CommandError, match="reason"):  # within the size limit, so parsed
        decode_command(ok)
    with pytest.raises(CommandError, match="too large"):
        decode_command(ok + b" ")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
command_like = st.fixed_dictionaries(
    {"action": st.sampled_from(["start", "ready", "view", "close", "abort", "x"])},
    optional={
        "exam_id": json_values,
        "view": st.sampled_from(["frontal", "left-lateral", "top"]) | json_values,
        "ambient_c": json_values,
        "humidity_pct": json_values,
        "reason": json_values,
    },
)


@settings(max_examples=150, deadline=None)
@given(data=command_like | json_values)
def test_anything_either_parses_to_a_valid_command_or_is_refused(data: Any) -> None:
    try:
        cmd = parse_command(data)
    except CommandError:
        return
    # whatever parses also satisfies the published command schema
    payload = {k: v for k, v in vars(cmd).items() if v is not None}
    assert schema_errors(json.loads(json.dumps(payload)), "exam-command") == []


def test_exam_ids() -> None:
    assert check_exam_id("A.b_c-9") == "A.b_c-9"
    generated = generate_exam_id(T0)
    assert generated.startswith("ex-20260101-000000-")
    check_exam_id(generated)
    assert generate_exam_id(T0) != generated


def test_sensor_readings() -> None:
    assert decode_sensor_reading(b"21.5").ambient_c == 21.5
    reading = decode_sensor_reading(b'{"ambient_c": 22, "humidity_pct": 40}')
    assert (reading.ambient_c, reading.humidity_pct) == (22.0, 40.0)
    for bad in (b"99", b'{"temp": 1}', b"{}", b'"x"', b"NaN", b'{"humidity_pct": -1}'):
        with pytest.raises(CommandError):
            decode_sensor_reading(bad)
