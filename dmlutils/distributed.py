"""Multi-process training on PyTorch's own engine: torchrun + torch.distributed (DDP).

Pair-based losses mine and weight pairs *within a batch*, so splitting a batch over
processes changes the loss unless every process sees the whole batch. The recipe here:

1. `PKSampler(labels, p, k, num_replicas=W, rank=r)` gives each of the W processes a
   disjoint (P / W) x K share of the same global P x K batch, in rank order.
2. The model is wrapped in `DistributedDataParallel` (DDP): one forward per process on its
   share, gradients *averaged* over processes after backward.
3. `GlobalBatchLoss(loss)` all-gathers every process's embeddings and labels
   (`gather_with_grad`) and evaluates the loss on the concatenated global batch, so mining
   and weighting see exactly what a single process with the whole batch would see. It also
   scales the gradient so that the DDP average equals the single-process gradient (below).

Why the gradient needs a factor of W (the world size)
----------------------------------------------------
Write the global batch as E = [E_0; E_1; ...; E_{W-1}] (E_r: the rows computed on rank r)
and L(E) for the loss of the whole batch. Rank r evaluates L on the gathered batch in
which only its own rows E_r are part of its autograd graph; the other ranks' rows arrive
through all_gather as constants. Its value is L(E), the same on every rank, but backward
only follows E_r:

    g_r = sum_{i in rank r} (dL/de_i) (de_i/dtheta)        (rank r's parameter gradient)

The single-process gradient on the concatenated batch is g = sum_r g_r (the chain rule,
each row reached once). DDP all-reduces with a *mean*: every rank ends with
(1/W) sum_r g_r = g / W. Multiplying each rank's backward signal by W therefore gives
exactly g on every rank.

Where the factor goes: we multiply the gradient flowing back into the local embeddings by
W (an identity in the forward pass), not the loss value. Scaling the value would also
scale the gradient of a loss's own parameters (the centres of `triplet_center`), which
every rank computes *in full* from the gathered batch — not as a share — and which DDP
does not average (the loss is not inside the DDP module); those would come out W times
too large. Scaling only the embedding path leaves them exact (identical on every rank,
so the ranks' optimisers stay in step), and the value `GlobalBatchLoss` returns is the
global-batch loss itself, the number a single-process run logs.

Launching on N GPUs
-------------------
    torchrun --nproc_per_node N -m dmlutils train --profile paper --loss multi_similarity

torchrun starts N processes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in each; `setup_from_env()` reads them, picks the NCCL backend on CUDA (one
GPU per process, `cuda:LOCAL_RANK`) and gloo on CPU, and initialises the process group.
Run without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) it initialises nothing, and every
helper here degrades to the single-process behaviour. The global batch stays P x K
(P divisible by N); the learning rate and number of iterations stay those of the profile,
since the averaged gradient equals the single-process one.

What the training loop does with these helpers
----------------------------------------------
* `context = setup_from_env(device)` first, `cleanup()` last (in a `finally`).
* The same seed on every rank; `PKSampler(..., num_replicas=context.world_size,
  rank=context.rank)`; random draws that depend on a sample's position in the batch
  (e.g. which cached view) drawn for the whole global batch, then sliced to this rank's
  rows, so that N processes reproduce one.
* `model = wrap_model(model.to(context.device), context)`, and every training forward
  through the wrapper: DDP synchronises gradients only for its own `forward`, so a call to
  another method (`model.module.forward_from_block`) trains each rank on its own gradient.
  BatchNorm in training mode normalises per rank; freeze it (the paper does) or convert
  it with `nn.SyncBatchNorm.convert_sync_batchnorm` for single-process equivalence.
* `loss = GlobalBatchLoss(loss)` (around a cross-batch memory, if any).
* Only `is_main_process()` writes run records and checkpoints (of `unwrap_model(model)`);
  evaluation on rank 0 while the others wait in `barrier()`.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "setup_from_env",
    "cleanup",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "scale_gradient",
    "gather_with_grad",
    "GlobalBatchLoss",
    "wrap_model",
    "unwrap_model",
]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = "launch with: torchrun --nproc_per_node N -m dmlutils train ..."


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes, its device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --- process group --------------------------------------------------------------------


def _int_from_env(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer; {LAUNCH_HINT}") from None


def _choose_device(device, local_rank: int) -> torch.device:
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_from_env(
    device: str | torch.device | None = None,
    backend: str | None = None,
    timeout_seconds: float = 1800.0,
) -> DistributedContext:
    """Initialise torch.distributed from torchrun's environment; return this process's context.

    * No WORLD_SIZE, or WORLD_SIZE=1: a single process. Nothing is initialised; the context
      has rank 0, world size 1, and `device` (default: CUDA if available, else CPU).
    * WORLD_SIZE > 1: RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT must be set (torchrun
      sets them). The device is `cuda:LOCAL_RANK` when CUDA is available (or `device` if
      given, e.g. "cpu" to force CPU processes), the backend NCCL on CUDA and gloo on CPU
      unless `backend` says otherwise.
    * Already initialised (a second call): the existing group's context is returned.
    """
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        current = dist.get_backend()
        chosen = _choose_device(device, local_rank) if device is not None else (
            torch.device("cuda", local_rank) if current == "nccl" else torch.device("cpu")
        )
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, chosen, current)

    world_size = _int_from_env("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1, got {world_size}; {LAUNCH_HINT}")
    if world_size == 1:
        local_rank = _int_from_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        return DistributedContext(0, 1, local_rank, _choose_device(device, local_rank), None)

    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} asks for distributed training, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; {LAUNCH_HINT} (torchrun sets all of "
            f"{', '.join(TORCHRUN_VARIABLES)})."
        )
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; install a build with distributed support.")
    rank, local_rank = _int_from_env("RANK"), _int_from_env("LOCAL_RANK")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world_size}); {LAUNCH_HINT}")
    chosen = _choose_device(device, local_rank)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {chosen} requested but CUDA is not available; pass device='cpu'.")
        if chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"process with LOCAL_RANK={local_rank} wants {chosen}, but this machine has "
                f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node <= {torch.cuda.device_count()}."
            )
        torch.cuda.set_device(chosen)
    if backend is None:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_seconds),
    )
    return DistributedContext(rank, world_size, local_rank, chosen, backend)


def cleanup() -> None:
    """Destroy the process group if one was initialised (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a run that is not distributed: the process that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op without a process group)."""
    if is_distributed():
        dist.barrier()


# --- the global batch -------------------------------------------------------------------


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """`x` unchanged, but the gradient reaching `x` in backward is multiplied by `factor`."""
    return _ScaleGradient.apply(x, float(factor))


def _all_gather(tensor: Tensor, world_size: int) -> list[Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def gather_with_grad(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(embeddings, labels) of the global batch: every rank's rows, concatenated in rank order.

    This rank's rows are the input tensor itself (its autograd graph is kept); the other
    ranks' rows are constants. Without a process group, or with one process, the inputs
    are returned unchanged. Every rank must pass the same number of rows (PKSampler's
    shards are equal); otherwise every rank raises the same ValueError.
    """
    if not is_distributed():
        return embeddings, labels
    if embeddings.dim() != 2 or labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"gather_with_grad needs embeddings of shape (batch, dim) and one label per row, got "
            f"{tuple(embeddings.shape)} and {tuple(labels.shape)}."
        )
    world_size, rank = dist.get_world_size(), dist.get_rank()
    # all_gather needs equal shapes everywhere: compare them first, so that a mismatch is a
    # clear error on every rank rather than a hang or garbage rows.
    shape = torch.tensor(list(embeddings.shape), dtype=torch.int64, device=embeddings.device)
    shapes = [tuple(s.tolist()) for s in _all_gather(shape, world_size)]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"gather_with_grad needs the same (batch, dim) on every rank, got {shapes} (rank order); "
            "use PKSampler(..., num_replicas=world_size, rank=rank), whose shards are equal, "
            "and the same embedding size everywhere."
        )
    embedding_parts = _all_gather(embeddings.detach(), world_size)
    label_parts = _all_gather(labels, world_size)
    embedding_parts[rank] = embeddings  # the local rows keep their graph
    label_parts[rank] = labels
    return torch.cat(embedding_parts), torch.cat(label_parts)


