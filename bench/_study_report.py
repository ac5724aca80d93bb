"""The study's numbers: per-run rows with paired tests, per-method summaries over seeds, the
target check per seed, CSV/JSON, plots.

Accuracies are fractions in the data files and points (x100) in the plots and docs. Every
delta is paired by seed: a run minus the one_hot run of the same case and training seed.
Subgroups are what each case's job reports (classes, or the attribute for fmnist_attr).
Overall accuracy of an attribute case is taken at the training mix of its subgroups (the test
split oversamples the minority); the test split's own figure is kept as ``overall_test``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from bench._study_auto import candidate_methods
from bench._study_data import population_shares
from bench._study_doc import write_doc
from bench._study_runs import REFERENCE, Case, StudyConfig, methods, run_dir
from bench._study_screen import harm_screen
from bench._study_stats import harmed, paired_groups, paired_overall, target_check

__all__ = ["case_rows", "summarize", "case_target", "write_outputs"]

BASELINE = "one_hot"
AUTO = "auto"


def _stats(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _overall(run: dict[str, Any]) -> float:
    shares = population_shares(run["dataset"])
    if shares is None:
        return run["accuracy"]
    acc = {g["name"]: g["accuracy"] for g in run["groups"]}
    return sum(share * acc[name] for name, share in shares.items())


def _outcomes(case: Case, label: str, seed: int, config: StudyConfig) -> dict[str, np.ndarray]:
    method = next(m for m in methods() if m.label == label)
    with np.load(run_dir(case, method, seed, config) / "outcomes.npz") as f:
        return {k: f[k] for k in f.files}


def case_rows(case: Case, runs: list[dict[str, Any]], config: StudyConfig) -> list[dict]:
    """One row per run of ``case`` whose seed has a one_hot run, with paired tests against
    that one_hot run."""
    mine = [r for r in runs if r["dataset"] == case.dataset and
            (r["case"] == case.name or _teacher_free(r["method"]))]
    base = {r["seed"]: r for r in mine if r["method"] == BASELINE}
    rows = []
    for r in mine:
        ref = base.get(r["seed"])
        if ref is None:
            continue  # no baseline for this seed yet (a study stopped early)
        rows.append(_row(case, r, ref, config))
    order = {m.label: i for i, m in enumerate(methods())}
    return sorted(rows, key=lambda r: (order.get(r["method"], 99), r["seed"]))


def _teacher_free(label: str) -> bool:
    return any(m.label == label and m.teacher_free for m in methods())


def _row(case: Case, r: dict[str, Any], ref: dict[str, Any], config: StudyConfig) -> dict:
    names = [g["name"] for g in r["groups"]]
    acc = [g["accuracy"] for g in r["groups"]]
    ref_acc = [g["accuracy"] for g in ref["groups"]]
    worst = min(range(len(acc)), key=lambda i: (acc[i] if acc[i] is not None else 2, i))
    paired = paired_groups(_outcomes(case, r["method"], r["seed"], config),
                           _outcomes(case, BASELINE, r["seed"], config), names)
    return {"case": case.name, "dataset": case.dataset, "method": r["method"],
            "seed": r["seed"], "alpha": r["mitigation"]["alpha"], "overall": _overall(r),
            "overall_test": r["accuracy"], "worst": acc[worst], "worst_group": names[worst],
            "d_overall": _overall(r) - _overall(ref), "d_worst": acc[worst] - min(ref_acc),
            "group_names": names, "groups": acc,
            "group_delta": [a - b for a, b in zip(acc, ref_acc)],
            "group_n": [g["n"] for g in r["groups"]],
            "paired_vs_one_hot": paired, "harmed_vs_one_hot": harmed(paired),
            "overall_vs_one_hot": paired_overall(paired, population_shares(case.dataset)),
            "chosen": _chosen_row(r.get("selection")), "seconds": r["seconds"]}


def _chosen_row(selection: dict[str, Any] | None) -> str | None:
    """The study's label of the candidate auto chose ("paired_alpha floor", not its name)."""
    if not selection:
        return None
    if selection.get("recommended_candidates"):
        return candidate_methods()[selection["chosen_index"]].label
    return selection["chosen"]


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method (study order): mean/std over seeds, per-seed values, per-group means."""
    out = {}
    for method in (m.label for m in methods()):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        agg: dict[str, Any] = {k: _stats([r[k] for r in mine])
                               for k in ("overall", "worst", "d_overall", "d_worst")}
        agg.update(alpha=mine[0]["alpha"], seeds=[r["seed"] for r in mine],
                   per_seed={k: [r[k] for r in mine] for k in ("d_overall", "d_worst")},
                   overall_ci=[r["overall_vs_one_hot"]["ci"] for r in mine],
                   harmed={r["seed"]: r["harmed_vs_one_hot"] for r in mine},
                   chosen=[r["chosen"] for r in mine if r["chosen"]],
                   groups=[_stats(list(c)) for c in zip(*(r["groups"] for r in mine))],
                   group_delta=[_stats(list(c)) for c in zip(*(r["group_delta"] for r in mine))])
        out[method] = agg
    return out


def case_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed: does kd (alpha 0.9) harm a subgroup, and does auto meet the target there.
    The same check is run for every mitigation, to show which would have met it."""
    by = {(r["method"], r["seed"]): r for r in rows}
    rebalanced = [m.label for m in methods() if m.teacher_free and m.label != BASELINE]
    per_seed, per_method = {}, {}
    for seed in sorted({r["seed"] for r in rows}):
        kd = by.get((REFERENCE, seed))
        if kd is None:
            continue
        rebal = [by[m, seed] for m in rebalanced if (m, seed) in by]
        checks = {m.label: target_check(by[m.label, seed], kd, rebal) for m in methods()
                  if not m.teacher_free and not m.label.startswith("kd ")
                  and (m.label, seed) in by}
        per_seed[seed] = {"kd_harmed": kd["harmed_vs_one_hot"],
                          "kd_below": [p for p in kd["paired_vs_one_hot"] if p["below"]],
                          "auto_below": [p for p in by[AUTO, seed]["paired_vs_one_hot"]
                                         if p["below"]] if (AUTO, seed) in by else [],
                          "auto": checks.get(AUTO),
                          "auto_chose": by[AUTO, seed]["chosen"] if (AUTO, seed) in by
                          else None}
        for label, check in checks.items():
            per_method.setdefault(label, {})[seed] = check
    harmed_seeds = [s for s, v in per_seed.items() if v["kd_harmed"]]
    auto_met = [s for s in harmed_seeds if per_seed[s]["auto"] and per_seed[s]["auto"]["met"]]
    return {"reference": REFERENCE, "per_seed": per_seed, "per_method": per_method,
            "kd_harms_in_seeds": harmed_seeds, "auto_met_in_seeds": auto_met,
            "met": bool(harmed_seeds) and len(auto_met) == len(harmed_seeds)}


