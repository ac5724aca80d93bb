"""The guardrail chart: per-subgroup accuracy of every stage, 95% intervals, the floors, and
each subgroup's verdict as the report states it (``chart_series``: the data drawn)."""

from __future__ import annotations

import os
from pathlib import Path

# Figure + the Agg canvas directly, not pyplot: no global backend switch and no GUI, so it
# is safe in worker processes and threads.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from compression.evaluation.report import GroupMetrics
from compression.guardrails import FAIL, INSUFFICIENT_EVIDENCE, PASS
from compression.report import NOT_JUDGED, JobReport, group_label

__all__ = ["plot_guardrails", "chart_series", "REFERENCE"]

REFERENCE = "reference"  # the verdict slot of a reference model's point: never judged
_MARKERS = {PASS: "o", INSUFFICIENT_EVIDENCE: "D", FAIL: "X", NOT_JUDGED: "s", REFERENCE: "o"}
_REFERENCE_COLORS = ("#7f7f7f", "#bcbd22", "#8c564b")
_STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#17becf")
# (accuracy, ci_low, ci_high, floor, verdict) for one subgroup of one series
_Point = tuple[float | None, float, float, float | None, str]


def chart_series(report: JobReport) -> list[tuple[str, list[_Point]]]:
    """The points drawn: references (evaluations no rule judged) first, then every judged
    stage, each subgroup with the verdict the report gives it (NOT JUDGED when no rule
    judges it, whatever its stage's verdict)."""
    references = [(name, [_ref_point(g) for g in r.groups])
                  for name, r in report.evaluations.items()
                  if report.guardrails.stage(name) is None]
    return references + [
        (v.stage, [(g.accuracy, g.ci[0], g.ci[1], g.floor, group_label(g)) for g in v.groups])
        for v in report.stages]


def plot_guardrails(path: Path, report: JobReport) -> Path:
    """Draw ``path`` (PNG): one column per subgroup, one point per stage with its interval.

    Reference models (teacher, one-hot student) are drawn for comparison. Judged stages show
    their binding floor as a black bar across their point and the verdict as the marker
    (circle PASS, hollow diamond INSUFFICIENT_EVIDENCE, cross FAIL, hollow square NOT
    JUDGED).
    """
    series = chart_series(report)
    n_refs = sum(report.guardrails.stage(name) is None for name in report.evaluations)
    names, counts = _group_axis(report)
    fig = Figure(figsize=(min(20.0, max(6.4, 0.7 * len(names) * max(1.0, len(series) / 3) + 2)),
                          4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    step = 0.8 / max(len(series), 1)
    colors = _colors(len(series), n_refs)
    for s, (name, points) in enumerate(series):
        xs = [i + (s - (len(series) - 1) / 2) * step for i in range(len(points))]
        _draw_series(ax, xs, points, colors[s], step)
    _decorate(ax, names, counts, series, colors)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)  # a reader never sees half an image
    return path


def _ref_point(g: GroupMetrics) -> _Point:
    return g.accuracy, g.ci_low, g.ci_high, None, REFERENCE


def _group_axis(report: JobReport) -> tuple[list[str], list[int]]:
    if report.stages:
        groups = report.stages[0].groups
        return [g.name for g in groups], [g.n for g in groups]
    first = next(iter(report.evaluations.values()), None)
    return ([], []) if first is None else (list(first.group_names), [g.n for g in first.groups])


def _colors(count: int, n_refs: int) -> list[str]:
    """Greys and browns for references, bright colours for judged stages."""
    refs = [_REFERENCE_COLORS[i % len(_REFERENCE_COLORS)] for i in range(n_refs)]
    return refs + [_STAGE_COLORS[i % len(_STAGE_COLORS)] for i in range(count - n_refs)]


def _draw_series(ax, xs: list[float], points: list[_Point], color: str, step: float) -> None:
    for x, (acc, low, high, floor, verdict) in zip(xs, points):
        if floor is not None:
            ax.hlines(floor, x - step / 2, x + step / 2, colors="black", linewidth=2, zorder=3)
        if acc is None:  # empty subgroup: nothing measured
            continue
        # an interval reaching exactly to the estimate can round a hair past it
        yerr = [[max(0.0, acc - low)], [max(0.0, high - acc)]]
        ax.errorbar([x], [acc], yerr=yerr, fmt="none", ecolor=color,
                    elinewidth=1.4, capsize=3, zorder=2)
        hollow = verdict in (INSUFFICIENT_EVIDENCE, NOT_JUDGED)
        ax.scatter([x], [acc], marker=_MARKERS[verdict], s=60 if verdict == FAIL else 34,
                   facecolors="white" if hollow else color, edgecolors=color, linewidths=1.5,
                   zorder=4)


def _decorate(ax, names: list[str], counts: list[int], series: list, colors: list[str]) -> None:
    tilt = len(names) > 6  # ten class names side by side overlap unless tilted
    ax.set_xticks(range(len(names)),
                  [f"{name}{' ' if tilt else chr(10)}(n={n})" for name, n in zip(names, counts)],
                  rotation=30 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor")
    lows = [p[1] for _, pts in series for p in pts if p[0] is not None]
    lows += [p[3] for _, pts in series for p in pts if p[3] is not None]
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.02)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("accuracy")
    ax.set_title("Per-subgroup accuracy (95% Wilson intervals), floors and guardrail verdicts",
                 fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=name)
               for (name, _), c in zip(series, colors)]
    handles += [Line2D([], [], color="black", linewidth=2, label="floor"),
                Line2D([], [], color="grey", marker="D", markerfacecolor="white", linestyle="",
                       label="insufficient evidence"),
                Line2D([], [], color="grey", marker="X", markersize=8, linestyle="",
                       label="fail"),
                Line2D([], [], color="grey", marker="s", markerfacecolor="white", linestyle="",
                       label="not judged")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
