"""``data.preprocess``: the transform from stored uint8 pixels to a model's float input.

It is part of a job's contract: the teacher, the student, evaluation and INT8 calibration all
see it, and every exported artifact carries it. The steps, in order:

1. cast to float32 and divide by 255 (values in [0, 1]);
2. ``resize``: the shorter side to ``resize`` pixels, the aspect ratio kept (the longer side is
   ``int(resize * long / short)``, as torchvision's ``Resize(int)``); bilinear, half-pixel
   centres, no antialiasing: exactly what the ONNX ``Resize`` operator computes, so the served
   graph and PyTorch agree;
3. ``crop``: a centre crop to ``crop`` x ``crop`` (offsets rounded as torchvision's
   ``CenterCrop``); it must fit inside the (resized) image;
4. ``channel_order``: images are decoded as RGB; ``bgr`` reverses the three channels for
   models trained on BGR input. A grayscale image (1 channel) stays 1 channel, whatever the
   order says: set ``data.channels: 3`` for a model that wants three;
5. ``mean`` / ``std``: per channel, on the [0, 1] scale (ImageNet's are [0.485, 0.456, 0.406]
   and [0.229, 0.224, 0.225]); ``(x - mean) / std``. Both empty: no normalisation.

The default is the identity beyond step 1 (uint8 / 255), which every job had before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compression.errors import InvalidInput
from compression.typed import choice, ranged

__all__ = ["PreprocessSpec", "preprocess_batch", "preprocess_scaled", "SamplePreprocess",
           "output_hw", "model_input_shape", "PreprocessOps", "Preprocessed", "with_preprocess",
           "unwrap", "to_pixels", "takes_pixels", "input_contract"]

_MAX_SIDE = 8192
_MEAN_RANGE = (0.0, 1.0)  # closed
_STD_RANGE = (0.0, 1.0)  # open below: a std of 0 divides by zero


@dataclass(frozen=True)
class PreprocessSpec:
    """From stored uint8 pixels to the model's input: resize (shorter side), centre crop,
    channel order, per-channel mean and std on the [0, 1] scale. Defaults: uint8 / 255 only."""

    resize: int = ranged(0, 0, _MAX_SIDE)  # the shorter side, aspect kept; 0: no resize
    crop: int = ranged(0, 0, _MAX_SIDE)  # centre crop to crop x crop; 0: no crop
    channel_order: str = choice("rgb", "bgr", default="rgb")  # no effect on 1-channel images
    mean: tuple[float, ...] = ()  # per channel, each in [0, 1]; empty: no normalisation
    std: tuple[float, ...] = ()  # per channel, each in (0, 1]; as many as mean

    def problems(self) -> list[str]:
        out = [f"mean[{i}] is {v}; it must be in [0, 1]: mean and std are on the [0, 1] "
               "scale (divide values for 0-255 pixels by 255)"
               for i, v in enumerate(self.mean) if not _MEAN_RANGE[0] <= v <= _MEAN_RANGE[1]]
        out += [f"std[{i}] is {v}; it must be in (0, 1]: mean and std are on the [0, 1] scale"
                for i, v in enumerate(self.std) if not _STD_RANGE[0] < v <= _STD_RANGE[1]]
        if len(self.mean) != len(self.std):
            out.append(f"mean has {len(self.mean)} values and std {len(self.std)}; give one "
                       "of each per channel, or neither")
        elif len(self.mean) not in (0, 1, 3):
            out.append(f"mean and std have {len(self.mean)} values; give 1 (grayscale) or 3 "
                       "(color), one per channel")
        return out

    def channel_problems(self, channels: int) -> list[str]:
        """What is wrong with this transform for images of ``channels`` channels."""
        if self.mean and len(self.mean) != channels:
            return [f"mean and std have {len(self.mean)} values but the images have "
                    f"{channels} channel{'s' if channels != 1 else ''}; give one per channel "
                    "(or set data.channels)"]
        return []

    def size_problems(self, height: int, width: int) -> list[str]:
        """What is wrong with this transform for images of ``height`` x ``width``."""
        try:
            output_hw(self, height, width)
        except InvalidInput as exc:
            return exc.problems
        return []

    @property
    def is_identity(self) -> bool:
        """True when the transform is uint8 / 255 alone (the default)."""
        return self == PreprocessSpec()

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the transform, for reports and model cards."""
        return {"steps": ["cast float32", "divide by 255"] + self._step_names(),
                "resize_shorter_side": self.resize or None, "center_crop": self.crop or None,
                "channel_order": self.channel_order, "mean": list(self.mean) or None,
                "std": list(self.std) or None}

    def _step_names(self) -> list[str]:
        steps = []
        if self.resize:
            steps.append(f"resize shorter side to {self.resize} (bilinear, no antialias)")
        if self.crop:
            steps.append(f"center crop {self.crop}x{self.crop}")
        if self.channel_order == "bgr":
            steps.append("reverse channels (RGB to BGR; 1-channel images unchanged)")
        if self.mean:
            steps.append("subtract mean, divide by std (per channel)")
        return steps


