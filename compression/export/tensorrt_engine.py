"""TensorRT engines built from the exported ONNX models (TensorRT 10 Python API).

TensorRT is imported lazily, so the library imports and runs where it is absent; only
``build_engine`` and ``TrtEngine`` (tensorrt_runner) need it, and a CUDA GPU.
``tensorrt_available`` says why not, in the words a job report uses when it skips (or fails)
its engine stage.

Precisions: ``fp32`` and ``fp16`` build the FP32 ONNX model as a weakly typed network (TF32
off for fp32, so it matches the ONNX model to float32 tolerance; the FP16 flag for fp16).
``int8`` builds the symmetric QDQ model (``export_int8(target="tensorrt")``) as a strongly
typed network: the Q/DQ nodes fix which tensors are INT8, and TensorRT asks for no precision
flags there. An engine only runs on the TensorRT version and GPU architecture it was built
for, so each one is written with a ``.json`` fingerprint beside it, checked at load.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compression.errors import InvalidInput, StageFailed

__all__ = ["PRECISIONS", "EngineInfo", "build_engine", "fingerprint_path",
           "tensorrt_available"]

STAGE = "build_engine"
PRECISIONS = ("fp32", "fp16", "int8")
_MIN_MAJOR = 10


def tensorrt_available() -> tuple[bool, str]:
    """(True, what will build engines) or (False, why engines cannot be built here)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, (f"TensorRT is not installed ({exc}); GPU workers install it with the "
                       "'trt' extra (pip install 'teachers-pet[trt]')")
    except Exception as exc:  # a wheel without its CUDA libraries fails with OSError and others
        return False, f"TensorRT is installed but cannot be loaded: {exc}"
    major = int(str(trt.__version__).split(".")[0])
    if major < _MIN_MAJOR:
        return False, f"TensorRT {trt.__version__} is too old; engines need TensorRT 10 or newer"
    if not torch.cuda.is_available():
        return False, f"TensorRT {trt.__version__} is installed but torch sees no CUDA GPU"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


def require_tensorrt() -> Any:
    """The ``tensorrt`` module; ``StageFailed("build_engine", reason)`` where it cannot work."""
    ok, reason = tensorrt_available()
    if not ok:
        raise StageFailed(STAGE, reason)
    import tensorrt as trt
    return trt


class TrtLog:
    """The process's one TensorRT logger (TensorRT keeps the first one it is given).

    It records the errors of the current call, so a failure can say what TensorRT said.
    """

    instance: Any = None

    @classmethod
    def get(cls, trt: Any) -> Any:
        if cls.instance is None:
            class Recorder(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: list[str] = []

                def log(self, severity: Any, msg: str) -> None:
                    if severity in (trt.ILogger.Severity.INTERNAL_ERROR,
                                    trt.ILogger.Severity.ERROR):
                        self.errors.append(msg)

            cls.instance = Recorder()
        cls.instance.errors.clear()
        return cls.instance


def logged_errors(logger: Any) -> str:
    """The last errors TensorRT logged, as a sentence to append to a failure message."""
    return f" TensorRT said: {' | '.join(logger.errors[-3:])}" if logger.errors else ""


@dataclass(frozen=True)
class EngineInfo:
    """A built engine and the fingerprint it is valid for (TensorRT version, GPU)."""

    path: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", as torch.cuda reports it
    input_shape: tuple[int, int, int]
    min_batch: int
    opt_batch: int
    max_batch: int
    size_bytes: int
    build_seconds: float
    timing_cache: str  # "" when none was used
    timing_cache_loaded: bool  # an existing cache was read and accepted

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape)}


