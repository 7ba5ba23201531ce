"""Quadruplet loss (Chen, Chen, Zhang, Huang, CVPR 2017, "Beyond triplet loss"), on cosine similarities.

The paper adds to the triplet loss a second term that compares an anchor's positive pair
with a negative pair that shares no sample with it, so that intra-class similarities are
pushed above inter-class ones across the whole batch, not only per anchor:

    L = mean over triplets (i, j, k), j in P_i, k in N_i,            of [S_ik - S_ij + margin]_+
      + mean over quadruplets (i, j, l, k), j in P_i,
             y_l != y_i, y_k != y_i, y_k != y_l,                     of [S_lk - S_ij + margin_second]_+

over ordered pairs ((l, k) and (k, l) are two quadruplets). The first term is
`TripletLoss(margin, reduction="mean")`; the second needs at least three classes in the
batch (two different labels for l and k, both different from the anchor's), otherwise it
is empty and contributes 0. A batch with no positive pair gives a zero loss that still
backpropagates.

Deviations from the paper, and why:
* The paper measures pairs with a learned distance g(x_i, x_j) (a small network on the
  two features) and uses [g_ij^2 - g_ik^2 + alpha1]_+; we use the cosine similarity of
  L2-normalised embeddings, like every loss in this package, so that the loss is a function
  of S and has GPW pair weights.
* The paper sets alpha1 = 1, alpha2 = 0.5 on its learned distance (and also proposes an
  adaptive margin from the batch's distance statistics). We keep the ratio
  alpha2 = alpha1 / 2 on the triplet-equivalent margin of this package: margin 0.1
  (FaceNet's 0.2 on squared distance, see `triplet`) and margin_second 0.05. The second
  constraint is meant to be the weaker one: it only asks that a positive pair beat
  pairs of *other* classes.
* Means over triplets and quadruplets (all of them, "batch all") instead of sums over the
  paper's mined ones, so the two terms have comparable scales whatever the batch size.

GPW view: the triplet term gives the weights of `TripletLoss`; each violating quadruplet
adds +c2 to W_ij (its positive pair) and -c2 to W_lk (its negative pair), c2 = 1/(number of
quadruplets). The quadruplets are never materialised as a B^4 tensor: the second term is a
(positive pairs) x (negative pairs) matrix — 320 x 6000 at a 16 x 5 batch.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import SimilarityLoss, check_similarity, label_masks, masked_mean
from .registry import register
from .triplet import check_margin, triplet_hinge, triplet_mask, triplet_pair_weights


def quadruplet_pairs(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(positive pairs (n_pos, 2), negative pairs (n_neg, 2), valid (n_pos, n_neg) mask).

    Row q of the positive pairs is (i, j), row r of the negative pairs is (l, k); valid[q, r]
    when neither l nor k has the label of i (the negative pair's labels differ by construction).
    """
    positive, negative = label_masks(labels)
    positive_pairs = positive.nonzero()
    negative_pairs = negative.nonzero()
    anchor_label = labels[positive_pairs[:, 0]][:, None]
    valid = (labels[negative_pairs[:, 0]][None, :] != anchor_label) & (
        labels[negative_pairs[:, 1]][None, :] != anchor_label
    )
    return positive_pairs, negative_pairs, valid


@register("quadruplet")
class QuadrupletLoss(SimilarityLoss):
    """Triplet term (margin) + quadruplet term (margin_second) on cosine similarities."""

    def __init__(self, margin: float = 0.1, margin_second: float = 0.05):
        super().__init__()
        check_margin("margin", margin)
        check_margin("margin_second", margin_second)
        self.margin = float(margin)
        self.margin_second = float(margin_second)

    def _quadruplet_hinge(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        positive_pairs, negative_pairs, valid = quadruplet_pairs(labels)
        positive_similarity = S[positive_pairs[:, 0], positive_pairs[:, 1]]
        negative_similarity = S[negative_pairs[:, 0], negative_pairs[:, 1]]
        hinge = negative_similarity[None, :] - positive_similarity[:, None] + self.margin_second
        return hinge, valid, positive_pairs, negative_pairs

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        triplet_term = masked_mean(F.relu(triplet_hinge(S, self.margin)), triplet_mask(labels))
        hinge, valid, _, _ = self._quadruplet_hinge(S, labels)
        return triplet_term + masked_mean(F.relu(hinge), valid)

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS: the triplet weights plus, per violating quadruplet, +c2 on (i, j), -c2 on (l, k)."""
        check_similarity(S, labels)
        triplets = triplet_mask(labels)
        violating_triplets = triplets & (triplet_hinge(S, self.margin) > 0)
        W = triplet_pair_weights(violating_triplets.to(S.dtype) / triplets.sum().clamp_min(1).to(S.dtype))

        hinge, valid, positive_pairs, negative_pairs = self._quadruplet_hinge(S, labels)
        coefficients = (valid & (hinge > 0)).to(S.dtype) / valid.sum().clamp_min(1).to(S.dtype)
        W = W.index_put((positive_pairs[:, 0], positive_pairs[:, 1]), coefficients.sum(dim=1), accumulate=True)
        W = W.index_put((negative_pairs[:, 0], negative_pairs[:, 1]), -coefficients.sum(dim=0), accumulate=True)
        return W
