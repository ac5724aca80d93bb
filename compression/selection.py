"""``mitigation.name: auto``: train each candidate briefly and keep the best that does no harm.

The caller supplies how to train and score a candidate (the pipeline trains for
``selection_epochs`` and evaluates on HOLDOUT, never on test, so the choice does not leak the
test split) and two judges of a holdout report, each with the project's paired tests and
their multiplicity control:

- ``harm``: is the candidate shown to be below the one-hot student on some subgroup (a paired
  test with margin 0 against the one-hot baseline's holdout answers)? A FAIL is established
  harm, the paper's notion of it.
- ``gate``: the job's own guardrail policy on holdout.

A candidate that trains against half of the holdout (``registry.fits_holdout_half``: the
reference floor) is cross-fitted by the caller: trained once on each half, its report holds
on each half the answers of the student fitted to the other one (out of fold), since judged
on the examples it was fitted to it would pass the harm test by construction. Every
candidate is thus judged and ranked on the whole holdout, where the tests have the most
power.

Rule: the most accurate candidate (overall holdout accuracy; with ``data.subgroups.shares``,
accuracy at the population's mix, each subgroup cell's holdout accuracy weighted by its share,
since a holdout that oversamples a minority would otherwise rank for a population the model
will not serve) among those with no established harm that pass the policy; when there is
none, the best worst-group accuracy among those with no established harm, or among all when
every candidate harms (``met_floors=False``). A tie on that accuracy goes to the better
worst group (the subgroup the product protects), then to the earlier candidate. Without a
``harm`` judge every candidate counts as harmless. Every candidate records its verdicts
and the checks that decided them; the selection records why it chose, how far its choice
leads the runner-up (paired, with its interval: a lead the ranking examples cannot show is
said so), and what the choice cost (runs trained, probes included, epochs, wall seconds).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from compression.errors import InvalidInput
from compression.evaluation import EvalReport, Outcomes, paired_counts
from compression.evaluation.stats import (stratified_accuracy, stratified_paired_interval,
                                          tango_interval)
from compression.guardrails import FAIL, Check, StageVerdict
from compression.losses.registry import (AUTO, check_mitigation, fits_holdout_half,
                                         harm_probe_plan)
from compression.spec import MitigationSpec, spec_to_dict

__all__ = ["CandidateScore", "Selection", "choose_mitigation", "RULE", "CROSS_FITTED"]

Judge = Callable[[EvalReport], StageVerdict]
RULE = ("most accurate on holdout (at the population's subgroup shares when given) among "
        "candidates with no harm shown against the one-hot student that pass the policy; else "
        "the best worst group among those with no harm shown, or among all")


CROSS_FITTED = "holdout, out of fold"  # judged_on of a candidate fitted to a holdout half


@dataclass(frozen=True)
class CandidateScore:
    """One trained candidate: its spec, its holdout scores and its guardrail verdict.

    deciding: the checks that decided the verdict: those that kept it from passing, or,
        when it passed, the one closest to failing (the largest harm p-value relative to
        its threshold is the farthest from FAIL, so the smallest is the closest).
    harmed: the subgroups where harm against the one-hot student is shown (FAIL).
    seconds: wall time of training and scoring it.
    judged_on: "holdout", or ``CROSS_FITTED`` for a candidate fitted to a holdout half (its
    answers out of fold); n: the holdout examples its verdicts were judged on. accuracy and
    the worst group: on holdout; population_accuracy: accuracy at the population's subgroup
    shares (None without shares), which ranks it when given; ranked: its outcomes there, for
    the paired lead of the chosen candidate.
    """

    spec: MitigationSpec
    accuracy: float | None
    worst_group: str | None
    worst_group_accuracy: float | None
    passed: bool
    verdict: str = "PASS"
    deciding: tuple[Check, ...] = ()
    harmed: tuple[str, ...] = ()
    seconds: float = 0.0
    judged_on: str = "holdout"
    n: int | None = None
    population_accuracy: float | None = None
    ranked: Outcomes | None = field(default=None, compare=False, repr=False)

    @property
    def harmless(self) -> bool:
        return not self.harmed

    @property
    def ranking_accuracy(self) -> float | None:
        return self.accuracy if self.population_accuracy is None else self.population_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "spec": spec_to_dict(self.spec),
                "accuracy": self.accuracy, "population_accuracy": self.population_accuracy,
                "worst_group": self.worst_group,
                "worst_group_accuracy": self.worst_group_accuracy, "passed": self.passed,
                "verdict": self.verdict, "harm_shown_on": list(self.harmed),
                "seconds": round(self.seconds, 3), "judged_on": self.judged_on, "n": self.n,
                "deciding_checks": [_brief(c) for c in self.deciding]}


@dataclass(frozen=True)
class Selection:
    """chosen: the student's objective; index: its position among ``candidates``.

    met_floors: the chosen candidate shows no harm and passes the policy on holdout.
    reason: why it was chosen, in words. epochs: per candidate (None: not told).
    reference_seconds: the one-hot student trained as long as the candidates to judge them
    against (None: the full-length baseline served).
    reused: the chosen candidate's run is the student (candidates trained in full), so
    choosing cost the other candidates only; else the chosen spec is trained again in full.
    lead: when the most accurate harmless passing candidate was chosen and another one
    passed too, how far it leads the runner-up there: the paired accuracy difference with
    its 95% score interval and n (None otherwise). An interval that reaches 0 means the
    ranking examples cannot tell the two apart.
    holdout_power: per holdout subgroup, its n and the smallest drop the harm test can show
    there (``min_detectable_drop``, None: none): no harm shown is no evidence of no harm
    where the holdout is too small to show it. shares: the weight of each subgroup cell in
    the ranking (``data.subgroups.shares``); None: the holdout's own mix.
    """

    chosen: MitigationSpec
    index: int
    met_floors: bool
    candidates: tuple[CandidateScore, ...]
    reason: str = ""
    epochs: int | None = None
    recommended: bool = False
    reference_seconds: float | None = None
    reused: bool = False
    holdout_power: tuple[dict[str, Any], ...] = ()
    lead: dict[str, Any] | None = None
    shares: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.name, "chosen_index": self.index,
                "met_floors": self.met_floors, "split": "holdout", "rule": RULE,
                "ranked_at": "holdout mix" if self.shares is None else "subgroups.shares",
                "lead": self.lead,
                "reason": self.reason, "recommended_candidates": self.recommended,
                "cost": self.cost(), "holdout_power": list(self.holdout_power),
                "candidates": [c.to_dict() for c in self.candidates]}

    def cost(self) -> dict[str, Any]:
        """The extra training the choice took: every candidate (twice when cross-fitted),
        and the harm probes they ran (2 runs a fold, on (K - 1) / K of the training split;
        equal probes run once; a whole-split reference where one is asked for, unless it is
        the one-hot baseline)."""
        plans = [p for p in map(harm_probe_plan, (c.spec for c in self.candidates)) if p]
        folds = {repr(dataclasses.replace(p, reference_holdout=False)): p for p in plans}
        reference_runs = int(self.reference_seconds is not None)
        # full-length candidates (no short one-hot reference) share the job's baseline
        whole = {repr((p.reference, p.epochs)) for p in plans if p.reference_holdout and not (
            p.reference.name == "one_hot" and p.epochs == 0 and not reference_runs)}
        probe_runs = sum(2 * p.folds for p in folds.values()) + len(whole)
        cross_fit_runs = sum(c.judged_on == CROSS_FITTED for c in self.candidates)
        runs = len(self.candidates) + cross_fit_runs + probe_runs + reference_runs
        return {"candidates_trained": len(self.candidates), "cross_fit_runs": cross_fit_runs,
                "probe_runs": probe_runs,
                "one_hot_reference_runs": reference_runs, "chosen_run_is_student": self.reused,
                "epochs_each": self.epochs,
                "epochs_total": None if self.epochs is None else self.epochs * runs,
                "seconds": round(sum(c.seconds for c in self.candidates)
                                 + (self.reference_seconds or 0.0), 3)}


def choose_mitigation(candidates: Sequence[MitigationSpec],
                      train_candidate: Callable[[MitigationSpec], EvalReport],
                      gate: Judge, harm: Judge | None = None, *, epochs: int | None = None,
                      recommended: bool = False,
                      shares: Sequence[float] | None = None) -> Selection:
    """Train every candidate with ``train_candidate`` (its report on the whole holdout,
    out of fold for a candidate fitted to a holdout half), judge it with ``harm`` and
    ``gate`` and pick one (see the module docstring). Every candidate's name and params are
    checked before any training starts. shares: one weight per subgroup cell, summing to 1
    (``compression.data.subgroups.population_weights``): rank at that mix.
    """
    _check(candidates)
    shares = None if shares is None else tuple(shares)
    scores = tuple(_score(spec, train_candidate, gate, harm, shares) for spec in candidates)
    index, reason, runner_up = _pick(scores)
    chosen = scores[index]
    lead = None if runner_up is None else _lead(chosen, scores[runner_up], runner_up, shares)
    return Selection(chosen=candidates[index], index=index,
                     met_floors=chosen.harmless and chosen.passed, candidates=scores,
                     reason=reason + ("" if lead is None else _lead_words(lead)),
                     epochs=epochs, recommended=recommended, lead=lead, shares=shares)


def _pick(scores: Sequence[CandidateScore]) -> tuple[int, str, int | None]:
    """(chosen index, why, the runner-up among the harmless passing candidates or None)."""
    harmless = [i for i, s in enumerate(scores) if s.harmless]
    passing = [i for i in harmless if scores[i].passed]
    shown = len(scores) - len(harmless)
    if passing:
        def rank(i: int) -> tuple[float, float, int]:
            return (_value(scores[i].ranking_accuracy), _value(scores[i].worst_group_accuracy),
                    -i)
        i = max(passing, key=rank)
        runner_up = max((j for j in passing if j != i), key=rank, default=None)
        at = "" if scores[i].population_accuracy is None else " at the population's shares"
        return i, (f"{_label(scores[i], i)} is the most accurate on holdout{at} "
                   f"({_pct(scores[i].ranking_accuracy)}) of the {len(passing)} candidates with "
                   f"no harm shown against the one-hot student that pass the policy"
                   + (f"; {shown} showed harm" if shown else "")), runner_up
    pool = harmless or list(range(len(scores)))
    i = max(pool, key=lambda i: (
        _value(scores[i].worst_group_accuracy), _value(scores[i].accuracy), -i))
    why = ("no candidate with no harm shown passes the policy on holdout" if harmless else
           "every candidate shows harm against the one-hot student on holdout")
    return i, (f"{why}; {_label(scores[i], i)} has the best worst group of "
               f"{'those with no harm shown' if harmless else 'all'} "
               f"({scores[i].worst_group} {_pct(scores[i].worst_group_accuracy)})"), None


def _lead(chosen: CandidateScore, runner_up: CandidateScore, index: int,
          shares: tuple[float, ...] | None) -> dict[str, Any] | None:
    """The chosen candidate's paired accuracy lead over the runner-up on the ranking
    examples (at the population's shares when given): b = examples only the runner-up gets
    right, c = only the chosen one."""
    if chosen.ranked is None or runner_up.ranked is None:
        return None
    # counted per cell (no layout): cells partition the examples, reported groups may overlap
    pairs = paired_counts(*(dataclasses.replace(o, layout=None)
                            for o in (runner_up.ranked, chosen.ranked)))
    b, c, n = sum(pairs.b), sum(pairs.c), sum(pairs.n)
    if n == 0:
        return None
    if shares is None:
        low, high = tango_interval(b, c, n)  # of (b - c) / n, the runner-up's lead
        drop = (b - c) / n
    else:
        drop, low, high = stratified_paired_interval(pairs.b, pairs.c, pairs.n, shares)
    return {"over": index, "name": runner_up.spec.name, "delta": -drop,
            "ci": [-high, -low], "n": n, "b": b, "c": c}


def _lead_words(lead: dict[str, Any]) -> str:
    low, high = lead["ci"]
    shown = "" if low > 0 else ": the ranking examples cannot tell the two apart"
    return (f"; it leads candidate {lead['over']} ({lead['name']}) by "
            f"{100 * lead['delta']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], paired, "
            f"n {lead['n']}{shown}")


def _score(spec: MitigationSpec, train_candidate: Callable[[MitigationSpec], EvalReport],
           gate: Judge, harm: Judge | None,
           shares: tuple[float, ...] | None) -> CandidateScore:
    start = time.perf_counter()
    holdout = train_candidate(spec)
    seconds = time.perf_counter() - start
    worst = holdout.worst_group
    verdict = gate(holdout)
    harmed = () if harm is None else tuple(dict.fromkeys(
        c.subgroup for c in harm(holdout).checks if c.verdict == FAIL))
    return CandidateScore(spec=spec, accuracy=holdout.overall.accuracy,
                          worst_group=worst.name if worst else None,
                          worst_group_accuracy=worst.accuracy if worst else None,
                          passed=verdict.passed, verdict=verdict.verdict,
                          deciding=_deciding(verdict), harmed=harmed, seconds=seconds,
                          judged_on=CROSS_FITTED if fits_holdout_half(spec) else "holdout",
                          n=holdout.overall.n, ranked=holdout.outcomes,
                          population_accuracy=_at_shares(holdout.outcomes, shares))


def _at_shares(outcomes: Outcomes | None, shares: tuple[float, ...] | None) -> float | None:
    """Accuracy at the population's mix: each cell's accuracy weighted by its share."""
    if shares is None:
        return None
    if outcomes is None or len(shares) != outcomes.num_groups:
        raise ValueError("accuracy at the population's shares needs one share per subgroup cell "
                         "and the candidate's per-example outcomes")
    cells = dataclasses.replace(outcomes, layout=None)  # counted per cell
    n = cells.per_group(torch.ones_like(outcomes.hit)).tolist()
    return stratified_accuracy(cells.per_group(outcomes.hit).tolist(), n, shares)[0]


def _deciding(verdict: StageVerdict) -> tuple[Check, ...]:
    if not verdict.passed:
        return verdict.failing_checks
    tested = [c for c in verdict.checks if c.p_value is not None and c.threshold]
    closest = min(tested, key=lambda c: c.p_value / c.threshold, default=None)
    return () if closest is None else (closest,)


def _brief(check: Check) -> dict[str, Any]:
    """The fields a reader needs to see why; the full check lives in the stage verdicts."""
    return {"rule": check.rule, "subgroup": check.subgroup, "verdict": check.verdict,
            "estimate": check.estimate, "margin": check.margin, "p_value": check.p_value,
            "threshold": check.threshold, "message": check.message}


def _label(score: CandidateScore, index: int) -> str:
    where = "" if score.judged_on == "holdout" else (
        ", cross-fitted: each holdout half answered by its fit to the other half")
    return f"candidate {index} ({score.spec.name}, alpha {score.spec.alpha:g}{where})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _value(score: float | None) -> float:
    return -1.0 if score is None else score  # an unscored candidate ranks last


def _check(candidates: Sequence[MitigationSpec]) -> None:
    if not candidates:
        raise InvalidInput("mitigation.candidates is empty; list at least one, e.g. "
                           "[{name: kd}, {name: adaptive_alpha}]")
    nested = [i for i, c in enumerate(candidates) if c.name == AUTO]
    if nested:
        raise InvalidInput(f"mitigation.candidates{nested}: a candidate cannot itself be 'auto'")
    check_mitigation(MitigationSpec(name=AUTO, candidates=tuple(candidates)))
