"""A Triton Inference Server model repository for one artifact: config.pbtxt + version 1.

Input and output names, types and shapes are read from the ONNX model itself (for a
TensorRT plan, from the ONNX model it was built from), so the config cannot drift from
what the model really takes. So is the input contract the exporter records in the model's
metadata (``input_contract``): the image input gets its layout (``format: FORMAT_NCHW``) and
the model's ``parameters`` name the dtype, layout, channel order, value range and the
preprocessing the graph runs, for clients to read from the model repository.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx

from compression.errors import InvalidInput

__all__ = ["TensorConfig", "PLATFORMS", "LABEL_FILE", "onnx_io", "onnx_contract",
           "config_pbtxt", "write_triton_model"]

LABEL_FILE = "labels.txt"
_CONTRACT_KEY = "input_contract"  # written by compression.export.onnx_export

# artifact suffix -> (Triton platform, file name Triton looks for in the version folder)
PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"),
             ".plan": ("tensorrt_plan", "model.plan"),
             ".engine": ("tensorrt_plan", "model.plan")}
_TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                 onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
                 onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
                 onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.UINT8: "TYPE_UINT8",
                 onnx.TensorProto.BOOL: "TYPE_BOOL"}


@dataclass(frozen=True)
class TensorConfig:
    """One model input or output as Triton sees it: dims without the batch axis, -1 dynamic."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def onnx_io(path: Path) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """Inputs and outputs of the ONNX model at ``path``, batch axis removed.

    Every input and output must have a dynamic first (batch) axis: Triton batches requests
    along it, and a fixed one would make the model fail to load with max_batch_size > 0.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises protobuf's DecodeError, OSError...
        raise InvalidInput(f"cannot read ONNX model {path}: {exc}") from None
    weights = {init.name for init in model.graph.initializer}
    inputs = [_tensor(v, path) for v in model.graph.input if v.name not in weights]
    return inputs, [_tensor(v, path) for v in model.graph.output]


def onnx_contract(path: Path) -> dict[str, object] | None:
    """The input contract in the ONNX model's metadata; None when it records none."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises protobuf's DecodeError, OSError...
        raise InvalidInput(f"cannot read ONNX model {path}: {exc}") from None
    value = next((p.value for p in model.metadata_props if p.key == _CONTRACT_KEY), None)
    try:
        contract = json.loads(value) if value is not None else None
    except ValueError:
        raise InvalidInput(f"{path}: metadata {_CONTRACT_KEY} is not JSON") from None
    return contract if isinstance(contract, dict) else None


def _contract_parameters(contract: dict[str, object] | None) -> dict[str, str]:
    if not contract:
        return {}
    value_range = contract.get("value_range") or []
    return {"input_dtype": str(contract.get("dtype")), "input_layout": str(contract.get("layout")),
            "input_channel_order": str(contract.get("channel_order")),
            "input_value_range": " to ".join(str(v) for v in value_range),
            "preprocess": json.dumps(contract.get("preprocess"), sort_keys=True)}


def _tensor(value: onnx.ValueInfoProto, path: Path) -> TensorConfig:
    t = value.type.tensor_type
    if t.elem_type not in _TRITON_TYPES:
        raise InvalidInput(f"{path}: tensor {value.name!r} has ONNX element type "
                           f"{onnx.TensorProto.DataType.Name(t.elem_type)}, which the Triton "
                           "config does not map; export float32 inputs and outputs")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in t.shape.dim]
    if not dims or dims[0] != -1:
        raise InvalidInput(f"{path}: tensor {value.name!r} has shape {dims}, without a dynamic "
                           "batch axis first; export with a dynamic batch dimension")
    return TensorConfig(value.name, _TRITON_TYPES[t.elem_type], tuple(dims[1:]))


def config_pbtxt(name: str, platform: str, max_batch_size: int, inputs: Sequence[TensorConfig],
                 outputs: Sequence[TensorConfig], label_output: str | None = None,
                 contract: dict[str, object] | None = None) -> str:
    """Triton's model configuration in protobuf text format.

    label_output: the output (logits) that ``LABEL_FILE`` names the classes of, one per
        line, so Triton's classification extension can return class names.
    contract: the input contract (``onnx_contract``): an NCHW image input is declared as
        such, and the contract is listed in the model's ``parameters``.
    """
    nchw = bool(contract) and contract.get("layout") == "NCHW"

    def block(t: TensorConfig, labels: bool, image: bool = False) -> str:
        dims = ", ".join(str(d) for d in t.dims)
        extra = f'\n    label_filename: "{LABEL_FILE}"' if labels else ""
        layout = "\n    format: FORMAT_NCHW" if image and len(t.dims) == 3 else ""
        return (f'  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}{layout}\n'
                f'    dims: [ {dims} ]{extra}\n  }}')

    ins = ",\n".join(block(t, False, nchw and i == 0) for i, t in enumerate(inputs))
    outs = ",\n".join(block(t, t.name == label_output) for t in outputs)
    params = "".join(f"parameters {{\n  key: {_quote(k)}\n  value {{ string_value: {_quote(v)} }}"
                     "\n}\n" for k, v in _contract_parameters(contract).items())
    return (f'name: {_quote(name)}\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{ins}\n]\noutput [\n{outs}\n]\ndynamic_batching {{ }}\n{params}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_triton_model(repo_dir: Path, model_name: str, artifact: Path, *,
                       io_model: Path | None = None, max_batch_size: int = 256,
                       labels: Sequence[str] | None = None) -> Path:
    """Write ``repo_dir/model_name/{config.pbtxt, 1/model.onnx|model.plan}``; return its folder.

    artifact: an .onnx model or a TensorRT engine (.plan / .engine), copied (not linked, so
        the repository can be uploaded to any model store as it is).
    io_model: the ONNX model to read names and shapes from; required for an engine.
    labels: class names; written to labels.txt when the logits have that many entries.
    """
    suffix = artifact.suffix.lower()
    if suffix not in PLATFORMS:
        raise ValueError(f"{artifact}: Triton artifacts must end in {', '.join(PLATFORMS)}")
    platform, file_name = PLATFORMS[suffix]
    if io_model is None and suffix != ".onnx":
        raise ValueError(f"{artifact} is a TensorRT engine; give the ONNX model it was built "
                         "from as io_model so its input and output names can be read")
    inputs, outputs = onnx_io(io_model or artifact)
    label_output = next((t.name for t in outputs if labels and t.dims == (len(labels),)), None)
    folder = repo_dir / model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact, folder / "1" / file_name)
    if label_output:
        (folder / LABEL_FILE).write_text("".join(f"{name}\n" for name in labels or ()))
    (folder / "config.pbtxt").write_text(
        config_pbtxt(model_name, platform, max_batch_size, inputs, outputs, label_output,
                     onnx_contract(io_model or artifact)))
    return folder
