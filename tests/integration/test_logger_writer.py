"""The logger's write path (parse, validate, store) on SQLite and a real PostgreSQL: no message a
device can send stops it. Hostile payloads become counted rejects with their reason, the valid
messages around them are stored, and property-based fuzzing (hypothesis) checks that for any
input the batch commits, every message is counted once, and what was stored reads back intact."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.logger.store import SqliteStore, Store, StoreRefused, open_store
from pipeline.logger.validate import MAX_DEPTH, Reject, classify
from pipeline.logger.writer import Counters, Incoming, Limits, store_batch
from pipeline.mqtt.payload import encode
from tests.helpers.mqtt_logger import make_payload
from tests.helpers.postgres import fresh_database

LIMITS = Limits()
TOPIC = "thermoscreen/edge-01/cam0/result"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One open store per engine for the module (examples use fresh message ids)."""
    if request.param == "sqlite":
        opened = open_store(tmp_path_factory.mktemp("writer") / "results.sqlite")
    else:
        opened = open_store(fresh_database(request.getfixturevalue("pg_server")))
    yield opened
    opened.close()


def _msg(raw: bytes, topic: str = TOPIC) -> Incoming:
    return Incoming(topic, raw, mid=1, qos=1, generation=1, received_ts=1.0)


def _with(payload: dict[str, Any], path: str, value_json: str) -> bytes:
    """The payload's JSON with the field at `path` replaced by raw JSON text (NaN, 2**64...)."""
    marker = f"__marker_{uuid.uuid4().hex}__"
    target = payload
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    target[leaf] = marker
    return json.dumps(payload).replace(f'"{marker}"', value_json).encode()


def _poison() -> list[tuple[str, bytes, str]]:
    """(case, raw, expected reason) for each payload that crashed or would crash the logger."""
    nested_array = b"[" * 32_000 + b"]" * 32_000  # 64,000 bytes: under the size limit
    nested_object = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    deep_field = _with(make_payload(0), "source", "[" * 40 + "]" * 40)
    return [
        ("NaN score", _with(make_payload(0), "result.score", "NaN"), "NaN is not JSON"),
        ("Infinity", _with(make_payload(0), "latency_ms.inference", "Infinity"), "Infinity"),
        ("1e400 score", _with(make_payload(0), "result.score", "1e400"), "out of range"),
        ("64 KB nested array", nested_array, f"nests deeper than {MAX_DEPTH} levels"),
        ("nested object", nested_object, f"nests deeper than {MAX_DEPTH} levels"),
        ("nested field", deep_field, f"nests deeper than {MAX_DEPTH} levels"),
        ("seq 2**64", _with(make_payload(0), "seq", str(2**64)), "seq: integer"),
        ("frame_index 2**63", _with(make_payload(0), "frame_index", str(2**63)), "64-bit"),
        ("5000 digits", _with(make_payload(0), "seq", "9" * 5000), "not valid JSON"),
        ("NUL in label", _with(make_payload(0), "result.label", '"a\\u0000b"'), "NUL"),
        ("lone surrogate", _with(make_payload(0), "result.label", '"\\ud800"'), "surrogate"),
        ("not UTF-8", b'{"a": "\xff"}', "not UTF-8"),
    ]


@pytest.mark.parametrize(("case", "raw", "reason"), _poison(), ids=[c[0] for c in _poison()])
def test_poison_is_a_counted_reject_and_the_results_after_it_are_stored(
    store: Store, case: str, raw: bytes, reason: str
) -> None:
    before = store.counts()
    good = make_payload(1)
    counters = store_batch(store, [_msg(raw), _msg(encode(good))], LIMITS, Counters())
    assert (counters.rejects, counters.stored, counters.handled) == (1, 1, 2)
    after = store.counts()
    assert (after.rejects, after.results) == (before.rejects + 1, before.results + 1)
    last = store.rejects()[-1]
    assert reason in last.reason, last.reason
    assert (last.raw, last.size_bytes) == (raw[: LIMITS.reject_keep_bytes], len(raw))
    assert "\n" not in last.reason and len(last.reason) <= 1000
    assert good["message_id"] in store.message_ids()


def test_a_known_message_id_with_other_content_is_a_conflict_reject(store: Store) -> None:
    original = make_payload(5)
    resent = json.loads(json.dumps(original))
    forged = original | {"result": original["result"] | {"label": "sick", "score": 0.99}}
    batch = [_msg(encode(original)), _msg(encode(resent)), _msg(encode(forged))]
    counters = store_batch(store, batch, LIMITS, Counters())
    assert (counters.stored, counters.duplicates, counters.rejects) == (1, 1, 1)
    reject = store.rejects()[-1]
    assert reject.reason == (
        f"conflict: message_id {original['message_id']} was stored before with different content"
    )
    assert reject.raw == encode(forged)
    stored = [r for r in store.results() if r.seq == 5 and r.session == "sess-1"]
    assert [(r.label, r.score) for r in stored] == [("healthy", 0.75)]  # the first one stays


class _RefusingStore(SqliteStore):
    """The engine refusing one value (as PostgreSQL does for data it cannot hold, aborting the
    transaction): a real SQLite store that refuses any result labelled 'refuse-me'."""

    def add_result(self, payload: dict[str, Any], received_ts: float) -> Any:
        if payload["result"]["label"] == "refuse-me":
            self._execute("INSERT INTO states VALUES ('x', 'y', '{}', 0)")  # work to roll back
            raise StoreRefused("database refused the values: value out of range")
        return super().add_result(payload, received_ts)


