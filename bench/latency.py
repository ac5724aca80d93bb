"""Inference latency on this machine's CPU: PyTorch eager FP32, ONNX Runtime FP32 and INT8.

For each student (by default tiny_cnn and resnet8, trained here with one-hot labels on
Fashion-MNIST-LT: exponential profile, imbalance 100), the run exports ONNX (parity-checked
as the pipeline does), quantizes it to static INT8 QDQ (calibrated on the holdout split,
stratified by class), then measures side by side, in one process:

  latency   batch 1 and batch 64 of real test images; each variant is warmed up, then timed
            call by call, interleaved with the others in rounds so drift hits all alike;
            wall-clock median and p90 in ms, and the median of the process's CPU time per
            call; every runtime at the same thread count (--threads). With one thread the
            CPU time is the work itself, which other processes on a shared machine barely
            change; the wall clock is what a caller waits;
  accuracy  per-class test accuracy of each variant (compression.evaluation), and the
            largest per-class drop against the FP32 student; "floors met" when no class
            drops by more than --max-drop.

The timed call is the one the pipeline makes: ``model(x)`` for eager (inference mode) and
``OnnxModel(path)(x)`` for onnxruntime, float32 [B, 1, 28, 28] in, logits out.

    .venv/bin/python bench/latency.py --epochs 3 --save-students /tmp/students
    .venv/bin/python bench/latency.py --student tiny_cnn:/tmp/students/tiny_cnn.safetensors \
        --student resnet8:runs/job/student.safetensors --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

__all__ = ["main", "parse_args", "percentile", "summarise", "markdown_table"]

BATCHES = (1, 64)
EAGER, ORT_FP32, ORT_INT8 = "PyTorch eager FP32", "ONNX Runtime FP32", "ONNX Runtime INT8"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="tiny_cnn,resnet8", help="students to train and time")
    p.add_argument("--student", action="append", default=[], metavar="ARCH:PATH",
                   help="time this trained student (safetensors weights of ARCH at width 1, "
                        "e.g. a job's student.safetensors) instead of training; repeatable")
    p.add_argument("--save-students", type=Path, metavar="DIR",
                   help="write the students trained here to DIR/ARCH.safetensors")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--imbalance", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch and onnxruntime intra-op threads while timing, the same for "
                        "every variant (training uses every core)")
    p.add_argument("--iters", type=int, default=300, help="timed calls per variant and batch")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5, help="interleaving rounds")
    p.add_argument("--calibration-per-group", type=int, default=32)
    p.add_argument("--max-drop", type=float, default=0.02,
                   help="per-class accuracy drop vs the FP32 student allowed to a variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet-below", type=float, default=0.15,
                   help="before timing wait until other processes use less than this share "
                        "of all CPUs (0..1); 1 disables the wait")
    p.add_argument("--quiet-timeout", type=float, default=180.0)
    p.add_argument("--max-foreign", type=float, default=0.1,
                   help="re-time a student when other processes used more than this share "
                        "of the CPUs while it was timed")
    p.add_argument("--retries", type=int, default=3, help="re-timings allowed per student")
    p.add_argument("--out", type=Path, help="keep the exported models here")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)
    _check_args(p, args)
    return args


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.retries < 0:
        p.error(f"--retries is {args.retries}; it must be >= 0")
    for name in ("epochs", "threads", "iters", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} is {getattr(args, name)}; it must be >= 1")
    if args.iters < args.rounds:
        p.error("--iters must be >= --rounds")
    for item in args.student:
        arch, _, path = item.partition(":")
        if not path or not Path(path).is_file():
            p.error(f"--student {item!r}: give ARCH:PATH to an existing weights file")


def _dataset(args: argparse.Namespace) -> Any:
    from compression.data import load_dataset
    from compression.spec import DataSpec, LongTailSpec
    return load_dataset(DataSpec(long_tail=LongTailSpec("exp", args.imbalance), seed=args.seed))


def _student(arch: str, weights: str, data: Any, args: argparse.Namespace) -> nn.Module:
    """The student in ``weights``, or ``arch`` trained on ``data.train`` with one-hot labels."""
    from compression.losses import LossContext, build_loss
    from compression.models import build_model, load_teacher, save_weights
    from compression.spec import MitigationSpec, TeacherSpec, TrainingSpec
    from compression.training import train
    if weights:
        spec = TeacherSpec(path=weights, format="weights", arch=arch)
        return load_teacher(spec, data.input_shape, data.num_classes).module.eval()
    model = build_model(arch, data.input_shape[0], data.num_classes)
    spec = TrainingSpec(epochs=args.epochs, device="cpu", seed=args.seed, teacher_cache="off")
    start = time.perf_counter()
    train(model, data.train, spec, build_loss(MitigationSpec(name="one_hot"),
                                              LossContext.from_dataset(data)), stage="train")
    print(f"  trained {arch} for {args.epochs} epochs in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    if args.save_students:
        args.save_students.mkdir(parents=True, exist_ok=True)
        save_weights(model, args.save_students / f"{arch}.safetensors")
    return model.cpu().eval()


def _variants(model: nn.Module, arch: str, data: Any, folder: Path,
              args: argparse.Namespace) -> tuple[dict[str, Callable], dict[str, int]]:
    """The three runnable variants and their sizes in bytes."""
    from compression.export import (OnnxModel, check_parity, export_int8, export_onnx,
                                    parity)
    from compression.spec import ExportSpec
    spec = ExportSpec()
    fp32 = export_onnx(model, data.input_shape, folder / f"{arch}.onnx", opset=spec.opset)
    check_parity(parity(model, OnnxModel(fp32), data.test), spec)
    int8 = export_int8(fp32, folder / f"{arch}.int8.onnx", data.holdout,
                       args.calibration_per_group, args.seed, data.group_names).path
    params = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    runners = {EAGER: model, ORT_FP32: OnnxModel(fp32, threads=args.threads),
               ORT_INT8: OnnxModel(int8, threads=args.threads)}
    return runners, {EAGER: params, ORT_FP32: fp32.stat().st_size, ORT_INT8: int8.stat().st_size}


def _accuracy(runners: dict[str, Callable], data: Any) -> dict[str, Any]:
    from compression.evaluation import evaluate, predict_logits
    return {name: evaluate(predict_logits(fn, data.test), data.test, data.class_names,
                           data.group_names, name=name) for name, fn in runners.items()}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def _time(runners: dict[str, Callable], x: Tensor, args: argparse.Namespace
          ) -> dict[str, dict[str, list[float]]]:
    """{runner: {"wall": ms per call, "cpu": process CPU ms per call}} on x: [B, C, H, W]."""
    times = {name: {"wall": [], "cpu": []} for name in runners}
    with torch.inference_mode():
        for fn in runners.values():
            for _ in range(args.warmup):
                fn(x)
        per_round = args.iters // args.rounds
        for _ in range(args.rounds):
            for name, fn in runners.items():
                for _ in range(per_round):
                    wall, cpu = time.perf_counter_ns(), time.process_time_ns()
                    fn(x)
                    times[name]["cpu"].append((time.process_time_ns() - cpu) / 1e6)
                    times[name]["wall"].append((time.perf_counter_ns() - wall) / 1e6)
    return times


def summarise(arch: str, times: dict[int, dict[str, dict[str, list[float]]]],
              sizes: dict[str, int], reports: dict[str, Any], max_drop: float
              ) -> list[dict[str, Any]]:
    """One row per variant: per batch size the wall median and p90, the CPU-time median and
    both speedups over eager (ratios of medians); per-class accuracy and its worst drop."""
    base = reports[EAGER]
    rows = []
    for name in (EAGER, ORT_FP32, ORT_INT8):
        report = reports[name]
        drops = [b.accuracy - g.accuracy for g, b in zip(report.groups, base.groups)
                 if g.accuracy is not None and b.accuracy is not None]
        row: dict[str, Any] = {
            "student": arch, "variant": name, "size_bytes": sizes[name],
            "accuracy": report.overall.accuracy, "worst_class": report.worst_group.name,
            "worst_class_accuracy": report.worst_group.accuracy,
            "per_class": {g.name: g.accuracy for g in report.groups},
            # 1e-9: a drop of exactly max_drop (e.g. 0.433 - 0.413) is met, float noise aside
            "max_class_drop": max(drops), "floors_met": max(drops) <= max_drop + 1e-9}
        for b, by_name in times.items():
            wall, cpu = by_name[name]["wall"], by_name[name]["cpu"]
            row[f"b{b}_median_ms"] = statistics.median(wall)
            row[f"b{b}_p90_ms"] = percentile(wall, 90)
            row[f"b{b}_cpu_ms"] = statistics.median(cpu)
            eager = by_name[EAGER]
            row[f"b{b}_speedup"] = statistics.median(eager["wall"]) / row[f"b{b}_median_ms"]
            row[f"b{b}_cpu_speedup"] = (statistics.median(eager["cpu"])
                                        / max(row[f"b{b}_cpu_ms"], 1e-9))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A latency table and an accuracy table, one row per student and variant."""
    lat = " | ".join(f"b{b} median | b{b} p90 | b{b} CPU | b{b} vs eager" for b in BATCHES)
    head = (f"| student | variant | size KiB | {lat} |\n|---|---|---:|"
            + "---:|" * (4 * len(BATCHES)))
    body = [head]
    for r in rows:
        cells = " | ".join(f"{r[f'b{b}_median_ms']:.3f} | {r[f'b{b}_p90_ms']:.3f} | "
                           f"{r[f'b{b}_cpu_ms']:.3f} | {r[f'b{b}_speedup']:.2f}x "
                           f"(CPU {r[f'b{b}_cpu_speedup']:.2f}x)" for b in BATCHES)
        body.append(f"| {r['student']} | {r['variant']} | {r['size_bytes'] / 1024:.0f} | "
                    f"{cells} |")
    body += ["", "| student | variant | test acc | worst class (acc) | max class drop vs "
             "FP32 | floors met |", "|---|---|---:|---|---:|---|"]
    for r in rows:
        body.append(f"| {r['student']} | {r['variant']} | {r['accuracy']:.4f} | "
                    f"{r['worst_class']} ({r['worst_class_accuracy']:.3f}) | "
                    f"{100 * r['max_class_drop']:+.1f} pt | "
                    f"{'yes' if r['floors_met'] else 'NO'} |")
    return "\n".join(body)


