"""The model card: what was built, how every subgroup fared and why, what ships, its limits.

Everything on the card comes from the typed job report, so the card, report.json, the chart,
the CLI and the metrics show the same verdicts. A stage or subgroup that no rule judged is
NOT JUDGED, never PASS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from compression.evaluation.report import EvalReport
from compression.guardrails import INSUFFICIENT_EVIDENCE, Check, StageVerdict, describe_policy
from compression.guardrails.rules import pct, pp
from compression.guardrails.slices import SliceComparison, SliceDiscovery
from compression.losses.reference_floor import FLOOR_PARAMS
from compression.models.init_weights import StudentInit
from compression.report import NOT_JUDGED, JobReport, blocks, group_label, stage_label

__all__ = ["render_model_card"]


def render_model_card(report: JobReport, *, shipped_file: str | None, triton_dir: str | None,
                      reason: str | None = None) -> str:
    """Markdown text of the card for ``report``."""
    sections = [
        f"# Model card: {report.spec.name}",
        _status(report, shipped_file, triton_dir, reason),
        "## Model\n\n" + "\n".join(_model_lines(report)),
        "## Overall accuracy\n\n" + _overall_table(report),
        "## Guardrail policy\n\n" + "\n".join(
            f"- {line}" for line in describe_policy(report.guardrails.policy)),
        "## How the verdicts are reached\n\n" + _METHOD,
        "## Per-subgroup results\n\n" + _stage_sections(report),
        "## Intended use and limits\n\n" + "\n".join(f"- {line}" for line in _limits(report)),
    ]
    if report.discovered_slices is not None:
        sections.insert(-1, "## Discovered slices\n\n" + _discovered(report.discovered_slices))
    if report.artifact_choice is not None or report.mixed_precision is not None:
        sections.insert(4, "## Artifacts: size and latency\n\n" + _artifacts(report))
    return "\n\n".join(sections) + "\n"


_METHOD = (
    "Each rule on each subgroup is a test with three outcomes. **PASS**: the floor is shown "
    "to hold (the one-sided bound at the stage's confidence is on the safe side of it). "
    "**FAIL**: harm is shown (the harm p-value is at or under the check's threshold). "
    "**INSUFFICIENT_EVIDENCE**: the test set cannot tell; the policy says whether that "
    "blocks shipping. **NOT JUDGED**: no rule applies.\n\n"
    "- Absolute floors (`min_accuracy`, `min_worst_group_accuracy`): Wilson score test of "
    "the subgroup's accuracy against the floor.\n"
    "- Drop rules (`max_drop_vs_teacher`, `max_drop_vs_one_hot`, `max_drop_vs_student`): a "
    "paired score test (Tango, with skewness correction) on the examples both models "
    "answered. b counts the examples the reference got right and this model wrong, c the "
    "reverse; the drop is (b - c) / n. Two models that agree on every example differ by "
    "exactly zero.\n"
    "- `max_group_gap`: Newcombe's hybrid score interval against the best subgroup.\n\n"
    "All checks of a stage form one family: each p-value is compared with a threshold the "
    "multiplicity method sets (Holm by default), so the chance of any false FAIL in a stage "
    "is at most 1 - confidence. PASS needs no correction (a stage ships only if every check "
    "passes). MDE is the smallest harm the check's n examples could show at its threshold: "
    "a smaller harm may be present and go unseen. The floor shown per subgroup is the "
    "highest any rule sets for it.")


def _status(report: JobReport, shipped_file: str | None, triton_dir: str | None,
            reason: str | None) -> str:
    if report.deployable:
        return _shipped_status(report, shipped_file, triton_dir, reason)
    stages = report.stages
    why = ("no artifact passed every guardrail" if stages
           else "no artifact was judged against the guardrails")
    text = (f"**Status: REJECTED.** Nothing ships: {why}, so no Triton model repository was "
            "written.")
    blocking = [v for v in stages if not v.passed]
    if blocking:
        text += "\n\n" + "\n".join(
            f"- {v.stage}: {stage_label(v)} on " + ", ".join(v.failing_subgroups)
            for v in blocking)
        text += "\n\n### Blocking checks\n\n" + "\n".join(
            f"- {v.stage}: {c.verdict}: {c.message}" for v in blocking for c in v.failing_checks)
    return text


def _shipped_status(report: JobReport, shipped_file: str | None, triton_dir: str | None,
                    reason: str | None) -> str:
    v = report.guardrails.stage(report.shipped)
    if not v.checks:
        why = (f"{NOT_JUDGED}: no guardrail rule applies to this stage, so nothing about its "
               "subgroups was checked")
    else:
        why = reason or (f"it passed all {len(v.checks)} guardrail checks on the test split "
                         f"({pct(v.confidence)} one-sided, {v.multiplicity} over "
                         f"{v.family_size} checks)")
    note = ""
    if v.verdict == INSUFFICIENT_EVIDENCE and v.checks:
        note = (" Some checks had insufficient evidence, which this policy does not block "
                f"on: {', '.join(map(repr, _insufficient(v)))}.")
    serve = (f"It is packaged for Triton Inference Server in `{triton_dir}/`." if triton_dir
             else "No Triton model repository was written: Triton serves ONNX models and "
                  "TensorRT engines, so export one (export.onnx: true) to get it.")
    return (f"**Status: SHIPPED.** `{report.shipped}` (`{shipped_file}`) ships: {why}.{note} "
            f"{serve}")


def _insufficient(v: StageVerdict) -> list[str]:
    return [g.name for g in v.groups if g.verdict == INSUFFICIENT_EVIDENCE]


def _selection_lines(selection: dict | None) -> list[str]:
    """Why ``auto`` chose the objective, and what choosing cost."""
    if not selection:
        return []
    cost = selection.get("cost") or {}
    why = selection.get("reason") or selection.get("rule")
    return [f"- Chosen by `auto` on holdout: {why} (cost: "
            f"{cost.get('candidates_trained', '?')} candidates"
            f"{_cross_fit_words(cost.get('cross_fit_runs', 0))} and "
            f"{cost.get('probe_runs', 0)} probe runs"
            f"{' and a one-hot reference' if cost.get('one_hot_reference_runs') else ''} trained, "
            f"{cost.get('epochs_total', '?')} epochs, {cost.get('seconds', '?')} s)"
            ] + _blind_spots(selection.get("holdout_power") or [])


def _cross_fit_words(runs: int) -> str:
    return f" (and {runs} fitted to the other holdout half)" if runs else ""


def _blind_spots(power: list[dict]) -> list[str]:
    """The holdout subgroups where auto's harm test can show no drop at all."""
    blind = [f"{p['subgroup']} (n={p['n']})" for p in power if p["min_detectable_drop"] is None]
    if not blind:
        return []
    return [f"- The holdout cannot show harm on {len(blind)} subgroup(s): {', '.join(blind)}; "
            "auto's choice protects them only by chance. Give the holdout more of their "
            "examples (data.holdout_path)"]


