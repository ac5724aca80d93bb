"""The study's runs: the datasets, the methods, the teacher, and one pipeline run per cell.

Each run is ``compression.pipeline.run`` on a ``JobSpec`` built here (no export, no
guardrail rules). Its summary goes to ``result.json`` in the run's folder; a run whose
``result.json`` exists is read back instead of trained again, so a stopped study resumes.
Folders are keyed by a hash of the settings, so changing epochs or archs never mixes old
results with new ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from compression.data import load_dataset
from compression.export.onnx_export import export_onnx
from compression.losses import known_losses
from compression.models import load_teacher
from compression.pipeline import run
from compression.report import JobReport
from compression.spec import (DataSpec, ExportSpec, JobSpec, LongTailSpec, MitigationSpec,
                              StudentSpec, TeacherSpec, TrainingSpec, spec_to_dict)
from compression.teacher_training import TeacherRecipe, train_teacher

__all__ = ["StudyConfig", "Method", "METHODS", "STRONG_ALPHA", "dataset_spec", "teacher_path",
           "ensure_teacher", "teacher_summary", "run_cell", "log", "run_dir"]

STRONG_ALPHA = 0.9  # the teacher weight every mitigation is run at


@dataclass(frozen=True)
class Method:
    """One row of the study: a label and the mitigation it trains with."""

    label: str
    mitigation: MitigationSpec


def _m(name: str, alpha: float = STRONG_ALPHA, **params: Any) -> MitigationSpec:
    return MitigationSpec(name=name, alpha=alpha, params=params)


METHODS: tuple[Method, ...] = (
    Method("one_hot", _m("one_hot", alpha=0.0)),
    Method("kd a=0.5", _m("kd", 0.5)),
    Method("kd a=0.9", _m("kd", 0.9)),
    Method("kd a=1.0", _m("kd", 1.0)),
    Method("adaptive_alpha", _m("adaptive_alpha")),
    Method("adaptive_alpha per_example", _m("adaptive_alpha", per_example=True)),
    Method("adaptive_margin", _m("adaptive_margin")),
    Method("group_dro", _m("group_dro")),
    Method("ltkd", _m("ltkd")),
    Method("teacher_calibration", _m("teacher_calibration")),
    # Teacher-free rebalancing: how much of a mitigation's gain the class prior alone gives.
    Method("logit_adjusted", _m("logit_adjusted", alpha=0.0)),
    Method("balanced_softmax", _m("balanced_softmax", alpha=0.0)),
    Method("class_balanced", _m("class_balanced", alpha=0.0)),
    Method("group_dro_one_hot", _m("group_dro_one_hot", alpha=0.0)),
)


def _check_coverage() -> None:
    """Fail at import when the registry gains a mitigation the study does not run."""
    missing = set(known_losses()) - {"auto"} - {m.mitigation.name for m in METHODS}
    if missing:
        raise RuntimeError(f"the study does not cover mitigations {sorted(missing)}; "
                           "add them to METHODS in bench/_study_runs.py")


_check_coverage()


@dataclass(frozen=True)
class StudyConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.05
    student_arch: str = "tiny_cnn"
    student_width: float = 0.5
    teacher_arch: str = "resnet8"
    teacher_width: float = 1.0
    teacher_epochs: int = 8
    teacher_augment: str = "none"
    imbalance: float = 100.0
    balanced_max_train: int = 15000
    data_seed: int = 0
    out_dir: Path = Path("runs/study")

    def tag(self) -> str:
        """Short hash of everything that changes a student run except the seeds."""
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if k not in ("seeds", "out_dir")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def log(message: str) -> None:
    """Progress on stdout, timestamped; flushed so a nohup log follows the run."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def dataset_spec(name: str, config: StudyConfig) -> DataSpec:
    """``fmnist_lt``: exp long tail over the full train set; ``fmnist_bal``: a balanced,
    stratified subsample of similar size. The data seed is fixed per dataset."""
    if name == "fmnist_lt":
        return DataSpec(long_tail=LongTailSpec(profile="exp", imbalance=config.imbalance),
                        seed=config.data_seed)
    if name == "fmnist_bal":
        return DataSpec(max_train=config.balanced_max_train, seed=config.data_seed)
    raise ValueError(f"unknown dataset {name!r}; use fmnist_lt or fmnist_bal")


def _training(config: StudyConfig, seed: int, epochs: int) -> TrainingSpec:
    return TrainingSpec(epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                        schedule="cosine", warmup_epochs=1 if epochs > 2 else 0,
                        augment="none", device="cpu", seed=seed)


def teacher_path(dataset: str, config: StudyConfig) -> Path:
    c = config
    return (c.out_dir / "teachers" /
            f"{dataset}_{c.teacher_arch}_w{c.teacher_width:g}_e{c.teacher_epochs}"
            f"_{c.teacher_augment}_d{c.data_seed}.pt2")


def teacher_summary(dataset: str, config: StudyConfig) -> dict[str, Any] | None:
    """The saved summary of the dataset's teacher, or None when it was not trained yet."""
    path = teacher_path(dataset, config).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else None


