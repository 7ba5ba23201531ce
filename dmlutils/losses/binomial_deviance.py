"""Binomial deviance loss (Yi, Lei, Liao, Li, ICPR 2014), as re-stated in the MS paper (Section 3).

Every pair is a logistic regression on its similarity, with a threshold lam: positives are
pushed above it with scale alpha, negatives below it with scale beta. In our notation,
with m the batch size,

    L = 1/m sum_i [ 1/|P_i| sum_{j in P_i} log(1 + exp(-alpha (S_ij - lam)))
                  + 1/|N_i| sum_{j in N_i} log(1 + exp( beta (S_ij - lam))) ],

where an anchor's side with no pairs (|P_i| = 0 or |N_i| = 0) contributes 0. Each
log(1 + exp(x)) is `base.softplus(x)`, exact and finite for any scale and any S in [-1, 1].

Yi et al.'s form and the mapping. They write J = sum W . log(1 + exp(-alpha (S - beta_Yi) . M))
with M_ij = 1 on positive pairs and M_ij = -C on negative pairs (C is an extra cost on
negative pairs: their logistic term is C times steeper), and W_ij = 1/n_pos on positives,
1/n_neg on negatives. On a negative pair that is
log(1 + exp(alpha C (S - beta_Yi))): the same loss with our beta = alpha * C and lam = beta_Yi.
With alpha = 2 and C = 25 (the cost Ustinova & Lempitsky, NIPS 2016, use for binomial
deviance on CUB-200-2011) that is beta = 50, our default; lam = 0.5 is their threshold.

Deviation: Yi et al. normalise by the batch's total numbers of positive and negative pairs;
we average per anchor and then over anchors (the reduction of the MS paper's losses).
On a P x K batch every anchor has the same |P_i| = K - 1 and |N_i| = (P - 1) K, and the
two are identical; they differ only on unbalanced batches.

GPW view (the paper's Section 3): W_ij = -dL/dS_ij is
    alpha sigmoid(-alpha (S_ij - lam)) / (m |P_i|)  on positives (large for a far positive),
   -beta  sigmoid( beta (S_ij - lam)) / (m |N_i|)   on negatives (large for a close negative):
each pair's weight depends on its own similarity only — no relative similarity.
"""
from __future__ import annotations


import torch
from torch import Tensor

from .base import NEGATIVES_ONLY, SimilarityLoss, check_finite, check_similarity, label_masks, softplus
from .registry import register


@register("binomial_deviance")
class BinomialDevianceLoss(SimilarityLoss):
    """Binomial deviance on cosine similarities: alpha 2, beta 50 (= alpha * C, C = 25), lam 0.5."""

    without_positive_pairs = NEGATIVES_ONLY  # its negative terms stand alone

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, lam: float = 0.5, *, strict: bool = False):
        super().__init__(strict=strict)
        check_finite(alpha=alpha, beta=beta, lam=lam)
        if alpha <= 0 or beta <= 0:
            raise ValueError(
                f"alpha and beta must be positive (the slopes of the positive and negative "
                f"logistic terms), got alpha={alpha}, beta={beta}."
            )
        if not -1.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [-1, 1] (it is a threshold on cosine similarity), got {lam}.")
        self.alpha, self.beta, self.lam = float(alpha), float(beta), float(lam)

    def _per_pair(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Masks, logits and the per-anchor divisors m |P_i| and m |N_i| (clamped to >= m)."""
        positive, negative = label_masks(labels)
        positive_logits = -self.alpha * (S - self.lam)
        negative_logits = self.beta * (S - self.lam)
        m = S.shape[0]
        positive_divisor = positive.sum(dim=1, keepdim=True).clamp_min(1).to(S.dtype) * m
        negative_divisor = negative.sum(dim=1, keepdim=True).clamp_min(1).to(S.dtype) * m
        return positive, negative, positive_logits, negative_logits, positive_divisor, negative_divisor

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        positive, negative, pos_logits, neg_logits, pos_div, neg_div = self._per_pair(S, labels)
        zero = torch.zeros_like(S)
        positive_terms = torch.where(positive, softplus(pos_logits), zero) / pos_div
        negative_terms = torch.where(negative, softplus(neg_logits), zero) / neg_div
        return positive_terms.sum() + negative_terms.sum()

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS: alpha sigmoid(-alpha (S - lam)) / (m |P_i|) on positives,
        -beta sigmoid(beta (S - lam)) / (m |N_i|) on negatives, 0 elsewhere."""
        check_similarity(S, labels)
        positive, negative, pos_logits, neg_logits, pos_div, neg_div = self._per_pair(S, labels)
        w_positive = self.alpha * torch.sigmoid(pos_logits) * positive / pos_div
        w_negative = self.beta * torch.sigmoid(neg_logits) * negative / neg_div
        return w_positive - w_negative
