"""The exam report: one self-contained HTML page built from exam.json and the key frames.

`render_report(folder)` returns the page; `thermoscreen report --exam ID` writes it and the
console serves the same string, so both show the same report. The page needs nothing from the
internet: inline CSS, images as data URIs, the score plot as inline SVG.

Key frames of radiometric sources are shown in a thermal palette (inferno) mapped LINEARLY from
Celsius, with a scale bar whose ticks are true temperatures of that mapping. An 8-bit source
carries no temperature: its key frame is shown in grey as recorded, with no scale at all (a scale
on an equalized or 8-bit image would claim temperatures the picture does not hold).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline import DISCLAIMER
from pipeline.exam.record import (
    RECORD_NAME,
    REPORT_NAME,
    ExamRecord,
    KeyFrameRecord,
    RecordError,
    read_key_frame,
    read_record_file,
    write_private,
)

PALETTE = cv2.COLORMAP_INFERNO
VIEW_COLOURS = {
    "frontal": "#1f77b4",
    "left-oblique": "#2ca02c",
    "right-oblique": "#d62728",
    "left-lateral": "#9467bd",
    "right-lateral": "#8c564b",
}
CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:60em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,.protocol td{text-align:left}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:.6em;text-align:center}
.verdict{border:2px solid #444;padding:.8em;margin:1em 0}.muted{color:#666}
.frames{display:flex;flex-wrap:wrap;gap:1.2em}.frames figure{margin:0}
.frames img{max-width:28em;image-rendering:pixelated}.disclaimer{margin-top:2em;font-size:.9em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def _data_uri(image: npt.NDArray[np.uint8]) -> str:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RecordError("report: PNG encoding of a key frame failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def display_range_c(celsius: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The Celsius span of a key frame's palette: 1st-99.5th percentile, widened to 0.5 C."""
    finite = celsius[np.isfinite(celsius)]
    if finite.size == 0:
        return (20.0, 38.0)
    low = math.floor(float(np.percentile(finite, 1)) * 2) / 2
    high = math.ceil(float(np.percentile(finite, 99.5)) * 2) / 2
    return (low, high if high > low else low + 0.5)


def palette_image(
    celsius: npt.NDArray[np.float32], low: float, high: float
) -> npt.NDArray[np.uint8]:
    """Celsius -> BGR thermal palette, linear in temperature over [low, high] (no equalization)."""
    unit = np.clip((np.nan_to_num(celsius, nan=low) - low) / (high - low), 0.0, 1.0)
    index = np.rint(unit * 255).astype(np.uint8)
    return np.asarray(cv2.applyColorMap(index, PALETTE), dtype=np.uint8)


def _palette_hex(fraction: float) -> str:
    level = np.array([[round(fraction * 255)]], dtype=np.uint8)
    b, g, r = (int(c) for c in cv2.applyColorMap(level, PALETTE)[0, 0])
    return f"#{r:02x}{g:02x}{b:02x}"


def scale_bar_svg(low: float, high: float, height: int = 240) -> str:
    """A vertical Celsius scale for the palette mapping [low, high]; ticks at true degrees."""
    step = next(s for s in (0.5, 1.0, 2.0, 5.0, 10.0) if (high - low) / s <= 8)
    stops = "".join(
        f'<stop offset="{i / 16:.4f}" stop-color="{_palette_hex(1 - i / 16)}"/>' for i in range(17)
    )
    ticks = []
    t = math.ceil(low / step) * step
    while t <= high + 1e-9:
        y = 10 + (high - t) / (high - low) * height
        ticks.append(
            f'<line x1="30" x2="36" y1="{y:.1f}" y2="{y:.1f}" stroke="#222"/>'
            f'<text x="40" y="{y + 4:.1f}" font-size="12">{t:.1f} °C</text>'
        )
        t += step
    return (
        f'<svg class="scale" role="img" aria-label="temperature scale {low:.1f} to {high:.1f} °C"'
        f' width="100" height="{height + 20}">'
        f'<defs><linearGradient id="g{int(low * 10)}_{int(high * 10)}" x1="0" y1="0" x2="0" y2="1">'
        f"{stops}</linearGradient></defs>"
        f'<rect x="10" y="10" width="20" height="{height}" '
        f'fill="url(#g{int(low * 10)}_{int(high * 10)})" stroke="#222"/>{"".join(ticks)}</svg>'
    )


