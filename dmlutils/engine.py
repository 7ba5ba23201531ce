"""The training loop, its evaluation, and the baseline: one loop for every profile.

    record = train(make_config("cpu", "multi_similarity"), run_dir="runs/cpu/multi_similarity")

Owns building a run (data sets, backbone, model, loss, learning-rate schedule, held-out
validation classes), the loop with its checkpoints and resume, evaluation (`embed`,
`test_metrics`) and the untrained `baseline`. The activation cache lives in
`dmlutils.cache`, the records' atomic writer and provenance in `dmlutils.provenance`;
their names are re-exported here for the code that imports them from the engine.

A run trains for `iterations` P x K batches and evaluates on the test classes at
iteration 0 and every `eval_every` iterations (the paper's protocol: Recall@K on the
class-disjoint test split), writing an atomic checkpoint at each evaluation;
`resume=True` continues from the last one and ends where an uninterrupted run ends
(every random draw is seeded from (seed, iteration), not from the history).

Two ways to feed the model, one loop:
* images (smoke, paper): a DataLoader over the images with `PKSampler` batches;
* cached activations (cpu): the frozen first blocks of the backbone are run once over
  `cache_views` augmented views of every training image (and one test view), the
  result is cached on disk (`dmlutils.cache`), and training fine-tunes the remaining
  blocks + head, picking one cached view per image per step.

The run record (JSON, written atomically) holds the profile, loss, hyper-parameters,
seed, git commit, device, wall time, every evaluation and the final metrics.

Several processes (`torchrun --nproc_per_node N -m dmlutils train ...`, see
`dmlutils.distributed`): each computes its share of the global P x K batch, the loss sees
the gathered global batch, DDP averages the gradients, and the main process evaluates and
writes checkpoints and records. `xbm_size > 0` adds a cross-batch memory (`dmlutils.xbm`).
"""
from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import itertools
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from . import distributed
from .cache import (  # noqa: F401  (re-exported: the engine's names before the split)
    _build_activation_cache,
    _cache_key,
    _frozen_prefix,
    _prefix_activations,
    _validation_activations,
    activation_cache,
    activation_cache_path,
    cache_dir,
    file_lock,
)
from .losses import MultiSimilarityLoss, cosine_similarity_matrix, get_loss, hparams_of, mining_summary
from .metrics import evaluate
from .profiles import PROFILE_VERSIONS, PROFILES
from .provenance import (  # noqa: F401  (re-exported: the engine's names before the split)
    REPO_ROOT,
    _jsonable,
    atomic_write_bytes,
    code_version,
    environment,
    git_commit,
    write_json,
)
from .samplers import PKSampler
from .xbm import with_cross_batch_memory

RECORD_VERSION = 1


# --- small utilities ---------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): resumable randomness."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]))


def pk_batches(sampler: PKSampler, start: int, count: int):
    """`count` consecutive batches of the sampler's stream, starting at global step `start`."""
    per_epoch = len(sampler)
    step, end = start, start + count
    while step < end:
        epoch, offset = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        for batch in itertools.islice(iter(sampler), offset, None):
            yield batch
            step += 1
            if step == end:
                return


# --- data and model ----------------------------------------------------------------------


def build_datasets(config: dict, root=None):
    """(train, test) data sets of the profile, with the train / test transforms."""
    return _dataset(config, "train", True, root), _dataset(config, "test", False, root)


def _dataset(config: dict, split: str, augment: bool, root=None):
    """One split of the profile's data set, with the training (`augment`) or test transform."""
    from .data import get_dataset, get_transforms

    if config["data"] == "synthetic":  # generated tensors in [0, 1]: no decoding, no augmentation
        return _first_classes(config, get_dataset("synthetic", split=split, seed=config["seed"], image_size=config["image_size"]))
    sizes = dict(resize=config["resize_size"], crop=config["image_size"])
    return _first_classes(
        config, get_dataset(config["data"], root=root, split=split, transform=get_transforms(config["transform"], train=augment, **sizes))
    )


def _first_classes(config: dict, dataset):
    """The samples of the first `max_classes` classes of a split (all of them when 0)."""
    n = config.get("max_classes", 0)
    if not n:
        return dataset
    from .data import ClassSubset

    labels = np.asarray(dataset.labels)
    classes = np.unique(labels)
    if len(classes) < n:
        raise ValueError(f"max_classes={n} but this split has only {len(classes)} classes")
    return ClassSubset(dataset, np.flatnonzero(np.isin(labels, classes[:n])))


