import json

import pytest
import torch
import torch.nn.functional as F

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.evaluation import (EvalReport, evaluate, load_json, restrict, wilson_interval,
                                    write_json)

CLASSES = ("c0", "c1", "c2")
GROUPS = ("head", "tail", "empty")
# 8 examples, 3 classes, groups 0 and 1 (group 2 has no examples)
Y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
PREDS = torch.tensor([0, 0, 1, 1, 0, 2, 2, 1])
# hits:          [1, 1, 0, 1, 0, 1, 1, 0] -> head 3/4, tail 2/4, overall 5/8


def _split() -> Split:
    return Split(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), Y, G)


def _report(preds=PREDS, **kw) -> EvalReport:
    return evaluate(preds, _split(), CLASSES, GROUPS, **kw)


def test_wilson_matches_known_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    # at the edges the bounds are n / (n + z^2) and z^2 / (n + z^2)
    z2 = 1.96 ** 2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    # exact, not approximately, at the edges: 20/20 reaches 1.0 and 0/20 reaches 0.0
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(8, 10, z=1.0)
    assert 0.4902 < low < high < 0.9433  # a lower z gives a narrower interval
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_per_group_and_overall_accuracy():
    r = _report(name="student")
    assert r.name == "student"
    assert [(g.name, g.n, g.correct, g.accuracy) for g in r.groups] == [
        ("head", 4, 3, 0.75), ("tail", 4, 2, 0.5), ("empty", 0, 0, None)]
    assert (r.overall.n, r.overall.correct, r.overall.accuracy) == (8, 5, 0.625)
    assert (r.groups[0].ci_low, r.groups[0].ci_high) == wilson_interval(3, 4)
    assert (r.groups[2].ci_low, r.groups[2].ci_high) == (0.0, 1.0)
    assert [c.accuracy for c in r.per_class] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert [c.n for c in r.per_class] == [3, 2, 3]


def test_summaries_skip_empty_groups():
    r = _report()
    assert r.mean_group_accuracy == pytest.approx((0.75 + 0.5) / 2)
    assert (r.worst_group.name, r.worst_group.accuracy) == ("tail", 0.5)
    assert r.worst_k == 3 and r.worst_k_mean == pytest.approx(0.625)  # only 2 non-empty
    assert _report(worst_k=1).worst_k_mean == 0.5


def test_confusion_rows_are_true_classes():
    assert _report().confusion == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]


def test_logits_give_the_same_report_as_their_argmax():
    logits = F.one_hot(PREDS, 3).float()
    assert _report(logits) == _report()
    ties = torch.zeros(8, 3)  # argmax of a tie is the first class
    assert _report(ties).confusion == [[3, 0, 0], [2, 0, 0], [3, 0, 0]]


def test_deltas_against_a_reference():
    teacher = _report(Y.clone(), name="teacher")  # all correct
    r = _report(reference=teacher, name="student")
    assert r.reference_name == "teacher"
    assert r.deltas == (-0.25, -0.5, None)
    assert r.overall_delta == -0.375
    assert _report().deltas is None and _report().reference_name is None


def test_reference_on_other_groups_is_refused():
    other = evaluate(PREDS, _split(), CLASSES, ("a", "b", "c"), name="other")
    with pytest.raises(InvalidInput, match="'other' has groups"):
        _report(reference=other)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(8, 4), "outputs 4 classes but the dataset has 3"),
    (torch.zeros(7, dtype=torch.long), "7 predictions for a split of 8"),
    (torch.full((8,), 3), r"predicted class ids span \[3, 3\]"),
    (torch.zeros(8), "integer class ids"),
])
def test_bad_predictions_are_invalid_input(bad, match):
    with pytest.raises(InvalidInput, match=match):
        _report(bad)


def test_bad_group_ids_and_worst_k_are_invalid_input():
    with pytest.raises(InvalidInput, match=r"group ids span \[0, 1\]"):
        evaluate(PREDS, _split(), CLASSES, ("only",))
    with pytest.raises(InvalidInput, match="worst_k"):
        _report(worst_k=0)


def test_empty_split_has_no_accuracies():
    empty = Split(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), Y[:0], G[:0])
    r = evaluate(torch.empty(0, 0), empty, CLASSES, GROUPS)
    assert r.overall.accuracy is None and r.worst_group is None
    assert r.mean_group_accuracy is None and r.worst_k_mean is None
    assert r.confusion == [[0] * 3] * 3


def test_json_round_trip_is_exact(tmp_path):
    teacher = _report(Y.clone(), name="teacher")
    for r in (teacher, _report(reference=teacher, name="student")):
        path = write_json(tmp_path / "r" / f"{r.name}.json", r.to_dict())
        assert "NaN" not in path.read_text()
        assert EvalReport.from_dict(load_json(path)) == r
        assert EvalReport.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()


def test_outcomes_stay_in_memory_and_out_of_the_json():
    r = _report(name="student")
    assert r.outcomes.hit.tolist() == (PREDS == Y).tolist()
    assert torch.equal(r.outcomes.group, G) and r.outcomes.num_groups == 3
    data = r.to_dict()
    assert "outcomes" not in data and "hit" not in json.dumps(data)
    back = EvalReport.from_dict(data)
    assert back.outcomes is None and back == r  # equality ignores the in-memory outcomes


def test_from_dict_refuses_malformed_reports():
    data = _report().to_dict()
    del data["groups"]
    with pytest.raises(InvalidInput, match="not a valid evaluation report"):
        EvalReport.from_dict(data)


def test_format_table_shows_the_numbers_aligned():
    teacher = _report(Y.clone(), name="teacher")
    text = _report(reference=teacher, name="student").format_table()
    lines = text.splitlines()
    assert lines[0].split() == ["group", "n", "accuracy", "95%", "CI", "delta", "vs", "teacher"]
    low, high = wilson_interval(3, 4)
    head = lines[1].split()
    assert head[:3] == ["head", "4", "75.00%"]
    assert f"[{100 * low:.2f}, {100 * high:.2f}]" in lines[1] and "-25.00 pp" in lines[1]
    assert lines[2].split()[:3] == ["tail", "4", "50.00%"] and "-50.00 pp" in lines[2]
    assert lines[3].split() == ["empty", "0", "-", "-", "-"]
    assert lines[5].split()[:3] == ["overall", "8", "62.50%"] and "-37.50 pp" in lines[5]
    assert "worst group: tail (50.00%)" in text
    assert "worst-3 mean: 62.50%" in text and "mean group accuracy: 62.50%" in text
    assert len({len(line) for line in lines[0:3]}) == 1  # aligned columns
    assert "delta" not in _report().format_table()


def test_a_report_restricted_to_part_of_its_split_is_that_part_scored_afresh():
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    part = Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), Y[keep], G[keep])
    expected = evaluate(PREDS[keep], part, CLASSES, GROUPS)
    restricted = restrict(_report(), keep)
    assert restricted == expected
    # kept hits [1, 0, 1, 1, 0]: head 2/3, tail 1/2, overall 3/5
    assert [g.correct for g in restricted.groups[:2]] == [2, 1] and restricted.overall.n == 5
    assert torch.equal(restricted.outcomes.hit, expected.outcomes.hit)
    assert restrict(_report(), None) == _report()
    read_back = EvalReport.from_dict(json.loads(json.dumps(_report().to_dict())))
    with pytest.raises(ValueError, match="no per-example predictions"):
        restrict(read_back, keep)
