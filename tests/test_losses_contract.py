"""The loss contract, checked for all nine registered losses at once.

Registry and errors; GPW closed-form weights == autograd; properties every loss must
have (finite, invariant to batch order, zero-but-differentiable when there is nothing
to learn from); loud failures (NaN / inf rows, batches without a positive pair, missing
arguments). Each loss's own oracle test lives in tests/test_loss_<name>.py; the same
properties on random batches and extreme hyper-parameters (hypothesis) in
tests/test_loss_properties.py.
"""
import inspect
import re
import warnings

import pytest
import torch
from batches import class_order_preserving_permutation, pk_batch, unbalanced_batch, value_and_grad

from dmlutils.gpw import autograd_pair_weights, embedding_gradient
from dmlutils.losses import (
    LOSSES,
    MetricLoss,
    NoPositivePairWarning,
    SimilarityLoss,
    cosine_similarity_matrix,
    get_loss,
    hparams_of,
    loss_hparam_names,
)
from dmlutils.losses.base import check_finite_rows

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


def required_arguments(name):
    """The constructor parameters of loss `name` without a default, read from its signature."""
    parameters = list(inspect.signature(LOSSES[name].__init__).parameters.values())[1:]  # not self
    return [p.name for p in parameters if p.default is inspect.Parameter.empty]


@pytest.mark.parametrize("name", NINE)
def test_missing_required_arguments_are_named(name):
    required = required_arguments(name)
    if not required:
        assert isinstance(get_loss(name), MetricLoss)
        return
    with pytest.raises(ValueError) as error:  # not Python's raw TypeError
        get_loss(name)
    message = str(error.value)
    assert f"loss {name!r} needs {', '.join(required)}" in message
    assert LOSSES[name].__name__ in message  # with its full signature
    everything = dict(num_classes=NUM_CLASSES, embedding_dim=DIM)  # what triplet_center needs
    for left_out in required:
        given = {n: everything[n] for n in required if n != left_out}
        with pytest.raises(ValueError, match=rf"loss {name!r} needs {left_out} \(no default\)"):
            get_loss(name, **given)


def test_triplet_center_is_the_loss_with_required_arguments():
    # keeps the generic test above from passing vacuously
    assert required_arguments("triplet_center") == ["num_classes", "embedding_dim"]


@pytest.mark.parametrize("name", NINE)
def test_strict_is_an_option_of_every_loss_not_a_hyperparameter(name):
    lenient, strict = make(name), make(name, strict=True)
    assert not lenient.strict and strict.strict
    assert LOSSES[name](**({"num_classes": 3, "embedding_dim": 2} if name == "triplet_center" else {}), strict=True).strict
    # profiles tune loss_hparam_names and run records store hparams_of: strict is in neither,
    # so existing records keep their meaning (the same keys as before the option existed)
    assert "strict" not in loss_hparam_names(name)
    assert hparams_of(strict) == hparams_of(lenient) and "strict" not in hparams_of(strict)
    assert "strict=True" in repr(strict) and "strict" not in repr(lenient)
    with pytest.raises(ValueError, match="strict must be True or False"):
        make(name, strict="yes")


def test_recorded_hyperparameters_are_unchanged():
    assert list(hparams_of(get_loss("multi_similarity"))) == [
        "alpha", "beta", "lam", "epsilon", "mine_positives", "mine_negatives", "weighting"
    ]
    assert loss_hparam_names("triplet_center") == ["num_classes", "embedding_dim", "margin"]


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


@pytest.mark.parametrize("name", NINE)
def test_non_finite_embeddings_raise_naming_the_rows(name):
    loss = make(name, dtype=torch.float32)
    e, y = torch.randn(20, DIM), torch.arange(10).repeat_interleave(2)
    for bad, kind in [({3: "nan", 17: "nan"}, "NaN"), ({5: "inf"}, "inf"), ({0: "-inf", 9: "nan"}, "NaN and inf")]:
        broken = e.clone().requires_grad_(False)
        for row, value in bad.items():
            broken[row, 1] = float(value)
        rows = ", ".join(map(str, sorted(bad)))
        with pytest.raises(ValueError, match=rf"^embeddings rows \[{rows}\] hold {kind} \({len(bad)} of 20 rows\): .*learning rate"):
            loss(broken.requires_grad_(True), y)


