"""Pair-based losses on one contract: `loss(embeddings, labels)`, `from_similarity(S, labels)`,
closed-form `pair_weights(S, labels)` = -dL/dS; chosen by name with `get_loss`."""
from .base import (
    SimilarityLoss,
    check_inputs,
    cosine_similarity_matrix,
    differentiable_zero,
    euclidean_from_similarity,
    label_masks,
    log1p_sum_exp,
    masked_mean,
    softmax_with_one,
)
from .multi_similarity import MultiSimilarityLoss, multi_similarity_mining
from .registry import LOSSES, get_loss, hparams_of, loss_hparam_names, register

__all__ = [
    "LOSSES",
    "get_loss",
    "hparams_of",
    "loss_hparam_names",
    "register",
    "SimilarityLoss",
    "MultiSimilarityLoss",
    "multi_similarity_mining",
    "check_inputs",
    "cosine_similarity_matrix",
    "differentiable_zero",
    "euclidean_from_similarity",
    "label_masks",
    "log1p_sum_exp",
    "masked_mean",
    "softmax_with_one",
]
