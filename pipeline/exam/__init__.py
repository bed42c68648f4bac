"""The screening exam: one patient's visit at one camera (DESIGN.md, "The screening exam").

- `commands`: the `exam/set` command, strictly validated; states, views, exam ids.
- `machine`: `ExamController`, the state machine fed with commands and classified frames.
- `acclimatization`: time since the start and measured skin-temperature drift.
- `quality`: per-frame quality gates and the body mask.
- `verdict`: the exam verdict, the rolling score, per-view statistics and asymmetry.
- `record`, `recordbuild`: exam.json, key frames, the `exam` and `exam/summary` messages.
- `store`, `report`: saving a finished exam, crash recovery, and the HTML report.

The exam is a leaf the runner uses: nothing here imports the runner or the MQTT publisher.
Thermography is cleared only as an adjunct to mammography; an exam's verdict is screening
support, never a diagnosis.
"""
