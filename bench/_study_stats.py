"""Paired comparisons of two runs on the same test examples, and the study's target check.

Every comparison is within one case and one training seed: a run against the one_hot run
(or kd's run) of the same seed, example by example. Per subgroup, b counts the examples the
reference gets right and the candidate wrong, c the reverse; the drop (b - c) / n has a
paired score interval (Tango, with the corrections the guardrails use), and "significantly
below" is the guardrails' one-sided paired test of drop <= 0 at 5%, Holm over the subgroups.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from compression.evaluation.stats import (stratified_paired_interval, tango_interval,
                                          tango_pvalue)
from compression.guardrails.multiplicity import adjust

__all__ = ["LEVEL", "TARGET_WORST_GAIN", "TARGET_MAX_ACC_LOSS", "paired_groups",
           "paired_overall", "harmed", "target_check"]

LEVEL = 0.05  # family-wise rate of false "significantly below" over a run's subgroups
TARGET_WORST_GAIN = 0.03  # worst subgroup at least this far above kd's
TARGET_MAX_ACC_LOSS = 0.005  # overall accuracy at most this far below kd's


def paired_groups(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                  names: Sequence[str]) -> list[dict[str, Any]]:
    """Per subgroup (ids index ``names``): n, b, c, the paired accuracy difference
    (candidate minus reference) with its 95% interval, the one-sided p-value of "candidate
    below reference", and whether Holm over the subgroups rejects it (``below``)."""
    if not (np.array_equal(candidate["label"], reference["label"])
            and np.array_equal(candidate["group"], reference["group"])):
        raise ValueError("the two runs were not scored on the same test examples")
    hit, ref = candidate["hit"].astype(bool), reference["hit"].astype(bool)
    rows = []
    for g, name in enumerate(names):
        mask = candidate["group"] == g
        n = int(mask.sum())
        b, c = int((ref & ~hit & mask).sum()), int((~ref & hit & mask).sum())
        low, high = tango_interval(b, c, n) if n else (-1.0, 1.0)
        rows.append({"group": name, "n": n, "b": b, "c": c,
                     "delta": (c - b) / n if n else None, "ci": [-high, -low],
                     "p_below": tango_pvalue(b, c, n, 0.0) if n else 1.0})
    for row, (threshold, rejected) in zip(rows, adjust([r["p_below"] for r in rows],
                                                       LEVEL, "holm")):
        row["threshold"], row["below"] = threshold, rejected
    return rows


def paired_overall(paired: list[dict[str, Any]],
                   shares: dict[str, float] | None = None) -> dict[str, Any]:
    """The overall accuracy difference of ``paired_groups``' two runs with its 95% interval.

    shares None: every test example counts once (the paired score interval on the pooled
    b, c and n). Otherwise overall accuracy is the ``shares``-weighted mean of the subgroups'
    (a test split that oversamples a minority), with the normal interval of
    ``stratified_paired_interval``."""
    if shares is None:
        n = sum(r["n"] for r in paired)
        b, c = sum(r["b"] for r in paired), sum(r["c"] for r in paired)
        low, high = tango_interval(b, c, n)
        return {"delta": (c - b) / n, "ci": [-high, -low], "n": n}
    rows = [r for r in paired if r["group"] in shares]
    drop, low, high = stratified_paired_interval(
        [r["b"] for r in rows], [r["c"] for r in rows], [r["n"] for r in rows],
        [shares[r["group"]] for r in rows])
    return {"delta": -drop, "ci": [-high, -low], "n": sum(r["n"] for r in rows)}


def harmed(paired: list[dict[str, Any]]) -> list[str]:
    """The subgroups significantly below the reference."""
    return [r["group"] for r in paired if r["below"]]


def target_check(auto: dict[str, Any], kd: dict[str, Any],
                 rebalanced: list[dict[str, Any]]) -> dict[str, Any]:
    """One seed of one case: does ``auto`` meet the target against kd and the rebalanced
    students? Each argument is a run row (``overall``, ``worst``, ``paired_vs_one_hot``)."""
    worst_gain = auto["worst"] - kd["worst"]
    overall_change = auto["overall"] - kd["overall"]
    best_worst = max((r["worst"] for r in rebalanced), default=None)
    best_overall = max((r["overall"] for r in rebalanced), default=None)
    beats = (best_worst is not None and
             (auto["worst"] > best_worst or auto["overall"] > best_overall))
    checks = {"no_subgroup_below_one_hot": not harmed(auto["paired_vs_one_hot"]),
              "worst_gain_vs_kd": worst_gain >= TARGET_WORST_GAIN - 1e-12,
              "overall_vs_kd": overall_change >= -TARGET_MAX_ACC_LOSS - 1e-12,
              "beats_best_rebalanced": beats}
    return {**checks, "met": all(checks.values()), "worst_gain": worst_gain,
            "overall_change": overall_change, "best_rebalanced_worst": best_worst,
            "best_rebalanced_overall": best_overall,
            "harmed_vs_one_hot": harmed(auto["paired_vs_one_hot"])}
