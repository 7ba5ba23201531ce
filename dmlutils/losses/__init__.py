"""Pair-based losses on one contract: `loss(embeddings, labels)`, `from_similarity(S, labels)`,
closed-form `pair_weights(S, labels)` = -dL/dS; chosen by name with `get_loss`."""
from .base import (
    MetricLoss,
    NoPositivePairWarning,
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
from .binomial_deviance import BinomialDevianceLoss
from .contrastive import ContrastiveLoss
from .lifted_structure import LiftedStructureLoss
from .multi_similarity import MultiSimilarityLoss, mining_summary, multi_similarity_mining
from .npair import NPairLoss
from .quadruplet import QuadrupletLoss
from .ranked_list import RankedListLoss
from .triplet import TripletLoss
from .triplet_center import TripletCenterLoss
from .registry import LOSSES, get_loss, hparams_of, loss_hparam_names, register, required_hparam_names

__all__ = [
    "LOSSES",
    "get_loss",
    "hparams_of",
    "loss_hparam_names",
    "register",
    "required_hparam_names",
    "MetricLoss",
    "NoPositivePairWarning",
    "SimilarityLoss",
    "BinomialDevianceLoss",
    "ContrastiveLoss",
    "LiftedStructureLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "QuadrupletLoss",
    "RankedListLoss",
    "TripletCenterLoss",
    "TripletLoss",
    "multi_similarity_mining",
    "mining_summary",
    "check_inputs",
    "cosine_similarity_matrix",
    "differentiable_zero",
    "euclidean_from_similarity",
    "label_masks",
    "log1p_sum_exp",
    "masked_mean",
    "softmax_with_one",
]
