"""`bench.md`: the report a person reads, from the same dictionary as `bench.json`."""

from __future__ import annotations

from typing import Any

from pipeline import DISCLAIMER
from pipeline.devtools.bench.summary import model_share

SOURCE_NAMES = {"mp4": "MP4", "png16": "PNG16 sequence", "dmr": "DMR-IR matrix folder"}


def fmt(x: Any, digits: int = 2) -> str:
    if isinstance(x, float):
        return "n/a" if x != x else f"{x:.{digits}f}"
    return "n/a" if x is None else str(x)


def sp(d: dict[str, float] | None, digits: int = 2) -> str:
    """A spread as `median [min-max]`, or the one value."""
    if not d or not d.get("n"):
        return "n/a"
    if d["n"] == 1:
        return fmt(d["median"], digits)
    return f"{fmt(d['median'], digits)} [{fmt(d['min'], digits)}-{fmt(d['max'], digits)}]"


def header(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    return [
        "# thermoscreen benchmark",
        "",
        f"> {DISCLAIMER}",
        "",
        f"Command: `{report['command']}`  ",
        f"When: {report['started']} ({report['duration_s']:.0f} s)  ",
        f"Machine: {m['cpu']} ({', '.join(m['cpu_isa']) or 'no AVX2'}), {m['cores_usable']} "
        f"cores, {m['ram_gb']} GB RAM; {m['os']}; Python {m['python']}, onnxruntime "
        f"{m['onnxruntime']}, torch {m['torch']}, GStreamer {m['gstreamer']}, mosquitto "
        f"{m.get('mosquitto', '?')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_avg_at_end', []))}",
        "",
        "| model | role | architecture | input | GFLOP | sha256 |",
        "|---|---|---|---|---|---|",
        *[
            f"| {x['key']} | {x['role']} | {x['architecture']} | {x['input']} | "
            f"{fmt(x['gflop'])} | {x['sha256'][:12]} |"
            for x in report["models"]
        ],
        "",
        f"Values are medians over {report['settings']['repeats']} repeat(s), [min-max] where "
        "repeated; ratios are taken within each repeat.",
        "",
    ]


def throughput(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    keys = s["models"]

    def row(label: str, per: dict[str, Any], digits: int = 1) -> str:
        return f"| {label} | " + " | ".join(sp(per.get(k), digits) for k in keys) + " |"

    lines = [
        "| measure | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        row("bare ONNX Runtime, the faster of the two below (frames/s)", s["bare_fps"]),
        row("bare, one frame at a time on every core", s["bare_one_at_a_time_fps"]),
        row("bare, one frame per core side by side", s["bare_side_by_side_fps"]),
        row("single inference p50 (ms)", s["inference_ms_p50"]),
        row("bare CPU per frame (ms)", s["bare_cpu_ms_per_frame"]),
    ]
    for src in report["settings"]["sources"]:
        name = SOURCE_NAMES.get(src, src)
        lines += [
            row(f"{name} replay (frames/s, capture to delivery)", s["replay_fps"][src]),
            row(f"**{name} replay / bare**", s["replay_vs_bare"][src], 2),
            row(f"{name} non-model CPU (ms per frame)", s["non_model_cpu_ms"][src], 2),
            row(f"{name} peak RSS (MB)", s["replay_max_rss_mb"][src], 0),
            row(f"{name} start to first result (s)", s["first_result_s"][src], 2),
        ]
    if "console_replay_vs_plain" in s:
        name = SOURCE_NAMES.get(s["console_source"], s["console_source"])
        lines += [
            row(f"{name} replay, console watched (frames/s)", {keys[0]: s["console_replay_fps"]}),
            row(
                f"**{name} replay, console watched / not**",
                {keys[0]: s["console_replay_vs_plain"]},
                2,
            ),
            row("console live view sent (frames/s)", {keys[0]: s["console_stream_fps"]}),
        ]
    if s["bare_vs_sgemm"]:
        lines.append(row("bare GFLOP/s per core", s["bare_gflops_per_core"]))
        lines.append(row("bare / one core's FP32 sgemm rate", s["bare_vs_sgemm"], 2))
    if s["int8_speedup_bare"]:
        lines.append(row("INT8 speed-up over its FP32 model, bare", s["int8_speedup_bare"], 2))
    return [*lines, ""]


def naive(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    if "naive_fps" not in s:
        return []
    return [
        f"Naive loop (the seed's notebook loop, PyTorch eager, {s['naive_model']}, MP4): "
        f"{sp(s['naive_fps'], 1)} frames/s; replay / naive {sp(s['replay_vs_naive'])}; "
        f"bare / naive (its ceiling) {sp(s['bare_vs_naive'])}.",
        "",
    ]


def live(report: dict[str, Any]) -> list[str]:
    runs = [*report["live"], *({**lv, "watched": True} for lv in report.get("live_console", []))]
    if not runs:
        return []
    lines = [
        "| live | model needs (share of the machine) | latency p50 / p95 / p99 / max (ms) | "
        "dropped / seen | trend (ms/min), flat | non-model CPU (ms/frame) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in runs:
        lat, cpu = lv["latency_ms"], lv.get("cpu") or {}
        watched = ", console watched" if lv.get("watched") else ""
        share = model_share(report, report["summary"], lv["model"], lv["source_fps"])
        lines.append(
            f"| {lv['model']} {lv['source_fps']} fps{watched}, {lv['seconds']:.0f} s | "
            f"{share:.0%} | "
            f"{lat['p50']:.1f} / "
            f"{lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} | {lv['dropped']} / "
            f"{lv['frames_seen']} ({lv['drop_ratio']:.1%}) | "
            f"{fmt(lv['trend']['slope_ms_per_min'])}, {lv['trend']['flat']} | "
            f"{fmt(cpu.get('non_model_ms_per_frame'))} | {lv['max_rss_mb']:.0f} |"
        )
    return [*lines, ""]


def cpu_breakdown(report: dict[str, Any]) -> list[str]:
    """Where one frame's CPU goes, per run of the shipped model (first repeat)."""
    shipped = report["summary"]["models"][0]
    first = report["repeats"][0]["models"][shipped]["replay"]
    runs = [(SOURCE_NAMES.get(src, src), r.get("cpu")) for src, r in first.items()]
    runs += [
        (f"live {lv['source_fps']} fps", lv.get("cpu"))
        for lv in report["live"]
        if lv["model"] == shipped
    ]
    runs = [(name, cpu) for name, cpu in runs if cpu]
    if not runs:
        return []
    groups: list[str] = []
    for _, cpu in runs:
        groups += [g for g in cpu["cpu_ms_per_frame"] if g not in groups]
    lines = [
        f"CPU per delivered result, {shipped}, first repeat (ms; per-thread CPU from /proc over "
        "the steady part of each run):",
        "",
        "| thread group | " + " | ".join(name for name, _ in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for g in groups:
        cells = [fmt(cpu["cpu_ms_per_frame"].get(g), 3) for _, cpu in runs]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    for label, key in (
        ("all threads", "total_ms_per_frame"),
        ("**non-model**", "non_model_ms_per_frame"),
    ):
        lines.append(f"| {label} | " + " | ".join(fmt(cpu[key], 3) for _, cpu in runs) + " |")
    for label, key, digits in (
        ("minor page faults per frame", "page_faults_per_frame", 0),
        ("kernel share of the process's CPU", "system_cpu_share", 2),
    ):
        lines.append(f"| {label} | " + " | ".join(fmt(c.get(key), digits) for _, c in runs) + " |")
    broker = [fmt(cpu["others_ms_per_frame"].get("broker"), 3) for _, cpu in runs]
    lines.append("| mosquitto (another process) | " + " | ".join(broker) + " |")
    return [*lines, ""]


def variants(report: dict[str, Any]) -> list[str]:
    """The first model run other ways, against the pipeline's ways and the tolerance."""
    found = report.get("variants")
    if not found:
        return []
    lines = [
        f"Other ways to run {report['summary']['models'][0]} (medians over {found['rounds']} "
        f"round(s); results against the reference, tolerance {found['tolerance']:g} on any "
        "probability):",
        "",
        "| way | frames/s | vs reference | CPU per frame (ms) | load (s) | max prob. difference "
        "| top-1 agreement | faster in every round, within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in found["variants"]:
        lines.append(
            f"| {v['variant']} | {v['fps_median']:.1f} | {v['fps_vs_reference']:.2f} | "
            f"{v['cpu_ms_per_frame_median']:.1f} | {v['load_s_median']:.2f} | "
            f"{v['max_abs_diff']:.1e} | {v['top1_agreement']:.0%} | "
            f"{'yes' if v['worth_an_option'] else 'no'} |"
        )
    return [*lines, ""]


def targets(report: dict[str, Any]) -> list[str]:
    lines = ["| target | value | goal | met |", "|---|---|---|---|"]
    for t in report["summary"]["targets"]:
        met = "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {fmt(t['value'])} | {t['goal']} | {met} |")
    return [*lines, ""]


NOTES = [
    "Replay throughput runs from the first frame's capture to the last result's delivery, so "
    "start-up (imports, model load, connect) is reported apart. Live latency runs from "
    "`capture_ts` to delivery at the bench's subscriber, an upper bound of "
    "capture-to-broker-acknowledgement. Non-model CPU is the pipeline process's CPU per result "
    "minus its inferences' own thread CPU (and native pools: ONNX Runtime's intra-op threads). "
    '"Console watched": the run serves the operator console (`--console`) and a viewer in the '
    "bench reads its MJPEG live view for the whole run, as an operator's browser would. "
    "\"Model needs\": the bare model's CPU per frame times the source's rate, over all usable "
    "cores; the no-drop goal holds for live runs under half the machine, and above it the "
    "newest frame wins and every other frame is dropped and counted.",
    "",
]


def markdown(report: dict[str, Any]) -> str:
    parts = [
        header(report),
        throughput(report),
        naive(report),
        variants(report),
        live(report),
        cpu_breakdown(report),
        targets(report),
        NOTES,
    ]
    return "\n".join(line for part in parts for line in part)
