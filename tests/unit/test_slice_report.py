"""Discovered slices in the job's verdict, report.json and model card: a FAIL blocks under
the discovered_slices rule and only then; the section round-trips; the card shows it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compression.artifacts.card import draw_slice_grid, render_model_card
from compression.guardrails import FAIL, INSUFFICIENT_EVIDENCE
from compression.guardrails.slices import SliceDiscovery
from compression.pipeline.discovery import with_slices
from compression.report import JobReport
from compression.spec import GuardrailSpec, SliceRuleSpec
from tests.reports import eval_report, job_report
from tests.unit.test_slice_discovery import _discover

RULE = GuardrailSpec(discovered_slices=SliceRuleSpec(max_drop=0.05, min_size=30),
                     min_samples=10)


def _report(policy: GuardrailSpec, harm: float) -> tuple[JobReport, SliceDiscovery]:
    """A student stage judged under ``policy``, with discovery's slices added to it."""
    found, _ = _discover(seed=0, harm=harm, policy=policy)
    base = job_report({"student": eval_report("student", a=(90, 100), b=(85, 100))}, policy)
    stage = with_slices(base.stages[0], found)
    section = SliceDiscovery((found,), grid="slices.png" if found.harmed else None)
    report = dataclasses.replace(base, guardrails=dataclasses.replace(
        base.guardrails, stages=(stage,)), discovered_slices=section)
    return report, section


def test_under_the_rule_a_harmed_slice_blocks_the_stage():
    report, section = _report(RULE, harm=0.4)
    stage = report.stages[0]
    harmed = [s.name for _, s in section.harmed]
    assert harmed and not stage.passed
    blocking = [c for c in stage.failing_checks if c.rule == "discovered_slices"]
    assert [c.subgroup for c in blocking] == harmed
    assert all(c.verdict == FAIL for c in blocking)
    assert "discovered_slices" in report.guardrails.summary


def test_without_the_rule_slices_are_reported_and_never_block():
    policy = dataclasses.replace(RULE, discovered_slices=None)
    report, section = _report(policy, harm=0.4)
    assert section.harmed  # judged with the rule's defaults, and reported
    assert report.stages[0].passed
    assert not any(c.rule == "discovered_slices" for c in report.stages[0].checks)


def test_insufficient_evidence_on_a_slice_does_not_block():
    # a margin no slice can be shown to exceed or to keep at this size
    policy = dataclasses.replace(RULE, discovered_slices=SliceRuleSpec(max_drop=0.0))
    found, _ = _discover(seed=1, harm=0.0, policy=policy)
    verdicts = {s.check.verdict for s in found.slices}
    assert INSUFFICIENT_EVIDENCE in verdicts and FAIL not in verdicts
    base = job_report({"student": eval_report("student", a=(90, 100))}, policy)
    stage = with_slices(base.stages[0], found)
    assert stage.passed and stage.verdict == INSUFFICIENT_EVIDENCE
    assert set(s.name for s in found.slices) <= set(stage.advisory_subgroups)


def test_report_json_keeps_the_section_and_reads_it_back():
    report, section = _report(RULE, harm=0.4)
    data = report.to_dict()
    slices = data["discovered_slices"]["comparisons"][0]["slices"]
    assert data["discovered_slices"]["harmed"] == len(section.harmed)
    first = slices[0]
    assert first["n"] == len(first["members"]) and sum(first["classes"].values()) == first["n"]
    back = JobReport.from_dict(data)
    assert back.discovered_slices == section
    assert not back.stages[0].passed  # the slice checks travel in the stage's verdict
    older = {k: v for k, v in data.items() if k != "discovered_slices"}
    assert JobReport.from_dict(older).discovered_slices is None


def test_a_report_from_before_the_slice_policy_still_reads():
    report, _ = _report(GuardrailSpec(), harm=0.0)
    data = report.to_dict()
    for key in ("discovered_slices", "slice_discovery"):
        del data["guardrails"]["policy"][key]
        del data["spec"]["guardrails"][key]
    assert JobReport.from_dict(data).guardrails.policy == GuardrailSpec()


def test_the_card_shows_the_slices_and_their_images(tmp_path):
    report, section = _report(RULE, harm=0.4)
    card = render_model_card(report, shipped_file=None, triton_dir=None)
    text = card.split("## Discovered slices", 1)[1].split("## Intended use", 1)[0]
    for _, s in section.harmed:
        assert f"| {s.name} | {s.n} |" in text and "**FAIL**" in text
    assert "![Example test images of each harmed slice](slices.png)" in text
    images = torch.randint(0, 255, (3000, 1, 8, 8), dtype=torch.uint8)
    path = draw_slice_grid(tmp_path / "slices.png", section.comparisons, images)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_card_without_discovery_has_no_slice_section():
    report = job_report({"student": eval_report("student", a=(90, 100))}, GuardrailSpec())
    assert "Discovered slices" not in render_model_card(report, shipped_file=None,
                                                        triton_dir=None)


@pytest.mark.parametrize("blocking", [True, False])
def test_no_slices_leave_the_verdict_alone(blocking):
    policy = RULE if blocking else GuardrailSpec()
    base = job_report({"student": eval_report("student", a=(90, 100))}, policy)
    assert with_slices(base.stages[0], None) == base.stages[0]
