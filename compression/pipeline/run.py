"""``run(spec, on_event, should_stop) -> RunResult``: the whole job, as a table of contents.

load data -> check the policy -> profile the teacher -> (one-hot baseline) -> (choose the
mitigation) -> distill -> validate -> export ONNX, INT8, TensorRT, validating each -> bundle.
A subgroup below its floor is a result (status REJECTED with the report), not an exception.

Under torchrun every rank runs the job through training (``compression.distributed``); then
the other ranks return None and rank 0 alone validates, exports and writes the bundle.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from compression import distributed
from compression.artifacts import REPORT, choose_shipped, write_bundle
from compression.artifacts.upload import check_job, publish, upload_summary
from compression.data import Dataset, describe, load_dataset
from compression.data.preprocess import input_contract, model_input_shape, unwrap
from compression.data.loader import loading
from compression.errors import InvalidInput
from compression.evaluation import EvalReport
from compression.events import EventSink, StopCheck, emit_nothing, never_stop
from compression.guardrails import (StageVerdict, check_policy, detectable_drops, judge,
                                   preflight_notes)
from compression.losses import check_mitigation, requirements
from compression.models import count_parameters, save_exported, save_weights
from compression.models.zoo import arch_problem
from compression.pipeline.discovery import (discover_artifact_slices,
                                            discover_student_slices, slice_section,
                                            slices_summary, with_slices)
from compression.pipeline.exports import (Artifact, export_artifacts, fastest_passed,
                                          shipping_sections)
from compression.pipeline.job import Job, report_summary
from compression.pipeline.students import (Baseline, Selected, StudentRun, evaluate_on_test,
                                           harm_diagnosis, load_student_init, one_hot_baseline,
                                           ranking_shares, select_mitigation, train_one_hot,
                                           train_student)
from compression.pipeline.teacher import TeacherView, prepare_teacher
from compression.report import (REJECTED, SUCCEEDED, DataSummary, ExportRecord,
                                GuardrailsReport, JobReport, TeacherSummary, TrainingSummary)
from compression.spec import GuardrailSpec, JobSpec, spec_to_dict
from compression.training import resolve_device

__all__ = ["RunResult", "run", "holdout_gate", "harm_gate", "SUCCEEDED", "REJECTED"]


@dataclass(frozen=True)
class RunResult:
    status: str  # SUCCEEDED or REJECTED (failures raise)
    output_dir: Path
    report_path: Path
    reports: dict[str, EvalReport]  # teacher, one_hot, student, onnx, int8, tensorrt
    verdicts: tuple[StageVerdict, ...]
    shipped: str | None
    summary: str  # why each stage that did not pass failed
    report: JobReport | None = None  # what report.json holds


def run(spec: JobSpec, on_event: EventSink = emit_nothing,
        should_stop: StopCheck = never_stop) -> RunResult | None:
    """Distill, validate, export and package ``spec``'s student (None on ranks other than 0)."""
    job = Job(spec, spec.resolved_output_dir, resolve_device(spec.training.device),
              on_event, distributed.agreed_stop(should_stop))  # all ranks stop together
    job.out_dir.mkdir(parents=True, exist_ok=True)
    check_job(spec)  # a URI carrying a secret, or a target that cannot be written: now
    dataset = job.stage("load_data", lambda: load_dataset(spec.data), _data_summary)
    detectable = _preflight(job, dataset)
    student_init = load_student_init(job, dataset)  # a file that does not fit: before training
    teacher, baseline, selected = _references(job, dataset)
    selection = selected.selection if selected else None
    mitigation = selection.chosen if selection else spec.mitigation
    student = (_reused_student(job, selected) if selected and selected.student else
               _one_hot_student(job, dataset) if mitigation.name == "one_hot" else
               train_student(job, dataset, mitigation, teacher, stage="distill",
                             workdir="student"))
    if not distributed.is_primary():
        return None
    job.should_stop = should_stop  # rank 0 goes on alone
    student_report, student_predictions, student_verdict, slices = _validate_student(
        job, dataset, student, teacher, baseline)
    # Every artifact is also compared, pair by pair, with the student it was exported from.
    artifacts = (export_artifacts(job, student.model, dataset,
                                  _judge(spec, teacher, baseline, student_report))
                 if student_verdict.passed else [])
    artifact_slices = _artifact_slices(job, dataset, student, teacher, artifacts)
    # JobReport sections known here, by their field names (compression.report)
    sections = {"student_init": student_init,
                "teacher": teacher and TeacherSummary.from_dict(teacher.to_dict()),
                "selection": selection.to_dict() if selection else None,
                "mitigation": spec_to_dict(mitigation), "guardrail_preflight": tuple(detectable),
                "input_contract": input_contract(spec.data.preprocess, dataset.input_shape),
                "harm_diagnosis": harm_diagnosis(dataset, student_predictions, baseline, teacher),
                "discovered_slices": slice_section(job, dataset, slices, *artifact_slices)}
    return _finish(job, dataset, student, student_report, student_verdict, artifacts,
                   [teacher and teacher.test_report, baseline and baseline.test_report], sections)


