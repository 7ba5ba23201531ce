"""Cross-batch memory: what the loss equals (square losses, per-anchor loops, pytorch-metric-learning),
the FIFO memory, no gradient into the memory, train/eval, state dict, bad input."""
import io

import pytest
import torch
from batches import pk_batch, unbalanced_batch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses import ContrastiveLoss as PMLContrastiveLoss
from pytorch_metric_learning.losses import CrossBatchMemory as PMLCrossBatchMemory
from pytorch_metric_learning.losses import MultiSimilarityLoss as PMLMultiSimilarityLoss
from pytorch_metric_learning.reducers import MeanReducer

from dmlutils.losses.base import cosine_similarity_matrix
from dmlutils.losses.contrastive import ContrastiveLoss
from dmlutils.losses.multi_similarity import MultiSimilarityLoss
from dmlutils.losses.triplet import TripletLoss
from dmlutils.xbm import (
    CrossBatchMemory,
    CrossBatchMemoryLoss,
    with_cross_batch_memory,
)

MS_SETTINGS = [
    pytest.param(dict(), id="ms-default"),
    pytest.param(dict(alpha=2.0, beta=50.0, lam=0.5, epsilon=0.2), id="ms-beta50-eps0.2"),
    pytest.param(dict(mine_positives=False), id="ms-no-positive-mining"),
    pytest.param(dict(mine_negatives=False), id="ms-no-negative-mining"),
    pytest.param(dict(mine_positives=False, mine_negatives=False), id="ms-no-mining"),
    pytest.param(dict(weighting=False), id="ms-no-weighting"),
]

BATCHES = [
    pytest.param(lambda seed: pk_batch(4, 3, seed=seed), id="pk4x3"),
    pytest.param(lambda seed: pk_batch(6, 4, dim=8, seed=seed, spread=0.6), id="pk6x4"),
    pytest.param(lambda seed: unbalanced_batch([1, 2, 4, 3, 1, 5], seed=seed), id="unbalanced-with-singletons"),
]


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def value_and_grad(fn, embeddings, labels):
    e = leaf(embeddings)
    value = fn(e, labels)
    (grad,) = torch.autograd.grad(value, e)
    return value.detach(), grad


# --- oracles -------------------------------------------------------------------------------


def ms_anchor_loop(batch, batch_labels, memory, memory_labels, alpha=2.0, beta=40.0, lam=0.5, epsilon=0.1):
    """Mean over the current batch's anchors of the official per-anchor MS term, references
    = [batch; memory]; written like dmlutils.losses.reference (positives: same label and
    S < 1 - 1e-5, which also drops the anchor itself)."""
    references = torch.cat([batch, memory.detach()])
    reference_labels = torch.cat([batch_labels, memory_labels])
    normalised = references / references.norm(dim=1, keepdim=True)
    S = normalised[: len(batch)] @ normalised.T
    total = (S * 0.0).sum()
    for i in range(len(batch)):
        same = reference_labels == batch_labels[i]
        positives = S[i][same]
        positives = positives[positives < 1 - 1e-5]
        negatives = S[i][~same]
        if len(positives) == 0 or len(negatives) == 0:
            continue
        hard_negatives = negatives[negatives + epsilon > positives.min()]
        hard_positives = positives[positives - epsilon < negatives.max()]
        if len(hard_negatives) == 0 or len(hard_positives) == 0:
            continue
        total = total + torch.log(1 + torch.exp(-alpha * (hard_positives - lam)).sum()) / alpha
        total = total + torch.log(1 + torch.exp(beta * (hard_negatives - lam)).sum()) / beta
    return total / len(batch)


def contrastive_pair_loop(batch, batch_labels, memory, memory_labels, pos_margin=1.0, neg_margin=0.5):
    """Mean over (anchor in batch, reference != anchor) positive pairs + mean over negative pairs."""
    references = torch.cat([batch, memory.detach()])
    reference_labels = torch.cat([batch_labels, memory_labels]).tolist()
    normalised = references / references.norm(dim=1, keepdim=True)
    positive_losses, negative_losses = [], []
    for i in range(len(batch)):
        for j in range(len(references)):
            s = normalised[i] @ normalised[j]
            if reference_labels[j] == reference_labels[i] and j != i:
                positive_losses.append(torch.relu(pos_margin - s))
            elif reference_labels[j] != reference_labels[i]:
                negative_losses.append(torch.relu(s - neg_margin))
    mean = lambda xs: torch.stack(xs).mean() if xs else (batch * 0.0).sum()  # noqa: E731
    return mean(positive_losses) + mean(negative_losses)


