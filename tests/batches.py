"""Batches for the loss tests: P x K and unbalanced, clustered Gaussian embeddings."""
import torch


def pk_batch(p: int, k: int, dim: int = 16, seed: int = 0, dtype=torch.float64, spread: float = 1.0):
    """A P x K batch: P classes, K samples each, embeddings = class centre + noise.

    `spread` scales the noise: small -> tight clusters (many anchors with nothing mined),
    large -> overlapping classes (everything mined).
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(p, dim, generator=g, dtype=dtype)
    labels = torch.arange(p).repeat_interleave(k)
    embeddings = centres[labels] + spread * torch.randn(p * k, dim, generator=g, dtype=dtype)
    return embeddings, labels


def unbalanced_batch(sizes, dim: int = 16, seed: int = 0, dtype=torch.float64, spread: float = 1.0):
    """Classes of the given sizes (singletons allowed), shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    centres = torch.randn(len(sizes), dim, generator=g, dtype=dtype)
    embeddings = centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=dtype)
    return embeddings, labels


def value_and_grad(fn, embeddings, labels):
    """(loss value, its gradient with respect to the embeddings), on a fresh leaf copy."""
    e = embeddings.detach().clone().requires_grad_(True)
    value = fn(e, labels)
    (grad,) = torch.autograd.grad(value, e)
    return value.detach(), grad


def class_order_preserving_permutation(labels, seed):
    """Shuffle the batch but keep each class's samples in their relative order.

    N-pair takes each class's first two samples as its (anchor, positive), so it is
    invariant to this kind of permutation only; every other loss to any permutation.
    """
    g = torch.Generator().manual_seed(seed)
    slots = torch.randperm(len(labels), generator=g)
    permutation = torch.empty_like(slots)
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        permutation[slots[members].sort().values] = members
    return permutation
