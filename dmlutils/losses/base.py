"""Shared machinery of every loss: input checks, similarity, masks, stable sums, reduction.

Everything a loss needs that is not the loss's own formula lives here, once:

* `check_inputs` turns bad input into a `ValueError` that says what to fix;
* `cosine_similarity_matrix` is the S of the paper (rows L2-normalised, S = E E^T);
* `label_masks` gives the positive mask (same label, diagonal excluded) and the
  negative mask (different label);
* `log1p_sum_exp` is log(1 + sum_k exp(x_k)) over a mask, computed with logsumexp
  so that beta = 200 and S near 1 stay finite, and `softmax_with_one` is its
  derivative (the shape of every MS / binomial / lifted weight);
* `masked_mean` is the reduction "average over the valid items, 0 if none";
* `differentiable_zero` is the loss of a batch with nothing to learn from: exactly 0,
  attached to the graph so `loss.backward()` works and gives zero gradients.

`SimilarityLoss` is the base class of the eight losses that are functions of S:
`forward(embeddings, labels)` checks, normalises, builds S and calls
`from_similarity(S, labels)`; subclasses also give the closed-form
`pair_weights(S, labels)` = -dL/dS that `dmlutils.gpw` checks against autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "check_inputs",
    "check_similarity",
    "cosine_similarity_matrix",
    "label_masks",
    "euclidean_from_similarity",
    "unit_distance",
    "masked_logsumexp",
    "masked_softmax",
    "check_finite",
    "DISTANCE_CLAMP",
    "log1p_sum_exp",
    "softmax_with_one",
    "masked_mean",
    "differentiable_zero",
    "SimilarityLoss",
]


def _check_labels(labels: Tensor, batch_size: int, what: str, device: torch.device) -> None:
    if not isinstance(labels, Tensor):
        raise ValueError(
            f"labels must be a torch.Tensor of integer class ids, got {type(labels).__name__}; "
            "wrap them with torch.as_tensor(labels)."
        )
    if labels.dim() != 1:
        raise ValueError(
            f"labels must be 1-D (one class id per row of {what}), got shape {tuple(labels.shape)}; "
            "flatten them with labels.view(-1)."
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor, got dtype {labels.dtype}; use labels.long()."
        )
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"{what} has {batch_size} rows but labels has {labels.shape[0]} entries; "
            "pass one label per row."
        )
    if labels.device != device:
        raise ValueError(
            f"{what} is on {device} but labels are on {labels.device}; "
            f"move them with labels.to({what}.device)."
        )


def check_inputs(embeddings: Tensor, labels: Tensor) -> None:
    """Raise a `ValueError` naming the problem (and the fix) for a bad (embeddings, labels)."""
    if not isinstance(embeddings, Tensor):
        raise ValueError(
            f"embeddings must be a torch.Tensor of shape (batch, dim), got {type(embeddings).__name__}."
        )
    if embeddings.dim() != 2:
        raise ValueError(
            f"embeddings must be 2-D (batch, dim), got shape {tuple(embeddings.shape)}; "
            "flatten the features with x.flatten(1) before the loss."
        )
    if not embeddings.dtype.is_floating_point:
        raise ValueError(
            f"embeddings must be floating point, got dtype {embeddings.dtype}; use embeddings.float()."
        )
    _check_labels(labels, embeddings.shape[0], "embeddings", embeddings.device)


def check_similarity(S: Tensor, labels: Tensor, reference_labels: Tensor | None = None) -> None:
    """Checks for `from_similarity`: a floating (anchors, references) matrix, one label per row
    and (when references are not the anchors themselves) one reference label per column."""
    if not isinstance(S, Tensor) or S.dim() != 2:
        shape = tuple(S.shape) if isinstance(S, Tensor) else type(S).__name__
        raise ValueError(
            f"S must be a (batch, batch) similarity matrix, got {shape}; "
            "build it with dmlutils.losses.cosine_similarity_matrix(embeddings)."
        )
    if not S.dtype.is_floating_point:
        raise ValueError(f"S must be floating point, got dtype {S.dtype}.")
    _check_labels(labels, S.shape[0], "S", S.device)
    if reference_labels is None:
        if S.shape[0] != S.shape[1]:
            raise ValueError(
                f"S must be square (batch, batch), got {tuple(S.shape)}; for anchors against other "
                "references pass reference_labels (one per column)."
            )
    else:
        _check_labels(reference_labels, S.shape[1], "the columns of S", S.device)
        if S.shape[1] < S.shape[0]:
            raise ValueError(
                f"S has {S.shape[0]} anchors but {S.shape[1]} references; the first references "
                "must be the anchors themselves (the batch, then e.g. a memory)."
            )


def cosine_similarity_matrix(embeddings: Tensor, eps: float = 1e-12) -> Tensor:
    """S_ij = <e_i, e_j> / (|e_i| |e_j|): the paper's similarity of L2-normalised embeddings.

    Computed as (E E^T) scaled by the inverse norms, the same value as normalising the rows
    first (F.normalize, norms clamped at `eps`) but with the division on the B x B matrix
    instead of the B x D embeddings — cheaper, forward and backward, when D > B.
    """
    inverse_norm = embeddings.pow(2).sum(dim=1).clamp_min(eps * eps).rsqrt()
    return (embeddings @ embeddings.T) * inverse_norm[:, None] * inverse_norm[None, :]


def label_masks(labels: Tensor, reference_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean masks of anchors x references.

    positive[i, j]: same label and j != i (an anchor is not its own positive);
    negative[i, j]: different labels. The references default to the anchors (the batch);
    given, their first len(labels) entries must be the anchors themselves, followed by
    other references (e.g. a cross-batch memory).
    """
    reference_labels = labels if reference_labels is None else reference_labels
    same = labels[:, None] == reference_labels[None, :]
    positive = same.clone()
    positive.fill_diagonal_(False)  # reference i is anchor i itself (the first references are the anchors)
    return positive, ~same


