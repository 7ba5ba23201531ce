"""RankedListLoss against a float64 loop over the paper's formula (value and gradient,
weights detached or not) and pytorch-metric-learning 2.9.0's RankedListLoss; closed-form
pair weights against autograd."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from batches import value_and_grad
from pytorch_metric_learning import distances, losses, reducers

from dmlutils.losses.ranked_list import RankedListLoss
from dmlutils.losses.registry import get_loss, hparams_of

LABEL_SETS = [
    [c for c in range(4) for _ in range(3)],
    [c for _ in range(4) for c in range(6)],
    [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5, 5],  # unbalanced, singletons 3 and 4
    [7, 3, 5, 3, 3, 9, 7, 9, 9, 1, 1, 2, 1, 1],
]
SEEDS = [0, 1, 2]
HPARAMS = [
    dict(),  # the official CUB setting: margin 0.2, alpha 1.4, lam 1, Tn 10, Tp 0
    dict(margin=0.4, alpha=1.3, lam=0.5, Tn=3.0, Tp=2.0),
    dict(margin=0.1, alpha=1.45, lam=2.0, Tn=0.0, Tp=0.5),  # Tn = 0: plain mean over N*_i
]
# d between random 16-d unit vectors concentrates near sqrt(2) = 1.414, right at the
# default thresholds 1.2 / 1.4; class-clustered embeddings spread it over the interesting range.
SPREAD = 1.2


def batch(seed, labels, dim=16, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    centres = torch.randn(int(labels.max()) + 1, dim, generator=generator, dtype=dtype)
    noise = torch.randn(len(labels), dim, generator=generator, dtype=dtype)
    return centres[labels] + SPREAD * noise, labels




def rll_loop(embeddings, labels, margin=0.2, alpha=1.4, lam=1.0, Tn=10.0, Tp=0.0,
             detach_weights=True, weight_sum_offset=0.0):
    """Wang et al. 2019, anchor by anchor: L_P over P*_i = {d > alpha - margin}, L_N over
    N*_i = {d < alpha}, weights w+ = e^{Tp (d - (alpha - margin))}, w- = e^{Tn (alpha - d)}
    normalised by their sum (+ weight_sum_offset, 0 in the paper; PML's m * 1e-5);
    L = 1/m sum_i (L_P + lam L_N). Direct exponentials: fine in float64 at these T."""
    f = F.normalize(embeddings, dim=1)
    labels = labels.tolist()
    m = len(labels)
    total = torch.zeros((), dtype=embeddings.dtype)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        d = dict(zip(others, torch.linalg.norm(f[i] - f[others], dim=1)))  # d_ij = |f_i - f_j|
        positives = [d[j] for j in others if labels[j] == labels[i] and d[j] > alpha - margin]
        negatives = [d[j] for j in others if labels[j] != labels[i] and d[j] < alpha]
        for distances_, sign, target, T, scale in [
            (positives, 1.0, alpha - margin, Tp, 1.0),
            (negatives, -1.0, alpha, Tn, lam),
        ]:
            if not distances_:
                continue
            violations = sign * (torch.stack(distances_) - target)
            weights = torch.exp(T * violations)
            if detach_weights:
                weights = weights.detach()
            total = total + scale * (weights * violations).sum() / (weights.sum() + weight_sum_offset)
    return total / m


def pml_rll(margin=0.2, alpha=1.4, lam=1.0, Tn=10.0, Tp=0.0):
    # Mapping: PML's margin, alpha, Tn, Tp are ours; LpDistance() normalises and takes
    # p=2, power=1, i.e. d_ij = sqrt(2 - 2 S_ij); MeanReducer averages the m per-anchor
    # losses (1 - imbalance) L_P + imbalance L_N. With imbalance = lam / (1 + lam) that is
    # (L_P + lam L_N) / (1 + lam), so ours = (1 + lam) * PML (lam = 1: imbalance 0.5,
    # ours = 2 * PML) -- up to PML's `torch.sum(w + 1e-5, dim=1)`, which adds m * 1e-5
    # to every weight sum. PML also differentiates through its weights.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PML warns that T > 5 "may lead to overflow"
        return losses.RankedListLoss(
            margin=margin, Tn=Tn, imbalance=lam / (1 + lam), alpha=alpha, Tp=Tp,
            distance=distances.LpDistance(), reducer=reducers.MeanReducer(),
        )


@pytest.mark.parametrize("detach_weights", [True, False])
@pytest.mark.parametrize("hparams", HPARAMS)
@pytest.mark.parametrize("labels", LABEL_SETS)
def test_value_and_gradient_match_paper_loop(labels, hparams, detach_weights):
    for seed in SEEDS:
        embeddings, labels_t = batch(seed, labels)
        loss_fn = RankedListLoss(detach_weights=detach_weights, **hparams)
        ours, ours_grad = value_and_grad(loss_fn, embeddings, labels_t)
        loop, loop_grad = value_and_grad(
            lambda e, y: rll_loop(e, y, detach_weights=detach_weights, **hparams), embeddings, labels_t
        )
        assert loop > 0
        torch.testing.assert_close(ours, loop, rtol=0, atol=1e-10)
        torch.testing.assert_close(ours_grad, loop_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("hparams", HPARAMS)
@pytest.mark.parametrize("labels", LABEL_SETS)
def test_loop_with_pml_weight_offset_is_exactly_pml(labels, hparams):
    # The corrected expectation: the paper loop with PML's m * 1e-5 added to each weight
    # sum and weights differentiated equals PML to rounding, in value and gradient. With
    # the test above (ours == loop without the offset), this pins the difference between
    # ours and PML to that 1e-5 term and nothing else.
    for seed in SEEDS:
        embeddings, labels_t = batch(seed, labels)
        lam = hparams.get("lam", 1.0)
        offset = len(labels) * 1e-5
        loop, loop_grad = value_and_grad(
            lambda e, y: rll_loop(e, y, detach_weights=False, weight_sum_offset=offset, **hparams),
            embeddings, labels_t,
        )
        theirs, theirs_grad = value_and_grad(pml_rll(**hparams), embeddings, labels_t)
        torch.testing.assert_close(loop, (1 + lam) * theirs, rtol=0, atol=1e-10)
        torch.testing.assert_close(loop_grad, (1 + lam) * theirs_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("seed", SEEDS)
def test_value_within_the_bound_of_pml_weight_offset(seed, labels):
    # Direct comparison with the official-setting PML, lam = 1, ours = 2 PML + the offset's
    # share. Per anchor and set, ours has sum w v / s and PML sum w v / (s + c), c = m 1e-5,
    # so ours - 2 PML = 1/m sum_i [L_P(i) c / (s+_i + c) + L_N(i) c / (s-_i + c)] >= 0.
    # Each weight in a non-empty set is e^{T * violation} >= 1 (T >= 0, violation > 0), so
    # s >= 1 and the gap is at most c * ours: relative error <= m * 1e-5.
    embeddings, labels_t = batch(seed, labels)
    ours = RankedListLoss(detach_weights=False)(embeddings, labels_t)
    theirs = pml_rll()(embeddings, labels_t)
    gap = ours - 2 * theirs
    bound = len(labels) * 1e-5 * ours
    assert 0 < gap <= bound, (gap.item(), bound.item())


def random_similarity(seed, n, symmetric):
    generator = torch.Generator().manual_seed(seed)
    if symmetric:
        e = F.normalize(torch.randn(n, 3, generator=generator, dtype=torch.float64), dim=1)
        return e @ e.T  # 3-d: distances spread over (0, 2)
    return torch.rand(n, n, generator=generator, dtype=torch.float64) * 1.98 - 0.99  # independent S_ij


@pytest.mark.parametrize("detach_weights", [True, False])
@pytest.mark.parametrize("hparams", HPARAMS)
@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_pair_weights_equal_minus_autograd(labels, hparams, detach_weights, symmetric):
    labels_t = torch.tensor(labels)
    loss_fn = RankedListLoss(detach_weights=detach_weights, **hparams)
    for seed in SEEDS:
        S = random_similarity(seed, len(labels), symmetric).requires_grad_()
        (grad,) = torch.autograd.grad(loss_fn.from_similarity(S, labels_t), S)
        W = loss_fn.pair_weights(S.detach(), labels_t)
        assert grad.abs().sum() > 0
        torch.testing.assert_close(W, -grad, rtol=0, atol=1e-10)
        if detach_weights:
            same = labels_t[:, None] == labels_t[None, :]
            assert (W[same] >= 0).all() and (W[~same] <= 0).all()


def test_undetached_weights_can_pull_a_negative_closer():
    # The module docstring's claim. Anchor 0 with two negatives at d = 0.5 (violation 0.9)
    # and d = 1.39 (violation 0.01), Tn = 10: with weights differentiated, the slight
    # violator's factor is 1 + 10 (0.01 - L_N), L_N ~ 0.9, i.e. < 0: W > 0 (a pull).
    d = torch.tensor([[0.0, 0.5, 1.39], [0.5, 0.0, 1.0], [1.39, 1.0, 0.0]], dtype=torch.float64)
    S = 1 - d**2 / 2
    labels = torch.tensor([0, 1, 2])
    assert RankedListLoss(detach_weights=False).pair_weights(S, labels)[0, 2] > 0
    assert RankedListLoss(detach_weights=True).pair_weights(S, labels)[0, 2] < 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_when_every_constraint_is_met(dtype):
    # Classes orthogonal (d_neg = sqrt 2 > 1.4), each collapsed to a point (d_pos = 0 < 1.2).
    labels = torch.arange(4).repeat_interleave(3)
    embeddings = torch.eye(16, dtype=dtype)[labels].requires_grad_()
    value = RankedListLoss()(embeddings, labels)
    value.backward()
    assert value.item() == 0.0 and value.requires_grad
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


# The value of a batch without positive pairs; its warning is tested in test_losses_contract.py.
@pytest.mark.filterwarnings("ignore::dmlutils.losses.NoPositivePairWarning")
@pytest.mark.parametrize("labels", [[3] * 6, list(range(6))], ids=["single-class", "all-distinct"])
@pytest.mark.parametrize("detach_weights", [True, False])
def test_one_sided_batches_still_learn_and_match_loop(labels, detach_weights):
    # One class: only L_P; all distinct: only L_N. Both stand alone in RLL.
    embeddings, labels_t = batch(4, labels)
    ours, ours_grad = value_and_grad(RankedListLoss(detach_weights=detach_weights), embeddings, labels_t)
    loop, loop_grad = value_and_grad(
        lambda e, y: rll_loop(e, y, detach_weights=detach_weights), embeddings, labels_t
    )
    assert ours > 0 and torch.isfinite(ours_grad).all()
    torch.testing.assert_close(ours, loop, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_grad, loop_grad, rtol=0, atol=1e-10)


def test_large_temperature_is_hardest_negative_mining_and_stays_finite():
    # T -> infinity makes L_N(i) the largest violation alpha - min_{N*_i} d (the paper's
    # limit). Tn = 1e4 would overflow a direct exp even in float64 (e^{14000}).
    embeddings, labels = batch(1, LABEL_SETS[2])
    for dtype in [torch.float32, torch.float64]:
        e = embeddings.to(dtype).requires_grad_()
        value = RankedListLoss(lam=1.0, Tn=1e4, detach_weights=False)(e, labels)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(e.grad).all()
    f = F.normalize(embeddings, dim=1)
    d = torch.cdist(f, f)
    same = labels[:, None] == labels[None, :]
    hardest = d.masked_fill(same, float("inf")).amin(dim=1)
    negative_part = (1.4 - hardest).clamp_min(0).mean()
    positive_part = RankedListLoss(lam=0.0)(embeddings, labels)
    value = RankedListLoss(Tn=1e4)(embeddings, labels)
    torch.testing.assert_close(value - positive_part, negative_part, rtol=0, atol=1e-6)


def test_float32_agrees_with_float64():
    embeddings, labels = batch(3, LABEL_SETS[1])
    value32 = RankedListLoss()(embeddings.float(), labels)
    assert value32.dtype == torch.float32
    assert value32.item() == pytest.approx(RankedListLoss()(embeddings, labels).item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(margin=-0.1), "margin"),
        (dict(margin=1.5, alpha=1.4), "margin"),
        (dict(lam=-1.0), "lam"),
        (dict(Tn=-1.0), "Tn"),
        (dict(Tp=float("nan")), "Tp"),
        (dict(alpha=float("inf")), "alpha"),
        (dict(detach_weights="yes"), "detach_weights"),
    ],
)
def test_bad_hyper_parameters_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RankedListLoss(**kwargs)


def test_registry_defaults_are_the_official_cub_setting():
    assert hparams_of(get_loss("ranked_list")) == dict(
        margin=0.2, alpha=1.4, lam=1.0, Tn=10.0, Tp=0.0, detach_weights=True
    )
