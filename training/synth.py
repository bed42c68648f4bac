"""`thermoscreen synth`: write SYNTHETIC thermograms as DMR-style matrices, 16-bit PNGs or an MP4.

The outputs feed the demo model, the replay tests and the benchmarks without touching patient
data. They are labelled synthetic on disk (`SYNTHETIC.txt`), use patient ids from 9001 on (DMR-IR
ids are far below), and carry no medical meaning.

Kinds:
- matrices: `labels.csv` (patient_id,diagnosis) + `T<id>.txt.gz` per patient, space-separated
  Celsius with 2 decimals: the layout of ../shared/data/dmr-ir-frontal, so `scan` reads both.
- png16: `frame_00000.png ...`, 16-bit gray in centi-kelvin (round((C + 273.15) * 100)), the files
  `GRAY16_BE ! pngenc ! multifilesink` writes, + `frames.csv`.
- mp4: `recording.mp4` (MPEG-4 Part 2 in MP4, decodable by GStreamer's avdec_mpeg4), frames
  rendered to 8 bits through the default thermal window without equalization (the pipeline
  equalizes), + `frames.csv`.
- all: each kind in its own sub-folder (matrices/, png16/, mp4/).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from pipeline import DISCLAIMER
from pipeline.data.synthetic import (
    SYNTHETIC_NOTICE,
    SyntheticStream,
    patient_seed,
    synth_thermogram,
)
from pipeline.preprocess import PreprocessConfig, render_celsius
from pipeline.types import KELVIN_OFFSET

log = logging.getLogger(__name__)

KINDS = ("matrices", "png16", "mp4")
FIRST_PATIENT_ID = 9001  # DMR-IR ids stay below 1000; these can never be mistaken for them


class SynthError(Exception):
    """Bad synth arguments or an output that cannot be written; one line with the fix."""


@dataclass(frozen=True)
class SynthPlan:
    """Everything that decides the outputs; the same plan writes the same files."""

    out: Path
    kinds: tuple[str, ...]
    patients: int
    frames: int
    fps: float
    seed: int
    sick_fraction: float
    size: tuple[int, int]
    frames_per_patient: int


def patient_labels(patients: int, sick_fraction: float, seed: int) -> list[str]:
    """Labels of patients 0..n-1: round(n * fraction) sick, placed by a seeded shuffle."""
    n_sick = math.floor(patients * sick_fraction + 0.5)
    labels = ["sick"] * n_sick + ["healthy"] * (patients - n_sick)
    order = np.random.default_rng(np.random.SeedSequence([seed, 99])).permutation(patients)
    return [labels[int(i)] for i in order]


def celsius_to_centikelvin(celsius: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Celsius -> uint16 centi-kelvin, as FLIR Lepton radiometric counts."""
    counts = np.round((celsius.astype(np.float64) + KELVIN_OFFSET) * 100.0)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def format_matrix(celsius: npt.NDArray[np.float32]) -> bytes:
    """Space-separated rows with 2 decimals, as DMR-IR's older files (and np.savetxt "%.2f").

    Formats each distinct centi-degree value once and joins them: 8x faster than savetxt.
    """
    cents = np.round(celsius.astype(np.float64) * 100.0).astype(np.int64)
    low = int(cents.min())
    table = np.array([f"{v / 100:.2f}" for v in range(low, int(cents.max()) + 1)], dtype=object)
    rows = table[cents - low].tolist()
    return ("\n".join(" ".join(row) for row in rows) + "\n").encode("ascii")


def _notice(plan: SynthPlan, what: str) -> str:
    return (
        f"{SYNTHETIC_NOTICE}\n\n{what}\n"
        f"generator: thermoscreen synth --seed {plan.seed} --patients {plan.patients} "
        f"--sick-fraction {plan.sick_fraction} --size {plan.size[0]}x{plan.size[1]}\n\n"
        f"{DISCLAIMER}\n"
    )


def write_matrices(plan: SynthPlan, out: Path) -> dict[str, int]:
    """labels.csv + T<id>.txt.gz per patient (DMR-IR's older, space-separated layout)."""
    labels = patient_labels(plan.patients, plan.sick_fraction, plan.seed)
    rows = []
    for i, label in enumerate(labels):
        pid = FIRST_PATIENT_ID + i
        celsius = synth_thermogram(patient_seed(plan.seed, i), label, plan.size)
        text = format_matrix(celsius)
        (out / f"T{pid}.txt.gz").write_bytes(gzip.compress(text, compresslevel=1, mtime=0))
        rows.append((str(pid), label.capitalize()))
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["patient_id", "diagnosis"])
        writer.writerows(rows)
    (out / "SYNTHETIC.txt").write_text(
        _notice(plan, "T<id>.txt.gz: 480x640-style Celsius matrices; labels.csv: their labels.")
    )
    return {"healthy": labels.count("healthy"), "sick": labels.count("sick")}


def _stream(plan: SynthPlan) -> SyntheticStream:
    labels = patient_labels(plan.patients, plan.sick_fraction, plan.seed)
    return SyntheticStream(
        plan.seed,
        size=plan.size,
        label_pattern=labels,
        frames_per_patient=plan.frames_per_patient,
        distinct_patients=plan.patients,
    )


