"""Triplet loss (Schroff, Kalenichenko, Philbin, CVPR 2015 — FaceNet), on cosine similarities.

FaceNet asks, for every anchor a, positive p and negative n, that the anchor be closer to
the positive than to the negative by a margin: |f_a - f_p|^2 + margin <= |f_a - f_n|^2.
For unit vectors |f_a - f_b|^2 = 2 - 2 S_ab, so in similarities this reads

    L = mean over valid triplets (a, p, n) of [S_an - S_ap + margin]_+ ,

valid meaning p in P_a (same label as a, p != a) and n in N_a (different label). FaceNet's
margin 0.2 on squared Euclidean distances of unit vectors is therefore margin 0.1 here
(the hinge is divided by 2), our default.

Reduction ("batch all"): `reduction="mean"` (default) averages over ALL valid triplets,
satisfied ones (zero loss) included, so the loss shrinks as the batch gets easier;
`reduction="nonzero_mean"` averages over the triplets with positive loss only
(pytorch-metric-learning's default AvgNonZeroReducer), which keeps the gradient from
fading as most triplets become satisfied. A batch with no valid triplet (a single class,
or all labels distinct) gives a zero loss that still backpropagates.

Deviation from the paper: FaceNet selects triplets (all anchor-positive pairs, with
semi-hard negatives, from large batches); we use every valid triplet of the batch, the
"batch all" variant, and leave mining to the MS-style comparison in the book.

GPW view: each violating triplet adds +c to W_ap and -c to W_an, with c = 1/(number of
triplets averaged over); so W_ap = c * #(violating negatives of (a, p)) and
W_an = -c * #(violating positives of (a, n)).

Computation: the triplets are never enumerated (B^3 of them: 10^9 at B = 1000). The loss
is piecewise linear in S, so with those violation counts C (constants of S),

    sum of hinges = sum_(a,n) C_an S_an - sum_(a,p) C_ap S_ap + margin * #violating,

whose gradient is exactly the W above. The counts come from sorting each anchor's positive
similarities and binary-searching, per anchor-negative pair, the hinge's sign boundary
among them (`prefix_length`); the anchor-positive counts follow by counting those
boundaries (`count_greater`). O(B^2 log B) time, O(B^2) memory, whatever the label multiset.
`quadruplet` reuses this machinery.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .base import REDUCTIONS, SimilarityLoss, check_finite, check_reduction, check_similarity, label_masks  # noqa: F401 (REDUCTIONS: re-exported)
from .registry import register


def prefix_length(values: Tensor, start: Tensor, length: Tensor, in_prefix: Callable[[Tensor], Tensor]) -> Tensor:
    """Per query q, how many leading entries of its segment values[start[q] : start[q] + length[q]]
    satisfy the predicate, which must be True, then False along every segment (a monotone
    test of sorted values: e.g. "this positive pair's hinge with my negative pair is > 0").

    `in_prefix(candidates)` receives, for every query, one value of its segment (shape of
    `start`) and returns a bool tensor. It is evaluated on the values themselves, with the
    caller's exact arithmetic, rather than searching for a precomputed threshold
    (torch.searchsorted): so a hinge that rounds to exactly 0 is classified exactly as the
    elementwise formula classifies it.

    A branchless binary search for all queries at once: the answer is built bit by bit,
    from the highest power of two down; the Python loop runs over those log2(longest
    segment) bits, never over queries.
    """
    count = torch.zeros_like(start)
    if start.numel() == 0:
        return count
    longest = int(length.max())
    # Probes past a segment's end are masked out, but must still be valid indices.
    padded = torch.cat((values, values.new_zeros(2 * longest)))
    before_start = start - 1
    step = 1 << max(longest.bit_length() - 1, 0) if longest else 0
    while step:
        candidate = count + step  # is the prefix at least this long?
        probe = padded[before_start + candidate]
        count = torch.where((candidate <= length) & in_prefix(probe), candidate, count)
        step >>= 1
    return count


def count_greater(
    thresholds: Tensor, query_segment: Tensor, segment_length: Tensor, item_segment: Tensor, item_rank: Tensor
) -> Tensor:
    """Per item (segment s, rank r): #{queries of segment s with threshold > r}.

    The transpose of a prefix count: if each query violates the first `threshold` items of
    its segment (in sorted order), item r of segment s is violated by this many queries.
    One bincount (segment s owns segment_length[s] + 1 slots) and a reversed cumulative sum,
    instead of a sort of the queries; memory grows with the items, not segments x longest.
    """
    slots = segment_length + 1
    offset = slots.cumsum(0) - slots
    histogram = torch.bincount(offset[query_segment] + thresholds, minlength=int(slots.sum()))
    at_least = torch.cat((histogram.flip(0).cumsum(0).flip(0), histogram.new_zeros(1)))  # sum of slots >= x
    return at_least[offset[item_segment] + item_rank + 1] - at_least[(offset + slots)[item_segment]]


def triplet_violation_counts(S: Tensor, labels: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """(counts, positive mask, negative mask): counts[a, p] = #{n in N_a : hinge > 0} on
    positive pairs, counts[a, n] = #{p in P_a : hinge > 0} on negative pairs (int64, 0 elsewhere),
    with hinge = S_an - S_ap + margin evaluated exactly as the elementwise formula would.

    The same triplet set as pytorch-metric-learning's `get_all_triplets_indices`.
    """
    S = S.detach()  # the counts are constants of S (the loss is piecewise linear in it)
    positive, negative = label_masks(labels)
    batch = S.shape[0]
    counts = torch.zeros(batch, batch, dtype=torch.long, device=S.device)
    positives_per_anchor = positive.sum(dim=1)
    most_positives = int(positives_per_anchor.max()) if batch else 0
    if most_positives == 0:
        return counts, positive, negative

    # Each anchor's positives in ascending S_ap (rows padded with +inf past its count): a
    # (B, max |P_a|) table, B x K for a P x K batch, instead of sorting whole rows of S.
    padded = torch.where(positive, S, torch.full_like(S, float("inf")))
    positive_similarity, positive_index = padded.topk(most_positives, dim=1, largest=False, sorted=True)

    # Anchor-negative pairs: the violating positives are the smallest S_ap (hinge decreases with S_ap).
    anchor, other = negative.nonzero(as_tuple=True)
    s_an = S[anchor, other]
    violating_positives = prefix_length(
        positive_similarity.reshape(-1),
        anchor * most_positives,
        positives_per_anchor[anchor],
        lambda s_ap: s_an - s_ap + margin > 0,
    )
    counts[anchor, other] = violating_positives

    # Anchor-positive pairs: the positive of rank r violates with exactly the negatives
    # whose count of violating positives exceeds r.
    rank = torch.arange(most_positives, device=S.device).expand(batch, -1)
    is_positive = rank < positives_per_anchor[:, None]
    rows = torch.arange(batch, device=S.device)[:, None].expand(-1, most_positives)[is_positive]
    counts[rows, positive_index[is_positive]] = count_greater(
        violating_positives, anchor, positives_per_anchor, rows, rank[is_positive]
    )
    return counts, positive, negative


def hinge_sum(S: Tensor, signed_counts: Tensor, margin: float) -> Tensor:
    """Sum of the violated hinges [S_neg - S_pos + margin]_+ from the violation counts
    (signed: + on positive pairs, - on negative pairs): linear in S, so autograd's
    -dL/dS is exactly the signed counts. Accumulated in float64: the two sums over pairs
    are large and nearly cancel."""
    violations = signed_counts.clamp_min(0).sum()
    total = -(S.double() * signed_counts.double()).sum() + margin * violations.double()
    return total.to(S.dtype)


def check_margin(name: str, value: float) -> None:
    """A margin must be a finite number >= 0 (a negative margin rewards ranking errors)."""
    check_finite(**{name: value})
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}; a negative margin is satisfied by wrong rankings.")


def triplet_term(S: Tensor, labels: Tensor, margin: float, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """(value, W) of the batch-all triplet loss; the value is differentiable in S, W = -dL/dS."""
    counts, positive, negative = triplet_violation_counts(S, labels, margin)
    signed_counts = torch.where(negative, -counts, counts)
    if reduction == "nonzero_mean":
        averaged_over = counts[positive].sum()
    else:
        averaged_over = (positive.sum(dim=1) * negative.sum(dim=1)).sum()
    averaged_over = averaged_over.clamp_min(1).to(S.dtype)
    return hinge_sum(S, signed_counts, margin) / averaged_over, signed_counts.to(S.dtype) / averaged_over


@register("triplet")
class TripletLoss(SimilarityLoss):
    """"Batch all" triplet loss on cosine similarities, margin 0.1 (FaceNet's 0.2 on |a - b|^2)."""

    def __init__(self, margin: float = 0.1, reduction: str = "mean", *, strict: bool = False):
        super().__init__(strict=strict)
        check_margin("margin", margin)
        check_reduction(reduction)
        self.margin = float(margin)
        self.reduction = reduction

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        return triplet_term(S, labels, self.margin, self.reduction)[0]

    def value_and_pair_weights(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, W) from one pass of counting: training's fast path."""
        return triplet_term(S, labels, self.margin, self.reduction)

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS: each violating triplet (hinge > 0) adds 1/count to W_ap and -1/count to W_an."""
        check_similarity(S, labels)
        return triplet_term(S, labels, self.margin, self.reduction)[1]
