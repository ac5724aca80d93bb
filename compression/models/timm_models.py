"""timm classifiers by name: ``timm/<model>`` (e.g. ``timm/mobilenetv3_small_100``).

Models are built with ``pretrained=False``: nothing is ever downloaded, the weights are the
architecture's own initialisation (drawn from torch's random state, which ``build_model``
seeds). Start from trained weights with ``student.init`` instead. ``in_chans`` and
``num_classes`` come from the data; models with a fixed input size (ViTs) are built for the
data's image size. Names are checked against timm's registry without building anything, so a
typo is refused when the job is parsed. timm is imported only when a ``timm/`` name is used.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

__all__ = ["TIMM_PREFIX", "is_timm", "timm_problem", "build_timm", "head_names"]

TIMM_PREFIX = "timm/"
_SUGGEST = 5  # close matches an unknown name lists


def is_timm(arch: str) -> bool:
    """Whether ``arch`` names a timm model (``timm/<name>``)."""
    return arch.startswith(TIMM_PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        return None
    return timm


def timm_problem(arch: str) -> str | None:
    """Why ``arch`` (``timm/<name>``) cannot be built; None when timm knows the name.

    A hub reference (``hf-hub:...``) or a path is refused: those would fetch weights or code.
    """
    name = arch[len(TIMM_PREFIX):]
    timm = _timm()
    if timm is None:
        return (f"{arch!r:.80} needs the timm package, which is not installed; "
                "pip install timm (teachers-pet pins the version it is tested with)")
    if not name or ":" in name or "/" in name:
        return (f"{arch!r:.80} is not a timm model name: give timm/<name> with a name from "
                "timm.list_models() (e.g. timm/resnet18); hub and file references are not "
                "accepted, since nothing is downloaded")
    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=_SUGGEST, cutoff=0.6)
    hint = (f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else
            "see timm.list_models() for the names, e.g. timm/mobilenetv3_small_100")
    return f"unknown timm model {name!r:.80}; {hint}"


def build_timm(arch: str, in_channels: int, num_classes: int, width: float,
               image_size: int) -> nn.Module:
    """``timm/<name>`` for [B, in_channels, S, S] -> [B, num_classes], never downloading.

    Raises ``ValueError`` for an unknown name or a width other than 1 (timm models scale by
    variant, e.g. mobilenetv3_small_050 is half of mobilenetv3_small_100).
    """
    problem = timm_problem(arch)
    if problem:
        raise ValueError(problem)
    if width != 1.0:
        raise ValueError(f"{arch} is only built at width 1 (got {width:g}); pick a narrower "
                         "timm variant instead (e.g. timm/mobilenetv3_small_050)")
    timm = _timm()
    name = arch[len(TIMM_PREFIX):]
    kwargs: dict[str, Any] = {}
    cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    if cfg is not None and cfg.fixed_input_size:  # e.g. ViT position embeddings
        kwargs["img_size"] = image_size
    try:  # timm asserts what a model cannot take, some at build, some in the forward
        model = timm.create_model(name, pretrained=False, in_chans=in_channels,
                                  num_classes=num_classes, **kwargs)
        _check_input(model, in_channels, image_size)
    except (AssertionError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{arch} cannot take {image_size}x{image_size} images with "
                         f"{in_channels} channel(s) ({reason:.200}); pick a model for this "
                         "image size or resize the images (data.preprocess)") from exc
    return model


def _check_input(model: nn.Module, in_channels: int, size: int) -> None:
    """Run one eval-mode forward on zeros, so a model that cannot take the data's images (a
    ViT's patch larger than the image) is refused now rather than when training starts.
    It draws no random numbers."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, size, size))
    finally:
        model.train(was_training)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of a timm model's classifier (distilled models have two heads);
    () when the model does not say."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(classifier, str):
        return (classifier,)
    return tuple(classifier) if isinstance(classifier, (tuple, list)) else ()
