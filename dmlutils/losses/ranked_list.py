"""Ranked List Loss (Wang, Hua, Kodirov, Hu, Garnier, Robertson — CVPR 2019, "Ranked List
Loss for Deep Metric Learning"), the RLL-Simpler form with the paper's pair weighting.

On Euclidean distances of unit vectors, d_ij = |f_i - f_j| = sqrt(2 - 2 S_ij) in our
notation (S the cosine similarity of the L2-normalised batch, P_i / N_i the positives /
negatives of anchor i): negatives should be farther than `alpha`, positives closer than
`alpha - margin`. Per anchor i, the violating ("non-trivial") pairs are

    P*_i = {j in P_i : d_ij > alpha - margin},      N*_i = {j in N_i : d_ij < alpha},

and, with weights normalised over each set,

    w+_ij = exp(Tp (d_ij - (alpha - margin))),      w-_ij = exp(Tn (alpha - d_ij)),
    L_P(i) = sum_{j in P*_i} w+_ij [d_ij - (alpha - margin)] / sum_{P*_i} w+,
    L_N(i) = sum_{j in N*_i} w-_ij [alpha - d_ij]           / sum_{N*_i} w-,
    L      = 1/m sum_i ( L_P(i) + lam L_N(i) ),

m the batch size; an empty P*_i or N*_i contributes 0. Tp = 0 gives the paper's plain
mean over P*_i. The defaults are the official CUB setting (alpha 1.4, margin 0.2, Tp 0,
Tn 10) with lam = 1. The weights are computed as a softmax over the masked set (stable
for any temperature).

Weights and gradients. In the paper each weight scales its pair's gradient — the
gradient of pair j is w_ij / sum w times the unit-norm gradient of d_ij — and the weights
are not themselves differentiated; hence `detach_weights=True` (default) treats them as
constants. `detach_weights=False` differentiates through them, as pytorch-metric-learning
does: then dL_N(i)/d(alpha - d_ij) = q_ij (1 + Tn (alpha - d_ij - L_N(i))) with q the
normalised weights, which turns negative for negatives violating less than the average
by more than 1/Tn — the loss would pull such a negative *closer* (its pair weight W_ij
becomes positive), one more reason the paper keeps the weights fixed.

Degenerate batches: a single-class batch still pulls violating positives together and
an all-distinct batch still pushes violating negatives apart (L_P and L_N stand alone);
only a batch with no violating pair at all gives a differentiable 0.

Deviations from the paper: (1) the paper's Section 3.4 treats, in anchor i's list, the
other samples' features as constants, so only f(x_i) is updated by that list. Here, as
in pytorch-metric-learning, every d_ij passes its gradient to both ends through S; the
pair weights W = -dL/dS are the same either way (that choice is about dS/dtheta).
(2) pytorch-metric-learning adds 1e-5 per batch element to each weight sum and scales
L_P, L_N by (1 - imbalance), imbalance; this loss with lam = 1 is exactly twice its value
at imbalance = 0.5 up to that 1e-5 term (see tests/test_loss_ranked_list.py).
"""
from __future__ import annotations

from torch import Tensor

from .base import (
    NEGATIVES_ONLY,
    SimilarityLoss,
    check_finite,
    check_similarity,
    differentiable_zero,
    label_masks,
    masked_softmax,
    unit_distance,
)
from .registry import register

__all__ = ["RankedListLoss"]