def _model_lines(report: JobReport) -> list[str]:
    spec, data = report.spec, report.data
    params = report.student_parameters
    lines = [f"- Student: `{spec.student.arch}` (width {spec.student.width}"
             + (f", {params:,} parameters)" if params is not None else ")")]
    if report.student_init is not None:
        lines.append(_init_line(report.student_init))
    if spec.teacher.path:
        lines.append(f"- Teacher: `{spec.teacher.path}`")
    mitigation = report.mitigation or {}
    name = mitigation.get("name", spec.mitigation.name)
    lines.append(f"- Objective: `{name}` (alpha {mitigation.get('alpha', spec.mitigation.alpha)}"
                 f", temperature {mitigation.get('temperature', spec.mitigation.temperature)})")
    lines += _selection_lines(report.selection) + _floor_lines(report)
    lines.append(_input_line(report))
    if data.class_names:
        lines.append(f"- Output: logits [batch, {len(data.class_names)}] over "
                     f"{', '.join(data.class_names)}")
    test = data.splits.get("test")
    lines.append(f"- Data: {spec.data.source}; test split of "
                 f"{test.size if test else '?'} samples in {len(data.group_names)} subgroups")
    return lines


def _floor_lines(report: JobReport) -> list[str]:
    """Whether a reference floor held every subgroup at the one-hot student's accuracy on the
    holdout half it trained against, from the student's loss state."""
    state = report.training.loss_state if report.training else {}
    floors, accuracy = state.get("floors"), state.get("holdout_accuracy")
    if not floors or not accuracy:
        return []
    params = (report.mitigation or {}).get("params") or {}
    cap = params.get("floor_max_weight", FLOOR_PARAMS["floor_max_weight"])
    rows = zip(report.data.group_names, floors["by_group"], floors["n"], accuracy,
               state["floor_multipliers"])
    short = [f"{name} {pct(acc)} against {pct(ref)} (n {n:.0f}, weight {1 + lam:.2f}"
             f"{', its cap' if 1 + lam >= cap - 1e-9 else ''})"
             for name, ref, n, acc, lam in rows if n > 0 and acc < ref]
    if not short:
        return ["- Reference floor: every subgroup ended at or above the one-hot student's "
                "accuracy on the holdout half it trained against"]
    return ["- Reference floor: below the one-hot student on the holdout half it trained "
            f"against: {'; '.join(short)}. A weight at its cap means the floor had no more "
            "to give that subgroup; the guardrails on test say whether the harm is there"]