def two_batches(make_batch, seed):
    """Batch A (to be remembered) and batch B (current), sharing some classes."""
    a, a_labels = make_batch(seed)
    b, b_labels = make_batch(seed + 100)
    return a, a_labels, b, b_labels


# --- empty memory: the plain loss ---------------------------------------------------------------


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("settings", MS_SETTINGS)
def test_ms_with_empty_memory_equals_plain_loss(make_batch, settings):
    for seed in (0, 1, 2):
        embeddings, labels = make_batch(seed)
        plain = MultiSimilarityLoss(**settings)
        xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(**settings), memory_size=50)
        expected = value_and_grad(plain, embeddings, labels)
        got = value_and_grad(xbm, embeddings, labels)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-14)
    assert expected[0] > 0


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize("margins", [dict(), dict(pos_margin=0.8, neg_margin=0.3)])
def test_contrastive_with_empty_memory_equals_plain_loss(make_batch, margins):
    embeddings, labels = make_batch(5)
    expected = value_and_grad(ContrastiveLoss(**margins), embeddings, labels)
    got = value_and_grad(CrossBatchMemoryLoss(ContrastiveLoss(**margins), 50), embeddings, labels)
    assert expected[0] > 0
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-14)


# --- one batch in memory: the current batch's anchor rows over [B; A] ---------------------------


@pytest.mark.parametrize("make_batch", BATCHES)
@pytest.mark.parametrize(
    "hparams", [dict(), dict(alpha=2.0, beta=50.0, lam=0.5, epsilon=0.2), dict(alpha=1.0, beta=10.0, lam=0.3, epsilon=0.05)]
)
def test_ms_after_one_batch_equals_anchor_loop_over_batch_and_memory(make_batch, hparams):
    for seed in (0, 3):
        a, a_labels, b, b_labels = two_batches(make_batch, seed)
        xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(**hparams), memory_size=100)
        xbm(a, a_labels)  # remembers A
        got = value_and_grad(xbm, b, b_labels)
        expected = value_and_grad(lambda e, y: ms_anchor_loop(e, y, a, a_labels, **hparams), b, b_labels)
        assert expected[0] > 0
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("settings", MS_SETTINGS)
def test_ms_rectangular_gradient_is_the_square_losss_anchor_rows(settings):
    """-dL_xbm/dS over the B x (B + m) similarities equals the first B rows of the unmodified
    MultiSimilarityLoss.pair_weights on [B; A], rescaled from 1/(B + m) to 1/B."""
    a, a_labels, b, b_labels = two_batches(BATCHES[1].values[0], 7)
    loss = MultiSimilarityLoss(**settings)
    everything, labels = torch.cat([b, a]), torch.cat([b_labels, a_labels])
    S_full = cosine_similarity_matrix(everything)
    S = leaf(S_full[: len(b)])
    value = loss.from_similarity(S, b_labels, labels)
    (grad,) = torch.autograd.grad(value, S)
    rows = loss.pair_weights(S_full, labels)[: len(b)] * len(everything) / len(b)
    assert rows.abs().sum() > 0
    torch.testing.assert_close(-grad, rows, rtol=1e-10, atol=1e-13)
    # and the values: the square loss's sum over all rows = ours over B rows + the same
    # formula over A's rows (anchors A against references [A; B], the same pairs re-ordered)
    rows_of_a = loss.from_similarity(S_full[len(b) :].roll(-len(b), dims=1), a_labels, torch.cat([a_labels, b_labels]))
    total = value * len(b) + rows_of_a * len(a)
    torch.testing.assert_close(total / len(everything), loss.from_similarity(S_full, labels), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make_batch", BATCHES)
def test_contrastive_after_one_batch_equals_pair_loop(make_batch):
    a, a_labels, b, b_labels = two_batches(make_batch, 11)
    xbm = CrossBatchMemoryLoss(ContrastiveLoss(0.8, 0.3), memory_size=100)
    xbm(a, a_labels)
    got = value_and_grad(xbm, b, b_labels)
    expected = value_and_grad(lambda e, y: contrastive_pair_loop(e, y, a, a_labels, 0.8, 0.3), b, b_labels)
    assert expected[0] > 0
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-12)