def _references(job: Job, dataset: Dataset
                ) -> tuple[TeacherView | None, Baseline | None, Selected | None]:
    """The teacher, the one-hot baseline and auto's choice, each only when the job needs it."""
    spec = job.spec
    needs = requirements(spec.mitigation)
    teacher = (prepare_teacher(job, dataset, needs.calibrate_teacher)
               if needs.needs_teacher or spec.guardrails.max_drop_vs_teacher is not None
               else None)
    # auto needs the one-hot student too: no harm shown against it is what it selects for
    baseline = (one_hot_baseline(job, dataset)
                if spec.guardrails.max_drop_vs_one_hot is not None
                or spec.mitigation.name == "auto" else None)
    if spec.mitigation.name != "auto":
        return teacher, baseline, None
    power = holdout_harm_power(job, dataset)
    selected = select_mitigation(
        job, dataset, teacher, baseline,
        lambda one_hot: holdout_gate(spec, teacher and teacher.holdout_report, one_hot),
        lambda one_hot: harm_gate(spec, one_hot))
    return teacher, baseline, dataclasses.replace(
        selected, selection=dataclasses.replace(selected.selection, holdout_power=power))


def _reused_student(job: Job, selected: Selected) -> StudentRun:
    """The chosen candidate, trained as long as the student: it is the student."""
    index = selected.selection.index
    return job.stage("distill", lambda: selected.student,
                     lambda r: {"reused": f"candidate {index} ({selected.selection.chosen.name})",
                                "epochs_run": r.training.epochs_run})


def _one_hot_student(job: Job, dataset: Dataset) -> StudentRun:
    """A one_hot job's student is its one-hot baseline: one run, whichever needs it first."""
    return job.stage("distill", lambda: train_one_hot(job, dataset),
                     lambda r: {"one_hot_baseline": True, "epochs_run": r.training.epochs_run})


def _validate_student(job: Job, dataset: Dataset, student: StudentRun,
                      teacher: TeacherView | None, baseline: Baseline | None):
    """The student on test, its verdict, and slices nobody named where it is worse than its
    reference (found on holdout, judged on test; under the discovered_slices rule a FAIL
    there blocks like any other). The predictions stay for the harm diagnosis."""
    report, predictions = job.stage("evaluate_student", lambda: (
        evaluate_on_test(job, student.model, dataset, "student",
                         reference=teacher and teacher.test_report)),
        lambda r: report_summary(r[0]))
    verdict = _judge(job.spec, teacher, baseline)(report, "student")
    slices = job.stage("discover_slices", lambda: discover_student_slices(
        job, dataset, student.model, report, teacher, baseline), slices_summary)
    return report, predictions, with_slices(verdict, slices), slices


