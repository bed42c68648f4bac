"""Markdown tables and one-line headlines of a study report (what models/README.md quotes)."""

from __future__ import annotations

from typing import Any

HEAD = (
    "| {what} | patients (sick) | AUC [95% CI] | sens @ nested thr | spec @ nested thr "
    "| fold AUC mean ± sd | Brier |\n|---|---|---|---|---|---|---|\n"
)
PARTS = (("all", "all patients"), ("id_below_300", "ID < 300"))


def cell(m: dict[str, Any] | None) -> str:
    """`value [low, high]`, or `n/a`."""
    if not m or m.get("value") is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['value']:.3f}"


def spread(m: dict[str, Any] | None) -> str:
    """`mean ± sd` over split seeds, or `n/a`."""
    if not m or m.get("mean") is None:
        return "n/a"
    return f"{m['mean']:.3f} ± {m['sd']:.3f}"


def rows(entries: dict[str, Any], part: str) -> str:
    """One row per summary (pooled out-of-fold metrics of one split seed) that has `part`."""
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


def candidates_table(report: dict[str, Any]) -> str:
    """Every candidate: AUC over split seeds (mean ± sd, and the seed-averaged AUC with its
    patient-bootstrap interval), sensitivity/specificity at the nested thresholds, the rule."""
    head = (
        "| candidate | AUC all, mean ± sd | AUC all [95% CI] | AUC ID < 300, mean ± sd "
        "| AUC ID < 300 [95% CI] | sens / spec all | criterion |\n|---|---|---|---|---|---|---|\n"
    )
    text = head
    entries = {**report.get("candidates", {}), **report.get("fine_tuned", {})}
    for name, r in entries.items():
        m = r["matrix"]
        both = [m[p]["auc"]["mean"] for p in ("all", "id_below_300")]
        crit = f"{0.5 * sum(both):.3f}" if None not in both else "n/a"
        sens = m["all"]["sensitivity"]["mean"]
        spec = m["all"]["specificity"]["mean"]
        ss = f"{sens:.2f} / {spec:.2f}" if sens is not None and spec is not None else "n/a"
        sm = m.get("seed_mean_auc", {})
        text += (
            f"| {name} | {spread(m['all']['auc'])} | {cell(sm.get('all'))} "
            f"| {spread(m['id_below_300']['auc'])} | {cell(sm.get('id_below_300'))} | {ss} "
            f"| {crit} |\n"
        )
    return text


def renderings_table(report: dict[str, Any]) -> str:
    """The seed-averaged AUC of each candidate scored from the matrices and from 8-bit JPEGs."""
    entries = {**report.get("candidates", {}), **report.get("fine_tuned", {})}
    if not entries:
        return ""
    names = list(next(iter(entries.values())).keys() - {"choices"})
    names = ["matrix", *sorted(n for n in names if n != "matrix")]
    text = "| candidate | " + " | ".join(f"{n}: all / ID < 300" for n in names) + " |\n"
    text += "|---|" + "---|" * len(names) + "\n"
    for cand, r in entries.items():
        cells = []
        for n in names:
            sm = r.get(n, {}).get("seed_mean_auc", {})
            a, o = sm.get("all", {}).get("value"), sm.get("id_below_300", {}).get("value")
            cells.append(f"{a:.3f} / {o:.3f}" if a is not None and o is not None else "n/a")
        text += f"| {cand} | " + " | ".join(cells) + " |\n"
    return text


def per_seed_table(name: str, r: dict[str, Any]) -> str:
    """One candidate's pooled out-of-fold AUC per split seed, with its bootstrap interval."""
    m = r["matrix"]
    text = (
        f"\n**{name}, per split seed**\n\n| split seed | AUC all [95% CI] | AUC ID < 300 [95% CI] "
    )
    text += "| sens all | spec all | choices per fold |\n|---|---|---|---|---|---|\n"
    for seed, row in m["per_seed"].items():
        choices = ", ".join(str(c) for c in r.get("choices", {}).get(seed, []))
        text += (
            f"| {seed} | {cell(row['all']['auc'])} | {cell(row['id_below_300']['auc'])} "
            f"| {cell(row['all']['sensitivity'])} | {cell(row['all']['specificity'])} "
            f"| {choices} |\n"
        )
    return text


def checks_table(checks: dict[str, Any]) -> str:
    """Era probe, ID < 300-only probe, the random-init control and the rendering/region rows."""
    text = ""
    if "era_probe" in checks:
        text += (
            f"\nEra probe AUC (sick only, ID >= 300 vs < 300): {cell(checks['era_probe']['auc'])}\n"
        )
    singles: dict[str, Any] = {
        k: checks[k]
        for k in ("probe_trained_on_id_below_300", "random_init_control")
        if k in checks
    }
    variants = checks.get("variants", {})
    for part, label in PARTS:
        if singles or variants:
            text += f"\n**Shortcut checks (Lite0 features, split seed 0), {label}**\n\n"
            text += HEAD.format(what="check") + rows({**singles, **variants}, part)
    return text


def tables(report: dict[str, Any]) -> str:
    """Markdown tables of a study.json (what models/README.md quotes)."""
    text = "**Candidates, nested CV over split seeds (matrices)**\n\n" + candidates_table(report)
    text += "\n**Rendering robustness: seed-averaged AUC from matrices and from 8-bit JPEGs**\n\n"
    text += renderings_table(report)
    for name, r in {**report.get("candidates", {}), **report.get("fine_tuned", {})}.items():
        text += per_seed_table(name, r)
    text += checks_table(report.get("shortcut_checks", {}))
    chosen = report.get("chosen")
    if chosen:
        text += f"\nChosen by the pre-declared rule: **{chosen['candidate']}** "
        text += f"(criterion {chosen['criterion']:.3f})\n"
    return text


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
