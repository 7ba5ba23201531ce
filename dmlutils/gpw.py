"""General Pair Weighting (Wang et al., CVPR 2019, Section 3).

A pair-based loss is a function L(S) of the batch similarity matrix S_ij = <f_i, f_j>.
By the chain rule its gradient with respect to the embeddings is

    dL/df_i = sum_j (dL/dS_ij) f_j + sum_j (dL/dS_ji) f_j = -sum_j (W_ij + W_ji) f_j,

with W = -dL/dS. So every such loss moves each embedding by a weighted sum of the
others: towards positives (W_ij > 0), away from negatives (W_ij < 0). The loss *is*
its pair-weighting scheme; the paper's weight of pair {i, j} is w_ij = |W_ij|.

This module computes W by autograd (`autograd_pair_weights`) — the check on every
closed-form `loss.pair_weights` — and the embedding gradient from W
(`embedding_gradient`), the identity the book's chapter 2 verifies.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["autograd_pair_weights", "embedding_gradient", "pair_weight_summary"]


def autograd_pair_weights(loss: nn.Module, S: Tensor, labels: Tensor) -> Tensor:
    """W = -dL/dS by automatic differentiation of `loss.from_similarity(S, labels)`.

    Every entry S_ij is an independent variable (S is not symmetrised), which is how the
    losses read S: row i holds anchor i's pairs. Entries the loss never reads get W = 0.
    """
    if not hasattr(loss, "from_similarity"):
        raise ValueError(
            f"{type(loss).__name__} is not a function of the batch similarity matrix "
            "(it has no from_similarity); GPW weights are defined for losses L(S)."
        )
    S = S.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = loss.from_similarity(S, labels)
        (grad,) = torch.autograd.grad(value, S, allow_unused=True)
    if grad is None:  # the loss did not depend on S at all (e.g. nothing to learn from)
        return torch.zeros_like(S.detach())
    return -grad


def embedding_gradient(W: Tensor, features: Tensor) -> Tensor:
    """dL/dF for S = F F^T, from the pair weights: -(W + W^T) F (the GPW identity)."""
    return -(W + W.T) @ features


def pair_weight_summary(W: Tensor, labels: Tensor) -> dict[str, float]:
    """How much weight a loss puts on positive and negative pairs, and on how many pairs."""
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive, negative = same & off_diagonal, ~same
    return {
        "positive_weight": float(W[positive].sum()),
        "negative_weight": float(-W[negative].sum()),
        "active_positive_pairs": int((W[positive] != 0).sum()),
        "active_negative_pairs": int((W[negative] != 0).sum()),
        "positive_pairs": int(positive.sum()),
        "negative_pairs": int(negative.sum()),
    }
