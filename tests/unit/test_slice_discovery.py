"""Harmed-slice discovery on features and outcomes given directly: it finds a hidden harmed
minority, reports none where no harm exists, judges on test what it found on holdout, and
counts every candidate in one Holm family."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compression.evaluation.slices import assign, fit_space, kmeans, rank_clusters
from compression.guardrails import FAIL, INSUFFICIENT_EVIDENCE, PASS
from compression.guardrails.slices import (SliceComparison, SliceDiscovery, SliceExamples,
                                           discover_slices)
from compression.spec import GuardrailSpec, SliceDiscoverySpec, SliceRuleSpec, parse_spec

CLASSES = [f"c{k}" for k in range(10)]


def _split(n: int, seed: int, harm: float, *, share: float = 0.2, dims: int = 48):
    """Features of 10 class blobs; a hidden minority (``share`` of classes 0-2) sits off
    its class along one direction. Reference and candidate disagree on 8% of examples,
    half each way; on the minority the candidate is also wrong on ``harm`` of the
    examples. Returns (examples, hidden [N] bool)."""
    g = torch.Generator().manual_seed(seed)
    layout = torch.Generator().manual_seed(1234)  # the same geometry in every split
    centres = 3 * torch.randn(10, dims, generator=layout)
    direction = 3 * torch.randn(dims, generator=layout)
    y = torch.randint(10, (n,), generator=g)
    hidden = (y < 3) & (torch.rand(n, generator=g) < share)
    x = (centres[y] + torch.randn(n, dims, generator=g)
         + hidden.float()[:, None] * direction).relu()
    u = torch.rand(n, generator=g)
    only_ref, only_cand = u < 0.04, (u >= 0.04) & (u < 0.08)  # equally good: 4% each way
    ref = ((torch.rand(n, generator=g) < 0.9) | only_ref) & ~only_cand
    cand = (ref & ~only_ref) | only_cand
    cand[hidden & (torch.rand(n, generator=g) < harm)] = False
    return SliceExamples(x, ref, cand, y), hidden


def _discover(seed: int, harm: float, policy: GuardrailSpec | None = None,
              settings: SliceDiscoverySpec | None = None) -> tuple[SliceComparison, torch.Tensor]:
    holdout, _ = _split(2000, seed, harm)
    test, hidden = _split(3000, seed + 100, harm)
    found = discover_slices(holdout, test, stage="student", reference="one_hot",
                            representation="teacher", settings=settings or SliceDiscoverySpec(),
                            policy=policy or GuardrailSpec(), class_names=CLASSES, seed=seed)
    return found, hidden


def test_kmeans_separates_blobs_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    truth = torch.arange(300) % 3
    points = 10 * torch.eye(3)[truth] + 0.3 * torch.randn(300, 3, generator=g)
    centres = kmeans(points, 3, seed=5)
    labels = assign(points, centres)
    # each true blob is one cluster, and the three clusters differ
    assert all(labels[truth == k].unique().numel() == 1 for k in range(3))
    assert labels.unique().numel() == 3
    assert torch.equal(centres, kmeans(points, 3, seed=5))


def test_clusters_are_ranked_by_their_holdout_harm():
    cluster = torch.tensor([0] * 100 + [1] * 100 + [2] * 100)
    ref = torch.ones(300, dtype=torch.bool)
    cand = ref.clone()
    cand[:30] = False      # cluster 0: drop 30 points
    cand[100:105] = False  # cluster 1: drop 5 points
    ranked = rank_clusters(cluster, ref, cand, 3, keep=5)
    assert [c.cluster for c in ranked] == [0, 1]  # cluster 2 shows no drop: no candidate
    assert ranked[0].drop == pytest.approx(0.3) and ranked[0].b == 30 and ranked[0].c == 0


def test_a_hidden_harmed_minority_is_found_and_fails():
    found, hidden = _discover(seed=0, harm=0.4)
    assert found.harmed, [s.check.message for s in found.slices]
    members = torch.tensor([i for s in found.harmed for i in s.members])
    assert hidden[members].float().mean() > 0.9  # the harmed slices are the minority
    assert hidden[members].sum() / hidden.sum() > 0.5  # and hold most of it
    for s in found.harmed:
        assert set(s.classes) <= {"c0", "c1", "c2"}
        assert s.candidate.accuracy < s.reference.accuracy - 0.05
        assert s.check.verdict == FAIL and s.check.p_value <= s.check.threshold
        assert s.check.interval[0] > 0.05 and s.n >= 30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_harm_no_slice_is_reported_harmed(seed):
    found, _ = _discover(seed=seed, harm=0.0)
    assert found.family_size > 0  # candidates were judged, and none was shown harmed
    assert not found.harmed
    assert all(s.check.verdict in (PASS, INSUFFICIENT_EVIDENCE) for s in found.slices)


def test_every_candidate_counts_in_one_holm_family():
    found, _ = _discover(seed=0, harm=0.4)
    k = found.family_size
    assert k == len(found.slices) == 5 and found.unconfirmed == 0
    thresholds = sorted(s.check.threshold for s in found.slices)
    assert thresholds[0] == pytest.approx(0.05 / k)  # Holm's first step over all candidates
    bonferroni, _ = _discover(seed=0, harm=0.4, policy=GuardrailSpec(multiplicity="bonferroni"))
    assert all(s.check.threshold == pytest.approx(0.05 / k) for s in bonferroni.slices)


def test_test_outcomes_never_choose_the_slices():
    holdout, _ = _split(2000, 3, 0.4)
    test, _ = _split(3000, 103, 0.4)
    shuffled = dataclasses.replace(test, cand_hit=test.cand_hit[torch.randperm(3000)])
    runs = [discover_slices(holdout, t, stage="student", reference="one_hot",
                            representation="teacher", settings=SliceDiscoverySpec(),
                            policy=GuardrailSpec(), class_names=CLASSES, seed=3)
            for t in (test, shuffled)]
    assert [s.members for s in runs[0].slices] == [s.members for s in runs[1].slices]
    assert [s.check.b for s in runs[0].slices] != [s.check.b for s in runs[1].slices]


def test_slices_too_small_on_test_are_not_judged():
    found, _ = _discover(seed=0, harm=0.4, policy=GuardrailSpec(
        discovered_slices=SliceRuleSpec(max_drop=0.05, min_size=5000)))
    assert found.family_size == 0 and found.unconfirmed == 5 and not found.slices
    assert found.blocking and found.min_size == 5000


def test_the_margin_decides_what_counts_as_harm():
    found, _ = _discover(seed=0, harm=0.4, policy=GuardrailSpec(
        discovered_slices=SliceRuleSpec(max_drop=0.9)))
    assert not found.harmed and found.max_drop == 0.9


def test_metadata_separates_examples_the_features_do_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g).abs()
    meta = torch.arange(400) % 2
    space = fit_space(x, components=4, meta=meta, num_meta=2)
    points = space.embed(x, meta)
    assert points.shape == (400, 6)
    labels = assign(points, kmeans(points, 2, seed=0))
    assert all(labels[meta == k].unique().numel() == 1 for k in range(2))


def test_the_section_round_trips_through_json():
    found, _ = _discover(seed=0, harm=0.4)
    section = SliceDiscovery((found,), grid="slices.png")
    data = section.to_dict()
    assert data["harmed"] == len(found.harmed) and data["grid"] == "slices.png"
    first = data["comparisons"][0]["slices"][0]
    assert {"n", "classes", "candidate", "reference", "verdict", "members", "check"} <= set(first)
    low, high = first["candidate"]["ci"]
    assert low <= first["candidate"]["accuracy"] <= high
    assert SliceDiscovery.from_dict(data) == section
    with pytest.raises(ValueError, match="discovered_slices"):
        SliceDiscovery.from_dict({"comparisons": [{"stage": "student"}]})


def test_the_spec_switch_and_the_rule_are_typed():
    default = parse_spec({}).guardrails
    assert default.slice_discovery.enabled and default.discovered_slices is None
    spec = parse_spec({"guardrails": {"sliceDiscovery": {"enabled": False},
                                      "discovered_slices": {"max_drop": 0.1, "min_size": 50}}})
    assert not spec.guardrails.slice_discovery.enabled
    assert spec.guardrails.discovered_slices == SliceRuleSpec(0.1, 50)
    with pytest.raises(Exception) as caught:
        parse_spec({"guardrails": {"slice_discovery": {"clusters": 4, "max_slices": 6,
                                                       "representation": "pixels"},
                                   "discovered_slices": {"max_drop": 2}}})
    text = str(caught.value)
    assert "representation" in text and "max_drop" in text and "must not exceed" in text