def _artifact_slices(job: Job, dataset: Dataset, student: StudentRun,
                     teacher: TeacherView | None, artifacts: list[Artifact]) -> list:
    """Every artifact but the FP32 ONNX model compared with it, on slices nobody named."""
    if len(artifacts) <= 1:
        return []
    return job.stage("discover_artifact_slices", lambda: discover_artifact_slices(
        job, dataset, student.model, teacher, artifacts), lambda found: {
            "compared": [c.stage for c in found],
            "harmed": {c.stage: [s.name for s in c.harmed] for c in found}})


def _preflight(job: Job, dataset: Dataset) -> list[str]:
    """Every problem that would stop the job later, listed before any training starts;
    returns what each paired guardrail can detect on this test split, for the log and report."""
    spec = job.spec
    layout = dataset.layout  # the groups judged: every key's groups and their intersections
    counts = dataset.group_counts(dataset.test)
    problems = check_policy(spec.guardrails, layout.names, counts,
                            intersections=layout.intersections)
    try:
        check_mitigation(spec.mitigation)
    except InvalidInput as exc:
        problems += exc.problems
    unknown = arch_problem(spec.student.arch)
    if unknown:
        problems.append(f"student.arch: {unknown}")
    try:
        model_input_shape(spec.data.preprocess, dataset.input_shape)
    except InvalidInput as exc:  # a crop larger than the images, mean/std per channel
        problems += exc.problems
    try:
        ranking_shares(spec.data.subgroups.shares, dataset)
    except InvalidInput as exc:  # shares naming subgroups the data has not
        problems += exc.problems
    if problems:
        raise InvalidInput(problems, "the job cannot run")
    notes = preflight_notes(spec.guardrails, layout.names, counts, artifacts=spec.export.onnx)
    for note in notes:  # the full list goes to the report; the log gets the warnings
        if "can never FAIL" in note or "agree on every example" in note:
            job.log("check_policy", note)
    return notes


def _judge(spec: JobSpec, teacher: TeacherView | None, baseline: Baseline | None,
           student: EvalReport | None = None):
    """Judge a stage on test; ``student`` given: the stage is an artifact of that student."""
    def judge_stage(report: EvalReport, stage: str) -> StageVerdict:
        return judge(report, spec.guardrails, stage,
                     teacher=teacher and teacher.test_report,
                     one_hot=baseline and baseline.test_report, student=student)
    return judge_stage


def holdout_gate(spec: JobSpec, teacher_holdout: EvalReport | None,
                 one_hot: EvalReport | None) -> Callable[[EvalReport], StageVerdict]:
    """A candidate's verdict on holdout, paired with the teacher's and the one-hot student's
    holdout answers. Holdout subgroups are small, so insufficient evidence does not count
    against a candidate here; the test split decides."""
    policy = dataclasses.replace(spec.guardrails, block_on_insufficient_evidence=False)

    def gate(report: EvalReport) -> StageVerdict:
        return judge(report, policy, "selection", teacher=teacher_holdout, one_hot=one_hot)
    return gate


def harm_policy(spec: JobSpec) -> GuardrailSpec:
    """auto's notion of harm: the paired test against the one-hot student with margin 0, at
    the job's confidence and multiplicity method."""
    return GuardrailSpec(max_drop_vs_one_hot=0.0, max_drop_vs_student=None,
                         confidence=spec.guardrails.confidence,
                         multiplicity=spec.guardrails.multiplicity,
                         min_samples=spec.guardrails.min_samples,
                         block_on_insufficient_evidence=False)


def holdout_harm_power(job: Job, dataset: Dataset) -> tuple[dict[str, Any], ...]:
    """The smallest drop auto's harm test can show on each holdout subgroup; a subgroup where
    it can show none is logged, since harm there cannot steer the choice."""
    drops = detectable_drops(harm_policy(job.spec), "max_drop_vs_one_hot", dataset.layout.names,
                             dataset.group_counts(dataset.holdout))
    for d in drops:
        if d["min_detectable_drop"] is None:
            job.log("select_mitigation", f"holdout subgroup {d['subgroup']!r} (n={d['n']}): "
                    "the harm test can show no drop there at all; auto cannot see harm to it")
    return tuple(drops)


