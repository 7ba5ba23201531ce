"""Shared machinery of every loss: input checks, similarity, masks, stable sums, reduction.

Everything a loss needs that is not the loss's own formula lives here, once:

* `check_inputs` / `check_similarity` turn bad input into a `ValueError` that says what
  to fix — NaN / inf rows included (`check_finite_rows`: a diverged run must fail, not
  train on a silent 0);
* `cosine_similarity_matrix` is the S of the paper (rows L2-normalised, S = E E^T);
* `label_masks` gives the positive mask (same label, diagonal excluded) and the
  negative mask (different label);
* `log1p_sum_exp` is log(1 + sum_k exp(x_k)) over a mask, computed with logsumexp
  so that beta = 200 and S near 1 stay finite, and `softmax_with_one` is its
  derivative (the shape of every MS / binomial / lifted weight);
* `masked_mean` is the reduction "average over the valid items, 0 if none"; losses with
  a `reduction` choose it, or the average over the items with a positive loss
  (`REDUCTIONS`, `check_reduction`: pytorch-metric-learning's AvgNonZeroReducer);
* `differentiable_zero` is the loss of a batch with nothing to learn from: exactly 0,
  attached to the graph so `loss.backward()` works and gives zero gradients.

`MetricLoss` is the base class of every registered loss: its `check_batch`, run by every
`forward`, checks the inputs and warns (once per loss) about a batch without a positive
pair — or raises, for a loss built with `strict=True`. `SimilarityLoss` is the base class
of the eight losses that are functions of S: `forward(embeddings, labels)` checks,
normalises, builds S and calls `from_similarity(S, labels)`; subclasses also give the
closed-form `pair_weights(S, labels)` = -dL/dS that `dmlutils.gpw` checks against autograd.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

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
    "check_finite_rows",
    "DISTANCE_CLAMP",
    "log1p_sum_exp",
    "softmax_with_one",
    "softplus",
    "masked_mean",
    "differentiable_zero",
    "has_positive_pair",
    "NoPositivePairWarning",
    "MetricLoss",
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
    check_finite_rows(embeddings, "embeddings", _DIVERGED)


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
    check_finite_rows(S, "S", "a similarity matrix must be finite; " + _FROM_EMBEDDINGS)


# Hints of the non-finite errors: what usually causes them, and what to do.
_DIVERGED = (
    "no loss can be computed from them (multi-similarity would silently return 0 and "
    "training would go on). Usually the run has diverged — the learning rate is too high — or an "
    "input held NaN/inf; lower the learning rate, or find the first bad batch with "
    "torch.isfinite(embeddings).all(dim=1)."
)
_FROM_EMBEDDINGS = (
    "it is usually built from embeddings that already held NaN/inf — a diverged run "
    "(learning rate too high) or a bad input; check them with torch.isfinite(embeddings).all(dim=1)."
)


def check_finite_rows(x: Tensor, what: str, hint: str) -> None:
    """Raise a `ValueError` naming the rows of `x` that hold NaN or inf (then the `hint`).

    Cheap on the normal path: the sum of the entries is finite exactly when every entry is
    (a NaN or inf entry makes it NaN or inf) — unless the finite entries overflow it, which
    the exact per-entry test then clears. One reduction, no B x D boolean tensor.
    """
    if math.isfinite(float(x.detach().sum())):
        return
    bad = ~torch.isfinite(x.detach())
    rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
    if not rows:  # the finite entries' sum overflowed: nothing to report
        return
    has_nan, has_inf = bool(torch.isnan(x).any()), bool(torch.isinf(x).any())
    kind = "NaN and inf" if has_nan and has_inf else "NaN" if has_nan else "inf"
    shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
    raise ValueError(f"{what} rows [{shown}] hold {kind} ({len(rows)} of {x.shape[0]} rows): {hint}")


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


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), exact for any x and dtype; its derivative is sigmoid(x).

    Not `F.softplus`: that returns x itself above x = 20 (an error of e^-x, 2e-9 there,
    and slope 1 instead of sigmoid(x)), which float64 sees — the binomial and no-weighting
    MS losses' closed-form weights sigmoid(x) differed from autograd's at beta = 200 (found
    by the property tests). logaddexp(x, 0) is stable and exact everywhere.
    """
    return torch.logaddexp(x, x.new_zeros(()))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over `mask` (0 when the mask is empty, still attached to the graph)."""
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp_min(1)


# "mean": over every valid item (satisfied ones count as 0, so the loss fades as a batch
# gets easier); "nonzero_mean": over the items with a positive loss only.
REDUCTIONS = ("mean", "nonzero_mean")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}.")


def differentiable_zero(like: Tensor) -> Tensor:
    """A scalar 0 that is part of the graph of `like`: backward gives zero gradients, never NaN."""
    return (like * 0.0).sum()


def has_positive_pair(labels: Tensor) -> bool:
    """Whether some two samples of the batch share a label (a positive pair exists)."""
    return torch.unique(labels).numel() < labels.numel()


class NoPositivePairWarning(UserWarning):
    """A batch without a positive pair (no two samples share a label): in a P x K batch the
    sampler's k is < 2 or the labels are wrong. Filter it like any warning, e.g.
    `warnings.simplefilter("error", NoPositivePairWarning)`."""


# Frames that are the loss machinery itself (this package, torch's Module.__call__): the
# warning points at the first frame outside them, the caller's `loss(embeddings, labels)`.
_INTERNAL_FRAMES = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, nn.Module.__call__.__code__.co_filename)
)


def _caller_stacklevel() -> int:
    """`warnings.warn`'s stacklevel (1 = the function that calls this one, then `warn`) of
    the first frame outside `_INTERNAL_FRAMES`."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL_FRAMES):
        frame, level = frame.f_back, level + 1
    return level


