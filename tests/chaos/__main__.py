"""`make chaos`: run the fault campaign and print its table (date, machine, one row a case).

    python -m tests.chaos [--repeat 3] [--cases a,b] [--out results/chaos.md]

Exit 0 only when every case stored every result once (0 lost, 0 doubled).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

from pipeline import DISCLAIMER
from pipeline.devtools.broker import LocalBroker
from tests.chaos.campaign import CASES, REPEATED, CaseResult, rig

HEADER = "| case | sent | stored | doubled | duplicates dropped | gaps | result | notes |"


def _row(r: CaseResult) -> str:
    verdict = "ok" if r.ok else "FAIL"
    notes = "; ".join(r.notes)
    return (
        f"| {r.name} | {r.sent} | {r.stored} | {r.doubled} | {r.duplicates} | {r.gaps} | "
        f"{verdict} | {notes} |"
    )


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = LocalBroker(Path(tempfile.gettempdir())).version()
    return (
        f"{cpu or platform.processor()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, mosquitto {version}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the repeated cases")
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    names = args.cases.split(",") if args.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    started = dt.datetime.now(dt.timezone.utc)
    rows: list[CaseResult] = []
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="thermoscreen-chaos-") as tmp:
        for name in names:
            case, frames = CASES[name]
            for i in range(args.repeat if name in REPEATED else 1):
                t0 = time.monotonic()
                try:
                    with rig(Path(tmp) / f"{name}-{i}", frames) as r:
                        result = case(r)
                except Exception as exc:  # a case that could not finish is a failed case
                    result = CaseResult(name, notes=[f"error: {exc!r}"[:200]])
                    traceback.print_exc()
                if name in REPEATED:
                    result.name += f" (run {i + 1})"
                result.notes.append(f"{time.monotonic() - t0:.0f} s")
                rows.append(result)
                print(_row(result), flush=True)
    lines = [
        f"Fault campaign of {started:%Y-%m-%d %H:%M} UTC on {_machine()}:",
        "",
        HEADER,
        "|---|---:|---:|---:|---:|---:|---|---|",
        *(_row(r) for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    print(DISCLAIMER)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
