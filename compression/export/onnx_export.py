"""ONNX export of a trained classifier, checked by onnx and onnxruntime, and its parity check.

The exported graph takes ``input`` [B, C, H, W] and returns ``logits`` [B, K]; B is dynamic.
The input is float32 in [0, 1] (pixels / 255) by default; with ``pixels=True`` it is the stored
uint8 pixels and the whole ``data.preprocess`` transform (cast, / 255, resize, crop, channel
order, mean/std) runs inside the graph, so a client sends images as they are. The input
contract is written into the model's metadata (``input_contract``, JSON).

Opset 18 and newer go through the torch.export-based exporter (torch's default); it cannot
emit older opsets (its ReduceMean has no opset-17 form), so those go through the TorchScript
exporter, which some deployment runtimes still need.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from compression.data.dataset import Split
from compression.data.preprocess import Preprocessed, input_contract, to_pixels, unwrap
from compression.errors import InvalidInput, ParityFailed, StageFailed
from compression.evaluation import predict_logits
from compression.models.onnx_runner import OnnxRunner
from compression.spec import ExportSpec

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "CONTRACT_KEY", "OnnxModel", "Parity", "check_parity",
           "export_onnx", "onnx_input_shape", "parity", "preprocessing_nodes", "read_contract"]

INPUT_NAME, OUTPUT_NAME = "input", "logits"
CONTRACT_KEY = "input_contract"  # metadata_props key of the input contract (JSON)
STAGE = "export_onnx"
_DYNAMO_MIN_OPSET = 18


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path,
                opset: int = 17, min_batch: int = 1, max_batch: int = 256,
                pixels: bool = False) -> Path:
    """Write ``model`` as ONNX mapping ``input`` [B, *input_shape] to ``logits`` [B, K].

    model: takes [B, *input_shape] float in [0, 1]; a ``Preprocessed`` model carries its
        transform into the graph. pixels: the graph takes uint8 pixels (module docstring).
    A CPU, eval-mode copy is exported, so the caller's model keeps its device and mode. The
    file is checked with ``onnx.checker`` (full check) and run by onnxruntime at ``min_batch``
    and ``max_batch``, the ends of the batch range it will be served at, before it replaces
    ``path``. Raises ``StageFailed("export_onnx", ...)`` when any of that fails.
    """
    _check_args(input_shape, opset, min_batch, max_batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    inner, transform = unwrap(copy.deepcopy(model).cpu().eval())
    cpu_model = Preprocessed(inner, transform, from_uint8=pixels).eval()
    # batch 2: exporters specialise sizes 0 and 1
    example = torch.zeros(2, *input_shape, dtype=torch.uint8 if pixels else torch.float32)
    try:
        if opset >= _DYNAMO_MIN_OPSET:
            _export_dynamo(cpu_model, example, tmp, opset)
        else:
            _export_torchscript(cpu_model, example, tmp, opset)
    except Exception as exc:  # exporters raise many types; all mean the same here
        tmp.unlink(missing_ok=True)
        raise StageFailed(STAGE, f"ONNX export (opset {opset}) of {type(model).__name__} on "
                                 f"[B, {', '.join(map(str, input_shape))}] failed: {exc}") from exc
    try:
        _write_contract(tmp, input_contract(transform, tuple(input_shape), pixels))
        _check_graph(tmp, opset)
        _check_runs(tmp, input_shape, (min_batch, max_batch))
    except StageFailed:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # readers never see a half-written or unchecked model
    return path


def _check_args(input_shape: tuple[int, ...], opset: int, min_batch: int,
                max_batch: int) -> None:
    problems = []
    if len(input_shape) != 3 or min(input_shape) < 1:
        problems.append(f"input_shape {tuple(input_shape)} must be (C, H, W), all >= 1")
    if not 13 <= opset <= 21:
        problems.append(f"opset is {opset}; use 13 to 21")
    if not 1 <= min_batch <= max_batch:
        problems.append(f"batch range must satisfy 1 <= min_batch <= max_batch "
                        f"(got {min_batch}, {max_batch})")
    if problems:
        raise InvalidInput(problems, "cannot export to ONNX")


def _export_dynamo(model: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    # one self-contained file (students are far below protobuf's 2 GB limit): external data
    # would be named after the temporary file and break when it is renamed
    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: batch},), external_data=False, verbose=False)


def _export_torchscript(model: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():  # the old opset was asked for; its deprecation is noise
        warnings.simplefilter("ignore", DeprecationWarning)
        # Tracing bakes image sizes in as constants, which is the contract (only the batch
        # is dynamic); a baked batch size would fail the runs at min and max batch that follow.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _write_contract(path: Path, contract: dict[str, Any]) -> None:
    """Record what the graph takes in its metadata, for servers and clients to read."""
    graph_model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in graph_model.metadata_props if p.key != CONTRACT_KEY]
    del graph_model.metadata_props[:]
    graph_model.metadata_props.extend(kept)
    graph_model.metadata_props.add(key=CONTRACT_KEY, value=json.dumps(contract, sort_keys=True))
    onnx.save(graph_model, str(path))


def read_contract(path: str | Path) -> dict[str, Any] | None:
    """The input contract recorded in an ONNX model's metadata; None when it has none."""
    graph_model = onnx.load(str(path), load_external_data=False)
    for prop in graph_model.metadata_props:
        if prop.key == CONTRACT_KEY:
            return json.loads(prop.value)
    return None


