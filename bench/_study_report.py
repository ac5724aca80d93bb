"""The study's numbers: per-run rows, mean/std over seeds, the target check, CSV/JSON, plots.

Accuracies are fractions in the data files and points (x100) in the plots and docs. Deltas
are paired by seed: a run minus the one_hot run of the same dataset and training seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from bench._study_doc import write_doc
from bench._study_runs import METHODS, STRONG_ALPHA, StudyConfig

__all__ = ["FOCUS_K", "TARGET_WORST_GAIN", "TARGET_MAX_ACC_LOSS", "focus_classes", "run_rows",
           "aggregate", "target_check", "write_outputs"]

FOCUS_K = 3  # "a third" of 10 classes
TARGET_WORST_GAIN = 0.03  # best mitigation's worst-class accuracy over kd's
TARGET_MAX_ACC_LOSS = 0.005  # largest overall-accuracy loss against kd allowed
REFERENCE = f"kd a={STRONG_ALPHA:g}"
BASELINE = "one_hot"
_METRICS = ("accuracy", "worst", "focus", "d_accuracy", "d_worst", "d_focus")


def _stats(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def focus_classes(runs: list[dict[str, Any]]) -> tuple[list[int], str]:
    """The FOCUS_K classes a dataset's table averages over, and how they were chosen.

    Long-tailed data: the rarest by training count. Balanced data (equal counts): the
    hardest for the one_hot student, by its accuracy averaged over seeds."""
    counts = runs[0]["train_counts"]
    classes = range(len(counts))
    if max(counts) > 1.5 * min(counts):
        chosen = sorted(classes, key=lambda c: (counts[c], c))[:FOCUS_K]
        return sorted(chosen), "rarest third (the 3 classes with the fewest training images)"
    base = [r["per_class"] for r in runs if r["method"] == BASELINE]
    mean = [statistics.fmean(pc[c] for pc in base) for c in classes]
    chosen = sorted(classes, key=lambda c: (mean[c], c))[:FOCUS_K]
    return sorted(chosen), "hardest third (the 3 classes with the lowest one_hot accuracy)"


def run_rows(runs: list[dict[str, Any]], focus: list[int]) -> list[dict[str, Any]]:
    """One row per run with worst-class, focus-third and deltas against one_hot (same seed)."""
    base = {r["seed"]: r["per_class"] for r in runs if r["method"] == BASELINE}
    rows = []
    for r in runs:
        pc, ref = r["per_class"], base.get(r["seed"])
        if ref is None:
            continue  # no baseline for this seed yet (a study stopped early)
        worst = min(range(len(pc)), key=lambda c: (pc[c], c))
        row = {"dataset": r["dataset"], "method": r["method"], "seed": r["seed"],
               "alpha": r["mitigation"]["alpha"], "accuracy": r["accuracy"],
               "worst": pc[worst], "worst_class": r["class_names"][worst],
               "focus": statistics.fmean(pc[c] for c in focus)}
        row["d_accuracy"] = r["accuracy"] - _overall(runs, r["seed"])
        row["d_worst"] = row["worst"] - min(ref)
        row["d_focus"] = row["focus"] - statistics.fmean(ref[c] for c in focus)
        row["per_class"] = list(pc)
        row["per_class_delta"] = [a - b for a, b in zip(pc, ref)]
        row["seconds"] = r["seconds"]
        rows.append(row)
    return rows


def _overall(runs: list[dict[str, Any]], seed: int) -> float:
    return next(r["accuracy"] for r in runs if r["method"] == BASELINE and r["seed"] == seed)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method (study order): mean/std over seeds of each metric and of each class."""
    out = {}
    for method in (m.label for m in METHODS):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        agg: dict[str, Any] = {k: _stats([r[k] for r in mine]) for k in _METRICS}
        agg["alpha"] = mine[0]["alpha"]
        agg["seeds"] = [r["seed"] for r in mine]
        columns = list(zip(*(r["per_class"] for r in mine)))
        deltas = list(zip(*(r["per_class_delta"] for r in mine)))
        agg["per_class"] = [_stats(list(c)) for c in columns]
        agg["per_class_delta"] = [_stats(list(c)) for c in deltas]
        out[method] = agg
    return out