def build_backbone(config: dict) -> nn.Module:
    """The profile's backbone, its ImageNet weights read from `weights_path` when set."""
    from .models import get_backbone

    kwargs = {}
    if config.get("weights_path"):
        if config["backbone"] != "bn_inception":
            raise ValueError(
                f"weights_path loads BN-Inception weights; backbone {config['backbone']!r} gets its own "
                "(leave weights_path empty)"
            )
        kwargs["weights_path"] = config["weights_path"]
    return get_backbone(config["backbone"], pretrained=config["pretrained"], **kwargs)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config: dict, device):
    """torch.autocast at the `amp` setting for a forward pass; a no-op when "off"."""
    amp = config.get("amp", "off")
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


def build_model(config: dict) -> nn.Module:
    from .models import EmbeddingModel

    backbone = build_backbone(config)
    return EmbeddingModel(
        backbone,
        embedding_dim=config["embedding_dim"],
        pooling=config["pooling"],
        freeze_bn=config["freeze_bn"],
    )


def build_loss(config: dict, num_classes: int, embedding_dim: int) -> nn.Module:
    hparams = dict(config["loss_hparams"])
    if config["loss"] == "triplet_center":  # its centres need their number and size
        hparams.setdefault("num_classes", num_classes)
        hparams.setdefault("embedding_dim", embedding_dim)
    return get_loss(config["loss"], **hparams)


def lr_factor(config: dict, step: int) -> float:
    """The learning rates' multiplier at `step`: a linear warm-up over `warmup_iterations`,
    then `lr_gamma` per passed milestone (`step`) or a half cosine to 0 (`cosine`)."""
    factor = 1.0
    warmup = config.get("warmup_iterations", 0)
    if warmup and step < warmup:
        factor = (step + 1) / warmup
    if config.get("lr_schedule", "step") == "cosine":
        total = max(1, config["iterations"])
        return factor * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return factor * config["lr_gamma"] ** bisect.bisect_right(sorted(config["lr_milestones"]), step)


# --- validation classes held out of the training split ------------------------------------


