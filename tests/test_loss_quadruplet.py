"""QuadrupletLoss against a direct 4-nested loop over the paper's quadruplets, and autograd.

pytorch-metric-learning has no quadruplet loss, so the oracle is the paper's definition
enumerated index by index (float64). The dense (positive pairs x negative pairs) implementation
that the counting one replaced is kept here (`dense_quadruplet`) to check values and weights.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from batches import pk_batch, unbalanced_batch, value_and_grad
from test_loss_triplet import dense_triplet, grid_similarity, tied_batch

from dmlutils.gpw import autograd_pair_weights
from dmlutils.losses.base import cosine_similarity_matrix, label_masks
from dmlutils.losses import quadruplet
from dmlutils.losses.quadruplet import QuadrupletLoss
from dmlutils.losses.triplet import TripletLoss

BATCHES = [
    pytest.param(lambda: pk_batch(4, 3, seed=1), id="pk4x3"),
    pytest.param(lambda: pk_batch(3, 4, dim=8, seed=2), id="pk3x4"),
    pytest.param(lambda: pk_batch(5, 2, seed=3, spread=1.5), id="pk5x2"),
    pytest.param(lambda: unbalanced_batch([1, 3, 4, 1, 2, 1], seed=4), id="unbalanced-with-singletons"),
]
MARGINS = [dict(margin=0.1, margin_second=0.05), dict(margin=0.3, margin_second=0.2), dict(margin=0.0, margin_second=0.0)]


def dense_quadruplet(S, labels, margin, margin_second):
    """(value, W) of the original implementation: the second term as a dense
    (positive pairs) x (negative pairs) matrix of hinges."""
    triplet_value, W = dense_triplet(S, labels, margin, "mean")
    positive, negative = label_masks(labels)
    positive_pairs, negative_pairs = positive.nonzero(), negative.nonzero()
    anchor_label = labels[positive_pairs[:, 0]][:, None]
    valid = (labels[negative_pairs[:, 0]][None, :] != anchor_label) & (labels[negative_pairs[:, 1]][None, :] != anchor_label)
    hinge = (
        S[negative_pairs[:, 0], negative_pairs[:, 1]][None, :]
        - S[positive_pairs[:, 0], positive_pairs[:, 1]][:, None]
        + margin_second
    )
    count = valid.sum().clamp_min(1).to(S.dtype)
    value = triplet_value + torch.where(valid, torch.relu(hinge), torch.zeros_like(hinge)).sum() / count
    coefficients = (valid & (hinge > 0)).to(S.dtype) / count
    W = W.index_put((positive_pairs[:, 0], positive_pairs[:, 1]), coefficients.sum(dim=1), accumulate=True)
    W = W.index_put((negative_pairs[:, 0], negative_pairs[:, 1]), -coefficients.sum(dim=0), accumulate=True)
    return value, W


def quadruplet_loop(embeddings, labels, margin, margin_second):
    """The paper's two sums, enumerated with nested loops, averaged: a differentiable oracle."""
    S = cosine_similarity_matrix(embeddings)
    y = labels.tolist()
    B = len(y)
    triplet_terms, quadruplet_terms = [], []
    for i in range(B):
        for j in range(B):
            if j == i or y[j] != y[i]:
                continue
            for k in range(B):
                if y[k] != y[i]:
                    triplet_terms.append(torch.relu(S[i, k] - S[i, j] + margin))
            for l in range(B):  # noqa: E741 - the paper's name
                for k in range(B):
                    if y[l] != y[i] and y[k] != y[i] and y[k] != y[l]:
                        quadruplet_terms.append(torch.relu(S[l, k] - S[i, j] + margin_second))
    mean = lambda xs: torch.stack(xs).mean() if xs else (S * 0).sum()  # noqa: E731
    return mean(triplet_terms) + mean(quadruplet_terms), len(triplet_terms), len(quadruplet_terms)


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("margins", MARGINS)
def test_value_and_gradient_equal_nested_loop(make_batch, margins):
    embeddings, labels = make_batch()
    ours = value_and_grad(QuadrupletLoss(**margins), embeddings, labels)
    loop = value_and_grad(lambda e, y: quadruplet_loop(e, y, **margins)[0], embeddings, labels)
    assert ours[0] > 0
    torch.testing.assert_close(ours[0], loop[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], loop[1], rtol=1e-10, atol=1e-12)


