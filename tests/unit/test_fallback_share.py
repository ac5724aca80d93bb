"""bench/fallback_share.py's share ratio against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from bench.fallback_share import share_ratio


def test_share_ratio_of_the_label_term_alone_is_one() -> None:
    z = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([2, 1])
    assert float(share_ratio(z, torch.randn(2, 3), y, torch.zeros(2))) == pytest.approx(1.0)


def test_share_ratio_by_hand() -> None:
    z, y = torch.zeros(1, 2), torch.tensor([0])
    # p - y = (-1/2, 1/2): |.| = 0.7071. A teacher equal to the student adds nothing, so at
    # alpha 1/2 the gradient is half the label term's.
    same = share_ratio(z, torch.zeros(1, 2), y, torch.tensor([0.5]))
    assert float(same) == pytest.approx(0.5)
    # Teacher logits (4, 0) at T 4: q_T = softmax(1, 0) = (0.7311, 0.2689), p_T = (1/2, 1/2);
    # at alpha 1 the gradient is T (p_T - q_T) = 4 (-0.2311, 0.2311), |.| = 1.3071.
    q = 1 / (1 + math.exp(-1))
    expected = 4 * (q - 0.5) * math.sqrt(2) / (0.5 * math.sqrt(2))
    assert float(share_ratio(z, torch.tensor([[4.0, 0.0]]), y, torch.tensor([1.0]))) == \
        pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(1.8485, abs=1e-4)
