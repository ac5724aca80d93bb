"""How well auto's harm screen on holdout foresees harm on test.

auto keeps only candidates with no subgroup shown below the one-hot student by the paired
test on holdout (out of fold for a floor). The study also trains every candidate as a row and
judges it on the larger test split. For each recommended candidate, over every case and seed
with an auto cell, this counts the four outcomes of (harm shown on holdout) x (harm shown on
test); "missed" is harm on test that the holdout did not show. A screen that misses often
lets auto ship harm its reasons say it did not see.
"""

from __future__ import annotations

from typing import Any

from bench._study_auto import candidate_methods

__all__ = ["harm_screen", "OUTCOMES"]

OUTCOMES = ("both", "holdout_only", "missed", "neither")


def harm_screen(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """rows: the study's rows (with ``harmed_vs_one_hot`` and ``paired_vs_one_hot`` on test);
    runs: the run summaries, auto's with its ``selection``. Returns the counts per candidate
    and every missed harm with its test figures."""
    by = {(r["case"], r["method"], r["seed"]): r for r in rows}
    labels = [m.label for m in candidate_methods()]
    counts = {label: dict.fromkeys(OUTCOMES, 0) for label in labels}
    missed = []
    for run in runs:
        selection = run.get("selection") or {}
        if run["method"] != "auto" or not selection.get("recommended_candidates"):
            continue
        for label, candidate in zip(labels, selection["candidates"]):
            row = by.get((run["case"], label, run["seed"]))
            if row is None:
                continue
            shown, seen = bool(candidate["harm_shown_on"]), bool(row["harmed_vs_one_hot"])
            counts[label][_outcome(shown, seen)] += 1
            if seen and not shown:
                missed.append({"case": run["case"], "seed": run["seed"], "candidate": label,
                               "chosen": selection["chosen_index"] == labels.index(label),
                               "holdout_n": candidate["n"],
                               "below": [p for p in row["paired_vs_one_hot"] if p["below"]]})
    return {"counts": counts, "missed": missed}


def _outcome(shown: bool, seen: bool) -> str:
    return ("both" if seen else "holdout_only") if shown else ("missed" if seen else "neither")
