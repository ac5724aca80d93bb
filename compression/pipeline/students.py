"""Train students: the one-hot baseline, the candidates of ``auto``, and the student itself."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from compression import distributed
from compression.data import Dataset
from compression.data.preprocess import with_preprocess
from compression.data.subgroups import population_weights
from compression.diagnosis import diagnose_harm
from compression.errors import InvalidInput
from compression.evaluation import EvalReport, evaluate, predict_logits
from compression.guardrails import StageVerdict
from compression.losses import Loss, LossContext, build_loss
from compression.losses.harm_probe import ProbePlan, cross_fit
from compression.losses.reference_floor import reference_counts_by_half, with_twin
from compression.losses.registry import (candidates_of, fits_holdout_half, harm_probe_plan,
                                         other_half)
from compression.models import build_model
from compression.models.init_weights import StudentInit, apply_init, read_init, stem_sizes
from compression.models.timm_models import is_timm
from compression.pipeline.job import Job, report_summary
from compression.pipeline.teacher import TeacherView
from compression.seeds import derived_seed
from compression.selection import Selection, choose_mitigation
from compression.spec import MitigationSpec, TrainingSpec, spec_to_dict
from compression.training import TrainResult, train

__all__ = ["Baseline", "StudentRun", "Selected", "train_student", "train_one_hot",
           "one_hot_baseline",
           "select_mitigation", "evaluate_on_test", "harm_diagnosis", "load_student_init",
           "ranking_shares"]


@dataclass(frozen=True)
class StudentRun:
    model: nn.Module
    loss: Loss
    training: TrainResult


@dataclass(frozen=True)
class Baseline:
    """The same student trained on labels alone: the paper's reference for harm.
    test_predictions: [N] its predicted classes on test, for the harm diagnosis."""

    test_report: EvalReport
    holdout_report: EvalReport
    test_predictions: Tensor | None = None


def train_student(job: Job, dataset: Dataset, mitigation: MitigationSpec,
                  teacher: TeacherView | None, *, stage: str, workdir: str,
                  training: TrainingSpec | None = None) -> StudentRun:
    """Build a fresh student and train it with ``mitigation`` (resuming from ``workdir``)."""
    spec = job.spec
    training = training or spec.training
    loss = build_loss(mitigation, _loss_context(job, dataset, mitigation, teacher, training))
    model = with_preprocess(_initial_student(job, dataset, training.seed), spec.data.preprocess)
    run_key = {"mitigation": spec_to_dict(mitigation),
               "teacher_sha256": teacher.sha256 if teacher else None,
               "teacher_calibrated": bool(teacher and teacher.calibration),
               **({"student_init_sha256": job.student_init.sha256} if job.student_init else {}),
               # a checkpoint trained on other preprocessing is not resumed
               **({} if spec.data.preprocess.is_identity
                  else {"preprocess": spec_to_dict(spec.data.preprocess)})}
    result = job.stage(stage, lambda: train(
        model, dataset.train, training, loss, teacher=teacher.model if teacher else None,
        checkpoint_dir=job.out_dir / "checkpoints" / workdir, on_event=job.on_event,
        should_stop=job.should_stop, stage=stage, run_key=run_key),
        lambda r: {"epochs_run": r.epochs_run, "samples_per_s": round(r.samples_per_s, 1)})
    return StudentRun(model, loss, result)


def _loss_context(job: Job, dataset: Dataset, mitigation: MitigationSpec,
                  teacher: TeacherView | None, training: TrainingSpec) -> LossContext:
    """What the objective may know; runs its harm probe first when it asks for one."""
    plan = harm_probe_plan(mitigation)
    evidence = harm_probe(job, dataset, plan, teacher, training) if plan else None
    return LossContext.from_dataset(
        dataset, teacher.reliability if teacher else None, harm_evidence=evidence,
        teacher_holdout_logits=teacher.holdout_logits if teacher else None)


def harm_probe(job: Job, dataset: Dataset, plan: ProbePlan, teacher: TeacherView | None,
               training: TrainingSpec) -> dict[str, Any]:
    """Train the probe's pairs per fold (``compression.losses.harm_probe``); finished runs
    are resumed, so candidates of ``auto`` with the same probe share it."""
    probe_training = (training if plan.epochs == 0 else
                      dataclasses.replace(training, epochs=plan.epochs, warmup_epochs=min(
                          training.warmup_epochs, plan.epochs - 1)))
    key = "probe_" + hashlib.sha256(repr((spec_to_dict(plan.distilled), spec_to_dict(
        plan.reference), plan.folds, probe_training.epochs)).encode()).hexdigest()[:12]

    def fit(role: str, spec: MitigationSpec, split: Any, fold: int) -> nn.Module:
        part = dataclasses.replace(dataset, train=split)
        return train_student(job, part, spec, teacher if role == "distilled" else None,
                             training=probe_training, stage=f"harm_probe_{fold}_{role}",
                             workdir=f"{key}/fold{fold}_{role}").model

    def predict(model: nn.Module, split: Any) -> Tensor:
        return predict_logits(model, split, training.eval_batch_size, job.device).argmax(dim=1)

    seed = derived_seed(training.seed, "harm-probe-folds")
    evidence = job.stage("harm_probe", lambda: cross_fit(
        plan, dataset.train, dataset.holdout, dataset.num_groups, dataset.group_names, seed,
        fit, predict).to_dict(), lambda e: {"runs": e["runs_trained"], "folds": e["folds"]})
    if not plan.reference_holdout:
        return evidence
    # The one-hot reference trained as the student is the job's one-hot baseline: one run.
    same_as_baseline = plan.reference.name == "one_hot" and probe_training == job.spec.training

    def reference_on_holdout() -> dict[str, Any]:
        reference = (train_one_hot(job, dataset) if same_as_baseline else
                     train_student(job, dataset, plan.reference, None, training=probe_training,
                                   stage="harm_probe_reference", workdir=f"{key}/reference"))
        # per half: a floor trains against one, auto judges it on the other
        return reference_counts_by_half(predict(reference.model, dataset.holdout),
                                        dataset.holdout, dataset.group_names)
    return {**evidence, "reference_holdout": job.stage(
        "harm_probe_reference_holdout", reference_on_holdout,
        lambda r: {"n": [sum(g["n"] for g in half["groups"]) for half in r["halves"]]})}


def _initial_student(job: Job, dataset: Dataset, seed: int) -> nn.Module:
    """The student architecture with weights drawn from ``seed`` alone, then ``student.init``
    loaded over them (a replaced head keeps the seeded draw).

    Every model a job trains (baseline, candidates, student) starts from these same weights,
    whatever ran before it in the process, so a job replays exactly and two students differ
    only by their objective.
    """
    model = _student_arch(job, dataset, seed)
    if job.student_init is not None:
        apply_init(model, job.student_init, dataset.num_classes, job.spec.student.arch)
    return model


def _student_arch(job: Job, dataset: Dataset, seed: int) -> nn.Module:
    student = job.spec.student
    c, h, w = dataset.input_shape
    # timm models with a fixed input size (ViTs) are built for the data's own size; a tv_*
    # student for the stem its student.init file carries
    stem = job.student_init and job.student_init.stem_size
    size = ({"image_size": min(h, w)} if is_timm(student.arch) else
            {"image_size": stem} if stem else {})
    return build_model(student.arch, c, dataset.num_classes, student.width,
                       seed=derived_seed(seed, "student-init"), **size)


def load_student_init(job: Job, dataset: Dataset) -> StudentInit | None:
    """Read ``student.init`` once and check it fits the student built for this data, before
    anything trains; the report's record of it (None without one)."""
    if not job.spec.student.init:
        return None

    def load() -> StudentInit:
        weights, first = read_init(job.spec.student.init), None
        for size in stem_sizes(job.spec.student.arch):  # the student's own stem first
            job.student_init = dataclasses.replace(weights, stem_size=size)
            model = _student_arch(job, dataset, job.spec.training.seed)
            try:
                return apply_init(model, job.student_init, dataset.num_classes,
                                  job.spec.student.arch)
            except InvalidInput as exc:
                first = first or exc
        raise first
    return job.stage("load_student_init", load,
                     lambda r: {"sha256": r.sha256, "loaded": r.loaded,
                                "replaced": len(r.replaced)})