@register("ranked_list")
class RankedListLoss(SimilarityLoss):
    """Ranked list loss with the official CUB hyper-parameters (alpha 1.4, margin 0.2, Tp 0, Tn 10)."""

    without_positive_pairs = NEGATIVES_ONLY  # its negative terms stand alone

    def __init__(
        self,
        margin: float = 0.2,
        alpha: float = 1.4,
        lam: float = 1.0,
        Tn: float = 10.0,
        Tp: float = 0.0,
        detach_weights: bool = True,
        *,
        strict: bool = False,
    ):
        super().__init__(strict=strict)
        check_finite(margin=margin, alpha=alpha, lam=lam, Tn=Tn, Tp=Tp)
        if alpha <= 0:
            raise ValueError(f"alpha (the distance negatives must exceed) must be > 0, got {alpha}.")
        if not 0 <= margin <= alpha:
            raise ValueError(
                f"margin must lie in [0, alpha] so that positives have a non-negative target "
                f"distance alpha - margin, got margin={margin}, alpha={alpha}."
            )
        if lam < 0:
            raise ValueError(f"lam (the weight of the negative term) must be >= 0, got {lam}.")
        if Tn < 0 or Tp < 0:
            raise ValueError(
                f"temperatures Tn and Tp must be >= 0 (0 = uniform weights), got Tn={Tn}, Tp={Tp}."
            )
        if not isinstance(detach_weights, bool):
            raise ValueError(f"detach_weights must be True or False, got {detach_weights!r}.")
        self.margin, self.alpha, self.lam, self.Tn, self.Tp = margin, alpha, lam, Tn, Tp
        self.detach_weights = detach_weights

    def _lists(self, S: Tensor, labels: Tensor):
        """The non-trivial sets, their violations and normalised weights, per anchor."""
        positive, negative = label_masks(labels)
        d, slope = unit_distance(S)
        positive_target = self.alpha - self.margin
        # Membership is a selection: it has no gradient, so compare detached distances.
        hard_positive = positive & (d.detach() > positive_target)
        hard_negative = negative & (d.detach() < self.alpha)
        positive_violation = d - positive_target
        negative_violation = self.alpha - d
        positive_weight = masked_softmax(self.Tp * positive_violation, hard_positive)
        negative_weight = masked_softmax(self.Tn * negative_violation, hard_negative)
        if self.detach_weights:
            positive_weight, negative_weight = positive_weight.detach(), negative_weight.detach()
        return (hard_positive, hard_negative, slope, positive_violation, negative_violation,
                positive_weight, negative_weight)

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        hard_positive, hard_negative, _, pos_violation, neg_violation, w_pos, w_neg = self._lists(S, labels)
        if not (hard_positive.any() or hard_negative.any()):
            return differentiable_zero(S)
        # The weights are 0 off their sets, so these sums run over P*_i and N*_i only.
        positive_term = (w_pos * pos_violation).sum(dim=1)
        negative_term = (w_neg * neg_violation).sum(dim=1)
        return (positive_term + self.lam * negative_term).sum() / S.shape[0]

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS = dL/dd * slope (slope = -dd/dS = 1/d), with q+ / q- the normalised weights:

        detach_weights=True:   dL/dd_ij = q+_ij / m on P*_i,  -lam q-_ij / m on N*_i;
        detach_weights=False:  the weights' own derivative adds, since for L = sum_j q_j v_j
                               with q = softmax(T v), dL/dv_k = q_k (1 + T (v_k - L)):
                               dL/dd_ij =  q+_ij (1 + Tp (v+_ij - L_P(i))) / m        on P*_i,
                               dL/dd_ij = -lam q-_ij (1 + Tn (v-_ij - L_N(i))) / m    on N*_i,
                               v+ = d - (alpha - margin), v- = alpha - d.
        """
        check_similarity(S, labels)
        _, _, slope, pos_violation, neg_violation, w_pos, w_neg = self._lists(S, labels)
        pull, push = w_pos, w_neg
        if not self.detach_weights:
            positive_term = (w_pos * pos_violation).sum(dim=1, keepdim=True)
            negative_term = (w_neg * neg_violation).sum(dim=1, keepdim=True)
            pull = w_pos * (1 + self.Tp * (pos_violation - positive_term))
            push = w_neg * (1 + self.Tn * (neg_violation - negative_term))
        return (pull - self.lam * push) * slope / S.shape[0]
