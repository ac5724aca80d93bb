"""Slice discovery: regions of a representation where one model is worse than another.

A per-class or per-subgroup gate sees only the groups someone named. Discovery looks for
the rest the way Domino (Eyuboglu et al., ICLR 2022) does, in a simpler and testable form:

1. Represent every example by a model's penultimate features (``features``), L2-normalised,
   centred and projected on the first ``components`` principal axes of the holdout split;
   metadata the data carries (attribute cells) is appended one-hot, scaled to the spread of
   the projected features so that it weighs like a typical distance between examples.
2. Cluster the holdout split with k-means (k-means++ seeding, a few seeded restarts, the
   lowest inertia kept). The clusters are regions of the representation: every example,
   of any split, belongs to the one with the nearest centre.
3. Score each cluster on holdout by the paired difference of the two models there: b
   examples the reference gets right and the candidate wrong, c the reverse, drop =
   (b - c) / n. Clusters with a positive drop are ranked by the lower end of its one-sided
   90% paired score interval (Tango), which weighs the size of the harm against how many
   examples show it, and the best ``candidates`` are kept.

The clustering never sees which model was right: a slice is a region of the representation,
so assigning the test split to it is not influenced by the outcomes it is then judged on.
Discovery uses the holdout split only; ``compression.guardrails.slices`` judges the
candidates on the test split, so the same examples never both find and judge a slice.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from compression.evaluation.stats import tango_interval, z_for

__all__ = ["Space", "Candidate", "fit_space", "kmeans", "assign", "rank_clusters"]

_RESTARTS = 4
_MAX_ITERS = 100
_SCORE_ALPHA = 0.1  # one-sided level of the lower bound that ranks clusters


@dataclass(frozen=True)
class Space:
    """The projection fitted on holdout: mean [D], basis [D, d], and the metadata scale."""

    mean: Tensor
    basis: Tensor
    num_meta: int  # one-hot metadata columns appended (0: none)
    meta_scale: float

    def embed(self, features: Tensor, meta: Tensor | None = None) -> Tensor:
        """features [N, D] (and meta [N] ids) -> points [N, d (+ num_meta)]."""
        z = (_normalised(features) - self.mean) @ self.basis
        if not self.num_meta:
            return z
        if meta is None:
            raise ValueError("this space was fitted with metadata; pass it")
        onehot = torch.nn.functional.one_hot(meta.long(), self.num_meta).float()
        return torch.cat([z, self.meta_scale * onehot], dim=1)


@dataclass(frozen=True)
class Candidate:
    """One cluster as a candidate slice, with its holdout evidence."""

    cluster: int
    n: int
    b: int  # reference right, candidate wrong
    c: int  # reference wrong, candidate right
    score: float  # the lower bound that ranked it

    @property
    def drop(self) -> float:
        return (self.b - self.c) / self.n


def fit_space(features: Tensor, components: int, meta: Tensor | None = None,
              num_meta: int = 0) -> Space:
    """PCA of the L2-normalised holdout features [N, D], keeping ``components`` axes."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D]; got {tuple(features.shape)}")
    x = _normalised(features)
    mean = x.mean(0)
    # right singular vectors of the centred data are the principal axes, by variance
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    d = max(1, min(components, vh.shape[0]))
    basis = vh[:d].T.contiguous()  # [D, d]
    spread = ((x - mean) @ basis).pow(2).sum(1).mean().sqrt().item()  # RMS distance to mean
    return Space(mean, basis, num_meta if meta is not None else 0, spread or 1.0)


def kmeans(points: Tensor, k: int, seed: int) -> Tensor:
    """Centres [k', d] of ``points`` [N, d] (k' = min(k, N)): the lowest-inertia run of
    ``_RESTARTS`` Lloyd runs from k-means++ seeds drawn from ``seed``."""
    k = max(1, min(k, points.shape[0]))
    gen = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    with _one_thread():
        for _ in range(_RESTARTS):
            centres = _lloyd(points, _plus_plus(points, k, gen))
            inertia = _sq_distances(points, centres).min(1).values.sum().item()
            if inertia < best_inertia:
                best, best_inertia = centres, inertia
    return best


@contextmanager
def _one_thread() -> Iterator[None]:
    """Lloyd's iterations are hundreds of small products ([N, d] x [d, k]); handing each
    to a thread pool costs more than it saves, ten times over on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assign(points: Tensor, centres: Tensor) -> Tensor:
    """The nearest centre of every point: [N] int64 (lowest index on ties)."""
    return _sq_distances(points, centres).argmin(1)


def rank_clusters(cluster: Tensor, ref_hit: Tensor, cand_hit: Tensor, k: int,
                  keep: int) -> list[Candidate]:
    """The ``keep`` clusters (of ``k``) where the candidate looks most worse on holdout.

    cluster [N] ids; ref_hit, cand_hit [N] bool. Only clusters with a positive drop are
    candidates; they are ranked by the lower end of the one-sided 90% Tango interval of
    the drop, then by cluster id.
    """
    n = torch.bincount(cluster, minlength=k)
    b = torch.bincount(cluster[ref_hit & ~cand_hit], minlength=k)
    c = torch.bincount(cluster[~ref_hit & cand_hit], minlength=k)
    z = z_for(_SCORE_ALPHA)
    found = [Candidate(i, int(n[i]), int(b[i]), int(c[i]),
                       tango_interval(int(b[i]), int(c[i]), int(n[i]), z)[0])
             for i in range(k) if n[i] and b[i] > c[i]]
    found.sort(key=lambda cand: (-cand.score, cand.cluster))
    return found[:keep]


def _normalised(features: Tensor) -> Tensor:
    x = features.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _plus_plus(points: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each next centre drawn with
    probability proportional to its squared distance to the nearest centre so far."""
    first = int(torch.randint(points.shape[0], (1,), generator=gen))
    centres = [points[first]]
    d2 = (points - points[first]).pow(2).sum(1)
    for _ in range(1, k):
        if d2.sum() <= 0:  # fewer distinct points than k: repeat one
            nxt = int(torch.randint(points.shape[0], (1,), generator=gen))
        else:
            nxt = int(torch.multinomial(d2, 1, generator=gen))
        centres.append(points[nxt])
        d2 = torch.minimum(d2, (points - points[nxt]).pow(2).sum(1))
    return torch.stack(centres)


def _sq_distances(points: Tensor, centres: Tensor) -> Tensor:
    """[N, k] squared Euclidean distances (expanded form: one matrix product)."""
    d2 = (points.pow(2).sum(1, keepdim=True) - 2 * points @ centres.T
          + centres.pow(2).sum(1))
    return d2.clamp_min(0)


def _lloyd(points: Tensor, centres: Tensor) -> Tensor:
    labels = None
    for _ in range(_MAX_ITERS):
        new = assign(points, centres)
        if labels is not None and torch.equal(new, labels):
            break  # no point changed cluster: the centres are fixed
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=centres.shape[0]).unsqueeze(1)
        # an emptied cluster keeps its centre rather than becoming NaN
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres
