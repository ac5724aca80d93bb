"""The compression pipeline: ``run(spec, on_event, should_stop) -> RunResult``.

Reads like its table of contents: load data, load and profile the teacher, distill the student,
evaluate it per subgroup, save the student and the report.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from compression.data import Dataset, describe, load_dataset
from compression.evaluation import EvalReport, evaluate, predict_logits, write_json
from compression.events import Event, EventSink, StopCheck, emit_nothing, never_stop
from compression.losses import LossContext, build_loss
from compression.models import (build_model, count_parameters, load_teacher, save_exported,
                                save_weights, sha256_file)
from compression.spec import JobSpec, spec_to_dict
from compression.training import TrainResult, resolve_device, train

__all__ = ["RunResult", "run", "SUCCEEDED"]

SUCCEEDED = "SUCCEEDED"
T = TypeVar("T")


@dataclass(frozen=True)
class RunResult:
    status: str
    output_dir: Path
    report_path: Path
    teacher: EvalReport | None
    student: EvalReport
    training: TrainResult


def run(spec: JobSpec, on_event: EventSink = emit_nothing,
        should_stop: StopCheck = never_stop) -> RunResult:
    """Distill ``spec.student`` from ``spec.teacher`` and evaluate it per subgroup."""
    out_dir = spec.resolved_output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.training.device)
    stages = _StageRunner(on_event)

    dataset = stages.run("load_data", lambda: load_dataset(spec.data), _data_summary)
    loss = build_loss(spec.mitigation, LossContext.from_dataset(dataset))
    student = build_model(spec.student.arch, dataset.input_shape[0], dataset.num_classes,
                          spec.student.width)
    teacher, teacher_report = None, None
    if loss.needs_teacher:
        teacher = stages.run("load_teacher", lambda: load_teacher(
            spec.teacher, dataset.input_shape, dataset.num_classes, device),
            lambda t: {"format": t.format, "sha256": t.sha256})
        teacher_report = stages.run("evaluate_teacher", lambda: _evaluate(
            teacher, dataset, spec, device, "teacher"), _report_summary)

    training = stages.run("distill", lambda: train(
        student, dataset.train, spec.training, loss, teacher=teacher,
        checkpoint_dir=out_dir / "checkpoints", on_event=on_event, should_stop=should_stop,
        run_key=_run_key(spec, teacher)),
        lambda r: {"epochs_run": r.epochs_run, "samples_per_s": r.samples_per_s})
    student_report = stages.run("evaluate_student", lambda: _evaluate(
        student, dataset, spec, device, "student", reference=teacher_report), _report_summary)

    artifacts = stages.run("save", lambda: _save_student(student, dataset, out_dir), lambda a: a)
    report = {
        "status": SUCCEEDED,
        "spec": spec_to_dict(spec),
        "environment": _environment(device),
        "data": describe(dataset),
        "student_parameters": count_parameters(student),
        "training": _training_summary(training),
        "evaluations": {r.name: r.to_dict() for r in (teacher_report, student_report) if r},
        "stage_seconds": stages.seconds,
        "artifacts": artifacts,
    }
    report_path = out_dir / "report.json"
    write_json(report_path, report)
    return RunResult(SUCCEEDED, out_dir, report_path, teacher_report, student_report, training)


class _StageRunner:
    """Runs one stage, timing it and reporting its start and its summary."""

    def __init__(self, on_event: EventSink):
        self.on_event = on_event
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, work: Callable[[], T], summarize: Callable[[T], dict]) -> T:
        self.on_event(Event("stage_started", stage))
        start = time.perf_counter()
        result = work()
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        self.on_event(Event("stage_finished", stage,
                            {"seconds": self.seconds[stage], **summarize(result)}))
        return result


def _run_key(spec: JobSpec, teacher: Any) -> dict[str, Any]:
    """What a checkpoint must match to be resumed, beyond the training spec and the data."""
    return {"mitigation": spec_to_dict(spec.mitigation),
            "teacher_sha256": teacher.sha256 if teacher else None}


def _evaluate(model: Any, dataset: Dataset, spec: JobSpec, device: torch.device, name: str,
              reference: EvalReport | None = None) -> EvalReport:
    logits = predict_logits(model, dataset.test, spec.training.eval_batch_size, device)
    return evaluate(logits, dataset.test, dataset.class_names, dataset.group_names,
                    reference=reference, name=name)


def _save_student(student: torch.nn.Module, dataset: Dataset, out_dir: Path) -> dict[str, str]:
    paths = {"student.pt2": out_dir / "student.pt2",
             "student.safetensors": out_dir / "student.safetensors"}
    save_exported(student.cpu(), dataset.input_shape, paths["student.pt2"])
    save_weights(student, paths["student.safetensors"])
    return {name: sha256_file(path) for name, path in paths.items()}


def _data_summary(dataset: Dataset) -> dict[str, Any]:
    return {"train": len(dataset.train), "holdout": len(dataset.holdout),
            "test": len(dataset.test), "groups": list(dataset.group_names)}


def _report_summary(report: EvalReport) -> dict[str, Any]:
    worst = report.worst_group
    return {"accuracy": report.overall.accuracy, "worst_group": worst and worst.name,
            "worst_group_accuracy": worst and worst.accuracy}


def _training_summary(result: TrainResult) -> dict[str, Any]:
    return {"epochs_run": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch,
            "final_loss": result.final_loss, "samples_per_s": result.samples_per_s,
            "seconds": result.seconds, "teacher_cache": result.used_teacher_cache}


def _environment(device: torch.device) -> dict[str, str]:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
