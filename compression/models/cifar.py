"""Small convolutional classifiers for low-resolution images (CIFAR / Fashion-MNIST sized).

Every model takes ``x: [B, C, H, W]`` float32 in [0, 1] and returns logits ``[B, num_classes]``.
They end in a global average pool, so any input with H, W >= 8 works. There is no
data-dependent control flow, so ``torch.export`` and ONNX export trace them as they are.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "TinyCNN", "scaled"]


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut.

    A projection (rather than zero-padded identity) shortcut keeps the graph to plain
    conv/BN ops, which every exporter and TensorRT handle without special cases.
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, stride)
        self.conv2 = _conv_bn(c_out, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, c_in, H, W] -> [B, c_out, H/stride, W/stride]."""
        out = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(out) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. (2016), section 4.2: three stages of n basic blocks.

    Stage widths are 16/32/64 times ``width``; stages 2 and 3 halve the resolution.
    """

    def __init__(self, depth: int, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(_conv_bn(in_channels, widths[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> logits [B, num_classes]."""
        h = self.blocks(self.stem(x))  # [B, 64w, H/4, W/4]
        return self.fc(self.pool(h).flatten(1))


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU layers (16/32/32 channels times ``width``) and a linear head.

    About 14k parameters at width 1 on 1x28x28 with 10 classes: the default student,
    small enough that distillation's effect on rare classes is visible.
    """

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in (16, 32, 32))
        self.features = nn.Sequential(
            _conv_bn(in_channels, c1), nn.ReLU(), nn.MaxPool2d(2),  # [B, c1, H/2, W/2]
            _conv_bn(c1, c2), nn.ReLU(), nn.MaxPool2d(2),  # [B, c2, H/4, W/4]
            _conv_bn(c2, c3), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> logits [B, num_classes]."""
        return self.fc(self.pool(self.features(x)).flatten(1))
