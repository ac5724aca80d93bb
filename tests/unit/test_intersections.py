"""Several subgroup keys: cells for training, every key's groups and every intersection for
evaluation and the guardrails, pooled from the cells in one pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compression.data import load_dataset
from compression.data.dataset import GroupLayout, Split
from compression.data.raw import RawSplit
from compression.data.subgroups import assign_groups
from compression.errors import InvalidInput
from compression.evaluation import EvalReport, evaluate, paired_counts
from compression.guardrails import (FAIL, INSUFFICIENT_EVIDENCE, PASS, StageVerdict,
                                    check_policy, judge, preflight_notes)
from compression.spec import DataSpec, GuardrailSpec, SubgroupSpec, parse_spec

CROSSED = SubgroupSpec(by="class", also_by=("attribute",))
NAMES = ("class=a", "class=b", "attribute=day", "attribute=night",
         "class=a & attribute=day", "class=a & attribute=night",
         "class=b & attribute=day", "class=b & attribute=night")

# Per cell: (both right, reference only, candidate only, both wrong); 34 examples.
TABLES = {("a", "day"): (9, 1, 0, 2), ("a", "night"): (2, 3, 0, 1),
          ("b", "day"): (8, 0, 2, 0), ("b", "night"): (3, 1, 1, 1)}


def _raw(classes, attrs, origin="split"):
    y = np.asarray(["ab".index(c) for c in classes], np.int64)
    return RawSplit(np.zeros((len(y), 1, 1, 1), np.uint8), y, np.asarray(attrs), ("a", "b"),
                    origin)


def _crossed_splits(tables, seed=0):
    """A reference and a candidate on one split, from per-cell tables, examples shuffled so
    that nothing depends on their order -> (reference report, candidate report)."""
    rows = [(c, a, ref, cand) for (c, a), (both, ref_only, cand_only, neither) in tables.items()
            for ref, cand in [(1, 1)] * both + [(1, 0)] * ref_only + [(0, 1)] * cand_only
            + [(0, 0)] * neither]
    rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    raw = _raw([r[0] for r in rows], [r[1] for r in rows])
    (ids,), layout = assign_groups(CROSSED, [raw], [1, 1], ("day", "night"))
    y = torch.from_numpy(raw.y)
    split = Split(torch.zeros(len(y), 1, 1, 1, dtype=torch.uint8), y, torch.from_numpy(ids),
                  layout)

    def report(name, column):
        hit = torch.tensor([r[column] for r in rows], dtype=torch.bool)
        return evaluate(torch.where(hit, y, 1 - y), split, ("a", "b"), layout.cell_names,
                        name=name)
    return report("teacher", 2), report("student", 3)


def test_cells_are_the_ids_and_every_key_and_intersection_is_reported():
    train = _raw("aabbb", ["day", "night", "day", "night", "dusk"])
    test = _raw("ab", ["night", "day"])
    (train_ids, test_ids), layout = assign_groups(CROSSED, [train, test], [2, 3],
                                                  ("day", "dusk", "night"))
    assert layout.cell_names == ("class=a & attribute=day", "class=a & attribute=night",
                                 "class=b & attribute=day", "class=b & attribute=dusk",
                                 "class=b & attribute=night")
    assert train_ids.tolist() == [0, 1, 2, 4, 3] and test_ids.tolist() == [1, 2]
    groups = {g.name: (g.keys, g.cells) for g in layout.groups}
    assert groups["class=b"] == (("class",), (2, 3, 4))
    assert groups["attribute=night"] == (("attribute",), (1, 4))
    # b under dusk holds exactly the dusk samples: reported once, as attribute=dusk
    assert "class=b & attribute=dusk" not in groups and groups["attribute=dusk"][1] == (3,)
    assert groups["class=a & attribute=night"] == (("class", "attribute"), (1,))
    assert layout.intersections == ("class=a & attribute=day", "class=a & attribute=night",
                                    "class=b & attribute=day", "class=b & attribute=night")


def test_one_key_keeps_its_plain_names_and_a_cell_per_group():
    (ids,), layout = assign_groups(SubgroupSpec(by="class"), [_raw("ba", ["x", "y"])],
                                   [1, 1], None)
    assert ids.tolist() == [1, 0]
    assert layout.names == layout.cell_names == ("a", "b") and layout.intersections == ()
    assert [g.keys for g in layout.groups] == [("class",), ("class",)]
    # a key coarser than another adds its groups and no intersections
    (_,), crossed = assign_groups(SubgroupSpec(by="frequency", also_by=("class",)),
                                  [_raw("aab", ["x"] * 3)], [2, 1], None)
    assert crossed.names == ("frequency=head", "frequency=medium", "frequency=tail",
                             "class=a", "class=b")


def test_pooled_accuracies_and_discordant_pairs_by_hand():
    teacher, student = _crossed_splits(TABLES)
    assert student.group_names == NAMES
    got = {g.name: (g.n, g.correct, g.keys) for g in student.groups}
    assert got["class=a"] == (18, 11, ("class",))
    assert got["class=b"] == (16, 14, ("class",))
    assert got["attribute=day"] == (22, 19, ("attribute",))
    assert got["attribute=night"] == (12, 6, ("attribute",))
    assert got["class=a & attribute=night"] == (6, 2, ("class", "attribute"))
    assert [g.correct for g in teacher.groups] == [15, 12, 18, 9, 10, 5, 8, 4]
    assert student.overall.n == 34 and student.overall.correct == 25
    assert student.worst_group.name == "class=a & attribute=night"
    counts = paired_counts(teacher.outcomes, student.outcomes)
    assert counts.n == (18, 16, 22, 12, 12, 6, 10, 6)
    assert counts.b == (4, 1, 1, 4, 1, 3, 0, 1)
    assert counts.c == (0, 3, 2, 1, 0, 0, 2, 1)


def test_keys_in_json_and_older_reports_read_back():
    _, student = _crossed_splits(TABLES)
    data = json.loads(json.dumps(student.to_dict()))
    assert data["groups"][0]["keys"] == ["class"]
    assert data["groups"][5]["keys"] == ["class", "attribute"]
    assert "keys" not in data["overall"] and "keys" not in data["per_class"][0]
    assert EvalReport.from_dict(data) == student
    for g in data["groups"]:
        del g["keys"]
    assert EvalReport.from_dict(data).groups[5].keys == ()


def test_every_group_and_cell_is_one_holm_family():
    teacher, student = _crossed_splits(TABLES)
    policy = GuardrailSpec(max_drop_vs_teacher=0.05, max_drop_vs_student=None, min_samples=10)
    v = judge(student, policy, "student", teacher=teacher)
    assert v.family_size == 8 and [c.subgroup for c in v.checks] == list(NAMES)
    assert min(c.threshold for c in v.checks) == pytest.approx(0.05 / 8)
    pooled = {c.subgroup: (c.n, c.b, c.c) for c in v.checks}
    assert pooled["attribute=night"] == (12, 4, 1)
    assert v.advisory_subgroups == ("class=a & attribute=night", "class=b & attribute=night")
    assert [g.keys for g in v.groups][3:5] == [("attribute",), ("class", "attribute")]
    back = StageVerdict.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back == v and back.passed == v.passed


def _large_with_small_cell(small):
    """Identical answers on 200 examples per large cell; the small cell a & night has
    ``small`` = (both, ref only, cand only, neither)."""
    return _crossed_splits({("a", "day"): (200, 0, 0, 0), ("a", "night"): small,
                            ("b", "day"): (200, 0, 0, 0), ("b", "night"): (200, 0, 0, 0)})


def test_a_small_cell_without_evidence_does_not_block_but_its_harm_does():
    policy = GuardrailSpec(max_drop_vs_teacher=0.2, max_drop_vs_student=None, min_samples=30)
    teacher, student = _large_with_small_cell((3, 1, 1, 0))  # b = c = 1 on 5 examples
    v = judge(student, policy, "student", teacher=teacher)
    cell = {c.subgroup: c for c in v.checks}["class=a & attribute=night"]
    assert cell.verdict == INSUFFICIENT_EVIDENCE and cell.n == 5
    assert {c.verdict for c in v.checks if c.subgroup != cell.subgroup} == {PASS}
    assert v.passed and v.failing_subgroups == () and not v.blocks(cell)
    teacher, student = _large_with_small_cell((0, 12, 0, 0))  # wrong on all 12: harm shown
    v = judge(student, policy, "student", teacher=teacher)
    cell = {c.subgroup: c for c in v.checks}["class=a & attribute=night"]
    assert cell.verdict == FAIL and cell.p_value <= cell.threshold
    assert not v.passed and v.failing_subgroups == ("class=a & attribute=night",)


def test_small_marginals_still_block_and_whole_model_rules_pick_a_blocking_check():
    teacher, student = _large_with_small_cell((3, 1, 1, 0))
    policy = GuardrailSpec(min_worst_group_accuracy=0.5, max_drop_vs_student=None,
                           min_samples=30)
    v = judge(student, policy, "student")
    assert v.passed and v.checks[0].subgroup == "class=a & attribute=night"
    small = GuardrailSpec(min_worst_group_accuracy=0.5, max_drop_vs_student=None,
                          min_samples=300)  # now the marginals are small too
    v = judge(student, small, "student")
    assert not v.passed and v.checks[0].subgroup not in v.advisory_subgroups
    assert v.checks[0].verdict == INSUFFICIENT_EVIDENCE


def test_preflight_judges_small_cells_without_refusing_the_job():
    names = ("class=a", "class=b", "class=a & attribute=night", "class=b & attribute=day")
    counts = [40, 35, 5, 0]
    cells = names[2:]
    policy = GuardrailSpec(min_accuracy=0.5, max_drop_vs_one_hot=0.05, min_samples=30)
    assert check_policy(policy, names, counts, intersections=cells) == []
    refused = check_policy(policy, names, counts)  # the same sizes, all taken as marginals
    assert len(refused) == 3 and "fewer than guardrails.min_samples" in refused[0]
    assert "can never FAIL there" in refused[1] and "has no test samples" in refused[2]
    small_marginal = check_policy(policy, names, [40, 5, 5, 0], intersections=cells)
    assert len(small_marginal) == 2
    assert all(p.startswith("subgroup 'class=b' has 5 test samples") for p in small_marginal)
    wide = GuardrailSpec(max_drop_vs_one_hot=0.5, min_samples=10)
    assert "can never FAIL" in check_policy(wide, names, [40, 35, 15, 0])[0]
    assert check_policy(wide, names, [40, 35, 15, 0], intersections=cells) == []
    notes = preflight_notes(policy, names, counts)
    assert sum("class=a & attribute=night" in n for n in notes) == 2  # one-hot and student


def test_spec_validates_the_keys():
    with pytest.raises(InvalidInput, match=r"also_by: 'colour' is not one of class, "):
        parse_spec({"data": {"subgroups": {"by": "attribute", "also_by": ["colour"]}}})
    with pytest.raises(InvalidInput) as caught:
        parse_spec({"data": {"subgroups": {"by": "attribute", "also_by": ["attribute", "map"]}}})
    problems = " | ".join(caught.value.problems)
    assert "attribute given more than once" in problems
    assert "also_by has 'map' but mapping is empty" in problems
    spec = parse_spec({"data": {"subgroups": {"by": "frequency", "alsoBy": ["attribute"]}}})
    assert spec.data.subgroups.keys == ("frequency", "attribute")


def test_floors_name_key_groups_and_intersections_in_key_order():
    def floors(*names):
        return parse_spec({"data": {"subgroups": {"by": "class", "also_by": ["attribute"]}},
                           "guardrails": {"min_accuracy_by_group": dict.fromkeys(names, 0.5)}})
    ok = floors("class=Shirt", "attribute=night", "class=Shirt & attribute=night")
    assert len(ok.guardrails.min_accuracy_by_group) == 3
    with pytest.raises(InvalidInput) as caught:
        floors("Shirt", "class=Shirtt", "attribute=night & class=Shirt", "colour=red")
    (problem,) = caught.value.problems
    assert "['Shirt', 'class=Shirtt', 'attribute=night & class=Shirt', 'colour=red']" in problem
    assert "class=... & attribute=..." in problem and "Ankle boot" in problem


def test_loaded_data_trains_on_cells_and_reports_groups(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("test", 30)):
        y = np.arange(n) % 3
        attr = np.where(rng.random(n) < 0.3, "night", "day")
        np.savez(tmp_path / f"{name}.npz", x=np.zeros((n, 2, 2), np.uint8), y=y, group=attr)
    data = load_dataset(DataSpec(source="npz", path=str(tmp_path / "train.npz"),
                                 test_path=str(tmp_path / "test.npz"), subgroups=CROSSED))
    assert data.num_groups == 6 and data.group_names[0] == "class=0 & attribute=day"
    assert data.train.layout is data.test.layout is data.layout
    counts = dict(zip(data.layout.names, data.group_counts(data.test)))
    assert counts["class=0"] == 10 and counts["attribute=day"] + counts["attribute=night"] == 30
    assert counts["class=1"] == counts["class=1 & attribute=day"] + counts[
        "class=1 & attribute=night"]
    report = evaluate(data.test.y, data.test, data.class_names, data.group_names)
    assert report.group_names == data.layout.names and report.overall.accuracy == 1.0
    with pytest.raises(InvalidInput, match="evaluate a split with its dataset's group_names"):
        evaluate(data.test.y, data.test, data.class_names, ("x",) * 6)


def test_a_name_two_groups_share_is_refused():
    with pytest.raises(InvalidInput, match="stand for different groups"):
        GroupLayout.flat(["a", "a"])