def euclidean_from_similarity(S: Tensor, eps: float = 1e-12) -> Tensor:
    """|e_i - e_j| for unit vectors, sqrt(2 - 2 S), clamped so the gradient stays finite at S = 1."""
    return (2.0 - 2.0 * S).clamp_min(eps).sqrt()


# Lower clamp of 2 - 2 S under the square root (euclidean_from_similarity's eps): keeps
# d and its slope finite at S = 1. Named here because the closed-form slope must use the
# same value to agree with autograd.
DISTANCE_CLAMP = 1e-12


def unit_distance(S: Tensor) -> tuple[Tensor, Tensor]:
    """(d, slope): d = sqrt(2 - 2 S) and slope = -dd/dS = 1 / d, exactly as autograd sees it.

    The chain rule of every Euclidean loss on S: dL/dS_ij = -dL/dd_ij * slope_ij, so its
    pair weight is W_ij = -dL/dS_ij = dL/dd_ij * slope_ij. Where the clamp is active
    (2 - 2 S <= DISTANCE_CLAMP, i.e. S = 1 up to rounding) autograd's clamp passes no
    gradient, so the slope is 0 there too.
    """
    d = euclidean_from_similarity(S, eps=DISTANCE_CLAMP)
    slope = torch.where(2.0 - 2.0 * S > DISTANCE_CLAMP, 1.0 / d, torch.zeros_like(d))
    return d, slope


