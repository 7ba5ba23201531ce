"""Cross-batch memory (XBM; Wang, Zhang, Huang, Scott, CVPR 2020, arXiv 1912.06798).

Embeddings drift slowly once training settles ("slow drift"), so the embeddings of the
last few iterations are good stand-ins for what the current model would compute. XBM
keeps them in a first-in-first-out queue and lets the current batch find its positives
and (hard) negatives among many more samples than one batch holds.

What this module computes
-------------------------
`CrossBatchMemoryLoss(loss, memory_size)` holds a FIFO memory of up to `memory_size` past
embeddings and their labels (detached: the memory carries no gradient). Called on a batch
(E_B, y_B) of B rows with m <= memory_size rows (E_M, y_M) in memory, it

1. builds the references R = [E_B; E_M] (B + m rows; the current batch first, with its
   graph, the memory after it, newest entries first);
2. computes the loss with the B current rows as *anchors* against all B + m references,
   on the rectangular similarity S = normalise(E_B) normalise(R)^T (B x (B + m)); an
   anchor's positives are the references with its label except itself (column i of row i),
   its negatives the references with another label;
3. then (in training mode) pushes E_B, y_B into the memory, dropping the oldest entries
   beyond `memory_size`.

What it equals, exactly. For the multi-similarity loss every quantity of anchor i — its
mining thresholds (hardest positive / negative), its kept pairs and its two log-sum-exp
terms — is a function of row i of S alone. So with the per-anchor terms l_i of the square
MS loss on the batch [E_B; E_M],

    L_xbm = (1 / B) sum_{i in B} l_i([E_B; E_M]),

the mean of the *current batch's anchor rows* of the plain loss on the concatenated batch
(the plain loss is (1 / (B + m)) sum over all B + m rows). Its gradient reaches E_B through
both sides of those rows (as anchor, and as a reference of the other current anchors) and
never reaches the memory. With an empty memory it is the plain loss, value and gradient.
For the contrastive loss, a mean over positive pairs plus a mean over negative pairs, the
same restriction gives means over the pairs whose anchor is in the current batch.

Difference from the official XBM code. The authors' training loop adds two losses,
loss(batch vs batch) + weight * loss(batch vs memory), where the memory already holds the
current batch (detached) and no gradient flows through the reference side of the second
term. We compute one loss over [current batch (with gradient); past memory], the form that
reduces exactly to the plain loss when the memory is empty, so the XBM runs of the book
differ from the plain runs by the memory alone. The authors also start the memory after a
warm-up (e.g. 1,000 iterations), when the embeddings drift slowly enough; here that is the
caller's choice (`enabled` can be switched on at a given iteration).

Supported losses: those whose `from_similarity` accepts `reference_labels`
(`accepts_references = True`: `MultiSimilarityLoss` with all its mining / weighting
switches, and `ContrastiveLoss`); the rectangular S goes straight into the loss's own
code. Tested against the square losses with an empty memory, against per-anchor loops on
[E_B; E_M], and (contrastive) against pytorch-metric-learning's `CrossBatchMemory`.

Distributed training: wrap XBM inside `dmlutils.distributed.GlobalBatchLoss`, which hands it
the gathered global batch, so every rank keeps the same memory of global batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import LOSSES
from .losses.base import check_inputs, differentiable_zero

__all__ = [
    "CrossBatchMemory",
    "CrossBatchMemoryLoss",
    "with_cross_batch_memory",
]


class CrossBatchMemory(nn.Module):
    """A FIFO queue of at most `size` detached embeddings and their labels.

    `enqueue` puts a batch in front (copies, detached) and drops the oldest entries
    beyond `size`; `embeddings` / `labels` list the entries newest first. The contents are
    part of the state dict (as extra state), so a checkpoint resumes with the same memory.
    """

    def __init__(self, size: int):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"memory size must be a positive int (number of embeddings), got {size!r}.")
        self.size = size
        self.reset()

    def reset(self) -> None:
        """Empty the memory (the embedding size is fixed again by the next enqueue)."""
        self.embeddings: Tensor | None = None
        self.labels: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.embeddings is None else self.embeddings.shape[0]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        check_inputs(embeddings, labels)
        embeddings, labels = embeddings.detach(), labels.detach()
        if self.embeddings is None:
            stored_embeddings, stored_labels = embeddings[:0], labels[:0]
        else:
            if self.embeddings.shape[1] != embeddings.shape[1]:
                raise ValueError(
                    f"the memory holds {self.embeddings.shape[1]}-d embeddings, got {embeddings.shape[1]}-d; "
                    "use one embedding size per memory, or call reset()."
                )
            stored_embeddings = self.embeddings.to(embeddings.device, embeddings.dtype)
            stored_labels = self.labels.to(labels.device, labels.dtype)
        # torch.cat copies: later in-place changes to the caller's tensors cannot reach the memory.
        self.embeddings = torch.cat([embeddings, stored_embeddings])[: self.size]
        self.labels = torch.cat([labels, stored_labels])[: self.size]

    def get(self, like: Tensor, like_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(embeddings, labels) newest first, on the device and in the dtypes of the given tensors
        (an empty (0, dim) pair while the memory is empty)."""
        if self.embeddings is None:
            return like[:0].detach(), like_labels[:0]
        if self.embeddings.shape[1] != like.shape[1]:
            raise ValueError(
                f"the memory holds {self.embeddings.shape[1]}-d embeddings but the batch is {like.shape[1]}-d; "
                "use one embedding size per memory, or call reset()."
            )
        return self.embeddings.to(like.device, like.dtype), self.labels.to(like_labels.device, like_labels.dtype)

    def get_extra_state(self) -> dict:
        return {"size": self.size, "embeddings": self.embeddings, "labels": self.labels}

    def set_extra_state(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(
                f"checkpoint memory has size {state['size']} but this memory has size {self.size}; "
                "build the loss with the checkpoint's memory_size."
            )
        self.embeddings, self.labels = state["embeddings"], state["labels"]

    def extra_repr(self) -> str:
        return f"size={self.size}, filled={len(self)}"


def _check_supported(loss: nn.Module) -> None:
    if not getattr(loss, "accepts_references", False):
        supported = ", ".join(sorted(n for n, cls in LOSSES.items() if getattr(cls, "accepts_references", False)))
        raise ValueError(
            f"cross-batch memory needs a loss whose terms are per-anchor rows of S (supported: {supported}); "
            f"got {type(loss).__name__}. Train that loss without memory (xbm_size=0)."
        )


class CrossBatchMemoryLoss(nn.Module):
    """`loss` with the current batch as anchors against [current batch; memory of past batches].

    Args:
        loss: a loss with `accepts_references` (`MultiSimilarityLoss`, `ContrastiveLoss`).
        memory_size: how many past embeddings the FIFO memory keeps (>= 1).
        enabled: while False the memory is neither used nor filled (the plain loss): the
            XBM paper switches the memory on after a warm-up.

    forward(embeddings, labels) computes the loss against the memory *before* pushing the
    batch into it (pushing only in training mode, `self.training`; `eval()` freezes the
    memory). See the module docstring for what the value equals.
    """

    def __init__(self, loss: nn.Module, memory_size: int, enabled: bool = True):
        super().__init__()
        _check_supported(loss)
        self.loss = loss
        self.memory = CrossBatchMemory(memory_size)
        self.enabled = bool(enabled)

    @property
    def memory_size(self) -> int:
        return self.memory.size

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_inputs(embeddings, labels)
        if not self.enabled:
            return self.loss(embeddings, labels)
        if embeddings.shape[0] == 0:  # no anchor: nothing to learn, nothing to remember
            return differentiable_zero(embeddings)
        memory_embeddings, memory_labels = self.memory.get(embeddings, labels)
        references = torch.cat([embeddings, memory_embeddings])
        reference_labels = torch.cat([labels, memory_labels])
        S = F.normalize(embeddings, p=2, dim=1) @ F.normalize(references, p=2, dim=1).T
        value = self.loss.from_similarity(S, labels, reference_labels)
        if self.training:
            self.memory.enqueue(embeddings, labels)
        return value

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, enabled={self.enabled}"


def with_cross_batch_memory(loss: nn.Module, memory_size: int) -> nn.Module:
    """`loss` itself when memory_size is 0 (XBM off, the default), else `CrossBatchMemoryLoss`."""
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 0:
        raise ValueError(f"xbm_size must be an int >= 0 (0 turns the memory off), got {memory_size!r}.")
    if memory_size == 0:
        return loss
    return CrossBatchMemoryLoss(loss, memory_size)
