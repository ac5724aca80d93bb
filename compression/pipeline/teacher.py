"""Load the teacher, check it against the data, measure it on test and holdout, calibrate it
when asked, profile it.

The teacher sees the data as ``data.preprocess`` makes it, as the student does: it is loaded
for the preprocessed shape and, before anything trains, run on one real batch (preflight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from compression.calibration import calibrated, fit_calibration
from compression.data import Dataset
from compression.data.preprocess import (PreprocessSpec, model_input_shape, preprocess_batch,
                                         with_preprocess)
from compression.diagnosis import TeacherFlow, teacher_flow
from compression.errors import InvalidInput
from compression.evaluation import EvalReport, evaluate, predict_logits
from compression.models import load_teacher
from compression.models.onnx_runner import OnnxRunner
from compression.models.teacher import Teacher
from compression.pipeline.job import Job, report_summary
from compression.reliability import profile_teacher

__all__ = ["TeacherView", "prepare_teacher", "preflight_teacher", "declared_input"]

_PREFLIGHT_IMAGES = 16


@dataclass(frozen=True)
class TeacherView:
    """The teacher as the rest of the run sees it.

    model: what the student distills from (the calibrated teacher when calibration is on).
    test_report / holdout_report: of the teacher as given (the guardrails' reference).
    reliability: per-subgroup holdout profile, of ``model``; calibration: None when off.
    test_flow: ``model``'s predictions and soft-label mass on test, for the harm diagnosis.
    holdout_logits: [N, C] of ``model`` on holdout, for objectives that refit the teacher.
    """

    model: Callable[[Tensor], Tensor]
    sha256: str
    test_report: EvalReport
    holdout_report: EvalReport
    reliability: dict[str, Any]
    calibration: dict[str, Any] | None
    test_flow: TeacherFlow | None = None
    holdout_logits: Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "reliability": self.reliability,
                "calibration": self.calibration}


def prepare_teacher(job: Job, dataset: Dataset, calibrate: bool) -> TeacherView:
    teacher = job.stage("load_teacher", lambda: _load(job, dataset),
                        lambda t: {"format": t.format, "sha256": t.sha256})
    # The test logits are kept until profiling: the harm diagnosis needs the soft labels
    # of the teacher the student sees, and one pass over test gives both.
    test_report, test_logits = job.stage("evaluate_teacher",
                                         lambda: _evaluate_test(job, dataset, teacher),
                                         lambda r: report_summary(r[0]))
    return job.stage("profile_teacher", lambda: _profile(job, dataset, teacher, calibrate,
                                                         test_report, test_logits),
                     lambda v: {"calibrated": v.calibration is not None})


def _load(job: Job, dataset: Dataset) -> Teacher:
    """The teacher, loaded for the data as preprocessed and run on one batch of it."""
    transform = job.spec.data.preprocess
    shape = model_input_shape(transform, dataset.input_shape)  # (C, h, w)
    try:
        teacher = load_teacher(job.spec.teacher, shape, dataset.num_classes, job.device)
    except InvalidInput as exc:
        if transform.is_identity:
            raise
        raise InvalidInput([*exc.problems, f"the data, as data.preprocess makes it, is float32 "
                            f"{_shape(['B', *shape])}; images as stored are "
                            f"{_shape(['B', *dataset.input_shape])}"], exc.context) from None
    preflight_teacher(teacher, dataset.train.x[:_PREFLIGHT_IMAGES], transform,
                      dataset.num_classes)
    return teacher


def declared_input(teacher: Any) -> tuple[str, list[Any]] | None:
    """(dtype, [B, C, H, W] with None or a name for free sizes) the teacher's file declares
    for its input: ONNX models and torch.export programs do; weights and TorchScript don't."""
    runner = getattr(teacher, "_run", None)
    if isinstance(runner, OnnxRunner):
        first = runner.session.get_inputs()[0]
        dtype = first.type.removeprefix("tensor(").rstrip(")")
        return ("float32" if dtype == "float" else dtype), _dims(first.shape or [])
    module = getattr(teacher, "module", None)
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            val = node.meta.get("val") if node.op == "placeholder" else None
            if isinstance(val, Tensor):
                return str(val.dtype).removeprefix("torch."), _dims(val.shape)
    return None


def _shape(dims: Any) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _dims(shape: Any) -> list[Any]:
    """Fixed sizes as ints; a free batch size as B, any other free size as ?."""
    return [d if isinstance(d, int) else ("B" if i == 0 else "?") for i, d in enumerate(shape)]


def preflight_teacher(teacher: Any, pixels: Tensor, transform: PreprocessSpec,
                      num_classes: int) -> None:
    """Run ``teacher`` on pixels: [b, C, H, W] uint8 as preprocessed; ``InvalidInput``
    naming the teacher's declared input and the data's when they do not fit, or when it
    fails on the batch or does not return finite logits [b, num_classes]."""
    batch = preprocess_batch(pixels, transform)  # [b, C, h, w] float32
    data = f"float32 {_shape(['B', *batch.shape[1:]])}"
    declared = declared_input(teacher)
    takes = f"{declared[0]} {_shape(declared[1])}" if declared else "an undeclared input"
    where = f"teacher {getattr(teacher, 'path', '')}".strip()
    fix = ("set data.preprocess (resize, crop, mean/std) and data.channels so that the "
           "data fits the teacher, or give a teacher trained on data like this")
    if declared and not _fits(declared, batch):
        raise InvalidInput(f"the {where} takes {takes} but the data, as preprocessed, is "
                           f"{data}; {fix}", "the teacher does not fit the data")
    try:
        with torch.no_grad():
            out = teacher(batch)
    except Exception as exc:  # any failure on real data means the two do not fit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInput(f"the {where} ({takes}) fails on one batch of the data as "
                           f"preprocessed, {data}: {first}; {fix}",
                           "the teacher does not fit the data") from None
    if list(out.shape) != [len(batch), num_classes] or not torch.isfinite(out).all():
        raise InvalidInput(f"the {where} returns {list(out.shape)} (finite: "
                           f"{bool(torch.isfinite(out).all())}) for {data}; expected finite "
                           f"logits [{len(batch)}, {num_classes}]",
                           "the teacher does not fit the data")