def preprocessing_nodes(path: str | Path) -> list[str]:
    """Names of the nodes that preprocess a uint8 input: from the Cast on the graph's input
    through the element-wise, resize, slice and gather nodes that follow it, up to the
    model's first layer. Empty for a float input. INT8 quantization keeps these in float:
    8-bit steps there would add error before the model sees a single pixel."""
    graph = onnx.load(str(path), load_external_data=False).graph
    if not graph.input or graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return []
    known = {graph.input[0].name} | {i.name for i in graph.initializer}
    names: list[str] = []
    for node in graph.node:  # topologically sorted, as the ONNX standard requires
        if node.op_type not in _PREPROCESS_OPS or not all(i in known for i in node.input if i):
            continue
        known.update(node.output)
        if node.op_type != "Constant":
            names.append(node.name)
    return names


_PREPROCESS_OPS = {"Cast", "Div", "Mul", "Sub", "Add", "Resize", "Slice", "Gather", "Constant",
                   "Identity", "Shape", "Concat", "Unsqueeze", "Reshape", "Expand", "Transpose"}


def _check_graph(path: Path, opset: int) -> None:
    """The checker passes, the opset is the one asked for, names and the batch axis are right."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageFailed(STAGE, f"the exported model fails onnx.checker: {exc}") from exc
    graph_model = onnx.load(str(path), load_external_data=False)
    got = {o.domain or "ai.onnx": o.version for o in graph_model.opset_import}.get("ai.onnx")
    problems = []
    if got != opset:
        problems.append(f"it has opset {got}, not the {opset} asked for")
    inputs = [i.name for i in graph_model.graph.input]
    outputs = [o.name for o in graph_model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        problems.append(f"inputs {inputs} / outputs {outputs}; expected "
                        f"[{INPUT_NAME!r}] / [{OUTPUT_NAME!r}]")
    elif graph_model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"):
        problems.append("its batch axis is fixed; it must be dynamic")
    if problems:
        raise StageFailed(STAGE, "the exported model is not as specified: " + "; ".join(problems))


def _check_runs(path: Path, input_shape: tuple[int, int, int], batches: tuple[int, ...]) -> None:
    try:
        runner = OnnxModel(path)
    except InvalidInput as exc:  # our own export: not the user's input that is wrong
        raise StageFailed(STAGE, f"onnxruntime cannot load the exported model: {exc}") from exc
    for b in sorted(set(batches)):
        try:
            out = runner(torch.zeros(b, *input_shape))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise StageFailed(STAGE, f"onnxruntime fails on the exported model at batch {b}: "
                                     f"{exc}") from exc
        if out.dim() != 2 or out.shape[0] != b or not torch.isfinite(out).all():
            raise StageFailed(STAGE, f"the exported model returns {list(out.shape)} (finite: "
                                     f"{bool(torch.isfinite(out).all())}) at batch {b}; "
                                     f"expected finite logits [{b}, K]")


def onnx_input_shape(path: str | Path) -> tuple[int, int, int]:
    """(C, H, W) of the model's first input, read from the graph (fixed sizes required)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # OSError, or a protobuf decode error for foreign bytes
        raise InvalidInput(f"{path} is not a readable ONNX model: {exc}") from None
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if len(shape) != 4 or None in shape[1:]:
        raise InvalidInput(f"{path}: input shape {list(shape)} is not [B, C, H, W] with fixed "
                           "C, H and W")
    return shape[1:]  # type: ignore[return-value]


