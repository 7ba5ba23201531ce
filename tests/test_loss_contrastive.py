"""ContrastiveLoss against pytorch-metric-learning, a direct pair loop, and autograd."""
import pytest
import torch
from batches import pk_batch, unbalanced_batch, value_and_grad
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import ContrastiveLoss as PMLContrastiveLoss
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer

from dmlutils.gpw import autograd_pair_weights
from dmlutils.losses.base import cosine_similarity_matrix
from dmlutils.losses.contrastive import ContrastiveLoss

MARGINS = [
    dict(pos_margin=1.0, neg_margin=0.5),  # our default: the MS paper's (1 - S) and lam = 0.5
    dict(pos_margin=0.8, neg_margin=0.3),
    dict(pos_margin=0.5, neg_margin=-0.2),
]

BATCHES = [
    pytest.param(lambda: pk_batch(8, 4, seed=1), id="pk8x4"),
    pytest.param(lambda: pk_batch(16, 5, dim=32, seed=2), id="pk16x5"),
    pytest.param(lambda: pk_batch(6, 5, seed=3, spread=0.3), id="tight-clusters"),
    pytest.param(lambda: unbalanced_batch([1, 2, 5, 3, 1, 7, 4], seed=4), id="unbalanced-with-singletons"),
]




def pml_contrastive(pos_margin, neg_margin):
    # PML's ContrastiveLoss with CosineSimilarity (an "inverted" distance, so its margin(x, y) is y - x):
    #   positive pair: relu(distance.margin(S, pos_margin)) = relu(pos_margin - S)
    #   negative pair: relu(distance.margin(neg_margin, S)) = relu(S - neg_margin)
    # over all ordered pairs (get_all_pairs_indices: same label minus the diagonal / different label).
    # Its two sub-losses "pos_loss" and "neg_loss" are reduced separately by copies of the reducer
    # (MeanReducer: plain mean over the pairs of that kind, 0 when there are none) and then summed
    # (MultipleReducers.sub_loss_reduction) — exactly mean_pos + mean_neg, our reduction.
    return PMLContrastiveLoss(
        pos_margin=pos_margin, neg_margin=neg_margin, distance=CosineSimilarity(), reducer=MeanReducer()
    )


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("margins", MARGINS)
def test_nonzero_mean_equals_pmls_default_reducer(make_batch, margins):
    # reduction="nonzero_mean" averages each side over its violating pairs: PML's own default
    # reducer (AvgNonZeroReducer), applied to pos_loss and neg_loss separately.
    embeddings, labels = make_batch()
    ours = value_and_grad(ContrastiveLoss(**margins, reduction="nonzero_mean"), embeddings, labels)
    pml = value_and_grad(PMLContrastiveLoss(**margins, distance=CosineSimilarity(), reducer=AvgNonZeroReducer()), embeddings, labels)
    mean = value_and_grad(ContrastiveLoss(**margins), embeddings, labels)
    torch.testing.assert_close(ours[0], pml[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], pml[1], rtol=1e-10, atol=1e-12)
    assert ours[0] > mean[0]  # some pairs of each side are satisfied: a mean over fewer is larger


@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_pair_weights_equal_autograd_for_each_reduction(reduction):
    embeddings, labels = unbalanced_batch([1, 2, 5, 3, 1, 7, 4], seed=7)
    loss = ContrastiveLoss(0.8, 0.3, reduction=reduction)
    S = cosine_similarity_matrix(embeddings)
    torch.testing.assert_close(loss.pair_weights(S, labels), autograd_pair_weights(loss, S, labels), rtol=1e-10, atol=1e-12)


def test_an_unknown_reduction_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'nonzero_mean', got 'sum'"):
        ContrastiveLoss(reduction="sum")


