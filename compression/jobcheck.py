"""Checks of a job that need the library's tables but no data: run when a spec is parsed.

A job the service queues must be a job that can run. Names (mitigations, their params,
architectures) and, where the data source fixes them, class and subgroup names are checked here,
so a typo is an invalid spec at submission rather than a failure after the data has loaded.
"""

from __future__ import annotations

from compression.data.sources import FASHION_MNIST_CLASSES
from compression.data.subgroups import FREQUENCY_GROUPS
from compression.errors import InvalidInput
from compression.losses.registry import check_mitigation
from compression.models.zoo import known_archs
from compression.spec import JobSpec

__all__ = ["job_problems"]


def job_problems(spec: JobSpec) -> list[str]:
    """Every problem of ``spec`` that can be found without reading its data; [] if none."""
    problems = []
    try:
        check_mitigation(spec.mitigation)
    except InvalidInput as exc:
        problems += exc.problems
    archs = known_archs()
    if spec.student.arch not in archs:
        problems.append(f"student.arch: unknown architecture {spec.student.arch!r:.80}; known: "
                        f"{', '.join(archs)}")
    if spec.teacher.arch and spec.teacher.arch not in archs:
        problems.append(f"teacher.arch: unknown architecture {spec.teacher.arch!r:.80}; known: "
                        f"{', '.join(archs)}")
    return problems + _subgroup_problems(spec)


def _known_classes(spec: JobSpec) -> tuple[str, ...] | None:
    """Class names fixed by the source itself (None: only the data can tell)."""
    return FASHION_MNIST_CLASSES if spec.data.source == "fashion-mnist" else None


def _known_groups(spec: JobSpec) -> tuple[str, ...] | None:
    subgroups = spec.data.subgroups
    if subgroups.by == "frequency":
        return FREQUENCY_GROUPS
    if subgroups.by == "map":
        return tuple(sorted(set(subgroups.mapping.values())))
    if subgroups.by == "class":
        return _known_classes(spec)
    return None  # attribute values come from the data


def _subgroup_problems(spec: JobSpec) -> list[str]:
    problems = []
    classes = _known_classes(spec)
    if classes is not None and spec.data.subgroups.by == "map":
        indices = {str(i) for i in range(len(classes))}
        unknown = [k for k in spec.data.subgroups.mapping if k not in classes and k not in indices]
        if unknown:
            problems.append(f"data.subgroups.mapping names unknown classes {unknown!r:.200}; the "
                            f"classes are: {', '.join(classes)} (or their indices 0.."
                            f"{len(classes) - 1})")
    groups = _known_groups(spec)
    floors = spec.guardrails.min_accuracy_by_group
    if groups is not None:
        unknown = [g for g in floors if g not in groups]
        if unknown:
            problems.append(f"guardrails.min_accuracy_by_group names unknown subgroups "
                            f"{unknown!r:.200}; the subgroups are: {', '.join(groups)}")
    return problems