# --- a stream of batches against pytorch-metric-learning's CrossBatchMemory ---------------------


def pml_stream_values(pml_loss, batches, memory_size, batch_size, dim):
    # PML pushes the current batch (detached) into its queue *before* computing, then compares
    # the batch with the queue minus each anchor's own copy. Our memory holds only past batches
    # and the current one is added as references, so our memory_size M is PML's M + B.
    pml = PMLCrossBatchMemory(pml_loss, embedding_size=dim, memory_size=memory_size + batch_size)
    return [float(pml(e, y)) for e, y in batches]


@pytest.mark.parametrize(
    "ours, theirs",
    [
        pytest.param(
            lambda: ContrastiveLoss(0.8, 0.3),
            # mapping as in test_loss_contrastive.py: cosine similarity, margins as given, MeanReducer
            lambda: PMLContrastiveLoss(pos_margin=0.8, neg_margin=0.3, distance=CosineSimilarity(), reducer=MeanReducer()),
            id="contrastive",
        ),
        pytest.param(
            # PML's MS loss has no mining (its miner differs from the official rule); PML's base is
            # our lam; "element" reduction with MeanReducer = sum over anchors / B, ours too when
            # every anchor has a positive and a negative (true for P x K batches, K >= 2).
            lambda: MultiSimilarityLoss(alpha=2.0, beta=40.0, lam=0.5, mine_positives=False, mine_negatives=False),
            lambda: PMLMultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5, reducer=MeanReducer()),
            id="multi_similarity-no-mining",
        ),
    ],
)
def test_stream_of_batches_equals_pml_cross_batch_memory(ours, theirs):
    p, k, dim, memory_size = 4, 3, 16, 24  # memory = two past batches
    batches = [pk_batch(p, k, dim=dim, seed=seed, spread=1.5) for seed in range(6)]
    # shuffle the class ids between batches so the memory mixes same and other classes
    batches = [(e, (y + 2 * i) % 7) for i, (e, y) in enumerate(batches)]
    xbm = CrossBatchMemoryLoss(ours(), memory_size)
    got = [float(xbm(e, y)) for e, y in batches]
    expected = pml_stream_values(theirs(), batches, memory_size, p * k, dim)
    assert len(xbm.memory) == memory_size
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # the memory matters: without it the later values differ
    plain = ours()
    assert [float(plain(e, y)) for e, y in batches[2:]] != pytest.approx(got[2:], rel=1e-6)


# --- the memory ----------------------------------------------------------------------------------


def numbered_batch(start, n, dim=3):
    """n rows whose label is their serial number: the memory's order can be read off the labels."""
    labels = torch.arange(start, start + n)
    return torch.randn(n, dim, dtype=torch.float64), labels


def test_memory_is_fifo_with_fixed_size():
    memory = CrossBatchMemory(10)
    assert len(memory) == 0
    pushed = []
    for step in range(5):
        e, y = numbered_batch(4 * step, 4)
        memory.enqueue(e, y)
        pushed = y.tolist() + pushed  # newest first
        assert memory.labels.tolist() == pushed[:10]
        assert len(memory) == min(4 * (step + 1), 10)
        stored = dict(zip(memory.labels.tolist(), memory.embeddings))
        for label, row in zip(y.tolist(), e):
            assert torch.equal(stored[label], row)
    big, big_labels = numbered_batch(100, 13)
    memory.enqueue(big, big_labels)
    assert memory.labels.tolist() == list(range(100, 110))


def test_loss_pushes_after_computing_and_keeps_memory_size():
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), memory_size=20)
    for step in range(4):
        e, y = pk_batch(3, 3, seed=step)
        before = len(xbm.memory)
        xbm(e, y)
        assert len(xbm.memory) == min(before + 9, 20)
        assert torch.equal(xbm.memory.labels[:9], y)


