"""P x K class-balanced batch sampling for deep metric learning.

Pair-based losses need positives in every batch: a batch of P distinct classes
with K samples each gives every anchor K - 1 positives and (P - 1) K negatives.
The paper (and its official code) trains on CUB with P = 16, K = 5 (batch 80).

How one pass over the data is built (``replace=False``)
-------------------------------------------------------
1. Every class's indices are shuffled and cut into chunks of K. A last, short
   chunk is topped up with other samples of the same class, so a chunk never holds
   one sample twice and every sample lies in some chunk.
2. Batches take one chunk from each of P distinct classes. Classes are drawn at
   random with probability proportional to the chunks they have left, *except* that
   classes whose remaining chunks would otherwise not fit into the remaining batches
   are taken first. That keeps the whole pass schedulable: a pass uses all its
   chunks except fewer than P, which are dropped, as long as no class holds more
   than 1/P of all chunks. So every sample is visited in a pass except at most
   (P - 1) * K (none if the number of chunks is a multiple of P).
3. If ``num_batches`` asks for more batches than one pass holds, a fresh pass is
   drawn and the stream continues.

Randomness comes from ``numpy.random.default_rng((seed, epoch))``: the same seed and
epoch give the same batches on every machine; call :meth:`PKSampler.set_epoch` once
per epoch (as with ``torch.utils.data.DistributedSampler``) to get a different, still
reproducible, order. Without ``set_epoch`` every iteration repeats epoch 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["PKSampler"]

# How many offending classes an error message lists before it says "and N more".
_MAX_CLASSES_LISTED = 10


def _labels_to_numpy(labels) -> np.ndarray:
    """Accept a list, a numpy array or a torch tensor of class labels."""
    if hasattr(labels, "detach"):  # a torch tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(
            f"PKSampler needs a 1-D sequence of class labels (one per sample); "
            f"got an array of shape {array.shape}."
        )
    if array.size == 0:
        raise ValueError("PKSampler got an empty list of labels: the data set has no samples.")
    return array


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"PKSampler: {name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"PKSampler: {name} must be at least 1, got {value}.")
    return int(value)


def _max_schedulable_batches(chunk_counts: np.ndarray, p: int) -> int:
    """Largest b such that b batches of p distinct classes fit into the chunks.

    b batches fit iff sum_c min(r_c, b) >= b * p (a class gives at most one chunk per
    batch). The left side minus the right is concave in b and zero at b = 0, so the
    feasible b form an interval [0, b_max]; b_max <= total // p.
    """
    upper = int(chunk_counts.sum()) // p
    counts_sorted = np.sort(chunk_counts)
    # Scan down from the upper bound; it is usually feasible at once.
    for b in range(upper, 0, -1):
        if int(np.minimum(counts_sorted, b).sum()) >= b * p:
            return b
    return 0


class PKSampler:
    """Batch sampler yielding lists of P x K indices: P distinct classes, K samples each.

    Use it as ``DataLoader(dataset, batch_sampler=PKSampler(dataset.labels, p=16, k=5))``.
    The indices in a batch are grouped by class: ``[c1]*K + [c2]*K + ...``.

    Args:
        labels: the class label of every sample of the data set (list, numpy array or
            tensor; any sortable, hashable values). Data sets in :mod:`dmlutils.data`
            expose it as ``dataset.labels`` without decoding any image.
        p: classes per (global) batch.
        k: samples per class in a batch.
        num_batches: batches per epoch (``len(sampler)``). Default: the batches of one
            pass over the data (about ``len(labels) // (p * k)``).
        seed: base seed; with the epoch it fixes every batch.
        replace: if False, every class needs at least K samples (else ValueError). If
            True, a class with fewer than K samples fills its K slots by repeating its
            own samples (all of them appear, some twice); larger classes are still
            sampled without repetition within a batch.
        drop_small_classes: if True, classes with fewer than K samples are left out
            (ignored when ``replace=True``). Off by default so that a data set that
            silently loses classes is a deliberate choice.
        num_replicas, rank: for distributed training. Every rank builds the same global
            batch (same seed and epoch) and yields only its share: the classes of the
            batch are split into ``num_replicas`` disjoint groups of ``p // num_replicas``
            classes, so each rank's part is itself a (p / num_replicas) x K batch.
            ``p`` must be divisible by ``num_replicas``.
    """

    def __init__(
        self,
        labels: Sequence,
        p: int,
        k: int,
        num_batches: int | None = None,
        seed: int = 0,
        replace: bool = False,
        drop_small_classes: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.p = _check_positive_int("p", p)
        self.k = _check_positive_int("k", k)
        self.num_replicas = _check_positive_int("num_replicas", num_replicas)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"PKSampler: rank must be an int in [0, num_replicas={num_replicas}), got {rank!r}.")
        self.rank = int(rank)
        if self.p % self.num_replicas:
            raise ValueError(
                f"PKSampler: p={self.p} classes per batch cannot be split evenly over "
                f"num_replicas={self.num_replicas} ranks; choose p divisible by num_replicas "
                f"(e.g. p={self.num_replicas * max(1, self.p // self.num_replicas)})."
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"PKSampler: seed must be a non-negative int, got {seed!r}.")
        self.seed = int(seed)
        self.replace = bool(replace)
        self.epoch = 0

        label_array = _labels_to_numpy(labels)
        classes, inverse = np.unique(label_array, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        sizes = np.bincount(inverse, minlength=len(classes))
        per_class = np.split(order, np.cumsum(sizes)[:-1])

        too_small = sizes < self.k
        if too_small.any() and not self.replace:
            if drop_small_classes:
                keep = ~too_small
                classes = classes[keep]
                per_class = [idx for idx, kept in zip(per_class, keep) if kept]
                sizes = sizes[keep]
            else:
                raise ValueError(self._small_classes_message(classes[too_small], sizes[too_small]))

        if len(classes) < self.p:
            dropped = " after dropping classes with fewer than k samples" if drop_small_classes else ""
            raise ValueError(
                f"PKSampler needs p={self.p} distinct classes per batch, but the labels "
                f"contain only {len(classes)} class(es){dropped}. Use p <= {len(classes)}."
            )

        self.classes = classes
        self._class_indices = per_class
        # Chunks of K per class in one pass: ceil(n / K), and 1 for a class smaller
        # than K (only possible with replace=True).
        self._chunk_counts = np.maximum(1, -(-sizes // self.k)).astype(np.int64)
        self._batches_per_pass = _max_schedulable_batches(self._chunk_counts, self.p)
        if num_batches is None:
            self.num_batches = self._batches_per_pass
        else:
            self.num_batches = _check_positive_int("num_batches", num_batches)

    # -- public API -------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Indices per yielded batch (this rank's share of the global P x K batch)."""
        return self.p * self.k // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (reproducibly)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"PKSampler.set_epoch: epoch must be a non-negative int, got {epoch!r}.")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.p // self.num_replicas
        for global_batch in self.global_batches():
            start = self.rank * per_rank * self.k
            yield global_batch[start : start + per_rank * self.k]

    def global_batches(self) -> Iterator[list[int]]:
        """The full P x K batches of the current epoch (identical on every rank)."""
        rng = np.random.default_rng((self.seed, self.epoch))
        produced = 0
        while produced < self.num_batches:
            for batch in self._one_pass(rng):
                yield batch
                produced += 1
                if produced == self.num_batches:
                    return

    # -- internals --------------------------------------------------------------

    def _small_classes_message(self, small_classes: np.ndarray, small_sizes: np.ndarray) -> str:
        listed = ", ".join(
            f"class {c!r} ({n} sample{'s' if n != 1 else ''})"
            for c, n in zip(small_classes[:_MAX_CLASSES_LISTED].tolist(), small_sizes[:_MAX_CLASSES_LISTED].tolist())
        )
        more = len(small_classes) - _MAX_CLASSES_LISTED
        if more > 0:
            listed += f", and {more} more"
        return (
            f"PKSampler needs k={self.k} samples of every class, but {len(small_classes)} "
            f"class(es) have fewer: {listed}. Fix: pass replace=True (small classes repeat "
            f"their samples to fill K slots), use a smaller k (the smallest class has "
            f"{int(small_sizes.min())}), or drop_small_classes=True to leave those classes out."
        )

    def _class_chunks(self, rng: np.random.Generator, indices: np.ndarray) -> list[np.ndarray]:
        """Shuffle one class and cut it into chunks of exactly K indices."""
        k = self.k
        n = len(indices)
        shuffled = rng.permutation(indices)
        if n < k:  # only reachable with replace=True: all samples, then repeats
            extra = rng.choice(indices, size=k - n, replace=True)
            return [np.concatenate([shuffled, extra])]
        n_full = n // k
        chunks = [shuffled[i * k : (i + 1) * k] for i in range(n_full)]
        if n % k:
            tail = shuffled[n_full * k :]
            # Top up from the front of the permutation: those indices sit in the first
            # full chunk (n >= k), never in the tail, so the chunk holds K distinct samples.
            chunks.append(np.concatenate([tail, shuffled[: k - len(tail)]]))
        return chunks

    def _one_pass(self, rng: np.random.Generator) -> Iterator[list[int]]:
        p = self.p
        queues = [self._class_chunks(rng, idx) for idx in self._class_indices]
        remaining = self._chunk_counts.copy()
        n_classes = len(remaining)
        for batches_left in range(self._batches_per_pass, 0, -1):
            # Classes with at least `batches_left` chunks can give one to every
            # remaining batch; the schedule stays feasible only if at least
            # H - slack of them are taken now (see _max_schedulable_batches).
            slack = int(np.minimum(remaining, batches_left).sum()) - batches_left * p
            heavy = np.flatnonzero(remaining >= batches_left)
            n_forced = max(0, len(heavy) - slack)
            chosen = self._weighted_pick(rng, heavy, remaining, n_forced)
            available = np.ones(n_classes, dtype=bool)
            available[chosen] = False
            available &= remaining > 0
            rest = self._weighted_pick(rng, np.flatnonzero(available), remaining, p - len(chosen))
            chosen = np.concatenate([chosen, rest])
            rng.shuffle(chosen)  # forced (large) classes should not always come first
            batch = []
            for c in chosen:
                batch.extend(queues[c].pop().tolist())
            remaining[chosen] -= 1
            yield batch

    @staticmethod
    def _weighted_pick(rng: np.random.Generator, candidates: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
        """n distinct candidates, drawn with probability proportional to their weight."""
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        w = weights[candidates].astype(np.float64)
        return rng.choice(candidates, size=n, replace=False, p=w / w.sum())
