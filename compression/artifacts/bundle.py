"""The job bundle: model card, guardrail chart, Triton repository, hashes, then report.json.

report.json is written last and atomically: it is the bundle's commit record, so a reader
that finds it can trust every file it lists and every hash in it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from compression.artifacts.card import render_model_card
from compression.artifacts.chart import plot_guardrails
from compression.artifacts.triton import PLATFORMS, write_triton_model
from compression.evaluation import EvalReport, write_json
from compression.guardrails import StageVerdict, first_failing_stage, summarize
from compression.models import sha256_file
from compression.spec import GuardrailSpec, spec_to_dict

__all__ = ["write_bundle", "choose_shipped", "MODEL_CARD", "CHART", "TRITON_DIR", "REPORT"]

MODEL_CARD, CHART, TRITON_DIR, REPORT = "model_card.md", "guardrails.png", "triton", "report.json"


def choose_shipped(verdicts: Sequence[StageVerdict], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` (most preferred first) whose verdict passed, else None."""
    passed = {v.stage for v in verdicts if v.passed}
    return next((c for c in candidates if c in passed), None)


def write_bundle(out_dir: str | Path, *, report: dict[str, Any],
                 stage_reports: Mapping[str, EvalReport], verdicts: Sequence[StageVerdict],
                 policy: GuardrailSpec, shipped: str | None, files: Mapping[str, Path],
                 reason: str | None = None, model_name: str | None = None,
                 io_model: Path | None = None) -> dict[str, Any]:
    """Write the bundle into ``out_dir`` and return the report as written to report.json.

    report: the job report so far (spec, data, training...); it gains ``guardrails``,
        ``shipped``, ``deployable`` and ``files`` (SHA-256 and size of every bundle file).
    stage_reports: every evaluation by name; those without a verdict (teacher, one-hot
        student) are shown as references.
    files: artifact name -> path inside ``out_dir``. ``shipped`` names one of them and the
        verdict of the same stage. Triton serves .onnx, .plan and .engine files; any other
        shipped file (a .pt2 when nothing was exported) ships without a triton/ folder.
    reason: why ``shipped`` was chosen, for the card (default: it passed every check).
    model_name: the Triton model name (default: the job name). io_model: the ONNX model a
        shipped TensorRT engine was built from (default: the first .onnx in ``files``).
    ``deployable`` is true only when ``shipped`` is set and its verdict passed; otherwise
    the bundle is REJECTED: no triton/ folder (a stale one is removed) and the card says so.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    relative = _relative_files(out_dir, files)
    by_stage = {v.stage: v for v in verdicts}
    _check_shipped(shipped, files, by_stage)
    deployable = shipped is not None and by_stage[shipped].passed
    name = model_name or (report.get("spec") or {}).get("name") or "model"
    bundle = list(relative.values())
    servable = deployable and Path(files[shipped]).suffix.lower() in PLATFORMS
    shutil.rmtree(out_dir / TRITON_DIR, ignore_errors=True)  # never leave a stale one
    if servable:
        bundle += _write_triton(out_dir, name, files[shipped], report,
                                io_model or _first_onnx(files))
    references = {k: r for k, r in stage_reports.items() if k not in by_stage}
    errors: dict[str, str] = {}
    if _presented(CHART, errors, lambda: plot_guardrails(out_dir / CHART, verdicts, references)):
        bundle.append(CHART)
    if _presented(MODEL_CARD, errors, lambda: _write_text(out_dir / MODEL_CARD, render_model_card(
            report, stage_reports, verdicts, policy, shipped=shipped, deployable=deployable,
            reason=reason, shipped_file=relative.get(shipped) if shipped else None,
            triton_dir=f"{TRITON_DIR}/{name}" if servable else None))):
        bundle.append(MODEL_CARD)
    out = _final_report(report, stage_reports, verdicts, policy, deployable, shipped)
    if errors:  # the verdicts stand; the report says which view of them is missing and why
        out["presentation_errors"] = errors
    out["files"] = {p: {"sha256": sha256_file(out_dir / p), "bytes": (out_dir / p).stat().st_size}
                    for p in sorted(set(bundle))}
    write_json(out_dir / REPORT, out)
    return out


def _presented(name: str, errors: dict[str, str], write: Callable[[], Any]) -> bool:
    """Run ``write``; on any failure record it under ``name`` instead of losing the report."""
    try:
        write()
        return True
    except Exception as exc:  # a drawing or templating bug must not cost the job its verdicts
        errors[name] = f"{type(exc).__name__}: {exc}"[:500]
        return False


def _relative_files(out_dir: Path, files: Mapping[str, Path]) -> dict[str, str]:
    """artifact name -> path relative to out_dir (POSIX); each must be a file inside it."""
    root, out = out_dir.resolve(), {}
    for key, path in files.items():
        full = Path(path).resolve()
        if not full.is_file() or not full.is_relative_to(root):
            raise ValueError(f"bundle file {key!r} is {path}, which is not a file inside "
                             f"{out_dir}; write artifacts into the job's output folder")
        out[key] = full.relative_to(root).as_posix()
    return out


def _check_shipped(shipped: str | None, files: Mapping[str, Path],
                   by_stage: Mapping[str, StageVerdict]) -> None:
    if shipped is None:
        return
    if shipped not in files or shipped not in by_stage:
        raise ValueError(f"shipped artifact {shipped!r} needs both a file (files: {list(files)})"
                         f" and a verdict (stages: {list(by_stage)})")


def _first_onnx(files: Mapping[str, Path]) -> Path | None:
    return next((Path(p) for p in files.values() if Path(p).suffix.lower() == ".onnx"), None)


def _write_triton(out_dir: Path, name: str, artifact: Path, report: Mapping[str, Any],
                  io_model: Path | None) -> list[str]:
    """Build triton/ beside the bundle, then move it in whole; return its files (relative)."""
    spec, data = report.get("spec") or {}, report.get("data") or {}
    tmp, final = out_dir / f".{TRITON_DIR}.tmp", out_dir / TRITON_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_triton_model(tmp, name, Path(artifact), io_model=io_model,
                           max_batch_size=int((spec.get("export") or {}).get("max_batch", 256)),
                           labels=data.get("class_names"))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p.relative_to(out_dir).as_posix() for p in final.rglob("*") if p.is_file())


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _final_report(report: Mapping[str, Any], stage_reports: Mapping[str, EvalReport],
                  verdicts: Sequence[StageVerdict], policy: GuardrailSpec, deployable: bool,
                  shipped: str | None) -> dict[str, Any]:
    out = dict(report)
    evaluations = dict(out.get("evaluations") or {})
    evaluations.update({k: r.to_dict() for k, r in stage_reports.items() if k not in evaluations})
    out["evaluations"] = evaluations
    out["guardrails"] = {"policy": spec_to_dict(policy),
                         "first_failing_stage": first_failing_stage(verdicts),
                         "summary": summarize(verdicts),
                         "stages": [v.to_dict() for v in verdicts]}
    out["shipped"] = shipped if deployable else None
    out["deployable"] = deployable
    return out