def output_hw(spec: PreprocessSpec, height: int, width: int) -> tuple[int, int]:
    """The (h, w) the transform makes of ``height`` x ``width`` images; ``InvalidInput``
    when the crop does not fit."""
    h, w = _resized_hw(spec, height, width)
    if spec.crop:
        if spec.crop > min(h, w):
            resized = f" ({h}x{w} after the resize)" if spec.resize else ""
            raise InvalidInput(f"data.preprocess.crop ({spec.crop}) does not fit images of "
                               f"{height}x{width} (HxW){resized}; use a crop of at most "
                               f"{min(h, w)} or a larger resize")
        return spec.crop, spec.crop
    return h, w


def model_input_shape(spec: PreprocessSpec,
                      input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, h, w) a model sees for images of ``input_shape`` (C, H, W); ``InvalidInput``
    listing what does not fit (the crop, the number of mean and std values)."""
    c, height, width = input_shape
    problems = [f"data.preprocess: {p}" for p in spec.channel_problems(c)]
    try:
        h, w = output_hw(spec, height, width)
    except InvalidInput as exc:
        problems += exc.problems
        h, w = height, width
    if problems:
        raise InvalidInput(problems, f"data.preprocess does not fit the {c}x{height}x{width} "
                                     "(CxHxW) images")
    return c, h, w


def _resized_hw(spec: PreprocessSpec, height: int, width: int) -> tuple[int, int]:
    if not spec.resize:
        return height, width
    if height <= width:  # torchvision's rule: the longer side truncated, never rounded up
        return spec.resize, int(spec.resize * width / height)
    return int(spec.resize * height / width), spec.resize


def preprocess_batch(x: Tensor, spec: PreprocessSpec) -> Tensor:
    """x: [B, C, H, W] uint8 -> [B, C, h, w] float32, the model's input (module docstring)."""
    _check_pixels(x)
    return preprocess_scaled(x.float().div(255), spec)


