"""``auto`` derived from the study's own runs of its candidates (``study.py --derive-auto``).

With ``selection_epochs`` 0 (the default) ``auto`` trains each recommended candidate exactly
as the study trains that method for the same seed: a run depends on its seed and its spec
alone (``pipeline.students._initial_student``, seeded batch order and augmentation), not on
what ran before it. It judges each candidate on holdout against the one-hot baseline and ships
the chosen candidate's run unchanged. So its choice can be computed from the study's runs:
each candidate's student is evaluated on holdout (the floor out of fold, from its runs fitted
to each half, as the pipeline cross-fits it) and handed, with the pipeline's own gates, to
``compression.selection.choose_mitigation``; the shipped student is then that run's, and so
are its test outcomes. The cell's ``result.json`` says ``derived_from`` which run it is.
This saves about 10 trainings a cell. ``verify_derived`` runs the cell's ``auto`` job through
the pipeline and compares its per-example test outcomes with the derived cell's
(``study.py --verify-auto``: identical for digits_lt/paper seeds 0 and 2, and for
fmnist_attr/teacher_never_saw_blur seed 0 with the 24-epoch students of the previous settings,
on 2026-12-01; for fmnist_attr/teacher_never_saw_blur seed 2, ranked at the training mix's
``subgroups.shares``, the same day).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from compression.data import load_dataset
from compression.evaluation import EvalReport, evaluate, predict_logits
from compression.losses.reference_floor import with_twin
from compression.losses.registry import AUTO, candidates_of, fits_holdout_half, other_half
from compression.models import build_model
from compression.pipeline.run import harm_gate, holdout_gate
from compression.pipeline.students import ranking_shares
from compression.selection import choose_mitigation
from compression.spec import MitigationSpec, spec_to_dict

from bench._study_runs import Case, Method, StudyConfig, cell_spec, methods, run_dir

__all__ = ["candidate_methods", "derive_auto", "verify_derived"]


def _row(spec: MitigationSpec) -> Method:
    rows = {_key(m.mitigation): m for m in methods()}
    if _key(spec) not in rows:
        raise ValueError(f"auto's candidate {_key(spec)} is no row of the study")
    return rows[_key(spec)]


def _key(spec: MitigationSpec) -> str:
    return json.dumps(spec_to_dict(spec), sort_keys=True)


def candidate_methods() -> list[Method]:
    """The study's rows that are ``auto``'s recommended candidates, in its order."""
    return [_row(c) for c in candidates_of(MitigationSpec(name=AUTO))]


def _holdout_answers(run: Path, spec: Any, dataset: Any) -> torch.Tensor:
    """[N] classes the student saved in ``run`` (weights) predicts on holdout."""
    model = build_model(spec.student.arch, dataset.input_shape[0], dataset.num_classes,
                        spec.student.width, image_size=dataset.input_shape[-1])
    model.load_state_dict(load_file(str(run / "student.safetensors")))
    return predict_logits(model.eval(), dataset.holdout, spec.training.eval_batch_size,
                          torch.device("cpu")).argmax(dim=1)


def _holdout_report(case: Case, method: Method, seed: int, config: StudyConfig, spec: Any,
                    dataset: Any) -> EvalReport:
    """The row's student on holdout; a floor's out of fold, as the pipeline cross-fits it."""
    answers = _holdout_answers(run_dir(case, method, seed, config), spec, dataset)
    if fits_holdout_half(method.mitigation):
        twin = _row(other_half(method.mitigation))
        twin_answers = _holdout_answers(run_dir(case, twin, seed, config), spec, dataset)
        answers = with_twin(dataset.holdout, answers, twin_answers,
                            twin.mitigation.params["floor_half"])
    return evaluate(answers, dataset.holdout, dataset.class_names, dataset.group_names,
                    name=method.label)


def derive_auto(case: Case, method: Method, seed: int,
                config: StudyConfig) -> tuple[dict[str, Any], bool]:
    """The ``auto`` cell of (case, seed) from its candidates' runs, which must exist; written
    to the cell's folder like a run. Returns (summary, whether it was reused)."""
    out = run_dir(case, method, seed, config)
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text()), True
    spec = cell_spec(case, method, seed, config)
    dataset = load_dataset(spec.data)
    one_hot = next(m for m in methods() if m.label == "one_hot")
    reference = _holdout_report(case, one_hot, seed, config, spec, dataset)
    candidates = candidate_methods()
    reports = {_key(m.mitigation): _holdout_report(case, m, seed, config, spec, dataset)
               for m in candidates}
    selection = choose_mitigation(
        [m.mitigation for m in candidates], lambda c: reports[_key(c)],
        holdout_gate(spec, None, reference), harm_gate(spec, reference),
        epochs=spec.training.epochs, recommended=True,
        shares=ranking_shares(spec.data.subgroups.shares, dataset))
    selection = dataclasses.replace(selection, reused=True)  # the chosen run is the student
    chosen = run_dir(case, candidates[selection.index], seed, config)
    summary = json.loads((chosen / "result.json").read_text())
    # its training is the chosen run's, counted there: the wall and CPU sums count it once
    summary.update(case=case.name, method=method.label, mitigation=spec_to_dict(method.mitigation),
                   selection=selection.to_dict(), derived_from=str(chosen), seconds=0.0,
                   cpu_seconds=0.0)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chosen / "outcomes.npz", out / "outcomes.npz")
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    return summary, False


def verify_derived(case: Case, method: Method, seed: int, config: StudyConfig,
                   scratch: Path) -> bool:
    """Whether a pipeline run of the cell's ``auto`` job (written under ``scratch``) answers
    every test example as the derived cell does; the derived cell must exist."""
    import numpy as np

    from compression.pipeline import run

    derived = np.load(run_dir(case, method, seed, config) / "outcomes.npz")["hit"]
    spec = dataclasses.replace(cell_spec(case, method, seed, config), output_dir=str(scratch))
    trained = run(spec).reports["student"].outcomes.hit.numpy()
    return bool(np.array_equal(trained, derived))
