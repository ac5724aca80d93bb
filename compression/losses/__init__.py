"""Training objectives: pure loss functions and the registry of mitigations built from a spec."""

from compression.losses.base import Loss, LossContext, LossFn, StatelessLoss
from compression.losses.core import cross_entropy, kd_kl, kd_loss
from compression.losses.registry import Objective, accepted_params, build_loss, known_losses

__all__ = [
    "Loss", "LossContext", "LossFn", "Objective", "StatelessLoss", "accepted_params",
    "build_loss", "cross_entropy", "kd_kl", "kd_loss", "known_losses",
]
