"""From predictions on a split to an ``EvalReport``: per-group accuracy, CIs, worst groups."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from compression.data.dataset import GroupLayout, Split
from compression.errors import InvalidInput
from compression.evaluation.outcomes import Outcomes
from compression.evaluation.report import EvalReport, GroupMetrics
from compression.evaluation.stats import wilson_interval

__all__ = ["evaluate", "restrict"]


def evaluate(logits_or_preds: Tensor, split: Split, class_names: Sequence[str],
             group_names: Sequence[str], *, reference: EvalReport | None = None,
             worst_k: int = 3, name: str = "") -> EvalReport:
    """Score predictions against ``split.y`` overall, per group and per class.

    logits_or_preds: logits [N, C] (argmax taken, first index on ties) or class ids [N].
    group_names: the names of ``split.group``'s ids (the cells); the groups reported are
        ``split.layout``'s, each pooling its cells, or by default each id as itself.
    reference: an earlier report on the same groups (the teacher's, say); each group's
        accuracy minus the reference's goes into ``deltas``.
    """
    if worst_k < 1:
        raise InvalidInput(f"worst_k is {worst_k}; it must be >= 1")
    layout = _checked_layout(split.layout, group_names)
    num_classes = len(class_names)
    preds = _predictions(logits_or_preds, len(split), num_classes)
    y, group = split.y.detach().cpu().long(), split.group.detach().cpu().long()
    _check_ids(y, num_classes, "class")
    _check_ids(group, len(group_names), "group")
    return _report(Outcomes(preds == y, y, group, len(group_names), layout, predicted=preds),
                   class_names, reference, worst_k, name)


def restrict(report: EvalReport, keep: Tensor | None) -> EvalReport:
    """``report`` scored again on the examples ``keep`` ([N] bool) selects from its split;
    ``keep`` None: the report itself. The report must come from ``evaluate`` in memory."""
    if keep is None:
        return report
    o = report.outcomes
    if o is None or o.predicted is None:
        raise ValueError(f"report {report.name!r} holds no per-example predictions to restrict")
    keep = keep.cpu().bool()
    part = Outcomes(o.hit[keep], o.label[keep], o.group[keep], o.num_groups, o.layout,
                    predicted=o.predicted[keep])
    return _report(part, [c.name for c in report.per_class], None, report.worst_k, report.name)


def _report(outcomes: Outcomes, class_names: Sequence[str], reference: EvalReport | None,
            worst_k: int, name: str) -> EvalReport:
    layout = outcomes.layout  # evaluate always sets it
    assert layout is not None and outcomes.predicted is not None
    num_classes = len(class_names)
    hit, y, preds = outcomes.hit, outcomes.label, outcomes.predicted
    n, correct = outcomes.per_group(torch.ones_like(hit)).tolist(), outcomes.per_group(hit).tolist()
    groups = tuple(_metrics(g.name, n[i], correct[i], g.keys)
                   for i, g in enumerate(layout.groups))
    scored = sorted((g for g in groups if g.n), key=lambda g: g.accuracy)  # stable: lowest id wins
    accs = [g.accuracy for g in scored]
    confusion = torch.bincount(y * num_classes + preds, minlength=num_classes ** 2)
    overall = _metrics("overall", len(y), int(hit.sum()))
    deltas, overall_delta = _deltas(groups, overall, reference)
    return EvalReport(
        name=name, overall=overall, groups=groups, per_class=_per_id(class_names, y, hit),
        mean_group_accuracy=sum(accs) / len(accs) if accs else None,
        worst_group=scored[0] if scored else None,
        worst_k=worst_k,
        worst_k_mean=sum(accs[:worst_k]) / len(accs[:worst_k]) if accs else None,
        confusion=confusion.view(num_classes, num_classes).tolist(),
        reference_name=None if reference is None else reference.name,
        deltas=deltas, overall_delta=overall_delta,
        outcomes=outcomes,
    )


def _predictions(logits_or_preds: Tensor, n: int, num_classes: int) -> Tensor:
    """logits [N, C] or ids [N] -> class ids [N] int64 on the CPU, checked against the split."""
    out = torch.as_tensor(logits_or_preds).detach().cpu()
    if out.dim() == 2:
        if out.shape[0] and out.shape[1] != num_classes:
            raise InvalidInput(f"the model outputs {out.shape[1]} classes but the dataset has "
                               f"{num_classes}; check the model matches the data")
        out = out.argmax(dim=1) if out.shape[0] else out.new_zeros(0, dtype=torch.long)
    elif out.dim() != 1 or out.is_floating_point():
        raise InvalidInput(f"expected logits [N, C] or integer class ids [N], got "
                           f"{out.dtype} of shape {tuple(out.shape)}")
    if out.shape[0] != n:
        raise InvalidInput(f"got {out.shape[0]} predictions for a split of {n} examples")
    out = out.long()
    _check_ids(out, num_classes, "predicted class")
    return out


def _check_ids(ids: Tensor, count: int, what: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= count):
        raise InvalidInput(f"{what} ids span [{int(ids.min())}, {int(ids.max())}] but must be in "
                           f"[0, {count}) to match the {count} names given; check the names "
                           "match the data")


def _checked_layout(layout: GroupLayout | None, group_names: Sequence[str]) -> GroupLayout:
    if layout is None:
        return GroupLayout.flat(group_names)
    if layout.cell_names != tuple(str(n) for n in group_names):
        raise InvalidInput(f"the layout's cells {list(layout.cell_names)!r:.200} are not the "
                           f"group names {list(group_names)!r:.200}; evaluate a split with "
                           "its dataset's group_names")
    return layout


def _metrics(name: str, n: int, correct: int, keys: tuple[str, ...] = ()) -> GroupMetrics:
    low, high = wilson_interval(correct, n)
    return GroupMetrics(name=name, n=n, correct=correct,
                        accuracy=correct / n if n else None, ci_low=low, ci_high=high,
                        keys=keys)


def _per_id(names: Sequence[str], ids: Tensor, hit: Tensor) -> tuple[GroupMetrics, ...]:
    """ids: [N] in [0, len(names)); hit: [N] bool -> one GroupMetrics per name."""
    n = torch.bincount(ids, minlength=len(names)).tolist()
    correct = torch.bincount(ids[hit], minlength=len(names)).tolist()
    return tuple(_metrics(str(names[i]), n[i], correct[i]) for i in range(len(names)))


def _deltas(groups: tuple[GroupMetrics, ...], overall: GroupMetrics,
            reference: EvalReport | None) -> tuple[tuple[float | None, ...] | None, float | None]:
    """Accuracy minus the reference's, per group and overall; None where either is empty."""
    if reference is None:
        return None, None
    names = tuple(g.name for g in groups)
    if reference.group_names != names:
        raise InvalidInput(f"reference report {reference.name!r} has groups "
                           f"{list(reference.group_names)} but this one has {list(names)}; "
                           "compare reports made on the same subgroups")
    deltas = tuple(_diff(g.accuracy, r.accuracy) for g, r in zip(groups, reference.groups))
    return deltas, _diff(overall.accuracy, reference.overall.accuracy)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