def _key_frame_html(folder: Path, meta: KeyFrameRecord) -> str:
    key = read_key_frame(folder, meta)
    caption = f"{_e(meta.view)} · frame {meta.frame_index} · score {meta.score:.3f}"
    if key.celsius is not None:
        low, high = display_range_c(key.celsius)
        finite = key.celsius[np.isfinite(key.celsius)]
        spot = f" · spot max {float(finite.max()):.2f} °C" if finite.size else ""
        image = _data_uri(palette_image(key.celsius, low, high))
        return (
            f'<figure class="radiometric"><div style="display:flex;gap:.5em">'
            f'<img src="{image}" alt="{_e(meta.view)} key frame, thermal palette">'
            f"{scale_bar_svg(low, high)}</div><figcaption>{caption}{spot}</figcaption></figure>"
        )
    assert key.gray is not None
    return (
        f'<figure class="gray8"><img src="{_data_uri(key.gray)}" alt="{_e(meta.view)} key frame">'
        f"<figcaption>{caption}<br><span class='muted'>8-bit source: no temperature, so no "
        "temperature scale</span></figcaption></figure>"
    )


def score_plot_svg(record: ExamRecord, width: int = 640, height: int = 200) -> str:
    """Positive-class probability of each accepted frame over time, with the threshold."""
    points = record.scores
    if not points:
        return "<p class='muted'>No accepted frames of the model's views.</p>"
    t0, t1 = points[0].t_s, max(points[-1].t_s, points[0].t_s + 1e-3)
    pad = 30

    def xy(t: float, s: float) -> str:
        x = pad + (t - t0) / (t1 - t0) * (width - 2 * pad)
        return f"{x:.1f},{pad / 2 + (1 - s) * (height - pad):.1f}"

    lines = []
    for view in dict.fromkeys(p.view for p in points):
        coords = " ".join(xy(p.t_s, p.score) for p in points if p.view == view)
        colour = VIEW_COLOURS.get(view, "#333")
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}">'
            f"<title>{_e(view)}</title></polyline>"
        )
        if len(points) <= 300:  # a short exam's frames stay visible as dots
            lines.extend(
                f'<circle r="2" fill="{colour}" cx="{xy(p.t_s, p.score).split(",")[0]}" '
                f'cy="{xy(p.t_s, p.score).split(",")[1]}"/>'
                for p in points
                if p.view == view
            )
    thr_y = pad / 2 + (1 - record.model.threshold) * (height - pad)
    return (
        f'<svg class="scores" width="{width}" height="{height}" role="img" '
        f'aria-label="score over time">'
        f'<rect x="{pad}" y="{pad / 2}" width="{width - 2 * pad}" height="{height - pad}" '
        f'fill="#fafafa" stroke="#ccc"/>'
        f'<line class="threshold" x1="{pad}" x2="{width - pad}" y1="{thr_y:.1f}" y2="{thr_y:.1f}" '
        f'stroke="#b00020" stroke-dasharray="6 4"/>'
        f'<text x="{width - pad}" y="{thr_y - 4:.1f}" font-size="11" text-anchor="end">'
        f"threshold {record.model.threshold:.3f}</text>"
        f'<text x="2" y="{pad / 2 + 4}" font-size="11">1</text>'
        f'<text x="2" y="{height - pad / 2}" font-size="11">0</text>'
        f'<text x="{pad}" y="{height - 2}" font-size="11">{t0:.0f} s</text>'
        f'<text x="{width - pad}" y="{height - 2}" font-size="11" text-anchor="end">{t1:.0f} s '
        f"since the start</text>{''.join(lines)}</svg>"
    )


def _verdict_html(record: ExamRecord) -> str:
    m = record.model
    model = (
        f"model {_e(m.name)} {_e(m.version)} (sha256 {_e(m.sha256[:12])}…"
        f"{', SYNTHETIC' if m.synthetic else ''})"
    )
    if record.state == "aborted":
        return (
            f"<div class='verdict'><b>Aborted</b>: {_e(record.abort_reason or 'no reason given')}."
            f" No verdict.<br><span class='muted'>{model}</span></div>"
        )
    v = record.verdict
    if v is None:
        views = ", ".join(m.views)
        return (
            f"<div class='verdict'><b>No verdict</b>: no accepted frames of the model's views "
            f"({_e(views)}).<br><span class='muted'>{model}</span></div>"
        )
    status = "final" if v.final else "provisional (exam not closed)"
    side = "at or above" if v.positive else "below"
    return (
        f"<div class='verdict'><b>Exam verdict: {_e(v.label)}</b> ({status})<br>"
        f"score {v.score:.3f} (mean {_e(m.positive_label)} probability over {v.frames} accepted "
        f"frames of {_e(', '.join(v.frames_by_view))}) is {side} the operating threshold "
        f"{v.threshold:.3f} ({_e(v.threshold_source)})<br><span class='muted'>{model}</span>"
        "<br><span class='muted'>Screening support for an adjunct to mammography; not a "
        "diagnosis.</span></div>"
    )


