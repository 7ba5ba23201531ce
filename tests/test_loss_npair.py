"""NPairLoss against pytorch-metric-learning 2.9.0's NPairsLoss, a loop over Sohn's formula
and cross-entropy; closed-form pair weights against autograd."""
import math

import pytest
import torch
import torch.nn.functional as F
from batches import value_and_grad
from pytorch_metric_learning import distances, losses, reducers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from dmlutils.losses.npair import NPairLoss, npair_indices
from dmlutils.losses.registry import get_loss

LABEL_SETS = [
    [c for c in range(4) for _ in range(3)],  # 4 x 3, sorted
    [c for _ in range(4) for c in range(6)],  # 6 x 4, interleaved
    [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5, 5],  # unbalanced, singletons 3 and 4
    [7, 3, 5, 3, 3, 9, 7, 9, 9, 1, 1, 2, 1, 1],  # unsorted labels, second samples out of class order
]
SEEDS = [0, 1, 2]


def batch(seed, labels, dim=16, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=generator, dtype=dtype), torch.tensor(labels)




def npair_loop(embeddings, labels, scale=1.0):
    """Sohn 2016, N-pair-mc: first and second sample of each class, then
    1/N sum_i log(1 + sum_{j != i} exp(s (f_i . f+_j - f_i . f+_i))) on unit vectors."""
    f = F.normalize(embeddings, dim=1)
    seen = {}
    for index, label in enumerate(labels.tolist()):
        seen.setdefault(label, []).append(index)
    pairs = [(members[0], members[1]) for members in seen.values() if len(members) >= 2]
    terms = []
    for a_i, p_i in pairs:
        others = [torch.exp(scale * (f[a_i] @ f[p_j] - f[a_i] @ f[p_i])) for a_j, p_j in pairs if a_j != a_i]
        terms.append(torch.log(1 + torch.stack(others).sum()))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_pairs_are_the_ones_pytorch_metric_learning_picks(labels):
    labels = torch.tensor(labels)
    anchors, positives = npair_indices(labels)
    theirs_a, theirs_p = lmu.convert_to_pos_pairs_with_unique_labels(None, labels)
    assert sorted(zip(anchors.tolist(), positives.tolist())) == sorted(zip(theirs_a.tolist(), theirs_p.tolist()))
    for a, p in zip(anchors.tolist(), positives.tolist()):  # first and second of their class
        members = (labels == labels[a]).nonzero().flatten().tolist()
        assert (a, p) == (members[0], members[1])
    assert anchors.tolist() == sorted(anchors.tolist())


