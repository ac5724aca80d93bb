"""The study's teachers: trained once per (dataset, regime, what the teacher saw), saved as
.pt2 and ONNX, and served to the runs through a per-process memo of their logits.

Two regimes (``StudyConfig``): ``present``, the weak teacher the first study used (resnet8,
8 epochs, no augmentation), and ``paper``, a teacher trained long enough to be clearly
better than the student (resnet20 with crop augmentation), as in the Teacher's pet paper's
CIFAR experiments. The runs read every teacher through ONNX Runtime: on a busy 2-core CPU it
serves logits several times faster than the exported program.

A run evaluates its teacher on test and holdout and caches its logits on train; every run of
a dataset asks for the same images. The memo computes each image's logits once per worker
process and answers later calls from memory. A teacher is a pure function of its input, so
this changes no number; it only keeps 60 runs from paying 60 times for one teacher pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from compression.data import load_dataset
from compression.export.onnx_export import export_onnx
from compression.models import load_teacher
from compression.models.teacher import Teacher
from compression.spec import DataSpec, JobSpec, TeacherSpec, TrainingSpec, spec_to_dict
from compression.teacher_training import TeacherRecipe, train_teacher

__all__ = ["onnx_path", "teacher_summary", "ensure_teacher", "memoize_teachers", "log"]


def log(message: str) -> None:
    """Progress on stdout, timestamped; flushed so a nohup log follows the run."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def onnx_path(path: Path) -> Path:
    return path.with_suffix(".onnx")


def teacher_summary(path: Path, eval_name: str) -> dict[str, Any] | None:
    """A teacher's training record with its evaluation on ``eval_name``'s test split, or None
    when either is missing."""
    record, report = path.with_suffix(".json"), _report_path(path, eval_name)
    if not (record.exists() and report.exists()):
        return None
    return {**json.loads(record.read_text()), "report": json.loads(report.read_text())}


def _report_path(path: Path, eval_name: str) -> Path:
    return path.with_name(f"{path.stem}.eval.{eval_name}.json")


def ensure_teacher(label: str, path: Path, data: DataSpec, training: TrainingSpec,
                   recipe: TeacherRecipe, eval_data: DataSpec, eval_name: str) -> dict[str, Any]:
    """Train the teacher unless its ONNX copy and training record exist, evaluate it on
    ``eval_data``'s test split unless that was done, and return the summary.

    ``data``: what it trains on; ``eval_data``: the student's data, whose test split (and
    subgroups) the summary reports, for a teacher that trained on other data than the
    student; ``eval_name`` names that evaluation (several cases may share one teacher)."""
    record = path.with_suffix(".json")
    if record.exists() and onnx_path(path).exists():
        log(f"teacher {label} exists ({path}), reused")
    else:
        _train(label, path, data, training, recipe)
    report = _report_path(path, eval_name)
    if not report.exists():
        report.write_text(json.dumps(_evaluate(onnx_path(path), eval_data), indent=1))
    summary = teacher_summary(path, eval_name)
    assert summary is not None
    return summary


def _train(label: str, path: Path, data: DataSpec, training: TrainingSpec,
           recipe: TeacherRecipe) -> None:
    job = JobSpec(name=f"study-teacher-{label}", data=data, training=training)
    log(f"training teacher {label}: {recipe.arch} w{recipe.width:g}, {recipe.epochs} epochs, "
        f"augment {recipe.augment}")
    start, cpu = time.perf_counter(), time.process_time()
    train_teacher(job, recipe, path, on_event=_epoch_printer(label))
    seconds = time.perf_counter() - start
    parity = _export(path, data)
    record = {"label": label, "path": str(path), "onnx_path": str(onnx_path(path)),
              "recipe": dataclasses.asdict(recipe), "training": spec_to_dict(training),
              "data": spec_to_dict(data), "seconds": seconds,
              "cpu_seconds": time.process_time() - cpu, "onnx_parity": parity}
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    log(f"teacher {label} trained in {seconds:.0f} s")


def _export(path: Path, data: DataSpec) -> dict[str, Any]:
    """Write the teacher as ONNX next to its .pt2 and measure parity on the first 2000 test
    images of the data it trained on."""
    dataset = load_dataset(data)
    shape = dataset.input_shape
    program = load_teacher(TeacherSpec(path=str(path)), shape, dataset.num_classes)
    onnx = export_onnx(program.module, shape, onnx_path(path))
    runner = load_teacher(TeacherSpec(path=str(onnx)), shape, dataset.num_classes)
    x = dataset.test.x[:2000].float() / 255
    with torch.inference_mode():
        a, b = program(x), runner(x)
    return {"images": len(x), "max_abs_diff": float((a - b).abs().max()),
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}


def _evaluate(onnx: Path, data: DataSpec) -> dict[str, Any]:
    """The ONNX copy (what the runs read) evaluated on ``data``'s test split."""
    from compression.evaluation import evaluate, predict_logits
    dataset = load_dataset(data)
    runner = load_teacher(TeacherSpec(path=str(onnx)), dataset.input_shape, dataset.num_classes)
    logits = predict_logits(runner, dataset.test, 512, torch.device("cpu"))
    report = evaluate(logits, dataset.test, dataset.class_names, dataset.group_names,
                      name="teacher")
    log(f"teacher {onnx.stem} on {data.test_path}: test accuracy "
        f"{report.overall.accuracy:.4f}")
    return report.to_dict()


def _epoch_printer(label: str) -> Callable[[Any], None]:
    """Print the last progress event of each epoch (teacher training is the long step)."""
    def on_event(event: Any) -> None:
        p = event.payload
        if event.kind == "progress" and p.get("step") == p.get("steps"):
            log(f"  teacher {label} epoch {p.get('epoch')}/{p.get('epochs')} "
                f"loss {p.get('epoch_loss', 0):.3f} ({p.get('samples_per_s', 0):.0f} samples/s)")
    return on_event


_MEMO: dict[str, dict[bytes, torch.Tensor]] = {}  # teacher sha256 -> image digest -> logits


def _memoized(teacher: Teacher) -> Teacher:
    """``teacher`` answering each image it has seen before from memory (see module doc)."""
    memo = _MEMO.setdefault(teacher.sha256, {})
    run = teacher._run

    def cached_run(x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().contiguous().numpy()
        keys = [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in memo]
        if missing:
            fresh = run(x[missing]).detach().cpu().float()
            for i, row in zip(missing, fresh):
                memo[keys[i]] = row.clone()
        return torch.stack([memo[k] for k in keys]).to(x.device)
    return Teacher(cached_run, format=teacher.format, path=teacher.path, sha256=teacher.sha256,
                   device=teacher.device, module=teacher.module)


def memoize_teachers() -> None:
    """Route the pipeline's teacher loading through the memo (call once per worker)."""
    import compression.pipeline.teacher as pipeline_teacher
    if not hasattr(pipeline_teacher, "load_teacher"):
        raise RuntimeError("compression.pipeline.teacher no longer loads teachers through "
                           "load_teacher; update bench/_study_teachers.memoize_teachers")

    def load(*args: Any, **kwargs: Any) -> Teacher:
        teacher = load_teacher(*args, **kwargs)
        return teacher if teacher.module is not None else _memoized(teacher)
    pipeline_teacher.load_teacher = load
