"""torchvision classifiers adapted to any channel count, class count and small inputs.

No pretrained weights are ever requested (nothing can be downloaded); the first conv is
rebuilt for ``in_channels`` and the head for ``num_classes``. Below ``SMALL_INPUT`` pixels the
stem keeps full resolution (3x3 stride-1 conv, no max-pool), as CIFAR-style ports of these
networks do: an ImageNet stem would shrink a 28x28 image to 7x7 before the first block.
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn
from torchvision.models import efficientnet as tv_efficientnet

__all__ = ["SMALL_INPUT", "TV_BUILDERS", "build_tv"]

SMALL_INPUT = 64  # images narrower than this get the full-resolution stem


def _stem_conv(old: nn.Conv2d, in_channels: int, small: bool) -> nn.Conv2d:
    """A replacement first conv with ``in_channels`` inputs, stride 1 for small inputs."""
    k, s = (3, 1) if small else (old.kernel_size[0], old.stride[0])
    return nn.Conv2d(in_channels, old.out_channels, k, stride=s, padding=k // 2,
                     bias=old.bias is not None)


def _resnet(name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, width: float, small: bool) -> nn.Module:
        if width != 1.0:
            raise ValueError(f"tv_{name} is only built at width 1 (got {width}); "
                             "use resnet8..resnet56 or tiny_cnn to scale width")
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        model.conv1 = _stem_conv(model.conv1, in_channels, small)
        if small:
            model.maxpool = nn.Identity()
        return model
    return build


def _features_stem(model: nn.Module, in_channels: int, small: bool) -> nn.Module:
    # mobilenet/efficientnet: features[0] is Conv2dNormActivation(conv, bn, act)
    model.features[0][0] = _stem_conv(model.features[0][0], in_channels, small)
    return model


def _mobilenet_v3(name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, width: float, small: bool) -> nn.Module:
        model = getattr(torchvision.models, name)(
            weights=None, num_classes=num_classes, width_mult=width)
        return _features_stem(model, in_channels, small)
    return build


def _efficientnet_b0(in_channels: int, num_classes: int, width: float, small: bool) -> nn.Module:
    # efficientnet_b0() fixes width_mult=1; the config helper is how torchvision scales it
    setting, last_channel = tv_efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=width, depth_mult=1.0)
    model = tv_efficientnet.EfficientNet(setting, 0.2, num_classes=num_classes,
                                         last_channel=last_channel)
    return _features_stem(model, in_channels, small)


TV_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "tv_resnet18": _resnet("resnet18"),
    "tv_resnet34": _resnet("resnet34"),
    "tv_resnet50": _resnet("resnet50"),
    "tv_mobilenet_v3_small": _mobilenet_v3("mobilenet_v3_small"),
    "tv_mobilenet_v3_large": _mobilenet_v3("mobilenet_v3_large"),
    "tv_efficientnet_b0": _efficientnet_b0,
}


def build_tv(arch: str, in_channels: int, num_classes: int, width: float,
             image_size: int) -> nn.Module:
    """Build ``arch`` (a key of ``TV_BUILDERS``) for [B, in_channels, S, S] inputs."""
    return TV_BUILDERS[arch](in_channels, num_classes, width, image_size < SMALL_INPUT)