def pair_loop(embeddings, labels, pos_margin, neg_margin):
    """The formula in plain Python: a mean over each kind of ordered pair."""
    S = cosine_similarity_matrix(embeddings).tolist()
    y = labels.tolist()
    positive_losses, negative_losses = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i != j and y[i] == y[j]:
                positive_losses.append(max(pos_margin - S[i][j], 0.0))
            elif y[i] != y[j]:
                negative_losses.append(max(S[i][j] - neg_margin, 0.0))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return mean(positive_losses) + mean(negative_losses)


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("margins", MARGINS)
def test_value_and_gradient_equal_pml(make_batch, margins):
    embeddings, labels = make_batch()
    ours = value_and_grad(ContrastiveLoss(**margins), embeddings, labels)
    pml = value_and_grad(pml_contrastive(**margins), embeddings, labels)
    assert ours[0] > 0
    torch.testing.assert_close(ours[0], pml[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], pml[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make_batch", BATCHES)
def test_value_equals_pair_loop(make_batch):
    embeddings, labels = make_batch()
    expected = pair_loop(embeddings, labels, 0.8, 0.3)
    assert float(ContrastiveLoss(0.8, 0.3)(embeddings, labels)) == pytest.approx(expected, rel=1e-12)


def test_float32_matches_pml():
    embeddings, labels = pk_batch(8, 4, seed=5, dtype=torch.float32)
    ours = value_and_grad(ContrastiveLoss(), embeddings, labels)
    pml = value_and_grad(pml_contrastive(1.0, 0.5), embeddings, labels)
    assert ours[0].dtype == torch.float32
    torch.testing.assert_close(ours[0], pml[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], pml[1], rtol=1e-5, atol=1e-6)


def test_default_positive_term_is_the_ms_papers_one_minus_s():
    # pos_margin = 1: [1 - S]_+ = 1 - S for every pair, so the positive term is mean(1 - S_ij).
    embeddings, labels = pk_batch(6, 4, seed=6)
    S = cosine_similarity_matrix(embeddings)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    loss = ContrastiveLoss(pos_margin=1.0, neg_margin=1.0 - 1e-12)  # negative term ~ switched off
    torch.testing.assert_close(loss(embeddings, labels), (1 - S[same]).mean(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("margins", MARGINS)
def test_pair_weights_equal_autograd(make_batch, margins):
    embeddings, labels = make_batch()
    loss = ContrastiveLoss(**margins)
    S = cosine_similarity_matrix(embeddings)
    W = loss.pair_weights(S, labels)
    torch.testing.assert_close(W, autograd_pair_weights(loss, S, labels), rtol=0, atol=1e-10)
    same = labels[:, None] == labels[None, :]
    assert (W[same] >= 0).all() and (W[~same] <= 0).all()
    assert (W != 0).any()


def test_single_class_batch_has_only_the_positive_term():
    embeddings, labels = pk_batch(1, 6, seed=7)
    loss = ContrastiveLoss(pos_margin=0.9, neg_margin=0.5)
    value, grad = value_and_grad(loss, embeddings, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert float(value) == pytest.approx(pair_loop(embeddings, labels, 0.9, 0.5), rel=1e-12)


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
def test_all_distinct_labels_have_only_the_negative_term():
    embeddings, labels = unbalanced_batch([1] * 8, seed=8)
    value, grad = value_and_grad(ContrastiveLoss(), embeddings, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert float(value) == pytest.approx(pair_loop(embeddings, labels, 1.0, 0.5), rel=1e-12)


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
def test_single_sample_batch_is_a_differentiable_zero():
    embeddings, labels = pk_batch(1, 1, seed=9)
    value, grad = value_and_grad(ContrastiveLoss(), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_batch_satisfying_every_margin_has_zero_loss_and_zero_gradient():
    # Classes on orthogonal axes, tiny noise: positives S ~ 1 > 0.9, negatives S ~ 0 < 0.5.
    g = torch.Generator().manual_seed(10)
    labels = torch.arange(4).repeat_interleave(3)
    embeddings = torch.eye(8, dtype=torch.float64)[labels] + 0.01 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    value, grad = value_and_grad(ContrastiveLoss(pos_margin=0.9, neg_margin=0.5), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pos_margin=0.3, neg_margin=0.5), "must be below pos_margin"),
        (dict(pos_margin=0.5, neg_margin=0.5), "must be below pos_margin"),
        (dict(pos_margin=1.5), r"pos_margin must lie in \[-1, 1\]"),
        (dict(neg_margin=-2.0), r"neg_margin must lie in \[-1, 1\]"),
        (dict(neg_margin=float("nan")), "finite number"),
        (dict(pos_margin="1"), "finite number"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContrastiveLoss(**kwargs)


def test_bad_inputs_raise():
    embeddings, labels = pk_batch(2, 2)
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss()(embeddings, labels[:3])
