"""Retrieval metrics of deep metric learning: Recall@K, MAP@R, R-precision, P@1, NMI.

Two protocols, one code path:

* **self-retrieval** (CUB-200-2011, Cars196, Stanford Online Products): every test
  sample is a query against all the *other* test samples -
  `evaluate(embeddings, labels)`;
* **query / gallery** (In-Shop): queries search a separate gallery, nothing is
  excluded - `evaluate_query_gallery(query_embeddings, query_labels,
  gallery_embeddings, gallery_labels)`.

Definitions
-----------
Similarity is the cosine similarity of L2-normalised embeddings (`normalize=True`,
the default, as in the MS paper's evaluation: for unit vectors it ranks exactly like
Euclidean distance). `normalize=False` ranks by the raw inner product instead.

For a query q with label y, R(q) is the number of *other* samples (self-retrieval) or
gallery samples (query / gallery) with label y; the neighbours of q are sorted by
similarity, most similar first.

* Recall@K (Song et al., CVPR 2016; the protocol of the MS paper): 1 if any of the K
  nearest neighbours has label y, else 0; averaged over **all** queries. A query with
  R(q) = 0 (a singleton class) can never hit and counts as a miss.
* Precision@1, R-precision, MAP@R (Musgrave et al., "A Metric Learning Reality
  Check", ECCV 2020; what pytorch-metric-learning's `AccuracyCalculator` computes):
  R-precision = (relevant among the R nearest) / R;
  MAP@R = (1/R) * sum_{i<=R} P@i * rel(i), with P@i the precision of the i nearest;
  precision@1 = rel(1). These are undefined when R(q) = 0, so such queries are left
  out of their averages (as `AccuracyCalculator` does); with no singleton classes
  precision@1 equals Recall@1.
* NMI: scikit-learn `KMeans` with as many clusters as classes (`n_init=1` k-means++
  start, `random_state=0` by default) on the same embeddings the retrieval ranks
  (normalised when `normalize=True`), scored by `normalized_mutual_info_score`
  (arithmetic normalisation). It costs O(n * classes * dim) per k-means iteration:
  quick for CUB or Cars (~100 classes), very slow for SOP (11,316 classes), where
  `include_nmi=False` is the sensible choice.

Ties
----
Neighbours with equal similarity are ranked by index, lower gallery index first (a
stable sort by decreasing similarity), so results are deterministic and match a
brute-force `np.argsort(-similarity, kind="stable")`. `torch.topk` alone does not
promise which of several tied values it keeps, so rows whose cut-off value is tied
with an unselected value are re-ranked by a stable sort of the whole row (rare
outside of duplicate embeddings).

Memory and speed
----------------
The similarity matrix of SOP (60,502^2 float32) would take 14.6 GB. Queries are
processed in chunks: a chunk's similarities against the whole gallery (one matmul),
then `torch.topk` of L = max(largest R, min(max(ks), 32)) neighbours plus one (the
extra one tells whether the cut-off is tied), then the chunk's metric sums, and the
chunk is dropped. MAP@R, R-precision, P@1 and Recall@K for K <= L are read off that
sorted list. Recall@K for larger K (SOP's 100 and 1000) needs only the rank of the
first relevant neighbour: for the queries whose first hit is not in the list it is
counted exactly, 1 + #{similarity above that of the best relevant item} (+ tied ones
of lower index) - a pass over a row instead of a top-1000 for every query.
The chunk size comes from a memory budget (`chunk_size_for_memory_budget`, default
256 MiB for the chunk's working set), so peak memory is the embeddings, one
normalised copy of them, and the budget. Work is in float32, on the device the
embeddings are on (CPU or CUDA).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "chunk_size_for_memory_budget",
    "recall_at_k",
    "map_at_r",
    "r_precision",
    "precision_at_1",
    "nmi",
    "evaluate",
    "evaluate_query_gallery",
    "retrieval_metrics_from_neighbours",
]

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
DEFAULT_MEMORY_BUDGET_BYTES: int = 256 * 2**20

# Bytes of working memory per query and gallery item: the float32 similarity (4),
# and the rank counting of queries whose first hit is beyond the list, done for a
# quarter of the chunk at a time with a row copy and three boolean masks (8 / 4).
_BYTES_PER_GALLERY_ITEM = 6
# Bytes per (query, kept neighbour): values and indices out of topk (4 + 8), their
# stable re-sort (4 + 8 + 8 + 8), neighbour labels (8), relevance and its cumulative
# sum (1 + 8), precision terms (8), rounded up.
_BYTES_PER_NEIGHBOUR_SLOT = 96
# Recall@K up to this K is read off the sorted top-k list; larger K (SOP's 100,
# 1000) from the exact rank of the first hit (see _rank_of_first_relevant).
_LISTED_RECALL_K = 32
# A progress bar is worth its noise only when the evaluation takes a while: from
# 1e8 query-gallery pairs (a few seconds on a laptop CPU at dim 512; SOP has 3.7e9).
_PROGRESS_MIN_PAIRS = 10**8


# ----------------------------------------------------------------------------- input


def _as_embedding_tensor(embeddings, name: str) -> Tensor:
    """A 2-D, finite, float32 tensor on the input's device (no copy when possible)."""
    if isinstance(embeddings, Tensor):
        tensor = embeddings.detach()
    else:
        try:
            array = np.asarray(embeddings)
        except Exception as error:  # ragged lists and the like
            raise ValueError(
                f"{name} must be a 2-D array or tensor of shape (samples, dim); "
                f"could not convert {type(embeddings).__name__}: {error}"
            ) from error
        if np.iscomplexobj(array) or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (samples, dim), got shape {tuple(tensor.shape)}; "
            "flatten each sample's embedding, e.g. x.reshape(len(x), -1)."
        )
    if tensor.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {tensor.dtype}.")
    if tensor.dtype != torch.float32:
        tensor = tensor.to(torch.float32)
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has embedding dimension 0; nothing to compare.")
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        bad_rows = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values (in {bad_rows} of "
            f"{tensor.shape[0]} rows); the model diverged or the features were not "
            "computed - fix them before evaluating."
        )
    return tensor