def _init_line(init: StudentInit) -> str:
    """Where the student's starting weights came from, and what was not taken from them."""
    line = (f"- Started from `{init.source}` (SHA-256 `{init.sha256[:16]}`, "
            f"{init.loaded} tensors loaded")
    if init.replaced:
        line += (f"; {len(init.replaced)} initialised afresh: "
                 + ", ".join(f"`{name}`" for name in init.replaced)
                 + (f" ({init.reason})" if init.reason else ""))
    return line + ")"


def _input_line(report: JobReport) -> str:
    """What a client sends the served artifact (``input_contract``, data.preprocess)."""
    contract = report.input_contract
    shape = ", ".join(map(str, report.data.input_shape))
    if not contract or contract.get("dtype") != "uint8":
        return (f"- Input: float32 [batch, {shape}] (NCHW), pixel values scaled to [0, 1] "
                "(uint8 / 255); any normalisation is inside the model")
    order = contract.get("channel_order")
    steps = "; ".join(contract.get("preprocess", {}).get("steps", [])[2:])
    pp = contract.get("preprocess", {})
    norm = (f" with mean {pp['mean']} and std {pp['std']}" if pp.get("mean") else "")
    return (f"- Input: uint8 [batch, {shape}] (NCHW, {order} channels, values 0-255), the "
            f"images as stored; the model casts them to float, divides by 255 and runs the "
            f"declared preprocessing inside its graph ({steps}){norm}")


def _overall_table(report: JobReport) -> str:
    """Accuracy on the test split's own mix, and at the population's subgroup shares when
    the job gives them (a test split that oversamples a subgroup misstates the first)."""
    judged = {v.stage: v for v in report.stages}
    shares = report.spec.data.subgroups.shares
    extra = " at subgroup shares (95% CI) |" if shares else ""
    rows = [f"| stage | accuracy | 95% CI |{extra} guardrails |",
            "|---|---:|---:|" + ("---:|" if shares else "") + "---|"]
    names = [*(s for s in report.evaluations if s not in judged), *judged]
    for name in names:
        r = report.evaluations.get(name)
        acc = "-" if r is None else pct(r.overall.accuracy)
        ci = "-" if r is None else f"{pct(r.overall.ci_low)} - {pct(r.overall.ci_high)}"
        mix = f" {_at_shares(r, shares)} |" if shares else ""
        v = judged.get(name)
        status = ("reference" if v is None
                  else f"{stage_label(v)} ({'passed' if v.passed else 'blocked'})")
        rows.append(f"| {_cell(name)} | {acc} | {ci} |{mix} {status} |")
    lines = "\n".join(rows)
    if shares:
        lines += "\n\nSubgroup shares of the population served: " + ", ".join(
            f"{_cell(name)} {pct(w)}" for name, w in shares.items()) + "."
    return lines


def _at_shares(r: EvalReport | None, shares: dict[str, float]) -> str:
    found = r and r.accuracy_at(shares)
    if not found:  # a subgroup with a share has no test example
        return "-"
    estimate, low, high = found
    return f"{pct(estimate)} ({pct(low)} - {pct(high)})"


