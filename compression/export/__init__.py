"""Export: ONNX (checked, with parity), static INT8 QDQ, and TensorRT engines.

TensorRT is optional: importing this package never imports it (see ``tensorrt_available``).
"""

from compression.export.onnx_export import (INPUT_NAME, OUTPUT_NAME, OnnxModel, Parity,
                                            check_parity, export_onnx, onnx_input_shape, parity)
from compression.export.quantize import (TARGETS, CalibrationReader, Int8Export,
                                         calibration_set, count_ops, export_int8, quantize_int8)
from compression.export.tensorrt_engine import (PRECISIONS, EngineInfo, build_engine,
                                                fingerprint_path, tensorrt_available)
from compression.export.tensorrt_runner import TrtEngine

__all__ = [
    "INPUT_NAME", "OUTPUT_NAME", "PRECISIONS", "TARGETS", "CalibrationReader", "EngineInfo",
    "Int8Export", "OnnxModel", "Parity", "TrtEngine", "build_engine", "calibration_set",
    "check_parity", "count_ops", "export_int8", "export_onnx", "fingerprint_path",
    "onnx_input_shape", "parity", "quantize_int8", "tensorrt_available",
]
