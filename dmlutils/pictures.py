"""What a trained model does, kept small beside its run record: the pictures' data.

A run on the test split writes `<record>.pictures.json` beside its record
(`results/<profile>/<name>/seed_<n>.pictures.json`) at its final evaluation, with the
record's provenance. It holds, for the evaluation set (the same images for every run and
every profile on the CUB test split):

* `queries`: 24 fixed test images (seeded, one per class of 24 classes) and each one's 8
  nearest neighbours by cosine similarity of the final embeddings (the query itself left
  out): what a retrieval grid shows;
* `map`: a 2-D t-SNE map of every test embedding (scikit-learn, PCA initialisation,
  perplexity 30, `random_state=0`), with its labels: the classes spread before and after;
* `batch`: one fixed batch of 16 classes x 5 test images, its similarity matrix S and its
  pair weights W = -dL/dS in the run's loss's closed form (`loss.pair_weights`) at
  iteration 0 and at the end: the General Pair Weighting of chapters 2-4 on real data.

Images are named by their path inside the data set's folder (e.g.
`images/200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg`), never by a machine
path; a chapter finds them under its data root. Similarities are rounded to 4 decimals,
weights to 3 significant figures, map coordinates to 2, and the file is written without indentation: about
250 KB for the CUB test split.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

PICTURES_VERSION = 1
QUERIES, NEIGHBOURS = 24, 8
BATCH_CLASSES, BATCH_IMAGES = 16, 5
SEED = 0
MAP_METHOD = "t-SNE (scikit-learn; PCA initialisation, perplexity 30, random_state 0)"


def pictures_path(record_path) -> Path:
    """`seed_0.json` -> `seed_0.pictures.json`."""
    record_path = Path(record_path)
    return record_path.with_name(f"{record_path.stem}.pictures.json")


def fixed_queries(labels) -> np.ndarray:
    """Indices of `QUERIES` images of distinct classes, the same for the same labels."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(SEED)
    classes = np.sort(rng.choice(np.unique(labels), size=min(QUERIES, len(np.unique(labels))), replace=False))
    return np.array([rng.choice(np.flatnonzero(labels == c)) for c in classes], dtype=np.int64)


def fixed_batch(labels) -> np.ndarray:
    """Indices of a P x K batch (`BATCH_CLASSES` x `BATCH_IMAGES`) of the evaluation set,
    grouped by class: the same for the same labels."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(SEED + 1)
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    eligible = np.array([c for c, n in counts.items() if n >= BATCH_IMAGES])
    classes = np.sort(rng.choice(eligible, size=min(BATCH_CLASSES, len(eligible)), replace=False))
    return np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), BATCH_IMAGES, replace=False)) for c in classes])


def image_ids(dataset, indices) -> list[str]:
    """Names of images of `dataset` (a data set or a ClassSubset of one) by their place in
    the data set's folder; synthetic images by their index."""
    base, positions = dataset, np.asarray(indices)
    while hasattr(base, "indices") and hasattr(base, "dataset"):  # ClassSubset chains
        positions, base = np.asarray(base.indices)[positions], base.dataset
    if not hasattr(base, "paths"):
        return [f"synthetic/{int(i)}" for i in positions]
    root = str(getattr(base, "root", ""))
    return [Path(os.path.relpath(base.paths[i], root)).as_posix() if root else Path(base.paths[i]).name for i in positions]


