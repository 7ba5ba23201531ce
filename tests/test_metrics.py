"""Tests of dmlutils.metrics against independent oracles.

Oracles: a brute-force numpy loop (full similarity matrix, stable argsort, per-query
loop) for Recall@K and the Musgrave metrics; pytorch-metric-learning's
AccuracyCalculator (exact k-NN) for MAP@R, R-precision and P@1; scikit-learn for
NMI; hand-computed small cases.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmlutils import metrics
from dmlutils.metrics import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    chunk_size_for_memory_budget,
    evaluate,
    evaluate_query_gallery,
    map_at_r,
    nmi,
    precision_at_1,
    r_precision,
    recall_at_k,
    retrieval_metrics_from_neighbours,
)

REPO = Path(__file__).resolve().parents[1]
MUSGRAVE = ("precision@1", "r_precision", "map@r")


# ---------------------------------------------------------------------- oracles


def brute_force(query, query_labels, gallery, gallery_labels, ks, *, normalize, exclude_self):
    """Per-query loop over a full similarity matrix; ties by index (stable argsort)."""
    query = np.asarray(query, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    if normalize:
        query = query / np.linalg.norm(query, axis=1, keepdims=True)
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    similarity = query @ gallery.T
    hits = {k: 0 for k in ks}
    sums = {name: 0.0 for name in MUSGRAVE}
    with_relevant = 0
    for i in range(len(query)):
        order = np.argsort(-similarity[i], kind="stable")
        if exclude_self:
            order = order[order != i]
        relevant = np.asarray(gallery_labels)[order] == query_labels[i]
        for k in ks:
            hits[k] += bool(relevant[:k].any())
        r = int(relevant.sum())
        if r == 0:
            continue
        with_relevant += 1
        sums["precision@1"] += float(relevant[0])
        sums["r_precision"] += relevant[:r].sum() / r
        average_precision = 0.0
        for rank in range(1, r + 1):
            if relevant[rank - 1]:
                average_precision += relevant[:rank].sum() / rank
        sums["map@r"] += average_precision / r
    out = {f"recall@{k}": hits[k] / len(query) for k in ks}
    out.update({name: value / with_relevant if with_relevant else math.nan for name, value in sums.items()})
    return out


def brute_force_self(embeddings, labels, ks, normalize=True):
    return brute_force(embeddings, labels, embeddings, labels, ks, normalize=normalize, exclude_self=True)


def random_problem(seed, n=60, dim=8, num_classes=12, singletons=2):
    """Gaussian embeddings; labels with classes of several sizes and some singletons."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n - singletons)
    labels = np.concatenate([labels, num_classes + np.arange(singletons)])
    rng.shuffle(labels)
    centres = rng.standard_normal((num_classes + singletons, dim))
    embeddings = centres[labels] + 1.5 * rng.standard_normal((n, dim))
    return embeddings.astype(np.float32), labels


def assert_metrics_equal(ours, expected, tol=1e-9):
    assert set(ours) == set(expected)
    for name in expected:
        if math.isnan(expected[name]):
            assert math.isnan(ours[name]), name
        else:
            assert ours[name] == pytest.approx(expected[name], abs=tol), name


# --------------------------------------------------------- brute-force agreement


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_embeddings(seed):
    embeddings, labels = random_problem(seed)
    ks = (1, 2, 4, 8, 16, 32)
    ours = evaluate(embeddings, labels, ks, include_nmi=False)
    assert_metrics_equal(ours, brute_force_self(embeddings, labels, ks))
    assert recall_at_k(embeddings, labels, ks) == {k: ours[f"recall@{k}"] for k in ks}


@pytest.mark.parametrize("seed", range(3))
def test_large_k_by_first_hit_rank_matches_brute_force(seed):
    # SOP-style K (1, 10, 100, ...) beyond the listed top-k: Recall@K of queries whose
    # first hit is not in the list comes from counting; random labels make that most.
    rng = np.random.default_rng(200 + seed)
    embeddings = rng.standard_normal((300, 6)).astype(np.float32)
    labels = rng.integers(0, 40, size=300)
    ks = (1, 10, 50, 100, 299)
    ours = evaluate(embeddings, labels, ks, include_nmi=False, chunk_size=37)
    assert_metrics_equal(ours, brute_force_self(embeddings, labels, ks))


