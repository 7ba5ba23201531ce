"""MultiSimilarityLoss against the official per-anchor loop, PML, and the paper's weight formulas."""
import math

import pytest
import torch
from batches import pk_batch, unbalanced_batch, value_and_grad
from pytorch_metric_learning.losses import MultiSimilarityLoss as PMLMultiSimilarityLoss
from pytorch_metric_learning.miners import MultiSimilarityMiner
from pytorch_metric_learning.reducers import MeanReducer

from dmlutils.gpw import autograd_pair_weights
from dmlutils.losses import MultiSimilarityLoss, cosine_similarity_matrix, label_masks
from dmlutils.losses.reference import multi_similarity_loop

HPARAMS = [
    dict(alpha=2.0, beta=40.0, lam=0.5, epsilon=0.1),  # official code
    dict(alpha=2.0, beta=50.0, lam=1.0, epsilon=0.1),  # PML's reading of the paper
    dict(alpha=17.97, beta=75.66, lam=0.77, epsilon=0.39),  # Musgrave et al.'s tuned values
]




BATCHES = [
    pytest.param(lambda: pk_batch(8, 4, seed=1), id="pk8x4"),
    pytest.param(lambda: pk_batch(16, 5, dim=32, seed=2), id="pk16x5"),
    pytest.param(lambda: pk_batch(6, 5, seed=3, spread=0.6), id="tight-clusters"),
    pytest.param(lambda: unbalanced_batch([1, 2, 5, 3, 1, 7, 4], seed=4), id="unbalanced"),
]


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("hp", HPARAMS)
def test_value_and_gradient_equal_official_loop(make_batch, hp):
    embeddings, labels = make_batch()
    ours = value_and_grad(MultiSimilarityLoss(**hp), embeddings, labels)
    loop = value_and_grad(lambda e, y: multi_similarity_loop(e, y, **hp), embeddings, labels)
    torch.testing.assert_close(ours[0], loop[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], loop[1], rtol=1e-10, atol=1e-12)


