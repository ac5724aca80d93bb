"""The model zoo: one name -> one architecture, built for a channel and class count."""

from __future__ import annotations

import math

import torch
from torch import nn

from compression.errors import InvalidInput
from compression.models.cifar import CifarResNet, TinyCNN
from compression.models.timm_models import TIMM_PREFIX, build_timm, is_timm, timm_problem
from compression.models.tv import TV_BUILDERS, build_tv

__all__ = ["build_model", "known_archs", "arch_problem", "count_parameters", "kaiming_init",
           "DEFAULT_IMAGE_SIZE"]

_RESNET_DEPTHS = {f"resnet{d}": d for d in (8, 14, 20, 32, 44, 56)}
DEFAULT_IMAGE_SIZE = 32  # only the tv_* stems depend on it (see compression.models.tv)


def known_archs() -> list[str]:
    """Every name ``build_model`` accepts, smallest family first."""
    return ["tiny_cnn", *_RESNET_DEPTHS, *TV_BUILDERS]


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` names no architecture ``build_model`` can build; None when it does.
    Besides ``known_archs()``, any timm model as ``timm/<name>``."""
    if is_timm(arch):
        return timm_problem(arch)
    if arch in known_archs():
        return None
    return (f"unknown architecture {arch!r:.80}; known: {', '.join(known_archs())}, or a timm "
            f"model as {TIMM_PREFIX}<name> (e.g. {TIMM_PREFIX}mobilenetv3_small_100)")


def kaiming_init(model: nn.Module) -> nn.Module:
    """He-normal convs (fan_out, ReLU), unit-gain linears, BN/GN at identity; biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            # gain 1: the head feeds a softmax, not a ReLU, so keep logits at unit scale
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        else:
            continue
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    return model


def build_model(arch: str, in_channels: int, num_classes: int, width: float = 1.0, *,
                image_size: int = DEFAULT_IMAGE_SIZE, seed: int | None = None) -> nn.Module:
    """A freshly initialised ``arch`` mapping [B, in_channels, H, W] to logits [B, num_classes].

    ``width`` multiplies channel counts. ``image_size`` (the smaller of H and W) only picks the
    stem of the ``tv_*`` archs (full resolution below 64 px, torchvision's own stem above) and
    sizes the timm models that take a fixed input size. ``timm/<name>`` models keep timm's
    own initialisation.
    ``seed``: draw the initial weights from it alone, whatever the global random state is
    (None: from the global state).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(arch, in_channels, num_classes, width, image_size=image_size)
    problems = []
    unknown = arch_problem(arch)
    if unknown:
        problems.append(unknown)
    if in_channels < 1 or num_classes < 1:
        problems.append(f"in_channels ({in_channels}) and num_classes ({num_classes}) "
                        "must be >= 1")
    if not (width > 0 and math.isfinite(width)):
        problems.append(f"width is {width}; it must be a finite number > 0")
    if problems:
        raise InvalidInput(problems, "cannot build model")
    if is_timm(arch):
        try:
            return build_timm(arch, in_channels, num_classes, width, image_size)
        except ValueError as exc:
            raise InvalidInput(str(exc), f"cannot build model {arch}") from exc
    if arch == "tiny_cnn":
        model: nn.Module = TinyCNN(in_channels, num_classes, width)
    elif arch in _RESNET_DEPTHS:
        model = CifarResNet(_RESNET_DEPTHS[arch], in_channels, num_classes, width)
    else:
        try:
            model = build_tv(arch, in_channels, num_classes, width, image_size)
        except ValueError as exc:
            raise InvalidInput(str(exc), f"cannot build model {arch}") from exc
    return kaiming_init(model)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not); shared tensors are counted once."""
    return sum(p.numel() for p in model.parameters())