def ensure_teacher(dataset: str, config: StudyConfig) -> dict[str, Any]:
    """Train the dataset's teacher unless its checkpoint and summary exist; return the summary."""
    path = teacher_path(dataset, config)
    summary = teacher_summary(dataset, config)
    if summary is not None and _onnx_path(path).exists():
        log(f"teacher {path} exists, reused")
        return summary
    job = JobSpec(name=f"study-teacher-{dataset}", data=dataset_spec(dataset, config),
                  training=_training(config, seed=0, epochs=config.teacher_epochs))
    recipe = TeacherRecipe(arch=config.teacher_arch, width=config.teacher_width,
                           epochs=config.teacher_epochs, augment=config.teacher_augment)
    log(f"training teacher {config.teacher_arch} on {dataset} "
        f"({config.teacher_epochs} epochs, augment {config.teacher_augment})")
    start = time.perf_counter()
    report = train_teacher(job, recipe, path, on_event=_epoch_printer(dataset))
    seconds = time.perf_counter() - start
    summary = {"dataset": dataset, "path": str(path), "onnx_path": str(_onnx_path(path)),
               "recipe": dataclasses.asdict(recipe), "training": spec_to_dict(job.training),
               "seconds": seconds, "report": report.to_dict(),
               "onnx_parity": _export_teacher_onnx(path, job.data)}
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    log(f"teacher {dataset}: test accuracy {report.overall.accuracy:.4f} "
        f"in {summary['seconds']:.0f} s")
    return summary


def _onnx_path(path: Path) -> Path:
    return path.with_suffix(".onnx")


def _export_teacher_onnx(path: Path, data: DataSpec) -> dict[str, Any]:
    """Write the teacher as ONNX next to its .pt2 and measure parity on the test split.

    The runs distill from the ONNX copy: onnxruntime serves the teacher's logits several
    times faster than the exported program on a busy 2-core CPU, and each run needs them
    for the train, holdout and test splits."""
    dataset = load_dataset(data)
    shape = dataset.input_shape
    program = load_teacher(TeacherSpec(path=str(path)), shape, dataset.num_classes)
    onnx = export_onnx(program.module, shape, _onnx_path(path))
    runner = load_teacher(TeacherSpec(path=str(onnx)), shape, dataset.num_classes)
    x = dataset.test.x.float() / 255
    with torch.inference_mode():
        a = torch.cat([program(x[i:i + 512]) for i in range(0, len(x), 512)])
        b = torch.cat([runner(x[i:i + 512]) for i in range(0, len(x), 512)])
    return {"max_abs_diff": float((a - b).abs().max()),
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}


def run_dir(dataset: str, method: Method, seed: int, config: StudyConfig) -> Path:
    slug = method.label.replace(" ", "_").replace("=", "")
    return config.out_dir / config.tag() / dataset / slug / f"seed{seed}"


def run_cell(dataset: str, method: Method, seed: int,
             config: StudyConfig) -> tuple[dict[str, Any], bool]:
    """One (dataset, method, seed) run; returns (its summary, whether it was reused)."""
    out = run_dir(dataset, method, seed, config)
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text()), True
    spec = JobSpec(
        name=f"study-{dataset}-{seed}", output_dir=str(out),
        teacher=TeacherSpec(path=str(_onnx_path(teacher_path(dataset, config)))),
        data=dataset_spec(dataset, config),
        student=StudentSpec(arch=config.student_arch, width=config.student_width),
        training=_training(config, seed, config.epochs), mitigation=method.mitigation,
        export=ExportSpec(onnx=False, int8=False, tensorrt="off"))
    start = time.perf_counter()
    result = run(spec)
    summary = _summarize(dataset, method, seed, result, time.perf_counter() - start)
    result_path.write_text(json.dumps(summary, indent=1))
    return summary, False


def _summarize(dataset: str, method: Method, seed: int, result: Any,
               seconds: float) -> dict[str, Any]:
    """The per-run record: accuracies from the reports, counts and loss state from report.json,
    read back as the typed job report."""
    report = JobReport.load(result.report_path)
    student, teacher = result.reports["student"], result.reports.get("teacher")
    names = report.data.class_names
    train_counts = report.data.splits["train"].class_counts
    return {
        "dataset": dataset, "method": method.label, "seed": seed,
        "mitigation": spec_to_dict(method.mitigation),
        "class_names": list(names),
        "train_counts": [train_counts[c] for c in names],
        "accuracy": student.overall.accuracy,
        "per_class": [c.accuracy for c in student.per_class],
        "teacher_accuracy": teacher and teacher.overall.accuracy,
        "teacher_per_class": teacher and [c.accuracy for c in teacher.per_class],
        "teacher_calibration": report.teacher and report.teacher.calibration,
        "loss_state": report.training.loss_state,
        "student_parameters": report.student_parameters,
        "train_seconds": report.training.seconds, "seconds": seconds,
    }


def _epoch_printer(dataset: str) -> Callable[[Any], None]:
    """Print the last progress event of each epoch (teacher training is the long step)."""
    def on_event(event: Any) -> None:
        p = event.payload
        if event.kind == "progress" and p.get("step") == p.get("steps"):
            log(f"  teacher {dataset} epoch {p.get('epoch')}/{p.get('epochs')} "
                f"loss {p.get('epoch_loss', 0):.3f} "
                f"({p.get('samples_per_s', 0):.0f} samples/s)")
    return on_event
