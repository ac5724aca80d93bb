"""The table of mitigations (training objectives), keyed by the spec's ``mitigation.name``.

Adding one: write a module with its pure loss function and a ``build(spec, context, params)
-> Loss``, import the builder here, and add one ``Objective`` entry to ``_OBJECTIVES`` with
the ``spec.params`` it accepts and their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext
from compression.losses.core import build_kd, build_one_hot
from compression.spec import MitigationSpec

__all__ = ["Objective", "build_loss", "known_losses", "accepted_params"]

Builder = Callable[[MitigationSpec, LossContext, dict[str, Any]], Loss]


@dataclass(frozen=True)
class Objective:
    """One table entry. build gets ``params`` = ``spec.params`` over these defaults."""

    build: Builder
    params: Mapping[str, Any] = field(default_factory=dict)  # accepted key -> default


_OBJECTIVES: dict[str, Objective] = {
    "one_hot": Objective(build_one_hot),
    "kd": Objective(build_kd),
}


def known_losses() -> list[str]:
    """Names accepted as ``mitigation.name``, sorted."""
    return sorted(_OBJECTIVES)


def accepted_params(name: str) -> dict[str, Any]:
    """The ``spec.params`` keys the loss ``name`` accepts, with their defaults."""
    return dict(_objective(name).params)


def build_loss(spec: MitigationSpec, context: LossContext) -> Loss:
    """Build the objective named by ``spec.name``; bad names or params raise ``InvalidInput``."""
    objective = _objective(spec.name)
    return objective.build(spec, context, _resolve_params(spec, objective.params))


def _objective(name: str) -> Objective:
    if name not in _OBJECTIVES:
        raise InvalidInput(f"mitigation.name: unknown loss {name!r}; known: "
                           f"{', '.join(known_losses())}")
    return _OBJECTIVES[name]


def _resolve_params(spec: MitigationSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """spec.params over the defaults, every unknown key and wrong type listed at once."""
    accepted = ", ".join(sorted(defaults)) or f"none ({spec.name!r} takes no params)"
    problems = []
    for key, value in spec.params.items():
        if key not in defaults:
            problems.append(f"mitigation.params.{key}: unknown param for loss {spec.name!r}; "
                            f"accepted: {accepted}")
        elif not _same_kind(value, defaults[key]):
            problems.append(f"mitigation.params.{key} is {value!r}; expected "
                            f"{type(defaults[key]).__name__} like the default {defaults[key]!r}")
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
