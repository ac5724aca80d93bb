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


def teacher_summary(path: Path) -> dict[str, Any] | None:
    """The saved summary of a teacher, or None when it was not trained yet."""
    summary = path.with_suffix(".json")
    return json.loads(summary.read_text()) if summary.exists() else None


def ensure_teacher(label: str, path: Path, data: DataSpec, training: TrainingSpec,
                   recipe: TeacherRecipe, eval_data: DataSpec) -> dict[str, Any]:
    """Train the teacher unless its ONNX copy and summary exist; return the summary.

    ``data``: what it trains on; ``eval_data``: the student's data, whose test split (and
    subgroups) the summary reports, for a teacher that trained on less than the student."""
    summary = teacher_summary(path)
    if summary is not None and onnx_path(path).exists():
        log(f"teacher {label} exists ({path}), reused")
        return summary
    job = JobSpec(name=f"study-teacher-{label}", data=data, training=training)
    log(f"training teacher {label}: {recipe.arch} w{recipe.width:g}, {recipe.epochs} epochs, "
        f"augment {recipe.augment}")
    start, cpu = time.perf_counter(), time.process_time()
    train_teacher(job, recipe, path, on_event=_epoch_printer(label))
    seconds = time.perf_counter() - start
    report, parity = _export_and_evaluate(path, eval_data)
    summary = {"label": label, "path": str(path), "onnx_path": str(onnx_path(path)),
               "recipe": dataclasses.asdict(recipe), "training": spec_to_dict(training),
               "data": spec_to_dict(data), "seconds": seconds,
               "cpu_seconds": time.process_time() - cpu, "report": report,
               "onnx_parity": parity}
    path.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    log(f"teacher {label}: test accuracy {report['overall']['accuracy']:.4f} in {seconds:.0f} s")
    return summary


def _export_and_evaluate(path: Path, data: DataSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the teacher as ONNX next to its .pt2, measure parity on the first 2000 test
    images, and evaluate the ONNX copy (what the runs read) on the student's test split."""
    from compression.evaluation import evaluate, predict_logits
    dataset = load_dataset(data)
    shape = dataset.input_shape
    program = load_teacher(TeacherSpec(path=str(path)), shape, dataset.num_classes)
    onnx = export_onnx(program.module, shape, onnx_path(path))
    runner = load_teacher(TeacherSpec(path=str(onnx)), shape, dataset.num_classes)
    x = dataset.test.x[:2000].float() / 255
    with torch.inference_mode():
        a, b = program(x), runner(x)
    parity = {"images": len(x), "max_abs_diff": float((a - b).abs().max()),
              "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}
    logits = predict_logits(runner, dataset.test, 512, torch.device("cpu"))
    report = evaluate(logits, dataset.test, dataset.class_names, dataset.group_names,
                      name="teacher")
    return report.to_dict(), parity


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
