"""The loss contract, checked for all nine registered losses at once.

Registry and errors; GPW closed-form weights == autograd; properties every loss must
have (finite, invariant to batch order, zero-but-differentiable when there is nothing
to learn from). Each loss's own oracle test lives in tests/test_loss_<name>.py.
"""
import pytest
import torch
from batches import pk_batch, unbalanced_batch, value_and_grad

from dmlutils.gpw import autograd_pair_weights, embedding_gradient
from dmlutils.losses import (
    LOSSES,
    SimilarityLoss,
    cosine_similarity_matrix,
    get_loss,
    hparams_of,
)

NINE = [
    "contrastive",
    "triplet",
    "triplet_center",
    "npair",
    "quadruplet",
    "lifted_structure",
    "binomial_deviance",
    "multi_similarity",
    "ranked_list",
]
SIMILARITY_LOSSES = [n for n in NINE if n != "triplet_center"]
DIM = 16
NUM_CLASSES = 12


def make(name, dtype=torch.float64, **hparams):
    if name == "triplet_center":  # holds learnable centres: needs their number and size
        hparams = dict(num_classes=NUM_CLASSES, embedding_dim=DIM, **hparams)
    torch.manual_seed(0)
    return get_loss(name, **hparams).to(dtype)




# --- registry --------------------------------------------------------------------------


def test_registry_has_exactly_the_nine_losses():
    assert sorted(LOSSES) == sorted(NINE)


def test_the_eight_similarity_losses_expose_from_similarity_and_pair_weights():
    for name in SIMILARITY_LOSSES:
        assert issubclass(LOSSES[name], SimilarityLoss), name
    assert not issubclass(LOSSES["triplet_center"], SimilarityLoss)


def test_unknown_loss_name_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        get_loss("multisimilarity")
    message = str(error.value)
    assert "'multisimilarity'" in message
    for name in NINE:
        assert name in message


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) gamma .*valid: alpha, beta, lam, epsilon"):
        get_loss("multi_similarity", gamma=1.0)


def test_hparams_round_trip_through_get_loss():
    loss = get_loss("multi_similarity", beta=50.0, epsilon=0.2)
    assert hparams_of(loss)["beta"] == 50.0 and hparams_of(loss)["epsilon"] == 0.2
    assert hparams_of(get_loss("multi_similarity", **hparams_of(loss))) == hparams_of(loss)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NINE)
def test_bad_input_raises_a_clear_value_error(name):
    loss = make(name, dtype=torch.float32)
    e, y = torch.randn(8, DIM), torch.arange(4).repeat_interleave(2)
    with pytest.raises(ValueError, match="2-D"):
        loss(e[None], y)
    with pytest.raises(ValueError, match="8 rows but labels has 7"):
        loss(e, y[:7])
    with pytest.raises(ValueError, match="floating point"):
        loss(e.long(), y)
    with pytest.raises(ValueError, match="integer"):
        loss(e, y.float())
    with pytest.raises(ValueError, match="1-D"):
        loss(e, y[:, None])
    with pytest.raises(ValueError, match="labels are on meta"):
        loss(e, y.to("meta"))


# --- GPW: closed-form weights == -dL/dS by autograd ---------------------------------------

GPW_BATCHES = [
    pytest.param(lambda: pk_batch(6, 4, dim=DIM, seed=21, spread=1.0), id="pk6x4"),
    pytest.param(lambda: pk_batch(5, 3, dim=DIM, seed=22, spread=0.8), id="pk5x3-tight"),
    pytest.param(lambda: unbalanced_batch([1, 3, 2, 5, 1, 4], dim=DIM, seed=23), id="unbalanced"),
]


