"""Multi-class N-pair loss (Sohn — NeurIPS 2016, "Improved Deep Metric Learning with
Multi-class N-pair Loss Objective").

From the batch, one (anchor, positive) pair per class that has at least two samples: the
anchor a_c is the class's first sample in batch order, the positive p_c its second. (The
paper builds its batches as N such pairs of N distinct classes; from a P x K batch this
is the pair pytorch-metric-learning's `convert_to_pos_pairs_with_unique_labels` picks:
it takes the first (a, p) of all positive pairs in row-major order for each label.) The
other samples of a class are unused. With N pairs, in our notation (S the cosine
similarity of the L2-normalised batch),

    L = 1/N sum_i log(1 + sum_{j != i} exp(S_{a_i p_j} - S_{a_i p_i}))

— the N-pair-mc loss, i.e. the mean cross-entropy of the N x N logits
S[anchors][:, positives] with the diagonal as targets: each anchor must pick its own
class's positive among the N positives (the others are its N - 1 negatives).

Reduction: mean over the N pairs. Fewer than two pairs (single-class batch, all labels
distinct) leave no negative to compare with: a differentiable 0.

Deviations from the paper: Sohn's embeddings are unnormalised, with an L2 penalty on
their norms to keep the inner products bounded; here (the MS paper's setting) they are
L2-normalised inside the loss, so the penalty is a constant and is omitted. A
consequence: each difference S_{a_i p_j} - S_{a_i p_i} is at least -2 and, with no
temperature, the loss stays above log(1 + (N - 1) e^{-2}) even for a perfect embedding,
so every negative keeps a weight of order 1/N however well it is separated.

`scale` (s, default 1: the loss above) multiplies the logits, s (S_{a_i p_j} - S_{a_i p_i}):
on the unit sphere it stands for the norms Sohn's unnormalised embeddings grow to (it is
1 / temperature in NT-Xent's terms). It is not part of Sohn's formula; the book uses it to
show why the unscaled loss trains poorly on normalised embeddings.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    SimilarityLoss,
    check_finite,
    check_similarity,
    differentiable_zero,
    log1p_sum_exp,
    softmax_with_one,
)
from .registry import register

__all__ = ["npair_indices", "NPairLoss"]


def npair_indices(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(anchors, positives): per class with >= 2 samples, its first and second sample in
    batch order; pairs ordered by the anchor's position in the batch."""
    same = labels[:, None] == labels[None, :]
    earlier = torch.ones_like(same).tril(diagonal=-1)  # earlier[i, j]: j comes before i
    rank_in_class = (same & earlier).sum(dim=1)  # 0 for a class's first sample, 1 for its second
    is_second = rank_in_class == 1
    anchors = torch.nonzero((rank_in_class == 0) & (same.sum(dim=1) >= 2)).flatten()
    # The positive of anchor a is the one second-in-class sample sharing its label.
    positives = (same[anchors] & is_second[None, :]).to(torch.int8).argmax(dim=1)
    return anchors, positives


@register("npair")
class NPairLoss(SimilarityLoss):
    """Sohn's multi-class N-pair loss on one (first, second) sample pair per class."""

    def __init__(self, scale: float = 1.0, *, strict: bool = False):
        super().__init__(strict=strict)
        check_finite(scale=scale)
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        self.scale = float(scale)

    def _relative_logits(self, S: Tensor, anchors: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
        # x_ij = s (S_{a_i p_j} - S_{a_i p_i}); the off-diagonal mask selects the N - 1 negatives.
        logits = S[anchors][:, positives]
        off_diagonal = ~torch.eye(len(anchors), dtype=torch.bool, device=S.device)
        return self.scale * (logits - logits.diagonal()[:, None]), off_diagonal

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        anchors, positives = npair_indices(labels)
        if len(anchors) < 2:
            return differentiable_zero(S)
        x, off_diagonal = self._relative_logits(S, anchors, positives)
        return log1p_sum_exp(x, off_diagonal).mean()

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS. With p_i. the softmax of row i of the N x N logits (target p_ii):

        W[a_i, p_i] = s (1 - p_ii) / N,  W[a_i, p_j] = -s p_ij / N (j != i),  0 for unused pairs.
        softmax_with_one(x) gives p_ij for j != i (its extra logit 0 is the target's term).
        """
        check_similarity(S, labels)
        W = torch.zeros_like(S)
        anchors, positives = npair_indices(labels)
        N = len(anchors)
        if N < 2:
            return W
        x, off_diagonal = self._relative_logits(S, anchors, positives)
        p_off = softmax_with_one(x, off_diagonal)
        block = torch.diag_embed(p_off.sum(dim=1)) - p_off  # 1 - p_ii = sum_{j != i} p_ij
        W[anchors[:, None], positives[None, :]] = self.scale * block / N
        return W
