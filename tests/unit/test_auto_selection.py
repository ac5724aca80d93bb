"""auto chooses for no harm: constructed holdout results, the real paired harm test."""

import dataclasses
import pytest
import torch

from compression.data.dataset import Split
from compression.evaluation import EvalReport, evaluate
from compression.guardrails import PASS, Check, StageVerdict, judge
from compression.losses.registry import (RECOMMENDED_CANDIDATES, candidates_of,
                                         check_mitigation, requirements)
from compression.selection import choose_mitigation
from compression.spec import GuardrailSpec, MitigationSpec

KD = MitigationSpec(name="kd", alpha=0.9)
PAIRED = MitigationSpec(name="paired_alpha", alpha=0.9)
LA = MitigationSpec(name="logit_adjusted", alpha=0.0)
CLASSES, GROUPS = ("head", "tail"), ("head", "tail")
Y = torch.tensor([0] * 300 + [1] * 60)  # a long-tailed holdout


HOLDOUT = Split(torch.zeros(360, 1, 1, 1, dtype=torch.uint8), Y, Y)  # group = class


def holdout_report(name: str, wrong_head: int, wrong_tail: int) -> EvalReport:
    """A model wrong on the first ``wrong_*`` examples of each class, on the same examples
    as every other report, so the paired test sees them."""
    pred = Y.clone()
    pred[:wrong_head] = 1
    pred[300:300 + wrong_tail] = 0
    return evaluate(pred, HOLDOUT, CLASSES, GROUPS, name=name)


ONE_HOT = holdout_report("one_hot", 30, 12)
HARM_POLICY = GuardrailSpec(max_drop_vs_one_hot=0.0, max_drop_vs_student=None,
                            block_on_insufficient_evidence=False)


def harm(report: EvalReport) -> StageVerdict:
    return judge(report, HARM_POLICY, "selection_harm", one_hot=ONE_HOT)


def passes(report: EvalReport) -> StageVerdict:
    return StageVerdict("selection", (), ())


class Trainer:
    def __init__(self, reports):
        self.reports, self.calls = reports, []

    def __call__(self, spec):
        self.calls.append(spec.name)
        return self.reports[spec.name]


def test_the_most_accurate_harmless_candidate_wins_over_a_more_accurate_harmful_one():
    # kd: best overall (head all right) but the tail falls from 80% to 50%: harm shown
    trainer = Trainer({"kd": holdout_report("kd", 0, 30),
                       "paired_alpha": holdout_report("paired_alpha", 20, 12),
                       "logit_adjusted": holdout_report("logit_adjusted", 30, 10)})
    sel = choose_mitigation([KD, PAIRED, LA], trainer, passes, harm, epochs=10)
    assert sel.candidates[0].accuracy > sel.candidates[1].accuracy
    assert sel.candidates[0].harmed == ("tail",) and sel.candidates[1].harmless
    assert sel.chosen is PAIRED and sel.met_floors
    d = sel.to_dict()
    assert "most accurate" in d["reason"] and "1 showed harm" in d["reason"]
    # paired_alpha's probe: 3 folds, a distilled and a label-only run each
    assert d["cost"]["candidates_trained"] == 3 and d["cost"]["probe_runs"] == 6
    assert d["cost"]["epochs_total"] == 90
    assert d["candidates"][0]["harm_shown_on"] == ["tail"]


def test_the_policy_decides_among_harmless_candidates():
    trainer = Trainer({"kd": holdout_report("kd", 10, 12),
                       "paired_alpha": holdout_report("paired_alpha", 20, 12)})

    def policy(report):  # a floor only the second meets
        ok = report.name == "paired_alpha"
        check = Check("min_accuracy", "tail", 0.8, 0.8, (0.0, 1.0), 100,
                      PASS if ok else "FAIL", "floor", p_value=0.5, threshold=0.05)
        return StageVerdict("selection", (check,), ())
    sel = choose_mitigation([KD, PAIRED], trainer, policy, harm)
    assert sel.chosen is PAIRED and sel.met_floors


def test_a_tie_on_overall_accuracy_goes_to_the_better_worst_group():
    # both 37 wrong of 360, neither below one-hot: kd's tail at 80%, logit_adjusted's at 85%
    trainer = Trainer({"kd": holdout_report("kd", 25, 12),
                       "logit_adjusted": holdout_report("logit_adjusted", 28, 9)})
    sel = choose_mitigation([KD, LA], trainer, passes, harm)
    assert sel.candidates[0].accuracy == sel.candidates[1].accuracy
    assert sel.chosen is LA and sel.met_floors
    # an exact tie on both goes to the earlier candidate
    same = Trainer({"kd": holdout_report("kd", 25, 12), "logit_adjusted": holdout_report(
        "logit_adjusted", 25, 12)})
    assert choose_mitigation([KD, LA], same, passes, harm).chosen is KD


