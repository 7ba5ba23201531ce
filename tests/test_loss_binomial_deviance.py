"""BinomialDevianceLoss against a direct loop over anchors and pairs, Yi et al.'s form, and autograd.

pytorch-metric-learning has no binomial deviance loss, so the oracle is the formula
evaluated anchor by anchor, pair by pair, with Python floats (value) and with scalar
torch operations (gradient), in float64.
"""
import math

import pytest
import torch
from batches import pk_batch, unbalanced_batch, value_and_grad

from dmlutils.gpw import autograd_pair_weights
from dmlutils.losses.base import cosine_similarity_matrix
from dmlutils.losses.binomial_deviance import BinomialDevianceLoss

HPARAMS = [
    dict(alpha=2.0, beta=50.0, lam=0.5),  # default: Yi et al.'s alpha 2, C 25 -> beta 50
    dict(alpha=2.0, beta=40.0, lam=0.5),  # the MS official code's scales
    dict(alpha=10.0, beta=2.0, lam=-0.2),
]
BATCHES = [
    pytest.param(lambda: pk_batch(8, 4, seed=1), id="pk8x4"),
    pytest.param(lambda: pk_batch(16, 5, dim=32, seed=2), id="pk16x5"),
    pytest.param(lambda: pk_batch(6, 5, seed=3, spread=0.3), id="tight-clusters"),
    pytest.param(lambda: unbalanced_batch([1, 2, 5, 3, 1, 7, 4], seed=4), id="unbalanced-with-singletons"),
]




def anchor_loop(embeddings, labels, alpha, beta, lam):
    """1/m sum_i [mean_{P_i} log(1 + e^{-alpha (S - lam)}) + mean_{N_i} log(1 + e^{beta (S - lam)})]."""
    S = cosine_similarity_matrix(embeddings)
    y = labels.tolist()
    total = (S * 0).sum()
    for i in range(len(y)):
        positives = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        negatives = [j for j in range(len(y)) if y[j] != y[i]]
        if positives:
            total = total + sum(torch.log1p(torch.exp(-alpha * (S[i, j] - lam))) for j in positives) / len(positives)
        if negatives:
            total = total + sum(torch.log1p(torch.exp(beta * (S[i, j] - lam))) for j in negatives) / len(negatives)
    return total / len(y)


def anchor_loop_floats(embeddings, labels, alpha, beta, lam):
    S = cosine_similarity_matrix(embeddings).tolist()
    y = labels.tolist()
    total = 0.0
    for i in range(len(y)):
        positives = [S[i][j] for j in range(len(y)) if j != i and y[j] == y[i]]
        negatives = [S[i][j] for j in range(len(y)) if y[j] != y[i]]
        if positives:
            total += sum(math.log1p(math.exp(-alpha * (s - lam))) for s in positives) / len(positives)
        if negatives:
            total += sum(math.log1p(math.exp(beta * (s - lam))) for s in negatives) / len(negatives)
    return total / len(y)


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("hp", HPARAMS)
def test_value_and_gradient_equal_anchor_loop(make_batch, hp):
    embeddings, labels = make_batch()
    ours = value_and_grad(BinomialDevianceLoss(**hp), embeddings, labels)
    loop = value_and_grad(lambda e, y: anchor_loop(e, y, **hp), embeddings, labels)
    torch.testing.assert_close(ours[0], loop[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], loop[1], rtol=1e-10, atol=1e-12)
    assert float(ours[0]) == pytest.approx(anchor_loop_floats(embeddings, labels, **hp), rel=1e-12)


