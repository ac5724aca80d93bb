"""Train a teacher on a job's data with one-hot labels and save it as a ``.pt2`` program.

For demos, tests and studies: production teachers usually come from elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from compression.data import load_dataset
from compression.errors import InvalidInput
from compression.evaluation import EvalReport, evaluate, predict_logits
from compression.events import Event, EventSink, StopCheck, emit_nothing, never_stop
from compression.losses import LossContext, build_loss
from compression.models import build_model, save_exported
from compression.seeds import derived_seed
from compression.spec import JobSpec, MitigationSpec, TrainingSpec
from compression.training import resolve_device, train

__all__ = ["TeacherRecipe", "train_teacher"]


@dataclass(frozen=True)
class TeacherRecipe:
    arch: str = "resnet20"
    width: float = 1.0
    epochs: int | None = None  # None: the job's training.epochs
    augment: str | None = None  # None: the job's training.augment


def train_teacher(job: JobSpec, recipe: TeacherRecipe, out_path: Path,
                  on_event: EventSink = emit_nothing,
                  should_stop: StopCheck = never_stop) -> EvalReport:
    """Train ``recipe.arch`` on ``job.data`` (cross-entropy only), save it, return its test report."""
    training = _teacher_training(job.training, recipe)
    device = resolve_device(training.device)
    on_event(Event("stage_started", "load_data"))
    dataset = load_dataset(job.data)
    model = build_model(recipe.arch, dataset.input_shape[0], dataset.num_classes, recipe.width,
                        seed=derived_seed(training.seed, "teacher-init"))
    loss = build_loss(MitigationSpec(name="one_hot"), LossContext.from_dataset(dataset))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    train(model, dataset.train, training, loss, stage="train_teacher",
          checkpoint_dir=out_path.with_name(out_path.name + ".checkpoints"),
          on_event=on_event, should_stop=should_stop)
    logits = predict_logits(model, dataset.test, training.eval_batch_size, device)
    save_exported(model.cpu(), dataset.input_shape, out_path)
    return evaluate(logits, dataset.test, dataset.class_names, dataset.group_names,
                    name="teacher")


def _teacher_training(training: TrainingSpec, recipe: TeacherRecipe) -> TrainingSpec:
    changes = {"teacher_cache": "off"}
    if recipe.epochs is not None:
        changes["epochs"] = recipe.epochs
    if recipe.augment is not None:
        changes["augment"] = recipe.augment
    training = dataclasses.replace(training, **changes)
    if training.problems():
        raise InvalidInput(training.problems(), "invalid teacher training settings")
    return training
