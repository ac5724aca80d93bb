"""Automatic choice among candidate mitigations, with fake holdout reports."""

import json

import pytest

from compression.errors import InvalidInput
from compression.evaluation import EvalReport, GroupMetrics
from compression.guardrails import FAIL, PASS, Check, StageVerdict
from compression.selection import choose_mitigation
from compression.spec import MitigationSpec

KD, ALPHA, DRO = (MitigationSpec(name="kd"), MitigationSpec(name="adaptive_alpha"),
                  MitigationSpec(name="group_dro", params={"beta": 0.8}))


def metrics(name: str, accuracy: float) -> GroupMetrics:
    return GroupMetrics(name=name, n=100, correct=round(100 * accuracy), accuracy=accuracy,
                        ci_low=0.0, ci_high=1.0)


def report(overall: float, worst: float) -> EvalReport:
    groups = (metrics("head", 0.95), metrics("tail", worst))
    return EvalReport(name="holdout", overall=metrics("overall", overall), groups=groups,
                      per_class=groups, mean_group_accuracy=(0.95 + worst) / 2,
                      worst_group=groups[1], worst_k=1, worst_k_mean=worst,
                      confusion=[[0, 0], [0, 0]])


class Trainer:
    """Returns a fixed report per candidate name and records the calls."""

    def __init__(self, reports: dict[str, EvalReport]):
        self.reports, self.calls = reports, []

    def __call__(self, spec: MitigationSpec) -> EvalReport:
        self.calls.append(spec.name)
        return self.reports[spec.name]


def floor(minimum: float):
    """A gate with one check: the worst group at ``minimum`` or above."""
    def gate(r: EvalReport) -> StageVerdict:
        w = r.worst_group
        check = Check("min_worst_group_accuracy", w.name, w.accuracy, minimum, (0.0, 1.0), w.n,
                      PASS if w.accuracy >= minimum else FAIL, "test gate", p_value=0.5,
                      threshold=0.05)
        return StageVerdict("selection", (check,), ())
    return gate


def test_keeps_the_most_accurate_candidate_that_passes():
    trainer = Trainer({"kd": report(0.90, 0.40), "adaptive_alpha": report(0.86, 0.62),
                       "group_dro": report(0.84, 0.70)})
    sel = choose_mitigation([KD, ALPHA, DRO], trainer, floor(0.6))
    assert trainer.calls == ["kd", "adaptive_alpha", "group_dro"]
    assert sel.chosen is ALPHA and sel.index == 1 and sel.met_floors
    assert [c.passed for c in sel.candidates] == [False, True, True]
    assert sel.candidates[2].worst_group == "tail"
    assert sel.candidates[2].worst_group_accuracy == 0.70


def test_when_none_passes_the_best_worst_group_is_kept_and_flagged():
    trainer = Trainer({"kd": report(0.90, 0.40), "adaptive_alpha": report(0.86, 0.55),
                       "group_dro": report(0.80, 0.58)})
    sel = choose_mitigation([KD, ALPHA, DRO], trainer, floor(0.6))
    assert sel.chosen is DRO and not sel.met_floors


def test_ties_go_to_the_earlier_candidate_then_to_accuracy():
    same = {"kd": report(0.9, 0.7), "adaptive_alpha": report(0.9, 0.7)}
    assert choose_mitigation([ALPHA, KD], Trainer(same), floor(0.0)).index == 0
    worst_tie = {"kd": report(0.85, 0.5), "adaptive_alpha": report(0.88, 0.5)}
    sel = choose_mitigation([KD, ALPHA], Trainer(worst_tie), floor(0.9))
    assert sel.chosen is ALPHA  # same worst group: the more accurate one


def test_bad_candidates_fail_before_any_training():
    trainer = Trainer({})
    with pytest.raises(InvalidInput) as err:
        choose_mitigation([KD, MitigationSpec(name="nope"),
                           MitigationSpec(name="ltkd", params={"eta": 1.0})], trainer,
                          floor(0.0))
    assert len(err.value.problems) == 2 and trainer.calls == []
    with pytest.raises(InvalidInput, match="empty"):
        choose_mitigation([], trainer, floor(0.0))
    with pytest.raises(InvalidInput, match="cannot itself be 'auto'"):
        choose_mitigation([MitigationSpec(name="auto", candidates=(KD,))], trainer, floor(0.0))


def test_to_dict_has_every_candidate_and_is_json():
    trainer = Trainer({"kd": report(0.90, 0.40), "group_dro": report(0.84, 0.70)})
    data = json.loads(json.dumps(choose_mitigation([KD, DRO], trainer, floor(0.6)).to_dict()))
    assert data["chosen"] == "group_dro" and data["chosen_index"] == 1 and data["met_floors"]
    assert [c["name"] for c in data["candidates"]] == ["kd", "group_dro"]
    assert data["candidates"][1]["spec"]["params"] == {"beta": 0.8}
    assert data["candidates"][0] == {**data["candidates"][0], "accuracy": 0.9,
                                     "worst_group_accuracy": 0.4, "passed": False}
    # why: the check that kept kd out, and the one closest to failing for group_dro
    assert data["candidates"][0]["verdict"] == FAIL
    assert [(c["rule"], c["verdict"]) for c in data["candidates"][0]["deciding_checks"]] == [
        ("min_worst_group_accuracy", FAIL)]
    assert data["candidates"][1]["deciding_checks"][0]["verdict"] == PASS