def _rounded(array, digits: int = 3) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def _significant(array, digits: int = 3) -> list:
    """Rounded to `digits` significant figures: pair weights span decades (a negative pair's
    weight at iteration 0 can be 1e-5), so fixed decimals would zero the small ones."""
    values = np.asarray(array, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(values).tolist()


def neighbours(embeddings: torch.Tensor, queries) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of each query's `NEIGHBOURS` nearest other images."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=1)
    similarity = e[torch.as_tensor(queries)] @ e.T
    similarity[torch.arange(len(queries)), torch.as_tensor(queries)] = -float("inf")  # not itself
    values, indices = similarity.topk(NEIGHBOURS, dim=1)
    return indices.numpy(), values.numpy()


def embedding_map(embeddings: torch.Tensor) -> np.ndarray:
    """2-D t-SNE coordinates of L2-normalised embeddings (`MAP_METHOD`)."""
    from sklearn.manifold import TSNE

    e = torch.nn.functional.normalize(embeddings.float(), dim=1).numpy()
    perplexity = min(30.0, (len(e) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=SEED).fit_transform(e)


def batch_weights(loss, batch_embeddings: torch.Tensor, labels) -> dict:
    """S and, when the loss has a closed form of its pair weights, W of one batch."""
    from .losses import cosine_similarity_matrix

    S = cosine_similarity_matrix(batch_embeddings.float())
    labels = torch.as_tensor(labels)
    try:
        W = loss.pair_weights(S, labels)
    except (NotImplementedError, AttributeError, TypeError):
        W = None  # not a function of S alone (triplet-center's class centres)
    # S to 4 decimals: mining compares similarities within a margin, and W follows from S
    return {"similarity": _rounded(S, 4), "weights": None if W is None else _significant(W.detach(), 3)}


def make_pictures(record: dict, eval_set, final_embeddings: torch.Tensor, start_batch: torch.Tensor | None, loss,
                  loss_name: str | None = None) -> dict:
    """The pictures' data of a run (or of the untrained baseline, `start_batch=None`)."""
    from .provenance import code_version

    labels = np.asarray(eval_set.labels)
    queries, batch = fixed_queries(labels), fixed_batch(labels)
    hits, similarity = neighbours(final_embeddings, queries)
    named = sorted(set(queries.tolist()) | set(hits.ravel().tolist()) | set(batch.tolist()))
    coordinates = embedding_map(final_embeddings)
    final_iteration = record["final"]["iteration"] if "final" in record else record["evaluations"][-1]["iteration"]
    states = [(0, start_batch), (final_iteration, final_embeddings[torch.as_tensor(batch)])] if start_batch is not None else \
        [(final_iteration, final_embeddings[torch.as_tensor(batch)])]
    return {
        "kind": "pictures",
        "pictures_version": PICTURES_VERSION,
        "profile": record["profile"],
        "profile_version": record["profile_version"],
        "loss": record.get("loss"),
        "seed": record["seed"],
        "git": code_version(),
        "record_git": record["git"],
        "data": record["data"].get("test"),
        "evaluated_on": record["evaluated_on"],
        "images": dict(zip(map(str, named), image_ids(eval_set, named))),
        "queries": {
            "index": queries.tolist(),
            "label": labels[queries].tolist(),
            "neighbours": hits.tolist(),
            "neighbour_labels": labels[hits].tolist(),
            "similarity": _rounded(similarity),
        },
        "map": {"method": MAP_METHOD, "x": _rounded(coordinates[:, 0], 2), "y": _rounded(coordinates[:, 1], 2), "label": labels.tolist()},
        "batch": {
            "index": batch.tolist(),
            "label": labels[batch].tolist(),
            "loss": loss_name or record.get("loss"),
            "iterations": [it for it, _ in states],
            "states": [batch_weights(loss, e, labels[batch]) for _, e in states],
        },
    }


def write_pictures(record_path, pictures: dict) -> Path:
    """Write a run's pictures beside its record, atomically and without indentation (one
    number per line would triple the file)."""
    from .provenance import _jsonable, atomic_write_bytes

    path = pictures_path(record_path)
    text = json.dumps(pictures, separators=(",", ":"), default=_jsonable) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
    return path


def read_pictures(path) -> dict:
    """A pictures file; a missing or damaged one raises an error naming the file and the
    command that (re-)makes it (`dmlutils.records.read_record`)."""
    from .records import DamagedRecord, read_record, remake_command

    path = Path(path)
    if not path.exists():
        command = remake_command(path) or "python -m dmlutils verify --pictures --runs <name>:<seed>"
        raise FileNotFoundError(f"no pictures file {path}: its run has not drawn one yet. Make it, from the repository root: {command}")
    data = read_record(path)
    if data.get("kind") != "pictures" or data.get("pictures_version") != PICTURES_VERSION:
        raise DamagedRecord(f"{path} is not a pictures file of version {PICTURES_VERSION}; re-make it: {remake_command(path)}")
    return data