def validation_split(config: dict, train_labels) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(indices trained on, indices evaluated on, held-out classes): the last
    `validation_classes` labels of the training split are held out."""
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    n = config["validation_classes"]
    if not 2 <= n <= len(classes) - 2:
        raise ValueError(
            f"validation_classes={n} leaves too few classes: the training split has {len(classes)}; "
            f"hold out between 2 and {len(classes) - 2} (or 0 to evaluate on the test split)"
        )
    held_out = classes[-n:]
    is_held_out = np.isin(labels, held_out)
    return np.flatnonzero(~is_held_out), np.flatnonzero(is_held_out), [int(c) for c in held_out]


def hold_out_validation(config, train_set, test_set, cache, model, root=None, progress=True):
    """(train set, evaluation set, cache) of a run with `validation_classes` held out."""
    from .data import ClassSubset

    fit_idx, val_idx, _ = validation_split(config, train_set.labels)
    plain = _dataset(config, "train", False, root)  # held-out classes are evaluated on the test-time view
    fit, held_out = ClassSubset(train_set, fit_idx), ClassSubset(plain, val_idx)
    if cache is not None:
        main_path = activation_cache_path(config, train_set, test_set)
        cache = {
            "train": cache["train"][torch.as_tensor(fit_idx)],
            "train_labels": cache["train_labels"][torch.as_tensor(fit_idx)],
            "test": _validation_activations(config, model, plain, val_idx, main_path, progress),
            "test_labels": torch.as_tensor(held_out.labels),
            "seconds": cache.get("seconds"),
        }
    return fit, held_out, cache


def evaluation_split_name(config: dict) -> str:
    return "validation" if config["validation_classes"] else "test"


def _evaluated_on(config: dict, evaluation_set) -> dict:
    classes = sorted(int(c) for c in np.unique(np.asarray(evaluation_set.labels)))
    return {"split": evaluation_split_name(config), "images": len(evaluation_set), "classes": len(classes), "labels": [classes[0], classes[-1]]}


# --- evaluation --------------------------------------------------------------------------


@torch.no_grad()
def embed(model: nn.Module, source, config: dict, device, cached_block: int | None = None, progress=False) -> torch.Tensor:
    """Embeddings of a data set of images, or of a tensor of cached activations."""
    model.eval()
    out = []
    bs = config["eval_batch_size"]
    if isinstance(source, torch.Tensor):
        for start in range(0, len(source), bs):
            x = source[start : start + bs].to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            out.append(model.forward_from_block(x, cached_block).float().cpu())
    else:
        # Small channels-last batches run several times faster on CPU than one large one.
        pin = bool(config.get("pin_memory")) and torch.device(device).type == "cuda"
        loader = DataLoader(source, batch_size=min(bs, 32), shuffle=False, num_workers=max(1, config["num_workers"]), pin_memory=pin)
        for images, _ in tqdm(loader, desc="embed", leave=False, disable=not progress):
            images = images.to(device, non_blocking=pin).contiguous(memory_format=torch.channels_last)
            with autocast(config, device):
                out.append(model(images).float().cpu())
    return torch.cat(out)


def test_metrics(embeddings: torch.Tensor, labels, ks) -> dict:
    """Recall@K, precision@1, R-precision and MAP@R of the test set against itself."""
    metrics = evaluate(embeddings, labels, ks=tuple(ks), include_nmi=False, progress=False)
    return {k: float(v) for k, v in metrics.items()}


# --- training ----------------------------------------------------------------------------


class _Feeder:
    """Turns a list of sample indices (this rank's share of a P x K batch) at a given step
    into a model input. Random draws depend on (seed, step, rank) only, so a resumed run
    repeats them; per-sample draws are made for the whole global batch and sliced, so N
    processes draw what one process would."""

    def __init__(self, config, train, cache, device, rank: int = 0, world_size: int = 1):
        self.config, self.train, self.cache, self.device = config, train, cache, device
        self.rank, self.world_size = rank, world_size

    def augment(self, maps: torch.Tensor, step: int, n: int) -> torch.Tensor:
        """`feature_crop` / `feature_flip` on this rank's cached activation maps (N, C, H, W)."""
        crop, flip = self.config.get("feature_crop", 0), self.config.get("feature_flip", False)
        if not (crop or flip):
            return maps
        generator = step_generator(self.config["seed"], step, 4)
        mine = slice(self.rank * n, (self.rank + 1) * n)
        height, width = maps.shape[-2:]
        if crop:
            if crop > min(height, width):
                raise ValueError(f"feature_crop={crop} is larger than the cached maps ({height} x {width}); use at most {min(height, width)}")
            top = torch.randint(height - crop + 1, (n * self.world_size,), generator=generator)[mine]
            left = torch.randint(width - crop + 1, (n * self.world_size,), generator=generator)[mine]
            maps = torch.stack([m[:, t : t + crop, s : s + crop] for m, t, s in zip(maps, top.tolist(), left.tolist())])
        if flip:
            mirrored = (torch.rand(n * self.world_size, generator=generator) < 0.5)[mine]
            maps = torch.where(mirrored[:, None, None, None], maps.flip(-1), maps)
        return maps

    def batches(self, sampler, start, count):
        if self.cache is not None:
            views = self.cache["train"].shape[1]
            for step, indices in enumerate(pk_batches(sampler, start, count), start):
                idx = torch.as_tensor(indices)
                n = len(idx)
                global_views = torch.randint(views, (n * self.world_size,), generator=step_generator(self.config["seed"], step, 1))
                view = global_views[self.rank * n : (self.rank + 1) * n]
                x = self.augment(self.cache["train"][idx, view], step, n).to(self.device, torch.float32)
                # channels-last: the depthwise and 1x1 convolutions run about 1.5x faster on CPU
                yield x.contiguous(memory_format=torch.channels_last), self.cache["train_labels"][idx].to(self.device)
            return
        # Images: a fresh loader per segment whose worker seeds depend on (seed, start, rank) only.
        batches = list(pk_batches(sampler, start, count))
        torch.manual_seed(int(step_generator(self.config["seed"], start, 2 + 10 * self.rank).initial_seed()) % 2**63)
        pin = bool(self.config.get("pin_memory")) and torch.device(self.device).type == "cuda"
        loader = DataLoader(
            self.train,
            batch_sampler=batches,
            num_workers=self.config["num_workers"],
            generator=step_generator(self.config["seed"], start, 3 + 10 * self.rank),
            persistent_workers=False,
            pin_memory=pin,  # page-locked batches: asynchronous host-to-GPU copies
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=pin)
            if self.config.get("channels_last"):
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, torch.as_tensor(labels).to(self.device)


class _FromCachedBlock(nn.Module):
    """The trainable tail as a module whose forward starts at the cached block: DDP only
    synchronises gradients of its wrapped module's own forward."""

    def __init__(self, model: nn.Module, block: int):
        super().__init__()
        self.model, self.block = model, block

    def forward(self, activations):
        return self.model.forward_from_block(activations, self.block)


def _in_cached_prefix(name: str, block: int) -> bool:
    """Whether a backbone parameter belongs to the part computed once into the cache: the
    stem and the blocks before `block` (EfficientNet-Lite's parameter names)."""
    if name.startswith("_blocks."):
        return int(name.split(".")[1]) < block
    return name.startswith(("_conv_stem.", "_bn0."))


def _trainable_parameters(model, config):
    block = config["cache_from_block"] if config["cache_views"] else None
    backbone_params, head_params = [], list(model.head.parameters())
    for name, p in model.backbone.named_parameters():
        if block is not None and _in_cached_prefix(name, block):
            p.requires_grad_(False)  # frozen: computed once into the cache
        if name.startswith("_fc."):
            p.requires_grad_(False)  # the ImageNet classifier is not part of the embedding
        if p.requires_grad:
            backbone_params.append(p)
    return backbone_params, head_params


def parameter_groups(model, loss_fn, config) -> list[dict]:
    """The optimiser's groups: the trained blocks at `lr`, the embedding head at `head_lr`,
    the loss's own parameters (triplet-center's class centres) at `loss_lr`. With `loss_lr`
    0 (the default) they join the head's group, as before the setting existed, so the
    checkpoints of such runs still resume. Empty groups are left out."""
    backbone_params, head_params = _trainable_parameters(model, config)
    loss_params = list(loss_fn.parameters())
    groups = [
        {"params": backbone_params, "lr": config["lr"]},
        {"params": head_params + ([] if config["loss_lr"] else loss_params), "lr": config["head_lr"]},
        {"params": loss_params if config["loss_lr"] else [], "lr": config["loss_lr"]},
    ]
    return [g for g in groups if g["params"]]


def train(
    config: dict,
    run_dir,
    resume: bool = False,
    root=None,
    record_path=None,
    stop_after: int | None = None,
    progress: bool = True,
    device=None,
) -> dict:
    """Train one run; returns its record (also written to `record_path` when given).

    `stop_after=n` stops after the evaluation at iteration n (a checkpoint exists there):
    used by the resume test to simulate an interrupted run.
    """
    owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    context = distributed.setup_from_env(device)  # a single process unless launched by torchrun
    benchmark = torch.backends.cudnn.benchmark
    if config.get("cudnn_benchmark"):  # cuDNN times its algorithms once per input shape, then uses the fastest
        torch.backends.cudnn.benchmark = True
    try:
        return _train(config, Path(run_dir), context, resume, root, record_path, stop_after, progress)
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


def _train(config, run_dir, context, resume, root, record_path, stop_after, progress) -> dict:
    check_writable(run_dir, "checkpoints")
    if record_path is not None:
        check_writable(Path(record_path).parent, "run record")
    checkpoint_path = run_dir / "checkpoint.pt"
    device = context.device
    is_main = context.is_main
    torch.manual_seed(config["seed"])

    train_set, test_set = build_datasets(config, root)
    model = build_model(config).to(device)
    cache = None
    if config["cache_views"]:
        cache = activation_cache(config, model, train_set, test_set, progress)
    if config["validation_classes"]:  # evaluate on held-out training classes, never on the test split
        train_set, test_set, cache = hold_out_validation(config, train_set, test_set, cache, model, root, progress)
    if cache is not None:  # channels-last: the depthwise and 1x1 convolutions run about 1.5x faster on CPU
        model = model.to(memory_format=torch.channels_last)
    elif config.get("channels_last"):  # images path: NHWC convolutions (tensor cores on GPUs)
        model = model.to(memory_format=torch.channels_last)
    labels_array = np.asarray(train_set.labels)
    base_loss = build_loss(config, int(labels_array.max()) + 1, model.embedding_dim)
    # The loss sees the global batch (all processes' rows) and, optionally, a memory of past batches.
    memory_loss = with_cross_batch_memory(base_loss, config["xbm_size"])
    loss_fn = distributed.GlobalBatchLoss(memory_loss).to(device)
    probe = mining_probe(base_loss)
    optimizer = torch.optim.Adam(parameter_groups(model, loss_fn, config), weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    # fp16 gradients underflow without loss scaling; disabled (a pass-through) unless amp="fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=config.get("amp", "off") == "fp16")
    sampler = PKSampler(
        labels_array, p=config["p"], k=config["k"], seed=config["seed"], num_replicas=context.world_size, rank=context.rank
    )
    feeder = _Feeder(config, train_set, cache, device, context.rank, context.world_size)
    cached_block = config["cache_from_block"] if cache is not None else None
    train_module = distributed.wrap_model(_FromCachedBlock(model, cached_block) if cache is not None else model, context)

    record = {
        "record_version": RECORD_VERSION,
        "kind": "train",
        "profile": config["profile"],
        "profile_version": PROFILE_VERSIONS[config["profile"]],
        "loss": config["loss"],
        "loss_hparams": hparams_of(base_loss),
        "world_size": context.world_size,
        "seed": config["seed"],
        "config": config,
        "git": code_version(),
        "device": str(device),
        "environment": environment(),
        "data": {"train": train_set.fingerprint(), "test": test_set.fingerprint()},  # no machine paths: dmlutils.data.data_fingerprint
        "evaluated_on": _evaluated_on(config, test_set),
        "cache_seconds": None if cache is None else cache.get("seconds"),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_seconds": 0.0,
        "evaluations": [],
    }
    if getattr(model.backbone, "weights_source", None):
        record["backbone_weights"] = model.backbone.weights_source
    step = 0
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        # settings added since the checkpoint was made count as their (neutral) defaults
        saved = {**PROFILES.get(config["profile"], {}), **state["record"]["config"]}
        if saved != config:
            changed = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
            raise ValueError(
                f"the checkpoint in {run_dir} was made with other settings ({', '.join(changed)} differ); "
                "resume with the same settings, or delete that folder (or choose another --run-dir) to start afresh"
            )
        try:
            model.load_state_dict(state["model"])
            loss_fn.load_state_dict(state["loss"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as error:
            # same settings, other code: an older dmlutils laid out the parameters or the
            # optimiser's groups differently, and PyTorch's own message does not say so
            raise ValueError(
                f"the checkpoint in {run_dir} does not fit this version of dmlutils ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'}); delete that folder (or choose another "
                "--run-dir) to start afresh"
            ) from error
        record, step = state["record"], state["step"]
        record["config"] = config
        record["resumed_at"] = record.get("resumed_at", []) + [step]

    test_source = cache["test"] if cache is not None else test_set
    test_labels = np.asarray(test_set.labels)

    def evaluate_and_checkpoint(step: int, train_loss: float | None, segment_seconds: float, segment_cpu_seconds: float,
                                mining: list[dict] | None = None) -> None:
        if not is_main:  # the main process evaluates and writes; the others wait for it
            distributed.barrier()
            return
        t0, c0 = time.perf_counter(), time.process_time()
        embeddings = embed(model, test_source, config, device, cached_block)
        metrics = test_metrics(embeddings, test_labels, config["eval_ks"])
        eval_seconds, eval_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        record["wall_time_seconds"] += segment_seconds + eval_seconds
        # The two costs apart: the runner's estimates and the book's cost tables read them. Wall
        # time also counts any wait for a busy (or paused) core; the process's CPU time does not.
        record["evaluations"].append({"iteration": step, "train_loss": train_loss, "metrics": metrics,
                                      "train_seconds": segment_seconds, "eval_seconds": eval_seconds,
                                      "train_cpu_seconds": segment_cpu_seconds, "eval_cpu_seconds": eval_cpu_seconds})
        if mining:  # MS mining's effect on the batches since the last evaluation (chapter 8 reads it)
            # A share is undefined (NaN) on a batch without such pairs; a window of only those records None.
            record["evaluations"][-1]["mining"] = {key: float(np.mean(v)) if (v := [m[key] for m in mining if not math.isnan(m[key])]) else None
                                                   for key in mining[0]}
        state = {
            "model": model.state_dict(),
            "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "record": record,
            "step": step,
        }
        atomic_write_bytes(checkpoint_path, lambda f: torch.save(state, f))
        distributed.barrier()

    if step == 0 and not record["evaluations"]:
        evaluate_and_checkpoint(0, None, 0.0, 0.0)
    bar = tqdm(total=config["iterations"], initial=step, desc=f"{config['loss']}", disable=not (progress and is_main))
    while step < config["iterations"]:
        if stop_after is not None and step >= stop_after:
            break
        segment = min(config["eval_every"] - step % config["eval_every"], config["iterations"] - step)
        t0, c0, losses, mining = time.perf_counter(), time.process_time(), [], []
        train_module.train()
        loss_fn.train()
        for x, y in feeder.batches(sampler, step, segment):
            if memory_loss is not base_loss:  # XBM's warm-up: no memory before xbm_start
                memory_loss.enabled = step >= config["xbm_start"]
            with autocast(config, device):
                embeddings = train_module(x)
            # The loss outside autocast, on float32 embeddings: its exponentials never run in half precision.
            loss = loss_fn(embeddings.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(float(loss.detach()))
            if probe is not None:
                mining.append(probe(embeddings.detach().float(), y))
            step += 1
            bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        evaluate_and_checkpoint(step, float(np.mean(losses)), time.perf_counter() - t0, time.process_time() - c0, mining)
    bar.close()

    if step >= config["iterations"] and is_main:
        record["final"] = {"iteration": step, **record["evaluations"][-1]["metrics"]}
        best = max(record["evaluations"], key=lambda e: e["metrics"]["recall@1"])
        record[f"best_on_{evaluation_split_name(config)}"] = {"iteration": best["iteration"], **best["metrics"]}
        record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if record_path is not None:
            write_json(Path(record_path), record)
    return record


def mining_probe(loss):
    """A function (embeddings, labels) -> `mining_summary` of the batch when the run's loss is
    MS with mining on, else None: what mining removes, measured while the run trains."""
    if not isinstance(loss, MultiSimilarityLoss) or not (loss.mine_positives or loss.mine_negatives):
        return None
    return lambda embeddings, labels: mining_summary(loss, cosine_similarity_matrix(embeddings), labels)


def prepare_cache(config: dict, root=None, progress: bool = True) -> Path:
    """Build (or find) the activation cache a run of `config` reads, ahead of the run: on a
    core that would otherwise wait, while other runs train. Returns the cache's path."""
    if not config["cache_views"]:
        raise ValueError("this config trains on images (cache_views=0): it has no activation cache to build")
    train_set, test_set = build_datasets(config, root)
    activation_cache(config, build_model(config), train_set, test_set, progress)
    return activation_cache_path(config, train_set, test_set)


def baseline(config: dict, root=None, record_path=None, device=None, progress: bool = True) -> dict:
    """The pretrained backbone's globally pooled features, no metric learning: the floor."""
    device = torch.device(device) if device is not None else default_device()
    train_set, test_set = build_datasets(config, root)
    if config["validation_classes"]:
        from .data import ClassSubset

        test_set = ClassSubset(_dataset(config, "train", False, root), validation_split(config, train_set.labels)[1])
    from .models import EmbeddingModel

    backbone = build_backbone(config)
    weights_source = getattr(backbone, "weights_source", None)
    if hasattr(backbone, "fold_batchnorm"):  # frozen: BatchNorm folded into the convolutions (same function, faster)
        backbone = backbone.fold_batchnorm()
    model = EmbeddingModel(backbone, embedding_dim=None, pooling=config["pooling"], freeze_bn=True).to(device)
    model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    embeddings = embed(model, test_set, config, device, progress=progress)
    metrics = test_metrics(embeddings, np.asarray(test_set.labels), config["eval_ks"])
    record = {
        "record_version": RECORD_VERSION,
        "kind": "baseline",
        "profile": config["profile"],
        "profile_version": PROFILE_VERSIONS[config["profile"]],
        "loss": None,
        "description": f"{config['backbone']} ImageNet features, global {config['pooling']} pooling, no training",
        "seed": config["seed"],
        "config": config,
        "git": code_version(),
        "device": str(device),
        "environment": environment(),
        "data": {"test": test_set.fingerprint()},
        "evaluated_on": _evaluated_on(config, test_set),
        "wall_time_seconds": time.perf_counter() - t0,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "evaluations": [{"iteration": 0, "train_loss": None, "metrics": metrics}],
        "final": {"iteration": 0, **metrics},
    }
    if weights_source:
        record["backbone_weights"] = weights_source
    if record_path is not None:
        write_json(Path(record_path), record)
    return record

