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

The triplets are enumerated as a (B, B, B) boolean mask (`triplet_mask`), so memory grows
as B^3: 0.5 M entries at B = 80, 16.8 M at B = 256. `quadruplet` reuses this machinery.
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor

from .base import SimilarityLoss, check_finite, check_similarity, label_masks, masked_mean
from .registry import register

REDUCTIONS = ("mean", "nonzero_mean")


def triplet_mask(labels: Tensor) -> Tensor:
    """(B, B, B) boolean mask, [a, p, n] True when p is a positive of a and n a negative of a.

    The same set as pytorch-metric-learning's `get_all_triplets_indices`: same label,
    p != a; different label for n (so n != a and n != p).
    """
    positive, negative = label_masks(labels)
    return positive[:, :, None] & negative[:, None, :]


def triplet_hinge(S: Tensor, margin: float) -> Tensor:
    """(B, B, B) tensor of S_an - S_ap + margin at [a, p, n] (before the [.]_+)."""
    return S[:, None, :] - S[:, :, None] + margin


def triplet_pair_weights(coefficients: Tensor) -> Tensor:
    """W = -dL/dS for L = sum_{a,p,n} coefficients[a,p,n] * (S_an - S_ap + margin).

    dL/dS_ap = -sum_n c[a,p,n] and dL/dS_an = +sum_p c[a,p,n]; positive and negative pairs
    never coincide, so the two sums land on disjoint entries of W.
    """
    return coefficients.sum(dim=2) - coefficients.sum(dim=1)


def check_margin(name: str, value: float) -> None:
    """A margin must be a finite number >= 0 (a negative margin rewards ranking errors)."""
    check_finite(**{name: value})
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}; a negative margin is satisfied by wrong rankings.")


@register("triplet")
class TripletLoss(SimilarityLoss):
    """"Batch all" triplet loss on cosine similarities, margin 0.1 (FaceNet's 0.2 on |a - b|^2)."""

    def __init__(self, margin: float = 0.1, reduction: str = "mean"):
        super().__init__()
        check_margin("margin", margin)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}.")
        self.margin = float(margin)
        self.reduction = reduction

    def _hinge_and_averaged(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The hinge values and the mask of the triplets the reduction averages over."""
        hinge = triplet_hinge(S, self.margin)
        averaged = triplet_mask(labels)
        if self.reduction == "nonzero_mean":
            averaged = averaged & (hinge > 0)
        return hinge, averaged

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:
        check_similarity(S, labels)
        hinge, averaged = self._hinge_and_averaged(S, labels)
        return masked_mean(F.relu(hinge), averaged)

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dS: each violating triplet (hinge > 0) adds 1/count to W_ap and -1/count to W_an."""
        check_similarity(S, labels)
        hinge, averaged = self._hinge_and_averaged(S, labels)
        count = averaged.sum().clamp_min(1).to(S.dtype)
        coefficients = (averaged & (hinge > 0)).to(S.dtype) / count
        return triplet_pair_weights(coefficients)
