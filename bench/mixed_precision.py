"""Mixed precision against full INT8 and FP32, through the pipeline's own export stages.

The student: resnet8 trained here with one-hot labels on Fashion-MNIST-LT (exponential
profile, imbalance 100), then made sensitive to INT8 in one place without changing what it
computes. In the last block, the output channel of the first convolution with the largest
mean activation on the holdout split is multiplied by --scale (its BatchNorm scale and
shift), and the second convolution's weights that read that channel are divided by it.
ReLU commutes with a positive scale, so the FP32 model gives the same logits (the run checks
it), but INT8 quantizes that activation tensor with one scale for all its channels: the
outlier channel stretches the range and every other channel loses resolution. Outlier
channels of this kind occur in trained networks (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", ICCV 2019); here one is made on purpose,
and the run prints which classes it costs.

The job then runs ``compression.pipeline.exports.export_artifacts`` as a job does: ONNX
FP32, INT8 judged against the student (max_drop_vs_student, Holm), the mixed-precision
search when INT8 fails, every artifact timed at --batch, and the fastest that passed chosen.
Afterwards the three models are timed again, interleaved in rounds, for the table.

    .venv/bin/python bench/mixed_precision.py --epochs 3 --scale 16

With --latency-only the run trains nothing and judges nothing: it builds resnet8 at --width
with its initial weights, exports it to ONNX FP32 and INT8 (calibrated on holdout as a job
does) and times the two interleaved, to see whether INT8 can be faster than FP32 for that
model on this CPU at all. Latency does not depend on the weights' values: the same graph,
shapes and kernels run whatever the weights are.

    .venv/bin/python bench/mixed_precision.py --latency-only --width 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["main", "parse_args", "amplify_channel"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--imbalance", type=float, default=100.0)
    p.add_argument("--scale", type=float, default=256.0,
                   help="outlier channel factor (1: the student as trained)")
    p.add_argument("--margin", type=float, default=0.01,
                   help="max_drop_vs_student: the per-class drop against the student allowed")
    p.add_argument("--block", type=int, default=-1, help="resnet8 block to amplify")
    p.add_argument("--batch", type=int, default=32, help="the job's opt_batch")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--iters", type=int, default=200, help="timed calls per model")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime intra-op threads for the interleaved table (the job's "
                        "own timing uses onnxruntime's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=1.0, help="resnet8 channel multiplier")
    p.add_argument("--latency-only", action="store_true",
                   help="time FP32 and INT8 of an untrained resnet8 at --width; no guardrails")
    p.add_argument("--student", type=Path, help="resnet8 weights to load instead of training")
    p.add_argument("--save-student", type=Path, help="write the trained student here")
    p.add_argument("--out", type=Path, help="keep the job folder here")
    p.add_argument("--json", type=Path, help="also write every figure here")
    return p.parse_args(argv)


def _student(data: Any, args: argparse.Namespace) -> nn.Module:
    from compression.losses import LossContext, build_loss
    from compression.models import build_model, load_teacher, save_weights
    from compression.spec import MitigationSpec, TeacherSpec, TrainingSpec
    from compression.training import train
    if args.student:
        spec = TeacherSpec(path=str(args.student), format="weights", arch="resnet8",
                           width=args.width)
        return load_teacher(spec, data.input_shape, data.num_classes).module.cpu().eval()
    torch.manual_seed(args.seed)
    model = build_model("resnet8", data.input_shape[0], data.num_classes, args.width)
    spec = TrainingSpec(epochs=args.epochs, device="cpu", seed=args.seed, teacher_cache="off")
    start = time.perf_counter()
    train(model, data.train, spec, build_loss(MitigationSpec(name="one_hot"),
                                              LossContext.from_dataset(data)), stage="train")
    print(f"trained resnet8 for {args.epochs} epochs in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    if args.save_student:
        save_weights(model, args.save_student)
    return model.cpu().eval()


def amplify_channel(model: nn.Module, block: int, scale: float, x: torch.Tensor) -> int:
    """Multiply by ``scale`` the most active output channel of block ``block``'s first
    convolution (on images x: [N, C, H, W] float), dividing the second convolution's
    weights on it; the FP32 function is unchanged. Returns the channel."""
    b = model.blocks[block]
    seen: list[torch.Tensor] = []
    hook = b.conv1.register_forward_hook(lambda m, i, o: seen.append(torch.relu(o)))
    with torch.no_grad():
        model(x)
        hook.remove()
        channel = int(seen[0].mean((0, 2, 3)).argmax())
        bn = b.conv1[1]  # conv1 = Conv2d, BatchNorm2d; relu(s * y) = s * relu(y) for s > 0
        bn.weight[channel] *= scale
        bn.bias[channel] *= scale
        b.conv2[0].weight[:, channel] /= scale
    return channel


def _time_rounds(paths: dict[str, Path], x: torch.Tensor, args: argparse.Namespace
                 ) -> dict[str, float]:
    """Median ms per call of each model on x, timed interleaved in rounds."""
    from compression.export import OnnxModel
    from compression.export.latency import measure_all
    timings = measure_all({k: OnnxModel(p, threads=args.threads) for k, p in paths.items()}, x,
                          20, args.iters, args.rounds)
    return {k: t.median_ms for k, t in timings.items()}


def _job(data: Any, out: Path, args: argparse.Namespace) -> Any:
    from compression.events import emit_nothing, never_stop
    from compression.pipeline.job import Job
    from compression.spec import (DataSpec, ExportSpec, GuardrailSpec, JobSpec, LongTailSpec,
                                  StudentSpec)
    spec = JobSpec(name="mixed-precision-bench", student=StudentSpec("resnet8", args.width),
                   data=DataSpec(long_tail=LongTailSpec("exp", args.imbalance), seed=args.seed),
                   guardrails=GuardrailSpec(max_drop_vs_student=args.margin),
                   export=ExportSpec(tensorrt="off", opt_batch=args.batch, latency_repeats=50))
    return Job(spec, out, torch.device("cpu"), emit_nothing, never_stop)


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from compression.data import load_dataset
    from compression.guardrails import judge
    from compression.pipeline.exports import export_artifacts, fastest_passed, shipping_sections
    from compression.spec import DataSpec, LongTailSpec
    data = load_dataset(DataSpec(long_tail=LongTailSpec("exp", args.imbalance), seed=args.seed))
    student = _student(data, args)
    probe = data.test.x[:512].float() / 255
    with torch.no_grad():
        before = student(probe)
        channel = (amplify_channel(student, args.block, args.scale, data.holdout.x.float() / 255)
                   if args.scale != 1 else None)
        fp32_change = (student(probe) - before).abs().max().item()
    job = _job(data, out, args)
    student_report = job.evaluate(student, data, "student")
    policy = job.spec.guardrails

    def judged(report, stage):
        return judge(report, policy, stage, student=student_report)

    artifacts = export_artifacts(job, student, data, judged)
    by_stage = {a.stage: a for a in artifacts}
    timed = _time_rounds({a.stage: a.path for a in artifacts if a.path is not None},
                         data.test.x[:args.batch].float() / 255, args)
    return _figures(data, student_report, by_stage, timed, fastest_passed(artifacts),
                    shipping_sections(job, artifacts), channel, fp32_change, args)


def latency_only(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """FP32 and INT8 of an untrained resnet8 at ``args.width``, timed interleaved."""
    from compression.data import load_dataset
    from compression.export import export_int8, export_onnx
    from compression.models import build_model
    from compression.spec import DataSpec, ExportSpec, LongTailSpec
    data = load_dataset(DataSpec(long_tail=LongTailSpec("exp", args.imbalance), seed=args.seed))
    model = build_model("resnet8", data.input_shape[0], data.num_classes, args.width,
                        seed=args.seed).eval()
    spec = ExportSpec()
    fp32 = export_onnx(model, data.input_shape, out / "model.onnx", spec.opset, spec.min_batch,
                       spec.max_batch)
    int8 = export_int8(fp32, out / "model.int8.onnx", data.holdout, spec.calibration_per_group,
                       args.seed, data.group_names).path
    timed = _time_rounds({"onnx": fp32, "int8": int8},
                         data.test.x[:args.batch].float() / 255, args)
    return {"width": args.width, "batch": args.batch, "threads": args.threads,
            "rows": [{"artifact": k, "bytes": p.stat().st_size, "interleaved_median_ms": timed[k],
                      "speedup_vs_fp32": timed["onnx"] / timed[k]}
                     for k, p in (("onnx", fp32), ("int8", int8))]}


def _figures(data, student_report, by_stage, timed, shipped, sections, channel, fp32_change,
             args) -> dict[str, Any]:
    classes = {name: n for name, n in zip(data.class_names,
                                          torch.bincount(data.train.y, minlength=len(
                                              data.class_names)).tolist())}
    rows = []
    for stage in ("onnx", "int8", "int8_mixed"):
        a = by_stage.get(stage)
        if a is None or a.report is None:
            continue
        rows.append({
            "artifact": stage, "bytes": a.path.stat().st_size,
            "pipeline_median_ms": a.timing and a.timing.median_ms,
            "interleaved_median_ms": timed.get(stage),
            "speedup_vs_fp32": timed["onnx"] / timed[stage],
            "passed": a.passed, "failing_subgroups": list(a.verdict.failing_subgroups),
            "per_class": {g.name: g.accuracy for g in a.report.groups}})
    mixed = sections["mixed_precision"]
    return {"train_counts": classes, "channel": channel, "scale": args.scale,
            "block": args.block, "fp32_max_logit_change": fp32_change, "margin": args.margin,
            "student_per_class": {g.name: g.accuracy for g in student_report.groups},
            "rows": rows, "shipped": shipped,
            "mixed_precision": mixed.to_dict() if mixed else None}


def _print(fig: dict[str, Any]) -> None:
    print(f"outlier: block {fig['block']}, channel {fig['channel']}, x{fig['scale']:g}; FP32 "
          f"logits changed by at most {fig['fp32_max_logit_change']:.2g}; margin "
          f"{fig['margin']:g}")
    print("\n| artifact | size KiB | median ms (pipeline) | median ms (interleaved) | "
          "speedup vs FP32 | guardrails | failing subgroups |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in fig["rows"]:
        print(f"| {r['artifact']} | {r['bytes'] / 1024:.0f} | {r['pipeline_median_ms']:.3f} | "
              f"{r['interleaved_median_ms']:.3f} | {r['speedup_vs_fp32']:.2f}x | "
              f"{'passed' if r['passed'] else 'blocked'} | "
              f"{', '.join(r['failing_subgroups']) or '-'} |")
    names = list(fig["student_per_class"])
    print("\n| class (train images) | student | " + " | ".join(r["artifact"] for r in fig["rows"])
          + " |")
    print("|---|---:|" + "---:|" * len(fig["rows"]))
    for n in names:
        cells = " | ".join(f"{100 * r['per_class'][n]:.1f}" for r in fig["rows"])
        print(f"| {n} ({fig['train_counts'][n]}) | {100 * fig['student_per_class'][n]:.1f} | "
              f"{cells} |")
    mixed = fig["mixed_precision"]
    if mixed:
        print(f"\nsearch: {mixed['status']} in {mixed['seconds']:.0f} s: {mixed['reason']}")
        print(f"sensitivity on {mixed['probe_images']} holdout images (worst per-class flip "
              "rate): " + ", ".join(
            f"{s['node']} {s['flip_rate']:.3f}" for s in mixed["sensitivity"]))
        for c in mixed["candidates"]:
            print(f"  candidate {len(c['float_nodes'])} float: {c['latency_ms']:.3f} ms, "
                  f"{'passed' if c['passed'] else 'failed on ' + ', '.join(c['failing_subgroups'])}")
    print(f"\nshipped: {fig['shipped']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tpet-mixed-") as tmp:
        out = args.out or Path(tmp)
        if args.latency_only:
            fig = latency_only(args, out)
            print(f"resnet8 width {fig['width']:g}, untrained, batch {fig['batch']}, "
                  f"{fig['threads']} thread(s)")
            for r in fig["rows"]:
                print(f"| {r['artifact']} | {r['bytes'] / 1024:.0f} KiB | "
                      f"{r['interleaved_median_ms']:.3f} ms | {r['speedup_vs_fp32']:.2f}x |")
        else:
            fig = run(args, out)
            _print(fig)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