@pytest.mark.parametrize("make_batch", GPW_BATCHES)
@pytest.mark.parametrize("name", SIMILARITY_LOSSES)
def test_closed_form_pair_weights_equal_autograd(name, make_batch):
    embeddings, labels = make_batch()
    loss = make(name)
    S = cosine_similarity_matrix(embeddings)
    closed = loss.pair_weights(S, labels)
    automatic = autograd_pair_weights(loss, S, labels)
    assert closed.shape == S.shape
    assert automatic.abs().sum() > 0  # the batch gives the loss something to weigh
    torch.testing.assert_close(closed, automatic, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", SIMILARITY_LOSSES)
def test_pair_weights_pull_positives_and_push_negatives(name):
    embeddings, labels = pk_batch(6, 4, dim=DIM, seed=24)
    S = cosine_similarity_matrix(embeddings)
    W = make(name).pair_weights(S, labels)
    same = labels[:, None] == labels[None, :]
    assert (W[same] >= 0).all() and (W[~same] <= 0).all()


@pytest.mark.parametrize("name", SIMILARITY_LOSSES)
def test_embedding_gradient_is_the_weighted_sum_of_pairs(name):
    # For S = F F^T (no normalisation), dL/dF = -(W + W^T) F: the GPW identity of Section 3.
    features, labels = pk_batch(5, 4, dim=DIM, seed=25)
    features = torch.nn.functional.normalize(features, dim=1).requires_grad_(True)
    loss = make(name)
    value = loss.from_similarity(features @ features.T, labels)
    (autograd_gradient,) = torch.autograd.grad(value, features)
    W = loss.pair_weights((features @ features.T).detach(), labels)
    torch.testing.assert_close(embedding_gradient(W, features.detach()), autograd_gradient, rtol=0, atol=1e-10)


# --- properties ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NINE)
def test_finite_value_and_gradient(name, dtype):
    for seed, spread in [(31, 1.0), (32, 0.05), (33, 5.0)]:
        embeddings, labels = pk_batch(8, 4, dim=DIM, seed=seed, spread=spread, dtype=dtype)
        value, grad = value_and_grad(make(name, dtype=dtype), embeddings, labels)
        assert torch.isfinite(value) and value.ndim == 0
        assert torch.isfinite(grad).all()


def class_order_preserving_permutation(labels, seed):
    """Shuffle the batch but keep each class's samples in their relative order.

    N-pair takes each class's first two samples as its (anchor, positive), so it is
    invariant to this kind of permutation only; every other loss to any permutation.
    """
    g = torch.Generator().manual_seed(seed)
    slots = torch.randperm(len(labels), generator=g)
    permutation = torch.empty_like(slots)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        permutation[slots[members].sort().values] = members
    return permutation


@pytest.mark.parametrize("name", NINE)
def test_invariant_to_batch_permutation(name):
    embeddings, labels = unbalanced_batch([3, 4, 2, 5, 3, 1], dim=DIM, seed=41)
    loss = make(name)
    for seed in range(3):
        if name == "npair":
            permutation = class_order_preserving_permutation(labels, seed)
        else:
            permutation = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        value, grad = value_and_grad(loss, embeddings, labels)
        permuted_value, permuted_grad = value_and_grad(loss, embeddings[permutation], labels[permutation])
        torch.testing.assert_close(permuted_value, value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(permuted_grad, grad[permutation], rtol=1e-9, atol=1e-12)


# Which losses have nothing to learn from a batch of one class (no negatives): those whose
# every term compares with a negative. Contrastive, binomial deviance and ranked list still
# pull same-class pairs together (their positive terms stand alone), and triplet-center
# compares with the centres of the other classes, so for them one class is not degenerate.
ZERO_ON_ONE_CLASS = {"triplet", "quadruplet", "npair", "lifted_structure", "multi_similarity"}
# Which losses are exactly zero once every margin is met (each class collapsed to one point,
# classes orthogonal): the margin-based ones. The soft losses (log-sum-exp / softplus) only
# approach zero, and lifted structure's log-sum-exp over all negatives stays above it.
ZERO_WHEN_SATISFIED = {"contrastive", "triplet", "quadruplet", "multi_similarity", "ranked_list"}


def assert_differentiable_zero(loss, embeddings, labels):
    e = embeddings.detach().clone().requires_grad_(True)
    value = loss(e, labels)
    assert value.requires_grad, "a zero loss must still be part of the graph"
    value.backward()
    assert float(value.detach()) == 0.0
    assert e.grad is not None and torch.count_nonzero(e.grad) == 0


@pytest.mark.parametrize("name", NINE)
def test_single_class_batch(name):
    embeddings = torch.randn(6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(51))
    labels = torch.full((6,), 3)
    loss = make(name)
    if name in ZERO_ON_ONE_CLASS:
        assert_differentiable_zero(loss, embeddings, labels)
    else:
        value, grad = value_and_grad(loss, embeddings, labels)
        assert torch.isfinite(value) and value > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NINE)
def test_all_distinct_labels_batch_has_no_positive_to_learn_from(name):
    embeddings = torch.randn(6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(52))
    labels = torch.arange(6)
    loss = make(name)
    if name in {"contrastive", "binomial_deviance", "ranked_list", "triplet_center"}:
        # their negative terms stand alone: pushing apart is still learning
        value, grad = value_and_grad(loss, embeddings, labels)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
    else:
        assert_differentiable_zero(loss, embeddings, labels)


@pytest.mark.parametrize("name", sorted(ZERO_WHEN_SATISFIED))
def test_zero_when_every_constraint_is_met(name):
    labels = torch.arange(4).repeat_interleave(3)
    embeddings = torch.eye(DIM, dtype=torch.float64)[labels]  # one point per class, classes orthogonal
    assert_differentiable_zero(make(name), embeddings, labels)