def _artifacts(report: JobReport) -> str:
    """Every artifact's size and measured latency, then the mixed-precision search."""
    parts = []
    choice = report.artifact_choice
    if choice is not None:
        rows = ["| artifact | size KiB | median ms | slowest ms | guardrails |",
                "|---|---:|---:|---:|---|"]
        rows += [f"| {_cell(name)}{' (shipped)' if name == report.shipped else ''} | "
                 f"{t.bytes / 1024:.1f} | {_ms(t.median_ms)} | {_ms(t.max_ms)} | "
                 f"{'-' if t.passed is None else 'passed' if t.passed else 'blocked'} |"
                 for name, t in choice.artifacts.items()]
        parts.append(f"Timed on {choice.device} at batch {choice.batch}: {choice.warmup} "
                     f"warm-up calls, then the median of {choice.repeats}. The fastest "
                     "artifact that passed its guardrails ships.\n\n" + "\n".join(rows))
    mixed = report.mixed_precision
    if mixed is not None:
        kept = ", ".join(f"`{n}`" for n in mixed.float_nodes) or "none"
        rows = ["| float nodes | median ms | verdict | failing subgroups |", "|---|---:|---|---|"]
        rows += [f"| {len(c['float_nodes'])}: {_cell(', '.join(c['float_nodes']))} | "
                 f"{_ms(c['latency_ms'])} | {'passed' if c['passed'] else 'blocked'} | "
                 f"{_cell(', '.join(c['failing_subgroups']) or '-')} |" for c in mixed.candidates]
        parts.append(f"### Mixed precision\n\nINT8 did not pass on "
                     f"{', '.join(mixed.failing_subgroups)}. The search for the fewest nodes "
                     f"to keep in float {mixed.status.replace('_', ' ')}: {mixed.reason}. "
                     f"Kept in float: {kept}. Candidates, judged in order:\n\n"
                     + "\n".join(rows))
    return "\n\n".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _stage_sections(report: JobReport) -> str:
    parts = [_judged_stage(v) for v in report.stages]
    parts += [_reference(name, r) for name, r in report.evaluations.items()
              if report.guardrails.stage(name) is None]
    return "\n\n".join(parts) if parts else "No stage was evaluated."


def _judged_stage(v: StageVerdict) -> str:
    head = (f"### {v.stage}: {'passed' if v.passed else 'did not pass'} ({stage_label(v)})")
    if not v.checks:
        head += ("\n\nNo guardrail rule applies to this stage: every subgroup is "
                 f"{NOT_JUDGED}.")
    else:
        blocking = "blocks" if v.block_on_insufficient_evidence else "does not block"
        head += (f"\n\n{len(v.checks)} checks at {pct(v.confidence)} one-sided confidence; "
                 f"FAIL thresholds by {v.multiplicity} over a family of {v.family_size}; "
                 f"insufficient evidence {blocking}.")
    rows = ["| subgroup | n | accuracy | 95% CI | floor | verdict |",
            "|---|---:|---:|---:|---:|---|"]
    rows += [f"| {_cell(g.name)} | {g.n} | {pct(g.accuracy)} | {_ci(g.n, g.ci)} | "
             f"{pct(g.floor)} | {group_label(g)} |" for g in v.groups]
    text = head + "\n\n" + "\n".join(rows)
    if v.checks:
        text += "\n\n" + _checks_table(v)
    return text


