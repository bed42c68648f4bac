"""A SIGKILLed process using the outbox's group commit loses no row: the acknowledgements it had
not committed yet leave their rows in the file, to be sent again; the others are gone."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from pipeline.mqtt.outbox import Outbox
from tests.conftest import REPO

_CHILD = """
import sys, time
from pipeline.mqtt.outbox import Outbox
ob = Outbox(sys.argv[1])
ids = []
for i in range(int(sys.argv[2])):
    ids.append(ob.put("thermoscreen/dev/cam/result", str(i).encode()))
    if len(ids) > 1:
        ob.defer_settle([ids[-2]], [ids[-1]], keep_acked=False)  # like the client thread
print(" ".join(map(str, ids)), flush=True)
time.sleep(60)
"""


def test_a_sigkill_loses_no_row_and_resends_only_the_uncommitted_acks(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), "50"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert child.stdout is not None
    ids = [int(i) for i in child.stdout.readline().split()]
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert len(ids) == 50
    # every ack but the last was committed by the put after it; the last one and the row
    # never acked stay, to be sent again (at-least-once: the logger drops the repeat)
    ob = Outbox(path)
    assert [r.id for r in ob.rows_after(0, 100)] == ids[-2:]
    assert ob.pending == 2
    ob.close()
