"""Distributed training helpers: two CPU processes (gloo) against one process on the whole batch.

One spawn of two processes (module-scoped fixture, < 30 s) runs every scenario and writes
each rank's results to a file; the tests compare them with single-process oracles computed
here, on the concatenated global batch:
(a) loss values and the DDP-averaged gradients of a Linear model (float64, 1e-6 — in practice
    ~1e-15) for MS, triplet, contrastive, N-pair and triplet-center (whose centres are
    parameters of the loss itself); three SGD steps with cross-batch memory;
(b) PKSampler shards: disjoint, and in rank order exactly the single-process batches;
plus the clear error on unequal shards, and the single-process fallbacks.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dmlutils.distributed import (
    GlobalBatchLoss,
    cleanup,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    setup_from_env,
    unwrap_model,
    wrap_model,
)
from dmlutils.losses import get_loss
from dmlutils.samplers import PKSampler
from dmlutils.xbm import CrossBatchMemoryLoss

WORLD_SIZE = 2
P, K = 4, 3  # global batch 12; each rank gets 2 classes x 3
NUM_CLASSES, PER_CLASS, IN_DIM, EMBEDDING_DIM = 8, 7, 10, 6
SAMPLER_SEED = 5
XBM_STEPS, XBM_MEMORY, XBM_LR = 3, 24, 0.5
TIMEOUT_SECONDS = 90  # generous: the 2 cores are shared with other trainings

LOSSES = {
    "multi_similarity": dict(epsilon=0.3),  # a wider epsilon: more mined pairs, more gradient
    "triplet": dict(),
    "contrastive": dict(),
    "npair": dict(),  # depends on the order of the batch (first two samples of each class)
    "triplet_center": dict(num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM),
}


# --- the problem, identical in every process -------------------------------------------------


def dataset():
    """Clustered float64 inputs of NUM_CLASSES classes x PER_CLASS samples, and their labels."""
    g = torch.Generator().manual_seed(123)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    centres = torch.randn(NUM_CLASSES, IN_DIM, generator=g, dtype=torch.float64)
    inputs = centres[labels] + 1.2 * torch.randn(len(labels), IN_DIM, generator=g, dtype=torch.float64)
    return inputs, labels


def make_model():
    torch.manual_seed(0)
    return torch.nn.Linear(IN_DIM, EMBEDDING_DIM, dtype=torch.float64)


def make_loss(name):
    torch.manual_seed(1)  # triplet_center draws its centres
    return get_loss(name, **LOSSES[name]).double()


def sampler(num_replicas=1, rank=0):
    labels = dataset()[1].numpy()
    return PKSampler(labels, p=P, k=K, seed=SAMPLER_SEED, num_replicas=num_replicas, rank=rank)


def batches(s, epoch=0):
    s.set_epoch(epoch)
    return list(s)


def gradients(model, loss):
    return {
        "weight": model.weight.grad.clone(),
        "bias": model.bias.grad.clone(),
        **{f"loss.{n}": p.grad.clone() for n, p in loss.named_parameters()},
    }


def xbm_training(model, loss, steps):
    """A few SGD steps with cross-batch memory; (per-step loss values, final weights)."""
    # Plain SGD written out: torch.optim's first use imports torch._dynamo (seconds per process).
    inputs, labels = dataset()
    values = []
    for indices in steps:
        model.zero_grad(set_to_none=True)
        value = loss(model(inputs[indices]), labels[indices])
        value.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= XBM_LR * parameter.grad
        values.append(float(value.detach()))
    module = unwrap_model(model)
    return values, {"weight": module.weight.detach().clone(), "bias": module.bias.detach().clone()}


# --- the worker (runs in each spawned process) -----------------------------------------------


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    context = setup_from_env(device="cpu", timeout_seconds=60)
    results = {
        "context": (context.rank, context.world_size, context.local_rank, context.backend, str(context.device)),
        "helpers": (get_rank(), get_world_size(), is_main_process(), is_distributed()),
        "second_setup_is_the_same": setup_from_env(device="cpu") == context,
    }
    inputs, labels = dataset()
    shard = sampler(WORLD_SIZE, rank)
    results["shards"] = [batches(shard, epoch) for epoch in (0, 1)]
    first = shard_indices = results["shards"][0][0]

    results["losses"] = {}
    for name in LOSSES:
        model = wrap_model(make_model(), context)
        loss = GlobalBatchLoss(make_loss(name))
        value = loss(model(inputs[first]), labels[first])
        value.backward()
        results["losses"][name] = {"value": float(value.detach()), "grads": gradients(unwrap_model(model), loss.loss)}

    # Without GlobalBatchLoss's factor, DDP's mean leaves 1 / world size of the gradient.
    model = wrap_model(make_model(), context)
    plain = make_loss("multi_similarity")
    plain(*gather_with_grad(model(inputs[shard_indices]), labels[shard_indices])).backward()
    results["unscaled_grads"] = gradients(unwrap_model(model), plain)

    model = wrap_model(make_model(), context)
    loss = GlobalBatchLoss(CrossBatchMemoryLoss(make_loss("multi_similarity"), XBM_MEMORY))
    results["xbm"] = xbm_training(model, loss, results["shards"][0][:XBM_STEPS])

    try:  # unequal shards: every rank must raise the same clear error (and none may hang)
        gather_with_grad(torch.zeros(3 + rank, 4), torch.zeros(3 + rank, dtype=torch.long))
        results["unequal"] = None
    except ValueError as error:
        results["unequal"] = str(error)

    cleanup()
    results["after_cleanup"] = (get_rank(), get_world_size(), is_distributed())
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        torch.save(results, f)
    os.replace(tmp, Path(out_dir) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out_dir: Path) -> None:
    context = mp.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        while not context.join(timeout=1.0):  # raises ProcessRaisedException if a worker failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {WORLD_SIZE} worker processes did not finish within {TIMEOUT_SECONDS} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("distributed")
    old_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers before torch starts
    try:
        try:
            _run_workers(out_dir)
        except mp.ProcessRaisedException as error:
            if "EADDRINUSE" not in str(error) and "address already in use" not in str(error).lower():
                raise
            _run_workers(out_dir)  # the free port was taken between choosing and binding: once more
    finally:
        if old_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_threads
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


# --- single-process oracles --------------------------------------------------------------------


def single_process_step(name):
    inputs, labels = dataset()
    indices = batches(sampler())[0]
    model, loss = make_model(), make_loss(name)
    value = loss(model(inputs[indices]), labels[indices])
    value.backward()
    return float(value.detach()), gradients(model, loss)


def assert_same_grads(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-9, msg=lambda m: f"{key}: {m}")


# --- (a) values and gradients ------------------------------------------------------------------


def test_workers_ran_distributed_with_gloo(rank_results):
    for rank, results in enumerate(rank_results):
        assert results["context"] == (rank, WORLD_SIZE, rank, "gloo", "cpu")
        assert results["helpers"] == (rank, WORLD_SIZE, rank == 0, True)
        assert results["second_setup_is_the_same"]
        assert results["after_cleanup"] == (0, 1, False)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_ddp_gradient_equal_single_process_on_the_global_batch(rank_results, name):
    value, grads = single_process_step(name)
    assert value > 0 and grads["weight"].abs().sum() > 0
    for results in rank_results:
        got = results["losses"][name]
        assert got["value"] == pytest.approx(value, rel=1e-12)
        assert_same_grads(got["grads"], grads)


def test_without_the_factor_ddp_gives_a_world_size_fraction_of_the_gradient(rank_results):
    _, grads = single_process_step("multi_similarity")
    for results in rank_results:
        halved = {k: v * WORLD_SIZE for k, v in results["unscaled_grads"].items()}
        assert_same_grads(halved, grads)


def test_xbm_training_steps_equal_single_process(rank_results):
    loss = CrossBatchMemoryLoss(make_loss("multi_similarity"), XBM_MEMORY)
    values, weights = xbm_training(make_model(), loss, batches(sampler())[:XBM_STEPS])
    assert len(loss.memory) == XBM_MEMORY  # 3 global batches of 12: the memory filled up
    for results in rank_results:
        got_values, got_weights = results["xbm"]
        assert got_values == pytest.approx(values, rel=1e-10)
        assert_same_grads(got_weights, weights)
    # the trained weights moved: the comparison above is not of two untouched initialisations
    assert not torch.allclose(weights["weight"], make_model().weight)


def test_unequal_shards_raise_the_same_clear_error_on_every_rank(rank_results):
    messages = [results["unequal"] for results in rank_results]
    assert messages[0] is not None and messages[0] == messages[1]
    assert "same (batch, dim) on every rank" in messages[0] and "[(3, 4), (4, 4)]" in messages[0]


# --- (b) the sampler's shards ------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 1])
def test_pk_sampler_shards_partition_the_single_process_batches(rank_results, epoch):
    expected = batches(sampler(), epoch)
    shards = [results["shards"][epoch] for results in rank_results]
    labels = dataset()[1].numpy()
    assert all(len(s) == len(expected) for s in shards)
    for b, global_batch in enumerate(expected):
        parts = [s[b] for s in shards]
        assert not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == global_batch  # union in rank order = the single-process batch
        for part in parts:  # each share is itself (P / W) x K
            counts = np.unique(labels[part], return_counts=True)[1]
            assert len(counts) == P // WORLD_SIZE and set(counts) == {K}
    assert batches(sampler(), 0) != batches(sampler(), 1)


# --- single process: the fallbacks -----------------------------------------------------------


def test_single_process_fallbacks(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    context = setup_from_env(device="cpu")
    assert (context.rank, context.world_size, context.backend, context.is_main) == (0, 1, None, True)
    assert not torch.distributed.is_initialized()
    assert (get_rank(), get_world_size(), is_main_process(), is_distributed()) == (0, 1, True, False)
    e, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    gathered = gather_with_grad(e, y)
    assert gathered[0] is e and gathered[1] is y
    model = make_model()
    assert wrap_model(model, context) is model and unwrap_model(model) is model
    loss = get_loss("multi_similarity", epsilon=1.0)
    e = e.requires_grad_(True)
    (ours,) = torch.autograd.grad(GlobalBatchLoss(loss)(e, y), e)
    (plain,) = torch.autograd.grad(loss(e, y), e)
    assert torch.equal(ours, plain)
    cleanup()  # nothing to clean: no error


def test_missing_torchrun_variables_are_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT are not set.*torchrun"):
        setup_from_env(device="cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK=2 must lie in \[0, WORLD_SIZE=2\)"):
        setup_from_env(device="cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero' is not an integer"):
        setup_from_env(device="cpu")
    assert not torch.distributed.is_initialized()
