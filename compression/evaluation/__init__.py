"""Evaluation: batched inference, per-subgroup accuracy with intervals, and the report type."""

from compression.evaluation.jsonio import load_json, write_json
from compression.evaluation.metrics import evaluate
from compression.evaluation.predict import predict_logits
from compression.evaluation.report import EvalReport, GroupMetrics
from compression.evaluation.stats import wilson_interval

__all__ = [
    "EvalReport", "GroupMetrics", "evaluate", "load_json", "predict_logits", "wilson_interval",
    "write_json",
]
