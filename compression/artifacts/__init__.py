"""The job bundle: report.json, model card, guardrail chart and a Triton model repository."""

from compression.artifacts.bundle import (CHART, MODEL_CARD, REPORT, TRITON_DIR, choose_shipped,
                                          write_bundle)
from compression.artifacts.card import render_model_card
from compression.artifacts.chart import chart_series, plot_guardrails
from compression.artifacts.triton import config_pbtxt, onnx_io, write_triton_model

__all__ = [
    "write_bundle", "choose_shipped", "render_model_card", "plot_guardrails", "chart_series",
    "config_pbtxt",
    "onnx_io", "write_triton_model", "MODEL_CARD", "CHART", "TRITON_DIR", "REPORT",
]
