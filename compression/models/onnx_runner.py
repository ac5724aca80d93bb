"""Run an ONNX classifier from any framework on torch tensors through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from compression.errors import InvalidInput

__all__ = ["OnnxRunner"]

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
           "tensor(double)": np.float64}


def _providers(device: torch.device) -> list[str]:
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRunner:
    """Callable ``x: [B, C, H, W] float -> logits [B, K]`` (CPU tensor) over an ONNX model.

    The model's first input takes the images; a fixed batch dimension (common in exports
    from other frameworks) is served by running padded chunks of that size.
    """

    def __init__(self, path: Path, input_shape: tuple[int, int, int], device: torch.device,
                 model: bytes | None = None):
        """``model``: the serialized model to run, already read and checked (see
        ``onnx_check.vetted_onnx``); without it onnxruntime reads ``path`` itself, which is
        only for files this process wrote."""
        try:
            self.session = ort.InferenceSession(str(path) if model is None else model,
                                                providers=_providers(device))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidInput(f"{path} is not a loadable ONNX model: {exc}") from None
        inputs = self.session.get_inputs()
        first = inputs[0]
        self.input_name = first.name
        self.output_name = self.session.get_outputs()[0].name
        self.dtype = _DTYPES.get(first.type)
        self.fixed_batch = self._check(path, inputs, input_shape)

    def _check(self, path: Path, inputs: list, input_shape: tuple[int, int, int]) -> int | None:
        first = inputs[0]
        problems = []
        if len(inputs) > 1:
            problems.append(f"it has {len(inputs)} inputs ({[i.name for i in inputs]}); a "
                            "teacher takes one image tensor [B, C, H, W]")
        if self.dtype is None:
            problems.append(f"input {first.name!r} has type {first.type}; expected float")
        shape = list(first.shape) if first.shape is not None else []
        if len(shape) != 4:
            problems.append(f"input {first.name!r} has shape {shape} (rank {len(shape)}); "
                            "expected rank 4 [B, C, H, W]")
        else:
            for got, want, name in zip(shape[1:], input_shape, "CHW"):
                if isinstance(got, int) and got != want:
                    problems.append(f"input {first.name!r} has shape {shape}: {name} is "
                                    f"{got} but the data has {want}")
        if problems:
            raise InvalidInput(problems, f"{path} does not fit the data {list(input_shape)}")
        batch = shape[0]
        return batch if isinstance(batch, int) and batch > 0 else None

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: arr})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, K] float32 on CPU."""
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.dtype)
        if self.fixed_batch is None:
            out = self._run(arr)
        else:
            n, parts = self.fixed_batch, []
            for start in range(0, arr.shape[0], n):
                chunk = arr[start:start + n]
                pad = n - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self._run(chunk)[:n - pad])
            out = np.concatenate(parts)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))
