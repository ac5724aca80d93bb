"""The latency benchmark's arithmetic: percentiles, speedups, per-class drops, the table."""

import importlib.util
from pathlib import Path

import pytest
import torch

from compression.data.dataset import Split
from compression.evaluation import evaluate

_PATH = Path(__file__).resolve().parents[2] / "bench" / "latency.py"
_spec = importlib.util.spec_from_file_location("bench_latency", _PATH)
latency = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(latency)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in (10, 1, 9, 2, 8, 3, 7, 4, 6, 5)]
    assert latency.percentile(values, 90) == 9.0
    assert latency.percentile(values, 50) == 5.0
    assert latency.percentile(values, 100) == 10.0
    assert latency.percentile([3.0], 90) == 3.0


def _reports():
    split = Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]),
                  torch.tensor([0, 0, 1, 1]))
    names = ("a", "b")
    preds = {latency.EAGER: [0, 0, 1, 0], latency.ORT_FP32: [0, 0, 1, 0],
             latency.ORT_INT8: [0, 1, 1, 0]}
    return {k: evaluate(torch.tensor(v), split, names, names, name=k) for k, v in preds.items()}


def _calls(wall: list[float], cpu: list[float]) -> dict[str, list[float]]:
    return {"wall": wall, "cpu": cpu}


def test_summarise_speedups_and_floors():
    times = {1: {latency.EAGER: _calls([2.0, 4.0, 3.0], [2.0, 2.0, 2.0]),
                 latency.ORT_FP32: _calls([1.0, 1.0, 1.5], [1.0, 1.0, 1.0]),
                 latency.ORT_INT8: _calls([0.5, 0.75, 0.25], [0.25, 0.5, 0.5])},
             64: {latency.EAGER: _calls([40.0] * 3, [40.0] * 3),
                  latency.ORT_FP32: _calls([20.0] * 3, [20.0] * 3),
                  latency.ORT_INT8: _calls([10.0] * 3, [8.0] * 3)}}
    sizes = {latency.EAGER: 4096, latency.ORT_FP32: 4096, latency.ORT_INT8: 1024}
    rows = latency.summarise("tiny_cnn", times, sizes, _reports(), max_drop=0.5)
    eager, fp32, int8 = rows
    assert eager["b1_speedup"] == 1.0 and fp32["b1_speedup"] == 3.0
    assert int8["b1_median_ms"] == 0.5 and int8["b1_speedup"] == 6.0
    assert int8["b1_cpu_ms"] == 0.5 and int8["b1_cpu_speedup"] == 4.0
    assert int8["b64_speedup"] == 4.0 and int8["b64_cpu_speedup"] == 5.0
    assert int8["b64_p90_ms"] == 10.0
    assert int8["per_class"] == {"a": 0.5, "b": 0.5}
    assert int8["max_class_drop"] == pytest.approx(0.5) and int8["floors_met"]
    strict = latency.summarise("tiny_cnn", times, sizes, _reports(), max_drop=0.4)
    assert [r["floors_met"] for r in strict] == [True, True, False]
    table = latency.markdown_table(rows)
    assert len(table.splitlines()) == 11  # two tables of header, rule, 3 rows; a blank line
    assert ("| tiny_cnn | ONNX Runtime INT8 | 1 | 0.500 | 0.750 | 0.500 | 6.00x (CPU 4.00x) |"
            in table)
    assert "| tiny_cnn | ONNX Runtime INT8 | 0.5000 | a (0.500) | +50.0 pt | yes |" in table