def _protocol_html(record: ExamRecord) -> str:
    a = record.acclimatization
    rows = [
        ("exam", record.exam_id),
        ("state", record.state),
        ("device / camera", f"{record.device_id} / {record.camera_id}"),
        ("source", record.source + (f" (profile {record.profile})" if record.profile else "")),
        ("started", record.started),
        ("capture started", record.capture_started or "—"),
        ("ended", record.ended or "—"),
        ("acclimatization basis", a.basis),
        ("rested", f"{a.elapsed_s:.0f} s of {a.required_s:.0f} s required"),
        (
            "skin drift at ready",
            f"{_fmt(a.drift_c_per_min, 3, ' °C/min')} (limit {a.drift_limit_c_per_min} °C/min "
            f"over {a.drift_window_s:.0f} s)",
        ),
        ("criteria met", "yes" if a.criteria_met else "no"),
    ]
    if a.override is not None:
        why = f": {a.override.reason}" if a.override.reason else ""
        rows.append(("operator override", f"at {a.override.elapsed_s:.0f} s{why}"))
    if a.not_observed_reason:
        rows.append(("not observed", a.not_observed_reason))
    amb = record.ambient
    rows.append(
        (
            "ambient",
            f"{_fmt(amb.ambient_c, 1, ' °C')}, {_fmt(amb.humidity_pct, 0, ' %')} "
            f"RH ({amb.source or 'not entered'})",
        )
    )
    rows.append(
        ("software", f"{record.software.get('name', '')} {record.software.get('version', '')}")
    )
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table class='protocol'>{body}</table>"


def _views_html(record: ExamRecord) -> str:
    if not record.views:
        return "<p class='muted'>No view was captured.</p>"
    head = (
        "<tr><th>view</th><th>accepted</th><th>rejected (reasons)</th><th>mean score</th>"
        "<th>skin mean °C</th><th>skin p95 °C</th><th>mean |ΔT| mirrored °C</th>"
        "<th>image-left mean °C</th><th>image-right mean °C</th><th>left − right °C</th></tr>"
    )
    rows = []
    for view, s in record.views.items():
        reasons = ", ".join(f"{_e(k)} {n}" for k, n in s.rejected_by_reason.items())
        a = s.asymmetry
        cells = [
            _e(view),
            str(s.accepted_frames),
            f"{s.rejected_frames}" + (f" ({reasons})" if reasons else ""),
            _fmt(s.score_mean, 3),
            _fmt(s.skin_mean_c),
            _fmt(s.skin_p95_c),
            _fmt(a.mean_abs_diff_c if a else None),
            _fmt(a.left_mean_c if a else None),
            _fmt(a.right_mean_c if a else None),
            _fmt(a.left_minus_right_c if a else None, 2),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = (
        "<p class='muted'>Scores are the model's positive-class probability. Asymmetry pairs each "
        "body pixel with its mirror image across the body's midline; image left is the patient's "
        "right in a frontal view. Temperatures only for radiometric sources.</p>"
    )
    return f"<table class='views'>{head}{''.join(rows)}</table>{note}"


def render_report(folder: Path | None, record: ExamRecord | None = None) -> str:
    """The report page of the exam stored in `folder` (exam.json and key frames beside it).
    Without a folder (a logger's copy of the summary: no images) `record` is required and the
    key frames are named, not shown."""
    if folder is None:
        if record is None:
            raise RecordError("render_report: give the exam's folder or its record")
        return _page(record, _key_frames_elsewhere(record))
    folder = Path(folder)
    if record is None:
        record = read_record_file(folder / RECORD_NAME)
    return _page(record, "".join(_key_frame_html(folder, meta) for meta in record.key_frames))


def _key_frames_elsewhere(record: ExamRecord) -> str:
    if not record.key_frames:
        return ""
    names = ", ".join(_e(k.file) for k in record.key_frames)
    return (
        f"<p class='muted'>Key frames ({names}) are kept with the exam's record on device "
        f"{_e(record.device_id)}, not in the logger's summary.</p>"
    )


def _page(record: ExamRecord, frames: str) -> str:
    banner = (
        "<div class='banner'>SYNTHETIC MODEL: trained on synthetic thermograms, no medical "
        "meaning</div>"
        if record.synthetic_model
        else ""
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>thermoscreen exam {_e(record.exam_id)}</title><style>{CSS}</style></head><body>"
        f"{banner}<h1>thermoscreen exam report: {_e(record.exam_id)}</h1>"
        f"{_verdict_html(record)}<h2>Protocol</h2>{_protocol_html(record)}"
        f"<h2>Key frames</h2><div class='frames'>{frames or '<p class=muted>None stored.</p>'}"
        f"</div><h2>Views</h2>{_views_html(record)}"
        f"<h2>Score over time</h2>{score_plot_svg(record)}"
        f"<p class='disclaimer'><b>Adjunct only.</b> {_e(DISCLAIMER)}</p>{banner}</body></html>\n"
    )


def write_report(folder: Path, record: ExamRecord | None = None) -> Path:
    """Write `report.html` (0600) beside exam.json."""
    page = render_report(folder, record)
    return write_private(Path(folder) / REPORT_NAME, page.encode("utf-8"))
