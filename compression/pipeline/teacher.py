"""Load the teacher, measure it on test and holdout, calibrate it when asked, profile it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from compression.calibration import calibrated, fit_calibration
from compression.data import Dataset
from compression.diagnosis import TeacherFlow, teacher_flow
from compression.evaluation import EvalReport, evaluate, predict_logits
from compression.models import load_teacher
from compression.pipeline.job import Job, report_summary
from compression.reliability import profile_teacher

__all__ = ["TeacherView", "prepare_teacher"]


@dataclass(frozen=True)
class TeacherView:
    """The teacher as the rest of the run sees it.

    model: what the student distills from (the calibrated teacher when calibration is on).
    test_report / holdout_report: of the teacher as given (the guardrails' reference).
    reliability: per-subgroup holdout profile, of ``model``; calibration: None when off.
    test_flow: ``model``'s predictions and soft-label mass on test, for the harm diagnosis.
    """

    model: Callable[[Tensor], Tensor]
    sha256: str
    test_report: EvalReport
    holdout_report: EvalReport
    reliability: dict[str, Any]
    calibration: dict[str, Any] | None
    test_flow: TeacherFlow | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "reliability": self.reliability,
                "calibration": self.calibration}


def prepare_teacher(job: Job, dataset: Dataset, calibrate: bool) -> TeacherView:
    spec = job.spec
    teacher = job.stage("load_teacher", lambda: load_teacher(
        spec.teacher, dataset.input_shape, dataset.num_classes, job.device),
        lambda t: {"format": t.format, "sha256": t.sha256})
    # The test logits are kept until profiling: the harm diagnosis needs the soft labels
    # of the teacher the student sees, and one pass over test gives both.
    test_report, test_logits = job.stage("evaluate_teacher",
                                         lambda: _evaluate_test(job, dataset, teacher),
                                         lambda r: report_summary(r[0]))
    return job.stage("profile_teacher", lambda: _profile(job, dataset, teacher, calibrate,
                                                         test_report, test_logits),
                     lambda v: {"calibrated": v.calibration is not None})


def _evaluate_test(job: Job, dataset: Dataset, teacher: Any) -> tuple[EvalReport, Tensor]:
    logits = predict_logits(teacher, dataset.test, job.spec.training.eval_batch_size, job.device)
    return evaluate(logits, dataset.test, dataset.class_names, dataset.group_names,
                    name="teacher"), logits


def _profile(job: Job, dataset: Dataset, teacher: Any, calibrate: bool,
             test_report: EvalReport, test_logits: Tensor) -> TeacherView:
    holdout = dataset.holdout
    logits = predict_logits(teacher, holdout, job.spec.training.eval_batch_size, job.device)
    holdout_report = evaluate(logits, holdout, dataset.class_names, dataset.group_names,
                              name="teacher")
    model, calibration = teacher, None
    if calibrate:
        fitted = fit_calibration(logits, holdout.y)
        model, calibration = calibrated(teacher, fitted), fitted.to_dict()
        logits, test_logits = fitted.apply(logits), fitted.apply(test_logits)
    reliability = profile_teacher(logits, holdout.y, holdout.group, dataset.group_names,
                                  class_names=dataset.class_names)
    groups = dataset.layout.groups  # the reported subgroups, each pooling its cells
    flow = teacher_flow(test_logits, dataset.test.y, dataset.test.group, len(groups),
                        members=[g.cells for g in groups])
    return TeacherView(model, teacher.sha256, test_report, holdout_report,
                       reliability.to_dict(), calibration, flow)