@pytest.mark.parametrize(
    "distance",
    # Mapping: PML's cross-entropy over sim_mat = distance(anchors, positives) is our N x N
    # logit matrix when the distance is the cosine similarity (DotProductSimilarity
    # normalises by default, making it the same); MeanReducer averages the N pair losses.
    [distances.CosineSimilarity(), distances.DotProductSimilarity(normalize_embeddings=True)],
    ids=["cosine", "dot-normalised"],
)
@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_value_and_gradient_match_pytorch_metric_learning(seed, labels, distance):
    embeddings, labels = batch(seed, labels)
    ours, ours_grad = value_and_grad(NPairLoss(), embeddings, labels)
    pml = losses.NPairsLoss(distance=distance, reducer=reducers.MeanReducer())
    theirs, theirs_grad = value_and_grad(pml, embeddings, labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_value_and_gradient_match_paper_loop(seed, labels):
    embeddings, labels = batch(seed, labels)
    ours, ours_grad = value_and_grad(NPairLoss(), embeddings, labels)
    loop, loop_grad = value_and_grad(npair_loop, embeddings, labels)
    torch.testing.assert_close(ours, loop, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, loop_grad, rtol=0, atol=1e-10)


def test_equals_cross_entropy_with_diagonal_targets():
    embeddings, labels = batch(7, LABEL_SETS[3])
    anchors, positives = npair_indices(labels)
    f = F.normalize(embeddings, dim=1)
    logits = f[anchors] @ f[positives].T
    expected = F.cross_entropy(logits, torch.arange(len(anchors)))
    torch.testing.assert_close(NPairLoss()(embeddings, labels), expected, rtol=0, atol=1e-12)


def random_similarity(seed, n, symmetric):
    generator = torch.Generator().manual_seed(seed)
    if symmetric:
        e = F.normalize(torch.randn(n, 8, generator=generator, dtype=torch.float64), dim=1)
        return e @ e.T
    return torch.rand(n, n, generator=generator, dtype=torch.float64) * 2 - 1  # independent S_ij


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_pair_weights_equal_minus_autograd(labels, symmetric):
    labels = torch.tensor(labels)
    anchors, positives = npair_indices(labels)
    used = torch.zeros(len(labels), len(labels), dtype=torch.bool)
    used[anchors[:, None], positives[None, :]] = True
    for seed in SEEDS:
        S = random_similarity(seed, len(labels), symmetric).requires_grad_()
        (grad,) = torch.autograd.grad(NPairLoss().from_similarity(S, labels), S)
        W = NPairLoss().pair_weights(S.detach(), labels)
        torch.testing.assert_close(W, -grad, rtol=0, atol=1e-10)
        same = labels[:, None] == labels[None, :]
        assert (W[same] >= 0).all() and (W[~same] <= 0).all()
        assert (W[~used] == 0).all()
        # Each anchor's row of weights sums to 0: the softmax's pull equals its pushes.
        torch.testing.assert_close(W.sum(dim=1), torch.zeros(len(labels), dtype=W.dtype), rtol=0, atol=1e-12)


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
@pytest.mark.parametrize(
    "labels",
    [[3] * 6, list(range(6)), [0, 0, 1, 2, 3, 4]],  # one class; all distinct; one pair + singletons
    ids=["single-class", "all-distinct", "one-pair"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fewer_than_two_pairs_give_differentiable_zero(labels, dtype):
    embeddings, labels = batch(0, labels, dtype=dtype)
    embeddings.requires_grad_()
    value = NPairLoss()(embeddings, labels)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))
    assert (NPairLoss().pair_weights(torch.eye(6, dtype=dtype), labels) == 0).all()


def test_perfect_embedding_floor():
    # Two classes at opposite poles: x_12 = S(a_1, p_2) - S(a_1, p_1) = -1 - 1 = -2, so the
    # floor log(1 + (N - 1) e^{-2}) of the module docstring is reached with N = 2.
    e = torch.zeros(4, 8, dtype=torch.float64)
    e[:2, 0], e[2:, 0] = 1.0, -1.0
    value = NPairLoss()(e, torch.tensor([0, 0, 1, 1]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)


def test_float32_agrees_with_float64_and_stays_finite():
    embeddings, labels = batch(3, LABEL_SETS[1])
    value32, grad32 = value_and_grad(NPairLoss(), embeddings.float(), labels)
    value64, _ = value_and_grad(NPairLoss(), embeddings, labels)
    assert value32.dtype == torch.float32 and torch.isfinite(grad32).all()
    assert value32.item() == pytest.approx(value64.item(), rel=1e-5)


@pytest.mark.parametrize("scale", [0.5, 10.0, 64.0])
def test_scaled_logits_match_the_loop_and_autograd(scale):
    embeddings, labels = batch(11, LABEL_SETS[2])
    ours, ours_grad = value_and_grad(NPairLoss(scale=scale), embeddings, labels)
    loop, loop_grad = value_and_grad(lambda e, y: npair_loop(e, y, scale), embeddings, labels)
    torch.testing.assert_close(ours, loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, loop_grad, rtol=1e-10, atol=1e-12)
    S = random_similarity(3, len(labels), symmetric=False).requires_grad_()
    (grad,) = torch.autograd.grad(NPairLoss(scale=scale).from_similarity(S, labels), S)
    torch.testing.assert_close(NPairLoss(scale=scale).pair_weights(S.detach(), labels), -grad, rtol=0, atol=1e-10)


def test_hyper_parameters():
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        get_loss("npair", margin=0.1)
    assert isinstance(get_loss("npair"), NPairLoss) and get_loss("npair").scale == 1.0
    with pytest.raises(ValueError, match="scale must be positive"):
        NPairLoss(scale=0.0)
