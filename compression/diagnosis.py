"""Where a distilled student loses to its one-hot baseline, and what the teacher did there.

Pure functions over predictions the pipeline has already made on the test split. For each
subgroup where the student is less accurate than the same student trained on labels alone
(the paper's notion of harm), the diagnosis gives:

- where the subgroup's examples went: per predicted class, the student's wrong predictions
  minus the one-hot student's (the confusion delta), the classes gaining most first;
- the paired counts: examples the one-hot student gets right and the student wrong
  (``newly_wrong``) and the reverse (``newly_right``), the b and c of the guardrails' test;
- the teacher (the one the student distilled from, calibrated when calibration was on), at
  temperature 1 on the test split: accuracy, mean confidence (mean top probability), soft
  mass out (mean probability on classes other than the example's own, over the subgroup's
  examples), soft mass in (mean probability on the subgroup's classes, other than the
  example's own, over the examples outside the subgroup), and ``copied_errors``: newly
  wrong examples where the student predicts exactly the teacher's (wrong) class.

A teacher that is right but unsure (high mass out, high accuracy) pulls a small student off
a rare class without any copied error; a teacher that is wrong shows as copied errors.

Subgroups are given as each example's id [N]; with ``members`` a reported subgroup pools
several ids (the cells of intersectional subgroups), so one cell may count in several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["TeacherFlow", "teacher_flow", "destinations", "diagnose_harm"]


@dataclass(frozen=True, eq=False)
class TeacherFlow:
    """The teacher on one split. predictions: [N] int64; each tuple has one entry per
    subgroup, None for a subgroup with no example (mass_in: with no example outside it)."""

    predictions: Tensor
    accuracy: tuple[float | None, ...]
    mean_confidence: tuple[float | None, ...]
    mass_out: tuple[float | None, ...]
    mass_in: tuple[float | None, ...]
    temperature: float


def teacher_flow(teacher_logits: Tensor, labels: Tensor, groups: Tensor, num_groups: int,
                 temperature: float = 1.0, *,
                 members: Sequence[Sequence[int]] | None = None) -> TeacherFlow:
    """teacher_logits: [N, C]; labels, groups: [N] int64 -> the teacher's per-subgroup flow.

    A subgroup's classes are the classes of its examples; mass in counts, for each example
    outside the subgroup, its probability on those classes except its own class.
    members: the ids each reported subgroup pools; None: subgroup k is id k < num_groups.
    """
    _check_lengths(labels, groups)
    if teacher_logits.dim() != 2 or teacher_logits.shape[0] != labels.shape[0]:
        raise ValueError(f"teacher_logits must be [N, C] for the {labels.shape[0]} labels; "
                         f"got {tuple(teacher_logits.shape)}")
    probs = torch.softmax(teacher_logits.detach().cpu().double() / temperature, dim=1)  # [N, C]
    y, g = labels.cpu().long(), groups.cpu().long()
    own = probs.gather(1, y[:, None]).squeeze(1)  # [N]
    top, predictions = probs.max(dim=1)
    accuracy, confidence, mass_out, mass_in = [], [], [], []
    for inside in _masks(g, num_groups, members):
        accuracy.append(_mean((predictions == y)[inside]))
        confidence.append(_mean(top[inside]))
        mass_out.append(_mean(1 - own[inside]))
        classes = torch.zeros(probs.shape[1], dtype=torch.bool)
        classes[y[inside]] = True
        onto = probs[~inside][:, classes].sum(1) - own[~inside] * classes[y[~inside]]  # [N']
        mass_in.append(_mean(onto) if inside.any() else None)
    return TeacherFlow(predictions, tuple(accuracy), tuple(confidence), tuple(mass_out),
                       tuple(mass_in), temperature)


def destinations(student: Tensor, reference: Tensor, labels: Tensor, class_names: Sequence[str],
                 top: int = 3) -> list[dict[str, Any]]:
    """Classes the student's errors move to, against the reference's, for one subgroup.

    student, reference, labels: [n] class ids of the subgroup's examples. Per predicted
    class, wrong predictions of the student minus those of the reference; the ``top``
    classes with the largest positive delta (lowest id on ties).
    """
    c = len(class_names)
    wrong_student = torch.bincount(student[student != labels], minlength=c)
    wrong_reference = torch.bincount(reference[reference != labels], minlength=c)
    delta = wrong_student - wrong_reference
    order = sorted((i for i in range(c) if delta[i] > 0), key=lambda i: (-int(delta[i]), i))
    return [{"class": class_names[i], "student": int(wrong_student[i]),
             "one_hot": int(wrong_reference[i]), "delta": int(delta[i])} for i in order[:top]]


def diagnose_harm(student: Tensor, one_hot: Tensor, labels: Tensor, groups: Tensor,
                  class_names: Sequence[str], group_names: Sequence[str],
                  teacher: TeacherFlow | None = None, top: int = 3, *,
                  members: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """The ``harm_diagnosis`` report section.

    student, one_hot: [N] predicted class ids of the two students; labels, groups: [N]; all
    on the same split in the same order. teacher: its flow on that split for the same
    subgroups, or None when the job has no teacher. members: as in ``teacher_flow``.
    Harmed subgroups come first by drop (student below one-hot), then in subgroup order.
    """
    _check_lengths(labels, groups, student, one_hot,
                   None if teacher is None else teacher.predictions)
    y, g = labels.cpu().long(), groups.cpu().long()
    s, o = student.cpu().long(), one_hot.cpu().long()
    masks = _masks(g, len(group_names), members)
    if teacher is not None and len(teacher.accuracy) != len(masks):
        raise ValueError(f"the teacher's flow has {len(teacher.accuracy)} subgroups; "
                         f"{len(masks)} are diagnosed")
    entries = [_entry(k, inside, s, o, y, class_names, group_names, teacher, top)
               for k, inside in enumerate(masks)]
    harmed = sorted((e for e in entries if e is not None), key=lambda e: -e["drop"])
    return {"reference": "one_hot", "split": "test",
            "teacher_temperature": None if teacher is None else teacher.temperature,
            "subgroups": harmed}


def _entry(k: int, inside: Tensor, s: Tensor, o: Tensor, y: Tensor,
           class_names: Sequence[str], group_names: Sequence[str], teacher: TeacherFlow | None,
           top: int) -> dict[str, Any] | None:
    """The diagnosis of subgroup k (examples ``inside``: [N] bool), or None when the student
    is not below one-hot there."""
    n = int(inside.sum())
    s_hit, o_hit = (s == y)[inside], (o == y)[inside]
    if n == 0 or int(s_hit.sum()) >= int(o_hit.sum()):
        return None
    newly_wrong = o_hit & ~s_hit
    entry = {"group": group_names[k], "n": n,
             "student_accuracy": float(s_hit.double().mean()),
             "one_hot_accuracy": float(o_hit.double().mean()),
             "drop": float((o_hit.double() - s_hit.double()).mean()),
             "newly_wrong": int(newly_wrong.sum()), "newly_right": int((s_hit & ~o_hit).sum()),
             "destinations": destinations(s[inside], o[inside], y[inside], class_names, top),
             "teacher": None}
    if teacher is not None:
        copied = newly_wrong & (s[inside] == teacher.predictions.cpu()[inside])
        entry["teacher"] = {"accuracy": teacher.accuracy[k],
                            "mean_confidence": teacher.mean_confidence[k],
                            "mass_out": teacher.mass_out[k], "mass_in": teacher.mass_in[k],
                            "copied_errors": int(copied.sum())}
    return entry


def _masks(groups: Tensor, count: int, members: Sequence[Sequence[int]] | None) -> list[Tensor]:
    """[N] bool per subgroup: id k alone, or the ids ``members[k]`` pools."""
    if members is None:
        return [groups == k for k in range(count)]
    if len(members) != count:
        raise ValueError(f"{len(members)} member lists for {count} subgroups")
    return [torch.isin(groups, torch.as_tensor(list(ids), dtype=torch.long)) for ids in members]


def _mean(values: Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def _check_lengths(*tensors: Tensor | None) -> None:
    sizes = [t.shape[0] for t in tensors if t is not None]
    if len(set(sizes)) > 1 or any(t is not None and t.dim() != 1 for t in tensors):
        raise ValueError(f"predictions, labels and groups must all be [N] over the same "
                         f"examples; got lengths {sizes}")