def _fill_masked(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    # Off-mask entries become -inf (they drop out of logsumexp / softmax). A row with an
    # empty mask would be all -inf (NaN softmax, NaN gradient), so it is set to 0 instead
    # and its result is discarded by the caller via `nonempty`.
    nonempty = mask.any(dim=1)
    filled = x.masked_fill(~mask, float("-inf"))
    filled = torch.where(nonempty[:, None], filled, torch.zeros_like(x))
    return filled, nonempty


def masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise log(sum_{j: mask[i, j]} exp(x[i, j])); 0 (with zero gradient) for an empty row.

    Unlike `base.log1p_sum_exp` there is no "1 +": the empty sum is -inf mathematically,
    so callers must exclude empty rows themselves (the 0 is only a NaN-free placeholder).
    """
    filled, nonempty = _fill_masked(x, mask)
    return torch.where(nonempty, torch.logsumexp(filled, dim=1), torch.zeros_like(x[:, 0]))


def masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise softmax of x over the mask, 0 off the mask and on empty rows (d masked_logsumexp / dx)."""
    filled, _ = _fill_masked(x, mask)
    return torch.softmax(filled, dim=1) * mask


def check_finite(**values: float) -> None:
    """Raise a ValueError naming the first hyper-parameter that is not a finite real number."""
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")



def _with_zero_column(x: Tensor, mask: Tensor) -> Tensor:
    # The "1 +" of log(1 + sum e^x) is an extra logit 0; masked-out entries become -inf.
    # With the 0 column present a row is never all -inf, so logsumexp and its gradient
    # stay finite even for a row with nothing in the mask.
    masked = torch.where(mask, x, float("-inf"))
    return torch.cat([torch.zeros_like(x[..., :1]), masked], dim=-1)


def log1p_sum_exp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise (last dimension) log(1 + sum_{j: mask[..., j]} exp(x[..., j])), stable for
    large x (0 for empty rows). Any leading dimensions are batched."""
    return torch.logsumexp(_with_zero_column(x, mask), dim=-1)


def softmax_with_one(x: Tensor, mask: Tensor) -> Tensor:
    """exp(x_ij) / (1 + sum_{k in mask_i} exp(x_ik)) on the mask, 0 elsewhere: d log1p_sum_exp / dx."""
    return torch.softmax(_with_zero_column(x, mask), dim=-1)[..., 1:]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over `mask` (0 when the mask is empty, still attached to the graph)."""
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp_min(1)


def differentiable_zero(like: Tensor) -> Tensor:
    """A scalar 0 that is part of the graph of `like`: backward gives zero gradients, never NaN."""
    return (like * 0.0).sum()


class _PairWeightedLoss(torch.autograd.Function):
    """L(normalise(E) normalise(E)^T) with the backward pass taken from the pair weights.

    GPW in code: with W = -dL/dS and f_i = e_i / |e_i|,
        dL/df_i = -sum_j (W_ij + W_ji) f_j,   dL/de_i = (dL/df_i - <dL/df_i, f_i> f_i) / |e_i|,
    one matrix product, and no autograd graph of the loss's many small mask/softmax ops.
    Used by losses that compute their value and W together (`value_and_pair_weights`).
    """

    @staticmethod
    def forward(ctx, embeddings, labels, loss):
        norms = embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
        f = embeddings / norms
        value, W = loss.value_and_pair_weights(f @ f.T, labels)
        ctx.save_for_backward(f, norms, W)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        f, norms, W = ctx.saved_tensors
        grad_f = ((W + W.T) * -grad_output) @ f
        # Project out the radial part (the normalisation's Jacobian); below the clamp
        # F.normalize divides by a constant, so nothing is projected out there.
        radial = (grad_f * f).sum(dim=1, keepdim=True) * (norms > 1e-12)
        return (grad_f - radial * f) / norms, None, None


class SimilarityLoss(nn.Module):
    """A loss L(S) of the batch cosine-similarity matrix S (the GPW view of the MS paper).

    Subclasses implement `from_similarity(S, labels)` and `pair_weights(S, labels)`,
    the closed-form W = -dL/dS (positive pairs get W >= 0: raising their similarity
    lowers the loss; negative pairs W <= 0). The paper's pair weight is |W_ij|.

    Losses whose terms are per-anchor rows of S (`accepts_references = True`) also take
    `reference_labels`: then S is (anchors, references), the first references being the
    anchors themselves — how a cross-batch memory (`dmlutils.xbm`) adds past embeddings.
    """

    accepts_references = False

    def value_and_pair_weights(self, S: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(L(S), W) in one pass. Losses that override it train through `_PairWeightedLoss`
        (backward from W); `from_similarity` stays the plain autograd path, which the tests
        use to check W."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_inputs(embeddings, labels)
        if type(self).value_and_pair_weights is not SimilarityLoss.value_and_pair_weights:
            return _PairWeightedLoss.apply(embeddings, labels, self)
        return self.from_similarity(cosine_similarity_matrix(embeddings), labels)

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        from .registry import hparams_of

        return ", ".join(f"{k}={v!r}" for k, v in hparams_of(self).items())
