"""The exam record: exam.json round trip, key frames, permissions, crash recovery, schemas."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.exam.record import summary_json_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "pipeline" / "mqtt" / "schemas"


def test_summary_schema_file_matches_the_record_model() -> None:
    on_disk = json.loads((SCHEMAS / "exam-summary.schema.json").read_text())
    assert on_disk == summary_json_schema(), (
        'exam-summary.schema.json is stale; regenerate it: python -c "import json; from '
        'pipeline.exam.record import summary_json_schema as s; print(json.dumps(s(), indent=1))"'
        " > pipeline/mqtt/schemas/exam-summary.schema.json"
    )