@pytest.mark.parametrize("seed", range(5))
def test_ties_broken_by_index_like_a_stable_sort(seed):
    # Small integer embeddings with the raw inner product: similarities are exact in
    # float32 and float64 alike, and heavily tied, so the cut-off of the top-k falls
    # inside groups of equal values and the tie rule decides the metrics.
    rng = np.random.default_rng(100 + seed)
    embeddings = rng.integers(-1, 2, size=(70, 3)).astype(np.float32)
    labels = rng.integers(0, 5, size=70)
    labels[:3] = [90, 91, 92]  # singleton classes
    ks = (1, 2, 3, 5, 10, 69)
    expected = brute_force_self(embeddings, labels, ks, normalize=False)
    for listed_k in (1, 4, metrics._LISTED_RECALL_K):  # 1 and 4: most K by rank counting
        with mock.patch.object(metrics, "_LISTED_RECALL_K", listed_k):
            ours = evaluate(embeddings, labels, ks, include_nmi=False, normalize=False, chunk_size=16)
        assert_metrics_equal(ours, expected)


def test_top_neighbours_resolves_ties_at_the_cut_off_by_index():
    similarity = torch.tensor(
        [
            [0.5, 0.9, 0.5, 0.5, 0.1, 0.5],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.3, 0.2, 0.3, 0.9, 0.3, 0.3],
        ]
    )
    for k in range(1, 6):
        expected = np.argsort(-similarity.numpy(), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(metrics._top_neighbours(similarity, k).numpy(), expected)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_equals_brute_force_on_tied_integer_embeddings(data):
    n = data.draw(st.integers(2, 24), label="n")
    dim = data.draw(st.integers(1, 3), label="dim")
    embeddings = np.array(
        data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=dim, max_size=dim), min_size=n, max_size=n)),
        dtype=np.float32,
    )
    labels = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    ks = tuple(data.draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=4), label="ks"))
    chunk_size = data.draw(st.integers(1, n), label="chunk_size")
    # How far Recall@K is read off the top-k list; beyond it the rank of the first hit
    # is counted. Small values force the counting path on these small problems.
    listed_k = data.draw(st.sampled_from([1, 2, 5, metrics._LISTED_RECALL_K]), label="listed_k")
    with mock.patch.object(metrics, "_LISTED_RECALL_K", listed_k):
        ours = evaluate(
            embeddings, labels, ks, include_nmi=False, normalize=False, chunk_size=chunk_size
        )
    assert_metrics_equal(ours, brute_force_self(embeddings, labels, sorted(set(ks)), normalize=False))
    recalls = [ours[f"recall@{k}"] for k in sorted(set(ks))]
    assert recalls == sorted(recalls)  # Recall@K never decreases with K


@pytest.mark.parametrize("seed", range(3))
def test_query_gallery_matches_brute_force_without_self_exclusion(seed):
    embeddings, labels = random_problem(seed, n=90)
    query, gallery = embeddings[:30], embeddings[30:]
    query_labels, gallery_labels = labels[:30], labels[30:]
    ks = (1, 5, 10, 60)
    ours = evaluate_query_gallery(query, query_labels, gallery, gallery_labels, ks, chunk_size=7)
    expected = brute_force(
        query, query_labels, gallery, gallery_labels, ks, normalize=True, exclude_self=False
    )
    assert_metrics_equal(ours, expected)


def test_query_gallery_with_the_query_inside_the_gallery_finds_itself():
    # No self exclusion in query / gallery mode: a query that is also in the gallery is
    # its own nearest neighbour, so Recall@1 = 1 whatever the other samples are.
    embeddings, labels = random_problem(0)
    ours = evaluate_query_gallery(embeddings[:10], labels[:10], embeddings, labels, ks=(1,))
    assert ours["recall@1"] == 1.0


# --------------------------------------------------- pytorch-metric-learning oracle