def train_one_hot(job: Job, dataset: Dataset) -> StudentRun:
    """The one-hot student trained as the job's student is: the baseline, the floors'
    reference and a one_hot job's student, trained once per job whoever asks first."""
    if job.one_hot_run is None:
        job.one_hot_run = train_student(job, dataset, MitigationSpec(name="one_hot"), None,
                                        stage="train_one_hot_baseline", workdir="one_hot")
    return job.one_hot_run


def one_hot_baseline(job: Job, dataset: Dataset) -> Baseline:
    run = train_one_hot(job, dataset)

    def evaluate_baseline() -> Baseline:
        test_report, predictions = evaluate_on_test(job, run.model, dataset, "one_hot")
        return Baseline(test_report,
                        job.evaluate(run.model, dataset, "one_hot", split=dataset.holdout),
                        predictions)
    return job.stage("evaluate_one_hot_baseline", evaluate_baseline,
                     lambda b: report_summary(b.test_report))


def evaluate_on_test(job: Job, model: nn.Module, dataset: Dataset, name: str,
                     reference: EvalReport | None = None) -> tuple[EvalReport, Tensor]:
    """``job.evaluate`` on test that also gives the predicted classes [N], so the harm
    diagnosis needs no second pass over the data."""
    logits = predict_logits(model, dataset.test, job.spec.training.eval_batch_size, job.device)
    predictions = logits.argmax(dim=1)  # first index on ties, as evaluate takes it
    return evaluate(predictions, dataset.test, dataset.class_names, dataset.group_names,
                    reference=reference, name=name), predictions


