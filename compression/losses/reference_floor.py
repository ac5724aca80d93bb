"""Hold every subgroup at the label-only reference's holdout accuracy (our own).

The harm to protect against is a subgroup below the student trained on its label term alone
(the one-hot student, for ``label_loss: ce``). The harm probe trains that reference on the
whole training split; its holdout accuracy per subgroup, ref_g, and overall, ref, are the
floors. Example i's loss l_i is weighted by its subgroup's multiplier,

    loss = sum_i v_i * l_i / sum_i v_i,        v_i = 1 + lambda_{g_i}

and after every epoch, with acc_g and acc the student's holdout accuracy by subgroup and
overall, each multiplier takes a projected step of dual ascent on its floor:

    d_g = (ref_g - acc_g) - max(0, ref - acc)
    lambda_g <- clip(lambda_g + eta * d_g, 0, max_weight - 1)

d_g asks a subgroup to trail the reference by no more than the student as a whole still
does: while the student is learning it is behind everywhere, and a subgroup is pushed only
for falling behind its share; once the student has caught up overall, by any shortfall at
all. A subgroup at or above its floor loses weight back to 1, so a probe's false alarm costs
nothing unless that subgroup really falls behind. Subgroups with no holdout example keep 1.
The multipliers are the loss's state, checkpointed with the model, so a resume is exact.

Both ref_g and acc_g are measured on one half of the holdout (``holdout_parts``: each
subgroup cell and class cut in two by a fixed draw; ``floor_half`` says which). The other
half stays unseen by the floor: a floor judged on the very examples it was fitted to would
pass the harm test by construction. ``auto`` cross-fits: it trains the floor on each half and
judges the pair's out-of-fold answers, each half answered by the student that did not see it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from compression.data.dataset import Split
from compression.data.splits import halves
from compression.distributed import batch_mean
from compression.errors import InvalidInput
from compression.losses.group_dro import holdout_group_error
from compression.losses.harm_probe import rows_in_order, subset
from compression.seeds import derived_seed

__all__ = ["FLOOR_PARAMS", "floor_param_problems", "holdout_parts", "fit_part",
           "reference_counts", "reference_counts_by_half", "out_of_fold", "with_twin",
           "floors_from_evidence", "floor_step", "ReferenceFloorLoss"]

FLOOR_PARAMS: dict[str, Any] = {"reference_floor": False, "floor_eta": 10.0,
                                "floor_max_weight": 8.0, "floor_half": 0}

# (student_logits [B, C], labels [B], teacher_logits [B, C] | None, groups [B]) -> [B]
PerExample = Callable[[Tensor, Tensor, "Tensor | None", Tensor], Tensor]


def floor_param_problems(params: dict[str, Any]) -> list[str]:
    problems = []
    if not 0 < params["floor_eta"] <= 1000:
        problems.append(f"mitigation.params.floor_eta is {params['floor_eta']}; it must be in "
                        "(0, 1000]")
    if not 1 <= params["floor_max_weight"] <= 1000:
        problems.append(f"mitigation.params.floor_max_weight is {params['floor_max_weight']}; "
                        "it must be in [1, 1000]")
    if params["floor_half"] not in (0, 1):
        problems.append(f"mitigation.params.floor_half is {params['floor_half']}; it must be 0 "
                        "or 1 (the holdout half the floor trains against)")
    return problems


def holdout_parts(holdout: Split) -> tuple[Tensor, Tensor]:
    """(half 0, half 1): bool masks [N] of the holdout's two halves, stratified by subgroup
    cell and class with a draw that depends on the labels alone, so every job with this
    holdout (the floor's loss, the probe's reference, ``auto``'s judge) cuts it the same way."""
    y, group = holdout.y.cpu().long(), holdout.group.cpu().long()
    strata = group * (int(y.max()) + 1 if len(y) else 1) + y
    fit_idx, _ = halves(strata.numpy(), derived_seed(0, "reference-floor/holdout-halves"))
    fit = torch.zeros(len(y), dtype=torch.bool)
    fit[torch.from_numpy(fit_idx)] = True
    return fit, ~fit


def fit_part(holdout: Split, half: int = 0) -> Split:
    """The half of the holdout a floor with ``floor_half`` = ``half`` trains against."""
    return subset(holdout, holdout_parts(holdout)[half])


def out_of_fold(holdout: Split, fitted_to_0: Tensor, fitted_to_1: Tensor) -> Tensor:
    """[N] answers on the whole holdout from two floors' answers [N] on all of it: on half 0
    those of the floor fitted to half 1, on half 1 those of the floor fitted to half 0, so
    no example is answered by the student fitted to it."""
    half_0 = holdout_parts(holdout)[0].to(fitted_to_0.device)
    return torch.where(half_0, fitted_to_1, fitted_to_0)


def with_twin(holdout: Split, answers: Tensor, twin_answers: Tensor, twin_half: int) -> Tensor:
    """``out_of_fold`` from a floor's answers and its twin's, the twin fitted to half
    ``twin_half`` and the floor to the other."""
    fitted_to = {twin_half: twin_answers, 1 - twin_half: answers}
    return out_of_fold(holdout, fitted_to[0], fitted_to[1])


def reference_counts(predicted: Tensor, labels: Tensor, groups: Tensor,
                     group_names: Sequence[str]) -> dict[str, Any]:
    """The reference's holdout answers [N] -> its examples and right answers per subgroup,
    the form the harm evidence carries under ``reference_holdout``."""
    k = len(group_names)
    g = groups.long().cpu()
    n = torch.bincount(g, minlength=k)
    right = torch.bincount(g[predicted.cpu() == labels.cpu()], minlength=k)
    return {"groups": [{"name": name, "n": int(n[i]), "correct": int(right[i])}
                       for i, name in enumerate(group_names)]}


def reference_counts_by_half(predicted: Tensor, holdout: Split,
                             group_names: Sequence[str]) -> dict[str, Any]:
    """The reference's answers [N] on the whole holdout -> ``reference_counts`` on each half,
    the form the harm evidence carries under ``reference_holdout``."""
    return {"halves": [reference_counts(predicted[mask], holdout.y[mask], holdout.group[mask],
                                        group_names)
                       for mask in (m.to(predicted.device) for m in holdout_parts(holdout))]}


def floors_from_evidence(evidence: dict[str, Any] | None, group_names: Sequence[str],
                         half: int = 0) -> tuple[Tensor, Tensor, float]:
    """(ref_g [K], n_g [K], ref) on holdout half ``half`` from the harm evidence's
    ``reference_holdout``."""
    halves = ((evidence or {}).get("reference_holdout") or {}).get("halves")
    if halves is None:
        raise InvalidInput("reference_floor needs the reference's holdout accuracy; the "
                           "pipeline's harm probe measures it when the mitigation asks")
    counts = halves[half]
    rows = rows_in_order(counts["groups"], group_names, "the reference on holdout")
    n = torch.tensor([row["n"] for row in rows], dtype=torch.float64)
    right = torch.tensor([row["correct"] for row in rows], dtype=torch.float64)
    total = sum(row["n"] for row in counts["groups"])
    if total == 0:
        raise InvalidInput("reference_floor needs holdout examples; the holdout split is empty")
    overall = sum(row["correct"] for row in counts["groups"]) / total
    return right / n.clamp_min(1.0), n, overall


def floor_step(multipliers: Tensor, floors: Tensor, overall_floor: float, accuracy: Tensor,
               n: Tensor, eta: float, max_weight: float) -> Tensor:
    """One dual step of the module docstring: [K] multipliers, floors ref_g, the student's
    holdout accuracy acc_g and examples n_g [K], ref -> the new multipliers [K]."""
    overall = float((accuracy * n).sum() / n.sum().clamp_min(1.0))
    deficit = (floors - accuracy) - max(0.0, overall_floor - overall)
    deficit = torch.where(n > 0, deficit, torch.zeros_like(deficit))
    return (multipliers + eta * deficit).clamp(0.0, max_weight - 1.0)


class ReferenceFloorLoss:
    """A per-example objective weighted by the floors' multipliers. Call as any ``Loss``.
    ``holdout``: the whole holdout split; the loss measures the student on half ``fit_half``
    of it, where ``floors`` were measured."""

    def __init__(self, name: str, per_example: PerExample, *, floors: Tensor, floor_n: Tensor,
                 overall_floor: float, holdout: Split, eta: float, max_weight: float,
                 eval_batch_size: int = 512, facts: dict[str, Any] | None = None,
                 fit_half: int = 0):
        self.name, self.per_example, self.needs_teacher = name, per_example, True
        self.floors, self.overall_floor = floors.double(), overall_floor
        self.holdout, self.eta, self.max_weight = fit_part(holdout, fit_half), eta, max_weight
        self.eval_batch_size, self.facts = eval_batch_size, dict(facts or {})
        self.facts["floors"] = {"overall": overall_floor, "by_group": floors.tolist(),
                                "n": floor_n.tolist(), "holdout_half": fit_half}
        self.multipliers = torch.zeros(len(floors), dtype=torch.float64)
        self.updates = 0
        self.holdout_accuracy: list[float] = []

    def __call__(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                 groups: Tensor) -> Tensor:
        if teacher_logits is None:
            raise ValueError(f"loss {self.name!r} needs teacher_logits; got None")
        losses = self.per_example(student_logits, labels, teacher_logits, groups)  # [B]
        v = 1 + self.multipliers.to(losses.device, losses.dtype)[groups]  # [B]
        return batch_mean(v * losses) / batch_mean(v)

    def on_epoch_end(self, model: nn.Module) -> None:
        error, n = holdout_group_error(model, self.holdout, len(self.floors),
                                       self.eval_batch_size)
        accuracy = 1 - error
        self.multipliers = floor_step(self.multipliers, self.floors, self.overall_floor,
                                      accuracy, n, self.eta, self.max_weight)
        self.updates += 1
        self.holdout_accuracy = accuracy.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {**self.facts, "floor_multipliers": self.multipliers.clone(),
                "updates": self.updates, "holdout_accuracy": list(self.holdout_accuracy)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        multipliers = state.get("floor_multipliers") if isinstance(state, dict) else None
        if not isinstance(multipliers, Tensor) or multipliers.shape != self.multipliers.shape:
            raise InvalidInput(f"the checkpoint's loss state {sorted(state or {})} holds no "
                               f"floor multipliers for {len(self.floors)} subgroups; resume "
                               "with the mitigation and subgroups it was trained with")
        self.multipliers = multipliers.detach().cpu().double().clone()
        self.updates = int(state.get("updates", 0))
        self.holdout_accuracy = [float(a) for a in state.get("holdout_accuracy", [])]

    def __repr__(self) -> str:
        return (f"ReferenceFloorLoss({self.name!r}, eta={self.eta}, "
                f"multipliers={[round(m, 3) for m in self.multipliers.tolist()]})")
