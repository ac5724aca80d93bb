"""The model zoo, teacher loading and checkpoint I/O.

Models map float32 images x: [B, C, H, W] in [0, 1] to logits [B, num_classes].
"""

from compression.models.checkpoint import save_exported, save_weights, sha256_file
from compression.models.teacher import Teacher, load_teacher
from compression.models.zoo import build_model, count_parameters, known_archs

__all__ = [
    "build_model", "known_archs", "count_parameters", "Teacher", "load_teacher",
    "save_exported", "save_weights", "sha256_file",
]
