"""``auto`` derived from the study's own runs of its candidates (``study.py --derive-auto``).

With ``selection_epochs`` 0 (the default) ``auto`` trains each recommended candidate exactly
as the study trains that method for the same seed: a run depends on its seed and its spec
alone (``pipeline.students._initial_student``, seeded batch order and augmentation), not on
what ran before it. It judges each candidate on holdout against the one-hot baseline and ships
the chosen candidate's run unchanged. So its choice can be computed from the study's runs:
each candidate's student is evaluated on holdout (the floor on the half it did not train
against, as the pipeline does) and handed, with the pipeline's own gates, to
``compression.selection.choose_mitigation``; the shipped student is then that run's, and so
are its test outcomes. The cell's ``result.json`` says ``derived_from`` which run it is.
This saves about 9 trainings a cell. ``verify_derived`` runs the cell's ``auto`` job through
the pipeline and compares its per-example test outcomes with the derived cell's
(``study.py --verify-auto digits_lt/paper 0``: identical on 2026-11-30).
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
from compression.evaluation import EvalReport, evaluate, predict_logits, restrict
from compression.losses.reference_floor import holdout_parts
from compression.losses.registry import AUTO, candidates_of
from compression.models import build_model
from compression.pipeline.run import harm_gate, holdout_gate
from compression.selection import HoldoutPart, choose_mitigation
from compression.spec import MitigationSpec, spec_to_dict

from bench._study_runs import Case, Method, StudyConfig, cell_spec, methods, run_dir

__all__ = ["candidate_methods", "derive_auto", "verify_derived"]


def candidate_methods() -> list[Method]:
    """The study's rows that are ``auto``'s recommended candidates, in its order."""
    rows = {json.dumps(spec_to_dict(m.mitigation), sort_keys=True): m for m in methods()}
    found = []
    for candidate in candidates_of(MitigationSpec(name=AUTO)):
        key = json.dumps(spec_to_dict(candidate), sort_keys=True)
        if key not in rows:
            raise ValueError(f"auto's candidate {key} is no row of the study")
        found.append(rows[key])
    return found


def _holdout_report(run: Path, spec: Any, dataset: Any, name: str) -> EvalReport:
    """The student saved in ``run`` (weights), evaluated on holdout."""
    model = build_model(spec.student.arch, dataset.input_shape[0], dataset.num_classes,
                        spec.student.width, image_size=dataset.input_shape[-1])
    model.load_state_dict(load_file(str(run / "student.safetensors")))
    logits = predict_logits(model.eval(), dataset.holdout, spec.training.eval_batch_size,
                            torch.device("cpu"))
    return evaluate(logits, dataset.holdout, dataset.class_names, dataset.group_names,
                    name=name)


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
    reference = _holdout_report(run_dir(case, one_hot, seed, config), spec, dataset, "one_hot")
    candidates = candidate_methods()
    reports = {m.label: _holdout_report(run_dir(case, m, seed, config), spec, dataset, m.label)
               for m in candidates}
    by_spec = {json.dumps(spec_to_dict(m.mitigation), sort_keys=True): m for m in candidates}

    unseen = holdout_parts(dataset.holdout)[1]

    def scored(candidate: MitigationSpec) -> EvalReport:
        return reports[by_spec[json.dumps(spec_to_dict(candidate), sort_keys=True)].label]

    part = restrict(reference, unseen)
    selection = choose_mitigation(
        [m.mitigation for m in candidates], scored, holdout_gate(spec, None, reference),
        harm_gate(spec, reference), epochs=spec.training.epochs, recommended=True,
        unseen=HoldoutPart(unseen, holdout_gate(spec, None, part), harm_gate(spec, part)))
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
