"""Markdown tables and one-line headlines of a study report (what models/README.md quotes)."""

from __future__ import annotations

from typing import Any

PROCEDURE = "efficientnet_lite0 imagenet, frozen + nested feature set + probe"
HEAD = (
    "| {what} | patients (sick) | AUC [95% CI] | sens @ nested thr | spec @ nested thr "
    "| fold AUC mean ± sd | Brier |\n|---|---|---|---|---|---|---|\n"
)
PART_LABELS = (("all", "all patients"), ("id_below_300", "ID < 300 only"))


def cell(m: dict[str, Any] | None) -> str:
    """`value [low, high]`, or `n/a`."""
    if not m or m.get("value") is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['value']:.3f}"


def rows(entries: dict[str, Any], part: str) -> str:
    """One table row per entry that has `part`."""
    out = ""
    for name, s in entries.items():
        sec = s.get(part)
        if sec is None:
            continue
        fold = sec.get("fold_auc_mean_sd")
        sp = f"{fold[0]:.3f} ± {fold[1]:.3f}" if fold and fold[0] is not None else "n/a"
        out += (
            f"| {name} | {sec['patients']} ({sec['sick']}) | {cell(sec['auc'])} "
            f"| {cell(sec['sensitivity'])} | {cell(sec['specificity'])} | {sp} "
            f"| {sec['brier']} |\n"
        )
    return out


def spread_cell(r: dict[str, Any], part: str) -> str:
    """`mean ± sd (min, max)` of the AUC over split seeds."""
    a = r.get(part, {}).get("auc", {})
    if a.get("mean") is None:
        return "n/a"
    return f"{a['mean']:.3f} ± {a['sd']:.3f} ({a['min']:.3f}, {a['max']:.3f})"


def _main_tables(report: dict[str, Any]) -> str:
    text = ""
    for title, key in (
        ("Candidates", "candidates"),
        ("Each feature set forced (information only, not used to choose)", "feature_sets"),
        ("Preprocessing and region checks (feature set `last`)", "ablations"),
    ):
        if not report.get(key):
            continue
        for part, label in PART_LABELS:
            text += f"\n**{title}, development CV, {label}**\n\n"
            text += HEAD.format(what="model" if key == "candidates" else "variant")
            text += rows(report.get(key, {}), part)
    return text


def _repeated(rep: dict[str, Any]) -> str:
    text = f"\n**{PROCEDURE}: outer 5-fold CV repeated over split seeds {rep['seeds']}**\n\n"
    text += "| split seed | AUC all [95% CI] | AUC ID < 300 [95% CI] | sens all | spec all "
    text += "| feature sets chosen (per fold) |\n|---|---|---|---|---|---|\n"
    for seed, r in rep["per_seed"].items():
        old_auc = r.get("id_below_300", {}).get("auc")
        text += (
            f"| {seed} | {cell(r['all']['auc'])} | {cell(old_auc)} "
            f"| {cell(r['all']['sensitivity'])} | {cell(r['all']['specificity'])} "
            f"| {', '.join(r['feature_sets_chosen'])} |\n"
        )
    for part, label in (("all", "all"), ("id_below_300", "ID < 300")):
        a = rep.get(part, {}).get("auc", {})
        if a.get("mean") is not None:
            text += (
                f"\nAUC {label} across seeds: mean {a['mean']:.3f} ± {a['sd']:.3f} "
                f"(min {a['min']:.3f}, max {a['max']:.3f})\n"
            )
    return text


def _seed_spreads(report: dict[str, Any]) -> str:
    rep = report.get("repeated_cv")
    seeds_rows = {PROCEDURE: rep} if rep else {}
    for name, fs in report.get("feature_sets", {}).items():
        if "repeated_cv" in fs:
            seeds_rows[f"feature set {name} forced (information only)"] = fs["repeated_cv"]
    for name, r in report.get("cnn_repeated_cv", {}).items():
        seeds_rows[f"{name}, seeds {r['seeds']}"] = r
    if not seeds_rows:
        return ""
    text = "\n**AUC across outer split seeds: mean ± sd (min, max)**\n\n"
    text += "| model | AUC all | AUC ID < 300 |\n|---|---|---|\n"
    for name, r in seeds_rows.items():
        text += f"| {name} | {spread_cell(r, 'all')} | {spread_cell(r, 'id_below_300')} |\n"
    return text


def _checks(report: dict[str, Any]) -> str:
    text = ""
    if "probe_trained_on_id_below_300" in report:
        text += "\n**Probe trained and tested on ID < 300 only (5-fold CV)**\n\n"
        text += HEAD.format(what="model")
        text += rows({"lite0 probe, ID < 300 only": report["probe_trained_on_id_below_300"]}, "all")
    if "shortcut_era_probe" in report:
        text += "\nEra probe AUC (sick only, ID >= 300 vs < 300): "
        text += f"{cell(report['shortcut_era_probe']['auc'])}\n"
    hold = report.get("shipped", {}).get("holdout")
    if hold:
        text += "\n**Hold-out, shipped model through ONNX Runtime, manifest threshold**\n\n"
        text += HEAD.format(what="part")
        text += rows({"hold-out, all": hold}, "all")
        text += rows({"hold-out, ID < 300": hold}, "id_below_300")
    return text


def tables(report: dict[str, Any]) -> str:
    """Markdown tables of a study.json (what models/README.md quotes)."""
    text = _main_tables(report)
    if report.get("repeated_cv"):
        text += _repeated(report["repeated_cv"])
    return text + _seed_spreads(report) + _checks(report)


def headline(name: str, s: dict[str, Any]) -> str:
    """One log line: AUC, sensitivity, specificity (intervals) and Brier, all and ID < 300."""
    parts = [f"{name:<38}"]
    for part in ("all", "id_below_300"):
        if part in s:
            sec = s[part]
            parts.append(
                f"{part}: AUC {cell(sec['auc'])} sens {cell(sec['sensitivity'])} "
                f"spec {cell(sec['specificity'])} brier {sec['brier']}"
            )
    return " | ".join(parts)
