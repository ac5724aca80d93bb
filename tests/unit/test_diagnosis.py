"""The harm diagnosis on a hand-made 3-class example whose answers are worked out below."""

import pytest
import torch

from compression.diagnosis import destinations, diagnose_harm, teacher_flow

CLASSES = ("A", "B", "C")
GROUPS = ("a", "b", "c")
#            0  1  2  3  4  5  6
Y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
ONE_HOT = torch.tensor([0, 0, 1, 1, 2, 2, 1])  # class 0: 2/2, class 1: 2/2, class 2: 2/3
STUDENT = torch.tensor([0, 2, 1, 1, 1, 1, 1])  # class 0: 1/2, class 1: 2/2, class 2: 0/3
# Teacher probabilities (logits are their logs, so softmax gives them back exactly).
PROBS = torch.tensor([[0.8, 0.1, 0.1],
                      [0.6, 0.2, 0.2],
                      [0.1, 0.7, 0.2],
                      [0.2, 0.5, 0.3],
                      [0.1, 0.5, 0.4],   # the teacher is wrong here (predicts B)
                      [0.2, 0.2, 0.6],
                      [0.3, 0.3, 0.4]])
TEACHER = teacher_flow(PROBS.log(), Y, Y, 3)


def test_teacher_flow_by_class_hand_values():
    assert TEACHER.predictions.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert TEACHER.accuracy == pytest.approx((1.0, 1.0, 2 / 3))
    # top probability: (0.8 + 0.6) / 2; (0.7 + 0.5) / 2; (0.5 + 0.6 + 0.4) / 3
    assert TEACHER.mean_confidence == pytest.approx((0.7, 0.6, 0.5))
    # 1 - p(own class): (0.2 + 0.4) / 2; (0.3 + 0.5) / 2; (0.6 + 0.4 + 0.6) / 3
    assert TEACHER.mass_out == pytest.approx((0.3, 0.4, 1.6 / 3))
    # p(class k) over the other classes' examples: A gets (.1+.2+.1+.2+.3)/5,
    # B gets (.1+.2+.5+.2+.3)/5, C gets (.1+.2+.2+.3)/4
    assert TEACHER.mass_in == pytest.approx((0.18, 0.26, 0.2))
    assert TEACHER.temperature == 1.0


def test_teacher_flow_for_attribute_groups_counts_only_other_classes_flowing_in():
    # group 0 holds examples 0, 2, 4, 6 (classes A, B, C): every class is its class, so the
    # mass flowing in from examples 1, 3, 5 is all their mass off their own class
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    flow = teacher_flow(PROBS.log(), Y, groups, 3)
    assert flow.mass_in[0] == pytest.approx((0.4 + 0.5 + 0.4) / 3)
    assert flow.mass_out[1] == pytest.approx((0.4 + 0.5 + 0.4) / 3)
    assert flow.accuracy == pytest.approx((0.75, 1.0, None))  # group 2 has no example
    assert flow.mass_in[2] is None and flow.mean_confidence[2] is None


def test_destinations_are_the_confusion_delta_largest_first():
    # class C's examples: student wrong as B three times, one-hot once -> B +2
    got = destinations(STUDENT[4:], ONE_HOT[4:], Y[4:], CLASSES)
    assert got == [{"class": "B", "student": 3, "one_hot": 1, "delta": 2}]
    # ties go to the lower class id; classes the student sends fewer errors to are left out
    # student errors: B, C; reference errors: A (on the last example) -> A -1, B +1, C +1
    student, reference, labels = torch.tensor([1, 2, 0, 1]), torch.tensor([0, 0, 0, 0]), \
        torch.tensor([0, 0, 0, 1])
    assert [d["class"] for d in destinations(student, reference, labels, CLASSES)] == ["B", "C"]
    assert len(destinations(student, reference, labels, CLASSES, top=1)) == 1


def test_diagnose_harm_hand_example():
    report = diagnose_harm(STUDENT, ONE_HOT, Y, Y, CLASSES, GROUPS, TEACHER)
    assert report["reference"] == "one_hot" and report["teacher_temperature"] == 1.0
    c, a = report["subgroups"]  # b is not harmed; c drops 2/3, a drops 1/2
    assert c["group"] == "c" and a["group"] == "a"
    assert (c["n"], c["newly_wrong"], c["newly_right"]) == (3, 2, 0)
    assert c["student_accuracy"] == 0 and c["one_hot_accuracy"] == pytest.approx(2 / 3)
    assert c["drop"] == pytest.approx(2 / 3)
    assert c["destinations"] == [{"class": "B", "student": 3, "one_hot": 1, "delta": 2}]
    # newly wrong: examples 4 (student B = teacher B) and 5 (student B, teacher C)
    assert c["teacher"] == pytest.approx({"accuracy": 2 / 3, "mean_confidence": 0.5,
                                          "mass_out": 1.6 / 3, "mass_in": 0.2,
                                          "copied_errors": 1})
    assert a["drop"] == 0.5 and a["destinations"] == [
        {"class": "C", "student": 1, "one_hot": 0, "delta": 1}]
    assert a["teacher"]["copied_errors"] == 0  # the teacher is right on example 1


def test_no_harm_and_no_teacher():
    same = diagnose_harm(ONE_HOT, ONE_HOT, Y, Y, CLASSES, GROUPS, TEACHER)
    assert same["subgroups"] == []
    # the student better everywhere: nothing to diagnose either
    assert diagnose_harm(ONE_HOT, STUDENT, Y, Y, CLASSES, GROUPS)["subgroups"] == []
    bare = diagnose_harm(STUDENT, ONE_HOT, Y, Y, CLASSES, GROUPS)
    assert bare["teacher_temperature"] is None
    assert [s["teacher"] for s in bare["subgroups"]] == [None, None]


def test_reported_groups_pool_cells():
    # the cells are the classes; reported: "a" = {0}, "bc" = {1, 2} and "all" = {0, 1, 2}
    members, names = [(0,), (1, 2), (0, 1, 2)], ("a", "bc", "all")
    flow = teacher_flow(PROBS.log(), Y, Y, 3, members=members)
    # bc: the teacher gets examples 2, 3, 5, 6 of 2..6 right; examples 0 and 1 put
    # 0.1 + 0.1 and 0.2 + 0.2 on classes 1 and 2; nothing lies outside "all"
    assert flow.accuracy == pytest.approx((1.0, 0.8, 6 / 7))
    assert flow.mass_in == pytest.approx((0.18, 0.3, None))
    report = diagnose_harm(STUDENT, ONE_HOT, Y, Y, CLASSES, names, flow, members=members)
    # drops: a 1/2; all (6 - 3) / 7; bc (4 - 2) / 5
    assert [(g["group"], g["newly_wrong"]) for g in report["subgroups"]] == [
        ("a", 1), ("all", 3), ("bc", 2)]
    assert [g["drop"] for g in report["subgroups"]] == pytest.approx([0.5, 3 / 7, 0.4])
    assert report["subgroups"][2]["teacher"]["copied_errors"] == 1


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same examples"):
        diagnose_harm(STUDENT[:-1], ONE_HOT, Y, Y, CLASSES, GROUPS)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        teacher_flow(PROBS[:-1].log(), Y, Y, 3)
    with pytest.raises(ValueError, match="3 subgroups"):
        diagnose_harm(STUDENT, ONE_HOT, Y, Y, CLASSES, ("a", "bc"), TEACHER,
                      members=[(0,), (1, 2)])
