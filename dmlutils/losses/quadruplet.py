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
quadruplets).

Computation: the quadruplets are never materialised (about 4 * 10^9 of them at a 200 x 5
batch). As in `triplet`, the second term is linear in S given its violation counts:
per positive pair (i, j), the number of valid negative pairs (l, k) with
S_lk - S_ij + margin_second > 0, and per negative pair the number of valid positive pairs.
"Valid" excludes the anchor's class, which is counted by subtraction. The positive pairs
are sorted (all together, and per class); for each negative pair (l, k) a binary search
(`triplet.prefix_length`) finds how many positive pairs it violates with: a prefix of
the ascending list, over all classes minus those of class y_l and of class y_k (read from
a table of running class counts along that list, or binary-searched per class). A positive
pair's count is then how many negative pairs' prefixes reach its rank (`triplet.count_greater`),
over all negative pairs minus those involving its own class (l or k in it; disjoint cases,
as y_l != y_k). O(B^2 log B) time, O(B^2) memory; the 10^6 negative pairs of a batch of
1000 are never sorted.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import SimilarityLoss, check_similarity, label_masks
from .registry import register
from .triplet import check_margin, count_greater, hinge_sum, prefix_length, triplet_term


# Largest (classes x positive pairs) table of running class counts (int64 entries): 0.8 M at
# 200 x 5, 3.2 M at 400 x 5. Unbalanced batches (one large class among many small ones) can
# reach ~B^3 / 14; past this size each class's list is binary-searched instead (slower, O(B^2) memory).
CLASS_TABLE_LIMIT = 2**22


def quadruplet_violation_counts(S: Tensor, labels: Tensor, margin_second: float) -> tuple[Tensor, Tensor]:
    """(signed counts, number of quadruplets) of the second term.

    signed_counts[i, j] = #{valid (l, k) : S_lk - S_ij + margin_second > 0} on positive pairs,
    signed_counts[l, k] = -#{valid (i, j) : same hinge > 0} on negative pairs (int64), with the
    hinge evaluated exactly as the elementwise formula would. Valid: j in P_i, y_l != y_k and
    neither y_l nor y_k equals y_i.
    """
    S = S.detach()  # the counts are constants of S (the term is piecewise linear in it)
    positive, negative = label_masks(labels)
    signed_counts = torch.zeros_like(S, dtype=torch.long)
    i, j = positive.nonzero(as_tuple=True)
    l, k = negative.nonzero(as_tuple=True)  # noqa: E741 - the paper's name
    if i.numel() == 0 or l.numel() == 0:
        return signed_counts, torch.zeros((), dtype=torch.long, device=S.device)
    classes = torch.unique(labels, return_inverse=True)[1]
    num_classes = int(classes.max()) + 1
    s_pos, s_neg = S[i, j], S[l, k]
    positive_class, l_class, k_class = classes[i], classes[l], classes[k]
    n_pos, n_neg = s_pos.numel(), s_neg.numel()

    # The positive pairs in ascending S_ij, all together and grouped by class (class c at
    # class_start[c] onwards, class_size[c] of them). A negative pair violates with a prefix of each list.
    ascending = s_pos.argsort()
    by_class = ascending[positive_class[ascending].argsort(stable=True)]  # stable: ascending within a class
    class_size = torch.bincount(positive_class, minlength=num_classes)
    class_start = class_size.cumsum(0) - class_size

    # Per negative pair (l, k): violating positive pairs of any class, minus those of class y_l and y_k.
    violates = lambda s_ij: s_neg - s_ij + margin_second > 0  # noqa: E731
    everywhere = prefix_length(s_pos[ascending], torch.zeros_like(l), torch.full_like(l, n_pos), violates)
    # The violated pairs of class c are the class-c pairs among the first `everywhere` of the
    # global list (the same pairs, in the same order, as a prefix of class c's list).
    if num_classes * (n_pos + 1) <= CLASS_TABLE_LIMIT:
        # A (classes, n_pos + 1) table of running counts, read with no search at all.
        running_count = torch.zeros(num_classes, n_pos + 1, dtype=torch.long, device=S.device)
        running_count[positive_class[ascending], torch.arange(1, n_pos + 1, device=S.device)] = 1
        running_count = running_count.cumsum(1).view(-1)
        within = [running_count[member_class * (n_pos + 1) + everywhere] for member_class in (l_class, k_class)]
    else:
        sorted_by_class = s_pos[by_class]
        within = [
            prefix_length(sorted_by_class, class_start[member_class], class_size[member_class], violates)
            for member_class in (l_class, k_class)
        ]
    signed_counts[l, k] = -(everywhere - within[0] - within[1])

    # Per positive pair: the pair of rank r in a list is violated by the negative pairs whose
    # prefix in that list is longer than r: over all negative pairs in the global list, minus
    # the negative pairs involving its class (l or k in it; disjoint, as y_l != y_k) in its class's list.
    rank = torch.arange(n_pos, device=S.device)
    per_pair = torch.zeros_like(s_pos, dtype=torch.long)
    one_list = torch.zeros_like(rank)
    per_pair[ascending] = count_greater(everywhere, torch.zeros_like(l), class_size.new_full((1,), n_pos), one_list, rank)
    class_in_order = positive_class[by_class]
    per_pair[by_class] -= count_greater(
        torch.cat(within), torch.cat((l_class, k_class)), class_size, class_in_order, rank - class_start[class_in_order]
    )
    signed_counts[i, j] = per_pair

    involving_class = torch.bincount(l_class, minlength=num_classes) + torch.bincount(k_class, minlength=num_classes)
    number_of_quadruplets = (n_neg - involving_class[positive_class]).sum()
    return signed_counts, number_of_quadruplets


@register("quadruplet")
class QuadrupletLoss(SimilarityLoss):
    """Triplet term (margin) + quadruplet term (margin_second) on cosine similarities."""

    def __init__(self, margin: float = 0.1, margin_second: float = 0.05, *, strict: bool = False):
        super().__init__(strict=strict)
        check_margin("margin", margin)
        check_margin("margin_second", margin_second)
        self.margin = float(margin)
        self.margin_second = float(margin_second)

    def value_and_pair_weights(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, W): the triplet term's, plus per violating quadruplet +c2 on (i, j) and -c2 on (l, k).
        The value is differentiable in S (the plain autograd path of `from_similarity`)."""
        triplet_value, triplet_weights = triplet_term(S, labels, self.margin, "mean")
        signed_counts, number_of_quadruplets = quadruplet_violation_counts(S, labels, self.margin_second)
        c2 = number_of_quadruplets.clamp_min(1).to(S.dtype)
        value = triplet_value + hinge_sum(S, signed_counts, self.margin_second) / c2
        return value, triplet_weights + signed_counts.to(S.dtype) / c2

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        return self.value_and_pair_weights(S, labels)[0]

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS: the triplet weights plus, per violating quadruplet, +c2 on (i, j), -c2 on (l, k)."""
        check_similarity(S, labels)
        return self.value_and_pair_weights(S, labels)[1]