class OnnxModel(OnnxRunner):
    """Callable ``x: [B, C, H, W] float -> logits [B, K]`` float32 CPU tensor (onnxruntime).

    A graph that takes uint8 pixels (``export_onnx(pixels=True)``) is given them: uint8 input
    as it is, float input (pixels / 255, what evaluation gives every model) turned back into
    the exact pixels. ``threads`` > 0 pins onnxruntime's intra-op thread count (benchmarks
    compare runtimes at one thread count); 0 keeps onnxruntime's default.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", threads: int = 0):
        self.path = Path(path)
        super().__init__(self.path, onnx_input_shape(self.path), torch.device(device))
        if threads > 0:  # the base class builds its session without options: rebuild it
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=self.session.get_providers())

    def _check(self, path: Path, inputs: list, input_shape: tuple[int, int, int]) -> int | None:
        if inputs and inputs[0].type == "tensor(uint8)":
            self.dtype = np.uint8
        return super()._check(path, inputs, input_shape)

    def __call__(self, x: Tensor) -> Tensor:
        if self.dtype is np.uint8 and x.dtype != torch.uint8:
            x = to_pixels(x)
        return super().__call__(x)


@dataclass(frozen=True)
class Parity:
    """How closely a converted model reproduces a reference on ``n`` real images.

    max_abs_diff: max over images and classes of |logit - reference logit|.
    top1_agreement: fraction of images where both argmaxes agree.
    """

    n: int
    max_abs_diff: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Logits = Callable[[Tensor], Tensor]


def parity(reference: Logits, candidate: Logits, split: Split, max_samples: int = 1024,
           batch_size: int = 256, device: torch.device | str | None = None) -> Parity:
    """Compare ``candidate`` with ``reference`` on up to ``max_samples`` images of ``split``.

    Both map x: [b, C, H, W] float in [0, 1] to logits [b, K]. The images are spread evenly
    over the split (not its first rows, which may all be one class). ``device``: where the
    inputs go; by default the reference module's device, else the CPU.
    """
    if len(split) == 0 or max_samples < 1:
        raise InvalidInput(f"parity needs real images: the split has {len(split)} and "
                           f"max_samples is {max_samples}")
    m = min(len(split), max_samples)
    idx = torch.arange(m) * len(split) // m  # [m], strictly increasing
    sub = Split(split.x[idx], split.y[idx], split.group[idx])
    device = device if device is not None else _device_of(reference)
    ref = predict_logits(reference, sub, batch_size, device)  # [m, K]
    out = predict_logits(candidate, sub, batch_size, device)  # [m, K']
    if ref.shape != out.shape:
        raise StageFailed(STAGE, f"the converted model returns logits {list(out.shape)} where "
                                 f"the reference returns {list(ref.shape)}")
    diff = (out - ref).abs().max().item()  # nan when either has a nan
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    return Parity(n=m, max_abs_diff=diff, top1_agreement=agree)


def _device_of(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def check_parity(result: Parity, spec: ExportSpec, stage: str = STAGE) -> None:
    """Raise ``ParityFailed(stage, ...)`` unless ``result`` is within the spec's tolerances."""
    problems = []
    # `not <=` so that a nan difference fails too
    if not result.max_abs_diff <= spec.parity_max_abs_diff:
        problems.append(f"max |logit difference| is {result.max_abs_diff:.3g}, above "
                        f"export.parity_max_abs_diff {spec.parity_max_abs_diff:g}")
    if not result.top1_agreement >= spec.parity_min_top1_agreement:
        problems.append(f"top-1 agreement is {result.top1_agreement:.4f}, below "
                        f"export.parity_min_top1_agreement {spec.parity_min_top1_agreement:g}")
    if problems:
        raise ParityFailed(stage, f"the exported model does not reproduce the PyTorch model on "
                                  f"{result.n} test images: {'; '.join(problems)}. The artifact "
                                  "would not be the model that was validated, so it is not shipped")
