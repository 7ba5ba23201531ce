"""TripletLoss against pytorch-metric-learning, a triplet loop, FaceNet's squared distances, autograd,
and the dense (B, B, B) implementation it replaced (kept here as `dense_triplet`)."""
import pytest
import torch
from batches import pk_batch, unbalanced_batch, value_and_grad
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer
from pytorch_metric_learning.utils.loss_and_miner_utils import get_all_triplets_indices

from dmlutils.gpw import autograd_pair_weights
from dmlutils.losses.base import cosine_similarity_matrix, label_masks
from dmlutils.losses.triplet import TripletLoss

BATCHES = [
    pytest.param(lambda: pk_batch(8, 4, seed=1), id="pk8x4"),
    pytest.param(lambda: pk_batch(16, 5, dim=32, seed=2), id="pk16x5"),
    pytest.param(lambda: pk_batch(6, 5, seed=3, spread=0.6), id="mostly-satisfied"),
    pytest.param(lambda: unbalanced_batch([1, 2, 5, 3, 1, 7, 4], seed=4), id="unbalanced-with-singletons"),
]
MARGINS = [0.1, 0.3, 0.0]


def tied_batch():
    """Duplicated embeddings, within and across classes: tied similarities everywhere."""
    embeddings, labels = pk_batch(6, 4, seed=9)
    embeddings[1] = embeddings[0]
    embeddings[7] = embeddings[0]
    embeddings[10] = embeddings[3]
    return embeddings, labels


