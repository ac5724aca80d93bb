"""The class-offset search of bench/class_offsets.py: hand-worked offsets and the study's
own paired test."""

from __future__ import annotations

import numpy as np
import pytest

from bench._study_stats import harmed, paired_groups
from bench.class_offsets import (below_reference, class_accuracy, fit_offsets, holdout_score,
                                 oracle_score)


def _two_class_logits(gaps: list[float]) -> np.ndarray:
    """Logits [N, 2] whose class-1 minus class-0 gap is ``gaps``."""
    return np.stack([np.zeros(len(gaps)), np.array(gaps)], axis=1)


def test_class_accuracy_per_class():
    hit = np.array([True, False, True, True, False])
    labels = np.array([0, 0, 1, 1, 2])
    assert class_accuracy(hit, labels, 3).tolist() == [0.5, 1.0, 0.0]


def test_fit_offsets_finds_the_smallest_offset_that_fixes_a_class():
    # Class 0's second example needs class 0's offset at 0.5 or more (argmax gives a tie to
    # the lower index); from 1.0 on class 1's first example is lost. Offsets from 0.5 to 0.9
    # fix every example; the search keeps the smallest.
    labels = np.array([0, 0, 1, 1])
    logits = _two_class_logits([-1.0, 0.5, 1.0, 2.0])
    mean_accuracy = lambda hit: float(class_accuracy(hit, labels, 2).mean())  # noqa: E731
    offsets = fit_offsets(logits, labels, mean_accuracy)
    assert offsets.tolist() == [0.5, 0.0]


def test_fit_offsets_keeps_zero_when_nothing_gains():
    labels = np.array([0, 1])
    logits = _two_class_logits([-1.0, 1.0])
    offsets = fit_offsets(logits, labels, lambda hit: float(hit.mean()))
    assert offsets.tolist() == [0.0, 0.0]


def test_holdout_score_charges_three_times_a_drop_below_the_reference():
    labels = np.array([0, 0, 1, 1])
    ref = np.array([True, True, True, False])  # class accuracy 1.0 and 0.5
    score = holdout_score(labels, ref, 2)
    assert score(np.array([True, False, True, True])) == 0.75 - 3 * 0.5
    assert score(np.array([True, True, True, True])) == 1.0


def test_below_reference_is_the_studys_paired_test():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 200)
    ref = rng.random(800) < 0.8
    hit = ref.copy()
    flip = (labels == 1) & (rng.random(800) < 0.2)  # class 1 loses about 16 points
    hit[flip] = False
    hit[(labels == 2) & (rng.random(800) < 0.02)] ^= True  # class 2: noise both ways
    study = harmed(paired_groups({"hit": hit, "label": labels, "group": labels},
                                 {"hit": ref, "label": labels, "group": labels},
                                 [str(c) for c in range(4)]))
    assert below_reference(hit, ref, labels, 4) == [1]
    assert study == ["1"]


def test_oracle_score_puts_any_harm_below_every_harmless_answer():
    labels = np.repeat(np.arange(2), 100)
    ref = np.ones(200, bool)
    score = oracle_score(labels, ref, 2, target=0.5)
    harmless = ref.copy()
    harmful = ref.copy()
    harmful[:40] = False  # class 0 down 40 points
    assert score(harmful) == pytest.approx(-1.4)  # one class, down 0.4
    # Both classes at 1.0 count up to the target each, plus a thousandth of the mean.
    assert score(harmless) == 0.5 + 0.5 + 1e-3
