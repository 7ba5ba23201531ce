"""Lifted structured loss (Oh Song, Xiang, Jegelka, Savarese — CVPR 2016, "Deep Metric
Learning via Lifted Structured Feature Embedding"), on Euclidean distances of unit vectors.

In our notation (S the cosine-similarity matrix of the L2-normalised batch, P_i / N_i the
positives / negatives of sample i, d_ij = |f_i - f_j| = sqrt(2 - 2 S_ij)), for every
*ordered* positive pair (i, j), j in P_i,

    J_ij = log( sum_{k in N_i} exp(margin - d_ik) + sum_{l in N_j} exp(margin - d_jl) ) + d_ij,
    L    = 1 / (2 |P|) * sum_{(i, j) ordered, j in P_i} [J_ij]_+^2,

with |P| the number of ordered positive pairs. Each unordered pair {i, j} appears twice
(J_ij and J_ji), so this is the paper's 1 / (2 |P_u|) sum_{{i,j} in P_u} [J_ij]_+^2 over the
unordered pairs P_u (the paper's J is symmetric in i and j; here S is not assumed
symmetric, so each ordered pair reads its own entry S_ij). The log-sum-exp is the paper's
smooth upper bound of the hardest negative of either end; it is computed per sample once,
a_i = logsumexp_{k in N_i}(margin - d_ik), then J_ij = logaddexp(a_i, a_j) + d_ij.

Reduction: mean over ordered positive pairs, halved (as pytorch-metric-learning's
`LiftedStructureLoss` with `MeanReducer`, which divides by 2 "since each positive pair
will be counted twice"). A pair whose two samples have no negatives is excluded; since
N_i is empty only when every sample shares i's label, that happens only for a
single-class batch, which (like a batch with no positive pair) gives a differentiable 0.

Deviations from the paper: none in the formula. The paper's embeddings are not
normalised; here (the MS paper's setting) they are, so d_ij <= 2 and every negative term is
at least exp(margin - 2). With the default margin 1 a pair therefore has
J_ij >= log(|N_i| + |N_j|) - 1 + d_ij > 0 as soon as |N_i| + |N_j| >= 3: on the unit sphere
the loss never reaches 0, it keeps pushing negatives apart.

`scale` (s, default 1: the loss above) measures the distances between vectors of norm s,
d_ij -> s d_ij, with the margin unchanged: it stands for the norms of Oh Song et al.'s
unnormalised embeddings, as N-pair's `scale` does for Sohn's. Then J_ij <= 0 once every
negative of i and j is farther than d_ij by (margin + log(|N_i| + |N_j|)) / s in unit
distances: the loss can reach 0, and the negatives well beyond that stop counting
(chapter 6's setting study tries it).

The MS paper's Section 3 rewrites lifted structure as a *generalised*, per-anchor loss
(the form of Hermans, Beyer, Leibe 2017, "In Defense of the Triplet Loss", which
pytorch-metric-learning calls `GeneralizedLiftedStructureLoss`):

    L = 1/m sum_i [ logsumexp_{j in P_i}(d_ij - pos_margin) + logsumexp_{k in N_i}(neg_margin - d_ik) ]_+ ,

implemented below as `GeneralizedLiftedStructureLoss` (not registered: the registry's
`lifted_structure` is the original paper's loss).

The Euclidean-distance machinery it shares with the ranked list loss (`unit_distance`,
`masked_logsumexp`, `masked_softmax`) lives in `base.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    SimilarityLoss,
    check_finite,
    check_similarity,
    differentiable_zero,
    label_masks,
    masked_logsumexp,
    masked_softmax,
    unit_distance,
)
from .registry import register

__all__ = [
    "LiftedStructureLoss",
    "GeneralizedLiftedStructureLoss",
]

@register("lifted_structure")
class LiftedStructureLoss(SimilarityLoss):
    """Oh Song et al.'s lifted structured loss; `margin` is the paper's alpha (default 1),
    `scale` the embeddings' norm (default 1: unit vectors)."""

    def __init__(self, margin: float = 1.0, scale: float = 1.0, *, strict: bool = False):
        super().__init__(strict=strict)
        check_finite(margin=margin, scale=scale)
        if margin < 0:
            raise ValueError(
                f"margin must be >= 0 (the distance a negative should keep beyond the positive), got {margin}."
            )
        if scale <= 0:
            raise ValueError(f"scale must be positive (the embeddings' norm), got {scale}.")
        self.margin = margin
        self.scale = float(scale)

    def _distances(self, S: Tensor) -> tuple[Tensor, Tensor]:
        """(d, slope): distances between vectors of norm `scale`, and -dd/dS."""
        d, slope = unit_distance(S)
        return self.scale * d, self.scale * slope

    def _hinge_arguments(self, d: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
        """(a, J): a_i = logsumexp_{k in N_i}(margin - d_ik), J_ij = logaddexp(a_i, a_j) + d_ij.

        a_i is finite for every row whenever the batch has any negative pair (then every
        sample has one), which the callers check first.
        """
        a = masked_logsumexp(self.margin - d, negative)
        return a, torch.logaddexp(a[:, None], a[None, :]) + d

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        positive, negative = label_masks(labels)
        if not positive.any() or not negative.any():
            return differentiable_zero(S)
        d, _ = self._distances(S)
        _, J = self._hinge_arguments(d, negative)
        hinge_squared = torch.where(positive, F.relu(J) ** 2, torch.zeros_like(J))
        return hinge_squared.sum() / (2 * positive.sum())

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS by hand. With M ordered positive pairs and g_ij = [J_ij]_+ / M:

        positive (i, j):  dL/dd_ij = g_ij;
        negative (i, k):  dL/dd_ik = -q_ik G_i, q_ik = softmax_{k in N_i}(margin - d_ik),
                          G_i = sum_{j in P_i} (g_ij + g_ji) sigmoid(a_i - a_j)
                          (dJ_ij/da_i = dJ_ji/da_i = sigmoid(a_i - a_j));
        then W_ij = dL/dd_ij * slope_ij with slope = -dd/dS = s^2 / d (d = s |f_i - f_j|).
        """
        check_similarity(S, labels)
        positive, negative = label_masks(labels)
        if not positive.any() or not negative.any():
            return torch.zeros_like(S)
        d, slope = self._distances(S)
        a, J = self._hinge_arguments(d, negative)
        g = torch.where(positive, F.relu(J), torch.zeros_like(J)) / positive.sum()
        share = torch.sigmoid(a[:, None] - a[None, :])
        G = ((g + g.T) * share).sum(dim=1)
        q = masked_softmax(self.margin - d, negative)
        return (g - q * G[:, None]) * slope


class GeneralizedLiftedStructureLoss(SimilarityLoss):
    """Per-anchor ("generalised") lifted structure loss of Hermans et al. 2017, used by the
    MS paper's Section 3; not in the registry.

    loss_i = [logsumexp_{P_i}(d_ij - pos_margin) + logsumexp_{N_i}(neg_margin - d_ik)]_+,
    L = sum_i loss_i / batch size. An anchor with no positive or no negative contributes 0
    (the empty log-sum-exp is -inf). pytorch-metric-learning's `GeneralizedLiftedStructureLoss`
    instead counts an empty side as 0, so a singleton anchor still adds
    [logsumexp_{N_i}(neg_margin - d_ik)]_+ there; on batches without singletons the two agree.
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0):
        super().__init__()
        check_finite(pos_margin=pos_margin, neg_margin=neg_margin)
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def _anchor_terms(self, S: Tensor, labels: Tensor):
        positive, negative = label_masks(labels)
        d, slope = unit_distance(S)
        pos_logits, neg_logits = d - self.pos_margin, self.neg_margin - d
        active = positive.any(dim=1) & negative.any(dim=1)
        per_anchor = masked_logsumexp(pos_logits, positive) + masked_logsumexp(neg_logits, negative)
        per_anchor = torch.where(active, F.relu(per_anchor), torch.zeros_like(per_anchor))
        return positive, negative, slope, pos_logits, neg_logits, per_anchor

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        positive, negative = label_masks(labels)
        if not (positive.any(dim=1) & negative.any(dim=1)).any():
            return differentiable_zero(S)
        *_, per_anchor = self._anchor_terms(S, labels)
        return per_anchor.sum() / S.shape[0]

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS: g_i = 1[loss_i > 0] / m; dL/dd = g_i softmax_{P_i}(d - pos_margin) on
        positives and -g_i softmax_{N_i}(neg_margin - d) on negatives; W = dL/dd * slope."""
        check_similarity(S, labels)
        positive, negative, slope, pos_logits, neg_logits, per_anchor = self._anchor_terms(S, labels)
        g = (per_anchor > 0).to(S.dtype)[:, None] / S.shape[0]
        dL_dd = g * (masked_softmax(pos_logits, positive) - masked_softmax(neg_logits, negative))
        return dL_dd * slope
