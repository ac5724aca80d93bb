"""docs/results.md from study.json: summary, auto's harm screen, setup, command and wall time,
per-case tables, target.

Everything but the reading is generated; the reading (between the markers below) is written
by hand after looking at the numbers, and is kept when the page is regenerated.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bench._study_screen import OUTCOMES

__all__ = ["write_doc", "READING_START", "READING_END"]

READING_START, READING_END = "<!-- reading:start -->", "<!-- reading:end -->"
_PLACEHOLDER = "(Not written yet: read the tables below, then write what they show here.)"


def _data_text(dataset: str, c: dict[str, Any]) -> str:
    """How the study builds ``dataset`` (bench/_study_data.py), from the study's settings."""
    f = c["fmnist"]
    holdout = (f"a balanced holdout of {f['holdout_per_class']} images a class from the "
               "remaining training images, the 10,000 test images")
    return {
        "fmnist_lt": f"Fashion-MNIST long-tailed: a stratified {f['lt_pool']:,} of the training "
                     f"images, made long-tailed by the job (exp profile, imbalance "
                     f"{c['imbalance']:g}); {holdout}",
        "fmnist_bal": f"Fashion-MNIST balanced: a stratified {f['balanced_train']:,} of the "
                      f"training images; {holdout}",
        "digits_lt": "scikit-learn's 8x8 digits: 35% of each class as test, 15% as a balanced "
                     "holdout, the rest long-tailed (exp, imbalance 20)",
        "fmnist_attr": "fmnist_bal's images with a defocused minority (Gaussian blur, sigma 2 "
                       "px): 5% of each class in train, 30% of each class in holdout and test; "
                       "subgroups by this attribute (`group` column, `subgroups.by: "
                       "attribute`). The teacher that never saw the minority is fmnist_bal's: "
                       "trained on these images before any was defocused"}.get(dataset, dataset)


def _teacher_text(recipe: list[Any]) -> str:
    arch, epochs, augment, *width = recipe
    crops = "random crops" if augment == "crop" else "no augmentation"
    return (f"{arch}{f' at width {width[0]:g}' if width and width[0] != 1 else ''}, "
            f"{epochs} epochs, {crops}")


def _pts(stats: dict[str, float], signed: bool = False) -> str:
    mean = f"{100 * stats['mean']:+.1f}" if signed else f"{100 * stats['mean']:.1f}"
    return f"{mean} ± {100 * stats['std']:.1f}"


def _seeds(values: list[float]) -> str:
    return " / ".join(f"{100 * v:+.1f}" for v in values)


