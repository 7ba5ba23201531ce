"""Triplet-center loss (He, Zhou, Zhou, Bai, Bai, CVPR 2018, "Triplet-center loss for
multi-view 3D object retrieval").

The paper learns one centre c_y per class and asks every sample to be closer to its own
class centre than to the nearest other centre by a margin:

    L = 1/m sum_i [ D(f_i, c_{y_i}) + margin - min_{j != y_i} D(f_i, c_j) ]_+ ,
    D(f, c) = 1/2 |f - c|^2 .

The centres are `nn.Parameter`s (num_classes x embedding_dim) trained with the network by
the same optimiser; they are initialised from torch's global RNG (`torch.randn`, then
L2-normalised), so `torch.manual_seed` makes them reproducible.

Our choice: centres and embeddings both L2-normalised. Then D(f, c) = 1 - <f, c> and, with
T_ij = <f_i, c_j> the cosine similarity of sample i to centre j,

    L = 1/m sum_i [ max_{j != y_i} T_ij - T_{i y_i} + margin ]_+ ,

a triplet loss whose positive and negative are centres. Why normalise the centres too:
for a unit f, 1/2 |f - c|^2 = 1/2 (1 + |c|^2) - <f, c> carries a per-class offset |c|^2 / 2
that the loss could lower by shrinking a centre rather than by moving the embeddings
(and raise for the competitors by growing theirs); on the unit sphere only directions
count, as in every other loss of this package, the margin is in the units of the cosine
similarity (comparable with `triplet`), and the loss has centre weights in the GPW
sense: `center_weights` = -dL/dT (B x num_classes), +1/m on the own centre and -1/m on the
hardest other centre of every sample whose hinge is positive.

Margin. The paper tunes its margin on unnormalised features (we could not read its
value from any source available here; a third-party re-implementation defaults to 5).
On the unit sphere D lies in [0, 2], so such a margin could never be met. We default to
margin = 0.1: D = 1/2 |f - c|^2 is half the squared distance, so this is FaceNet's margin
0.2 on squared distances, the same convention as our `triplet` default.

Deviation: the paper trains with L_softmax + lambda L_tc; this module is L_tc alone (add a
classifier outside if you want the joint loss). It is not a function of the batch
similarity matrix S (it compares samples with centres, not with each other), so it is not
a `SimilarityLoss` and has no `pair_weights`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MetricLoss, check_finite_rows
from .registry import register
from .triplet import check_margin


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@register("triplet_center")
class TripletCenterLoss(MetricLoss):
    """Triplet-center loss with learnable unit-norm class centres, margin 0.1 on cosine similarity."""

    # Each sample's positive is its class centre, not another sample: a batch of distinct
    # labels trains this loss fully, so it never warns about missing positive pairs (and
    # `strict` has nothing to raise about here; it is accepted like every loss's).
    without_positive_pairs = None

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.1, *, strict: bool = False):
        super().__init__(strict=strict)
        # Two classes at least: each sample needs a centre other than its own to compete with.
        _check_count("num_classes", num_classes, 2)
        _check_count("embedding_dim", embedding_dim, 1)
        check_margin("margin", margin)
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.margin = float(margin)
        self.centers = nn.Parameter(torch.empty(num_classes, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random unit centres from torch's global RNG (near-orthogonal in high dimension)."""
        with torch.no_grad():
            self.centers.copy_(F.normalize(torch.randn(self.num_classes, self.embedding_dim), dim=1))

    def _check(self, embeddings: Tensor, labels: Tensor) -> None:
        self.check_batch(embeddings, labels)
        if embeddings.shape[0] == 0:
            raise ValueError("the batch is empty; pass at least one embedding.")
        if embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]} but the centres have "
                f"{self.embedding_dim}; build TripletCenterLoss(num_classes, embedding_dim={embeddings.shape[1]})."
            )
        if embeddings.device != self.centers.device:
            raise ValueError(
                f"embeddings are on {embeddings.device} but the centres are on {self.centers.device}; "
                "move the loss with loss.to(embeddings.device)."
            )
        self._check_label_range(labels)

    def _check_label_range(self, labels: Tensor) -> None:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"labels must be class indices in [0, {self.num_classes}), got values in [{low}, {high}]; "
                "map the classes to 0 .. num_classes - 1 or build the loss with more classes."
            )

    def center_similarity(self, embeddings: Tensor) -> Tensor:
        """T (B x num_classes): cosine similarity of each embedding to each centre."""
        centers = F.normalize(self.centers.to(embeddings.dtype), dim=1)
        return F.normalize(embeddings, dim=1) @ centers.T

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        self._check(embeddings, labels)
        return self.from_center_similarity(self.center_similarity(embeddings), labels)

    def _own_and_hardest_other(self, T: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        labels = labels.long()
        own = F.one_hot(labels, self.num_classes).bool()
        own_similarity = T.gather(1, labels[:, None]).squeeze(1)
        hardest_other = T.masked_fill(own, float("-inf")).amax(dim=1)
        return own, own_similarity, hardest_other

    def from_center_similarity(self, T: Tensor, labels: Tensor) -> Tensor:
        """The loss from T = similarities to the centres: mean_i [max_{j != y_i} T_ij - T_iy_i + margin]_+."""
        if T.dim() != 2 or T.shape[1] != self.num_classes or T.shape[0] != labels.shape[0]:
            raise ValueError(
                f"T must be (batch, {self.num_classes}) with one label per row, got {tuple(T.shape)} "
                f"and {labels.shape[0]} labels; build it with loss.center_similarity(embeddings)."
            )
        self._check_label_range(labels)
        check_finite_rows(
            T,
            "T (similarities to the class centres)",
            "it must be finite; the embeddings or the centres (a parameter the optimiser updates) "
            "hold NaN/inf — usually a diverged run: lower the learning rate.",
        )
        _, own_similarity, hardest_other = self._own_and_hardest_other(T, labels)
        return F.relu(hardest_other - own_similarity + self.margin).mean()

    @torch.no_grad()
    def center_weights(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """W = -dL/dT (B x num_classes), in closed form.

        For each sample with a positive hinge: +1/m on its own centre, -1/m on its most
        similar other centre (split evenly between exact ties, as the max's gradient is).
        """
        self._check(embeddings, labels)
        T = self.center_similarity(embeddings)
        own, own_similarity, hardest_other = self._own_and_hardest_other(T, labels)
        active = ((hardest_other - own_similarity + self.margin) > 0).to(T.dtype) / T.shape[0]
        hardest = (T == hardest_other[:, None]) & ~own
        hardest = hardest.to(T.dtype) / hardest.sum(dim=1, keepdim=True).to(T.dtype)
        return active[:, None] * (own.to(T.dtype) - hardest)