def _checks_table(v: StageVerdict) -> str:
    rows = ["| rule | subgroup | verdict | test | estimate | margin | interval | p-value | "
            "threshold | b / c | MDE |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in v.checks:
        unit = pct if c.method == "wilson_score" else pp
        interval = "-" if c.interval is None else f"[{unit(c.interval[0])}, {unit(c.interval[1])}]"
        pairs = "-" if c.b is None else f"{c.b} / {c.c}"
        verdict = f"**{c.verdict}**" if blocks(v, c) else c.verdict
        rows.append(f"| {c.rule} | {_cell(c.subgroup or '-')} | {verdict} | {c.method or '-'} | "
                    f"{unit(c.estimate)} | {unit(c.margin)} | {interval} | {_num(c.p_value)} | "
                    f"{_num(c.threshold)} | {pairs} | {_mde(c)} |")
    return "\n".join(rows)


def _mde(c: Check) -> str:
    if c.mde is None:
        return "none" if c.method else "-"  # a tested check that could show no harm
    return pp(c.mde)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _reference(name: str, r: EvalReport) -> str:
    rows = ["| subgroup | n | accuracy | 95% CI |", "|---|---:|---:|---:|"]
    rows += [f"| {_cell(g.name)} | {g.n} | {pct(g.accuracy)} | "
             f"{_ci(g.n, (g.ci_low, g.ci_high))} |" for g in r.groups]
    return f"### {name} (reference, not judged)\n\n" + "\n".join(rows)


def _limits(report: JobReport) -> list[str]:
    by = report.spec.data.subgroups.by
    return [
        "Intended use: classifying images like the training data (same sensor, framing, size "
        "and classes). Inputs outside those classes still get one of them.",
        f"The guardrails cover the subgroups defined by `{by}` on this test split only; "
        "other groupings, shifted data and individual predictions are not covered.",
        "Accuracies are estimates from a finite test split; small subgroups have wide "
        "intervals, shown above, and each check's MDE says how large a harm it could miss.",
        "Not evaluated: calibration of the scores, robustness to corrupted or adversarial "
        "inputs, latency on the target server.",
    ]


def _discovered(discovery: SliceDiscovery) -> str:
    parts = []
    for c in discovery.comparisons:
        use = ("a FAIL blocks shipping (rule discovered_slices)" if c.blocking
               else "reported only: set the discovered_slices rule to block on them")
        head = (f"`{c.stage}` against `{c.reference}`: {c.clusters} k-means clusters of the "
                f"{c.representation}'s penultimate features ({c.components} principal axes) on "
                f"the {c.holdout_n} holdout examples; the {c.family_size} most harmed with at "
                f"least {c.min_size} of the {c.test_n} test examples judged on test as one "
                f"family, margin {pp(c.max_drop)}; {use}. Harmed: "
                + (", ".join(s.name for s in c.harmed) or "none") + ".")
        rows = ["| slice | n | classes | accuracy | reference | drop [interval] | p-value / "
                "threshold | verdict |", "|---|---:|---|---:|---:|---:|---:|---|"]
        for sl in c.slices:
            k = sl.check
            classes = ", ".join(f"{name} {count}" for name, count in
                                sorted(sl.classes.items(), key=lambda kv: -kv[1])[:4])
            rows.append(
                f"| {sl.name} | {sl.n} | {_cell(classes)} | {pct(sl.candidate.accuracy)} "
                f"({_ci(sl.n, sl.candidate.ci)}) | {pct(sl.reference.accuracy)} "
                f"({_ci(sl.n, sl.reference.ci)}) | {pp(k.estimate)} [{pp(k.interval[0])}, "
                f"{pp(k.interval[1])}] | {_num(k.p_value)} / {_num(k.threshold)} | "
                f"{'**FAIL**' if sl.harmed else k.verdict} |")
        parts.append(head + ("\n\n" + "\n".join(rows) if c.slices else ""))
    if discovery.grid:
        parts.append(f"![Example test images of each harmed slice]({discovery.grid})")
    parts.append("Members of every slice are listed by test-split index in report.json "
                 "(`discovered_slices`).")
    return "\n\n".join(parts)


def draw_slice_grid(path: Path, comparisons: Sequence[SliceComparison], images: Tensor,
                    per_slice: int = 8) -> Path:
    """A PNG grid: one row per harmed slice, ``per_slice`` of its test images spread
    evenly over its members, each titled with its test index. images: [N, C, H, W] uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [(c, sl) for c in comparisons for sl in c.harmed]
    fig = Figure(figsize=(1.3 * per_slice, 1.6 * max(1, len(rows))))
    for r, (c, sl) in enumerate(rows):
        picks = [sl.members[round(i * (sl.n - 1) / max(1, per_slice - 1))]
                 for i in range(min(per_slice, sl.n))]
        for j, index in enumerate(picks):
            ax = fig.add_subplot(len(rows), per_slice, r * per_slice + j + 1)
            img = images[index].permute(1, 2, 0).numpy()  # [H, W, C]
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"#{index}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{c.stage} vs {c.reference}\n{sl.name}\n"
                              f"{pp(sl.check.estimate)}", fontsize=7)
    fig.suptitle("Harmed slices: example test images", fontsize=9)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _ci(n: int, ci: tuple[float, float]) -> str:
    return "-" if n == 0 else f"{pct(ci[0])} - {pct(ci[1])}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
