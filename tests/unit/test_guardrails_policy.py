from compression.guardrails import check_policy, describe_policy
from compression.spec import GuardrailSpec

NAMES = ["head", "medium", "tail"]


def test_a_sound_policy_and_an_empty_one_have_no_problems():
    assert check_policy(GuardrailSpec(min_accuracy=0.6, max_group_gap=0.2), NAMES,
                        [500, 200, 100]) == []
    # nothing is judged by default, so an empty subgroup is no problem
    assert check_policy(GuardrailSpec(), NAMES, [500, 200, 0]) == []


def test_unknown_override_names_list_the_known_subgroups():
    problems = check_policy(GuardrailSpec(min_accuracy_by_group={"tial": 0.5, "head": 0.9}),
                            NAMES, [500, 200, 100])
    assert problems == ["guardrails.min_accuracy_by_group names unknown subgroup(s) 'tial'; "
                        "the subgroups are: head, medium, tail"]


def test_a_judged_subgroup_without_test_samples_names_the_rules():
    policy = GuardrailSpec(min_accuracy_by_group={"tail": 0.5}, max_drop_vs_teacher=0.05)
    problems = check_policy(policy, NAMES, [500, 200, 0])
    assert len(problems) == 1
    assert problems[0].startswith("subgroup 'tail' has no test samples but is judged by "
                                  "min_accuracy_by_group.tail, max_drop_vs_teacher;")


def test_a_subgroup_under_min_samples_blocks_only_when_insufficient_evidence_blocks():
    policy = GuardrailSpec(min_accuracy=0.5, min_samples=30)
    (problem,) = check_policy(policy, NAMES, [500, 200, 12])
    assert "'tail' has 12 test samples, fewer than guardrails.min_samples (30)" in problem
    assert "block_on_insufficient_evidence: false" in problem
    lenient = GuardrailSpec(min_accuracy=0.5, min_samples=30, block_on_insufficient_evidence=False)
    assert check_policy(lenient, NAMES, [500, 200, 12]) == []


def test_a_floor_that_no_score_can_prove_is_reported_with_the_samples_it_needs():
    # 40/40 correct: one-sided 95% Wilson lower bound 40 / (40 + 1.6449²) = 0.937 < 0.95.
    # Needed: n / (n + 2.7055) >= 0.95  <=>  n >= 0.95 * 2.7055 / 0.05 = 51.4, so 52.
    policy = GuardrailSpec(min_accuracy_by_group={"tail": 0.95})
    (problem,) = check_policy(policy, NAMES, [500, 200, 40])
    assert ("even 40/40 correct gives a one-sided 95.0% lower bound of 93.7%, under its floor "
            "95.0%") in problem
    assert "use at least 52 test samples of it" in problem
    assert check_policy(policy, NAMES, [500, 200, 52]) == []
    # the worst-group floor applies to every subgroup, however large
    problems = check_policy(GuardrailSpec(min_worst_group_accuracy=1.0), NAMES, [500, 200, 10**6])
    assert [p.split()[1] for p in problems] == ["'head'", "'medium'", "'tail'"]
    assert all("use a floor below 100%" in p for p in problems)


def test_describe_policy_lists_active_rules_in_words():
    lines = describe_policy(GuardrailSpec(min_accuracy=0.7, min_accuracy_by_group={"tail": 0.5},
                                          max_drop_vs_one_hot=0.02, max_group_gap=0.15))
    assert lines == [
        "min_accuracy: every subgroup at least 70.0%",
        "min_accuracy_by_group.tail: at least 50.0%",
        "max_drop_vs_one_hot: no subgroup more than 2.0 pp below the one-hot student's",
        "max_group_gap: no subgroup more than 15.0 pp below the best one",
        "max_drop_vs_student: no exported artifact more than 1.0 pp below its student on any "
        "subgroup",
        "min_samples: 30; insufficient evidence blocks shipping",
        "confidence: 95.0% one-sided for every PASS; false FAILs held to 5.0% per stage (holm)",
    ]
    assert describe_policy(GuardrailSpec(max_drop_vs_student=None)) == [
        "no guardrail rule is set: nothing is judged"]