def test_nan_no_longer_gives_multi_similarity_a_silent_zero():
    e, y = torch.randn(8, DIM), torch.arange(4).repeat_interleave(2)
    e[3] = float("nan")
    with pytest.raises(ValueError, match=r"embeddings rows \[3\] hold NaN"):
        get_loss("multi_similarity")(e, y)


@pytest.mark.parametrize("name", SIMILARITY_LOSSES)
def test_non_finite_similarity_raises_naming_the_rows(name):
    loss = make(name)
    embeddings, labels = pk_batch(4, 3, dim=DIM, seed=3)
    S = cosine_similarity_matrix(embeddings)
    S[2, 5], S[7, 7] = float("nan"), float("inf")
    for method in (loss.from_similarity, loss.pair_weights):
        with pytest.raises(ValueError, match=r"^S rows \[2, 7\] hold NaN and inf \(2 of 12 rows\): .*embeddings"):
            method(S, labels)


def test_non_finite_centres_of_triplet_center_raise():
    loss = make("triplet_center")
    embeddings, labels = pk_batch(4, 3, dim=DIM, seed=4)
    with torch.no_grad():
        loss.centers[1] = float("nan")
    with pytest.raises(ValueError, match=r"T \(similarities to the class centres\) rows \[0, 1, .*centres"):
        loss(embeddings, labels)


def test_finite_check_is_exact_when_the_sum_overflows():
    check_finite_rows(torch.full((4, 3), 3e38), "x", "")  # finite entries, infinite sum: no error
    x = torch.full((4, 3), 3e38)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x rows \[2\] hold NaN"):
        check_finite_rows(x, "x", "")
    many = torch.full((30, 2), float("nan"))
    with pytest.raises(ValueError, match=r"x rows \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\] hold NaN \(30 of 30 rows\)"):
        check_finite_rows(many, "x", "")


# --- batches without a positive pair ------------------------------------------------------

# Triplet-center compares each sample with its class centre, not with another sample: a batch
# of distinct labels trains it fully, so it never warns. Every other loss warns, even those
# whose negative terms stand alone (contrastive, binomial deviance, ranked list): in a P x K
# batch a missing positive pair is a sampler or label bug all the same.
WARN_WITHOUT_POSITIVE_PAIRS = [n for n in NINE if n != "triplet_center"]


def calls_and_warnings(loss, batches):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every warning: no once-per-location filter
        for embeddings, labels in batches:
            loss(embeddings, labels)
    return [w for w in caught if issubclass(w.category, NoPositivePairWarning)]


@pytest.mark.parametrize("name", WARN_WITHOUT_POSITIVE_PAIRS)
def test_no_positive_pair_warns_once_per_loss(name):
    distinct = (torch.randn(6, DIM, dtype=torch.float64), torch.arange(6))
    fine = pk_batch(3, 2, dim=DIM, seed=5)
    loss = make(name)
    caught = calls_and_warnings(loss, [fine, distinct, distinct, fine, distinct])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{type(loss).__name__}: the batch of 6 samples has no positive pair")
    assert re.search(r"P x K batch .*PKSampler\(labels, p, k\).*the sampler's k is < 2, or the labels are wrong", message)
    assert "strict=True" in message
    assert caught[0].filename == __file__  # points at the caller's loss(...) line, not the library
    assert len(calls_and_warnings(make(name), [distinct])) == 1  # a new loss warns again


@pytest.mark.parametrize("name", WARN_WITHOUT_POSITIVE_PAIRS)
def test_no_positive_pair_raises_when_strict(name):
    loss = make(name, strict=True)
    loss(*pk_batch(3, 2, dim=DIM, seed=6))  # a batch with positive pairs is fine
    for size in (6, 1):  # all labels distinct; a single sample
        with pytest.raises(ValueError, match=rf"batch of {size} samples has no positive pair.*built with strict=True"):
            loss(torch.randn(size, DIM, dtype=torch.float64), torch.arange(size))


def test_triplet_center_never_warns_about_positive_pairs():
    distinct = (torch.randn(6, DIM, dtype=torch.float64), torch.arange(6))
    assert calls_and_warnings(make("triplet_center"), [distinct, distinct]) == []
    make("triplet_center", strict=True)(*distinct)  # nothing to raise about


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


@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")  # tested above
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