def test_a_refused_value_rolls_back_and_rejects_only_that_message(tmp_path: Path) -> None:
    db = _RefusingStore(tmp_path / "r.sqlite")
    batch = [make_payload(0), make_payload(1, label="refuse-me"), make_payload(2)]
    counters = store_batch(db, [_msg(encode(p)) for p in batch], LIMITS, Counters())
    assert (counters.stored, counters.rejects, counters.states) == (2, 1, 0)
    assert [r.seq for r in db.results()] == [0, 2]
    assert db.counts().states == 0  # the refused message's partial work was rolled back
    assert [r.reason for r in db.rejects()] == ["database refused the values: value out of range"]
    db.close()


# --- property-based fuzzing ---------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # NUL, surrogates included
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.floats()  # NaN and infinities included
    | ANY_TEXT
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=20,
)
PATHS = [
    "seq", "frame_index", "message_id", "session_id", "device_id", "capture_ts", "source",
    "mode", "schema", "result", "result.label", "result.score", "result.index", "result.top_k",
    "thermal", "thermal.t_max_c", "latency_ms", "model", "model.name", "extra",
]  # fmt: skip


def _encode_any(value: Any, ascii_only: bool) -> bytes:
    """JSON the way a careless or hostile publisher might write it: NaN allowed, and raw
    surrogates written as (invalid) UTF-8 bytes when not escaped."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


SAME_TYPE = {
    str: ANY_TEXT,
    int: st.integers() | st.integers(min_value=2**62, max_value=2**70),
    float: st.floats() | st.floats(min_value=0, max_value=1),
    bool: st.booleans(),
    type(None): st.none() | ANY_TEXT,  # optional fields (exam_id, view): null or any text
}


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))]
    return [path]


@st.composite
def hostile_results(draw: st.DrawFn) -> bytes:
    """A valid result with one field replaced by anything, or by a hostile value of the same
    JSON type (which the schema lets through), or bytes that are not JSON at all."""
    kind = draw(st.sampled_from(["same-type", "same-type", "mutate", "bytes", "nested"]))
    if kind == "same-type":
        payload = make_payload(draw(st.integers(0, 1000)))
        *parents, leaf = draw(st.sampled_from(_leaves(payload)))
        target = payload
        for key in parents:
            target = target[key]
        target[leaf] = draw(SAME_TYPE[type(target[leaf])])
        return _encode_any(payload, draw(st.booleans()))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nested":
        depth = draw(st.integers(1, 400))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
        return (opener * depth + "0" + closer * depth).encode()
    payload = make_payload(draw(st.integers(0, 1000)))
    *parents, leaf = draw(st.sampled_from(PATHS)).split(".")
    target = payload
    for key in parents:
        target = target[key]
    target[leaf] = draw(JSONISH)
    return _encode_any(payload, draw(st.booleans()))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hostile=hostile_results())
def test_fuzz_any_input_is_stored_or_rejected_and_never_stops_the_batch(
    store: Store, hostile: bytes
) -> None:
    good = make_payload(7, session=f"fuzz-{uuid.uuid4().hex[:8]}")
    before = store.counts()
    batch = [_msg(hostile), _msg(encode(good))]
    counters = store_batch(store, batch, LIMITS, Counters())  # must not raise
    assert counters.handled == 2
    assert counters.stored + counters.duplicates + counters.rejects == 2
    after = store.counts()
    assert after.rejects - before.rejects == counters.rejects
    assert after.results - before.results == counters.stored
    assert good["message_id"] in store.message_ids()
    outcome = classify(TOPIC, hostile, LIMITS.prefix, LIMITS.max_payload_bytes)
    if isinstance(outcome, Reject):
        assert store.rejects()[-1].raw == hostile[: LIMITS.reject_keep_bytes]
    else:  # it was valid after all: what is stored reads back as what was sent
        assert counters.rejects == 0
        _assert_stored_intact(store, outcome.payload)


def _assert_stored_intact(store: Store, payload: dict[str, Any]) -> None:
    rows = [
        r for r in store.results() if r.session == payload["session_id"] and r.seq == payload["seq"]
    ]
    assert any(
        r.label == payload["result"]["label"]
        and math.isclose(r.score, payload["result"]["score"], rel_tol=0, abs_tol=1e-12)
        for r in rows
    )


def test_the_largest_64_bit_seq_and_frame_index_are_stored(store: Store) -> None:
    payload = make_payload(0) | {"seq": 2**63 - 1, "frame_index": 2**63 - 1}
    counters = store_batch(store, [_msg(encode(payload))], LIMITS, Counters())
    assert (counters.stored, counters.rejects) == (1, 0)
    assert any(r.seq == 2**63 - 1 == r.frame_index for r in store.results())


def test_an_old_postgresql_table_with_32_bit_seq_is_widened(pg_server: str) -> None:
    import psycopg

    url = fresh_database(pg_server)
    with psycopg.connect(url, autocommit=True) as conn:  # the columns as older versions made them
        conn.execute(
            "CREATE TABLE results (message_id TEXT PRIMARY KEY, device TEXT NOT NULL, camera TEXT "
            "NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL, frame_index INTEGER NOT NULL, "
            "capture_ts TEXT NOT NULL, label TEXT NOT NULL, score DOUBLE PRECISION NOT NULL, "
            "payload JSONB NOT NULL, received_ts DOUBLE PRECISION NOT NULL)"
        )
    db = open_store(url)
    payload = make_payload(0) | {"seq": 2**40}
    assert store_batch(db, [_msg(encode(payload))], LIMITS, Counters()).stored == 1
    assert [r.seq for r in db.results()] == [2**40]
    db.close()