def pml_accuracy(query, query_labels, reference=None, reference_labels=None):
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",  # enough neighbours for MAP@R of the largest class
        knn_func=CustomKNN(CosineSimilarity()),  # exact search, no faiss approximation
        device=torch.device("cpu"),
    )
    # With no reference, get_accuracy sets reference = query and
    # ref_includes_query=True: it searches k + 1 neighbours and drops the query itself.
    result = calculator.get_accuracy(
        torch.as_tensor(query),
        torch.as_tensor(query_labels),
        None if reference is None else torch.as_tensor(reference),
        None if reference_labels is None else torch.as_tensor(reference_labels),
    )
    return {
        "precision@1": result["precision_at_1"],
        "r_precision": result["r_precision"],
        "map@r": result["mean_average_precision_at_r"],
    }


@pytest.mark.parametrize("seed", range(4))
def test_musgrave_metrics_match_pytorch_metric_learning(seed):
    embeddings, labels = random_problem(seed, n=120, num_classes=15, singletons=3)
    ours = evaluate(embeddings, labels, (1,), include_nmi=False)
    expected = pml_accuracy(embeddings, labels)
    for name in MUSGRAVE:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name
    assert map_at_r(embeddings, labels) == ours["map@r"]
    assert r_precision(embeddings, labels) == ours["r_precision"]
    assert precision_at_1(embeddings, labels) == ours["precision@1"]


def test_query_gallery_musgrave_metrics_match_pytorch_metric_learning():
    embeddings, labels = random_problem(7, n=150, num_classes=10, singletons=0)
    query, gallery = embeddings[:40], embeddings[40:]
    ours = evaluate_query_gallery(query, labels[:40], gallery, labels[40:], ks=(1,))
    expected = pml_accuracy(query, labels[:40], gallery, labels[40:])
    for name in MUSGRAVE:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name


# ------------------------------------------------------------------ known answers


def points_on_circle(degrees):
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_hand_computed_example_with_recall_at_1_one_half():
    # Angles 0, 30 (class 0) and 40, 90 (class 1). Nearest others: 0 -> 30 (hit),
    # 30 -> 40 (miss), 40 -> 30 (miss), 90 -> 40 (hit): R@1 = 2/4. Second nearest:
    # 30 -> 0 (hit), 40 -> 0 (miss, 40 is nearer to 0 than to 90): R@2 = 3/4.
    # Third: 40 -> 90: R@3 = 1. Every R is 1, so MAP@R = R-precision = P@1 = R@1.
    result = evaluate(points_on_circle([0, 30, 40, 90]), [0, 0, 1, 1], ks=(1, 2, 3), include_nmi=False)
    assert result == {
        "recall@1": 0.5,
        "recall@2": 0.75,
        "recall@3": 1.0,
        "precision@1": 0.5,
        "r_precision": 0.5,
        "map@r": 0.5,
    }


def test_hand_computed_map_at_r_with_two_relevant():
    # Class 0 at 0, 10, 35 degrees (R = 2 each), class 1 at 22 (R = 0).
    # Query 0:  10 (rel), 22, 35 (rel) -> R-prec 1/2, AP@R = (1/2)(1/1) = 1/2
    # Query 10: 0 (rel), 22, 35 (rel)  -> R-prec 1/2, AP@R = 1/2
    # Query 35: 22, 10 (rel), 0 (rel)  -> R-prec 1/2, AP@R = (1/2)(2/2 * 0 + 1/2) = 1/4
    # Query 22: R = 0, left out of P@1 / R-precision / MAP@R, a miss for Recall@K.
    result = evaluate(points_on_circle([0, 10, 35, 22]), [0, 0, 0, 1], ks=(1, 2), include_nmi=False)
    assert result == pytest.approx(
        {
            "recall@1": 2 / 4,
            "recall@2": 3 / 4,
            "precision@1": 2 / 3,
            "r_precision": 1 / 2,
            "map@r": (1 / 2 + 1 / 2 + 1 / 4) / 3,
        },
        abs=1e-12,
    )


