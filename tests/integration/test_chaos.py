"""The fast cases of the fault campaign (`make chaos` runs them all, the repeated broker crashes
included): each must end with every result stored once, none doubled, no gap."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.campaign import CASES, rig

pytestmark = pytest.mark.slow
FAST = {  # case -> frames (smaller than the campaign's)
    "broker-kill-logger-off": 40,
    "logger-kill": 120,
    "pipeline-kill": 120,
    "logger-db-removed": 90,
    "poison": 40,
    "client-id-takeover": 20,
}


@pytest.mark.parametrize("name", sorted(FAST))
def test_fault_case_loses_and_doubles_nothing(tmp_path: Path, name: str) -> None:
    case, _ = CASES[name]
    with rig(tmp_path / name, FAST[name]) as r:
        result = case(r)
    print(f"\n[chaos] {result}")
    assert (result.gaps, result.doubled) == (0, 0), result
    assert result.stored == result.sent > 0, result