def fingerprint_path(engine_path: str | Path) -> Path:
    """Where the ``.json`` fingerprint of ``engine_path`` is written."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def _check_build_args(onnx_path: Path, precision: str, batches: tuple[int, int, int],
                      input_shape: tuple[int, ...]) -> None:
    problems = []
    if precision not in PRECISIONS:
        problems.append(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not 1 <= batches[0] <= batches[1] <= batches[2]:
        problems.append(f"batch profile must satisfy 1 <= min_batch <= opt_batch <= max_batch "
                        f"(got {', '.join(map(str, batches))})")
    if len(input_shape) != 3 or min(input_shape) < 1:
        problems.append(f"input_shape {tuple(input_shape)} must be (C, H, W), all >= 1")
    if not onnx_path.is_file():
        problems.append(f"ONNX model {onnx_path} does not exist")
    if problems:
        raise InvalidInput(problems, "cannot build a TensorRT engine")
    if precision == "int8":
        _check_int8_source(onnx_path)


def _check_int8_source(onnx_path: Path) -> None:
    """int8 engines come from a symmetric signed QDQ model: TensorRT rejects anything else."""
    graph = onnx.load(str(onnx_path)).graph
    quant = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    if not quant:
        raise StageFailed(STAGE, f"precision int8 builds from a QDQ model but {onnx_path} has no "
                                 "QuantizeLinear node; pass the INT8 model (export_int8)")
    inits = {i.name: i for i in graph.initializer}
    for node in quant:
        name = node.input[2] if len(node.input) > 2 else ""
        if name and name not in inits:
            continue  # computed in the graph: TensorRT's parser will judge it
        zero = numpy_helper.to_array(inits[name]) if name else None  # none means uint8 0
        if zero is None or zero.dtype != np.int8 or zero.any():
            raise StageFailed(STAGE, f"{onnx_path} is not symmetric signed INT8 (node "
                                     f"{node.name!r}); TensorRT needs zero points of 0 in int8: "
                                     "build it with export_int8(..., target='tensorrt')")


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16", *,
                 input_shape: tuple[int, int, int], min_batch: int = 1, opt_batch: int = 32,
                 max_batch: int = 256, timing_cache_path: str | Path | None = None,
                 workspace_bytes: int = 1 << 30) -> EngineInfo:
    """Build and write a serialized engine for ``input`` [B, *input_shape], B in [min, max].

    The timing cache at ``timing_cache_path`` is read when it exists (and fits this TensorRT
    and GPU) and written back after the build, so rebuilds skip kernel timing. Raises
    ``StageFailed("build_engine", reason)`` where TensorRT is unavailable or the build fails.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    batches = (min_batch, opt_batch, max_batch)
    _check_build_args(onnx_path, precision, batches, input_shape)
    trt = require_tensorrt()
    logger = TrtLog.get(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, precision))
    parser = trt.OnnxParser(network, logger)  # fills ``network``; keep it alive meanwhile
    _parse(parser, onnx_path)
    config = _builder_config(trt, builder, precision, workspace_bytes)
    _add_profile(builder, config, network, input_shape, batches)
    cache = Path(timing_cache_path) if timing_cache_path else None
    cache_loaded = _attach_timing_cache(config, cache)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise StageFailed(STAGE, f"TensorRT could not build a {precision} engine from "
                                 f"{onnx_path}.{logged_errors(logger)}")
    _write_atomically(engine_path, plan)
    if cache is not None:
        _write_atomically(cache, config.get_timing_cache().serialize())
    info = EngineInfo(
        path=str(engine_path), precision=precision, tensorrt_version=str(trt.__version__),
        **_gpu_fingerprint(), input_shape=tuple(input_shape), min_batch=min_batch,
        opt_batch=opt_batch, max_batch=max_batch, size_bytes=engine_path.stat().st_size,
        build_seconds=round(seconds, 3), timing_cache=str(cache or ""),
        timing_cache_loaded=cache_loaded)
    fingerprint_path(engine_path).write_text(json.dumps(info.to_dict(), indent=2))
    return info


def _parse(parser: Any, onnx_path: Path) -> None:
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise StageFailed(STAGE, f"TensorRT cannot parse {onnx_path}: {'; '.join(errors)}")


def _network_flags(trt: Any, precision: str) -> int:
    if precision != "int8":
        return 0  # explicit batch is the only mode in TensorRT 10; its flag is ignored
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _builder_config(trt: Any, builder: Any, precision: str, workspace_bytes: int) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would round inputs to 10-bit mantissas
    elif precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise StageFailed(STAGE, f"TensorRT {trt.__version__} has no FP16 builder flag "
                                     "(it builds strongly typed networks only); use "
                                     "tensorrt_precision fp32 or int8")
        config.set_flag(trt.BuilderFlag.FP16)
    return config


def _add_profile(builder: Any, config: Any, network: Any, input_shape: tuple[int, int, int],
                 batches: tuple[int, int, int]) -> None:
    if network.num_inputs != 1:
        raise StageFailed(STAGE, f"the network has {network.num_inputs} inputs; expected one "
                                 "image tensor")
    name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *[(b, *input_shape) for b in batches])  # min, opt, max
    config.add_optimization_profile(profile)


def _attach_timing_cache(config: Any, path: Path | None) -> bool:
    """Attach the cache at ``path`` (or an empty one); True when an existing one was accepted."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data:
        cache = config.create_timing_cache(data)
        # a cache from another TensorRT version or GPU is refused; timing from scratch is safe
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def _gpu_fingerprint() -> dict[str, str]:
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index),
            "compute_capability": f"{major}.{minor}"}


def _write_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)  # IHostMemory exposes the buffer protocol
    os.replace(tmp, path)
