"""Training: one loop for distillation and one-hot training, with teacher cache and resume."""

from compression.training.augment import augment_batch, crop_padding
from compression.training.checkpoint import CHECKPOINT_NAME, run_fingerprint
from compression.training.device import resolve_device
from compression.training.loop import TrainResult, train, uses_teacher_cache
from compression.training.schedule import lr_factor, steps_per_epoch
from compression.training.teacher_cache import TeacherCache, teacher_logits

__all__ = [
    "resolve_device", "train", "TrainResult", "TeacherCache", "teacher_logits",
    "uses_teacher_cache", "augment_batch", "crop_padding", "lr_factor", "steps_per_epoch",
    "run_fingerprint", "CHECKPOINT_NAME",
]