# `without_positive_pairs` of the losses whose negative terms stand alone (contrastive,
# binomial deviance, ranked list): a batch of distinct labels still pushes its samples
# apart, only the pull within a class is lost — in a P x K batch still a bug to report.
NEGATIVES_ONLY = "only its negative pairs act: nothing pulls samples of a class together"


class MetricLoss(nn.Module):
    """The base of every registered loss: the checks every `forward` runs on its batch.

    `check_batch(embeddings, labels)`:
    * bad inputs (shapes, dtypes, devices, NaN / inf rows) raise a `ValueError` (`check_inputs`);
    * a batch without a positive pair warns, once per loss instance
      (`NoPositivePairWarning`), or raises a `ValueError` if the loss was built with
      `strict=True`. In a P x K batch it means the sampler's k is < 2 or the labels are
      wrong; training would go on silently, on zero or on negatives alone.

    `without_positive_pairs` says what such a batch leaves of the loss (the warning quotes
    it); None for a loss that does not use the batch's positive pairs at all
    (triplet-center: each sample's positive is its class centre), which never warns.
    `strict` is an option of the base, not a hyper-parameter: it changes no value, so
    `hparams_of` leaves it out of run records (`registry.BASE_OPTIONS`).

    The positive-pair check belongs to `forward`, the training call. `from_similarity` and
    `pair_weights` (analysis, and `dmlutils.xbm`'s memory, whose positives may be past
    batches) check their S for shape and NaN / inf only.
    """

    without_positive_pairs: str | None = "the loss is 0 and nothing is learned from it"

    def __init__(self, *, strict: bool = False):
        super().__init__()
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}.")
        self.strict = strict
        self._warned_no_positive_pair = False

    def check_batch(self, embeddings: Tensor, labels: Tensor) -> None:
        """The input checks, then the positive-pair check (see the class docstring)."""
        check_inputs(embeddings, labels)
        if self.without_positive_pairs is None or (self._warned_no_positive_pair and not self.strict):
            return  # warned once already: the check costs nothing from here on
        if has_positive_pair(labels):
            return
        message = (
            f"{type(self).__name__}: the batch of {labels.numel()} samples has no positive pair "
            f"(no two samples share a label), so {self.without_positive_pairs}. In a P x K batch "
            "(P classes, K samples of each: PKSampler(labels, p, k), the profile's p and k) this "
            "means the sampler's k is < 2, or the labels are wrong (e.g. one id per sample "
            "instead of the class id)."
        )
        if self.strict:
            raise ValueError(message + " Raised because the loss was built with strict=True.")
        self._warned_no_positive_pair = True
        warnings.warn(
            message + " Warned once per loss; build it with strict=True to raise instead.",
            NoPositivePairWarning,
            stacklevel=_caller_stacklevel(),
        )

    def extra_repr(self) -> str:
        from .registry import hparams_of

        options = ["strict=True"] if self.strict else []
        return ", ".join([f"{k}={v!r}" for k, v in hparams_of(self).items()] + options)


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


class SimilarityLoss(MetricLoss):
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
        self.check_batch(embeddings, labels)
        if type(self).value_and_pair_weights is not SimilarityLoss.value_and_pair_weights:
            return _PairWeightedLoss.apply(embeddings, labels, self)
        return self.from_similarity(cosine_similarity_matrix(embeddings), labels)

    def from_similarity(self, S: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pair_weights(self, S: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