def test_perfect_clusters_score_one():
    rng = np.random.default_rng(0)
    centres = np.eye(8) * 10.0
    labels = np.repeat(np.arange(8), 6)
    embeddings = centres[labels] + 0.01 * rng.standard_normal((48, 8))
    result = evaluate(embeddings, labels, ks=(1, 2, 4))
    assert result == {
        "recall@1": 1.0,
        "recall@2": 1.0,
        "recall@4": 1.0,
        "precision@1": 1.0,
        "r_precision": 1.0,
        "map@r": 1.0,
        "nmi": pytest.approx(1.0),
    }


def test_singleton_classes_count_as_recall_misses_but_leave_the_musgrave_means():
    embeddings = points_on_circle([0, 5, 90, 200])
    labels = [0, 0, 1, 2]  # two pairs' worth: one real pair, two singletons
    result = evaluate(embeddings, labels, ks=(1,), include_nmi=False)
    assert result["recall@1"] == 0.5  # the pair hits, the singletons cannot
    assert result["precision@1"] == result["map@r"] == result["r_precision"] == 1.0
    all_singletons = evaluate(embeddings, [0, 1, 2, 3], ks=(1,), include_nmi=False)
    assert all_singletons["recall@1"] == 0.0
    assert all(math.isnan(all_singletons[name]) for name in MUSGRAVE)


# ------------------------------------------------------------------------------ NMI


def test_nmi_equals_direct_sklearn_kmeans_and_nmi():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    embeddings, labels = random_problem(3, n=150, num_classes=6, singletons=0)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    clusters = KMeans(n_clusters=6, n_init=1, random_state=0).fit_predict(unit)
    expected = normalized_mutual_info_score(labels, clusters)
    assert nmi(embeddings, labels) == pytest.approx(expected, abs=1e-12)
    assert evaluate(embeddings, labels, (1,))["nmi"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0  # a case that is neither trivial nor hopeless


def test_nmi_does_not_depend_on_label_names():
    embeddings, labels = random_problem(4, n=100, num_classes=5, singletons=0)
    renamed = np.array([f"class-{9 - label}" for label in labels])
    assert nmi(embeddings, renamed) == pytest.approx(nmi(embeddings, labels), abs=1e-12)


# ------------------------------------------------------------------ input handling


def test_chunked_equals_unchunked():
    embeddings, labels = random_problem(11, n=101)
    ks = (1, 2, 4, 8, 16, 32, 100)
    whole = evaluate(embeddings, labels, ks, include_nmi=False, chunk_size=1000)
    for chunk_size in (1, 3, 10, 100):
        chunked = evaluate(embeddings, labels, ks, include_nmi=False, chunk_size=chunk_size)
        assert_metrics_equal(chunked, whole, tol=1e-12)
    tiny_budget = evaluate(embeddings, labels, ks, include_nmi=False, memory_budget_bytes=1)
    assert_metrics_equal(tiny_budget, whole, tol=1e-12)


def test_torch_numpy_float64_and_label_types_give_the_same_answer():
    embeddings, labels = random_problem(12)
    reference = evaluate(embeddings, labels, include_nmi=False)
    variants = [
        (torch.from_numpy(embeddings), torch.from_numpy(labels)),
        (embeddings.astype(np.float64), labels.tolist()),
        (embeddings.tolist(), np.array([f"c{label}" for label in labels])),
        (torch.from_numpy(embeddings).requires_grad_(), labels),
    ]
    for variant_embeddings, variant_labels in variants:
        assert_metrics_equal(
            evaluate(variant_embeddings, variant_labels, include_nmi=False), reference, tol=1e-12
        )


def test_normalize_false_ranks_by_inner_product():
    # Cosine says B is nearer to A; the inner product says the long vector C is.
    embeddings = np.array([[1.0, 0.0], [1.0, 0.1], [5.0, 3.0]])
    labels = [0, 0, 1]
    assert recall_at_k(embeddings, labels, ks=1)[1] == pytest.approx(2 / 3)  # A,B hit; C misses
    assert recall_at_k(embeddings, labels, ks=1, normalize=False)[1] == 0.0  # A->C, B->C, C->B


def test_scaling_rows_does_not_change_cosine_metrics():
    embeddings, labels = random_problem(13)
    scales = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(labels), 1)).astype(np.float32)
    assert_metrics_equal(
        evaluate(embeddings * scales, labels, include_nmi=False),
        evaluate(embeddings, labels, include_nmi=False),
        tol=1e-12,
    )


