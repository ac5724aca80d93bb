"""Mixed precision on a model whose INT8 form destroys one class, by construction.

The model: conv ``a`` (one 4x4 kernel per channel, so a dense layer on 16 pixels) -> ReLU ->
1x1 conv ``b`` -> ReLU -> linear head. Channel 0 of ``a`` is an outlier (about 100 to 1,100
on every image); channels 1 and 2 carry classes 0 and 1 (up to 10); channel 3 carries class
2 at 1/1000 of that, and ``b`` scales it back up. INT8 quantizes ``a``'s output with one
scale for the whole tensor, a step of about 4.5, so class 2's channel rounds to zero and
class 2 is lost; classes 0 and 1 survive. That tensor is quantized by ``a`` (its output)
and by ``b`` (its input): keeping exactly those two nodes in float restores class 2, and
no smaller set does (every subset was checked when the model was designed).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from compression.data.dataset import Dataset, Split
from compression.errors import StageFailed
from compression.evaluation import evaluate, predict_logits
from compression.events import emit_nothing, never_stop
from compression.export import OnnxModel, export_onnx, quantize_int8
from compression.export.mixed_precision import (FOUND, GAVE_UP, STOPPED, Probe, SearchLimits,
                                                measure_sensitivity, probe_images,
                                                quantizable_nodes, search)
from compression.guardrails import FAIL, PASS, judge
from compression.pipeline.exports import export_artifacts, fastest_passed, shipping_sections
from compression.pipeline.job import Job
from compression.spec import ExportSpec, GuardrailSpec, JobSpec

NAMES = ("left", "right", "top")
NEEDED = ("a/Conv", "b/Conv")  # node name suffixes: the exporter may prefix a scope


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(1, 4, 4), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, 4, 4]
        h = torch.relu(self.b(torch.relu(self.a(x))))  # [B, 4, 1, 1]
        return self.head(h.flatten(1))  # [B, 3]


def _model() -> Tiny:
    m = Tiny().eval()
    w = torch.zeros(4, 1, 4, 4)
    w[0] = 1000 / 16  # the outlier: 1000 x the mean pixel, plus a bias of 100
    w[1, 0, :, :2], w[1, 0, :, 2:] = 10 / 8, -10 / 8  # left half brighter: class 0
    w[2] = -w[1]  # right half brighter: class 1
    w[3, 0, :2, :], w[3, 0, 2:, :] = 0.01 / 8, -0.01 / 8  # top half brighter: class 2
    with torch.no_grad():
        m.a.weight.copy_(w)
        m.a.bias.copy_(torch.tensor([100.0, 0, 0, 0]))
        m.b.weight.copy_(torch.diag(torch.tensor([0.001, 1, 1, 1000])).view(4, 4, 1, 1))
        m.b.bias.zero_()
        m.head.weight.copy_(torch.eye(4)[1:])  # logits: channels 1, 2, 3 of b
        m.head.bias.zero_()
    return m


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.5 + 0.05 * torch.rand(n, 1, 4, 4, generator=g)
    x[y == 0, :, :, :2] += 0.4
    x[y == 1, :, :, 2:] += 0.4
    x[y == 2, :, :2, :] += 0.4
    return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), y, y.clone())


POLICY = GuardrailSpec(max_drop_vs_student=0.01, min_samples=30)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    fp32 = export_onnx(_model(), (1, 4, 4), folder / "model.onnx", 17, 1, 64)
    holdout, test = _split(90, 1), _split(150, 2)
    reference = _evaluate(fp32, test, "onnx")
    calibration = holdout.x[:60]

    def quantize(float_nodes, out):
        return quantize_int8(fp32, out, calibration, nodes_to_exclude=float_nodes)

    def judged(path):
        report = _evaluate(path, test, "int8_mixed")
        return report, judge(report, POLICY, "int8_mixed", student=reference)

    names = [n for n, _ in quantizable_nodes(fp32)]
    needed = {n for n in names if n.endswith(NEEDED)}
    assert len(needed) == 2, names
    return {"needed": needed, "names": names, "folder": folder, "fp32": fp32, "holdout": holdout, "test": test,
            "reference": reference, "quantize": quantize, "judge": judged}


def _evaluate(path: Path, split: Split, name: str):
    return evaluate(predict_logits(OnnxModel(path), split), split, NAMES, NAMES, name=name)


def _logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    return OnnxModel(path)(x.float() / 255)


def _run(case, limits=SearchLimits(), judge=None, clock=None, out="mixed.onnx"):
    holdout = case["holdout"]
    kwargs = {"clock": clock} if clock else {}
    return search(case["fp32"], case["folder"] / out, ["top"],
                  probe_images(holdout.x, holdout.group, [2]), case["quantize"], _logits,
                  judge or case["judge"], lambda path: 1.0, limits, **kwargs)


def test_full_int8_loses_exactly_the_quiet_class(case):
    int8 = case["quantize"]([], case["folder"] / "int8.onnx")
    report, verdict = case["judge"](int8)
    accuracy = {g.name: g.accuracy for g in report.groups}
    assert accuracy == {"left": 1.0, "right": 1.0, "top": 0.0}
    assert verdict.failing_subgroups == ("top",)
    assert {g.name: g.verdict for g in verdict.groups}["top"] == FAIL


def test_the_search_keeps_exactly_the_needed_nodes_in_float(case):
    result = _run(case)
    assert result.status == FOUND, result.reason
    needed = case["needed"]
    assert set(result.float_nodes) == needed
    assert {s.node for s in result.sensitivity[:2]} == needed
    assert all(s.flip_rate == 1.0 for s in result.sensitivity[:2])
    assert all(s.flip_rate == 0.0 for s in result.sensitivity[2:])
    # the walk passed down to the two needed nodes and stopped at the first that failed
    assert [len(c.float_nodes) for c in result.candidates][-2:] == [2, 1]
    assert [c.passed for c in result.candidates][-2:] == [True, False]
    assert result.candidates[-1].verdicts["top"] == FAIL
    assert result.verdict.passed and result.path.is_file()
    assert {g.name: g.verdict for g in result.verdict.groups} == {n: PASS for n in NAMES}
    # the shipped file is a quantized model with exactly those nodes in float, and holds
    assert _evaluate(result.path, case["test"], "x").overall.accuracy == 1.0
    nodes = {n.name: n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "QuantizeLinear" in nodes.values() and needed <= set(nodes)


def test_quantizable_nodes_name_the_preprocessed_graph(case):
    names = case["names"]
    assert [n for n in names if n.endswith(("a/Conv", "b/Conv", "head/Gemm"))] == [
        n for n in names if n.endswith(("Conv", "Gemm"))]
    assert len([n for n in names if n.endswith(("Conv", "Gemm"))]) == 3


def test_a_candidate_bound_stops_the_walk_and_keeps_the_last_pass(case):
    result = _run(case, SearchLimits(max_candidates=1), out="bounded.onnx")
    assert result.status == STOPPED and "candidate limit (1)" in result.reason
    # the first candidate (every ranked node in float but the least sensitive) passed;
    # the walk would have judged one more
    assert len(result.candidates) == 1 and result.candidates[0].passed
    assert set(result.float_nodes) == case["needed"] and result.path.is_file()


def test_a_time_bound_gives_up_when_nothing_passed_yet(case):
    ticks = iter(range(0, 1000, 10))
    result = _run(case, SearchLimits(max_seconds=15), clock=lambda: next(ticks),
                  out="timed.onnx")
    assert result.status == GAVE_UP and result.path is None
    assert "time" in result.reason and not result.candidates
    assert not (case["folder"] / "timed.onnx").exists()


def test_the_search_gives_up_when_no_candidate_passes(case):
    def never(path):
        report, verdict = case["judge"](case["quantize"]([], path))
        return report, verdict  # full INT8 every time: class 2 always fails

    result = _run(case, judge=never, out="never.onnx")
    assert result.status == GAVE_UP and result.path is None and result.float_nodes == ()
    assert len(result.candidates) == 1 and not result.candidates[0].passed
    assert "no candidate passed" in result.reason


def test_the_probe_takes_the_failing_groups_and_a_sample_of_every_other():
    x = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1)
    group = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 0, 1])
    probe = probe_images(x, group, [2], per_group=2)
    assert isinstance(probe, Probe) and len(probe) == 6
    assert probe.x.flatten().tolist() == [0, 1, 4, 5, 8, 9]  # spread within each group
    assert probe.group.tolist() == [0, 1, 0, 1, 2, 2]
    assert probe_images(x, group, [1], limit=2).x.flatten().tolist() == [
        0, 1, 2, 4, 5, 6, 8, 9, 10]  # 2 of group 1's 5, every image of the others
    assert len(probe_images(x, group, [7])) == 12  # no failing group: every group sampled


def test_the_ranking_scores_a_node_by_its_worst_subgroup_not_the_pooled_rate(tmp_path):
    # 100 images of group 0 and 10 of group 1. Quantizing "wide" alone changes 10 answers of
    # group 0 (10%, pooled 9%), "narrow" 5 answers of group 1 (50%, pooled 4.5%), "none"
    # nothing: ranked on the worst subgroup, narrow comes first; pooled, it would not.
    x = torch.arange(110).view(110, 1, 1, 1)
    group = (torch.arange(110) >= 100).long()
    flipped = {"wide": torch.arange(10), "narrow": torch.arange(100, 105),
               "none": torch.arange(0)}
    nodes = [("wide", "Conv"), ("narrow", "Conv"), ("none", "Conv"), ("inert", "Flatten")]
    quantized = {}

    def quantize(float_nodes, out):
        (node,) = {n for n, _ in nodes} - set(float_nodes)
        if node == "inert":
            raise StageFailed("quantize_int8", "nothing quantized")
        quantized[out] = node
        return out

    def logits(path, images):
        out = torch.zeros(len(images), 2)
        out[:, 0] = 1
        if path in quantized:
            hit = torch.isin(images.flatten(), flipped[quantized.pop(path)])
            out[hit] = torch.tensor([0.0, 2.0])
        return out

    ranked = measure_sensitivity(nodes, quantize, logits, tmp_path / "fp32.onnx",
                                 Probe(x, group), tmp_path)
    assert [(s.node, s.flip_rate) for s in ranked] == [
        ("narrow", 0.5), ("wide", 0.1), ("none", 0.0)]
    # bare images are one subgroup: the pooled rate
    pooled = measure_sensitivity(nodes, quantize, logits, tmp_path / "fp32.onnx", x, tmp_path)
    assert [s.node for s in pooled] == ["wide", "narrow", "none"]
    assert pooled[0].flip_rate == pytest.approx(10 / 110)


def test_the_export_stage_runs_the_search_when_int8_fails_and_ships_by_latency(case):
    """The stage function a job calls: FP32 passes, full INT8 loses class 2, the search
    keeps the two needed nodes in float, and every artifact is timed and reported."""
    holdout, test = case["holdout"], case["test"]
    data = Dataset(holdout, holdout, test, NAMES, NAMES)
    spec = JobSpec(name="mixed-stage", guardrails=POLICY,
                   export=ExportSpec(tensorrt="off", opt_batch=4, max_batch=64,
                                     latency_warmup=0, latency_repeats=2))
    job = Job(spec, case["folder"] / "job", torch.device("cpu"), emit_nothing, never_stop)
    job.out_dir.mkdir()
    student = _model()
    reference = job.evaluate(student, data, "student")

    def judged(report, stage):
        return judge(report, POLICY, stage, student=reference)

    artifacts = {a.stage: a for a in export_artifacts(job, student, data, judged)}
    assert list(artifacts) == ["onnx", "int8", "int8_mixed"]
    assert artifacts["onnx"].passed and not artifacts["int8"].passed
    mixed = artifacts["int8_mixed"]
    assert mixed.passed and mixed.path == job.out_dir / "model.int8.mixed.onnx"
    assert set(mixed.details["float_nodes"]) == case["needed"]
    assert mixed.search.probe_images == 90  # every holdout image: the groups are small
    assert all(a.timing is not None for a in artifacts.values())
    assert fastest_passed(list(artifacts.values())) in ("onnx", "int8_mixed")
    section = shipping_sections(job, list(artifacts.values()))["mixed_precision"]
    assert section.status == FOUND and set(section.float_nodes) == case["needed"]
    assert section.failing_subgroups == ("top",)
