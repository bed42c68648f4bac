"""The recordings the bench replays, one per source kind, and the model input made from them.

- mp4: a synthetic thermogram video (`thermoscreen synth --kind mp4`, or `--video`): GStreamer
  decode of 8-bit frames;
- png16: the DMR-IR matrices converted by `thermoscreen convert` into a lossless 16-bit PNG
  recording (centi-kelvin): PNG decode of radiometric frames;
- dmr: the DMR-IR matrix folder itself (links to the files in `--data`): text matrices parsed.

Folders shorter than a measurement are replayed in a loop (`capture.loop`), so every source
gives the same number of frames.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.capture.base import EndOfStream, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.convert import ConvertError, convert
from pipeline.data.dmr import is_matrix, list_thermograms, read_matrix
from pipeline.devtools.bench.child import run_child, thermoscreen_cmd
from pipeline.devtools.bench.collector import BenchError
from pipeline.manifest import ModelDir
from pipeline.preprocess import model_input, render

F32 = npt.NDArray[np.float32]
SOURCE_KINDS = ("mp4", "png16", "dmr")


@dataclass(frozen=True)
class Recording:
    """One source kind ready to replay: the URI `thermoscreen run` gets, and whether it loops."""

    kind: str
    uri: str
    path: Path
    frames: int | None  # frames in one pass (None: unknown, a video)
    loop: bool


def make_mp4(out: Path, frames: int, fps: int) -> Path:
    """A synthetic thermogram MP4 through `thermoscreen synth` (a child: training code)."""
    cmd = [*thermoscreen_cmd(), "synth", "--kind", "mp4", "--frames", str(frames)]
    cmd += ["--fps", str(fps), "--out", str(out)]
    run = run_child(cmd, timeout_s=300)
    if run.returncode != 0:
        raise BenchError(f"thermoscreen synth failed ({run.stderr_tail[-300:]}); pass --video")
    found = sorted(out.glob("*.mp4")) if out.is_dir() else [out]
    if not found:
        raise BenchError(f"thermoscreen synth wrote no .mp4 under {out}; pass --video")
    return found[0]


def dmr_folder(data: Path, out: Path, limit: int | None) -> Path:
    """A folder of links to the first `limit` DMR-IR matrices of `data` (never copies)."""
    if not data.is_dir():
        raise BenchError(
            f"{data}: no DMR-IR matrix folder here; pass --data DIR (e.g. "
            "../shared/data/dmr-ir-frontal) or leave png16 and dmr out of --sources"
        )
    files = [p for p in list_thermograms(data) if is_matrix(p)][:limit]
    if not files:
        raise BenchError(f"{data}: holds no .txt/.txt.gz temperature matrices; pass --data DIR")
    out.mkdir(parents=True)
    for path in files:
        os.symlink(path.resolve(), out / path.name)
    return out


def png16_folder(dmr: Path, out: Path) -> Path:
    """The matrices as a lossless 16-bit PNG recording (`thermoscreen convert`)."""
    try:
        convert(str(dmr), out)
    except ConvertError as exc:
        raise BenchError(f"thermoscreen convert {dmr}: {exc}") from None
    return out


def prepare(
    kinds: tuple[str, ...],
    tmp: Path,
    frames: int,
    video: Path | None,
    data: Path,
    limit: int | None,
) -> dict[str, Recording]:
    """Every requested source kind, in the order asked."""
    out: dict[str, Recording] = {}
    dmr: Path | None = None
    if "dmr" in kinds or "png16" in kinds:
        dmr = dmr_folder(data, tmp / "dmr", limit)
    for kind in kinds:
        if kind == "mp4":
            path = video if video is not None else make_mp4(tmp / "rec", frames, 30)
            out[kind] = Recording(kind, f"file://{path.resolve()}", path, None, False)
        elif kind == "png16":
            assert dmr is not None
            folder = png16_folder(dmr, tmp / "png16")
            out[kind] = Recording(kind, str(folder), folder, len(list(folder.glob("*.png"))), True)
        elif kind == "dmr":
            assert dmr is not None
            out[kind] = Recording(kind, str(dmr), dmr, len(list(dmr.iterdir())), True)
        else:
            raise BenchError(f"unknown source kind {kind!r}; use {', '.join(SOURCE_KINDS)}")
    return out


def measure_parse(folder: Path, rounds: int = 1) -> dict[str, Any]:
    """`read_matrix` on every matrix of the folder: the parse the DMR replay does per frame."""
    times = []
    for _ in range(rounds):
        for path in sorted(folder.iterdir()):
            start = time.perf_counter()
            read_matrix(path)
            times.append(1000 * (time.perf_counter() - start))
    return {
        "files": len(times) // max(rounds, 1),
        "read_matrix_ms_median": statistics.median(times),
        "read_matrix_ms_max": max(times),
    }


def model_tensors(model: ModelDir, recording: Recording, n: int) -> list[F32]:
    """The first `n` frames of a recording as the model's input, through the pipeline's code."""
    m = model.manifest
    size = (int(m.input.shape[2]), int(m.input.shape[3]))
    source = open_source(recording.uri, SourceOptions(decode_workers=0))
    source.open()
    tensors: list[F32] = []
    try:
        while len(tensors) < n:
            frame = source.read(timeout_s=5.0)
            if frame is not None:
                tensors.append(model_input(render(frame, m.preprocessing), size, m.mean, m.std))
    except EndOfStream:
        pass
    finally:
        source.close()
    if not tensors:
        raise BenchError(f"{recording.uri}: no frames decoded; pass a readable recording")
    return tensors
