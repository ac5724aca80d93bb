"""Export the student (ONNX FP32, ONNX INT8, TensorRT) and validate every artifact.

Each artifact is evaluated per subgroup on the test split and judged by the same guardrails as
the PyTorch student, and compared pair by pair with that student (max_drop_vs_student).
ONNX parity beyond tolerance fails the job; an INT8 model that does not pass where the FP32
model did is kept out of shipping (the FP32 model ships instead), and a TensorRT INT8 build
then falls back to FP16 from the FP32 model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from compression.data import Dataset
from compression.errors import StageFailed
from compression.evaluation import EvalReport
from compression.export import (OnnxModel, TrtEngine, build_engine, check_parity, export_int8,
                                export_onnx, parity, tensorrt_available)
from compression.guardrails import StageVerdict
from compression.pipeline.job import Job, report_summary

__all__ = ["Artifact", "export_artifacts", "BUILT", "SKIPPED", "FAILED"]

BUILT, SKIPPED, FAILED = "BUILT", "SKIPPED", "FAILED"
Judge = Callable[[EvalReport, str], StageVerdict]


@dataclass
class Artifact:
    stage: str  # onnx | int8 | tensorrt
    status: str  # BUILT | SKIPPED | FAILED
    path: Path | None = None
    report: EvalReport | None = None
    verdict: StageVerdict | None = None
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

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
    if spec.int8:
        artifacts.append(job.stage("quantize_int8", lambda: _int8(job, dataset, onnx, judge),
                                   _summary))
    if spec.tensorrt != "off":
        int8 = artifacts[1] if spec.int8 else None
        artifacts.append(job.stage("build_engine",
                                   lambda: _tensorrt(job, dataset, onnx, int8, judge), _summary))
    return artifacts


def _onnx(job: Job, student: nn.Module, dataset: Dataset, judge: Judge) -> Artifact:
    spec = job.spec.export
    path = export_onnx(student, dataset.input_shape, job.out_dir / "model.onnx", spec.opset,
                       spec.min_batch, spec.max_batch)
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
                           f"({', '.join(artifact.verdict.failing_subgroups)}): "
                           f"the FP32 ONNX model ships instead")
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
    artifact = _validated(job, dataset, judge, "tensorrt", TrtEngine(info.path, job.device),
                          Path(info.path), {"engine": info.to_dict()})
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
    return Artifact(stage, BUILT, path, report, judge(report, stage), details)


def _summary(artifact: Artifact) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": artifact.status}
    if artifact.report is not None:
        summary.update(report_summary(artifact.report), passed=artifact.passed)
    if artifact.reason:
        summary["reason"] = artifact.reason
    return summary
