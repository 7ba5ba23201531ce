"""The training loop: windows of steps between evaluations, a checkpoint after each, and a
clean stop on Ctrl-C or SIGTERM.

A run trains for `iterations` P x K batches and evaluates at iteration 0 and every
`eval_every` iterations, writing an atomic checkpoint at each evaluation; `resume=True`
continues from the last checkpoint and ends where an uninterrupted run ends (every random
draw of the cached-activation source is seeded from (seed, step), not from the history).

Ctrl-C or SIGTERM stops the run at the end of the step in progress, writes a checkpoint at
that step (with the window's losses so far) and raises `RunInterrupted`, whose message
says how to resume; a second Ctrl-C stops at once, without a checkpoint.
"""
from __future__ import annotations

import math
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from .. import distributed, pictures
from ..losses import MultiSimilarityLoss, cosine_similarity_matrix, mining_summary
from ..provenance import write_json
from ..samplers import PKSampler
from ..xbm import with_cross_batch_memory
from . import checkpoint
from .allocator import keep_freed_memory
from .build import autocast, build_datasets, build_loss, build_model, evaluation_split_name, lr_factor, parameter_groups
from .evaluation import test_metrics
from .sources import make_source


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM after a checkpoint was written at `step` (a
    KeyboardInterrupt: what stops a notebook cell or a batch of runs stops there too)."""

    def __init__(self, run_dir: Path, step: int):
        self.run_dir, self.step = Path(run_dir), step
        super().__init__(f"interrupted at step {step}; a checkpoint is in {self.run_dir}. Resume with the same settings "
                         "and --resume (python -m dmlutils), or train(..., resume=True)")


def train(config: dict, run_dir, resume: bool = False, root=None, record_path=None, stop_after: int | None = None,
          progress: bool = True, device=None, same_code: bool = False) -> dict:
    """Train one run; returns its record (also written to `record_path` when given).

    `stop_after=n` stops after the evaluation at iteration n (a checkpoint exists there):
    used by the resume tests to simulate an interrupted run. `same_code=True` refuses to
    resume a checkpoint written by other code (`checkpoint.OtherCodeCheckpoint`).
    """
    owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    context = distributed.setup_from_env(device)  # a single process unless launched by torchrun
    benchmark = torch.backends.cudnn.benchmark
    if config.get("cudnn_benchmark"):  # cuDNN times its algorithms once per input shape, then uses the fastest
        torch.backends.cudnn.benchmark = True
    try:
        return _train(config, Path(run_dir), context, resume, root, record_path, stop_after, progress, same_code)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        if owns_process_group:
            distributed.cleanup()


# Free space a run needs before it starts: checkpoints of the model and Adam's two moments
# (written at every evaluation, beside the previous one while it is replaced), and the record.
MIN_FREE_BYTES = 256 * 2**20


def check_writable(folder: Path, what: str, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail before training, not after an hour, when `folder` cannot be created or written
    or its disk is nearly full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise OSError(f"cannot write the {what} to {folder}: {error.strerror or error}. Choose another folder "
                      f"(--results / --run-dir) or fix its permissions.") from None
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise OSError(f"only {free / 2**20:.0f} MiB free on the disk of {folder}, where the {what} go; a run needs at least "
                      f"{min_free / 2**20:.0f} MiB. Free some space or choose another folder.")


@dataclass
class Run:
    """Everything a run trains with, built from its config."""

    model: nn.Module
    trained: nn.Module  # what the batches go through: the model, from the cached block, DDP-wrapped
    base_loss: nn.Module
    memory_loss: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: PKSampler
    source: object
    train_set: object
    eval_set: object

    @property
    def parts(self) -> dict:
        return {"model": self.model, "loss": self.loss_fn, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}


def build_run(config, context, root=None, progress=True) -> Run:
    torch.manual_seed(config["seed"])
    device = context.device
    if device.type == "cpu":
        keep_freed_memory()  # a step re-uses its pages instead of faulting them in again (engine.allocator)
    train_set, test_set = build_datasets(config, root)
    model = build_model(config).to(device)
    train_set, eval_set, source = make_source(config, model, train_set, test_set, device, context.rank, context.world_size, root, progress)
    if source.channels_last:
        model = model.to(memory_format=torch.channels_last)
    labels = np.asarray(train_set.labels)
    base_loss = build_loss(config, int(labels.max()) + 1, model.embedding_dim)
    # The loss sees the global batch (all processes' rows) and, optionally, a memory of past batches.
    memory_loss = with_cross_batch_memory(base_loss, config["xbm_size"])
    loss_fn = distributed.GlobalBatchLoss(memory_loss).to(device)
    optimizer = torch.optim.Adam(parameter_groups(model, loss_fn, config), weight_decay=config["weight_decay"])
    return Run(
        model=model,
        trained=distributed.wrap_model(source.trained_module(model), context),
        base_loss=base_loss,
        memory_loss=memory_loss,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step)),
        # fp16 gradients underflow without loss scaling; disabled (a pass-through) unless amp="fp16"
        scaler=torch.amp.GradScaler(device.type, enabled=config.get("amp", "off") == "fp16"),
        sampler=PKSampler(labels, p=config["p"], k=config["k"], seed=config["seed"], num_replicas=context.world_size, rank=context.rank),
        source=source,
        train_set=train_set,
        eval_set=eval_set,
    )


def _train(config, run_dir, context, resume, root, record_path, stop_after, progress, same_code) -> dict:
    check_writable(run_dir, "checkpoints")
    if record_path is not None:
        check_writable(Path(record_path).parent, "run record")
    checkpoint_path = run_dir / "checkpoint.pt"
    run = build_run(config, context, root, progress)
    record, step, window, extra = checkpoint.new_record(config, context.world_size, context.device, run.base_loss, run.model,
                                                        run.train_set, run.eval_set, run.source.cache_seconds), 0, None, {}
    if resume and checkpoint_path.exists():
        record, step, window, extra = checkpoint.resume(checkpoint_path, config, run.parts, context.device, same_code)
    # The pictures (dmlutils.pictures) of a run on the test split: its fixed batch at iteration 0 is kept until the end.
    draw = context.is_main and record_path is not None and not config["validation_classes"]
    batch = torch.as_tensor(pictures.fixed_batch(run.eval_set.labels)) if draw else None
    embeddings = None
    if step == 0 and not record["evaluations"]:
        embeddings = _evaluate(run, record, context, step, _new_window(0))
        if draw:
            extra["pictures_start"] = embeddings[batch]
        _checkpoint(run, record, checkpoint_path, context, step, extra=extra)
    probe = mining_probe(run.base_loss)
    bar = tqdm(total=config["iterations"], initial=step, desc=f"{config['loss']}", disable=not (progress and context.is_main))
    with _StopRequests() as stop:
        while step < config["iterations"] and (stop_after is None or step < stop_after):
            window = window or _new_window(step)
            count = min(config["eval_every"] - step % config["eval_every"], config["iterations"] - step)
            step = _train_window(run, config, step, count, window, probe, bar, stop)
            if stop.requested and step < window["start"] + window["count"]:  # stopped between two evaluations
                _checkpoint(run, record, checkpoint_path, context, step, window, extra)
                raise RunInterrupted(run_dir, step)
            embeddings = _evaluate(run, record, context, step, window)
            _checkpoint(run, record, checkpoint_path, context, step, extra=extra)
            window = None
            if stop.requested and step < config["iterations"]:
                raise RunInterrupted(run_dir, step)
    bar.close()
    if step >= config["iterations"] and context.is_main:
        record["final"] = {"iteration": step, **record["evaluations"][-1]["metrics"]}
        best = max(record["evaluations"], key=lambda e: e["metrics"]["recall@1"])
        record[f"best_on_{evaluation_split_name(config)}"] = {"iteration": best["iteration"], **best["metrics"]}
        record["finished"] = checkpoint.now()
        if draw:  # before the record: a record on disk means its run, pictures included, is done
            if embeddings is None:  # resumed from the checkpoint of the last evaluation
                embeddings = run.source.embed_evaluation_set(run.model)
            start = extra.get("pictures_start")
            pictures.write_pictures(record_path, pictures.make_pictures(record, run.eval_set, embeddings, start, run.base_loss))
        if record_path is not None:
            write_json(Path(record_path), record)
    return record


def _new_window(start: int) -> dict:
    """The measurements of the steps since the last evaluation (kept in an interrupted run's checkpoint)."""
    return {"start": start, "count": 0, "losses": [], "mining": [], "seconds": 0.0, "cpu_seconds": 0.0}


def _train_window(run: Run, config, step: int, count: int, window: dict, probe, bar, stop) -> int:
    """Train `count` steps from `step` (or fewer, when a stop is requested); returns the step reached."""
    window["count"] = step - window["start"] + count
    t0, c0 = time.perf_counter(), time.process_time()
    run.trained.train()
    run.loss_fn.train()
    for x, y in run.source.batches(run.sampler, step, count):
        if run.memory_loss is not run.base_loss:  # XBM's warm-up: no memory before xbm_start
            run.memory_loss.enabled = step >= config["xbm_start"]
        with autocast(config, x.device):
            embeddings = run.trained(x)
        # The loss outside autocast, on float32 embeddings: its exponentials never run in half precision.
        loss = run.loss_fn(embeddings.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        window["losses"].append(float(loss.detach()))
        if probe is not None:
            window["mining"].append(probe(embeddings.detach().float(), y))
        step += 1
        bar.update(1)
        if stop.requested:
            break
    window["seconds"] += time.perf_counter() - t0
    window["cpu_seconds"] += time.process_time() - c0
    if window["losses"]:
        bar.set_postfix(loss=f"{np.mean(window['losses']):.4f}")
    return step


def _evaluate(run: Run, record: dict, context, step: int, window: dict) -> torch.Tensor | None:
    """Evaluate, and add the evaluation (and the window's training measurements) to the
    record; returns the embeddings. The main process evaluates; the others return None."""
    if not context.is_main:
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    embeddings = run.source.embed_evaluation_set(run.model)
    metrics = test_metrics(embeddings, np.asarray(run.eval_set.labels), record["config"]["eval_ks"])
    eval_seconds, eval_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    record["wall_time_seconds"] += window["seconds"] + eval_seconds
    # The two costs apart: the runner's estimates and the book's cost tables read them. Wall
    # time also counts any wait for a busy (or paused) core; the process's CPU time does not.
    evaluation = {"iteration": step, "train_loss": float(np.mean(window["losses"])) if window["losses"] else None,
                  "metrics": metrics, "train_seconds": window["seconds"], "eval_seconds": eval_seconds,
                  "train_cpu_seconds": window["cpu_seconds"], "eval_cpu_seconds": eval_cpu_seconds}
    if window["mining"]:  # MS mining's effect on the batches since the last evaluation (chapter 8 reads it)
        # A share is undefined (NaN) on a batch without such pairs; a window of only those records None.
        mining = window["mining"]
        evaluation["mining"] = {key: float(np.mean(v)) if (v := [m[key] for m in mining if not math.isnan(m[key])]) else None
                                for key in mining[0]}
    record["evaluations"].append(evaluation)
    return embeddings


def _checkpoint(run: Run, record: dict, path: Path, context, step: int, window: dict | None = None, extra: dict | None = None) -> None:
    """The main process writes the checkpoint; the others wait for it."""
    if context.is_main:
        checkpoint.save_checkpoint(path, run.parts, record, step, window, extra)
    distributed.barrier()


def mining_probe(loss):
    """A function (embeddings, labels) -> `mining_summary` of the batch when the run's loss is
    MS with mining on, else None: what mining removes, measured while the run trains."""
    if not isinstance(loss, MultiSimilarityLoss) or not (loss.mine_positives or loss.mine_negatives):
        return None
    return lambda embeddings, labels: mining_summary(loss, cosine_similarity_matrix(embeddings), labels)


class _StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM, turned into a request to stop at the end of the step in
    progress, for the `with` block; a second signal raises KeyboardInterrupt at once. Outside
    the main thread (where Python delivers no signals) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested, self._previous = False, {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping at the end of this step and writing a checkpoint "
              "(again to stop at once, without one)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
