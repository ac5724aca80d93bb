"""An ONNX teacher made self-contained and checked before onnxruntime sees it.

An ONNX model can point at external data files by any path ("/etc/passwd", "../x"), which
onnxruntime opens on its own; and a node of an unknown operator domain asks onnxruntime for
a custom operator library. Here the model is parsed from the bytes already read, every
operator domain is checked, and each external tensor is read through the access policy
(only from the model's own folder) and copied into the model, so onnxruntime gets one
buffer and opens no file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import onnx

from compression import access
from compression.errors import InvalidInput

__all__ = ["STANDARD_DOMAINS", "vetted_onnx"]

# the ONNX standard sets and onnxruntime's built-in contrib operators
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_SHOW = 5


def _messages(message: onnx.ModelProto) -> Iterator[Any]:
    """Every message nested in ``message`` (subgraphs, functions, attributes), itself first.

    Messages are told apart by their ``ListFields``, so the library needs no protobuf import.
    """
    stack = [message]
    while stack:
        current = stack.pop()
        yield current
        for field, value in current.ListFields():
            if field.type == field.TYPE_MESSAGE:
                stack.extend([value] if hasattr(value, "ListFields") else value)


def _domain_problems(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[str]:
    local = {(f.domain, f.name) for f in model.functions}  # defined in the model, inlined
    bad = sorted({f"{n.domain}::{n.op_type}" for n in nodes
                  if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local})
    if not bad:
        return []
    return [f"operators of non-standard domains ({', '.join(bad[:_SHOW])}): onnxruntime would "
            "need a custom operator library for them; only the standard domains (ai.onnx, "
            "ai.onnx.ml, com.microsoft) and functions defined in the model are allowed"]


def _external_file(location: str, folder: Path, path: Path) -> Path:
    """The file an external tensor names, if it lies in the model's own folder."""
    target = Path(os.path.realpath(folder / location))
    if os.path.isabs(location) or ".." in Path(location).parts or folder not in target.parents:
        raise InvalidInput(f"{path} keeps tensor data in {location!r}, outside the model's "
                           f"folder {folder}; keep external data files next to the model "
                           "(onnx.save_model(..., location='name.data')) or save it as one file")
    return target


def _inline(tensor: onnx.TensorProto, folder: Path, path: Path,
            files: dict[Path, bytes]) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise InvalidInput(f"{path}: tensor {tensor.name!r} has external data without a location")
    target = _external_file(location, folder, path)
    if target not in files:  # checked against the roots and read once, like any input
        files[target] = access.read_input(target, f"external data of {path}")
    data = files[target]
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else len(data) - offset
    except ValueError:
        raise InvalidInput(f"{path}: tensor {tensor.name!r} has a non-numeric offset or "
                           "length") from None
    if offset < 0 or length < 0 or offset + length > len(data):
        raise InvalidInput(f"{path}: tensor {tensor.name!r} reads bytes {offset} to "
                           f"{offset + length} of {location!r}, which holds {len(data)}")
    tensor.raw_data = data[offset:offset + length]
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def vetted_onnx(data: bytes, path: Path) -> bytes:
    """The model ``data`` (read from ``path``) with its external data inlined: the bytes to
    give onnxruntime. Refuses custom operator domains and data outside the model's folder."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise InvalidInput(f"{path} is not a loadable ONNX model: {exc}") from None
    found = list(_messages(model))
    problems = _domain_problems(model, [m for m in found if isinstance(m, onnx.NodeProto)])
    if problems:
        raise InvalidInput(problems, f"{path} is not a plain ONNX model")
    external = [m for m in found if isinstance(m, onnx.TensorProto) and
                (m.data_location == onnx.TensorProto.EXTERNAL or len(m.external_data))]
    if not external:
        return data  # nothing to change: onnxruntime reads the very bytes checked
    folder = Path(os.path.realpath(path)).parent
    files: dict[Path, bytes] = {}
    for tensor in external:
        _inline(tensor, folder, path, files)
    try:
        return model.SerializeToString()
    except Exception as exc:  # protobuf refuses messages over 2 GiB with the data inside
        raise InvalidInput(f"{path} is too large once its external data is included: {exc}; "
                           "use a smaller teacher") from None