def test_some_anchors_are_skipped_in_the_tight_batch():
    # The loop comparison above is only meaningful if mining really removes anchors.
    embeddings, labels = pk_batch(6, 5, seed=3, spread=0.6)
    S = cosine_similarity_matrix(embeddings)
    kept_positive, kept_negative = MultiSimilarityLoss().mined_pairs(S, labels)
    active = kept_positive.any(1)
    assert 0 < int(active.sum()) < len(labels)
    assert torch.equal(active, kept_negative.any(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pml_loss_with_miner_when_every_anchor_mines_both_sides(seed):
    # PML: MultiSimilarityLoss(alpha, beta, base=lam) on the pairs of MultiSimilarityMiner(epsilon),
    # CosineSimilarity, MeanReducer over the batch's elements = our sum over anchors / batch size.
    # PML keeps an anchor's positive term even when none of its negatives is mined (the official
    # code skips such an anchor), so the two agree when every anchor mines both sides — asserted.
    embeddings, labels = pk_batch(16, 5, dim=32, seed=seed, spread=2.0)
    hp = dict(alpha=2.0, beta=40.0, lam=0.5, epsilon=0.1)
    S = cosine_similarity_matrix(embeddings)
    kept_positive, kept_negative = MultiSimilarityLoss(**hp).mined_pairs(S, labels)
    assert bool(kept_positive.any(1).all() and kept_negative.any(1).all())
    pml_loss = PMLMultiSimilarityLoss(alpha=hp["alpha"], beta=hp["beta"], base=hp["lam"], reducer=MeanReducer())
    miner = MultiSimilarityMiner(epsilon=hp["epsilon"])
    ours = value_and_grad(MultiSimilarityLoss(**hp), embeddings, labels)
    pml = value_and_grad(lambda e, y: pml_loss(e, y, miner(e, y)), embeddings, labels)
    torch.testing.assert_close(ours[0], pml[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], pml[1], rtol=1e-5, atol=1e-5)


def test_without_mining_equals_pml_loss_without_miner():
    embeddings, labels = pk_batch(8, 4, seed=5)
    ours = MultiSimilarityLoss(alpha=2, beta=50, lam=0.5, mine_positives=False, mine_negatives=False)
    pml = PMLMultiSimilarityLoss(alpha=2, beta=50, base=0.5, reducer=MeanReducer())
    torch.testing.assert_close(ours(embeddings, labels), pml(embeddings, labels), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hp", HPARAMS)
def test_pair_weights_are_the_papers_w_plus_and_w_minus(hp):
    """w-_ij = 1 / (e^{beta(lam - S_ij)} + sum_{k in N_i} e^{beta(S_ik - S_ij)}), w+ likewise."""
    embeddings, labels = pk_batch(6, 4, seed=7, spread=1.5)
    loss = MultiSimilarityLoss(**hp)
    S = cosine_similarity_matrix(embeddings)
    kept_positive, kept_negative = loss.mined_pairs(S, labels)
    W = loss.pair_weights(S, labels) * len(labels)  # undo the 1/m of the batch mean
    a, b, lam = hp["alpha"], hp["beta"], hp["lam"]
    checked = 0
    for i in range(len(labels)):
        P = [k for k in range(len(labels)) if kept_positive[i, k]]
        N = [k for k in range(len(labels)) if kept_negative[i, k]]
        for j in range(len(labels)):
            s = float(S[i, j])
            if j in P:
                w = 1 / (math.exp(-a * (lam - s)) + sum(math.exp(-a * (float(S[i, k]) - s)) for k in P))
                assert float(W[i, j]) == pytest.approx(w, rel=1e-10)
            elif j in N:
                w = 1 / (math.exp(b * (lam - s)) + sum(math.exp(b * (float(S[i, k]) - s)) for k in N))
                assert float(W[i, j]) == pytest.approx(-w, rel=1e-10)
            else:
                assert float(W[i, j]) == 0.0
            checked += j in P or j in N
    assert checked > 0


@pytest.mark.parametrize(
    "switches",
    [
        dict(),
        dict(mine_positives=False),
        dict(mine_negatives=False),
        dict(mine_positives=False, mine_negatives=False),
        dict(weighting=False),
        dict(weighting=False, mine_positives=False, mine_negatives=False),
    ],
)
def test_pair_weights_equal_autograd_for_every_ablation(switches):
    embeddings, labels = pk_batch(8, 4, seed=8, spread=1.5)
    loss = MultiSimilarityLoss(**switches)
    S = cosine_similarity_matrix(embeddings)
    torch.testing.assert_close(loss.pair_weights(S, labels), autograd_pair_weights(loss, S, labels), rtol=0, atol=1e-12)


def test_no_mining_keeps_every_pair_like_an_infinite_margin():
    embeddings, labels = pk_batch(8, 4, seed=9, spread=0.5)
    no_mining = MultiSimilarityLoss(mine_positives=False, mine_negatives=False)
    torch.testing.assert_close(
        no_mining(embeddings, labels), multi_similarity_loop(embeddings, labels, epsilon=1e9), rtol=1e-12, atol=0
    )
    S = cosine_similarity_matrix(embeddings)
    kept_positive, kept_negative = no_mining.mined_pairs(S, labels)
    positive, negative = label_masks(labels)
    assert torch.equal(kept_positive, positive) and torch.equal(kept_negative, negative)


def test_without_weighting_each_pair_gets_its_binomial_deviance_term():
    embeddings, labels = pk_batch(5, 4, seed=10, spread=1.5)
    loss = MultiSimilarityLoss(weighting=False)
    S = cosine_similarity_matrix(embeddings)
    kept_positive, kept_negative = loss.mined_pairs(S, labels)
    expected = 0.0
    for i, j in kept_positive.nonzero().tolist():
        expected += math.log1p(math.exp(-2.0 * (float(S[i, j]) - 0.5))) / 2.0
    for i, j in kept_negative.nonzero().tolist():
        expected += math.log1p(math.exp(40.0 * (float(S[i, j]) - 0.5))) / 40.0
    assert float(loss(embeddings, labels)) == pytest.approx(expected / len(labels), rel=1e-12)


def test_without_weighting_exact_where_torchs_softplus_turns_linear():
    # beta (S - lam) = 200 * 0.125 = 25 > 20, where F.softplus is linear: value and weight
    # must still be log(1 + e^25) and sigmoid(25) (found by tests/test_loss_properties.py).
    S = torch.tensor([[1.0, 0.6, 0.625], [0.6, 1.0, 0.625], [0.625, 0.625, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    loss = MultiSimilarityLoss(beta=200.0, weighting=False, mine_positives=False, mine_negatives=False)
    expected = 2 * (math.log1p(math.exp(-2.0 * 0.1)) / 2.0 + math.log1p(math.exp(25.0)) / 200.0) / 3
    assert float(loss.from_similarity(S, labels)) == pytest.approx(expected, rel=1e-14, abs=0)
    W = loss.pair_weights(S, labels)
    torch.testing.assert_close(W, autograd_pair_weights(loss, S, labels), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_at_beta_200_with_similarities_near_one(dtype):
    # All embeddings near one direction: every S is within ~1e-2 of 1, so beta (S - lam) ~ 200
    # exp overflows float32 (e^100 > 3.4e38 is false, but e^{200*0.5}... sums of them are near the edge;
    # with beta=200 and lam=0 the naive exp(200) overflows): the loss and gradient must stay finite.
    g = torch.Generator().manual_seed(11)
    base = torch.randn(1, 64, generator=g, dtype=dtype)
    embeddings = base + 0.05 * torch.randn(40, 64, generator=g, dtype=dtype)
    labels = torch.arange(10).repeat_interleave(4)
    loss = MultiSimilarityLoss(alpha=2.0, beta=200.0, lam=0.0, epsilon=0.1)
    value, grad = value_and_grad(loss, embeddings, labels)
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(grad).all()
    naive = value_and_grad(lambda e, y: multi_similarity_loop(e, y, alpha=2.0, beta=200.0, lam=0.0), embeddings.float(), labels)
    assert not torch.isfinite(naive[0])  # the official formula overflows in float32 here
    if dtype == torch.float64:  # where the naive loop is still finite, we agree with it
        reference = value_and_grad(lambda e, y: multi_similarity_loop(e, y, alpha=2.0, beta=200.0, lam=0.0), embeddings, labels)
        torch.testing.assert_close(value, reference[0], rtol=1e-10, atol=0)


def test_exact_duplicates_are_not_positives_as_in_the_official_code():
    # S >= 1 - 1e-5 is taken to be the anchor itself; an exact duplicate is dropped, like the loop does.
    embeddings, labels = pk_batch(4, 3, seed=12)
    embeddings[1] = embeddings[0]
    torch.testing.assert_close(MultiSimilarityLoss()(embeddings, labels), multi_similarity_loop(embeddings, labels))


def test_hyperparameter_validation():
    with pytest.raises(ValueError, match="alpha and beta must be positive"):
        MultiSimilarityLoss(alpha=0.0)


@pytest.mark.parametrize(
    "switches", [dict(), dict(mine_positives=False, mine_negatives=False), dict(weighting=False)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_path_backward_from_pair_weights_equals_autograd(switches, dtype):
    # forward() back-propagates the closed-form W (GPW) instead of building an autograd graph;
    # it must give what autograd gives through the plain from_similarity path.
    embeddings, labels = pk_batch(8, 5, dim=32, seed=13, spread=1.5, dtype=dtype)
    embeddings = embeddings * torch.linspace(0.5, 3.0, len(labels), dtype=dtype)[:, None]  # unequal norms
    loss = MultiSimilarityLoss(**switches)
    fast = value_and_grad(loss, embeddings, labels)
    plain = value_and_grad(lambda e, y: loss.from_similarity(cosine_similarity_matrix(e), y), embeddings, labels)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[0], plain[0], **tolerance)
    torch.testing.assert_close(fast[1], plain[1], **tolerance)


def _mining_summary_by_loop(S, labels, alpha, beta, lam, epsilon):
    """The shares written out per anchor from the paper's mining rule, and the weights of MS
    without mining from autograd: an oracle independent of `multi_similarity_mining`."""
    S = S.clone().requires_grad_(True)
    MultiSimilarityLoss(alpha, beta, lam, epsilon, mine_positives=False, mine_negatives=False).from_similarity(S, labels).backward()
    W = -S.grad  # w+ on positives, -w- on negatives (over the batch size)
    counts = dict.fromkeys(("pos_all", "pos_kept", "neg_all", "neg_kept"), 0)
    mass = dict.fromkeys(("pos_all", "pos_dropped", "neg_all", "neg_dropped"), 0.0)
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != i and labels[j] == labels[i] and S[i, j] < 1 - 1e-5]
        neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        kept_neg = [j for j in neg if S[i, j] + epsilon > min(S[i, k] for k in pos)]
        kept_pos = [j for j in pos if S[i, j] - epsilon < max(S[i, k] for k in neg)]
        if not kept_pos or not kept_neg:
            kept_pos, kept_neg = [], []  # the anchor is skipped
        counts["pos_all"] += len(pos); counts["pos_kept"] += len(kept_pos)
        counts["neg_all"] += len(neg); counts["neg_kept"] += len(kept_neg)
        for j in pos:
            mass["pos_all"] += float(W[i, j]); mass["pos_dropped"] += float(W[i, j]) * (j not in kept_pos)
        for j in neg:
            mass["neg_all"] -= float(W[i, j]); mass["neg_dropped"] -= float(W[i, j]) * (j not in kept_neg)
    return {"positive_kept": counts["pos_kept"] / counts["pos_all"], "negative_kept": counts["neg_kept"] / counts["neg_all"],
            "positive_weight_dropped": mass["pos_dropped"] / mass["pos_all"],
            "negative_weight_dropped": mass["neg_dropped"] / mass["neg_all"]}


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("hp", HPARAMS)
def test_mining_summary_equals_the_per_anchor_rule_and_autograd_weights(make_batch, hp):
    from dmlutils.losses import mining_summary

    embeddings, labels = make_batch()
    S = cosine_similarity_matrix(embeddings)
    ours = mining_summary(MultiSimilarityLoss(**hp), S, labels)
    expected = _mining_summary_by_loop(S.detach(), labels, **hp)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0 < ours["negative_kept"] < 1  # these batches are mined: the check is not of a trivial case


def test_mining_summary_of_a_loss_without_mining_drops_nothing():
    from dmlutils.losses import mining_summary

    embeddings, labels = pk_batch(8, 4, seed=1)
    summary = mining_summary(MultiSimilarityLoss(mine_positives=False, mine_negatives=False), cosine_similarity_matrix(embeddings), labels)
    assert summary == {"positive_kept": 1.0, "negative_kept": 1.0, "positive_weight_dropped": 0.0, "negative_weight_dropped": 0.0}
