"""Export the student (ONNX FP32, ONNX INT8, TensorRT) and validate every artifact.

Each artifact is evaluated per subgroup on the test split and judged by the same guardrails as
the PyTorch student, and compared pair by pair with that student (max_drop_vs_student).
ONNX parity beyond tolerance fails the job; an INT8 model that does not pass where the FP32
model did is kept out of shipping, the mixed-precision search looks for the fewest nodes to
keep in float instead (``compression.export.mixed_precision``), and a TensorRT INT8 build
falls back to FP16 from the FP32 model. Every built artifact is then timed at the job's batch
profile on this worker, and the fastest that passed ships (``fastest_passed``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from compression.data import Dataset
from compression.data.preprocess import takes_pixels, to_pixels
from compression.errors import StageFailed
from compression.evaluation import EvalReport
from compression.export import (OnnxModel, TrtEngine, build_engine, calibration_set,
                                check_parity, export_int8, export_onnx, parity, quantize_int8,
                                tensorrt_available)
from compression.export import mixed_precision as mp
from compression.export.latency import (Timing, choose_fastest, measure, measure_all,
                                        timing_batch)
from compression.guardrails import StageVerdict
from compression.pipeline.job import Job, report_summary
from compression.report_sections import ArtifactChoice, ArtifactTiming, MixedPrecisionSummary

__all__ = ["Artifact", "export_artifacts", "fastest_passed", "shipping_sections", "BUILT",
           "SKIPPED", "FAILED", "MIXED"]

BUILT, SKIPPED, FAILED = "BUILT", "SKIPPED", "FAILED"
MIXED = "int8_mixed"  # the stage of the INT8 model with some nodes kept in float
Judge = Callable[[EvalReport, str], StageVerdict]


@dataclass
class Artifact:
    stage: str  # onnx | int8 | int8_mixed | tensorrt
    status: str  # BUILT | SKIPPED | FAILED
    path: Path | None = None
    report: EvalReport | None = None
    verdict: StageVerdict | None = None
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    timing: Timing | None = None  # at the job's batch profile, on this worker
    search: mp.SearchResult | None = None  # int8_mixed: the search behind it
    runner: Any = None  # what evaluated it: x [B, C, H, W] float -> logits, for timing

    @property
    def passed(self) -> bool:
        return self.verdict is not None and self.verdict.passed

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "path": self.path and self.path.name,
                "passed": self.passed if self.verdict else None, "reason": self.reason,
                **self.details}


def export_artifacts(job: Job, student: nn.Module, dataset: Dataset,
                     judge: Judge) -> list[Artifact]:
    spec = job.spec.export
    if not spec.onnx:
        return []
    onnx = job.stage("export_onnx", lambda: _onnx(job, student, dataset, judge), _summary)
    artifacts = [onnx]
    int8 = None
    if spec.int8:
        int8 = job.stage("quantize_int8", lambda: _int8(job, dataset, onnx, judge), _summary)
        artifacts.append(int8)
        if spec.mixed_precision and onnx.passed and not int8.passed:
            artifacts.append(job.stage("mixed_precision", lambda: _mixed(
                job, dataset, onnx, int8, judge), _summary))
    if spec.tensorrt != "off":
        artifacts.append(job.stage("build_engine",
                                   lambda: _tensorrt(job, dataset, onnx, int8, judge), _summary))
    job.stage("measure_latency", lambda: _time_artifacts(job, dataset, artifacts),
              lambda timed: {a.stage: a.timing.median_ms for a in timed if a.timing})
    return artifacts


def _onnx(job: Job, student: nn.Module, dataset: Dataset, judge: Judge) -> Artifact:
    spec = job.spec.export
    path = export_onnx(student, dataset.input_shape, job.out_dir / "model.onnx", spec.opset,
                       spec.min_batch, spec.max_batch,
                       pixels=takes_pixels(job.spec.data.preprocess))
    runner = OnnxModel(path)
    agreement = parity(student, runner, dataset.test)
    check_parity(agreement, spec)
    return _validated(job, dataset, judge, "onnx", runner, path,
                      {"parity_vs_pytorch": agreement.to_dict(), "opset": spec.opset})


def _int8(job: Job, dataset: Dataset, onnx: Artifact, judge: Judge) -> Artifact:
    spec = job.spec.export
    built = export_int8(onnx.path, job.out_dir / "model.int8.onnx", dataset.holdout,
                        spec.calibration_per_group, job.spec.data.seed, dataset.group_names)
    runner = OnnxModel(built.path)
    details = {"calibration": built.to_dict(),
               "agreement_vs_fp32": parity(OnnxModel(onnx.path), runner, dataset.test).to_dict()}
    artifact = _validated(job, dataset, judge, "int8", runner, built.path, details)
    if onnx.passed and not artifact.passed:
        # Failing subgroups include those where INT8 was not shown within
        # max_drop_vs_student of the student, not only broken floors.
        artifact.reason = (f"INT8 did not pass guardrails that FP32 passed "
                           f"({', '.join(artifact.verdict.failing_subgroups)}), so it does "
                           f"not ship")
        job.log("quantize_int8", artifact.reason)
    return artifact


def _tensorrt(job: Job, dataset: Dataset, onnx: Artifact, int8: Artifact | None,
              judge: Judge) -> Artifact:
    spec = job.spec.export
    available, why_not = tensorrt_available()
    if available and job.device.type != "cuda":
        available, why_not = False, "TensorRT needs a CUDA device and this job runs on CPU"
    if not available:
        if spec.tensorrt == "required":
            raise StageFailed("build_engine", why_not)
        return Artifact("tensorrt", SKIPPED, reason=why_not)
    source, precision, note = _engine_source(job, dataset, onnx, int8)
    try:
        info = build_engine(source, job.out_dir / "model.engine", precision,
                            input_shape=dataset.input_shape, min_batch=spec.min_batch,
                            opt_batch=spec.opt_batch, max_batch=spec.max_batch,
                            timing_cache_path=job.out_dir / "timing.cache")
    except StageFailed as exc:
        if spec.tensorrt == "required":
            raise
        return Artifact("tensorrt", FAILED, reason=exc.reason)
    engine = TrtEngine(info.path, job.device)
    runner = (lambda x: engine(to_pixels(x))) if takes_pixels(job.spec.data.preprocess) else engine
    artifact = _validated(job, dataset, judge, "tensorrt", runner, Path(info.path),
                          {"engine": info.to_dict()})
    artifact.reason = note
    return artifact


def _engine_source(job: Job, dataset: Dataset, onnx: Artifact,
                   int8: Artifact | None) -> tuple[Path, str, str]:
    """INT8 engines build from a QDQ model quantized for TensorRT (symmetric, signed), unless
    the CPU INT8 model already broke a floor: then FP16 from the FP32 model."""
    spec = job.spec.export
    if spec.tensorrt_precision != "int8":
        return onnx.path, spec.tensorrt_precision, ""
    if int8 is not None and not int8.passed:
        return onnx.path, "fp16", "the INT8 model failed the guardrails: built FP16 instead"
    built = export_int8(onnx.path, job.out_dir / "model.int8.tensorrt.onnx", dataset.holdout,
                        spec.calibration_per_group, job.spec.data.seed, dataset.group_names,
                        target="tensorrt")
    return built.path, "int8", ""


def _validated(job: Job, dataset: Dataset, judge: Judge, stage: str, runner: Any, path: Path,
               details: dict[str, Any]) -> Artifact:
    report = job.evaluate(runner, dataset, stage)
    return Artifact(stage, BUILT, path, report, judge(report, stage), details, runner=runner)


def _mixed(job: Job, dataset: Dataset, onnx: Artifact, int8: Artifact,
           judge: Judge) -> Artifact:
    """The INT8 model with the fewest nodes kept in float that passes where FP32 did."""
    spec = job.spec.export
    failing = int8.verdict.failing_subgroups
    cells = sorted({c for g in dataset.layout.groups if g.name in failing for c in g.cells})
    probe = mp.probe_images(dataset.holdout.x, dataset.holdout.group, cells)
    calibration, _ = calibration_set(dataset.holdout, spec.calibration_per_group,
                                     job.spec.data.seed, dataset.group_names)  # INT8's own

    def judged(path: Path) -> tuple[EvalReport, StageVerdict]:
        report = job.evaluate(OnnxModel(path), dataset, MIXED)
        return report, judge(report, MIXED)

    result = mp.search(
        onnx.path, job.out_dir / "model.int8.mixed.onnx", failing, probe,
        lambda nodes, out: quantize_int8(onnx.path, out, calibration, nodes_to_exclude=nodes),
        lambda path, x: OnnxModel(path)(x.float() / 255), judged,
        lambda path: _timing(job, dataset, OnnxModel(path)).median_ms,
        mp.SearchLimits(spec.mixed_max_candidates, spec.mixed_max_seconds))
    job.log("mixed_precision", f"{result.status}: {result.reason}")
    if result.path is None:
        return Artifact(MIXED, FAILED, reason=f"mixed precision gave up: {result.reason}",
                        search=result)
    runner = OnnxModel(result.path)
    details = {"calibration": int8.details.get("calibration"),
               "float_nodes": list(result.float_nodes),
               "agreement_vs_fp32": parity(OnnxModel(onnx.path), runner, dataset.test).to_dict()}
    return Artifact(MIXED, BUILT, result.path, result.report, result.verdict, details,
                    reason=f"INT8 with {len(result.float_nodes)} node(s) kept in float "
                           f"({', '.join(result.float_nodes)}) passed",
                    search=result, runner=runner)


def _timing(job: Job, dataset: Dataset, runner: Any) -> Timing:
    spec = job.spec.export
    x = timing_batch(dataset.test.x[:spec.opt_batch], spec.opt_batch)  # [opt_batch, C, H, W]
    return measure(runner, x, spec.latency_warmup, spec.latency_repeats)


def _time_artifacts(job: Job, dataset: Dataset, artifacts: list[Artifact]) -> list[Artifact]:
    """Time every built artifact the same way on this worker, interleaved in rounds."""
    spec = job.spec.export
    built = {a.stage: a for a in artifacts if a.status == BUILT and a.runner is not None}
    x = timing_batch(dataset.test.x[:spec.opt_batch], spec.opt_batch)  # [opt_batch, C, H, W]
    timings = measure_all({k: a.runner for k, a in built.items()}, x, spec.latency_warmup,
                          spec.latency_repeats)
    for stage, timing in timings.items():
        built[stage].timing = timing
    return artifacts


def fastest_passed(artifacts: list[Artifact]) -> str | None:
    """The stage of the fastest artifact that passed its guardrails, by measured latency."""
    timed = [a for a in artifacts if a.verdict is not None and a.timing is not None]
    return choose_fastest([a.verdict for a in timed],
                          {a.stage: a.timing.median_ms for a in timed},
                          {a.stage: a.path.stat().st_size for a in timed})


def shipping_sections(job: Job, artifacts: list[Artifact]) -> dict[str, Any]:
    """The report sections ``artifact_choice`` and ``mixed_precision`` (None when absent)."""
    spec = job.spec.export
    timings = {a.stage: ArtifactTiming(a.path.stat().st_size, a.timing and a.timing.median_ms,
                                       a.timing and a.timing.max_ms,
                                       a.passed if a.verdict else None)
               for a in artifacts if a.status == BUILT and a.path is not None}
    worker = (f"{platform.machine()} with {os.cpu_count()} CPUs (onnxruntime); "
              f"job device {job.device}")
    choice = timings and ArtifactChoice(spec.opt_batch, spec.latency_warmup,
                                        spec.latency_repeats, worker, timings)
    search = next((a.search for a in artifacts if a.search is not None), None)
    mixed = search and MixedPrecisionSummary.from_dict(
        {**search.to_dict(), "max_candidates": spec.mixed_max_candidates,
         "max_seconds": spec.mixed_max_seconds})
    return {"artifact_choice": choice or None, "mixed_precision": mixed}


def _summary(artifact: Artifact) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": artifact.status}
    if artifact.report is not None:
        summary.update(report_summary(artifact.report), passed=artifact.passed)
    if artifact.reason:
        summary["reason"] = artifact.reason
    return summary