def test_retrieval_metrics_from_neighbours_matches_evaluate():
    embeddings, labels = random_problem(14)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, : len(labels) - 1]
    num_relevant = np.array([(labels == label).sum() - 1 for label in labels])
    ours = retrieval_metrics_from_neighbours(labels[order], labels, num_relevant, ks=(1, 4, 16))
    assert_metrics_equal(ours, evaluate(embeddings, labels, (1, 4, 16), include_nmi=False))


@pytest.mark.parametrize(
    "embeddings, labels, kwargs, message",
    [
        (np.zeros((5, 3)), np.zeros(4), {}, r"embeddings has 5 rows but labels has 4"),
        (np.zeros((5, 3, 2)), np.zeros(5), {}, r"must be 2-D \(samples, dim\), got shape \(5, 3, 2\)"),
        (np.zeros(5), np.zeros(5), {}, r"must be 2-D"),
        (np.ones((1, 3)), np.zeros(1), {}, r"at least 2 samples"),
        (np.ones((5, 3)), np.zeros((5, 1)), {}, r"labels must be 1-D"),
        (np.ones((5, 3), dtype=complex), np.zeros(5), {}, r"must be real numbers, got dtype complex128"),
        (np.array([["a", "b"], ["c", "d"]]), np.zeros(2), {}, r"must be real numbers"),
        (np.ones((5, 3)), np.zeros(5), {"ks": (1, 0)}, r"positive int, got 0"),
        (np.ones((5, 3)), np.zeros(5), {"ks": (1, 2.5)}, r"positive int, got 2.5"),
        (np.ones((5, 3)), np.zeros(5), {"ks": ()}, r"ks is empty"),
        (np.ones((5, 3)), np.zeros(5), {"ks": (1, 5)}, r"K=5 exceeds the 4 other samples a query can retrieve \(n - 1\).*largest allowed K is 4"),
        (np.ones((5, 3)), np.zeros(5), {"ks": 1, "chunk_size": 0}, r"chunk_size must be a positive int"),
    ],
)
def test_bad_input_raises_a_clear_value_error(embeddings, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(embeddings, labels, include_nmi=False, **kwargs)


def test_non_finite_embeddings_are_rejected_with_their_count():
    embeddings = np.ones((6, 4), dtype=np.float32)
    embeddings[1, 2] = np.nan
    embeddings[3, 0] = np.inf
    embeddings[3, 1] = -np.inf
    with pytest.raises(ValueError, match=r"3 NaN or infinite values \(in 2 of 6 rows\)"):
        recall_at_k(embeddings, np.arange(6) % 2)


def test_zero_embeddings_cannot_be_normalised():
    embeddings = np.ones((4, 3))
    embeddings[2] = 0.0
    with pytest.raises(ValueError, match=r"1 all-zero rows.*normalize=False"):
        evaluate(embeddings, [0, 0, 1, 1], ks=1, include_nmi=False)
    # Allowed with the raw inner product; the zero row is equally far from all.
    result = evaluate(embeddings, [0, 0, 1, 1], ks=1, include_nmi=False, normalize=False)
    assert result["recall@1"] == pytest.approx(brute_force_self(embeddings, [0, 0, 1, 1], (1,), normalize=False)["recall@1"])


def test_query_gallery_bad_input():
    query, gallery = np.ones((3, 4)), np.ones((5, 4))
    with pytest.raises(ValueError, match=r"K=6 exceeds the 5 gallery items.*largest allowed K is 5"):
        evaluate_query_gallery(query, [0, 1, 2], gallery, [0] * 5, ks=(1, 6))
    with pytest.raises(ValueError, match=r"dimension 4 but gallery embeddings 2"):
        evaluate_query_gallery(query, [0, 1, 2], np.ones((5, 2)), [0] * 5)
    with pytest.raises(ValueError, match=r"query_embeddings has 3 rows but query_labels has 2"):
        evaluate_query_gallery(query, [0, 1], gallery, [0] * 5)
    with pytest.raises(ValueError, match=r"gallery_embeddings is empty"):
        evaluate_query_gallery(query, [0, 1, 2], np.ones((0, 4)), [])


def test_unknown_option_of_single_metric_is_a_type_error():
    with pytest.raises(TypeError, match="unknown option"):
        map_at_r(np.eye(3), [0, 0, 1], chunksize=2)


# ------------------------------------------------------------------ memory budget


def test_chunk_size_is_the_largest_that_fits_the_budget():
    sop_gallery, neighbours = 60_502, 33
    chunk = chunk_size_for_memory_budget(sop_gallery, neighbours, DEFAULT_MEMORY_BUDGET_BYTES)
    per_query = 6 * sop_gallery + 96 * neighbours  # the documented cost of a query row
    assert chunk * per_query <= DEFAULT_MEMORY_BUDGET_BYTES < (chunk + 1) * per_query
    # The similarity block alone (float32, chunk x gallery) stays under the budget.
    assert chunk * sop_gallery * 4 <= DEFAULT_MEMORY_BUDGET_BYTES
    assert 500 < chunk < 2000  # big enough for an efficient matmul on SOP
    double = chunk_size_for_memory_budget(sop_gallery, neighbours, 2 * DEFAULT_MEMORY_BUDGET_BYTES)
    assert double in (2 * chunk, 2 * chunk + 1)
    # More neighbours to keep -> fewer queries per chunk.
    assert chunk_size_for_memory_budget(sop_gallery, 5_000, DEFAULT_MEMORY_BUDGET_BYTES) < chunk
    # A budget below one row still makes progress, one query at a time.
    assert chunk_size_for_memory_budget(sop_gallery, neighbours, 1) == 1


@pytest.mark.parametrize(
    "args", [(0, 5, 100), (10, 0, 100), (10, 5, 0), (10, 5, -1), (10.5, 5, 100)]
)
def test_chunk_size_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="must be a positive int"):
        chunk_size_for_memory_budget(*args)