def _labels_to_array(labels, name: str) -> np.ndarray:
    if isinstance(labels, Tensor):
        array = labels.detach().cpu().numpy()
    else:
        array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one class label per sample), got shape {array.shape}; "
            "flatten it, e.g. labels.reshape(-1)."
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite labels.")
    return array


def _class_ids(*label_arrays: np.ndarray) -> list[np.ndarray]:
    """Map labels (any sortable type) to contiguous int64 ids shared by all arrays."""
    joined = np.concatenate(label_arrays)
    try:
        _, ids = np.unique(joined, return_inverse=True)
    except TypeError as error:
        raise ValueError(f"labels must be of one sortable type: {error}") from error
    ids = ids.reshape(-1).astype(np.int64)
    splits = np.cumsum([len(a) for a in label_arrays])[:-1]
    return np.split(ids, splits)


def _check_ks(ks, max_neighbours: int, what: str) -> tuple[int, ...]:
    if isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        ks = (ks,)
    if not isinstance(ks, Iterable) or isinstance(ks, (str, bytes)):
        raise ValueError(f"ks must be a positive int or a sequence of them, got {ks!r}.")
    ks = list(ks)
    if not ks:
        raise ValueError("ks is empty; pass at least one K, e.g. ks=(1, 2, 4, 8).")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"every K in ks must be a positive int, got {k!r} in {ks!r}.")
    too_large = [int(k) for k in ks if k > max_neighbours]
    if too_large:
        raise ValueError(
            f"K={max(too_large)} exceeds the {max_neighbours} {what}, so "
            f"Recall@{max(too_large)} is undefined; the largest allowed K is {max_neighbours}."
        )
    return tuple(sorted({int(k) for k in ks}))


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _normalised(embeddings: Tensor, name: str) -> Tensor:
    # Row norms first (no full-size temporary), then one division: the normalised
    # copy is the only extra embedding-sized block in memory.
    norms = torch.linalg.vector_norm(embeddings, dim=1)
    zero_rows = int((norms == 0).sum())
    if zero_rows:
        raise ValueError(
            f"{name} has {zero_rows} all-zero rows (norm 0), which have no direction to "
            "compare by cosine similarity; fix the features, or pass normalize=False to "
            "rank by raw inner product."
        )
    return embeddings / norms.unsqueeze(1)


