"""The official MS loss as a per-anchor Python loop, re-written from its description.

This is the *semantics* of msight-tech/research-ms-loss's `MultiSimilarityLoss.forward`
(REFERENCES.md, seed 001), in our own code: for each anchor, take its positives (same
label, S < 1 - 1e-5) and negatives, mine each side against the other's hardest pair,
skip the anchor if a side is empty, add the two log-sum-exp terms; divide the sum by
the batch size. It exists as an oracle for `MultiSimilarityLoss` and as the baseline
of the vectorisation benchmark — not for training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def multi_similarity_loop(
    embeddings: Tensor,
    labels: Tensor,
    alpha: float = 2.0,
    beta: float = 40.0,
    lam: float = 0.5,
    epsilon: float = 0.1,
) -> Tensor:
    S = F.normalize(embeddings, dim=1) @ F.normalize(embeddings, dim=1).T
    batch_size = S.shape[0]
    anchor_losses = []
    for i in range(batch_size):
        same = labels == labels[i]
        positives = S[i][same]
        positives = positives[positives < 1 - 1e-5]
        negatives = S[i][~same]
        if len(positives) == 0 or len(negatives) == 0:
            continue  # the official loop would fail on min() of an empty tensor here
        hard_negatives = negatives[negatives + epsilon > positives.min()]
        hard_positives = positives[positives - epsilon < negatives.max()]
        if len(hard_negatives) == 0 or len(hard_positives) == 0:
            continue
        positive_term = torch.log(1 + torch.exp(-alpha * (hard_positives - lam)).sum()) / alpha
        negative_term = torch.log(1 + torch.exp(beta * (hard_negatives - lam)).sum()) / beta
        anchor_losses.append(positive_term + negative_term)
    if not anchor_losses:
        return (S * 0.0).sum()
    return torch.stack(anchor_losses).sum() / batch_size