def grid_similarity(seed, batch=14, num_classes=4, dtype=torch.float64):
    """A made-up S whose entries come from a coarse grid, so that many hinges S_an - S_ap + margin
    are exactly 0 or within one rounding of 0 (0.3 - 0.2 - 0.1 != 0 in floating point)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    grid = torch.tensor([-0.2, -0.1, 0.0, 0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.375, 0.4], dtype=dtype)
    return grid[torch.randint(0, len(grid), (batch, batch), generator=g)], labels


def dense_triplet_mask(labels):
    """(B, B, B) boolean mask, [a, p, n] True when p is a positive of a and n a negative of a."""
    positive, negative = label_masks(labels)
    return positive[:, :, None] & negative[:, None, :]


def dense_triplet(S, labels, margin, reduction):
    """(value, W) of the original implementation, every triplet materialised as a (B, B, B) tensor."""
    hinge = S[:, None, :] - S[:, :, None] + margin
    averaged = dense_triplet_mask(labels)
    if reduction == "nonzero_mean":
        averaged = averaged & (hinge > 0)
    count = averaged.sum().clamp_min(1).to(S.dtype)
    value = torch.where(averaged, torch.relu(hinge), torch.zeros_like(hinge)).sum() / count
    coefficients = (averaged & (hinge > 0)).to(S.dtype) / count
    return value, coefficients.sum(dim=2) - coefficients.sum(dim=1)


def pml_triplet(margin, reduction):
    # PML TripletMarginLoss with CosineSimilarity (inverted: distance.margin(ap, an) = an - ap):
    # per triplet relu(S_an - S_ap + margin); swap=False, smooth_loss=False; with no miner,
    # triplets_per_anchor="all" takes get_all_triplets_indices (checked equal to our mask below).
    # MeanReducer = mean over all those triplets (our "mean"); AvgNonZeroReducer = mean over the
    # triplets with loss > 0 (our "nonzero_mean").
    reducer = MeanReducer() if reduction == "mean" else AvgNonZeroReducer()
    return TripletMarginLoss(margin=margin, swap=False, smooth_loss=False, distance=CosineSimilarity(), reducer=reducer)


def triplet_loop(embeddings, labels, margin, reduction="mean"):
    S = cosine_similarity_matrix(embeddings).tolist()
    y = labels.tolist()
    losses = []
    for a in range(len(y)):
        for p in range(len(y)):
            for n in range(len(y)):
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    losses.append(max(S[a][n] - S[a][p] + margin, 0.0))
    if reduction == "nonzero_mean":
        losses = [x for x in losses if x > 0]
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("make_batch", BATCHES)
def test_triplet_mask_is_pmls_set_of_all_triplets(make_batch):
    _, labels = make_batch()
    ours = set(map(tuple, dense_triplet_mask(labels).nonzero().tolist()))
    a, p, n = get_all_triplets_indices(labels)
    pml = set(zip(a.tolist(), p.tolist(), n.tolist()))
    assert ours == pml and len(ours) > 0


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_value_and_gradient_equal_pml(make_batch, margin, reduction):
    embeddings, labels = make_batch()
    ours = value_and_grad(TripletLoss(margin, reduction), embeddings, labels)
    pml = value_and_grad(pml_triplet(margin, reduction), embeddings, labels)
    assert ours[0] > 0
    torch.testing.assert_close(ours[0], pml[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], pml[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make_batch", BATCHES[:1] + BATCHES[2:])
@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_value_equals_triplet_loop(make_batch, reduction):
    embeddings, labels = make_batch()
    expected = triplet_loop(embeddings, labels, 0.2, reduction)
    assert float(TripletLoss(0.2, reduction)(embeddings, labels)) == pytest.approx(expected, rel=1e-12)


def test_nonzero_mean_is_larger_when_some_triplets_are_satisfied():
    embeddings, labels = pk_batch(6, 5, seed=3, spread=0.6)
    mean, nonzero = TripletLoss(0.1, "mean")(embeddings, labels), TripletLoss(0.1, "nonzero_mean")(embeddings, labels)
    assert 0 < mean < nonzero


def test_margin_0_1_on_similarity_is_facenets_0_2_on_squared_distance():
    # |f_a - f_b|^2 = 2 - 2 S_ab for unit vectors: FaceNet's hinge with margin 0.2 is twice ours with 0.1.
    embeddings, labels = pk_batch(8, 4, seed=5)
    facenet = TripletMarginLoss(
        margin=0.2, distance=LpDistance(normalize_embeddings=True, p=2, power=2), reducer=MeanReducer()
    )
    ours = value_and_grad(TripletLoss(margin=0.1), embeddings, labels)
    theirs = value_and_grad(facenet, embeddings, labels)
    torch.testing.assert_close(2 * ours[0], theirs[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(2 * ours[1], theirs[1], rtol=1e-8, atol=1e-10)


def test_float32_matches_pml():
    embeddings, labels = pk_batch(8, 4, seed=6, dtype=torch.float32)
    ours = value_and_grad(TripletLoss(), embeddings, labels)
    pml = value_and_grad(pml_triplet(0.1, "mean"), embeddings, labels)
    assert ours[0].dtype == torch.float32
    torch.testing.assert_close(ours[0], pml[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], pml[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_pair_weights_equal_autograd(make_batch, reduction):
    embeddings, labels = make_batch()
    loss = TripletLoss(0.1, reduction)
    S = cosine_similarity_matrix(embeddings)
    W = loss.pair_weights(S, labels)
    torch.testing.assert_close(W, autograd_pair_weights(loss, S, labels), rtol=0, atol=1e-10)
    same = labels[:, None] == labels[None, :]
    assert (W[same] >= 0).all() and (W[~same] <= 0).all()
    assert (W != 0).any()
    # Every triplet moves its positive and its negative pair by the same amount.
    torch.testing.assert_close(W[same].sum(), -W[~same].sum(), rtol=1e-12, atol=1e-12)


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
@pytest.mark.parametrize(
    "labels",
    [pytest.param(torch.zeros(6, dtype=torch.long), id="single-class"), pytest.param(torch.arange(6), id="all-distinct")],
)
@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_batch_without_triplets_is_a_differentiable_zero(labels, reduction):
    embeddings = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    value, grad = value_and_grad(TripletLoss(0.1, reduction), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    S = cosine_similarity_matrix(embeddings)
    assert torch.equal(TripletLoss(0.1, reduction).pair_weights(S, labels), torch.zeros_like(S))


@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_batch_satisfying_every_triplet_has_zero_loss_and_zero_gradient(reduction):
    g = torch.Generator().manual_seed(8)
    labels = torch.arange(4).repeat_interleave(3)
    embeddings = torch.eye(8, dtype=torch.float64)[labels] + 0.01 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    value, grad = value_and_grad(TripletLoss(0.5, reduction), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(margin=-0.1), "margin must be >= 0"),
        (dict(margin=float("inf")), "finite number"),
        (dict(margin=True), "finite number"),
        (dict(reduction="sum"), "reduction must be one of"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletLoss(**kwargs)


DENSE_BATCHES = BATCHES + [
    pytest.param(tied_batch, id="ties"),
    pytest.param(lambda: pk_batch(20, 5, seed=10, spread=1.5), id="pk20x5"),
    pytest.param(lambda: unbalanced_batch([30, 2, 1, 5, 1, 9], seed=11), id="unbalanced-one-large-class"),
]


@pytest.mark.parametrize("make_batch", DENSE_BATCHES)
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_value_and_pair_weights_equal_the_dense_implementation(make_batch, margin, reduction):
    embeddings, labels = make_batch()
    S = cosine_similarity_matrix(embeddings)
    loss = TripletLoss(margin, reduction)
    expected_value, expected_W = dense_triplet(S, labels, margin, reduction)
    value, W = loss.value_and_pair_weights(S, labels)
    assert expected_value > 0
    torch.testing.assert_close(value, expected_value, rtol=0, atol=1e-10)
    torch.testing.assert_close(W, expected_W, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss.from_similarity(S, labels), expected_value, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss.pair_weights(S, labels), expected_W, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margin", [0.1, 0.125, 0.0])
@pytest.mark.parametrize("reduction", ["mean", "nonzero_mean"])
def test_hinges_at_exactly_zero_are_classified_like_the_dense_implementation(seed, dtype, margin, reduction):
    # A hinge that rounds to 0 has no weight (relu'(0) = 0), one that rounds to 1e-17 has
    # weight 1/count: a single triplet classified differently moves W by 1/count >> atol.
    S, labels = grid_similarity(seed, dtype=dtype)
    hinge = S[:, None, :] - S[:, :, None] + margin
    assert ((hinge == 0) & dense_triplet_mask(labels)).any()
    expected_value, expected_W = dense_triplet(S, labels, margin, reduction)
    value, W = TripletLoss(margin, reduction).value_and_pair_weights(S, labels)
    tolerance = dict(rtol=0, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(value, expected_value, **tolerance)
    torch.testing.assert_close(W, expected_W, **tolerance)