def harm_diagnosis(dataset: Dataset, student_predictions: Tensor, baseline: Baseline | None,
                   teacher: TeacherView | None) -> dict[str, Any] | None:
    """The report's ``harm_diagnosis`` section (``compression.diagnosis``); None without a
    one-hot baseline, the reference that defines harm."""
    if baseline is None or baseline.test_predictions is None:
        return None
    test, layout = dataset.test, dataset.layout  # the subgroups the report judges
    return diagnose_harm(student_predictions, baseline.test_predictions, test.y, test.group,
                         dataset.class_names, layout.names,
                         teacher.test_flow if teacher else None,
                         members=[g.cells for g in layout.groups])


@dataclass(frozen=True)
class Selected:
    """``auto``'s choice; ``student``: the chosen candidate's own run when the candidates
    trained as long as the student does (it then is the student), else None."""

    selection: Selection
    student: StudentRun | None = None


def select_mitigation(job: Job, dataset: Dataset, teacher: TeacherView | None,
                      baseline: Baseline | None,
                      gate_for: Callable[[EvalReport | None], Callable[[EvalReport], StageVerdict]],
                      harm_for: Callable[[EvalReport], Callable[[EvalReport], StageVerdict]]
                      ) -> Selected:
    """``auto``: train each candidate (for ``selection_epochs``; 0: as long as the student),
    judge it on holdout against a one-hot student trained as long (``harm_for``: harm shown;
    ``gate_for(one_hot)``: the policy), keep the most accurate that does no harm. A candidate
    fitted to a holdout half is cross-fitted: trained on the other half too and judged on
    the pair's out-of-fold answers; the student is its fit to the half it names.
    No candidates in the spec: the recommended set."""
    training = _selection_training(job.spec.training, job.spec.mitigation.selection_epochs)
    full_length = training.epochs == job.spec.training.epochs
    candidates = candidates_of(job.spec.mitigation)
    runs: dict[int | str, StudentRun] = {}

    def fit(candidate: MitigationSpec, workdir: str) -> StudentRun:
        return train_student(job, dataset, candidate, teacher, training=training,
                             stage=f"select_{workdir}", workdir=f"candidate_{workdir}")

    def answers(model: nn.Module) -> Tensor:
        return predict_logits(model, dataset.holdout, job.spec.training.eval_batch_size,
                              job.device).argmax(dim=1)

    def train_candidate(candidate: MitigationSpec, index: int | str) -> EvalReport:
        run = fit(candidate, f"{index}_{candidate.name}")
        predicted = answers(run.model)
        if fits_holdout_half(candidate):  # each half answered by the fit to the other
            twin = other_half(candidate)
            twin_answers = answers(fit(twin, f"{index}_{candidate.name}_other_half").model)
            predicted = with_twin(dataset.holdout, predicted, twin_answers,
                                  twin.params["floor_half"])
        report = evaluate(predicted, dataset.holdout, dataset.class_names, dataset.group_names,
                          name=candidate.name)
        if full_length and index != "reference":  # kept off the device until chosen
            runs[index] = dataclasses.replace(run, model=run.model.cpu())
        return report

    def choose() -> Selection:
        # A candidate trained for fewer epochs is compared with a one-hot student trained as
        # long, never with the full-length baseline: shorter training is no harm.
        start, seconds = time.perf_counter(), None
        if baseline is not None and full_length:
            one_hot = baseline.holdout_report
        else:
            one_hot = train_candidate(MitigationSpec(name="one_hot"), "reference")
            seconds = time.perf_counter() - start
        # equal candidates share (and resume) one run: the first one's index names it
        selection = choose_mitigation(
            candidates, lambda c: train_candidate(c, candidates.index(c)),
            gate_for(one_hot), harm_for(one_hot), epochs=training.epochs,
            recommended=not job.spec.mitigation.candidates,
            shares=ranking_shares(job.spec.data.subgroups.shares, dataset))
        return dataclasses.replace(selection, reference_seconds=seconds, reused=full_length)

    # Every rank trains every candidate; rank 0's choice holds, so all go on with one student.
    selection = job.stage("select_mitigation", lambda: distributed.from_primary(choose()),
                          _selection_summary)
    chosen = runs.get(candidates.index(selection.chosen))  # equal candidates share one run
    if chosen is None:
        return Selected(selection)
    return Selected(selection, dataclasses.replace(chosen, model=chosen.model.to(job.device)))


def ranking_shares(shares: dict[str, float], dataset: Dataset) -> tuple[float, ...] | None:
    """``data.subgroups.shares`` as a weight per subgroup cell for auto's ranking on holdout
    (``InvalidInput`` when they do not fit the data); None without shares."""
    holdout_counts = dataset.holdout.group.bincount(minlength=dataset.num_groups).tolist()
    return population_weights(shares, dataset.group_names, holdout_counts)


def _selection_training(training: TrainingSpec, selection_epochs: int) -> TrainingSpec:
    epochs = selection_epochs or training.epochs
    return dataclasses.replace(training, epochs=epochs,
                               warmup_epochs=min(training.warmup_epochs, epochs - 1))


def _selection_summary(selection: Selection) -> dict[str, Any]:
    return {"chosen": selection.chosen.name, "met_floors": selection.met_floors}
