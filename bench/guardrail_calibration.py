"""How often the guardrail gate rejects a good model, and how often it catches a bad one.

No training: pairs of models are simulated by their paired outcomes. In each of K subgroups
of n test examples the reference alone is right with probability p10 and the candidate
alone with p01, so the true drop of the candidate is p10 - p01; the rule is a paired drop
rule with margin d (max_drop_vs_one_hot, say). Each simulated stage goes through the same
decision the pipeline makes (``compression.guardrails.judge.decide_family``).

  false FAIL   share of stages with any FAIL when no subgroup's true drop exceeds d: at
               drop 0 (equally good models) and at drop d (the least favourable case).
               Held to 1 - confidence by Holm and Bonferroni; "none" shows the problem.
  power        share of stages that FAIL the one subgroup whose true drop is 2d (the others
               at 0), with Holm.

    .venv/bin/python bench/guardrail_calibration.py            # the table in docs/guardrails.md
    .venv/bin/python bench/guardrail_calibration.py --sims 300  # a quick look
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.guardrails import FAIL  # noqa: E402
from compression.guardrails.evidence import Paired  # noqa: E402
from compression.guardrails.judge import decide_family  # noqa: E402
from compression.spec import GuardrailSpec  # noqa: E402

METHODS = ("holm", "bonferroni", "none")


def simulate(k: int, n: int, drops: np.ndarray, p01: float, margin: float, method: str,
             confidence: float, sims: int, seed: int) -> tuple[float, float]:
    """(share of stages with any FAIL, share that FAIL subgroup 0)."""
    rng = np.random.default_rng(seed)
    p10 = p01 + drops
    b = rng.binomial(n, p10, size=(sims, k))
    c = rng.binomial(n - b, p01 / (1 - p10))
    policy = GuardrailSpec(max_drop_vs_one_hot=margin, multiplicity=method,
                           confidence=confidence)
    any_fail = first_fail = 0
    for row_b, row_c in zip(b.tolist(), c.tolist()):
        verdicts = [v for v, _ in decide_family(
            [Paired(bi, ci, n, margin) for bi, ci in zip(row_b, row_c)], policy)]
        any_fail += FAIL in verdicts
        first_fail += verdicts[0] == FAIL
    return any_fail / sims, first_fail / sims


def false_fail_table(args: argparse.Namespace) -> list[str]:
    alpha = round(1 - args.confidence, 12)
    se = math.sqrt(alpha * (1 - alpha) / args.sims)
    lines = [f"False-FAIL rate (any FAIL in the stage), {args.sims} stages per cell; "
             f"alpha = {alpha:g}, simulation standard error at alpha {se:.3f}.", "",
             "| K | n | p01 | true drop | " + " | ".join(METHODS) + " |",
             "|---|---|---|---|" + "---|" * len(METHODS)]
    for k in args.k:
        for n in args.n:
            for p01 in args.p01:
                for drop in (0.0, args.margin):
                    rates = [simulate(k, n, np.full(k, drop), p01, args.margin, m,
                                      args.confidence, args.sims, seed=k * 7919 + n)[0]
                             for m in METHODS]
                    lines.append(f"| {k} | {n} | {p01:g} | {drop:g} | "
                                 + " | ".join(f"{r:.3f}" for r in rates) + " |")
    return lines


def power_table(args: argparse.Namespace) -> list[str]:
    lines = [f"Power (Holm): share of stages that FAIL the one subgroup whose true drop is "
             f"{2 * args.margin:g}, {args.sims} stages per cell.", "",
             "| K | " + " | ".join(f"n={n}, p01={p:g}" for n in args.power_n for p in args.p01)
             + " |", "|---|" + "---|" * (len(args.power_n) * len(args.p01))]
    for k in args.k:
        drops = np.zeros(k)
        drops[0] = 2 * args.margin
        cells = [simulate(k, n, drops, p01, args.margin, "holm", args.confidence, args.sims,
                          seed=k * 104729 + n)[1] for n in args.power_n for p01 in args.p01]
        lines.append(f"| {k} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=2000, help="simulated stages per cell")
    parser.add_argument("--margin", type=float, default=0.03, help="the drop rule's margin d")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 10, 100], help="subgroups")
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 1000],
                        help="test examples per subgroup (false-FAIL table)")
    parser.add_argument("--power-n", type=int, nargs="+", default=[100, 1000, 5000],
                        help="test examples per subgroup (power table)")
    parser.add_argument("--p01", type=float, nargs="+", default=[0.01, 0.05],
                        help="share of examples only the candidate gets right")
    args = parser.parse_args()
    start = time.perf_counter()
    print("\n".join(false_fail_table(args)) + "\n")
    print("\n".join(power_table(args)) + "\n")
    print(f"margin d = {args.margin:g}, confidence {args.confidence:g}; "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
