"""Tests of dmlutils.samplers.PKSampler.

Oracles: the batch structure is checked by counting labels with collections.Counter;
coverage by counting visits per index; DataLoader integration against torch's own
DataLoader; distributed shards against the global batch built by the same sampler.
"""

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from dmlutils.samplers import PKSampler


def uneven_labels(num_classes=30, low=6, high=15, seed=0):
    """Class sizes vary, as in CUB (41-60 images per class) or SOP (2-12)."""
    sizes = np.random.default_rng(seed).integers(low, high + 1, size=num_classes)
    return np.repeat(np.arange(num_classes), sizes)


def assert_p_by_k(batch, labels, p, k):
    assert len(batch) == p * k
    assert len(set(batch)) == p * k, "an index appears twice in one batch"
    counts = Counter(labels[i] for i in batch)
    assert len(counts) == p, f"expected {p} classes, got {len(counts)}"
    assert set(counts.values()) == {k}, f"expected {k} samples per class, got {counts}"


def test_every_batch_has_p_classes_with_k_samples_each():
    labels = uneven_labels()
    sampler = PKSampler(labels, p=6, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert_p_by_k(batch, labels, 6, 4)
        # grouped by class: K consecutive indices share a label
        grouped = labels[batch].reshape(6, 4)
        assert (grouped == grouped[:, :1]).all()


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 25),
    low=st.integers(1, 8),
    spread=st.integers(0, 10),
    p=st.integers(1, 8),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31),
)
def test_structure_holds_for_random_class_sizes(num_classes, low, spread, p, k, seed):
    labels = uneven_labels(num_classes, low, low + spread, seed=seed % 1000)
    if num_classes < p:
        with pytest.raises(ValueError, match="distinct classes"):
            PKSampler(labels, p=p, k=k, replace=True)
        return
    sampler = PKSampler(labels, p=p, k=k, seed=seed, replace=True, num_batches=7)
    batches = list(sampler)
    assert len(batches) == 7
    for batch in batches:
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == p and set(counts.values()) == {k}


def test_same_seed_same_batches_and_different_seeds_differ():
    labels = uneven_labels()
    first = list(PKSampler(labels, p=5, k=3, seed=11))
    again = list(PKSampler(labels, p=5, k=3, seed=11))
    other = list(PKSampler(labels, p=5, k=3, seed=12))
    assert first == again
    assert first != other