def _check_pixels(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise InvalidInput(f"preprocessing takes a uint8 batch [B, C, H, W]; got "
                           f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}")


def preprocess_scaled(x: Tensor, spec: PreprocessSpec) -> Tensor:
    """Steps 2-5 on x: [B, C, H, W] float in [0, 1] (uint8 / 255) -> [B, C, h, w]."""
    return _scaled(x, spec, *_mean_std(spec, x.dtype, x.device))


def _mean_std(spec: PreprocessSpec, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """mean, std: [1, C, 1, 1] each ([1, 0, 1, 1] without normalisation)."""
    return (torch.tensor(spec.mean, dtype=dtype, device=device).view(1, -1, 1, 1),
            torch.tensor(spec.std, dtype=dtype, device=device).view(1, -1, 1, 1))


def _scaled(x: Tensor, spec: PreprocessSpec, mean: Tensor, std: Tensor) -> Tensor:
    """Sizes are Python ints from the input's shape, so a traced graph holds them as
    constants: an exported model takes exactly the declared image size."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    h, w = output_hw(spec, height, width)
    if spec.resize and _resized_hw(spec, height, width) != (height, width):
        x = F.interpolate(x, size=_resized_hw(spec, height, width), mode="bilinear",
                          align_corners=False, antialias=False)
    if spec.crop:
        rh, rw = int(x.shape[-2]), int(x.shape[-1])
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
        x = x[..., top:top + h, left:left + w]
    channels = int(x.shape[1])
    if spec.channel_order == "bgr" and channels == 3:
        x = x.flip(1)
    if spec.mean:
        if len(spec.mean) != channels:
            raise InvalidInput(spec.channel_problems(channels)[0])
        x = (x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype)
    return x.contiguous()


class SamplePreprocess:
    """The transform for one sample, picklable for DataLoader worker processes.

    ``__call__``: [C, H, W] uint8 -> [C, h, w] float32, identical to that sample's row of
    ``preprocess_batch``."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise InvalidInput(f"a sample must be [C, H, W]; got {list(x.shape)}")
        return preprocess_batch(x.unsqueeze(0), self.spec).squeeze(0)

    def __repr__(self) -> str:
        return f"SamplePreprocess({self.spec!r})"


class PreprocessOps(nn.Module):
    """The transform as a module without weights: ``from_uint8`` takes [B, C, H, W] uint8
    (the whole transform), otherwise float in [0, 1] (steps 2-5). In an exported graph its
    operators are the ones before the model's first layer."""

    def __init__(self, spec: PreprocessSpec, from_uint8: bool = False):
        super().__init__()
        self.spec = spec
        self.from_uint8 = from_uint8
        mean, std = _mean_std(spec)  # buffers: they follow the module's device; not weights
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.from_uint8:
            _check_pixels(x)
            x = x.float().div(255)
        return _scaled(x, self.spec, self.mean, self.std)

    def extra_repr(self) -> str:
        return f"{self.spec!r}, from_uint8={self.from_uint8}"


class Preprocessed(nn.Module):
    """``model`` behind the transform: forward takes x: [B, C, H, W] float in [0, 1] (what
    the training loop and evaluation give every model) or, with ``from_uint8``, the stored
    uint8 pixels (what an exported artifact takes), and returns ``model``'s logits [B, K].

    The pipeline wraps the student (and the teacher's call) in it when a transform is
    declared, so training, evaluation and export share one implementation of the transform.
    """

    def __init__(self, model: nn.Module, spec: PreprocessSpec, from_uint8: bool = False):
        super().__init__()
        self.preprocess = PreprocessOps(spec, from_uint8)
        self.model = model

    @property
    def spec(self) -> PreprocessSpec:
        return self.preprocess.spec

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x))


def with_preprocess(model: nn.Module, spec: PreprocessSpec) -> nn.Module:
    """``model`` behind the transform; the model itself when there is none beyond / 255."""
    return model if spec.is_identity else Preprocessed(model, spec)


def unwrap(model: nn.Module) -> tuple[nn.Module, PreprocessSpec]:
    """(the model behind any ``Preprocessed`` wrapper, the transform in front of it)."""
    if isinstance(model, Preprocessed):
        return model.model, model.spec
    return model, PreprocessSpec()


def to_pixels(x: Tensor) -> Tensor:
    """x: [B, C, H, W] float, stored pixels / 255 (what evaluation gives every model) ->
    the uint8 pixels, exactly: float32 holds p / 255 to 2**-24 relative, far inside the
    rounding margin of 0.5 / 255."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def takes_pixels(spec: PreprocessSpec) -> bool:
    """Whether exported artifacts take the stored uint8 pixels: when a transform is declared,
    so a client sends images as they are and the graph runs all of it; without one they take
    float32 pixels / 255, as every artifact did before preprocessing was declared."""
    return not spec.is_identity


def input_contract(spec: PreprocessSpec, input_shape: tuple[int, int, int],
                   pixels: bool | None = None) -> dict[str, Any]:
    """What a client sends an exported artifact for images of ``input_shape`` (C, H, W), as
    JSON; ``pixels``: uint8 input (default: ``takes_pixels(spec)``)."""
    c, h, w = input_shape
    pixels = takes_pixels(spec) if pixels is None else pixels
    return {"dtype": "uint8" if pixels else "float32", "shape": ["batch", c, h, w],
            "layout": "NCHW",
            "channel_order": "gray" if c == 1 else "rgb",
            "value_range": [0, 255] if pixels else [0.0, 1.0],
            "model_input_shape": ["batch", c, *output_hw(spec, h, w)],
            "preprocess": spec.describe()}