def test_equals_yi_et_al_form_on_a_pk_batch():
    # Yi et al.: sum W . log(1 + exp(-alpha (S - beta_Yi) . M)), M = 1 / -C on positive / negative pairs,
    # W = 1/n_pos, 1/n_neg over the whole batch. With beta = alpha * C, lam = beta_Yi, and a P x K
    # batch (every anchor has the same |P_i|, |N_i|), that is our loss.
    embeddings, labels = pk_batch(6, 4, seed=5)
    alpha, C, threshold = 2.0, 25.0, 0.5
    S = cosine_similarity_matrix(embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    negative = ~same
    M = torch.where(positive, torch.ones_like(S), torch.full_like(S, -C))
    n_positive, n_negative = int(positive.sum()), int(negative.sum())
    W = torch.where(positive, torch.full_like(S, 1 / n_positive), torch.full_like(S, 1 / n_negative))
    W = W * (positive | negative)
    yi = (W * torch.log1p(torch.exp(-alpha * (S - threshold) * M))).sum()
    ours = BinomialDevianceLoss(alpha=alpha, beta=alpha * C, lam=threshold)(embeddings, labels)
    torch.testing.assert_close(ours, yi, rtol=1e-12, atol=0)


def test_float32_is_close_to_float64():
    embeddings, labels = pk_batch(8, 4, seed=6)
    v64, g64 = value_and_grad(BinomialDevianceLoss(), embeddings, labels)
    v32, g32 = value_and_grad(BinomialDevianceLoss(), embeddings.float(), labels)
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("hp", HPARAMS)
def test_pair_weights_equal_autograd(make_batch, hp):
    embeddings, labels = make_batch()
    loss = BinomialDevianceLoss(**hp)
    S = cosine_similarity_matrix(embeddings)
    W = loss.pair_weights(S, labels)
    torch.testing.assert_close(W, autograd_pair_weights(loss, S, labels), rtol=0, atol=1e-10)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    assert (W[same & off_diagonal] > 0).all() and (W[~same] < 0).all()  # every pair gets a weight
    assert (W.diagonal() == 0).all()


def test_pair_weight_depends_only_on_the_pairs_own_similarity():
    # The GPW point of the MS paper: binomial deviance weights by self-similarity only.
    embeddings, labels = pk_batch(4, 4, seed=7)
    loss = BinomialDevianceLoss()
    S = cosine_similarity_matrix(embeddings)
    W = loss.pair_weights(S, labels) * len(labels)
    i, j = 0, 5  # a negative pair
    assert labels[i] != labels[j]
    expected = -50.0 / (1 + math.exp(-50.0 * (float(S[i, j]) - 0.5))) / 12
    assert float(W[i, j]) == pytest.approx(expected, rel=1e-12)


def test_exact_where_torchs_softplus_turns_linear():
    # F.softplus(x) returns x itself above x = 20 (slope 1, not sigmoid(x)): at beta = 200 a
    # negative at S = 0.625 (x = 25) was off by e^-25 and its autograd weight differed from
    # the closed form (found by tests/test_loss_properties.py). Now both are exact.
    S = torch.tensor([[1.0, 0.9, 0.625], [0.9, 1.0, 0.3], [0.625, 0.3, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss = BinomialDevianceLoss(alpha=2.0, beta=200.0, lam=0.5)
    expected = sum(
        math.log1p(math.exp(scale * (s - 0.5))) / divisor
        for s, scale, divisor in [(0.9, -2.0, 1), (0.9, -2.0, 1), (0.625, 200.0, 1), (0.3, 200.0, 1), (0.625, 200.0, 2), (0.3, 200.0, 2)]
    ) / 3
    assert float(loss.from_similarity(S, labels)) == pytest.approx(expected, rel=1e-14, abs=0)
    W = loss.pair_weights(S, labels)
    torch.testing.assert_close(W, autograd_pair_weights(loss, S, labels), rtol=1e-14, atol=0)
    assert float(W[0, 2]) == pytest.approx(-200.0 / (1 + math.exp(-25.0)) / 3, rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_for_large_scales_and_similarities_near_one(dtype):
    g = torch.Generator().manual_seed(8)
    embeddings = torch.randn(1, 32, generator=g, dtype=dtype) + 0.01 * torch.randn(24, 32, generator=g, dtype=dtype)
    labels = torch.arange(6).repeat_interleave(4)
    loss = BinomialDevianceLoss(alpha=200.0, beta=1000.0, lam=-1.0)  # naive exp(1000 * 2) overflows
    value, grad = value_and_grad(loss, embeddings, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # S ~ 1 everywhere: each negative term is softplus(1000 * 2) ~ 2000, each positive one ~ 0.
    assert float(value) == pytest.approx(2000.0, rel=1e-3)
    S = cosine_similarity_matrix(embeddings)
    assert torch.isfinite(loss.pair_weights(S, labels)).all()


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
@pytest.mark.parametrize(
    "labels, sides",
    [
        pytest.param(torch.zeros(6, dtype=torch.long), "positive", id="single-class"),
        pytest.param(torch.arange(6), "negative", id="all-distinct"),
    ],
)
def test_degenerate_batches_keep_only_the_side_they_have(labels, sides):
    embeddings = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    value, grad = value_and_grad(BinomialDevianceLoss(), embeddings, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert float(value) == pytest.approx(anchor_loop_floats(embeddings, labels, 2.0, 50.0, 0.5), rel=1e-12)
    W = BinomialDevianceLoss().pair_weights(cosine_similarity_matrix(embeddings), labels)
    assert (W >= 0).all() if sides == "positive" else (W <= 0).all()


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
def test_single_sample_batch_is_a_differentiable_zero():
    embeddings, labels = pk_batch(1, 1, seed=10)
    value, grad = value_and_grad(BinomialDevianceLoss(), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=0.0), "alpha and beta must be positive"),
        (dict(beta=-1.0), "alpha and beta must be positive"),
        (dict(lam=1.5), r"lam must lie in \[-1, 1\]"),
        (dict(alpha=float("nan")), "alpha must be a finite number"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BinomialDevianceLoss(**kwargs)