# ----------------------------------------------------------------------- chunking


def chunk_size_for_memory_budget(
    num_gallery: int,
    num_neighbours: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> int:
    """Number of queries per chunk so that one chunk's working set fits the budget.

    A query row costs 6 bytes per gallery item (its float32 similarities, plus the
    temporaries of the first-hit rank counting, done for a quarter of a chunk at a
    time) and about 96 bytes per kept neighbour (top-k values and indices, their
    stable re-sort, labels, relevance). The budget covers the chunk, not the
    embeddings themselves. At least one query per chunk, even if a single
    row exceeds the budget (then the budget cannot be met and the row is the floor).
    """
    num_gallery = _check_positive_int(num_gallery, "num_gallery")
    num_neighbours = _check_positive_int(num_neighbours, "num_neighbours")
    memory_budget_bytes = _check_positive_int(memory_budget_bytes, "memory_budget_bytes")
    bytes_per_query = (
        _BYTES_PER_GALLERY_ITEM * num_gallery + _BYTES_PER_NEIGHBOUR_SLOT * num_neighbours
    )
    return max(1, memory_budget_bytes // bytes_per_query)


def _top_neighbours(similarity: Tensor, num_neighbours: int) -> Tensor:
    """Indices of the `num_neighbours` most similar columns per row, ties by index.

    One extra column is searched when there is one: if its value equals the last kept
    value, `topk` chose arbitrarily among tied values, and that row is re-ranked by a
    stable sort of the whole row.
    """
    num_columns = similarity.shape[1]
    search = min(num_neighbours + 1, num_columns)
    values, indices = torch.topk(similarity, search, dim=1, largest=True, sorted=True)
    if not torch.isfinite(values[:, :num_neighbours]).all():
        raise ValueError(
            "similarities overflowed to infinity (normalize=False with very large "
            "embeddings); rescale the embeddings or use normalize=True."
        )
    # topk's order is right except among equal values. Rows with a tie inside the kept
    # set (rare) get it ordered by (similarity desc, index asc): sort by index, then a
    # stable sort by value keeps index order among equal values.
    tied = (values[:, 1:num_neighbours] == values[:, : num_neighbours - 1]).any(dim=1)
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        row_indices, by_index = torch.sort(indices[rows], dim=1)
        row_values = values[rows].gather(1, by_index)
        _, by_value = torch.sort(row_values, dim=1, descending=True, stable=True)
        indices[rows] = row_indices.gather(1, by_value)
    if search > num_neighbours:
        # A tie across the cut-off: topk may have kept any of the tied columns, so
        # re-rank the whole row with a stable sort.
        ambiguous = values[:, num_neighbours - 1] == values[:, num_neighbours]
        if ambiguous.any():
            rows = ambiguous.nonzero().squeeze(1)
            _, full_order = torch.sort(similarity[rows], dim=1, descending=True, stable=True)
            indices[rows, :num_neighbours] = full_order[:, :num_neighbours]
    return indices[:, :num_neighbours]


# ------------------------------------------------------------------------ metrics


def _first_hit_rank(relevant: Tensor) -> Tensor:
    """1-based rank of the first relevant neighbour in each row; K + 1 if none."""
    # argmax returns the first maximum, i.e. the first hit (0 also when there is none).
    first = relevant.to(torch.uint8).argmax(dim=1) + 1
    return torch.where(relevant.any(dim=1), first, relevant.shape[1] + 1)


def _metric_sums(
    relevant: Tensor, first_hit_rank: Tensor, num_relevant: Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """Per-chunk sums of every metric.

    relevant: bool (queries, K), column j = does the (j+1)-th neighbour share the
    query's label, with K >= every R; first_hit_rank: int64 (queries,), rank of the
    first relevant neighbour (anything above max(ks) if there is none);
    num_relevant: int64 (queries,), R of each query.
    """
    sums: dict[str, float] = {}
    for k in ks:  # Recall@K: is the first hit among the K nearest?
        sums[f"recall@{k}"] = float((first_hit_rank <= k).sum())

    has_relevant = num_relevant > 0
    ranks = torch.arange(1, relevant.shape[1] + 1, device=relevant.device)
    within_r = ranks.unsqueeze(0) <= num_relevant.unsqueeze(1)
    relevant_within_r = relevant & within_r
    r = num_relevant.clamp(min=1).to(torch.float64)
    hits_within_r = relevant_within_r.sum(dim=1, dtype=torch.float64)
    cumulative_hits = relevant_within_r.cumsum(dim=1, dtype=torch.float64)
    precision_terms = cumulative_hits * relevant_within_r / ranks
    average_precision = precision_terms.sum(dim=1) / r
    sums["precision@1"] = float((relevant[:, 0] & has_relevant).sum())
    sums["r_precision"] = float((hits_within_r / r)[has_relevant].sum())
    sums["map@r"] = float(average_precision[has_relevant].sum())
    sums["num_queries"] = float(relevant.shape[0])
    sums["num_queries_with_relevant"] = float(has_relevant.sum())
    return sums


def _means(sums: dict[str, float], ks: Sequence[int]) -> dict[str, float]:
    total = sums["num_queries"]
    with_relevant = sums["num_queries_with_relevant"]
    out = {f"recall@{k}": sums[f"recall@{k}"] / total for k in ks}
    for name in ("precision@1", "r_precision", "map@r"):
        out[name] = sums[name] / with_relevant if with_relevant else math.nan
    return out


def retrieval_metrics_from_neighbours(
    neighbour_labels,
    query_labels,
    num_relevant,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@K, precision@1, R-precision and MAP@R from precomputed neighbour lists.

    For a k-NN search done elsewhere (faiss, a GPU index): `neighbour_labels` is
    (queries, K_max), the labels of each query's neighbours sorted most similar first
    (self already removed), `query_labels` (queries,), `num_relevant` (queries,) the
    R of each query. K_max must be at least max(ks) and the largest R. Definitions as
    in the module docstring.
    """
    neighbour_labels = torch.as_tensor(np.asarray(neighbour_labels))
    query_labels = torch.as_tensor(np.asarray(query_labels))
    num_relevant = torch.as_tensor(np.asarray(num_relevant)).to(torch.int64)
    if neighbour_labels.dim() != 2 or neighbour_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"neighbour_labels must be (queries, K_max) with one row per query label; got "
            f"{tuple(neighbour_labels.shape)} and {tuple(query_labels.shape)} query labels."
        )
    if num_relevant.shape != query_labels.shape:
        raise ValueError("num_relevant must have one entry per query.")
    k_max = neighbour_labels.shape[1]
    ks = _check_ks(ks, k_max, "neighbours given per query")
    if num_relevant.numel() and int(num_relevant.max()) > k_max:
        raise ValueError(
            f"MAP@R needs the R={int(num_relevant.max())} nearest neighbours but only "
            f"{k_max} were given."
        )
    relevant = neighbour_labels == query_labels.unsqueeze(1)
    return _means(_metric_sums(relevant, _first_hit_rank(relevant), num_relevant, ks), ks)


def _rank_of_first_relevant(
    similarity: Tensor,
    query_classes: Tensor,
    class_members: Tensor,
    class_offsets: Tensor,
    class_counts: Tensor,
) -> Tensor:
    """Exact 1-based rank of each row's most similar relevant column, by counting.

    For a query whose first hit lies beyond the top-k list: find its best relevant
    column j* (similarity s*, lowest index among equals) among the members of its
    class, then rank(j*) = 1 + #{s > s*} + #{s == s*, column < j*}. Self columns
    hold -inf and never count. Every row must have at least one relevant column.
    """
    num_columns = similarity.shape[1]
    counts = class_counts[query_classes]
    slots = torch.arange(int(counts.max()), device=similarity.device)
    valid = slots.unsqueeze(0) < counts.unsqueeze(1)
    positions = (class_offsets[query_classes].unsqueeze(1) + slots).clamp(max=num_columns - 1)
    columns = class_members[positions]
    member_similarity = similarity.gather(1, columns).masked_fill(~valid, -math.inf)
    best = member_similarity.max(dim=1, keepdim=True).values
    is_best = valid & (member_similarity == best)
    best_column = torch.where(is_best, columns, num_columns).min(dim=1, keepdim=True).values
    above = (similarity > best).sum(dim=1)
    column_index = torch.arange(num_columns, device=similarity.device)
    tied_before = ((similarity == best) & (column_index < best_column)).sum(dim=1)
    return above + tied_before + 1


def _retrieval(
    query: Tensor,
    query_ids: Tensor,
    gallery: Tensor,
    gallery_ids: Tensor,
    ks: tuple[int, ...],
    exclude_self: bool,
    chunk_size: int | None,
    memory_budget_bytes: int,
    progress: bool | None,
) -> dict[str, float]:
    num_queries, num_gallery = query.shape[0], gallery.shape[0]
    device = query.device
    num_classes = int(torch.maximum(query_ids.max(), gallery_ids.max())) + 1
    gallery_counts = torch.bincount(gallery_ids, minlength=num_classes)
    num_relevant = gallery_counts[query_ids] - int(exclude_self)
    # The sorted list must reach every R (MAP@R, R-precision); Recall@K for K beyond
    # it comes from the rank of the first hit, counted exactly for the few queries
    # whose first hit is not in the list - much cheaper than a top-1000 for SOP.
    listed = max(int(num_relevant.max()), min(max(ks), _LISTED_RECALL_K), 1)
    count_beyond_list = max(ks) > listed
    if count_beyond_list:
        # Gallery indices grouped by class (CSR): the candidates for each query's j*.
        class_members = torch.argsort(gallery_ids, stable=True)
        class_offsets = torch.cumsum(gallery_counts, 0) - gallery_counts

    if chunk_size is None:
        chunk_size = chunk_size_for_memory_budget(num_gallery, listed + 1, memory_budget_bytes)
    chunk_size = min(_check_positive_int(chunk_size, "chunk_size"), num_queries)
    count_rows = max(1, chunk_size // 4)  # rank counting's temporaries: 8 B x rows x gallery
    starts = range(0, num_queries, chunk_size)
    if progress is None:
        show = len(starts) > 1 and num_queries * num_gallery >= _PROGRESS_MIN_PAIRS
    else:
        show = bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_queries, desc="retrieval", unit="query", leave=False)

    # One buffer for every chunk's similarities: re-allocating ~budget bytes per chunk
    # would page-fault the whole block each time.
    buffer = torch.empty(chunk_size, num_gallery, dtype=torch.float32, device=device)
    totals: dict[str, float] = {}
    try:
        for start in starts:
            stop = min(start + chunk_size, num_queries)
            similarity = buffer[: stop - start]
            torch.mm(query[start:stop], gallery.T, out=similarity)
            if exclude_self:
                rows = torch.arange(stop - start, device=device)
                similarity[rows, rows + start] = -math.inf
            chunk_ids, chunk_relevant = query_ids[start:stop], num_relevant[start:stop]
            neighbours = _top_neighbours(similarity, listed)
            relevant = gallery_ids[neighbours] == chunk_ids.unsqueeze(1)
            first_hit = _first_hit_rank(relevant)
            if count_beyond_list:
                missing = ((first_hit > listed) & (chunk_relevant > 0)).nonzero().squeeze(1)
                for block in missing.split(count_rows) if missing.numel() else ():
                    first_hit[block] = _rank_of_first_relevant(
                        similarity[block], chunk_ids[block], class_members, class_offsets,
                        gallery_counts,
                    )
            # Queries with no relevant item: beyond any K.
            first_hit = torch.where(chunk_relevant > 0, first_hit, num_gallery + 1)
            for name, value in _metric_sums(relevant, first_hit, chunk_relevant, ks).items():
                totals[name] = totals.get(name, 0.0) + value
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    return _means(totals, ks)


def _prepare_self(embeddings, labels, normalize: bool):
    emb = _as_embedding_tensor(embeddings, "embeddings")
    label_array = _labels_to_array(labels, "labels")
    if label_array.shape[0] != emb.shape[0]:
        raise ValueError(
            f"embeddings has {emb.shape[0]} rows but labels has {label_array.shape[0]} "
            "entries; pass one label per embedding."
        )
    if emb.shape[0] < 2:
        raise ValueError(
            f"retrieval needs at least 2 samples (each query searches the others), got "
            f"{emb.shape[0]}."
        )
    if normalize:
        emb = _normalised(emb, "embeddings")
    (ids,) = _class_ids(label_array)
    return emb, torch.from_numpy(ids).to(emb.device)


def _self_retrieval(embeddings, labels, ks, normalize, chunk_size, memory_budget_bytes, progress):
    emb, ids = _prepare_self(embeddings, labels, normalize)
    ks = _check_ks(ks, emb.shape[0] - 1, "other samples a query can retrieve (n - 1)")
    metrics = _retrieval(emb, ids, emb, ids, ks, True, chunk_size, memory_budget_bytes, progress)
    return metrics, emb, ids


def recall_at_k(
    embeddings,
    labels,
    ks: Sequence[int] | int = DEFAULT_KS,
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: bool | None = None,
) -> dict[int, float]:
    """Recall@K of every sample against all the others, as {K: recall}.

    embeddings: (n, dim) torch tensor (CPU or CUDA) or array; labels: (n,) class
    labels of any sortable type. A query hits at K if any of its K nearest other
    samples shares its label (cosine similarity with normalize=True, raw inner
    product otherwise; ties by index). Averaged over all n queries.
    `chunk_size=None` derives the chunk from `memory_budget_bytes`; `progress=None`
    shows a tqdm bar for large evaluations (from 1e8 query-gallery pairs, split in
    several chunks), False never, True always.
    """
    metrics, _, _ = _self_retrieval(
        embeddings, labels, ks, normalize, chunk_size, memory_budget_bytes, progress
    )
    return {
        int(name.split("@")[1]): value
        for name, value in metrics.items()
        if name.startswith("recall@")
    }


def map_at_r(embeddings, labels, **options) -> float:
    """MAP@R of every sample against the others (Musgrave et al. 2020).

    Queries whose class has no other sample are left out of the mean (NaN if all
    are). Keyword options as in `recall_at_k`.
    """
    return _self_retrieval(embeddings, labels, (1,), **_options(options))[0]["map@r"]


def r_precision(embeddings, labels, **options) -> float:
    """R-precision of every sample against the others (Musgrave et al. 2020).

    Queries whose class has no other sample are left out of the mean (NaN if all
    are). Keyword options as in `recall_at_k`.
    """
    return _self_retrieval(embeddings, labels, (1,), **_options(options))[0]["r_precision"]


def precision_at_1(embeddings, labels, **options) -> float:
    """Precision@1 of every sample against the others (Musgrave et al. 2020).

    Unlike Recall@1, queries whose class has no other sample are left out of the
    mean. Keyword options as in `recall_at_k`.
    """
    return _self_retrieval(embeddings, labels, (1,), **_options(options))[0]["precision@1"]


def _options(options: dict) -> dict:
    allowed = {
        "normalize": True,
        "chunk_size": None,
        "memory_budget_bytes": DEFAULT_MEMORY_BUDGET_BYTES,
        "progress": None,
    }
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(allowed)}")
    return {**allowed, **options}


def _kmeans_nmi(points: Tensor, ids: Tensor, n_init: int, random_state: int, max_iter: int) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    n_init = _check_positive_int(n_init, "n_init")
    num_classes = int(ids.max()) + 1
    kmeans = KMeans(
        n_clusters=num_classes, n_init=n_init, random_state=random_state, max_iter=max_iter
    )
    clusters = kmeans.fit_predict(points.cpu().numpy())
    return float(normalized_mutual_info_score(ids.cpu().numpy(), clusters))


def nmi(
    embeddings,
    labels,
    *,
    normalize: bool = True,
    n_init: int = 1,
    random_state: int = 0,
    max_iter: int = 300,
) -> float:
    """NMI between the labels and a k-means clustering with one cluster per class.

    scikit-learn `KMeans(n_clusters=classes, n_init=n_init, random_state=random_state)`
    (one k-means++ start by default, which is what scikit-learn's own "auto" picks
    for k-means++) on the embeddings (L2-normalised first if `normalize`), then
    `normalized_mutual_info_score(labels, clusters)` (arithmetic normalisation).
    Deterministic for a fixed `random_state`.
    """
    emb, ids = _prepare_self(embeddings, labels, normalize)
    return _kmeans_nmi(emb, ids, n_init, random_state, max_iter)


def evaluate(
    embeddings,
    labels,
    ks: Sequence[int] | int = DEFAULT_KS,
    *,
    include_nmi: bool = True,
    normalize: bool = True,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: bool | None = None,
    nmi_n_init: int = 1,
    nmi_random_state: int = 0,
) -> dict[str, float]:
    """All retrieval metrics of every sample against the others, from one k-NN pass.

    Returns {"recall@K" for K in ks, "precision@1", "r_precision", "map@r", and
    "nmi" if include_nmi} as floats. See the module docstring for the definitions
    and `recall_at_k` / `nmi` for the options.
    """
    metrics, emb, ids = _self_retrieval(
        embeddings, labels, ks, normalize, chunk_size, memory_budget_bytes, progress
    )
    if include_nmi:
        metrics["nmi"] = _kmeans_nmi(emb, ids, nmi_n_init, nmi_random_state, 300)
    return metrics


def evaluate_query_gallery(
    query_embeddings,
    query_labels,
    gallery_embeddings,
    gallery_labels,
    ks: Sequence[int] | int = (1, 10, 20, 30),
    *,
    normalize: bool = True,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: bool | None = None,
) -> dict[str, float]:
    """Retrieval metrics of separate queries against a gallery (the In-Shop protocol).

    Nothing is excluded: a query's neighbours are all gallery items, and R is the
    number of gallery items with the query's label. Recall@K is averaged over all
    queries (a query whose label is absent from the gallery counts as a miss);
    precision@1, R-precision and MAP@R over the queries with R > 0. The default ks
    are the In-Shop ones. No NMI: it is a clustering score of one set.
    """
    query = _as_embedding_tensor(query_embeddings, "query_embeddings")
    gallery = _as_embedding_tensor(gallery_embeddings, "gallery_embeddings")
    query_array = _labels_to_array(query_labels, "query_labels")
    gallery_array = _labels_to_array(gallery_labels, "gallery_labels")
    for emb, lab, name in ((query, query_array, "query"), (gallery, gallery_array, "gallery")):
        if lab.shape[0] != emb.shape[0]:
            raise ValueError(
                f"{name}_embeddings has {emb.shape[0]} rows but {name}_labels has "
                f"{lab.shape[0]} entries; pass one label per embedding."
            )
        if emb.shape[0] < 1:
            raise ValueError(f"{name}_embeddings is empty; need at least one {name}.")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query embeddings have dimension {query.shape[1]} but gallery embeddings "
            f"{gallery.shape[1]}; embed both with the same model."
        )
    if query.device != gallery.device:
        raise ValueError(
            f"query embeddings are on {query.device} but gallery embeddings on "
            f"{gallery.device}; move both to one device."
        )
    ks = _check_ks(ks, gallery.shape[0], "gallery items")
    if normalize:
        query = _normalised(query, "query_embeddings")
        gallery = _normalised(gallery, "gallery_embeddings")
    query_ids, gallery_ids = (
        torch.from_numpy(ids).to(query.device) for ids in _class_ids(query_array, gallery_array)
    )
    return _retrieval(
        query, query_ids, gallery, gallery_ids, ks, False, chunk_size,
        memory_budget_bytes, progress,
    )