def _bench_one(arch: str, weights: str, data: Any, folder: Path, args: argparse.Namespace
               ) -> tuple[list[dict[str, Any]], float]:
    from bench._cpu_load import CpuWindow, wait_for_quiet
    print(f"{arch}:", file=sys.stderr, flush=True)
    torch.set_num_threads(os.cpu_count() or 1)  # training uses the whole machine
    model = _student(arch, weights, data, args)
    torch.set_num_threads(args.threads)
    runners, sizes = _variants(model, arch, data, folder, args)
    reports = _accuracy(runners, data)
    x = data.test.x[:max(BATCHES)].float() / 255  # real images, [64, C, H, W]
    for attempt in range(args.retries + 1):
        if args.quiet_below < 1:
            wait_for_quiet(args.quiet_below, args.quiet_timeout)
        window = CpuWindow()
        times = {b: _time(runners, x[:b].contiguous(), args) for b in BATCHES}
        foreign = window.foreign_fraction()
        if foreign <= args.max_foreign:
            break
        print(f"  other processes used {foreign:.0%} of the CPUs while timing"
              + ("; timing again" if attempt < args.retries else "; keeping this one"),
              file=sys.stderr, flush=True)
    return summarise(arch, times, sizes, reports, args.max_drop), foreign


def _environment(args: argparse.Namespace, foreign: dict[str, float]) -> str:
    import onnxruntime
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    load = ", ".join(f"{a} {f:.0%}" for a, f in foreign.items())
    return (f"date {datetime.date.today().isoformat()}; CPU {cpu} ({os.cpu_count()} logical); "
            f"Python {platform.python_version()}; torch {torch.__version__}; onnxruntime "
            f"{onnxruntime.__version__}; {args.threads} thread(s) for every runtime; "
            f"{args.iters} timed calls per cell after {args.warmup} warm-up, {args.rounds} "
            f"interleaved rounds; other processes' CPU share while timing: {load}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = _dataset(args)
    students = ([tuple(item.split(":", 1)) for item in args.student] if args.student
                else [(arch, "") for arch in args.archs.split(",")])
    rows: list[dict[str, Any]] = []
    foreign: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tpet-latency-") as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for arch, weights in students:
            arch_rows, foreign[arch] = _bench_one(arch, weights, data, folder, args)
            rows += arch_rows
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(markdown_table(rows))
    print()
    print(_environment(args, foreign))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