class GlobalBatchLoss(nn.Module):
    """`loss` evaluated on the global batch of all ranks, its gradient right under DDP.

    forward(embeddings, labels) returns loss(all embeddings, all labels) — the value a
    single process with the concatenated batch computes, identical on every rank — while
    the gradient reaching this rank's embeddings is multiplied by the world size W, so that
    DDP's average over ranks equals the single-process gradient (derivation in the module
    docstring). Outside a process group it is `loss` itself.

    The wrapped loss sees the global batch, so anything with state (the cross-batch memory
    of `dmlutils.xbm`) goes inside: `GlobalBatchLoss(CrossBatchMemoryLoss(loss, M))` keeps
    one identical memory of global batches on every rank.
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        if not callable(loss):
            raise ValueError(f"GlobalBatchLoss wraps a loss module, got {type(loss).__name__}.")
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        world_size = get_world_size() if is_distributed() else 1
        if world_size > 1:
            embeddings = scale_gradient(embeddings, world_size)
        return self.loss(*gather_with_grad(embeddings, labels))


# --- the model ----------------------------------------------------------------------------


def wrap_model(model: nn.Module, context: DistributedContext, **ddp_options) -> nn.Module:
    """`model` in DistributedDataParallel when the run is distributed, else `model` itself.

    The model must already be on `context.device`. DDP synchronises gradients only for
    what runs through its own `forward`: call the wrapper, not a method of `model`.
    """
    if not context.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_options)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP (for state dicts, evaluation and methods other than forward)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
