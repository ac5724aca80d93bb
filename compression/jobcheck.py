"""Checks of a job that need the library's tables but no data: run when a spec is parsed.

A job the service queues must be a job that can run. Names (mitigations, their params,
architectures) and, where the data source fixes them, class and subgroup names are checked here,
so a typo is an invalid spec at submission rather than a failure after the data has loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from compression.data.sources import FASHION_MNIST_CLASSES
from compression.data.subgroups import CELL_SEPARATOR, FREQUENCY_GROUPS
from compression.errors import InvalidInput
from compression.losses.registry import check_mitigation
from compression.models.init_weights import init_problem
from compression.models.zoo import arch_problem
from compression.spec import JobSpec

__all__ = ["job_problems"]


def job_problems(spec: JobSpec) -> list[str]:
    """Every problem of ``spec`` that can be found without reading its data; [] if none."""
    problems = []
    try:
        check_mitigation(spec.mitigation)
    except InvalidInput as exc:
        problems += exc.problems
    for field, arch in (("student.arch", spec.student.arch), ("teacher.arch", spec.teacher.arch)):
        problem = arch and arch_problem(arch)
        if problem:
            problems.append(f"{field}: {problem}")
    init = spec.student.init and init_problem(spec.student.init)
    if init:
        problems.append(f"student.init: {init}")
    return problems + _subgroup_problems(spec)


def _known_classes(spec: JobSpec) -> tuple[str, ...] | None:
    """Class names fixed by the source itself (None: only the data can tell)."""
    return FASHION_MNIST_CLASSES if spec.data.source == "fashion-mnist" else None


def _key_values(spec: JobSpec, key: str) -> tuple[str, ...] | None:
    """The groups of one subgroup key, when the spec alone fixes them."""
    subgroups = spec.data.subgroups
    if key == "frequency":
        return FREQUENCY_GROUPS
    if key == "map":
        return tuple(sorted(set(subgroups.mapping.values())))
    if key == "class":
        return _known_classes(spec)
    return None  # attribute values come from the data


def _subgroup_problems(spec: JobSpec) -> list[str]:
    subgroups = spec.data.subgroups
    problems = []
    classes = _known_classes(spec)
    if classes is not None and "map" in subgroups.keys:
        indices = {str(i) for i in range(len(classes))}
        unknown = [k for k in subgroups.mapping if k not in classes and k not in indices]
        if unknown:
            problems.append(f"data.subgroups.mapping names unknown classes {unknown!r:.200}; the "
                            f"classes are: {', '.join(classes)} (or their indices 0.."
                            f"{len(classes) - 1})")
    floors = spec.guardrails.min_accuracy_by_group
    if len(subgroups.keys) > 1:
        return problems + _crossed_floor_problems(spec, floors)
    groups = _key_values(spec, subgroups.by)
    if groups is not None:
        unknown = [g for g in floors if g not in groups]
        if unknown:
            problems.append(f"guardrails.min_accuracy_by_group names unknown subgroups "
                            f"{unknown!r:.200}; the subgroups are: {', '.join(groups)}")
    return problems


def _crossed_floor_problems(spec: JobSpec, floors: Iterable[str]) -> list[str]:
    """Floors of a job with several keys name ``key=value`` or a full intersection
    ``k1=v1 & k2=v2`` with every key in order; values are checked where the spec fixes them."""
    keys = spec.data.subgroups.keys
    unknown = [name for name in floors if not _known_crossed(spec, keys, name)]
    if not unknown:
        return []
    known = "; ".join(f"{k}: {', '.join(v)}" for k in keys
                      if (v := _key_values(spec, k)) is not None)
    return [f"guardrails.min_accuracy_by_group names unknown subgroups {unknown!r:.200}; with "
            f"subgroup keys {', '.join(keys)} name a key's group as key=value ({keys[0]}=...) "
            f"and an intersection with every key in that order "
            f"({CELL_SEPARATOR.join(k + '=...' for k in keys)})"
            + (f"; known values: {known:.400}" if known else "")]


def _known_crossed(spec: JobSpec, keys: Sequence[str], name: str) -> bool:
    """Whether ``name`` can be a reported group of a job crossing ``keys``."""
    cell = re.fullmatch(CELL_SEPARATOR.join(f"{re.escape(k)}=(.*)" for k in keys), name,
                        re.DOTALL)
    if cell is not None:
        pairs = list(zip(keys, cell.groups()))
    else:
        key, sep, value = name.partition("=")
        if not sep or key not in keys or any(f"{CELL_SEPARATOR}{k}=" in value for k in keys):
            return False  # the last: an intersection with its keys out of order
        pairs = [(key, value)]
    return all((values := _key_values(spec, k)) is None or v in values for k, v in pairs)
