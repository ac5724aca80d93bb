"""The evaluation report: one JSON type for every stage (teacher, student, ONNX, INT8, engine).

Empty groups (``n == 0``) stay in the report so every report of a job lists the same groups
in the same order, but they have no accuracy: ``accuracy`` is ``None`` and the interval is
the uninformative ``[0, 1]``. Every summary (mean, worst group, worst-k) skips them, and
their deltas are ``None``. Nothing in a report is NaN, so it is strict JSON. With several
subgroup keys the summaries run over every reported group, intersections included: the
worst group is often an intersection, and its ``keys`` say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from compression.errors import InvalidInput
from compression.evaluation.outcomes import Outcomes
from compression.evaluation.stats import stratified_accuracy

__all__ = ["GroupMetrics", "EvalReport"]


@dataclass(frozen=True)
class GroupMetrics:
    """Accuracy of one group (or class, or the whole split) with its 95% Wilson interval.

    keys: for a subgroup, the subgroup keys that define it (``["class"]`` for a key's group,
    ``["class", "attribute"]`` for an intersection); empty for classes and the whole split,
    and in reports written before keys existed. JSON carries ``keys`` only when non-empty.
    """

    name: str
    n: int
    correct: int
    accuracy: float | None  # None when n == 0
    ci_low: float
    ci_high: float
    keys: tuple[str, ...] = ()

    @property
    def is_intersection(self) -> bool:
        return len(self.keys) > 1

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "n": self.n, "correct": self.correct,
               "accuracy": self.accuracy, "ci_low": self.ci_low, "ci_high": self.ci_high}
        return {**out, "keys": list(self.keys)} if self.keys else out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupMetrics:
        acc = data["accuracy"]
        return cls(name=str(data["name"]), n=int(data["n"]), correct=int(data["correct"]),
                   accuracy=None if acc is None else float(acc),
                   ci_low=float(data["ci_low"]), ci_high=float(data["ci_high"]),
                   keys=_keys(data.get("keys", ())))


@dataclass(frozen=True)
class EvalReport:
    """Per-group and per-class accuracy of one model on one split.

    groups: the reported subgroups, in layout order (in group-id order for a single key;
        with several keys, every key's groups and then the intersections); per_class: in
        class-id order.
    mean_group_accuracy: macro mean over groups with n > 0 (None if there are none).
    worst_group: the non-empty group with the lowest accuracy, lowest id on ties.
    worst_k_mean: mean accuracy of the ``worst_k`` worst non-empty groups (of all of them
        when fewer are non-empty).
    confusion: [C, C] counts, rows = true class, columns = predicted class.
    deltas: per group, accuracy minus the reference report's (None when either is empty);
        the whole field is None when there was no reference. overall_delta likewise.
    outcomes: which test examples the model got right, for paired comparisons; in memory
        only (``to_dict`` leaves it out, so a report read back from JSON has None).
    """

    name: str
    overall: GroupMetrics
    groups: tuple[GroupMetrics, ...]
    per_class: tuple[GroupMetrics, ...]
    mean_group_accuracy: float | None
    worst_group: GroupMetrics | None
    worst_k: int
    worst_k_mean: float | None
    confusion: list[list[int]]
    reference_name: str | None = None
    deltas: tuple[float | None, ...] | None = None
    overall_delta: float | None = None
    outcomes: Outcomes | None = field(default=None, compare=False, repr=False)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group(self, name: str) -> GroupMetrics:
        """The metrics of the group called ``name``."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {', '.join(self.group_names)}")

    def accuracy_at(self, shares: Mapping[str, float]) -> tuple[float, float, float] | None:
        """Accuracy at a population's subgroup mix (``data.subgroups.shares``, by group
        name) with its 95% normal interval: (estimate, low, high); None when a subgroup with
        a share has no example here. A split that oversamples a subgroup reports its own mix
        as ``overall``."""
        total = sum(shares.values())
        named = {g.name: g for g in self.groups}
        rows = [(named.get(name), w / total) for name, w in shares.items() if w]
        if any(g is None or not g.n for g, _ in rows):
            return None
        return stratified_accuracy([g.correct for g, _ in rows], [g.n for g, _ in rows],
                                   [w for _, w in rows])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; ``from_dict`` gives back an equal report."""
        return {
            "name": self.name,
            "overall": self.overall.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "per_class": [c.to_dict() for c in self.per_class],
            "mean_group_accuracy": self.mean_group_accuracy,
            "worst_group": None if self.worst_group is None else self.worst_group.to_dict(),
            "worst_k": self.worst_k,
            "worst_k_mean": self.worst_k_mean,
            "confusion": [list(row) for row in self.confusion],
            "reference_name": self.reference_name,
            "deltas": None if self.deltas is None else list(self.deltas),
            "overall_delta": self.overall_delta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from ``to_dict`` output; a malformed one raises ``InvalidInput``."""
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"not a valid evaluation report ({type(exc).__name__}: {exc}); "
                               "use a report.json written by this service") from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> EvalReport:
        worst, deltas = data["worst_group"], data["deltas"]
        return cls(
            name=str(data["name"]),
            overall=GroupMetrics.from_dict(data["overall"]),
            groups=tuple(GroupMetrics.from_dict(g) for g in data["groups"]),
            per_class=tuple(GroupMetrics.from_dict(c) for c in data["per_class"]),
            mean_group_accuracy=_opt_float(data["mean_group_accuracy"]),
            worst_group=None if worst is None else GroupMetrics.from_dict(worst),
            worst_k=int(data["worst_k"]),
            worst_k_mean=_opt_float(data["worst_k_mean"]),
            confusion=[[int(v) for v in row] for row in data["confusion"]],
            reference_name=data["reference_name"],
            deltas=None if deltas is None else tuple(_opt_float(d) for d in deltas),
            overall_delta=_opt_float(data["overall_delta"]),
        )

    def format_table(self) -> str:
        """An aligned text table for terminals: one row per group, then the summaries.

        The caller prints the report's name above it if it wants one.
        """
        header = ["group", "n", "accuracy", "95% CI"]
        rows = [_row(g, None if self.deltas is None else self.deltas[i])
                for i, g in enumerate(self.groups)]
        overall = _row(self.overall, self.overall_delta)
        if self.deltas is not None:
            header.append(f"delta vs {self.reference_name}" if self.reference_name else "delta")
        else:
            rows, overall = [r[:4] for r in rows], overall[:4]
        widths = [max(len(r[i]) for r in [header, overall, *rows]) for i in range(len(header))]
        lines = [_align(r, widths) for r in [header, *rows]]
        lines += ["-" * (sum(widths) + 2 * (len(widths) - 1)), _align(overall, widths)]
        if self.worst_group is not None:
            lines.append(f"worst group: {self.worst_group.name} "
                         f"({_pct(self.worst_group.accuracy)})")
        lines.append(f"worst-{self.worst_k} mean: {_pct(self.worst_k_mean)}")
        lines.append(f"mean group accuracy: {_pct(self.mean_group_accuracy)}")
        return "\n".join(lines)


def _keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"keys must be a list of strings, not {value!r:.60}")
    return tuple(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _row(m: GroupMetrics, delta: float | None) -> list[str]:
    ci = "-" if m.n == 0 else f"[{100 * m.ci_low:.2f}, {100 * m.ci_high:.2f}]"
    d = "-" if delta is None else f"{100 * delta:+.2f} pp"
    return [m.name, str(m.n), _pct(m.accuracy), ci, d]


def _align(cells: list[str], widths: list[int]) -> str:
    # Names read best left-aligned, numbers right-aligned so their digits line up.
    first = cells[0].ljust(widths[0])
    rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
    return "  ".join([first, *rest]).rstrip()
