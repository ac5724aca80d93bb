"""One variant of the distillation-throughput benchmark, run alone in a fresh process.

Every variant builds the same data (Fashion-MNIST-LT), the same randomly initialised teacher
and student (same seed, so identical weights) and the same KD objective, then trains and
reports wall time and peak memory. Running each in its own process keeps one variant's
allocations (and torch's allocator caches) out of another's memory figure.
"""

from __future__ import annotations

import argparse
import re
import resource
import time
from pathlib import Path
from typing import Any

import torch

from bench._cpu_load import CpuWindow
from bench._torchdistill_side import BaselineSettings, import_torchdistill, run_torchdistill
from compression.data import load_dataset
from compression.data.dataset import Dataset
from compression.losses import LossContext, build_loss
from compression.models import build_model
from compression.spec import DataSpec, LongTailSpec, MitigationSpec, TrainingSpec
from compression.training import train

__all__ = ["VARIANTS", "run_variant", "settings_from_args"]

VARIANTS = ("torchdistill", "ours_nocache", "ours_cache")
_LR, _MOMENTUM, _WEIGHT_DECAY = 0.05, 0.9, 5e-4  # TrainingSpec's defaults, used on both sides
_ALPHA, _TEMPERATURE = 0.5, 4.0


def settings_from_args(args: argparse.Namespace) -> BaselineSettings:
    return BaselineSettings(epochs=args.epochs, batch_size=args.batch_size, lr=_LR,
                            momentum=_MOMENTUM, weight_decay=_WEIGHT_DECAY, alpha=_ALPHA,
                            temperature=_TEMPERATURE)


class PeakRss:
    """Peak resident set of this process over a stretch of code, in bytes.

    ``getrusage`` ru_maxrss is a whole-process high-water mark, so data loading would hide a
    smaller training peak. Writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) resets
    that mark to the current RSS first; where that is refused the figure is the process peak
    and ``reset`` is False.
    """

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start_rss = _current_rss_bytes()

    def peak_bytes(self) -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _current_rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else 0


def _load(args: argparse.Namespace) -> Dataset:
    spec = DataSpec(source="fashion-mnist", long_tail=LongTailSpec(profile="exp", imbalance=100.0),
                    max_train=args.max_train, seed=0)
    return load_dataset(spec)


def _models(args: argparse.Namespace, data: Dataset) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Teacher and student with weights fixed by ``args.seed`` (random: throughput only)."""
    channels, classes = data.input_shape[0], data.num_classes
    torch.manual_seed(args.seed)
    teacher = build_model(args.teacher_arch, channels, classes, 1.0)
    student = build_model(args.student_arch, channels, classes, 1.0)
    return teacher, student


def _run_ours(args: argparse.Namespace, data: Dataset, teacher: torch.nn.Module,
              student: torch.nn.Module, cache: str) -> dict[str, Any]:
    spec = TrainingSpec(epochs=args.epochs, batch_size=args.batch_size, optimizer="sgd",
                        lr=_LR, momentum=_MOMENTUM, weight_decay=_WEIGHT_DECAY,
                        schedule="cosine", augment="none", amp="off", device="cpu",
                        teacher_cache=cache, seed=args.seed)
    loss = build_loss(MitigationSpec(name="kd", alpha=_ALPHA, temperature=_TEMPERATURE),
                      LossContext.from_dataset(data))
    start = time.perf_counter()
    result = train(student, data.train, spec, loss, teacher=teacher, checkpoint_dir=None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": args.epochs * len(data.train),
            "cache_seconds": float(result.cache_seconds),
            "used_teacher_cache": bool(result.used_teacher_cache),
            "reported_samples_per_s": float(result.samples_per_s),
            "reported_seconds": float(result.seconds)}


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train once as variant ``name``; return its timing and memory figures (JSON-ready)."""
    torch.set_num_threads(args.threads)
    data = _load(args)
    teacher, student = _models(args, data)
    if name == "torchdistill":
        import_torchdistill()  # its import is not training memory
    meter, cpu = PeakRss(), CpuWindow()
    if name == "torchdistill":
        out = run_torchdistill(teacher, student, data.train.x, data.train.y,
                               settings_from_args(args))
    elif name in ("ours_nocache", "ours_cache"):
        out = _run_ours(args, data, teacher, student, "on" if name == "ours_cache" else "off")
    else:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    peak, foreign, cpu_seconds = meter.peak_bytes(), cpu.foreign_fraction(), cpu.own_seconds()
    out.update(variant=name, train_samples=len(data.train), threads=torch.get_num_threads(),
               peak_rss_bytes=peak, rss_growth_bytes=max(0, peak - meter.start_rss),
               peak_reset=meter.reset, foreign_load=foreign, cpu_seconds=cpu_seconds)
    return out
