"""Static INT8 quantization (QDQ) of an exported ONNX model with a subgroup-stratified
calibration set.

Calibration images come from the HOLDOUT split. The test split must stay unseen by every
choice that shapes the shipped artifact (calibration ranges included), or the guardrail check
on it is no longer an honest estimate; training images are the ones the model has fitted, so
their activation ranges can be narrower than on new data. The draw is stratified by subgroup
because a random draw from a long-tailed holdout may give a rare subgroup no images at all,
and then nothing stops the INT8 ranges from clipping the features only that subgroup uses.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor

from compression.data.dataset import Split
from compression.errors import InvalidInput, StageFailed
from compression.export.onnx_export import INPUT_NAME, preprocessing_nodes

__all__ = ["TARGETS", "CalibrationReader", "Int8Export", "calibration_set", "count_ops",
           "export_int8", "quantize_int8"]

STAGE = "quantize"

# Both use signed INT8 weights, per output channel, and QDQ format (onnxruntime's CPU kernels
# and TensorRT both fuse Q/DQ pairs into integer kernels).
# "cpu" follows onnxruntime's advice for x86 (measured on an AVX2 EPYC, Fashion-MNIST-LT
# students): unsigned activations with a zero point, the operand order its u8 x s8 kernels
# take directly (signed activations made resnet8 1.9x slower at batch 64), and 7-bit weights
# (reduce_range), because CPUs without VNNI sum u8 x s8 pairs in saturating 16-bit lanes:
# full-range weights cost one tiny_cnn class 7 accuracy points; with 7-bit weights no class
# lost more than 0.3.
# "tensorrt": TensorRT takes only symmetric signed INT8 (zero point 0); it has no such lanes.
TARGETS: dict[str, dict[str, Any]] = {
    "cpu": {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
            "reduce_range": True},
    "tensorrt": {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                 "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True}},
}


def calibration_set(split: Split, per_group: int, seed: int = 0,
                    group_names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, int]]:
    """Up to ``per_group`` images of every subgroup of ``split``, without replacement.

    Pass the holdout split (see the module docstring). A subgroup with fewer images gives all
    it has. Each group's draw is seeded by (seed, group id) alone, so it does not change
    when other groups change. Returns x: [M, C, H, W] uint8, groups in id order, and the
    composition {group name (or id as a string): images drawn}, listing empty groups as 0.
    """
    if per_group < 1:
        raise InvalidInput(f"calibration_per_group is {per_group}; it must be >= 1")
    group = split.group.detach().cpu().long()
    num_groups = len(group_names) if group_names is not None else (
        int(group.max()) + 1 if len(group) else 0)
    if len(group) and (int(group.min()) < 0 or int(group.max()) >= num_groups):
        raise InvalidInput(f"group ids span [{int(group.min())}, {int(group.max())}] but "
                           f"{num_groups} group names were given")
    names = [str(n) for n in group_names] if group_names is not None else [
        str(g) for g in range(num_groups)]
    picked, composition = [], {}
    for g in range(num_groups):
        members = torch.nonzero(group == g).flatten().numpy()  # [n_g]
        rng = np.random.default_rng([seed % 2**64, g])
        take = np.sort(rng.permutation(members)[:per_group])
        picked.append(torch.from_numpy(take))
        composition[names[g]] = len(take)
    idx = torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)
    if len(idx) == 0:
        raise InvalidInput("the calibration split has no images; INT8 calibration draws from "
                           "the holdout split: give data.holdout_path or a holdout_fraction "
                           "that leaves images in it")
    return split.x[idx], composition


class CalibrationReader(CalibrationDataReader):
    """Feeds uint8 images x: [M, C, H, W] to the calibrator as float32 [b, C, H, W] in [0, 1],
    or as they are (``pixels``) to a model that takes uint8 pixels and preprocesses them."""

    def __init__(self, x: Tensor, batch_size: int = 32, input_name: str = INPUT_NAME,
                 pixels: bool = False):
        self.x = x
        self.batch_size = batch_size
        self.input_name = input_name
        self.pixels = pixels
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.x):
            return None
        batch = self.x[self.start:self.start + self.batch_size]
        self.start += self.batch_size
        return {self.input_name: batch.numpy() if self.pixels else (batch.float() / 255).numpy()}

    def rewind(self) -> None:
        self.start = 0


def quantize_int8(onnx_path: str | Path, out_path: str | Path, calibration_x: Tensor, *,
                  target: str = "cpu", per_channel: bool = True, batch_size: int = 32,
                  nodes_to_exclude: Sequence[str] = ()) -> Path:
    """Write a static INT8 QDQ copy of the FP32 model ``onnx_path`` to ``out_path``.

    calibration_x: [M, C, H, W] uint8 (from ``calibration_set``). ``target`` picks the INT8
    scheme (see ``TARGETS``). onnxruntime's quantization pre-processing runs first (shape
    inference and graph fusions such as Conv+BatchNorm, so ranges are calibrated on the graph
    that will run). ``nodes_to_exclude``: names of nodes of that pre-processed graph to keep
    in float (``compression.export.mixed_precision``). Raises ``StageFailed("quantize", ...)``
    when quantization fails or leaves no QuantizeLinear node.
    """
    if target not in TARGETS:
        raise InvalidInput(f"INT8 target {target!r} is not one of {', '.join(TARGETS)}")
    if len(calibration_x) == 0:
        raise InvalidInput("INT8 calibration needs at least one image")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(f"{out_path.stem}.tmp{out_path.suffix}")
    try:
        with tempfile.TemporaryDirectory(prefix="tpet-quant-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(onnx_path), str(prepared))
            in_float = preprocessing_nodes(prepared)  # a uint8 model's preprocessing
            options = {**TARGETS[target]}
            options["extra_options"] = {**options.get("extra_options", {}),
                                        "OpTypesToExcludeOutputQuantization":
                                            _output_op_types(prepared)}
            quantize_static(str(prepared), str(tmp_out),
                            CalibrationReader(calibration_x, batch_size,
                                              pixels=bool(in_float)),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=[*nodes_to_exclude, *in_float], **options)
        onnx.checker.check_model(str(tmp_out), full_check=True)
    except Exception as exc:  # onnxruntime and onnx raise assorted types
        tmp_out.unlink(missing_ok=True)
        raise StageFailed(STAGE, f"INT8 quantization of {onnx_path} failed: {exc}") from exc
    if count_ops(tmp_out).get("QuantizeLinear", 0) == 0:
        tmp_out.unlink(missing_ok=True)
        raise StageFailed(STAGE, f"INT8 quantization of {onnx_path} quantized nothing")
    os.replace(tmp_out, out_path)
    return out_path


def _output_op_types(path: Path) -> list[str]:
    """Op types of the nodes that produce the graph's outputs (the logits).

    Their outputs stay float: rounding the logits to 256 levels flips near-ties, and near-ties
    are where the hard and rare classes live (on a Fashion-MNIST-LT resnet8 it cost the Coat
    class 3.9 points instead of 2.0). The op itself still takes quantized inputs.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return sorted({n.op_type for n in graph.node if outputs & set(n.output)})


def count_ops(path: str | Path) -> dict[str, int]:
    """{op type: number of nodes} in the main graph of an ONNX file."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@dataclass(frozen=True)
class Int8Export:
    """An INT8 model and what it was calibrated on (for the report and the model card)."""

    path: Path
    target: str
    composition: dict[str, int] = field(default_factory=dict)  # group -> calibration images
    calibration_split: str = "holdout"

    @property
    def calibration_size(self) -> int:
        return sum(self.composition.values())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "target": self.target,
                "calibration_split": self.calibration_split,
                "calibration_size": self.calibration_size, "composition": dict(self.composition)}


def export_int8(onnx_path: str | Path, out_path: str | Path, holdout: Split, per_group: int,
                seed: int = 0, group_names: Sequence[str] | None = None,
                target: str = "cpu") -> Int8Export:
    """``calibration_set`` on ``holdout`` then ``quantize_int8``: the pipeline's INT8 step."""
    x, composition = calibration_set(holdout, per_group, seed, group_names)
    path = quantize_int8(onnx_path, out_path, x, target=target)
    return Int8Export(path=path, target=target, composition=composition)
