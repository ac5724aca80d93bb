"""The table of mitigations (training objectives), keyed by the spec's ``mitigation.name``.

Adding one: write a module with its pure loss function and a ``build(spec, context, params)
-> Loss``, import the builder here, and add one ``Objective`` entry to ``_OBJECTIVES`` with
the ``spec.params`` it accepts and their defaults. ``auto`` is a valid name too but no single
loss: ``compression.selection.choose_mitigation`` trains its candidates and keeps one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from compression.errors import InvalidInput
from compression.losses import adaptive_alpha, adaptive_margin, group_dro, ltkd, rebalance
from compression.losses import balanced_teacher, paired_alpha, teacher_calibration
from compression.losses.harm_probe import ProbePlan, probe_plan
from compression.losses.base import Loss, LossContext
from compression.losses.core import build_kd, build_one_hot
from compression.spec import MitigationSpec

__all__ = ["AUTO", "BASELINES", "REBALANCING", "Objective", "Requirements", "build_loss",
           "known_losses", "accepted_params", "requirements", "check_mitigation",
           "harm_probe_plan", "fits_holdout_half", "other_half", "RECOMMENDED_CANDIDATES",
           "candidates_of"]

Builder = Callable[[MitigationSpec, LossContext, dict[str, Any]], Loss]
ParamCheck = Callable[[dict[str, Any]], list[str]]
AUTO = "auto"
BASELINES = ("kd", "one_hot")
# Teacher-free references: how much of a mitigation's gain plain rebalancing gives.
REBALANCING = ("balanced_softmax", "class_balanced", "group_dro_one_hot", "logit_adjusted")


@dataclass(frozen=True)
class Objective:
    """One table entry. build gets ``params`` = ``spec.params`` over these defaults.

    uses_teacher: the loss reads teacher logits. needs_reliability: the builder reads
    ``LossContext.teacher_reliability`` (profile the teacher on holdout first).
    calibrates_teacher: the pipeline must calibrate the teacher on holdout before training.
    harm_probe: the builder reads ``LossContext.harm_evidence``; the pipeline runs the probe
    this gives (``compression.losses.harm_probe``) first. holdout_logits: the builder reads
    ``LossContext.teacher_holdout_logits``. fits_holdout_half: with these params the loss
    trains against one half of the holdout (``reference_floor.holdout_parts``) named by its
    param ``floor_half``, so ``auto`` cross-fits it (``other_half``).
    """

    build: Builder
    params: Mapping[str, Any] = field(default_factory=dict)  # accepted key -> default
    uses_teacher: bool = True
    needs_reliability: bool = False
    calibrates_teacher: bool = False
    check: ParamCheck = lambda params: []  # problems with param values, found without data
    harm_probe: Callable[[MitigationSpec, dict[str, Any]], ProbePlan] | None = None
    holdout_logits: bool = False
    fits_holdout_half: Callable[[dict[str, Any]], bool] = lambda params: False


_OBJECTIVES: dict[str, Objective] = {
    "one_hot": Objective(build_one_hot, uses_teacher=False),
    "kd": Objective(build_kd, rebalance.LABEL_PARAMS, check=rebalance.label_param_problems),
    "logit_adjusted": Objective(rebalance.build_logit_adjusted, rebalance.LA_PARAMS,
                                uses_teacher=False, check=rebalance.logit_adjusted_problems),
    "balanced_softmax": Objective(rebalance.build_balanced_softmax, uses_teacher=False),
    "class_balanced": Objective(rebalance.build_class_balanced, rebalance.CB_PARAMS,
                                uses_teacher=False, check=rebalance.class_balanced_problems),
    "group_dro_one_hot": Objective(group_dro.build_one_hot, group_dro.PARAMS, uses_teacher=False,
                                   check=group_dro.param_problems),
    "adaptive_alpha": Objective(adaptive_alpha.build, adaptive_alpha.PARAMS,
                                needs_reliability=True, check=adaptive_alpha.param_problems),
    "adaptive_margin": Objective(adaptive_margin.build, adaptive_margin.PARAMS,
                                 needs_reliability=True, check=adaptive_margin.param_problems),
    "group_dro": Objective(group_dro.build, group_dro.PARAMS, check=group_dro.param_problems),
    "ltkd": Objective(ltkd.build, ltkd.PARAMS, check=ltkd.param_problems),
    "teacher_calibration": Objective(teacher_calibration.build, calibrates_teacher=True),
    "paired_alpha": Objective(paired_alpha.build, paired_alpha.PARAMS,
                              check=paired_alpha.param_problems, harm_probe=probe_plan,
                              fits_holdout_half=lambda params: bool(params["reference_floor"])),
    "paired_dro": Objective(paired_alpha.build_dro, paired_alpha.DRO_PROBE_PARAMS,
                            check=paired_alpha.dro_param_problems, harm_probe=probe_plan),
    "balanced_teacher": Objective(balanced_teacher.build, balanced_teacher.PARAMS,
                                  check=balanced_teacher.param_problems, holdout_logits=True),
}


# ``auto`` without candidates: the configuration to start from (docs/mitigations.md, README).
# Plain kd first, then the harm-driven and the robust objective, then a teacher-free rebalanced
# student: the most accurate of them with no harm shown against one-hot wins.
RECOMMENDED_CANDIDATES: tuple[MitigationSpec, ...] = (
    MitigationSpec(name="kd", alpha=0.9),
    MitigationSpec(name="paired_alpha", alpha=0.9, params={"reference_floor": True}),
    MitigationSpec(name="paired_dro", alpha=0.9),
    MitigationSpec(name="group_dro", alpha=0.9),
    MitigationSpec(name="logit_adjusted", alpha=0.0),
)


def candidates_of(spec: MitigationSpec) -> tuple[MitigationSpec, ...]:
    """The candidates ``auto`` trains: the spec's own, or the recommended set when none."""
    return spec.candidates or RECOMMENDED_CANDIDATES