def _fits(declared: tuple[str, list[Any]], batch: Tensor) -> bool:
    dtype, shape = declared
    if dtype not in ("float32", "float16", "double", "float64"):
        return False  # the teacher is given float32 (half and double are cast to)
    return len(shape) == batch.dim() and all(
        not isinstance(d, int) or d == n for d, n in zip(shape[1:], batch.shape[1:]))


def _evaluate_test(job: Job, dataset: Dataset, teacher: Any) -> tuple[EvalReport, Tensor]:
    teacher = with_preprocess(teacher, job.spec.data.preprocess)  # called on pixels / 255
    logits = predict_logits(teacher, dataset.test, job.spec.training.eval_batch_size, job.device)
    return evaluate(logits, dataset.test, dataset.class_names, dataset.group_names,
                    name="teacher"), logits


def _profile(job: Job, dataset: Dataset, teacher: Any, calibrate: bool,
             test_report: EvalReport, test_logits: Tensor) -> TeacherView:
    holdout = dataset.holdout
    seen = with_preprocess(teacher, job.spec.data.preprocess)
    logits = predict_logits(seen, holdout, job.spec.training.eval_batch_size, job.device)
    holdout_report = evaluate(logits, holdout, dataset.class_names, dataset.group_names,
                              name="teacher")
    model, calibration = seen, None
    if calibrate:
        fitted = fit_calibration(logits, holdout.y)
        model, calibration = calibrated(seen, fitted), fitted.to_dict()
        logits, test_logits = fitted.apply(logits), fitted.apply(test_logits)
    reliability = profile_teacher(logits, holdout.y, holdout.group, dataset.group_names,
                                  class_names=dataset.class_names)
    groups = dataset.layout.groups  # the reported subgroups, each pooling its cells
    flow = teacher_flow(test_logits, dataset.test.y, dataset.test.group, len(groups),
                        members=[g.cells for g in groups])
    return TeacherView(model, teacher.sha256, test_report, holdout_report,
                       reliability.to_dict(), calibration, flow, logits)
