"""Latency of an artifact at the job's batch profile, and the choice of the artifact to ship.

The shipped artifact is the fastest one that passed its guardrails, as measured on the worker
the job ran on, not the first of a fixed preference order: on small models INT8 in
onnxruntime is often no faster than FP32 (a quantize and a dequantize around every narrow
layer cost more than the integer arithmetic saves), so a fixed order would ship a slower,
less accurate model.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from compression.guardrails import StageVerdict

__all__ = ["Timing", "measure", "measure_all", "timing_batch", "choose_fastest"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock milliseconds per call on one batch: median and slowest of ``repeats``
    calls after ``warmup`` untimed ones."""

    batch: int
    warmup: int
    repeats: int
    median_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "warmup": self.warmup, "repeats": self.repeats,
                "median_ms": self.median_ms, "max_ms": self.max_ms}


def measure(model: Callable[[Tensor], Any], x: Tensor, warmup: int, repeats: int,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``model(x)`` (x: [B, C, H, W] float): ``warmup`` calls, then ``repeats`` timed."""
    if repeats < 1:
        raise ValueError(f"repeats is {repeats}; time at least one call")
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = clock()
            model(x)
            times.append((clock() - start) * 1e3)
    return Timing(len(x), warmup, repeats, statistics.median(times), max(times))


def measure_all(models: Mapping[str, Callable[[Tensor], Any]], x: Tensor, warmup: int,
                repeats: int, rounds: int = 5,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time every model on x, interleaved: after each model's ``warmup`` calls, ``rounds``
    rounds in which each model makes its share of ``repeats`` timed calls in turn, so that a
    busy neighbour or a clock change slows them all alike rather than whichever ran then."""
    if repeats < 1:
        raise ValueError(f"repeats is {repeats}; time at least one call")
    rounds = max(1, min(rounds, repeats))
    share = [repeats // rounds + (r < repeats % rounds) for r in range(rounds)]
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for calls in share:
            for name, model in models.items():
                for _ in range(calls):
                    start = clock()
                    model(x)
                    times[name].append((clock() - start) * 1e3)
    return {name: Timing(len(x), warmup, repeats, statistics.median(t), max(t))
            for name, t in times.items()}


def timing_batch(x: Tensor, batch: int) -> Tensor:
    """``batch`` real images as float [batch, C, H, W] in [0, 1] from uint8 x: [N, C, H, W],
    cycling through x when it has fewer."""
    if len(x) == 0:
        raise ValueError("timing needs at least one image")
    idx = torch.arange(batch) % len(x)
    return x[idx].float() / 255


def choose_fastest(verdicts: Sequence[StageVerdict], latency_ms: Mapping[str, float],
                   size_bytes: Mapping[str, int] | None = None) -> str | None:
    """The passed stage with the lowest measured latency; ties go to the smaller file, then
    to the stage judged first. Stages without a measurement are not candidates; None when
    no measured stage passed."""
    sizes = size_bytes or {}
    passed = [(i, v.stage) for i, v in enumerate(verdicts)
              if v.passed and v.stage in latency_ms]
    if not passed:
        return None
    return min(passed, key=lambda p: (latency_ms[p[1]], sizes.get(p[1], 0), p[0]))[1]