def harm_gate(spec: JobSpec, one_hot: EvalReport) -> Callable[[EvalReport], StageVerdict]:
    """Is harm against the one-hot student shown on holdout? A FAIL under ``harm_policy`` is
    established harm."""
    policy = harm_policy(spec)

    def harm(report: EvalReport) -> StageVerdict:
        return judge(report, policy, "selection_harm", one_hot=one_hot)
    return harm


def _finish(job: Job, dataset: Dataset, student: StudentRun, student_report: EvalReport,
            student_verdict: StageVerdict, artifacts: list[Artifact],
            references: list[EvalReport | None], sections: dict[str, Any]) -> RunResult:
    files = job.stage("save_student", lambda: _save_student(student.model, dataset, job.out_dir))
    grid = sections.get("discovered_slices") and sections["discovered_slices"].grid
    if grid:
        files["slice_grid"] = job.out_dir / grid
    built = [a for a in artifacts if a.verdict is not None]
    verdicts = [student_verdict, *(a.verdict for a in built)]
    files.update({a.stage: a.path for a in built})
    # the fastest artifact that passed, timed on this worker; the student when none was built
    shipped = fastest_passed(built) if built else choose_shipped(verdicts, ["student"])
    reports = {r.name: r for r in [*references, student_report, *(a.report for a in built)] if r}
    report = JobReport(
        spec=job.spec, evaluations=reports,
        data=DataSummary.from_dict({**describe(dataset), "loading": loading(dataset)}),
        guardrails=GuardrailsReport(job.spec.guardrails, tuple(verdicts)), shipped=shipped,
        environment=_environment(job.device),
        student_parameters=count_parameters(student.model), training=_training(student),
        exports={a.stage: ExportRecord.from_dict(a.to_dict()) for a in artifacts},
        stage_seconds=dict(job.stage_seconds), **shipping_sections(job, artifacts), **sections)
    written = write_bundle(job.out_dir, report, files, reason=_ship_reason(artifacts, shipped))
    if job.spec.output_uri:  # every file, then report.json (naming each by URI) last
        written = job.stage("upload", lambda: publish(job.out_dir, job.spec.output_uri, written),
                            upload_summary)
    return RunResult(written.status, job.out_dir, job.out_dir / REPORT, reports,
                     tuple(verdicts), shipped, written.guardrails.summary, written)


def _ship_reason(artifacts: list[Artifact], shipped: str | None) -> str | None:
    notes = [a.reason for a in artifacts if a.reason]
    return "; ".join(notes) if notes and shipped else None


def _training(student: StudentRun) -> TrainingSummary:
    t = student.training
    return TrainingSummary(
        epochs_run=t.epochs_run, resumed_from_epoch=t.resumed_from_epoch,
        final_loss=t.final_loss, samples_per_s=t.samples_per_s, seconds=t.seconds,
        teacher_cache=t.used_teacher_cache, loss_state=_jsonable(student.loss.state_dict()))


def _save_student(student: torch.nn.Module, dataset: Dataset, out_dir: Path) -> dict[str, Path]:
    files = {"student": out_dir / "student.pt2",
             "student_weights": out_dir / "student.safetensors"}
    save_exported(student, dataset.input_shape, files["student"])
    save_weights(unwrap(student)[0], files["student_weights"])  # loads into the bare arch
    return files


def _data_summary(dataset: Dataset) -> dict[str, Any]:
    return {"train": len(dataset.train), "holdout": len(dataset.holdout),
            "test": len(dataset.test), "groups": len(dataset.group_names),
            "loading": loading(dataset)}


def _jsonable(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "device": str(device), "ranks": distributed.world_size()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
