"""Training objectives: pure loss functions and the registry of mitigations built from a spec."""

from compression.losses.base import Loss, LossContext, LossFn, StatelessLoss
from compression.losses.core import cross_entropy, kd_kl, kd_loss
from compression.losses.group_dro import GroupDROLoss
from compression.losses.per_example import kd_per_example
from compression.losses.registry import (AUTO, Objective, Requirements, accepted_params,
                                         build_loss, check_mitigation, known_losses,
                                         requirements)

__all__ = [
    "AUTO", "GroupDROLoss", "Loss", "LossContext", "LossFn", "Objective", "Requirements",
    "StatelessLoss", "accepted_params", "build_loss", "check_mitigation", "cross_entropy",
    "kd_kl", "kd_loss", "kd_per_example", "known_losses", "requirements",
]