def _write_frames_csv(plan: SynthPlan, stream: SyntheticStream, out: Path, files: bool) -> None:
    with (out / "frames.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["frame", "label", "seed", "patient", "file"])
        for i in range(plan.frames):
            name = f"frame_{i:05d}.png" if files else "recording.mp4"
            writer.writerow([i, stream.label(i), plan.seed, stream.patient(i), name])


def write_png16(plan: SynthPlan, out: Path) -> int:
    """frame_00000.png ... as 16-bit centi-kelvin PNGs + frames.csv."""
    stream = _stream(plan)
    for i in range(plan.frames):
        path = out / f"frame_{i:05d}.png"
        if not cv2.imwrite(str(path), celsius_to_centikelvin(stream.frame(i))):
            raise SynthError(f"{path}: could not write the PNG; check the folder is writable")
    _write_frames_csv(plan, stream, out, files=True)
    (out / "SYNTHETIC.txt").write_text(
        _notice(plan, "frame_*.png: 16-bit centi-kelvin thermal frames; frames.csv: labels.")
    )
    return plan.frames


def _gst() -> tuple[Any, Any]:
    """Gst and GLib from PyGObject, imported only when an MP4 is written."""
    from pipeline.gstreamer import GLib, Gst

    return Gst, GLib


def _run_appsrc_pipeline(
    description: str, caps: str, buffers: list[tuple[bytes, bool]], duration_ns: int
) -> list[tuple[bytes, bool, str]]:
    """Push (data, is_delta) buffers into `appsrc name=src ! ...` with pts = i * duration.

    Returns what `appsink name=sink` received, if the description ends in one, as (data,
    is_delta, caps). Raises SynthError with GStreamer's message on failure.
    """
    Gst, GLib = _gst()
    try:
        pipeline = Gst.parse_launch(description)
    except GLib.Error as exc:  # a missing element or property
        raise SynthError(
            f"GStreamer cannot build '{description}' ({exc}); install gstreamer1.0-libav and "
            "gstreamer1.0-plugins-good (`make apt`)"
        ) from exc
    src = pipeline.get_by_name("src")
    src.set_property("caps", Gst.Caps.from_string(caps))
    src.set_property("format", Gst.Format.TIME)
    sink = pipeline.get_by_name("sink")
    received: list[tuple[bytes, bool, str]] = []
    pipeline.set_state(Gst.State.PLAYING)
    try:
        for i, (data, is_delta) in enumerate(buffers):
            buffer = Gst.Buffer.new_wrapped(data)
            buffer.pts = buffer.dts = i * duration_ns
            buffer.duration = duration_ns
            if is_delta:
                buffer.set_flags(Gst.BufferFlags.DELTA_UNIT)
            src.emit("push-buffer", buffer)
        src.emit("end-of-stream")
        while sink is not None:
            sample = sink.emit("try-pull-sample", 30 * Gst.SECOND)
            if sample is None:
                break
            out = sample.get_buffer()
            received.append(
                (
                    out.extract_dup(0, out.get_size()),
                    out.has_flags(Gst.BufferFlags.DELTA_UNIT),
                    sample.get_caps().to_string(),
                )
            )
        message = pipeline.get_bus().timed_pop_filtered(
            60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
        )
        if message is None or message.type == Gst.MessageType.ERROR:
            detail = message.parse_error()[0].message if message is not None else "timed out"
            raise SynthError(f"GStreamer failed in '{description}': {detail}")
    finally:
        pipeline.set_state(Gst.State.NULL)
    return received


def _encode_mp4(frames: list[npt.NDArray[np.uint8]], fps: float, path: Path) -> None:
    """GRAY8 frames -> MPEG-4 Part 2 video in an MP4 file, through GStreamer.

    GStreamer rather than OpenCV: videoconvert keeps gray values as the luma plane both ways, so
    the pipeline's file:// source (`decodebin ! videoconvert ! GRAY8`) gets back the values
    written here, where OpenCV's writer squeezes them into video range (16-235). Two steps,
    because avenc_mpeg4 in GStreamer 1.22 emits buffers without timestamps, which mp4mux needs:
    encode into an appsink, then mux with timestamps set here.
    """
    h, w = frames[0].shape
    num, den = _fraction(fps)
    duration_ns = round(1e9 * den / num)
    raw = f"video/x-raw,format=GRAY8,width={w},height={h},framerate={num}/{den}"
    encoded = _run_appsrc_pipeline(
        "appsrc name=src ! videoconvert ! video/x-raw,format=I420 "
        "! avenc_mpeg4 pass=quant quantizer=2 max-bframes=0 flags=global_header "
        "! appsink name=sink sync=false",
        raw,
        [(np.ascontiguousarray(f).tobytes(), False) for f in frames],
        duration_ns,
    )
    if len(encoded) != len(frames):
        raise SynthError(f"{path}: the encoder returned {len(encoded)} of {len(frames)} frames")
    _run_appsrc_pipeline(
        f"appsrc name=src ! mux.video_0 mp4mux name=mux ! filesink location={_gst_quote(path)}",
        encoded[0][2],
        [(data, is_delta) for data, is_delta, _ in encoded],
        duration_ns,
    )


def _gst_quote(path: Path) -> str:
    """A path as a quoted gst-launch property value."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _fraction(fps: float) -> tuple[int, int]:
    """fps as num/den for GStreamer caps (10 -> 10/1, 29.97 -> 2997/100)."""
    den = 1
    while abs(fps * den - round(fps * den)) > 1e-6 and den < 1000:
        den *= 10
    return round(fps * den), den


def write_mp4(plan: SynthPlan, out: Path) -> int:
    """recording.mp4 (MPEG-4, default thermal window, no equalization) + frames.csv."""
    stream = _stream(plan)
    window = PreprocessConfig().window_c
    frames = [render_celsius(stream.frame(i), window) for i in range(plan.frames)]
    _encode_mp4(frames, plan.fps, out / "recording.mp4")
    _write_frames_csv(plan, stream, out, files=False)
    (out / "SYNTHETIC.txt").write_text(
        _notice(plan, f"recording.mp4: {plan.frames} frames at {plan.fps:g} fps, window {window}.")
    )
    return plan.frames


def run(plan: SynthPlan) -> str:
    """Write every asked kind; returns the one-line summary."""
    parts = []
    for kind in plan.kinds:
        out = plan.out / kind if len(plan.kinds) > 1 else plan.out
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SynthError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
        if kind == "matrices":
            counts = write_matrices(plan, out)
            parts.append(
                f"{plan.patients} patients ({counts['healthy']} healthy, {counts['sick']} sick) "
                f"as matrices"
            )
        elif kind == "png16":
            parts.append(f"{write_png16(plan, out)} PNG16 frames")
        else:
            parts.append(f"{write_mp4(plan, out)} MP4 frames at {plan.fps:g} fps")
    return f"synth: wrote {', '.join(parts)} to {plan.out} (SYNTHETIC data, not medical images)"


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 480x640"
        ) from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Generate SYNTHETIC frontal thermograms (no patient, no medical meaning) for demos, "
        f"tests and benchmarks.\n\n{DISCLAIMER}"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--kind",
        choices=[*KINDS, "all"],
        default="matrices",
        help="matrices: labels.csv + T<id>.txt.gz; png16: 16-bit centi-kelvin PNG sequence; "
        "mp4: 8-bit recording.mp4; all: each in a sub-folder (default: matrices)",
    )
    parser.add_argument("--patients", type=int, default=20, help="synthetic patients (default 20)")
    parser.add_argument("--frames", type=int, default=60, help="frames for png16/mp4 (default 60)")
    parser.add_argument(
        "--frames-per-patient",
        type=int,
        default=None,
        help="frames each patient is shown for in png16/mp4 (default: frames / patients)",
    )
    parser.add_argument("--fps", type=float, default=10.0, help="mp4 frame rate (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--sick-fraction", type=float, default=0.5, help="share of sick patients (default 0.5)"
    )
    parser.add_argument(
        "--size", type=_size, default=(480, 640), help="frame HEIGHTxWIDTH (default 480x640)"
    )


def plan_from_args(args: argparse.Namespace) -> SynthPlan:
    """Validate the arguments (SynthError with one line on the first bad one)."""
    if args.patients < 1:
        raise SynthError(f"--patients must be >= 1, got {args.patients}")
    if args.frames < 1:
        raise SynthError(f"--frames must be >= 1, got {args.frames}")
    if not args.fps > 0 or not math.isfinite(args.fps):
        raise SynthError(f"--fps must be a positive number, got {args.fps}")
    if args.seed < 0:
        raise SynthError(f"--seed must be >= 0, got {args.seed}")
    if not 0.0 <= args.sick_fraction <= 1.0:
        raise SynthError(f"--sick-fraction must be between 0 and 1, got {args.sick_fraction}")
    if min(args.size) < 32 or max(args.size) > 4096:
        raise SynthError(f"--size must be between 32 and 4096 per side, got {args.size}")
    fpp = args.frames_per_patient
    if fpp is None:
        fpp = max(1, math.ceil(args.frames / args.patients))
    elif fpp < 1:
        raise SynthError(f"--frames-per-patient must be >= 1, got {fpp}")
    if args.out.exists() and not args.out.is_dir():
        raise SynthError(f"--out {args.out}: is a file; pass a folder")
    return SynthPlan(
        out=args.out,
        kinds=KINDS if args.kind == "all" else (args.kind,),
        patients=args.patients,
        frames=args.frames,
        fps=float(args.fps),
        seed=args.seed,
        sick_fraction=args.sick_fraction,
        size=(int(args.size[0]), int(args.size[1])),
        frames_per_patient=fpp,
    )


def main(args: argparse.Namespace) -> int:
    try:
        summary = run(plan_from_args(args))
    except SynthError as exc:
        print(f"thermoscreen synth: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0
