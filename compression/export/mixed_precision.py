"""Mixed precision: keep in float the fewest nodes that let an INT8 model hold every floor.

When the INT8 model breaks a floor that the FP32 model holds, the search looks for the
smallest set of nodes to leave unquantized (onnxruntime's ``nodes_to_exclude``):

1. Sensitivity, on a probe drawn from holdout (never the test split): the images of the
   subgroups the INT8 model failed, plus a stratified sample of every other subgroup. Each
   quantizable node is quantized alone, every other node left in float, and scored by the
   worst subgroup: the largest, over the probe's subgroups, of the share of that subgroup's
   images whose top-1 answer then differs from the FP32 model's (ties broken by the largest
   per-subgroup mean absolute logit error). A node whose lone quantization quantizes nothing
   is not a candidate. Every subgroup is in the probe because the walk below is judged on
   all of them, and a node that only moves a subgroup INT8 happened not to fail would
   otherwise rank as harmless and stop the walk early; the worst subgroup rather than the
   pooled rate because the guardrails judge each subgroup on its own, and a pooled rate
   dilutes a rare subgroup's changes by its share of the probe.
2. A walk down the ranking, judged on the test split by the artifact guardrails: first keep
   every candidate node but the least sensitive in float, then drop the next least
   sensitive, and so on, while the candidate passes. The walk stops at the first candidate
   that does not pass and returns the last one that did.

The walk is a fixed-sequence test (the order is fixed on holdout before any test verdict is
seen, and it stops at the first non-PASS), so it may judge every candidate at the policy's
own confidence: for the search to ship a candidate with a broken floor, the first such
candidate on the walk must falsely PASS, which has probability at most 1 - confidence.
A search that tried candidates until one passed would not have that guarantee.

The search is bounded in candidates judged and in seconds; when a bound is hit it returns
the last candidate that passed (not necessarily the smallest) and says so, and gives up
when none did.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import onnx
import torch
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor

from compression.errors import StageFailed
from compression.evaluation import EvalReport
from compression.guardrails import StageVerdict

__all__ = ["FOUND", "STOPPED", "GAVE_UP", "Sensitivity", "Candidate", "SearchLimits",
           "SearchResult", "Probe", "quantizable_nodes", "measure_sensitivity", "probe_images",
           "search"]

FOUND, STOPPED, GAVE_UP = "found", "stopped", "gave_up"
QUANTIZABLE = frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)

# (float nodes, out path) -> the quantized model; (model) -> its test report and verdict;
# (model) -> its median latency in ms; a clock in seconds
Quantize = Callable[[Sequence[str], Path], Path]
Judge = Callable[[Path], tuple[EvalReport, StageVerdict]]
Latency = Callable[[Path], float]
Logits = Callable[[Path, Tensor], Tensor]


@dataclass(frozen=True)
class Probe:
    """Holdout images to rank the nodes on: x [P, C, H, W] uint8 and the subgroup id of each
    image, group [P]."""

    x: Tensor
    group: Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Sensitivity:
    """One node quantized alone, scored by its worst subgroup of the probe: the largest
    per-subgroup share of images whose top-1 answer differs from the FP32 model's, and the
    largest per-subgroup mean |logit - FP32 logit|."""

    node: str
    op_type: str
    flip_rate: float
    logit_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "flip_rate": self.flip_rate,
                "logit_error": self.logit_error}


@dataclass(frozen=True)
class Candidate:
    """One model the walk judged: its float nodes, verdict per subgroup and latency."""

    float_nodes: tuple[str, ...]
    passed: bool
    verdicts: dict[str, str | None]  # subgroup -> its most severe verdict over all rules
    failing_subgroups: tuple[str, ...]
    latency_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"float_nodes": list(self.float_nodes), "passed": self.passed,
                "verdicts": dict(self.verdicts),
                "failing_subgroups": list(self.failing_subgroups),
                "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class SearchLimits:
    max_candidates: int = 24  # models judged on the test split
    max_seconds: float = 600.0  # sensitivity and walk together


@dataclass
class SearchResult:
    status: str  # FOUND, STOPPED (a bound was hit; the last pass is kept) or GAVE_UP
    reason: str
    failing_subgroups: tuple[str, ...]
    probe_images: int
    sensitivity: list[Sensitivity] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    path: Path | None = None  # the chosen model, None when the search gave up
    report: EvalReport | None = None
    verdict: StageVerdict | None = None
    seconds: float = 0.0

    @property
    def float_nodes(self) -> tuple[str, ...]:
        chosen = [c for c in self.candidates if c.passed]
        return chosen[-1].float_nodes if chosen and self.path else ()

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "failing_subgroups": list(self.failing_subgroups),
                "probe_images": self.probe_images, "float_nodes": list(self.float_nodes),
                "sensitivity": [s.to_dict() for s in self.sensitivity],
                "candidates": [c.to_dict() for c in self.candidates],
                "seconds": round(self.seconds, 3)}


def quantizable_nodes(onnx_path: str | Path) -> list[tuple[str, str]]:
    """(name, op type) of the nodes onnxruntime may quantize, in graph order, named as in
    the pre-processed graph that ``quantize_int8`` quantizes (its names are the ones
    ``nodes_to_exclude`` takes)."""
    onnx_path = Path(onnx_path)
    prepared = onnx_path.with_name(f"{onnx_path.stem}.prepared.tmp.onnx")
    try:
        quant_pre_process(str(onnx_path), str(prepared))
        graph = onnx.load(str(prepared), load_external_data=False).graph
    finally:
        prepared.unlink(missing_ok=True)
    return [(n.name, n.op_type) for n in graph.node if n.op_type in QUANTIZABLE and n.name]


def measure_sensitivity(nodes: Sequence[tuple[str, str]], quantize: Quantize, logits: Logits,
                        fp32_path: Path, probe: Probe | Tensor, workdir: Path,
                        out_of_time: Callable[[], bool] = lambda: False) -> list[Sensitivity]:
    """Each node quantized alone, most sensitive first (ties keep graph order).

    probe: a ``Probe``, or bare images [P, C, H, W] uint8 taken as one subgroup. Nodes whose
    lone quantization leaves nothing quantized are left out. Stops early, returning what it
    measured, when ``out_of_time``.
    """
    if not isinstance(probe, Probe):
        probe = Probe(probe, torch.zeros(len(probe), dtype=torch.long))
    _, cell = torch.unique(probe.group.cpu(), return_inverse=True)  # [P] in 0..G-1
    reference = logits(fp32_path, probe.x)  # [P, K]
    names = [name for name, _ in nodes]
    out = []
    for name, op_type in nodes:
        if out_of_time():
            break
        path = workdir / "sensitivity.onnx"
        try:
            quantize([n for n in names if n != name], path)
        except StageFailed:
            continue  # quantizing this node alone quantized nothing
        got = logits(path, probe.x)  # [P, K]
        flips = (got.argmax(1) != reference.argmax(1)).float()  # [P]
        error = (got - reference).abs().mean(1)  # [P]
        out.append(Sensitivity(name, op_type, _worst(flips, cell), _worst(error, cell)))
    order = {name: i for i, name in enumerate(names)}
    return sorted(out, key=lambda s: (-s.flip_rate, -s.logit_error, order[s.node]))


def _worst(values: Tensor, cell: Tensor) -> float:
    """The largest per-cell mean of values [P] (float), cells [P] numbered 0..G-1."""
    sums = torch.zeros(int(cell.max()) + 1, dtype=torch.float64).index_add_(
        0, cell, values.double().cpu())
    return (sums / torch.bincount(cell).clamp(min=1)).max().item()


def search(fp32_path: Path, out_path: Path, failing_subgroups: Sequence[str],
           probe: Probe | Tensor, quantize: Quantize, logits: Logits, judge: Judge,
           latency: Latency, limits: SearchLimits,
           clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Find the fewest float nodes (see the module docstring); the chosen model is moved
    to ``out_path``. ``failing_subgroups``: those the full INT8 model did not pass;
    ``probe``: the holdout images to rank the nodes on (``probe_images``)."""
    start = clock()
    out_of_time = lambda: clock() - start >= limits.max_seconds  # noqa: E731
    result = SearchResult(GAVE_UP, "", tuple(failing_subgroups), len(probe))
    workdir = out_path.parent / f".{out_path.stem}.search"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        nodes = quantizable_nodes(fp32_path)
        result.sensitivity = measure_sensitivity(nodes, quantize, logits, fp32_path, probe,
                                                 workdir, out_of_time)
        if out_of_time():
            _end(result, STOPPED, f"the time limit ({limits.max_seconds:g} s) was reached "
                 "while measuring sensitivity", workdir / "kept.onnx", out_path)
        else:
            _walk(result, [s.node for s in result.sensitivity], quantize, judge, latency,
                  limits, out_of_time, workdir, out_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        result.seconds = clock() - start
    return result


def _walk(result: SearchResult, ranking: list[str], quantize: Quantize, judge: Judge,
          latency: Latency, limits: SearchLimits, out_of_time: Callable[[], bool],
          workdir: Path, out_path: Path) -> None:
    """Judge the prefixes of ``ranking`` from the longest proper one down; keep the last
    that passed in ``out_path``."""
    kept = workdir / "kept.onnx"
    for k in range(len(ranking) - 1, 0, -1):
        if out_of_time() or len(result.candidates) >= limits.max_candidates:
            bound = (f"time limit ({limits.max_seconds:g} s)" if out_of_time()
                     else f"candidate limit ({limits.max_candidates})")
            return _end(result, STOPPED, f"the {bound} was reached after "
                        f"{len(result.candidates)} candidates", kept, out_path)
        path = workdir / f"candidate{k}.onnx"
        try:
            quantize(ranking[:k], path)
        except StageFailed:
            continue  # these float nodes leave nothing quantized: not an INT8 model
        report, verdict = judge(path)
        result.candidates.append(_candidate(ranking[:k], verdict, latency(path)))
        if not verdict.passed:
            return _end(result, FOUND, f"the walk stopped at the first candidate that did "
                        f"not pass ({k} float node(s))", kept, out_path)
        shutil.move(path, kept)
        result.report, result.verdict = report, verdict
    why = ("fewer than two nodes change the model when quantized alone" if len(ranking) < 2
           else "every candidate passed, down to a single float node")
    _end(result, FOUND, why, kept, out_path)


def _end(result: SearchResult, status: str, why: str, kept: Path, out_path: Path) -> None:
    if result.verdict is None:
        first = ("no quantizable node changes the model when quantized alone"
                 if not result.sensitivity else
                 "no candidate passed: even the most float one broke a floor"
                 if result.candidates else "no candidate was judged")
        result.status, result.reason = GAVE_UP, f"{first} ({why})"
        return
    shutil.move(kept, out_path)
    result.path, result.status = out_path, status
    result.reason = (f"{len(result.float_nodes)} node(s) kept in float; {why}")


def _candidate(float_nodes: Sequence[str], verdict: StageVerdict,
               latency_ms: float | None) -> Candidate:
    return Candidate(tuple(float_nodes), verdict.passed,
                     {g.name: g.verdict for g in verdict.groups}, verdict.failing_subgroups,
                     latency_ms)


def probe_images(x: Tensor, group: Tensor, group_ids: Sequence[int], limit: int = 512,
                 per_group: int = 64) -> Probe:
    """The probe the nodes are ranked on: up to ``limit`` images of ``x`` [N, C, H, W] whose
    group is in ``group_ids`` (the failing subgroups), plus up to ``per_group`` images of
    every other group, each spread evenly over its images; in the order of ``x``."""
    group = group.detach().cpu().long()
    failing = torch.isin(group, torch.tensor(sorted(set(group_ids)), dtype=torch.long))
    picked = [_spread(torch.nonzero(failing).flatten(), limit)]
    for g in torch.unique(group[~failing]).tolist():
        picked.append(_spread(torch.nonzero(group == g).flatten(), per_group))
    idx = torch.sort(torch.cat(picked)).values
    return Probe(x[idx], group[idx])  # indexing: a streamed split decodes only these images


def _spread(idx: Tensor, limit: int) -> Tensor:
    """At most ``limit`` of ``idx`` [M], evenly spaced."""
    return idx[torch.arange(limit) * len(idx) // limit] if len(idx) > limit else idx
