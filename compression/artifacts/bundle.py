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
from compression.evaluation import write_json
from compression.guardrails import StageVerdict
from compression.models import sha256_file
from compression.report import FileRecord, JobReport

__all__ = ["write_bundle", "choose_shipped", "MODEL_CARD", "CHART", "TRITON_DIR", "REPORT"]

MODEL_CARD, CHART, TRITON_DIR, REPORT = "model_card.md", "guardrails.png", "triton", "report.json"


def choose_shipped(verdicts: Sequence[StageVerdict], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` (most preferred first) whose verdict passed, else None."""
    passed = {v.stage for v in verdicts if v.passed}
    return next((c for c in candidates if c in passed), None)


def write_bundle(out_dir: str | Path, report: JobReport, files: Mapping[str, Path], *,
                 reason: str | None = None, model_name: str | None = None,
                 io_model: Path | None = None) -> JobReport:
    """Write the bundle into ``out_dir`` and return the report as written to report.json.

    report: the job report with every section but ``files`` and ``presentation_errors``,
        which the bundle fills in (SHA-256 and size of every bundle file; the views that
        could not be drawn and why). Evaluations without a verdict (teacher, one-hot
        student) are shown as references.
    files: artifact name -> path inside ``out_dir``. ``report.shipped`` names one of them.
        Triton serves .onnx, .plan and .engine files; any other shipped file (a .pt2 when
        nothing was exported) ships without a triton/ folder.
    reason: why ``shipped`` was chosen, for the card (default: it passed every check).
    model_name: the Triton model name (default: the job name). io_model: the ONNX model a
        shipped TensorRT engine was built from (default: the first .onnx in ``files``).
    A REJECTED report (nothing shipped) gets no triton/ folder (a stale one is removed) and
    a card that says so.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    relative = _relative_files(out_dir, files)
    shipped = report.shipped
    if shipped is not None and shipped not in files:
        raise ValueError(f"shipped artifact {shipped!r} needs a file (files: {list(files)})")
    name = model_name or report.spec.name
    bundle = list(relative.values())
    servable = shipped is not None and Path(files[shipped]).suffix.lower() in PLATFORMS
    shutil.rmtree(out_dir / TRITON_DIR, ignore_errors=True)  # never leave a stale one
    if servable:
        bundle += _write_triton(out_dir, name, files[shipped], report,
                                io_model or _first_onnx(files))
    errors: dict[str, str] = {}
    if _presented(CHART, errors, lambda: plot_guardrails(out_dir / CHART, report)):
        bundle.append(CHART)
    if _presented(MODEL_CARD, errors, lambda: _write_text(out_dir / MODEL_CARD, render_model_card(
            report, reason=reason, shipped_file=relative.get(shipped) if shipped else None,
            triton_dir=f"{TRITON_DIR}/{name}" if servable else None))):
        bundle.append(MODEL_CARD)
    # the verdicts stand when a view fails; the report says which view is missing and why
    written = report.with_sections(
        presentation_errors=errors,
        files={p: FileRecord(sha256_file(out_dir / p), (out_dir / p).stat().st_size)
               for p in sorted(set(bundle))})
    write_json(out_dir / REPORT, written.to_dict())
    return written


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


def _first_onnx(files: Mapping[str, Path]) -> Path | None:
    return next((Path(p) for p in files.values() if Path(p).suffix.lower() == ".onnx"), None)


def _write_triton(out_dir: Path, name: str, artifact: Path, report: JobReport,
                  io_model: Path | None) -> list[str]:
    """Build triton/ beside the bundle, then move it in whole; return its files (relative)."""
    tmp, final = out_dir / f".{TRITON_DIR}.tmp", out_dir / TRITON_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_triton_model(tmp, name, Path(artifact), io_model=io_model,
                           max_batch_size=report.spec.export.max_batch,
                           labels=list(report.data.class_names))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p.relative_to(out_dir).as_posix() for p in final.rglob("*") if p.is_file())


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

