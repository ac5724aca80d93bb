"""docs/results.md from study.json: setup, tables, plots, target check, wall time.

Everything but the reading is generated; the reading (between the markers below) is written
by hand after looking at the numbers, and is kept when the page is regenerated.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["write_doc", "READING_START", "READING_END"]

READING_START, READING_END = "<!-- reading:start -->", "<!-- reading:end -->"
_PLACEHOLDER = "(Not written yet: read the tables above, then write what they show here.)"
_DATA = {"fmnist_lt": "Fashion-MNIST long-tailed (exp profile, imbalance 100)",
         "fmnist_bal": "Fashion-MNIST balanced (stratified subsample)"}


def _pts(stats: dict[str, float], signed: bool = False) -> str:
    mean = f"{100 * stats['mean']:+.1f}" if signed else f"{100 * stats['mean']:.1f}"
    return f"{mean} ± {100 * stats['std']:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _setup(study: dict[str, Any]) -> list[str]:
    c = study["config"]
    lines = ["## Setup", ""]
    for name, d in study["datasets"].items():
        counts = ", ".join(f"{n} {k}" for n, k in zip(d["class_names"], d["train_counts"]))
        lines.append(f"- **{name}**: {_DATA.get(name, name)}; training images per class "
                     f"after the 10% stratified holdout is carved out: {counts}. Test: the full "
                     "Fashion-MNIST test set, 1000 images per class. Data seed "
                     f"{c['data_seed']}, fixed for every run of the dataset.")
    for name, t in study["teachers"].items():
        r, p = t["recipe"], t.get("onnx_parity", {})
        lines.append(f"- **Teacher ({name})**: {r['arch']} width {r['width']:g}, trained here on "
                     f"the same training split with one-hot labels, {r['epochs']} epochs, augment "
                     f"{r['augment']} (SGD, lr {t['training']['lr']:g}, cosine, batch "
                     f"{t['training']['batch_size']}); test accuracy "
                     f"{100 * t['report']['overall']['accuracy']:.1f}% in {t['seconds']:.0f} s. "
                     "The runs read it through ONNX Runtime (top-1 agreement with the PyTorch "
                     f"program {100 * p.get('top1_agreement', 0):.2f}%, max logit difference "
                     f"{p.get('max_abs_diff', 0):.1e}).")
    params = next(iter(study["datasets"].values())).get("student_parameters")
    lines += [
        f"- **Student**: {c['student_arch']} width {c['student_width']:g} ({params} "
        f"parameters), {c['epochs']} epochs, SGD momentum 0.9, lr {c['lr']:g}, cosine with 1 "
        f"warmup epoch, weight decay 5e-4, batch {c['batch_size']}, no augmentation (teacher "
        "logits cached). Temperature 4 everywhere.",
        f"- **Seeds**: training seeds {', '.join(map(str, c['seeds']))} (student init and "
        "batch order); the data split does not change with the seed.",
        "- **Methods**: one_hot (no teacher), kd at alpha 0.5, 0.9 and 1.0, and every "
        "registered mitigation at alpha 0.9 with its default params (docs/mitigations.md): "
        "adaptive_alpha (reliability accuracy, sharpness 1), adaptive_alpha per_example "
        "(gate 0.5 on examples the teacher gets wrong), adaptive_margin (tau 1), group_dro "
        "(beta 0.5, eta 1, per class), ltkd (3 frequency groups, batch prior), "
        "teacher_calibration (kd on the holdout-calibrated teacher). Subgroups are the 10 "
        "classes; no guardrail rules, no export.",
        "- **Metrics** (test split): overall accuracy, worst-class accuracy (the lowest of the "
        "10 per run, then averaged over seeds), the mean accuracy of a third of the classes "
        "(below), per-class accuracy. Deltas are against the one_hot run of the same dataset "
        "and seed. Tables give mean ± sample std over seeds, in points.", ""]
    return lines


def _dataset_section(name: str, d: dict[str, Any], teacher: dict[str, Any] | None,
                     plot: str) -> list[str]:
    agg, names = d["aggregates"], d["class_names"]
    focus = ", ".join(names[i] for i in d["focus_classes"])
    lines = [f"## {name}", "", f"Focus third: {d['focus_rule']}: {focus}.", ""]
    rows = [[m, f"{a['alpha']:.1f}" if m != "one_hot" else "-", _pts(a["accuracy"]),
             _pts(a["worst"]), _pts(a["focus"]), _pts(a["d_accuracy"], True),
             _pts(a["d_worst"], True), _pts(a["d_focus"], True)] for m, a in agg.items()]
    lines += _table(["method", "alpha", "overall", "worst class", "focus third",
                     "Δ overall", "Δ worst", "Δ focus third"], rows)
    lines += ["Per-class test accuracy (%, mean over seeds):", ""]
    pc_rows = [[m, *(f"{100 * s['mean']:.1f}" for s in a["per_class"])] for m, a in agg.items()]
    if teacher:
        pc_rows.append(["teacher", *(f"{100 * c['accuracy']:.1f}"
                                     for c in teacher["report"]["per_class"])])
    lines += _table(["method", *names], pc_rows)
    lines += [f"![per-class delta vs one_hot, {name}]({plot})", ""]
    return lines + _target_section(d["target"])


def _target_section(t: dict[str, Any]) -> list[str]:
    need, allow = 100 * t.get("worst_gain_needed", 0), 100 * t.get("accuracy_loss_allowed", 0)
    lines = [f"Target: worst-class accuracy at least {need:.0f} points above {t['reference']} "
             f"with overall accuracy at most {allow:.1f} points below it (means over seeds; "
             "paired per-seed differences beside them).", ""]
    rows = [[m, f"{100 * c['worst_gain']:+.1f}", _pts(c["paired_worst_gain"], True),
             f"{100 * c['accuracy_change']:+.1f}", _pts(c["paired_accuracy_change"], True),
             "yes" if c["met"] else "no"] for m, c in t["candidates"].items()]
    lines += _table(["mitigation", "Δ worst", "paired Δ worst", "Δ overall",
                     "paired Δ overall", "met"], rows)
    verdict = "met" if t["met"] else "not met"
    lines += [f"**Target {verdict}.** Largest worst-class gain"
              f"{' among those that meet it' if t['met'] else ''}: {t['best']}.", ""]
    return lines


def _wall(study: dict[str, Any]) -> list[str]:
    w, c = study["wall"], study["config"]
    cmd = w["study_command"]
    teachers = ", ".join(f"{d} {s / 60:.1f} min" for d, s in w["teacher_seconds"].items())
    lines = ["## Command and wall time", "", "```", ".venv/bin/python bench/study.py", "```", ""]
    if cmd:
        lines.append(f"The command that trained the {cmd['trained_runs']} runs took "
                     f"{cmd['seconds'] / 60:.1f} min of wall time ({cmd['jobs']} worker "
                     f"processes of {cmd['threads']} torch thread, finished {cmd['finished']}), "
                     "on the shared 2-core CPU while other work ran beside it.")
    lines += [f"Teacher training ({c['teacher_arch']}, {c['teacher_epochs']} epochs; trained once, "
              f"then reused while its checkpoint exists): {teachers}; from scratch the two "
              "train side by side before the runs start. Sum of the runs' own wall times: "
              f"{w['sum_of_run_seconds'] / 60:.1f} min over {w['runs']} runs.",
              "A second invocation reuses every finished run; `--report-only` rebuilds this "
              "page. Raw data: `docs/results/study.csv` (one row per run), "
              "`docs/results/study.json`.", ""]
    return lines


def _reading(doc: Path) -> str:
    """The hand-written reading of an existing page, or a placeholder."""
    if doc.exists():
        found = re.search(re.escape(READING_START) + r"\n(.*?)\n" + re.escape(READING_END),
                          doc.read_text(), re.S)
        if found:
            return found.group(1)
    return _PLACEHOLDER


def write_doc(doc: Path, study: dict[str, Any], results_dir: Path) -> None:
    """Write the results page; keep its hand-written reading."""
    reading = _reading(doc)
    rel = os.path.relpath(results_dir, doc.parent)
    lines = ["# Reproduction study: does distillation harm rare classes?", "",
             "\"Teacher's pet\" (Lukasik et al., TMLR 2022) on Fashion-MNIST with the "
             "mitigations of docs/mitigations.md. Generated by `bench/study.py` from "
             f"`{rel}/study.json`, except the reading, which is written by hand.", "",
             "## Reading", "", READING_START, reading, READING_END, ""]
    lines += _setup(study) + _wall(study)
    for name, d in study["datasets"].items():
        lines += _dataset_section(name, d, study["teachers"].get(name),
                                  f"{rel}/per_class_delta_{name}.png")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
