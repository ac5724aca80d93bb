"""Harmed-slice discovery in a job: which models are compared, on which representation.

The student is compared with the one-hot baseline when the job trained one (the paper's
notion of harm), else with the teacher; the examples are represented by the teacher's
penultimate features when they can be read (a module or a ``.pt2`` teacher), else by the
student's (``guardrails.slice_discovery.representation`` overrides). Candidates are found
on holdout and judged on test (``compression.guardrails.slices``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from torch import Tensor, nn

from compression.data import Dataset, Split
from compression.evaluation import EvalReport, predict_logits
from compression.evaluation.features import feature_module, predict_with_features
from compression.guardrails import StageVerdict
from compression.guardrails.slices import (SliceComparison, SliceDiscovery, SliceExamples,
                                           discover_slices)
from compression.pipeline.exports import Artifact
from compression.pipeline.job import Job
from compression.pipeline.students import Baseline
from compression.pipeline.teacher import TeacherView
from compression.seeds import derived_seed

__all__ = ["SLICE_GRID", "discover_student_slices", "discover_artifact_slices", "with_slices",
           "slice_section", "slices_summary"]

SLICE_GRID = "slices.png"
_META_KEYS = ("attribute",)  # subgroup keys that are metadata, not a function of the class


def discover_student_slices(job: Job, dataset: Dataset, student: nn.Module,
                            student_report: EvalReport, teacher: TeacherView | None,
                            baseline: Baseline | None) -> SliceComparison | None:
    """Discovery for the student against its reference; None when it is off, there is no
    reference, or a split is too small to cluster."""
    settings = job.spec.guardrails.slice_discovery
    reference = _reference(teacher, baseline)
    if not settings.enabled or reference is None:
        return None
    ref_name, ref_holdout, ref_test = reference
    holdout, test = dataset.holdout, dataset.test
    if len(holdout) < 2 * settings.max_slices or len(test) == 0:
        job.log("discover_slices", f"holdout has {len(holdout)} examples: too few to cluster")
        return None
    holdout_logits, student_holdout = _features(job, student, holdout)
    representation, feats_h, feats_t = _representation(job, dataset, teacher, student,
                                                       student_holdout)
    meta = any(k in _META_KEYS for k in job.spec.data.subgroups.keys)
    examples = [SliceExamples(feats, ref.outcomes.hit, cand_hit, split.y.cpu(),
                              split.group.cpu() if meta else None)
                for feats, ref, cand_hit, split in (
                    (feats_h, ref_holdout, holdout_logits.argmax(1) == holdout.y.cpu(), holdout),
                    (feats_t, ref_test, student_report.outcomes.hit, test))]
    return discover_slices(
        *examples, stage="student", reference=ref_name, representation=representation,
        settings=settings, policy=job.spec.guardrails, class_names=dataset.class_names,
        num_meta=dataset.num_groups if meta else 0,
        seed=derived_seed(job.spec.training.seed, "slice-discovery"))


def discover_artifact_slices(job: Job, dataset: Dataset, student: nn.Module,
                             teacher: TeacherView | None,
                             artifacts: Sequence[Artifact]) -> list[SliceComparison]:
    """Every other built artifact (INT8, mixed precision, TensorRT) against the FP32 ONNX
    model it came from. Under the discovered_slices rule a FAIL keeps that artifact from
    shipping, as a broken floor does."""
    settings = job.spec.guardrails.slice_discovery
    built = [a for a in artifacts if a.report is not None and a.runner is not None]
    fp32 = next((a for a in built if a.stage == "onnx"), None)
    others = [a for a in built if a is not fp32]
    if not settings.enabled or fp32 is None or not others \
            or len(dataset.holdout) < 2 * settings.max_slices or len(dataset.test) == 0:
        return []
    _, student_holdout = _features(job, student, dataset.holdout)
    representation, feats_h, feats_t = _representation(job, dataset, teacher, student,
                                                       student_holdout)
    reference = _holdout_hits(job, fp32.runner, dataset)
    out = []
    for artifact in others:
        examples = (
            SliceExamples(feats_h, reference, _holdout_hits(job, artifact.runner, dataset),
                          dataset.holdout.y.cpu()),
            SliceExamples(feats_t, fp32.report.outcomes.hit, artifact.report.outcomes.hit,
                          dataset.test.y.cpu()))
        comparison = discover_slices(
            *examples, stage=artifact.stage, reference=fp32.stage,
            representation=representation, settings=settings, policy=job.spec.guardrails,
            class_names=dataset.class_names,
            seed=derived_seed(job.spec.training.seed, f"slice-discovery/{artifact.stage}"))
        _judge_artifact(artifact, fp32, comparison)
        out.append(comparison)
    return out


def _holdout_hits(job: Job, runner: Any, dataset: Dataset) -> Tensor:
    logits = predict_logits(runner, dataset.holdout, job.spec.training.eval_batch_size,
                            job.device)
    return logits.argmax(1) == dataset.holdout.y.cpu()


def _judge_artifact(artifact: Artifact, fp32: Artifact, comparison: SliceComparison) -> None:
    if not comparison.blocking or artifact.verdict is None:
        return
    artifact.verdict = with_slices(artifact.verdict, comparison)
    if fp32.passed and not artifact.passed and comparison.harmed:
        names = ", ".join(s.name for s in comparison.harmed)
        note = (f"{artifact.stage} is worse than the FP32 ONNX model on discovered slices "
                f"({names}): it does not ship")
        artifact.reason = f"{artifact.reason}; {note}" if artifact.reason else note


def with_slices(verdict: StageVerdict, comparison: SliceComparison | None) -> StageVerdict:
    """The stage's verdict with the slice checks added when the ``discovered_slices`` rule
    is set: a FAIL blocks like one on a named subgroup; an INSUFFICIENT_EVIDENCE does not
    (the slices are advisory subgroups), since a slice nobody named cannot be asked to be
    shown safe. The slices are their own family: their thresholds are already set."""
    if comparison is None or not comparison.blocking or not comparison.slices:
        return verdict
    names = tuple(s.name for s in comparison.slices)
    return dataclasses.replace(
        verdict, checks=verdict.checks + tuple(s.check for s in comparison.slices),
        advisory_subgroups=verdict.advisory_subgroups + names)


def slice_section(job: Job, dataset: Dataset, *found: SliceComparison | None,
                  ) -> SliceDiscovery | None:
    """The report section, with a grid of example images of the harmed slices drawn into
    the job's folder when there are any and the test images are in memory."""
    comparisons = tuple(c for c in found if c is not None)
    if not comparisons:
        return None
    grid = None
    images = getattr(dataset.test, "x", None)
    if any(c.harmed for c in comparisons) and isinstance(images, Tensor):
        from compression.artifacts.card import draw_slice_grid  # matplotlib, only when drawn
        draw_slice_grid(job.out_dir / SLICE_GRID, comparisons, images)
        grid = SLICE_GRID
    return SliceDiscovery(comparisons, grid=grid)