@dataclass(frozen=True)
class Requirements:
    """What the pipeline must prepare before ``build_loss`` (for ``auto``: for any candidate).

    calibrate_teacher: fit ``compression.calibration`` on holdout and train on the calibrated
    teacher (the objective asks for it, or the spec's ``calibrate_teacher`` is set).
    """

    needs_teacher: bool
    needs_reliability: bool
    calibrate_teacher: bool
    harm_probe: bool = False
    teacher_holdout_logits: bool = False


def known_losses() -> list[str]:
    """Names accepted as ``mitigation.name``, sorted; ``auto`` included (it builds no loss)."""
    return sorted([*_OBJECTIVES, AUTO])


def accepted_params(name: str) -> dict[str, Any]:
    """The ``spec.params`` keys the loss ``name`` accepts, with their defaults (auto: none)."""
    return {} if name == AUTO else dict(_objective(name).params)


def requirements(spec: MitigationSpec) -> Requirements:
    """What ``spec`` (or, for ``auto``, any of its candidates) needs before training."""
    specs = candidates_of(spec) if spec.name == AUTO else (spec,)
    objectives = [(s, _objective(s.name)) for s in specs]
    return Requirements(
        needs_teacher=any(o.uses_teacher for _, o in objectives),
        needs_reliability=any(o.needs_reliability for _, o in objectives),
        calibrate_teacher=spec.calibrate_teacher or any(
            s.calibrate_teacher or o.calibrates_teacher for s, o in objectives),
        harm_probe=any(o.harm_probe is not None for _, o in objectives),
        teacher_holdout_logits=any(o.holdout_logits for _, o in objectives))


def harm_probe_plan(spec: MitigationSpec) -> ProbePlan | None:
    """What the pipeline must train and compare before building ``spec`` (None: nothing)."""
    if spec.name == AUTO:
        return None
    objective = _objective(spec.name)
    if objective.harm_probe is None:
        return None
    return objective.harm_probe(spec, _resolve_params(spec, objective.params))


