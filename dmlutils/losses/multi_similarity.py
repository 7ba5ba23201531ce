"""Multi-Similarity loss (Wang et al., CVPR 2019): MS mining (epsilon) + MS weighting (alpha, beta, lam).

Per anchor i, with P_i / N_i its positives / negatives,

    mining     keep negative j if S_ij + eps > min_{k in P_i} S_ik,
               keep positive j if S_ij - eps < max_{k in N_i} S_ik;
    loss_i  =  1/alpha log(1 + sum_{kept P_i} exp(-alpha (S_ik - lam)))
             + 1/beta  log(1 + sum_{kept N_i} exp( beta (S_ik - lam))),
    L       =  sum_i loss_i / batch size,

where an anchor with no kept positive or no kept negative contributes 0 — the
semantics of the official per-anchor loop (`dmlutils.losses.reference`), computed
here for all anchors at once with masked logsumexp (finite at beta = 200, S near 1).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    SimilarityLoss,
    _with_zero_column,
    check_similarity,
    label_masks,
    log1p_sum_exp,
    softmax_with_one,
    softplus,
)
from .registry import register

# The official code drops "positives" with S >= 1 - 1e-5: they are taken to be the anchor
# itself (or an exact duplicate), which carries no signal. Kept for equality with it.
SELF_SIMILARITY_TOLERANCE = 1e-5


def multi_similarity_mining(
    S: Tensor,
    labels: Tensor,
    epsilon: float,
    mine_positives: bool = True,
    mine_negatives: bool = True,
    reference_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Masks (kept positives, kept negatives) of MS mining; rows of anchors that keep
    no positive or no negative are all False (the anchor is skipped). Every quantity is
    a function of the anchor's own row of S."""
    positive, negative = label_masks(labels, reference_labels)
    S = S.detach()  # mining is a selection: no gradient flows through the thresholds
    positive = positive & (S < 1 - SELF_SIMILARITY_TOLERANCE)
    # A side that is not mined keeps all its pairs, but only for anchors that have the other
    # side at all (a mined side does this by itself: it compares with +-inf and keeps nothing).
    if mine_negatives:
        hardest_positive = torch.where(positive, S, float("inf")).amin(dim=1, keepdim=True)
        kept_negative = negative & (S + epsilon > hardest_positive)
    else:
        kept_negative = negative & positive.any(dim=1, keepdim=True)
    if mine_positives:
        hardest_negative = torch.where(negative, S, float("-inf")).amax(dim=1, keepdim=True)
        kept_positive = positive & (S - epsilon < hardest_negative)
    else:
        kept_positive = positive & negative.any(dim=1, keepdim=True)
    active = kept_positive.any(dim=1, keepdim=True) & kept_negative.any(dim=1, keepdim=True)
    return kept_positive & active, kept_negative & active