def slices_summary(comparison: SliceComparison | None) -> dict[str, Any]:
    if comparison is None:
        return {"ran": False}
    return {"reference": comparison.reference, "representation": comparison.representation,
            "judged": comparison.family_size, "harmed": [s.name for s in comparison.harmed]}


def _reference(teacher: TeacherView | None, baseline: Baseline | None,
               ) -> tuple[str, EvalReport, EvalReport] | None:
    if baseline is not None:
        return "one_hot", baseline.holdout_report, baseline.test_report
    if teacher is not None:
        return "teacher", teacher.holdout_report, teacher.test_report
    return None


def _features(job: Job, model: Any, split: Split) -> tuple[Tensor, Tensor | None]:
    return predict_with_features(model, split, job.spec.training.eval_batch_size, job.device)


def _representation(job: Job, dataset: Dataset, teacher: TeacherView | None,
                    student: nn.Module, student_holdout: Tensor | None,
                    ) -> tuple[str, Tensor, Tensor]:
    """(whose features, holdout features [N_h, D], test features [N_t, D])."""
    wanted = job.spec.guardrails.slice_discovery.representation
    raw = _raw_teacher(teacher)
    if wanted != "student" and raw is not None and feature_module(raw) is not None:
        return ("teacher", _features(job, raw, dataset.holdout)[1],
                _features(job, raw, dataset.test)[1])
    if wanted == "teacher":
        job.log("discover_slices", "the teacher exposes no penultimate layer (an ONNX or "
                                   "TorchScript teacher): clustering the student's features")
    return "student", student_holdout, _features(job, student, dataset.test)[1]


def _raw_teacher(teacher: TeacherView | None) -> Any:
    """The loaded teacher, beneath a calibration wrapper: calibration rescales logits and
    leaves the features as they are."""
    if teacher is None:
        return None
    return getattr(teacher.model, "teacher", teacher.model)