def test_memory_carries_no_gradient():
    a, a_labels = pk_batch(4, 3, seed=0)
    b, b_labels = pk_batch(4, 3, seed=1)
    a, b = leaf(a), leaf(b)
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(epsilon=1.0), memory_size=30)
    xbm(a, a_labels)
    assert not xbm.memory.embeddings.requires_grad and xbm.memory.embeddings.grad_fn is None
    loss = xbm(b, b_labels)
    loss.backward()
    assert a.grad is None  # nothing reached the remembered batch
    assert b.grad is not None and b.grad.abs().sum() > 0
    # the memory is a copy: changing the caller's tensor later does not change it
    stored = xbm.memory.embeddings.clone()
    with torch.no_grad():
        b.mul_(-1.0)
    assert torch.equal(xbm.memory.embeddings, stored)


def test_eval_mode_and_disabled_memory_do_not_push():
    e, y = pk_batch(4, 3, seed=0)
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), memory_size=30).eval()
    xbm(e, y)
    assert len(xbm.memory) == 0
    xbm.train()
    xbm.enabled = False
    f, z = pk_batch(4, 3, seed=1)
    assert float(xbm(f, z)) == float(MultiSimilarityLoss()(f, z))
    assert len(xbm.memory) == 0
    xbm.enabled = True
    xbm(e, y)
    assert len(xbm.memory) == 12


def test_state_dict_round_trip_restores_the_memory():
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), memory_size=20)
    for seed in range(3):
        xbm(*pk_batch(4, 3, seed=seed))
    buffer = io.BytesIO()
    torch.save(xbm.state_dict(), buffer)
    buffer.seek(0)
    restored = CrossBatchMemoryLoss(MultiSimilarityLoss(), memory_size=20)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.memory.labels, xbm.memory.labels)
    nxt = pk_batch(4, 3, seed=9)
    assert float(restored(*nxt)) == float(xbm(*nxt))
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemoryLoss(MultiSimilarityLoss(), memory_size=10).load_state_dict(xbm.state_dict())


def test_float32_memory_follows_the_batch_dtype():
    e, y = pk_batch(4, 3, seed=0, dtype=torch.float32)
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), memory_size=30)
    xbm(e, y)
    f, z = pk_batch(4, 3, seed=1, dtype=torch.float64)
    value = xbm(f, z)
    assert value.dtype == torch.float64 and torch.isfinite(value)


# --- bad input -----------------------------------------------------------------------------------


def test_unsupported_loss_is_a_clear_error():
    with pytest.raises(ValueError, match=r"supported: contrastive, multi_similarity\); got TripletLoss"):
        CrossBatchMemoryLoss(TripletLoss(), 10)


@pytest.mark.parametrize("size", [0, -5, 2.5, True, "10"])
def test_bad_memory_size(size):
    with pytest.raises(ValueError, match="memory size"):
        CrossBatchMemoryLoss(MultiSimilarityLoss(), size)


def test_embedding_size_change_is_a_clear_error():
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), 10)
    xbm(*pk_batch(2, 2, dim=8))
    with pytest.raises(ValueError, match="8-d embeddings"):
        xbm(*pk_batch(2, 2, dim=4))


def test_bad_batch_is_a_clear_error():
    xbm = CrossBatchMemoryLoss(MultiSimilarityLoss(), 10)
    with pytest.raises(ValueError, match="labels"):
        xbm(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


def test_with_cross_batch_memory_is_off_at_zero():
    loss = MultiSimilarityLoss()
    assert with_cross_batch_memory(loss, 0) is loss
    wrapped = with_cross_batch_memory(loss, 64)
    assert isinstance(wrapped, CrossBatchMemoryLoss) and wrapped.memory_size == 64 and wrapped.loss is loss
    with pytest.raises(ValueError, match="xbm_size"):
        with_cross_batch_memory(loss, -1)


def test_engine_warm_up_keeps_the_memory_off_until_xbm_start(tmp_path):
    """A memory that starts at the last iteration never changes a run; one that starts
    earlier does (the XBM paper's warm-up, `xbm_start`)."""
    from dmlutils.engine import train
    from dmlutils.profiles import make_config

    def final(overrides, name):
        config = make_config("smoke", "multi_similarity", {"iterations": 8, "eval_every": 4, **overrides})
        return train(config, tmp_path / name, progress=False)["final"]

    plain = final({}, "plain")
    never = final({"xbm_size": 64, "xbm_start": 8}, "never")
    early = final({"xbm_size": 64, "xbm_start": 2}, "early")
    assert never == {**plain}
    assert early != plain