def test_second_term_is_active_and_counted_over_ordered_negative_pairs():
    # 4 classes x 3: per positive pair (i, j) the (l, k) have 9 choices for l and 6 for k -> 54.
    embeddings, labels = pk_batch(4, 3, seed=1)
    _, n_triplets, n_quadruplets = quadruplet_loop(embeddings, labels, 0.1, 0.05)
    assert n_triplets == 12 * 2 * 9
    assert n_quadruplets == 12 * 2 * 9 * 6
    with_second = QuadrupletLoss(0.1, 0.05)(embeddings, labels)
    triplet_only = TripletLoss(0.1)(embeddings, labels)
    assert with_second > triplet_only  # the second term contributes on this batch


def test_float32_is_close_to_float64():
    embeddings, labels = pk_batch(4, 3, seed=5)
    v64, g64 = value_and_grad(QuadrupletLoss(), embeddings, labels)
    v32, g32 = value_and_grad(QuadrupletLoss(), embeddings.float(), labels)
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_batch", BATCHES + [pytest.param(lambda: pk_batch(16, 5, dim=32, seed=6), id="pk16x5")])
@pytest.mark.parametrize("margins", MARGINS[:2])
def test_pair_weights_equal_autograd(make_batch, margins):
    embeddings, labels = make_batch()
    loss = QuadrupletLoss(**margins)
    S = cosine_similarity_matrix(embeddings)
    W = loss.pair_weights(S, labels)
    torch.testing.assert_close(W, autograd_pair_weights(loss, S, labels), rtol=0, atol=1e-10)
    same = labels[:, None] == labels[None, :]
    assert (W[same] >= 0).all() and (W[~same] <= 0).all()
    assert (W != 0).any()


