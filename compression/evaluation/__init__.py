"""Evaluation: batched inference, per-subgroup accuracy with intervals, and the report type."""

from compression.evaluation.jsonio import load_json, write_json
from compression.evaluation.metrics import evaluate, restrict
from compression.evaluation.outcomes import Outcomes, PairedCounts, paired_counts
from compression.evaluation.predict import predict_logits
from compression.evaluation.report import EvalReport, GroupMetrics
from compression.evaluation.stats import wilson_interval

__all__ = [
    "EvalReport", "GroupMetrics", "Outcomes", "PairedCounts", "evaluate", "load_json",
    "paired_counts", "predict_logits", "restrict", "wilson_interval", "write_json",
]
