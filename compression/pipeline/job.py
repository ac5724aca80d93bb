"""What every stage of a run shares: the spec, the output folder, the device, the callbacks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch

from compression.data import Dataset, Split
from compression.errors import Cancelled
from compression.evaluation import EvalReport, evaluate, predict_logits
from compression.events import Event, EventSink, StopCheck
from compression.models.init_weights import InitWeights
from compression.spec import JobSpec

if TYPE_CHECKING:  # students.py imports this module
    from compression.pipeline.students import StudentRun

__all__ = ["Job", "report_summary"]

T = TypeVar("T")


@dataclass
class Job:
    spec: JobSpec
    out_dir: Path
    device: torch.device
    on_event: EventSink
    should_stop: StopCheck
    stage_seconds: dict[str, float] = field(default_factory=dict)
    student_init: InitWeights | None = None  # student.init, read once for every student
    # the one-hot student, trained once whoever asks first: the baseline, the reference
    # floor's reference and a one_hot job's student are one run
    one_hot_run: StudentRun | None = None

    def stage(self, name: str, work: Callable[[], T],
              summarize: Callable[[T], dict[str, Any]] = lambda _: {}) -> T:
        """Run one stage: report its start, time it, report its summary."""
        if self.should_stop():
            raise Cancelled(f"cancelled before {name}")
        self.on_event(Event("stage_started", name))
        start = time.perf_counter()
        result = work()
        self.stage_seconds[name] = round(time.perf_counter() - start, 3)
        self.on_event(Event("stage_finished", name,
                            {"seconds": self.stage_seconds[name], **summarize(result)}))
        return result

    def log(self, stage: str, message: str) -> None:
        self.on_event(Event("log", stage, {"level": "info", "message": message}))

    def evaluate(self, model: Any, dataset: Dataset, name: str, split: Split | None = None,
                 reference: EvalReport | None = None,
                 device: torch.device | None = None) -> EvalReport:
        """Per-subgroup accuracy of ``model`` on ``split`` (the test split by default)."""
        logits = predict_logits(model, dataset.test if split is None else split,
                                self.spec.training.eval_batch_size, device or self.device)
        return evaluate(logits, dataset.test if split is None else split, dataset.class_names,
                        dataset.group_names, reference=reference, name=name)


def report_summary(report: EvalReport) -> dict[str, Any]:
    worst = report.worst_group
    return {"accuracy": report.overall.accuracy, "worst_group": worst and worst.name,
            "worst_group_accuracy": worst and worst.accuracy}
