"""LiftedStructureLoss (and the per-anchor GeneralizedLiftedStructureLoss) against
pytorch-metric-learning 2.9.0 and against direct loops over the papers' formulas."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from batches import value_and_grad
from pytorch_metric_learning import distances, losses, reducers

from dmlutils.losses.lifted_structure import (
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
)
from dmlutils.losses.registry import LOSSES, get_loss

# P x K batches, an unbalanced one with singletons (3, 4), and one with classes of 2..5.
LABEL_SETS = [
    [c for c in range(4) for _ in range(3)],
    [c for c in range(6) for _ in range(4)],
    [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5, 5],
    [7, 3, 7, 3, 3, 9, 9, 9, 9, 1, 1, 1, 1, 1],
]
# Batches with no singleton, where PML's generalised loss and ours agree (see the class docstring).
LABEL_SETS_NO_SINGLETON = [LABEL_SETS[0], LABEL_SETS[1], LABEL_SETS[3]]
SEEDS = [0, 1, 2]


def batch(seed, labels, dim=16, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(len(labels), dim, generator=generator, dtype=dtype)
    return embeddings, torch.tensor(labels)




def lifted_loop(embeddings, labels, margin):
    """Oh Song et al. 2016, eq. (4): sum over unordered positive pairs {i, j} of
    [log(sum_{N_i} e^{margin - D_ik} + sum_{N_j} e^{margin - D_jl}) + D_ij]_+^2 / (2 |P|)."""
    f = F.normalize(embeddings, dim=1)
    labels = labels.tolist()
    n = len(labels)
    D = [[torch.linalg.norm(f[i] - f[j]) for j in range(n)] for i in range(n)]
    pair_terms = []
    for i, j in itertools.combinations(range(n), 2):
        if labels[i] != labels[j]:
            continue
        negative_terms = [torch.exp(margin - D[i][k]) for k in range(n) if labels[k] != labels[i]]
        negative_terms += [torch.exp(margin - D[j][l]) for l in range(n) if labels[l] != labels[j]]
        J = torch.log(torch.stack(negative_terms).sum()) + D[i][j]
        pair_terms.append(torch.clamp(J, min=0) ** 2)
    return torch.stack(pair_terms).sum() / (2 * len(pair_terms))


def generalised_loop(embeddings, labels, pos_margin, neg_margin):
    """Hermans et al. 2017's per-anchor form; an anchor lacking positives or negatives adds 0."""
    f = F.normalize(embeddings, dim=1)
    labels = labels.tolist()
    n = len(labels)
    total = torch.zeros((), dtype=embeddings.dtype)
    for i in range(n):
        pos = [torch.linalg.norm(f[i] - f[j]) - pos_margin for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [neg_margin - torch.linalg.norm(f[i] - f[k]) for k in range(n) if labels[k] != labels[i]]
        if pos and neg:
            total = total + torch.clamp(torch.logsumexp(torch.stack(pos), 0) + torch.logsumexp(torch.stack(neg), 0), min=0)
    return total / n


def pml_lifted(margin):
    # Mapping: PML's neg_margin is the paper's margin alpha; pos_margin=0 makes its
    # "remaining_pos_margin" exactly d_ij; LpDistance(p=2, power=1) on normalised embeddings
    # is d_ij = sqrt(2 - 2 S_ij); per positive pair it adds the negatives of both ends
    # (n_per_p: a2 == a1 or a2 == p), halves [J]_+^2, and MeanReducer averages over the
    # ordered positive pairs (a1, p) -- our 1 / (2 |P|) sum over ordered pairs.
    return losses.LiftedStructureLoss(
        neg_margin=margin,
        pos_margin=0,
        distance=distances.LpDistance(normalize_embeddings=True, p=2, power=1),
        reducer=reducers.MeanReducer(),
    )


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_value_and_gradient_match_pytorch_metric_learning(seed, labels, margin):
    embeddings, labels = batch(seed, labels)
    ours, ours_grad = value_and_grad(LiftedStructureLoss(margin=margin), embeddings, labels)
    theirs, theirs_grad = value_and_grad(pml_lifted(margin), embeddings, labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", [3.0, 10.0])
def test_scale_matches_pytorch_metric_learning_on_embeddings_of_that_norm(seed, labels, scale):
    # Mapping: our scale s is PML's LpDistance on unnormalised embeddings s f / |f|
    # (d_ij -> s d_ij), the margin unchanged; the gradient flows through the normalisation.
    embeddings, labels = batch(seed, labels)
    pml = losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0, distance=distances.LpDistance(normalize_embeddings=False),
                                     reducer=reducers.MeanReducer())
    ours, ours_grad = value_and_grad(LiftedStructureLoss(scale=scale), embeddings, labels)
    theirs, theirs_grad = value_and_grad(lambda e, y: pml(scale * F.normalize(e, dim=1), y), embeddings, labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_value_and_gradient_match_paper_loop(seed, labels):
    embeddings, labels = batch(seed, labels)
    ours, ours_grad = value_and_grad(LiftedStructureLoss(margin=1.0), embeddings, labels)
    loop, loop_grad = value_and_grad(lambda e, y: lifted_loop(e, y, 1.0), embeddings, labels)
    torch.testing.assert_close(ours, loop, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, loop_grad, rtol=0, atol=1e-10)


def random_similarity(seed, n, symmetric):
    generator = torch.Generator().manual_seed(seed)
    if symmetric:
        e = F.normalize(torch.randn(n, 8, generator=generator, dtype=torch.float64), dim=1)
        return e @ e.T
    # Every S_ij an independent variable (the contract's check): no symmetry assumed.
    return torch.rand(n, n, generator=generator, dtype=torch.float64) * 1.98 - 0.99


@pytest.mark.parametrize("loss_fn", [LiftedStructureLoss(), LiftedStructureLoss(margin=0.3), LiftedStructureLoss(scale=10.0),
                                     GeneralizedLiftedStructureLoss(),
                                     GeneralizedLiftedStructureLoss(pos_margin=0.4, neg_margin=1.2)])
@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_pair_weights_equal_minus_autograd(loss_fn, labels, symmetric):
    for seed in SEEDS:
        labels_t = torch.tensor(labels)
        S = random_similarity(seed, len(labels), symmetric).requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn.from_similarity(S, labels_t), S)
        W = loss_fn.pair_weights(S.detach(), labels_t)
        torch.testing.assert_close(W, -grad, rtol=0, atol=1e-10)
        positive = labels_t[:, None] == labels_t[None, :]
        positive.fill_diagonal_(False)
        negative = labels_t[:, None] != labels_t[None, :]
        assert (W[positive] >= 0).all() and (W[negative] <= 0).all()
        assert (W[~positive & ~negative] == 0).all()


@pytest.mark.parametrize("labels", LABEL_SETS_NO_SINGLETON)
@pytest.mark.parametrize("seed", SEEDS)
def test_generalised_matches_pytorch_metric_learning_without_singletons(seed, labels):
    embeddings, labels = batch(seed, labels)
    ours, ours_grad = value_and_grad(GeneralizedLiftedStructureLoss(0.3, 1.1), embeddings, labels)
    # Mapping: same margins; LpDistance on normalised embeddings; element mean over all anchors.
    pml = losses.GeneralizedLiftedStructureLoss(
        neg_margin=1.1, pos_margin=0.3, distance=distances.LpDistance(), reducer=reducers.MeanReducer()
    )
    theirs, theirs_grad = value_and_grad(pml, embeddings, labels)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_generalised_matches_loop_including_singletons(seed, labels):
    embeddings, labels = batch(seed, labels)
    ours, ours_grad = value_and_grad(GeneralizedLiftedStructureLoss(0.3, 1.1), embeddings, labels)
    loop, loop_grad = value_and_grad(lambda e, y: generalised_loop(e, y, 0.3, 1.1), embeddings, labels)
    torch.testing.assert_close(ours, loop, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, loop_grad, rtol=0, atol=1e-10)


def test_generalised_singleton_differs_from_pml_as_documented():
    # PML counts the empty positive log-sum-exp of a singleton anchor as 0, we as -inf
    # (the anchor adds nothing). The difference is exactly the singletons' negative terms.
    embeddings, labels = batch(5, LABEL_SETS[2])
    ours = GeneralizedLiftedStructureLoss(0.0, 1.0)(embeddings, labels)
    pml = losses.GeneralizedLiftedStructureLoss(neg_margin=1.0, pos_margin=0.0, reducer=reducers.MeanReducer())
    f = F.normalize(embeddings, dim=1)
    singleton_terms = sum(
        F.relu(torch.logsumexp(1.0 - torch.cdist(f[i : i + 1], f[labels != labels[i]])[0], 0))
        for i in range(len(labels)) if (labels == labels[i]).sum() == 1
    )
    torch.testing.assert_close(pml(embeddings, labels) - ours, singleton_terms / len(labels), rtol=0, atol=1e-10)


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
@pytest.mark.parametrize("loss_fn", [LiftedStructureLoss(), GeneralizedLiftedStructureLoss()])
@pytest.mark.parametrize("labels", [[3] * 6, list(range(6))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_batches_give_differentiable_zero(loss_fn, labels, dtype):
    # Single class: no negatives; all distinct: no positive pair. Nothing to learn from.
    embeddings, labels = batch(0, labels, dtype=dtype)
    embeddings.requires_grad_()
    value = loss_fn(embeddings, labels)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))
    assert (loss_fn.pair_weights(torch.eye(6, dtype=dtype), labels) == 0).all()


def antipodal_batch(dtype=torch.float64):
    # Two classes at opposite poles, two identical samples each: d_pos = 0, d_neg = 2.
    direction = torch.zeros(8, dtype=dtype)
    direction[0] = 1.0
    return torch.stack([direction, direction, -direction, -direction]), torch.tensor([0, 0, 1, 1])


def test_satisfied_batch_gives_zero_with_small_margin():
    # margin 0: J = log(4 e^{-2}) + 0 = log 4 - 2 < 0 for every pair, so the hinge is 0.
    embeddings, labels = antipodal_batch()
    embeddings.requires_grad_()
    value = LiftedStructureLoss(margin=0.0)(embeddings, labels)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(embeddings.grad).all()


def test_unit_sphere_floor_with_default_margin():
    # The module docstring's claim: with margin 1 even the ideal batch keeps J > 0. Here
    # |N_i| = |N_j| = 2 negatives at d = 2, so J = log(4 e^{1 - 2}) + d_pos = log 4 - 1 (+ ~1e-6).
    embeddings, labels = antipodal_batch()
    expected = (math.log(4.0) - 1.0) ** 2 / 2
    assert LiftedStructureLoss()(embeddings, labels).item() == pytest.approx(expected, abs=1e-5)


def test_a_scale_lets_the_ideal_batch_reach_zero_with_the_default_margin():
    # Against the floor above: at norm 4 the negatives sit at d = 8, so
    # J = log(4 e^{1 - 8}) + 0 = log 4 - 7 < 0 and the hinge is off for every pair.
    embeddings, labels = antipodal_batch()
    assert LiftedStructureLoss(scale=4.0)(embeddings, labels).item() == 0.0


@pytest.mark.parametrize("loss_fn", [LiftedStructureLoss(margin=200.0), LiftedStructureLoss(scale=100.0), GeneralizedLiftedStructureLoss(0.0, 200.0)])
def test_large_margin_stays_finite_in_float32(loss_fn):
    embeddings, labels = batch(0, LABEL_SETS[2], dtype=torch.float32)
    embeddings.requires_grad_()
    value = loss_fn(embeddings, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("loss_fn", [LiftedStructureLoss(), GeneralizedLiftedStructureLoss(0.2, 1.0)])
def test_float32_agrees_with_float64(loss_fn):
    embeddings, labels = batch(3, LABEL_SETS[1])
    value64 = loss_fn(embeddings, labels)
    value32 = loss_fn(embeddings.float(), labels)
    assert value32.dtype == torch.float32
    assert value32.item() == pytest.approx(value64.item(), rel=1e-5)


@pytest.mark.parametrize("margin", [-0.1, float("nan"), float("inf"), "1", True])
def test_bad_margin_raises(margin):
    with pytest.raises(ValueError, match="margin"):
        LiftedStructureLoss(margin=margin)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError, match="scale"):
        LiftedStructureLoss(scale=scale)


@pytest.mark.parametrize("kwargs", [{"pos_margin": float("nan")}, {"neg_margin": float("inf")}])
def test_generalised_bad_margins_raise(kwargs):
    with pytest.raises(ValueError, match="margin"):
        GeneralizedLiftedStructureLoss(**kwargs)


def test_registry_builds_the_paper_loss_only():
    assert get_loss("lifted_structure", margin=0.5).margin == 0.5
    assert GeneralizedLiftedStructureLoss not in LOSSES.values()
