"""Running a serialized TensorRT engine on torch CUDA tensors (TensorRT 10 Python API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from compression.errors import InvalidInput, StageFailed
from compression.export.tensorrt_engine import (STAGE, TrtLog, fingerprint_path, logged_errors,
                                               require_tensorrt)

__all__ = ["TrtEngine"]


class TrtEngine:
    """Callable ``x: [B, C, H, W] float -> logits [B, K]`` float32 on x's device, via TensorRT.

    Inputs and outputs are torch CUDA tensors handed to TensorRT by address; the engine runs
    on torch's current CUDA stream, so it is ordered with the torch work around it. Batches
    above the engine's max batch run in chunks; below its min batch, zero-padded.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cuda"):
        trt = require_tensorrt()
        self.path = Path(path)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise InvalidInput(f"TensorRT engines run on a CUDA device, not {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._check_fingerprint(trt)
        self._logger = TrtLog.get(trt)  # TensorRT holds it by reference: keep it alive
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise StageFailed(STAGE, f"TensorRT cannot load the engine {self.path}."
                                         f"{logged_errors(self._logger)}")
            self.context = self.engine.create_execution_context()
        self._bind_names(trt)

    def _check_fingerprint(self, trt: Any) -> None:
        if not self.path.is_file():
            raise InvalidInput(f"TensorRT engine {self.path} does not exist")
        meta = fingerprint_path(self.path)
        if not meta.is_file():
            return  # an engine from elsewhere: deserialization itself will check
        info = json.loads(meta.read_text())
        major, minor = torch.cuda.get_device_capability(self.device)
        here = (str(trt.__version__), f"{major}.{minor}")
        built = (info.get("tensorrt_version"), info.get("compute_capability"))
        if built != here:
            raise StageFailed(STAGE, f"{self.path} was built with TensorRT {built[0]} for "
                                     f"compute capability {built[1]}; this machine has TensorRT "
                                     f"{here[0]} and {here[1]}: rebuild the engine here")

    def _bind_names(self, trt: Any) -> None:
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise StageFailed(STAGE, f"{self.path} has inputs {ins} and outputs {outs}; "
                                     "expected one image input and one logits output")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.output_name))
        low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.num_classes = int(engine.get_tensor_shape(self.output_name)[1])

    def __call__(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> logits [B, K] float32 on x.device."""
        source = x.device
        if x.shape[0] == 0:
            return torch.zeros(0, self.num_classes, device=source)
        with torch.cuda.device(self.device):
            x = x.to(self.device, self.input_dtype)
            parts = [self._run(x[i:i + self.max_batch])
                     for i in range(0, len(x), self.max_batch)]
            return torch.cat(parts).float().to(source)

    def _run(self, x: Tensor) -> Tensor:
        """x: [b, C, H, W] on the engine's device, b <= max_batch -> [b, K]."""
        b = x.shape[0]
        if b < self.min_batch:
            x = torch.cat([x, x.new_zeros(self.min_batch - b, *x.shape[1:])])
        x = x.contiguous()
        ctx = self.context
        if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
            raise StageFailed(STAGE, f"{self.path} refuses input shape {list(x.shape)}")
        out = torch.empty(tuple(ctx.get_tensor_shape(self.output_name)),
                          dtype=self.output_dtype, device=self.device)
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        ctx.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not ctx.execute_async_v3(stream):
            raise StageFailed(STAGE, f"TensorRT failed to run {self.path}."
                                     f"{logged_errors(self._logger)}")
        # x and out stay valid: torch only reuses their memory for work queued later on
        # this same stream, which runs after the engine
        return out[:b]


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT8: torch.int8, trt.DataType.INT32: torch.int32,
             trt.DataType.BOOL: torch.bool, trt.DataType.UINT8: torch.uint8}
    for name, torch_type in (("BF16", torch.bfloat16), ("INT64", torch.int64)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_type
    if dtype not in table:
        raise StageFailed(STAGE, f"engine tensor type {dtype} has no torch equivalent")
    return table[dtype]