@register("multi_similarity")
class MultiSimilarityLoss(SimilarityLoss):
    """MS loss with the official code's defaults (alpha 2, beta 40, lam 0.5, epsilon 0.1).

    `mine_positives` / `mine_negatives` switch MS mining of each side off (all pairs kept);
    `weighting=False` removes the relative similarities: each kept pair is weighted by its
    self-similarity alone (binomial deviance on the mined pairs,
    1/alpha softplus(-alpha (S - lam)) + 1/beta softplus(beta (S - lam))), so the ablations
    can separate mining from weighting.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 40.0,
        lam: float = 0.5,
        epsilon: float = 0.1,
        mine_positives: bool = True,
        mine_negatives: bool = True,
        weighting: bool = True,
        *,
        strict: bool = False,
    ):
        super().__init__(strict=strict)
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be positive, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.lam, self.epsilon = alpha, beta, lam, epsilon
        self.mine_positives, self.mine_negatives, self.weighting = mine_positives, mine_negatives, weighting

    accepts_references = True

    def mined_pairs(self, S: Tensor, labels: Tensor, reference_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return multi_similarity_mining(
            S, labels, self.epsilon, self.mine_positives, self.mine_negatives, reference_labels
        )

    def _logits(self, S: Tensor) -> Tensor:
        """Stacked (positive, negative) logits -alpha (S - lam) and beta (S - lam): one
        batched log-sum-exp serves both sides (fewer small ops; this loss is op-bound)."""
        shifted = S - self.lam
        return torch.stack((shifted * -self.alpha, shifted * self.beta))

    def from_similarity(self, S: Tensor, labels: Tensor, reference_labels: Tensor | None = None) -> Tensor:
        check_similarity(S, labels, reference_labels)
        kept = torch.stack(self.mined_pairs(S, labels, reference_labels))
        logits = self._logits(S)
        if self.weighting:
            terms = log1p_sum_exp(logits, kept)  # (2, anchors): log(1 + sum_kept e^logit)
        else:
            terms = torch.where(kept, softplus(logits), torch.zeros_like(logits)).sum(dim=-1)
        return (terms[0].sum() / self.alpha + terms[1].sum() / self.beta) / S.shape[0]

    def value_and_pair_weights(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, W) from one pass of mining and one log-sum-exp: training's fast path
        (`SimilarityLoss.forward` then back-propagates W directly)."""
        kept = torch.stack(self.mined_pairs(S, labels))
        logits = self._logits(S)
        if self.weighting:
            # log(1 + sum e^x) and its softmax from one exp: shift by the row max (>= 0,
            # the padded logit 0 included), so exp never overflows (beta = 200 is fine).
            padded = _with_zero_column(logits, kept)
            shift = padded.amax(dim=-1, keepdim=True)
            exp = torch.exp(padded - shift)
            total = exp.sum(dim=-1, keepdim=True)
            terms = (shift + total.log()).squeeze(-1)
            weights = exp[..., 1:] / total
        else:
            terms = torch.where(kept, softplus(logits), torch.zeros_like(logits)).sum(dim=-1)
            weights = torch.sigmoid(logits) * kept
        batch = S.shape[0]
        return (terms[0].sum() / self.alpha + terms[1].sum() / self.beta) / batch, (weights[0] - weights[1]) / batch

    def pair_weights(self, S: Tensor, labels: Tensor, reference_labels: Tensor | None = None) -> Tensor:
        """W = -dL/dS: the paper's w+ on kept positives, -w- on kept negatives, over batch size.

        w+_ij = 1 / (exp(-alpha (lam - S_ij)) + sum_{k in P_i} exp(-alpha (S_ik - S_ij)))
              = exp(-alpha (S_ij - lam)) / (1 + sum_{k in P_i} exp(-alpha (S_ik - lam)))
        and w- likewise with beta and the kept negatives — a softmax with an extra logit 0.
        """
        check_similarity(S, labels, reference_labels)
        kept = torch.stack(self.mined_pairs(S, labels, reference_labels))
        logits = self._logits(S)
        if self.weighting:
            weights = softmax_with_one(logits, kept)
        else:
            weights = torch.sigmoid(logits) * kept
        return (weights[0] - weights[1]) / S.shape[0]


def mining_summary(loss: MultiSimilarityLoss, S: Tensor, labels: Tensor) -> dict[str, float]:
    """What MS mining does to one batch, for the ablation's question "does mining matter once
    pairs are weighted?": the share of positive and of negative pairs it keeps, and the share
    of the weight the same loss without mining gives each side (GPW's w+ and w-, from
    `pair_weights`) that falls on the pairs it drops. A small dropped weight means mining
    removes pairs the weighting had already all but ignored."""
    S = S.detach()
    kept_positive, kept_negative = loss.mined_pairs(S, labels)
    unmined = MultiSimilarityLoss(loss.alpha, loss.beta, loss.lam, loss.epsilon, False, False, loss.weighting)
    unmined_positive, unmined_negative = unmined.mined_pairs(S, labels)  # every pair of an anchor with both sides
    W = unmined.pair_weights(S, labels)  # +w+ / batch on positive pairs, -w- / batch on negative pairs

    def share(part: Tensor, whole: Tensor) -> float:
        total = float(whole.sum())
        return float(part.sum()) / total if total > 0 else float("nan")

    return {
        "positive_kept": share(kept_positive, unmined_positive),
        "negative_kept": share(kept_negative, unmined_negative),
        "positive_weight_dropped": share(W * (unmined_positive & ~kept_positive), W * unmined_positive),
        "negative_weight_dropped": share(-W * (unmined_negative & ~kept_negative), -W * unmined_negative),
    }