def fits_holdout_half(spec: MitigationSpec) -> bool:
    """Whether ``spec`` trains against half of the holdout, so that a fair judge of it sees
    only the other half (``reference_floor.holdout_parts``)."""
    if spec.name == AUTO:
        return False
    objective = _objective(spec.name)
    return objective.fits_holdout_half(_resolve_params(spec, objective.params))


def other_half(spec: MitigationSpec) -> MitigationSpec:
    """``spec`` fitted to the other holdout half: with it, each holdout example has an answer
    from a student that was not fitted to it (``reference_floor.out_of_fold``)."""
    if not fits_holdout_half(spec):
        raise ValueError(f"{spec.name} with these params does not train against a holdout half")
    half = _resolve_params(spec, _objective(spec.name).params)["floor_half"]
    return dataclasses.replace(spec, params={**spec.params, "floor_half": 1 - half})


def check_mitigation(spec: MitigationSpec) -> None:
    """Check names and param keys/types of ``spec`` and its candidates without building;
    raise one ``InvalidInput`` listing every problem."""
    problems: list[str] = []
    named = [(f"candidates[{i}]", c) for i, c in enumerate(candidates_of(spec))] \
        if spec.name == AUTO else [("", spec)]
    for where, s in named:
        try:
            objective = _objective(s.name)
            found = objective.check(_resolve_params(s, objective.params))
        except InvalidInput as exc:
            found = exc.problems
        problems += [f"mitigation.{where}: {p}" if where else p for p in found]
    if problems:
        raise InvalidInput(problems, "invalid mitigation")


def build_loss(spec: MitigationSpec, context: LossContext) -> Loss:
    """Build the objective named by ``spec.name``; bad names or params raise ``InvalidInput``."""
    if spec.name == AUTO:
        raise InvalidInput("mitigation.name 'auto' is not one loss: choose among its candidates "
                           "with compression.selection.choose_mitigation, then build the choice")
    objective = _objective(spec.name)
    return objective.build(spec, context, _resolve_params(spec, objective.params))


def _objective(name: str) -> Objective:
    if name not in _OBJECTIVES:
        mitigations = ", ".join(sorted(set(_OBJECTIVES) - set(BASELINES) - set(REBALANCING)))
        raise InvalidInput(f"mitigation.name: unknown loss {name!r}; known: "
                           f"{', '.join(BASELINES)} (baselines), {', '.join(REBALANCING)} "
                           f"(teacher-free rebalancing), {mitigations} (mitigations), "
                           f"or {AUTO} (train candidates briefly and keep the best)")
    return _OBJECTIVES[name]


def _resolve_params(spec: MitigationSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """spec.params over the defaults, every unknown key and wrong type listed at once."""
    accepted = ", ".join(sorted(defaults)) or f"none ({spec.name!r} takes no params)"
    problems = []
    for key, value in spec.params.items():
        if key not in defaults:
            problems.append(f"mitigation.params.{key:.80}: unknown param for loss {spec.name!r}; "
                            f"accepted: {accepted}")
        elif not _same_kind(value, defaults[key]):
            problems.append(f"mitigation.params.{key} is {value!r:.80}; expected "
                            f"{type(defaults[key]).__name__} like the default {defaults[key]!r}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"mitigation.params.{key} is {value}; it must be a finite number")
    if problems:
        raise InvalidInput(problems, f"invalid params for mitigation {spec.name!r}")
    given = {k: float(v) if isinstance(defaults[k], float) else v for k, v in spec.params.items()}
    return {**defaults, **given}


def _same_kind(value: Any, default: Any) -> bool:
    """An int is fine where a float is expected (YAML writes 1 for 1.0); a bool never is."""
    if default is None:
        return True
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
