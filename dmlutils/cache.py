"""The activation cache of the cpu profile: the frozen first blocks run once, kept on disk.

The frozen blocks before `cache_from_block` are run over `cache_views` augmented views of
every training image and the plain view of every test image; the float16 activations go
to `cache_dir()` (`$DML_CACHE`, default `<repository>/runs/cache`) under a key of the
settings and the data (by its fingerprint, not its folder) that determine them, built once
under a file lock when several runs ask at the same time. A cache with more views extends
an existing one with fewer (each view has its own seeded generator, so the first views are
the same). Runs with `validation_classes` add the held-out classes' plain-view activations
beside it (`_validation_activations`). The training loop (`dmlutils.engine`) reads the
cache; this module knows nothing of the loop.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from .profiles import CACHE_SETTINGS, cache_settings  # noqa: F401  (re-exported: defined beside the settings, so readers need not import this module)
from .provenance import REPO_ROOT, atomic_write_bytes


def activation_cache_path(config: dict, train, test) -> Path:
    """Where the activation cache of these settings and data sets lives."""
    return cache_dir() / f"activations-{_cache_key(config, train, test)}.pt"


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on `<path>.lock`, held for the `with` block."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir() -> Path:
    return Path(os.environ.get("DML_CACHE", REPO_ROOT / "runs" / "cache"))


def _data_identity(dataset) -> list:
    """A data set as the cache key sees it: by its fingerprint (the images' content and
    labels, `dmlutils.data.data_fingerprint`), not its folder, so a copy moved elsewhere keeps
    its cache and images replaced in place never reuse a stale one."""
    if hasattr(dataset, "fingerprint"):
        return [len(dataset), dataset.fingerprint()["sha256"]]
    from .data.fingerprint import data_fingerprint

    # e.g. a torch Subset of one of ours: fingerprinted through the data set it wraps (keyed
    # by its length alone before, it could reuse another subset's activations). The keys of
    # the data sets above are unchanged: no version bump, existing caches stay valid.
    try:
        return [len(dataset), data_fingerprint(dataset)["sha256"]]
    except TypeError:  # a data set of the caller's own, of no form the fingerprint knows: its folder is all there is
        return [len(dataset), str(getattr(dataset, "root", ""))]


def _cache_key(config: dict, train, test) -> str:
    identity = {k: config[k] for k in CACHE_SETTINGS}
    identity["train"] = _data_identity(train)
    identity["test"] = _data_identity(test)
    identity["version"] = 2  # 2: data by fingerprint (1: by folder)
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _prefix_activations(prefix, dataset, block: int, batch_size: int, num_workers: int, seed: int, desc: str, progress: bool = True):
    # At least one worker: decoding + augmenting in a 1-thread worker overlaps the forward
    # pass, and keeps augmentation out of the main process's OpenMP threads (which
    # busy-wait and slow it 10x on a loaded 2-core machine; see benchmarks/bench_data.py).
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=max(1, num_workers),
        generator=torch.Generator().manual_seed(seed),  # fixes the workers' augmentation seeds
    )
    chunks = []
    for images, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images = images.contiguous(memory_format=torch.channels_last)
        chunks.append(prefix(images).to(torch.float16).contiguous())
    return torch.cat(chunks)


def _frozen_prefix(model: nn.Module, config: dict):
    """The frozen blocks before `cache_from_block`, as a function of an image batch."""
    backbone, block = model.backbone, config["cache_from_block"]
    if not callable(getattr(backbone, "forward_until_block", None)):
        raise ValueError(f"backbone {config['backbone']!r} cannot be split at a block; set cache_views=0")
    # BatchNorm folded into the frozen convolutions: same function, faster (DESIGN.md).
    frozen = backbone.fold_batchnorm() if hasattr(backbone, "fold_batchnorm") else backbone
    frozen = frozen.eval().to(memory_format=torch.channels_last)

    def prefix(x):
        return frozen.forward_until_block(x, block)

    return prefix


def activation_cache(config: dict, model: nn.Module, train_aug, test, progress: bool = True) -> dict:
    """Activations entering block `cache_from_block` for `cache_views` augmented views of
    every training image and the plain view of every test image (float16), cached on disk."""
    path = activation_cache_path(config, train_aug, test)
    with file_lock(path):  # several runs started together build it once; the others wait, then read it
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        return _build_activation_cache(config, model, train_aug, test, path, progress)


def _cache_with_fewer_views(config: dict, train, test) -> dict | None:
    """The largest existing cache of the same settings with fewer views, or None. View v
    of a seed is drawn from its own generator (seed * 1000 + v), so a cache of V views
    holds exactly the first V views of any larger one: a larger cache extends it."""
    for fewer in range(config["cache_views"] - 1, 0, -1):
        path = activation_cache_path({**config, "cache_views": fewer}, train, test)
        if path.exists():
            with file_lock(path):
                return torch.load(path, map_location="cpu", weights_only=True)
    return None


def _build_activation_cache(config, model, train_aug, test, path: Path, progress: bool) -> dict:
    block, views = config["cache_from_block"], config["cache_views"]
    prefix = _frozen_prefix(model, config)
    started = time.perf_counter()
    smaller = _cache_with_fewer_views(config, train_aug, test)
    reused = smaller["train"].shape[1] if smaller is not None else 0
    train_views = [smaller["train"][:, v] for v in range(reused)] + [
        _prefix_activations(prefix, train_aug, block, 32, config["num_workers"], config["seed"] * 1000 + v, f"cache: train view {v + 1}/{views}", progress)
        for v in range(reused, views)
    ]
    if smaller is None:
        test_activations = _prefix_activations(prefix, test, block, 32, config["num_workers"], config["seed"], "cache: test", progress)
    else:
        test_activations = smaller["test"]
    cache = {
        "train": torch.stack(train_views, dim=1),  # (N, V, C, H, W)
        "test": test_activations,
        "train_labels": torch.as_tensor(np.asarray(train_aug.labels)),
        "test_labels": torch.as_tensor(np.asarray(test.labels)),
        # the whole cost of its content: this build, plus the build of the views it reused
        "seconds": time.perf_counter() - started + (float(smaller["seconds"]) if smaller is not None else 0.0),
    }
    atomic_write_bytes(path, lambda f: torch.save(cache, f))
    return cache



def _validation_activations(config, model, plain, indices, cache_path: Path, progress) -> torch.Tensor:
    """Plain-view activations of the held-out training images, cached beside the main cache."""
    path = cache_path.with_name(f"{cache_path.stem}-validation-{config['validation_classes']}.pt")
    with file_lock(path):
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        prefix = _frozen_prefix(model, config)
        from .data import ClassSubset

        activations = _prefix_activations(
            prefix, ClassSubset(plain, indices), config["cache_from_block"], 32, config["num_workers"], config["seed"], "cache: validation",
            progress,
        )
        atomic_write_bytes(path, lambda f: torch.save(activations, f))
        return activations