def test_two_class_batch_has_no_quadruplets_and_equals_the_triplet_loss():
    embeddings, labels = pk_batch(2, 5, seed=7)
    _, _, n_quadruplets = quadruplet_loop(embeddings, labels, 0.1, 0.05)
    assert n_quadruplets == 0
    ours = value_and_grad(QuadrupletLoss(0.1, 0.05), embeddings, labels)
    triplet = value_and_grad(TripletLoss(0.1), embeddings, labels)
    assert ours[0] > 0
    torch.testing.assert_close(ours[0], triplet[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(ours[1], triplet[1], rtol=1e-12, atol=1e-15)


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
@pytest.mark.parametrize(
    "labels",
    [pytest.param(torch.zeros(6, dtype=torch.long), id="single-class"), pytest.param(torch.arange(6), id="all-distinct")],
)
def test_batch_without_positive_pairs_or_negatives_is_a_differentiable_zero(labels):
    embeddings = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    value, grad = value_and_grad(QuadrupletLoss(), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    S = cosine_similarity_matrix(embeddings)
    assert torch.equal(QuadrupletLoss().pair_weights(S, labels), torch.zeros_like(S))


def test_batch_satisfying_every_constraint_has_zero_loss_and_zero_gradient():
    # Orthogonal class axes: positives S ~ 1, every negative pair S ~ 0, margins 0.5 and 0.3 met.
    g = torch.Generator().manual_seed(9)
    labels = torch.arange(4).repeat_interleave(3)
    embeddings = torch.eye(8, dtype=torch.float64)[labels] + 0.01 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    value, grad = value_and_grad(QuadrupletLoss(0.5, 0.3), embeddings, labels)
    assert float(value) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(margin=-0.1), "margin must be >= 0"),
        (dict(margin_second=-0.05), "margin_second must be >= 0"),
        (dict(margin_second=float("nan")), "margin_second must be a finite number"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuadrupletLoss(**kwargs)


@pytest.fixture(params=["table", "search"])
def class_counts(request, monkeypatch):
    """Both ways of counting a negative pair's violations within a class: the table of running
    counts (small batches) and the per-class binary search (past CLASS_TABLE_LIMIT)."""
    if request.param == "search":
        monkeypatch.setattr(quadruplet, "CLASS_TABLE_LIMIT", 0)
    return request.param


DENSE_BATCHES = BATCHES + [
    pytest.param(tied_batch, id="ties"),
    pytest.param(lambda: pk_batch(16, 5, dim=32, seed=6), id="pk16x5"),
    pytest.param(lambda: unbalanced_batch([12, 2, 1, 5, 1, 3, 2], seed=11), id="unbalanced-one-large-class"),
]


@pytest.mark.parametrize("make_batch", DENSE_BATCHES)
@pytest.mark.parametrize("margins", MARGINS)
def test_value_and_pair_weights_equal_the_dense_implementation(make_batch, margins, class_counts):
    embeddings, labels = make_batch()
    S = cosine_similarity_matrix(embeddings)
    loss = QuadrupletLoss(**margins)
    expected_value, expected_W = dense_quadruplet(S, labels, **margins)
    value, W = loss.value_and_pair_weights(S, labels)
    assert expected_value > 0
    torch.testing.assert_close(value, expected_value, rtol=0, atol=1e-10)
    torch.testing.assert_close(W, expected_W, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss.from_similarity(S, labels), expected_value, rtol=0, atol=1e-10)
    torch.testing.assert_close(loss.pair_weights(S, labels), expected_W, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "margins",
    [dict(margin=0.1, margin_second=0.05), dict(margin=0.125, margin_second=0.1), dict(margin=0.0, margin_second=0.0)],
)
def test_hinges_at_exactly_zero_are_classified_like_the_dense_implementation(seed, dtype, margins, class_counts):
    # 5 classes so that the second term has many quadruplets; its hinges S_lk - S_ij + margin_second
    # on grid values are often exactly 0 (no weight) or one rounding away from it (weight 1/count).
    S, labels = grid_similarity(seed, batch=16, num_classes=5, dtype=dtype)
    positive, negative = label_masks(labels)
    second_hinges = S[negative][None, :] - S[positive][:, None] + margins["margin_second"]
    assert (second_hinges == 0).any()
    expected_value, expected_W = dense_quadruplet(S, labels, **margins)
    value, W = QuadrupletLoss(**margins).value_and_pair_weights(S, labels)
    tolerance = dict(rtol=0, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(value, expected_value, **tolerance)
    torch.testing.assert_close(W, expected_W, **tolerance)


# Forward + backward of TripletLoss, then QuadrupletLoss, on a 200 x 5 batch of 512-d float32
# embeddings, in a fresh process; prints the growth of the peak resident memory (ru_maxrss,
# KiB on Linux) over a baseline that already holds the embeddings and one S-sized matmul.
MEMORY_SCRIPT = """
import json, resource, torch
from dmlutils.losses import quadruplet
from dmlutils.losses.quadruplet import QuadrupletLoss
from dmlutils.losses.triplet import TripletLoss
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
labels = torch.arange(200).repeat_interleave(5)
embeddings = (torch.randn(200, 512, generator=g)[labels] + 1.5 * torch.randn(1000, 512, generator=g)).requires_grad_(True)
(embeddings @ embeddings.T).sum().backward()
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base, growth = peak(), {}
for loss in (TripletLoss(), QuadrupletLoss()):
    embeddings.grad = None
    loss(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    growth[type(loss).__name__] = peak() - base
print(json.dumps(growth))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_batch_of_1000_trains_in_bounded_memory():
    # Materialised, the triplets of this batch are a (1000, 1000, 1000) tensor (4 GB in float32
    # for the hinges alone) and the quadruplet term a 4000 x 995000 matrix (16 GB); counting keeps
    # both within a few (B, B) tensors. Each loss (the quadruplet one includes the triplet term)
    # must stay under 512 MiB of extra peak memory.
    root = Path(__file__).resolve().parents[1]
    python_path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path)
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(growth) == {"TripletLoss", "QuadrupletLoss"}
    for name, extra_bytes in growth.items():
        assert extra_bytes < 512 * 2**20, f"{name}: {extra_bytes / 2**20:.0f} MiB"