def test_evaluation_uses_chunks_sized_by_the_budget(monkeypatch):
    embeddings, labels = random_problem(15, n=200)
    seen_rows = []
    original = metrics._top_neighbours

    def spy(similarity, num_neighbours):
        seen_rows.append(similarity.shape[0])
        return original(similarity, num_neighbours)

    monkeypatch.setattr(metrics, "_top_neighbours", spy)
    budget = 20_000
    evaluate(embeddings, labels, ks=(1, 8), include_nmi=False, memory_budget_bytes=budget)
    largest_class = np.bincount(labels).max()
    expected_chunk = chunk_size_for_memory_budget(200, max(8, largest_class - 1) + 1, budget)
    assert 1 < expected_chunk < 200
    assert seen_rows[:-1] == [expected_chunk] * (len(seen_rows) - 1)
    assert sum(seen_rows) == 200


# -------------------------------------------------------------------- benchmark


def test_benchmark_script_runs_and_reports_expected_keys(tmp_path):
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_metrics.py"), "--small", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(out.read_text())
    assert {"config", "cases"} <= set(report)
    assert [case["name"] for case in report["cases"]] == ["sop_like", "cub_like"]
    for case in report["cases"]:
        assert {"ours", "faiss"} <= set(case["runs"])
        for run in case["runs"].values():
            assert run["seconds"] > 0 and run["peak_rss_increase_mib"] >= 0
            assert set(run["metrics"]) >= {"recall@1", "map@r"}
        # Every reference computes the same metrics from its own exact k-NN search.
        for run in case["runs"].values():
            for name, value in case["runs"]["ours"]["metrics"].items():
                assert run["metrics"][name] == pytest.approx(value, abs=1e-6)
        assert set(case["ratios"]) >= {"time_ours_over_faiss", "peak_rss_ours_over_faiss"}
    assert "sklearn" in report["cases"][1]["runs"]
    assert "| case |" in completed.stdout