def test_set_epoch_changes_batches_reproducibly():
    labels = uneven_labels()
    sampler = PKSampler(labels, p=5, k=3, seed=0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0, "without set_epoch the epoch is repeated (DistributedSampler convention)"
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    fresh = PKSampler(labels, p=5, k=3, seed=0)
    fresh.set_epoch(1)
    assert list(fresh) == epoch1


def test_epoch_visits_every_sample_exactly_once_when_chunks_fill_the_batches():
    # 20 classes x 10 samples, K = 5 -> 40 chunks, P = 4 -> exactly 10 batches.
    labels = np.repeat(np.arange(20), 10)
    sampler = PKSampler(labels, p=4, k=5, seed=5)
    assert len(sampler) == 10
    visits = Counter(i for batch in sampler for i in batch)
    assert sorted(visits) == list(range(200))
    assert set(visits.values()) == {1}


def test_epoch_coverage_with_uneven_classes():
    labels = uneven_labels(num_classes=40, low=7, high=23, seed=1)
    p, k = 8, 5
    sampler = PKSampler(labels, p=p, k=k, seed=2)
    chunks = sum(-(-n // k) for n in np.bincount(labels))
    assert len(sampler) == chunks // p
    visits = Counter(i for batch in sampler for i in batch)
    unvisited = set(range(len(labels))) - set(visits)
    # Only the fewer-than-P chunks left over at the end of the pass may go unvisited.
    assert len(unvisited) <= (p - 1) * k
    # A sample is visited twice only to top up its class's last, short chunk.
    assert max(visits.values()) <= 2
    # Each class appears once per chunk, ceil(n/k) times, except for the leftovers.
    class_visits = Counter(labels[i] for batch in sampler for i in batch[::k])
    shortfall = [-(-n // k) - class_visits[c] for c, n in enumerate(np.bincount(labels))]
    assert min(shortfall) >= 0
    assert sum(shortfall) == chunks - len(sampler) * p < p


def test_a_class_larger_than_one_pth_of_the_data_limits_the_pass():
    # Class 0 has 100 samples, the other 5 classes 5 each. With P = 2 every batch
    # needs two classes, so class 0 can fill at most 5 batches (one per other chunk).
    labels = np.concatenate([np.zeros(100, int), np.repeat(np.arange(1, 6), 5)])
    sampler = PKSampler(labels, p=2, k=5)
    assert len(sampler) == 5
    for batch in sampler:
        assert_p_by_k(batch, labels, 2, 5)


def test_num_batches_longer_than_a_pass_continues_with_a_new_pass():
    labels = np.repeat(np.arange(6), 5)  # 6 chunks of K=5, P=3 -> 2 batches per pass
    sampler = PKSampler(labels, p=3, k=5, num_batches=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7
    for batch in batches:
        assert_p_by_k(batch, labels, 3, 5)


def test_replace_fills_small_classes_by_repeating_their_samples():
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    sampler = PKSampler(labels, p=3, k=4, replace=True, num_batches=3)
    for batch in sampler:
        counts = Counter(labels[i] for i in batch)
        assert counts == {0: 4, 1: 4, 2: 4}
        # class 0 has two samples: both appear, repeated to fill four slots
        assert set(i for i in batch if labels[i] == 0) == {0, 1}


def test_small_class_error_names_the_class_and_its_size_and_the_fixes():
    labels = ["albatross"] * 6 + ["wren"] * 2 + ["gull"] * 6 + ["tern"] * 3
    with pytest.raises(ValueError) as excinfo:
        PKSampler(labels, p=2, k=5)
    message = str(excinfo.value)
    assert "'wren' (2 samples)" in message and "'tern' (3 samples)" in message
    assert "albatross" not in message
    assert "replace=True" in message and "smaller k" in message and "drop_small_classes" in message


def test_drop_small_classes_leaves_them_out():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 6 + [3] * 5)
    sampler = PKSampler(labels, p=3, k=5, drop_small_classes=True, num_batches=4)
    for batch in sampler:
        assert set(labels[batch]) == {0, 2, 3}


def test_too_few_classes_error_says_how_many_exist():
    labels = np.repeat(np.arange(3), 10)
    with pytest.raises(ValueError, match=r"p=4 distinct classes.*only 3 class"):
        PKSampler(labels, p=4, k=2)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(p=0, k=2), "p must be at least 1"),
    (dict(p=2, k=0), "k must be at least 1"),
    (dict(p=2, k=2, num_batches=0), "num_batches must be at least 1"),
    (dict(p=2, k=2, seed=-1), "seed must be a non-negative int"),
    (dict(p=3, k=2, num_replicas=2), "divisible by num_replicas"),
    (dict(p=2, k=2, num_replicas=2, rank=2), r"rank must be an int in \[0, num_replicas=2\)"),
])
def test_bad_arguments_raise_clear_value_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        PKSampler(np.repeat(np.arange(5), 4), **kwargs)


def test_labels_must_be_one_dimensional_and_non_empty():
    with pytest.raises(ValueError, match="1-D"):
        PKSampler(np.zeros((4, 2)), p=1, k=1)
    with pytest.raises(ValueError, match="empty"):
        PKSampler([], p=1, k=1)


def test_accepts_a_torch_tensor_of_labels():
    labels = torch.arange(8).repeat_interleave(3)
    assert list(PKSampler(labels, p=2, k=3, seed=4)) == list(PKSampler(labels.numpy(), p=2, k=3, seed=4))


def test_distributed_shards_are_disjoint_and_their_union_is_the_global_batch():
    labels = uneven_labels()
    world = 3
    full = PKSampler(labels, p=6, k=4, seed=9)
    full.set_epoch(2)
    global_batches = list(full)
    shards = []
    for rank in range(world):
        sampler = PKSampler(labels, p=6, k=4, seed=9, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        assert sampler.batch_size == 8 and len(sampler) == len(full)
        shards.append(list(sampler))
    for step, global_batch in enumerate(global_batches):
        parts = [shards[r][step] for r in range(world)]
        for part in parts:
            assert_p_by_k(part, labels, 2, 4)  # each rank gets whole classes
        flat = [i for part in parts for i in part]
        assert len(flat) == len(set(flat)), "shards overlap"
        assert sorted(flat) == sorted(global_batch)
        # disjoint classes too, so no rank's positives are split across ranks
        class_sets = [set(labels[part]) for part in parts]
        assert sum(len(s) for s in class_sets) == len(set().union(*class_sets))


def test_works_as_a_dataloader_batch_sampler():
    labels = uneven_labels(num_classes=12, low=5, high=8)
    features = torch.arange(len(labels), dtype=torch.float32)[:, None]
    dataset = TensorDataset(features, torch.as_tensor(labels))
    sampler = PKSampler(labels, p=4, k=3, seed=1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    expected = list(sampler)
    got = list(loader)
    assert len(got) == len(loader) == len(expected)
    for (x, y), indices in zip(got, expected):
        assert x[:, 0].long().tolist() == indices  # the loader fetched exactly these samples
        assert Counter(y.tolist()) == Counter(labels[indices].tolist())
        assert len(set(y.tolist())) == 4