def test_with_no_harmless_policy_passer_the_best_harmless_worst_group_is_kept_and_flagged():
    trainer = Trainer({"kd": holdout_report("kd", 0, 30),
                       "paired_alpha": holdout_report("paired_alpha", 5, 12),
                       "logit_adjusted": holdout_report("logit_adjusted", 30, 10)})

    def blocks(report):
        check = Check("min_accuracy", "tail", 0.1, 0.99, (0.0, 1.0), 100, "FAIL", "floor",
                      p_value=0.001, threshold=0.05)
        return StageVerdict("selection", (check,), ())
    sel = choose_mitigation([KD, PAIRED, LA], trainer, blocks, harm)
    assert sel.candidates[1].accuracy > sel.candidates[2].accuracy  # tail decides, not overall
    assert sel.chosen is LA and not sel.met_floors
    assert "no candidate with no harm shown passes" in sel.reason


def test_when_every_candidate_harms_the_best_worst_group_is_kept():
    trainer = Trainer({"kd": holdout_report("kd", 0, 40),
                       "paired_alpha": holdout_report("paired_alpha", 0, 30)})
    sel = choose_mitigation([KD, PAIRED], trainer, passes, harm)
    assert sel.chosen is PAIRED and not sel.met_floors
    assert "every candidate shows harm" in sel.reason and "best worst group" in sel.reason


def test_without_a_harm_judge_every_candidate_counts_as_harmless():
    trainer = Trainer({"kd": holdout_report("kd", 0, 30), "paired_alpha": ONE_HOT})
    assert choose_mitigation([KD, PAIRED], trainer, passes).chosen is KD


def test_auto_without_candidates_uses_the_recommended_set():
    auto = MitigationSpec(name="auto")
    assert auto.problems() == []
    assert candidates_of(auto) == RECOMMENDED_CANDIDATES
    check_mitigation(auto)  # every recommended candidate is valid
    needs = requirements(auto)
    assert needs.needs_teacher and needs.harm_probe and not needs.calibrate_teacher
    names = [c.name for c in RECOMMENDED_CANDIDATES]
    assert names[0] == "kd" and "paired_dro" in names
    assert names[-1] == "logit_adjusted"  # the teacher-free reference
    own = MitigationSpec(name="auto", candidates=(LA,))
    assert candidates_of(own) == (LA,) and not requirements(own).needs_teacher


@pytest.mark.parametrize("wrong_tail,harmed", [(12, False), (15, False), (30, True)])
def test_harm_is_the_paired_test_with_its_multiplicity_control(wrong_tail, harmed):
    # 3 more tail errors than one-hot (b=3, c=0) is not shown at 95% with Holm; 18 is
    verdict = harm(holdout_report("x", 30, wrong_tail))
    assert any(c.verdict == "FAIL" for c in verdict.checks) is harmed


def test_the_cost_counts_a_shared_probe_once_and_the_floor_reference_when_it_is_extra():
    floor = MitigationSpec(name="paired_alpha", alpha=0.9, params={"reference_floor": True})
    dro = MitigationSpec(name="paired_dro", alpha=0.9)
    trainer = Trainer({name: holdout_report(name, 0, 10)
                       for name in ("kd", "paired_alpha", "paired_dro")})
    sel = choose_mitigation([KD, PAIRED, floor, dro], trainer, passes, harm, epochs=10)
    # one probe (3 folds x 2 runs); in full length the floor's reference is the baseline
    assert sel.cost()["probe_runs"] == 6 and sel.cost()["one_hot_reference_runs"] == 0
    assert sel.cost()["cross_fit_runs"] == 1  # the floor fitted to the other half
    short = dataclasses.replace(sel, reference_seconds=1.0)
    assert short.cost()["probe_runs"] == 7 and short.cost()["one_hot_reference_runs"] == 1
    assert short.cost()["epochs_total"] == 10 * (4 + 1 + 7 + 1)