def target_check(rows: list[dict[str, Any]], agg: dict[str, Any]) -> dict[str, Any]:
    """Each mitigation against kd at the same alpha: worst-class gain and overall-accuracy
    change (means over seeds, and the paired per-seed differences); met or not."""
    if REFERENCE not in agg:
        return {"reference": REFERENCE, "met": False, "candidates": {}, "best": None}
    ref = {r["seed"]: r for r in rows if r["method"] == REFERENCE}
    candidates = {}
    for method in (m.label for m in METHODS[4:]):
        mine = [r for r in rows if r["method"] == method and r["seed"] in ref]
        if not mine:
            continue
        gain = agg[method]["worst"]["mean"] - agg[REFERENCE]["worst"]["mean"]
        change = agg[method]["accuracy"]["mean"] - agg[REFERENCE]["accuracy"]["mean"]
        candidates[method] = {
            "worst_gain": gain, "accuracy_change": change,
            "paired_worst_gain": _stats([r["worst"] - ref[r["seed"]]["worst"] for r in mine]),
            "paired_accuracy_change": _stats([r["accuracy"] - ref[r["seed"]]["accuracy"]
                                              for r in mine]),
            "met": gain >= TARGET_WORST_GAIN and change >= -TARGET_MAX_ACC_LOSS}
    met = [m for m, c in candidates.items() if c["met"]]
    pool = met or list(candidates)
    best = max(pool, key=lambda m: candidates[m]["worst_gain"]) if pool else None
    return {"reference": REFERENCE, "worst_gain_needed": TARGET_WORST_GAIN,
            "accuracy_loss_allowed": TARGET_MAX_ACC_LOSS, "met": bool(met),
            "best": best, "candidates": candidates}


def _csv_rows(rows: list[dict[str, Any]], class_names: list[str]) -> list[dict[str, Any]]:
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in ("per_class", "per_class_delta")}
        f.update({f"acc[{n}]": a for n, a in zip(class_names, r["per_class"])})
        f.update({f"delta[{n}]": d for n, d in zip(class_names, r["per_class_delta"])})
        flat.append(f)
    return flat


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _plot(path: Path, dataset: str, agg: dict[str, Any], class_names: list[str],
          counts: list[int]) -> None:
    """Heatmap of mean per-class delta vs one_hot (points): methods x classes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = [m for m in agg if m != BASELINE]
    grid = [[100 * d["mean"] for d in agg[m]["per_class_delta"]] for m in methods]
    limit = max(1.0, max(abs(v) for row in grid for v in row))
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(methods) + 2.2))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(v) > 0.6 * limit else "black")
    ax.set_xticks(range(len(class_names)),
                  [f"{n}\n(n={c})" for n, c in zip(class_names, counts)], fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=9)
    seeds = len(agg[methods[0]]["seeds"]) if methods else 0
    ax.set_title(f"{dataset}: per-class test accuracy minus one_hot (points, mean of {seeds} "
                 "seeds, paired by seed)", fontsize=10)
    fig.colorbar(image, ax=ax, label="points")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(runs: list[dict[str, Any]], teachers: dict[str, Any], config: StudyConfig,
                  results_dir: Path, doc: Path, invocation: dict[str, Any]) -> list[Path]:
    """Write study.csv, study.json, one plot per dataset and the results page."""
    results_dir.mkdir(parents=True, exist_ok=True)
    study: dict[str, Any] = {"config": {**dataclasses.asdict(config), "tag": config.tag(),
                                        "out_dir": str(config.out_dir)},
                             "datasets": {}, "teachers": teachers}
    all_rows, written = [], []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == dataset]
        focus, focus_rule = focus_classes(mine)
        rows = run_rows(mine, focus)
        agg = aggregate(rows)
        names, counts = mine[0]["class_names"], mine[0]["train_counts"]
        study["datasets"][dataset] = {
            "class_names": names, "train_counts": counts, "focus_classes": focus,
            "focus_rule": focus_rule, "aggregates": agg, "target": target_check(rows, agg),
            "student_parameters": mine[0].get("student_parameters")}
        all_rows += _csv_rows(rows, names)
        plot = results_dir / f"per_class_delta_{dataset}.png"
        _plot(plot, dataset, agg, names, counts)
        written.append(plot)
    run_seconds = sum(r["seconds"] for r in runs)
    study["wall"] = {"study_command": invocation, "runs": len(runs),
                     "sum_of_run_seconds": run_seconds,
                     "teacher_seconds": {d: t["seconds"] for d, t in teachers.items()}}
    study["runs"] = runs
    _write_csv(results_dir / "study.csv", all_rows)
    (results_dir / "study.json").write_text(json.dumps(study, indent=1))
    write_doc(doc, study, results_dir)
    return [results_dir / "study.csv", results_dir / "study.json", *written, doc]
