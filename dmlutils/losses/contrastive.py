"""Contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006), in the similarity form of the MS paper.

Hadsell et al. pull positive pairs together and push negative pairs apart until their
distance exceeds a margin. The MS paper (Wang et al., CVPR 2019, Section 3) re-states it on
the cosine similarity S of L2-normalised embeddings:

    L = sum_{positive pairs} (1 - S_ij) + sum_{negative pairs} [S_ij - lam]_+ .

We give the positive side a margin too and average each side over its own pairs:

    L = mean_{(i, j): j in P_i} [pos_margin - S_ij]_+  +  mean_{(i, j): j in N_i} [S_ij - neg_margin]_+

over ordered pairs ((i, j) and (j, i) both counted, diagonal excluded); a side with no
pairs contributes 0. With `pos_margin = 1` (the default) the positive term is exactly the
paper's (1 - S_ij), since S_ij <= 1; `neg_margin` is the paper's lam.

Deviation from the paper: a mean per side instead of one sum over all pairs. A P x K batch
has far more negative than positive pairs (75 : 4 per anchor at 16 x 5); the sum would let
the negatives drown the positives and make the loss scale with the batch size. This is the
reduction of pytorch-metric-learning's `ContrastiveLoss` with a `MeanReducer`, which our
tests use as the oracle. With `reduction="nonzero_mean"` each side is averaged over its
violating pairs only (the library's default, `AvgNonZeroReducer`): the mean over all
pairs fades as most negatives fall below the margin, while every positive pair short of
`pos_margin` keeps pulling, so the positives come to dominate; over the violating pairs
the few negatives still above the margin keep a weight of the same order.

GPW view: W = -dL/dS is +1/n_+ on every positive pair with S_ij < pos_margin, -1/n_- on
every negative pair with S_ij > neg_margin, 0 elsewhere — constant weights, switched on
and off by the margins; n_+ and n_- count a side's pairs ("mean") or its violating pairs
("nonzero_mean").
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor

from .base import NEGATIVES_ONLY, SimilarityLoss, check_finite, check_reduction, check_similarity, label_masks, masked_mean
from .registry import register


@register("contrastive")
class ContrastiveLoss(SimilarityLoss):
    """Margin-based contrastive loss on cosine similarities: the mean over the positive pairs
    plus the mean over the negative pairs (all of a side's pairs, or its violating ones)."""

    without_positive_pairs = NEGATIVES_ONLY  # its negative terms stand alone

    def __init__(self, pos_margin: float = 1.0, neg_margin: float = 0.5, reduction: str = "mean", *, strict: bool = False):
        super().__init__(strict=strict)
        check_finite(pos_margin=pos_margin, neg_margin=neg_margin)
        for name, value in (("pos_margin", pos_margin), ("neg_margin", neg_margin)):
            # Outside [-1, 1] the hinge on a cosine similarity is always on or always off.
            if not -1.0 <= value <= 1.0:
                raise ValueError(
                    f"{name} must lie in [-1, 1] (the range of a cosine similarity), got {value}."
                )
        if neg_margin >= pos_margin:
            raise ValueError(
                f"neg_margin ({neg_margin}) must be below pos_margin ({pos_margin}): positives are "
                "pulled above pos_margin and negatives pushed below neg_margin."
            )
        check_reduction(reduction)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)
        self.reduction = reduction

    accepts_references = True

    def from_similarity(self, S: Tensor, labels: Tensor, reference_labels: Tensor | None = None) -> Tensor:
        check_similarity(S, labels, reference_labels)
        positive, negative = label_masks(labels, reference_labels)
        if self.reduction == "nonzero_mean":
            positive, negative = self._violating(S, positive, negative)
        # Over all of a side's pairs ("mean") the hinge is 0 on the pairs that do not violate.
        return masked_mean(F.relu(self.pos_margin - S), positive) + masked_mean(F.relu(S - self.neg_margin), negative)

    def _violating(self, S: Tensor, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
        """The violating positive and negative pairs: strictly, S_ij < pos_margin and
        S_ij > neg_margin, so at the hinge's kink the zero sub-gradient is used, as
        autograd's relu does."""
        return positive & (S < self.pos_margin), negative & (S > self.neg_margin)

    def pair_weights(self, S: Tensor, labels: Tensor, reference_labels: Tensor | None = None) -> Tensor:
        """W = -dL/dS: 1/n_+ on violating positives, -1/n_- on violating negatives, where a
        side's n counts its pairs ("mean") or its violating pairs ("nonzero_mean")."""
        check_similarity(S, labels, reference_labels)
        positive, negative = label_masks(labels, reference_labels)
        pulled, pushed = self._violating(S, positive, negative)
        if self.reduction == "nonzero_mean":
            positive, negative = pulled, pushed
        n_positive = positive.sum().clamp_min(1).to(S.dtype)
        n_negative = negative.sum().clamp_min(1).to(S.dtype)
        return pulled.to(S.dtype) / n_positive - pushed.to(S.dtype) / n_negative