def _csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in (
            "groups", "group_delta", "group_names", "group_n", "paired_vs_one_hot",
            "overall_vs_one_hot")}
        f["d_overall_ci_low"], f["d_overall_ci_high"] = r["overall_vs_one_hot"]["ci"]
        f["harmed_vs_one_hot"] = ";".join(r["harmed_vs_one_hot"])
        f.update({f"acc[{n}]": a for n, a in zip(r["group_names"], r["groups"])})
        f.update({f"delta[{n}]": d for n, d in zip(r["group_names"], r["group_delta"])})
        flat.append(f)
    return flat


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _plot(path: Path, case: str, agg: dict[str, Any], names: list[str], n: list[int]) -> None:
    """Heatmap of mean per-subgroup delta vs one_hot (points): methods x subgroups."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [m for m in agg if m != BASELINE]
    grid = [[100 * d["mean"] for d in agg[m]["group_delta"]] for m in rows]
    limit = max([1.0, *(abs(v) for row in grid for v in row)])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 3), 0.45 * len(rows) + 2.2))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(v) > 0.6 * limit else "black")
    ax.set_xticks(range(len(names)), [f"{a}\n(test n={b})" for a, b in zip(names, n)],
                  fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.set_title(f"{case}: per-subgroup test accuracy minus one_hot (points, mean over "
                 "seeds, paired by seed)", fontsize=10)
    fig.colorbar(image, ax=ax, label="points")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _in_study_order(runs: list[dict[str, Any]], teachers: dict[str, Any], cases: list[Case]
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs by case, method and seed, teachers by case, whatever order they finished in: a
    call that trains and a later --report-only write the same files."""
    case_rank = {c.name: i for i, c in enumerate(cases)}
    method_rank = {m.label: i for i, m in enumerate(methods())}
    runs = sorted(runs, key=lambda r: (case_rank.get(r["case"], len(case_rank)),
                                       method_rank.get(r["method"], len(method_rank)), r["seed"]))
    return runs, {c.name: teachers[c.name] for c in cases if c.name in teachers}


def write_outputs(runs: list[dict[str, Any]], teachers: dict[str, Any], cases: list[Case],
                  config: StudyConfig, results_dir: Path, doc: Path,
                  invocation: dict[str, Any]) -> list[Path]:
    """Write study.csv, study.json, one plot per case and the results page."""
    runs, teachers = _in_study_order(runs, teachers, cases)
    results_dir.mkdir(parents=True, exist_ok=True)
    study: dict[str, Any] = {"config": {**dataclasses.asdict(config), "tag": config.tag(),
                                        "out_dir": str(config.out_dir)},
                             "cases": {}, "teachers": teachers}
    all_rows, written = [], []
    for case in cases:
        rows = case_rows(case, runs, config)
        if not rows:
            continue
        agg = summarize(rows)
        first = rows[0]
        study["cases"][case.name] = {
            "dataset": case.dataset, "regime": case.regime,
            "teacher_saw_minority": case.teacher_saw_minority,
            "group_names": first["group_names"], "group_n": first["group_n"],
            "train_counts": next(r["train_counts"] for r in runs
                                 if r["dataset"] == case.dataset),
            "class_names": next(r["class_names"] for r in runs if r["dataset"] == case.dataset),
            "student_parameters": next(r["student_parameters"] for r in runs),
            "aggregates": agg, "target": case_target(rows)}
        all_rows += rows
        plot = results_dir / f"delta_{case.name.replace('/', '__')}.png"
        _plot(plot, case.name, agg, first["group_names"], first["group_n"])
        written.append(plot)
    trained = list({t["path"]: t for t in teachers.values()}.values())  # cases share some
    study["wall"] = {"study_command": invocation, "runs": len(runs),
                     "derived_auto": sum(bool(r.get("derived_from")) for r in runs),
                     "sum_of_run_seconds": sum(r["seconds"] for r in runs),
                     "sum_of_run_cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in runs),
                     "teacher_seconds": {t["label"]: t["seconds"] for t in trained},
                     "teacher_cpu_seconds": sum(t.get("cpu_seconds", 0.0) for t in trained)}
    study["harm_screen"] = harm_screen(all_rows, runs)
    study["runs"] = runs
    study["rows"] = all_rows
    _write_csv(results_dir / "study.csv", _csv_rows(all_rows))
    (results_dir / "study.json").write_text(json.dumps(study, indent=1))
    write_doc(doc, study, results_dir)
    return [results_dir / "study.csv", results_dir / "study.json", *written, doc]