def test_a_floor_is_judged_on_its_out_of_fold_answers_over_the_whole_holdout():
    floor = MitigationSpec(name="paired_alpha", alpha=0.9, params={"reference_floor": True})
    # the caller's report of a cross-fitted candidate covers the whole holdout
    sel = choose_mitigation([floor, KD], Trainer({
        "kd": holdout_report("kd", 10, 12),
        "paired_alpha": holdout_report("paired_alpha", 0, 12)}), passes, harm)
    judged = sel.candidates[0]
    assert judged.judged_on == "holdout, out of fold" and judged.n == 360
    assert sel.chosen is floor and sel.candidates[1].judged_on == "holdout"
    assert "cross-fitted: each holdout half answered by its fit to the other half" in sel.reason
    assert sel.to_dict()["candidates"][0]["judged_on"] == "holdout, out of fold"


def test_the_choice_states_its_paired_lead_over_the_runner_up():
    # kd is right on 20 head examples paired_alpha gets wrong, and wrong on none it gets right
    clear = choose_mitigation([KD, PAIRED], Trainer({
        "kd": holdout_report("kd", 0, 12),
        "paired_alpha": holdout_report("paired_alpha", 20, 12)}), passes, harm)
    lead = clear.lead
    assert clear.chosen is KD and (lead["over"], lead["b"], lead["c"], lead["n"]) == (1, 0, 20, 360)
    assert lead["delta"] == pytest.approx(20 / 360)
    kd, paired = clear.candidates
    assert lead["delta"] == pytest.approx(kd.accuracy - paired.accuracy)
    assert 0 < lead["ci"][0] < lead["delta"] < lead["ci"][1]
    assert "leads candidate 1 (paired_alpha) by +5.6 points" in clear.reason
    assert "cannot tell" not in clear.reason and clear.to_dict()["lead"] == lead
    # one example apart: the interval reaches below 0 and the reason says so
    close = choose_mitigation([KD, PAIRED], Trainer({
        "kd": holdout_report("kd", 10, 12),
        "paired_alpha": holdout_report("paired_alpha", 11, 12)}), passes, harm)
    assert (close.lead["b"], close.lead["c"]) == (0, 1) and close.lead["ci"][0] < 0
    assert "cannot tell the two apart" in close.reason
    # a single harmless candidate has no runner-up
    alone = choose_mitigation([KD], Trainer({"kd": holdout_report("kd", 0, 12)}), passes, harm)
    assert alone.lead is None and "leads" not in alone.reason


def test_with_population_shares_auto_ranks_at_the_population_mix():
    # The holdout has 300 head and 60 tail images; the population is half tail. Both
    # candidates do no harm against one_hot (30 head and 12 tail wrong).
    # wide: head all right, 12 tail wrong: 348/360 = 96.7% on holdout, 0.5 + 0.5 * 0.8 = 90%
    # at the shares; narrow: 9 head and 4 tail wrong: 347/360 = 96.4%, 0.485 + 0.4667 = 95.2%
    trainer = Trainer({"kd": holdout_report("kd", 0, 12),
                       "logit_adjusted": holdout_report("logit_adjusted", 9, 4)})
    plain = choose_mitigation([KD, LA], trainer, passes, harm, epochs=10)
    assert plain.chosen is KD and plain.to_dict()["ranked_at"] == "holdout mix"
    mixed = choose_mitigation([KD, LA], trainer, passes, harm, epochs=10, shares=(0.5, 0.5))
    assert mixed.chosen is LA
    assert [c.population_accuracy for c in mixed.candidates] == pytest.approx(
        [0.9, 0.485 + 0.5 * 56 / 60])
    assert mixed.candidates[0].accuracy == pytest.approx(348 / 360)  # still reported
    d = mixed.to_dict()
    assert d["ranked_at"] == "subgroups.shares" and "at the population's shares" in d["reason"]
    # its lead over kd, paired at the shares: head b = 9 (only kd right), tail c = 8
    # (only logit_adjusted right): 0.5 * 8 / 60 - 0.5 * 9 / 300 = +5.17 points, with
    # variance 0.25 * ((9/300 - 0.03^2) / 300 + (8/60 - (8/60)^2) / 60)
    lead = d["lead"]
    half = 1.96 * (0.25 * ((0.03 - 0.0009) / 300 + (8 / 60 - (8 / 60) ** 2) / 60)) ** 0.5
    assert lead["delta"] == pytest.approx(0.5 * 8 / 60 - 0.5 * 9 / 300)
    assert lead["ci"] == pytest.approx([lead["delta"] - half, lead["delta"] + half])
    assert lead["ci"][0] > 0 and "cannot tell" not in d["reason"]