def _seeds_ci(values: list[float], cis: list[list[float]]) -> str:
    return " / ".join(f"{100 * v:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                      for v, (lo, hi) in zip(values, cis))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _setup(study: dict[str, Any]) -> list[str]:
    c = study["config"]
    params = next(iter(study["cases"].values()), {}).get("student_parameters")
    lines = ["## Setup", ""]
    seen = set()
    for case in study["cases"].values():
        d = case["dataset"]
        if d in seen:
            continue
        seen.add(d)
        counts = ", ".join(f"{n} {k}" for n, k in zip(case["class_names"], case["train_counts"]))
        lines.append(f"- **{d}**: {_data_text(d, c)}. Training images per class: "
                     f"{counts}. Test subgroup sizes: "
                     + ", ".join(f"{n} {k}" for n, k in zip(case["group_names"], case["group_n"]))
                     + f". Data seed {c['data_seed']}, fixed for every run.")
    lines += [
        f"- **Student** (every case): {c['student_arch']} width {c['student_width']:g} "
        f"({params} parameters), {c['epochs']} epochs on Fashion-MNIST and "
        f"{c['digits_epochs']} (batch {c['digits_batch_size']}) on digits, SGD momentum 0.9, "
        f"lr {c['lr']:g}, cosine with 1 warmup epoch, weight decay 5e-4, no augmentation "
        "(teacher logits cached). Temperature 4.",
        f"- **Regimes**: *present*, a weak teacher ({_teacher_text(c['present_teacher'])}); "
        f"*paper*, a teacher trained to be clearly better than the student "
        f"({_teacher_text(c['paper_teacher'])}; on 8x8 digits "
        f"{_teacher_text(c['digits_teacher'])}). "
        "The student is the same in both, so the regimes differ in the teacher alone.",
        f"- **Seeds**: {', '.join(map(str, c['seeds']))} (student init and batch order).",
        "- **Methods**: one_hot; the teacher-free rebalanced students (balanced_softmax, "
        "class_balanced, group_dro_one_hot, logit_adjusted; run once per dataset and seed and "
        "shared by its cases); kd at alpha 0.5 and 0.9; every registered mitigation at alpha "
        "0.9 with default params (docs/mitigations.md), paired_alpha also with "
        "reference_floor, fitted to holdout half 0 (`paired_alpha floor`, auto's candidate) "
        "and to half 1 (`paired_alpha floor half1`, the twin auto trains to judge the floor "
        "out of fold); auto as the README recommends it. "
        "paired_alpha, its floors and paired_dro run the same harm probe: the study trains it "
        "once per case and seed and the others reuse it, as they share it inside one auto job; "
        "the floors' whole-split reference is the one-hot baseline, trained once per data set "
        "and seed.",
        "- **Tests**: per subgroup, the run against the one_hot run of the same seed on the same "
        "test images: paired difference with its 95% score interval, and *below* when the "
        "one-sided paired test rejects at 5% with Holm over the case's subgroups.", ""]
    return lines


def _teachers(study: dict[str, Any]) -> list[str]:
    rows = []
    for name, t in study["teachers"].items():
        r, rep = t["recipe"], t["report"]
        groups = ", ".join(f"{g['name']} {100 * g['accuracy']:.1f}" for g in rep["groups"]
                           if g["accuracy"] is not None)
        rows.append([name, f"{r['arch']}, {r['epochs']} ep, {r['augment']}",
                     t["label"].split("/")[0], f"{100 * rep['overall']['accuracy']:.1f}",
                     groups, f"{t['seconds'] / 60:.1f}"])
    return ["## Teachers", "", "A teacher shared by two cases is trained once; its training "
            "time shows on both rows and counts once in the totals.", ""] + _table(
        ["case", "teacher", "trained on", "test acc %", "per subgroup %", "train min"], rows)


def _call(cmd: dict[str, Any]) -> str:
    """One invocation's record (bench/study.py ``_invocation``) in words."""
    load = cmd.get("load_average_at_end")
    return (f"{cmd['trained_runs']} runs in {cmd['seconds'] / 60:.1f} min of wall time "
            f"({cmd['jobs']} worker processes of {cmd['threads']} torch thread, finished "
            f"{cmd['finished']}" + (", 1/5/15-min load average at the end "
                                    + ", ".join(f"{v:.1f}" for v in load) if load else "")
            + ")")


def _wall(study: dict[str, Any]) -> list[str]:
    w = study["wall"]
    cmd = w["study_command"]
    derived = bool(w.get("derived_auto"))
    gpu = study["config"].get("device", "cpu") != "cpu"
    flags = ((" --derive-auto" if derived else "")
             + (f" --device {study['config']['device']}" if gpu else "")
             + (f" --jobs {cmd['jobs']}" if cmd and cmd.get("jobs", 2) != 2 else ""))
    lines = ["## Command and wall time", "", "```", ".venv/bin/python bench/study.py" + flags,
             "```", ""]
    if derived:
        lines += [f"With `--derive-auto` the {w['derived_auto']} auto cells are computed from "
                  "their candidates' own runs (`bench/_study_auto.py`): the same students a "
                  "pipeline run of auto trains, without training them twice.", ""]
    if cmd:
        where = "one CUDA GPU" if gpu else "the shared 2-core CPU"
        lines.append(f"The first invocation that trained ran {_call(cmd)} on {where}."
                     + "".join(f" A later one, resuming, trained {_call(c)}."
                               for c in cmd.get("later", [])))
    cpu = (w["sum_of_run_cpu_seconds"] + w["teacher_cpu_seconds"]) / 60
    lines += ["Teacher training: " + ", ".join(f"{c} {s / 60:.1f} min" for c, s in
                                                 w["teacher_seconds"].items()) +
              f". Sum of the runs' own wall times: {w['sum_of_run_seconds'] / 60:.1f} min over "
              f"{w['runs']} runs. " +
              ("" if gpu else f"CPU time of runs and teachers together: {cpu:.1f} min, so "
               f"about {cpu / 2:.0f} min of wall time on the two cores of an otherwise idle "
               "machine (an estimate: two workers busy throughout). ") +
              "A second invocation reuses every finished run; "
              "`--report-only` rebuilds this page. Raw data: `docs/results/study.csv` (one row "
              "per run), `docs/results/study.json`.", ""]
    return lines


def _case(name: str, case: dict[str, Any], plot: str) -> list[str]:
    agg, names = case["aggregates"], case["group_names"]
    lines = [f"## {name}", ""]
    rows = [[m, "-" if a["alpha"] == 0 or m == "auto" else f"{a['alpha']:.1f}",
             _pts(a["overall"]),
             _pts(a["worst"]), _seeds(a["per_seed"]["d_overall"]),
             _seeds(a["per_seed"]["d_worst"]),
             "; ".join(f"s{s}: {', '.join(g)}" for s, g in a["harmed"].items() if g) or "-"]
            for m, a in agg.items()]
    lines += _table(["method", "alpha", "overall", "worst subgroup", "Δ overall per seed",
                     "Δ worst per seed", "below one_hot (paired, Holm)"], rows)
    lines += ["Per-subgroup test accuracy (%, mean over seeds):", ""]
    lines += _table(["method", *names], [[m, *(f"{100 * s['mean']:.1f}" for s in a["groups"])]
                                         for m, a in agg.items()])
    lines += [f"![per-subgroup delta vs one_hot, {name}]({plot})", ""]
    return lines + _target(case["target"])


def _below(paired: list[dict[str, Any]]) -> str:
    """Subgroups below one_hot: name, paired difference [95% interval] (n)."""
    return "; ".join(f"{p['group']} {100 * p['delta']:+.1f} [{100 * p['ci'][0]:+.1f}, "
                     f"{100 * p['ci'][1]:+.1f}] (n {p['n']})" for p in paired) or "none"


def _target(t: dict[str, Any]) -> list[str]:
    lines = ["Target, per seed where kd (alpha 0.9) has a subgroup below one_hot: auto has no "
             "subgroup below one_hot, its worst subgroup at least 3 points above kd's, overall "
             "at most 0.5 points below kd's, and beats the best rebalanced student on worst "
             "subgroup or overall.", ""]
    rows = []
    for seed, v in t["per_seed"].items():
        a = v["auto"]
        if a is None:
            rows.append([str(seed), _below(v["kd_below"]), "-", "-", "-", "-",
                         "-", "no auto run"])
            continue
        rows.append([str(seed), _below(v["kd_below"]), str(v["auto_chose"]),
                     _below(v["auto_below"]), f"{100 * a['worst_gain']:+.1f}",
                     f"{100 * a['overall_change']:+.1f}",
                     "yes" if a["beats_best_rebalanced"] else "no",
                     ("met" if a["met"] else "not met") if v["kd_harmed"] else "(kd harms none)"])
    lines += _table(["seed", "kd a=0.9 below one_hot: Δ [95% CI] (n)", "auto chose",
                     "auto below one_hot",
                     "auto Δ worst vs kd", "auto Δ overall vs kd", "beats rebalanced",
                     "target"], rows)
    met = {m: sum(c["met"] for s, c in seeds.items() if t["per_seed"][s]["kd_harmed"])
           for m, seeds in t["per_method"].items()}
    n = len(t["kd_harms_in_seeds"])
    lines += [f"Every mitigation under the same check, seeds met of the {n} where kd harms: "
              + ", ".join(f"{m} {k}/{n}" for m, k in met.items()) + ".", ""]
    return lines


def _screen(screen: dict[str, Any]) -> list[str]:
    """auto's harm screen on holdout against the test split's verdict (bench/_study_screen)."""
    lines = ["## auto's harm screen: holdout against test", "",
             "For each recommended candidate, in every case and seed: did the paired test on "
             "holdout, which auto screens with (out of fold for the floor), show a subgroup "
             "below one_hot, and does the paired test on the test split? Missed: harm on "
             "test that the holdout did not show.", ""]
    lines += _table(["candidate", "harm shown on both", "holdout only", "missed", "neither"],
                    [[label, *(str(c[k]) for k in OUTCOMES)]
                     for label, c in screen["counts"].items()])
    lines += [f"- {m['case']} seed {m['seed']}, {m['candidate']}"
              f"{' (auto shipped it)' if m['chosen'] else ''}: {_below(m['below'])}; holdout "
              f"n {m['holdout_n']}" for m in screen["missed"]]
    return lines + [""]


def _summary(study: dict[str, Any]) -> list[str]:
    """One line per case: does kd gain overall, does it harm, does auto meet the target."""
    rows = []
    for name, case in study["cases"].items():
        agg, t = case["aggregates"], case["target"]
        kd = agg.get("kd a=0.9")
        teacher = study["teachers"].get(name, {}).get("report", {}).get("overall", {})
        verdicts = []
        for seed, v in t["per_seed"].items():
            a = v["auto"]
            verdicts.append(f"s{seed}: " + ("kd harms none" if not v["kd_harmed"] else
                                            "no auto run" if a is None else
                                            "met" if a["met"] else "not met (" + ", ".join(
                                                k for k in ("no_subgroup_below_one_hot",
                                                            "worst_gain_vs_kd", "overall_vs_kd",
                                                            "beats_best_rebalanced")
                                                if not a[k]) + ")"))
        rows.append([name, f"{100 * teacher.get('accuracy', float('nan')):.1f}",
                     _pts(agg["one_hot"]["overall"]) if "one_hot" in agg else "-",
                     _seeds_ci(kd["per_seed"]["d_overall"], kd["overall_ci"]) if kd else "-",
                     "; ".join(f"s{s}: {', '.join(g)}" for s, g in kd["harmed"].items() if g)
                     if kd else "-", "; ".join(verdicts) or "-"])
    return ["## Summary", ""] + _table(
        ["case", "teacher %", "one_hot overall", "kd a=0.9 Δ overall per seed [95% CI]",
         "kd a=0.9 below one_hot", "auto: target per seed"], rows)


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
    lines = ["# Reproduction study: does distillation harm a subgroup, and does auto fix it?",
             "", "\"Teacher's pet\" (Lukasik et al., TMLR 2022) with the mitigations of "
             "docs/mitigations.md. Generated by `bench/study.py` from "
             f"`{rel}/study.json`, except the reading, which is written by hand.", "",
             "## Reading", "", READING_START, reading, READING_END, ""]
    lines += _summary(study) + _screen(study["harm_screen"]) + _setup(study) + _wall(study)
    lines += _teachers(study)
    for name, case in study["cases"].items():
        lines += _case(name, case, f"{rel}/delta_{name.replace('/', '__')}.png")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))
