"""Batch sources: where a run's training batches and evaluation inputs come from.

A source turns a list of sample indices (this rank's share of a P x K batch) at a given
step into a model input, says which module trains on that input, and embeds the
evaluation set. Random draws depend on (seed, step, rank) only, so a resumed run repeats
them; per-sample draws are made for the whole global batch and sliced, so N processes
draw what one process would.

* `ActivationSource` (cpu): the frozen first blocks were run once over `cache_views`
  augmented views of every image (`dmlutils.cache`); a step picks one cached view per
  image and trains the remaining blocks and the head.
* `ImageLoaderSource` (smoke, paper): a DataLoader decodes and augments the images of
  each batch, in `num_workers` processes.
* `DecodedImageSource` (cpu_full, `decoded_images=true`): every image is decoded and
  resized once into memory (uint8); a step augments the tensors of its batch (random
  resized crop, flip) and normalises them as one batch. The evaluation set is decoded,
  resized and centre-cropped once, and embedded in inference mode.

A new regime adds a source here and a branch in `make_source`.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from ..cache import _validation_activations, activation_cache, activation_cache_path
from ..samplers import PKSampler
from .build import autocast, hold_out_validation
from .evaluation import embed


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


class FromCachedBlock(nn.Module):
    """The trainable tail as a module whose forward starts at the cached block: DDP only
    synchronises gradients of its wrapped module's own forward."""

    def __init__(self, model: nn.Module, block: int):
        super().__init__()
        self.model, self.block = model, block

    def forward(self, activations):
        return self.model.forward_from_block(activations, self.block)


class ImageLoaderSource:
    """Images decoded and augmented by a DataLoader: a fresh loader per window of steps,
    whose worker seeds depend on (seed, start, rank) only."""

    def __init__(self, config, train_set, eval_set, device, rank: int = 0, world_size: int = 1):
        self.config, self.train_set, self.eval_set, self.device = config, train_set, eval_set, device
        self.rank, self.world_size = rank, world_size
        self.pin = bool(config.get("pin_memory")) and torch.device(device).type == "cuda"
        self.channels_last = bool(config.get("channels_last"))  # NHWC convolutions (tensor cores on GPUs)
        self.cache_seconds = None

    def trained_module(self, model: nn.Module) -> nn.Module:
        return model

    def batches(self, sampler, start: int, count: int):
        batches = list(pk_batches(sampler, start, count))
        torch.manual_seed(int(step_generator(self.config["seed"], start, 2 + 10 * self.rank).initial_seed()) % 2**63)
        loader = DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=self.config["num_workers"],
            generator=step_generator(self.config["seed"], start, 3 + 10 * self.rank),
            persistent_workers=False,
            pin_memory=self.pin,  # page-locked batches: asynchronous host-to-GPU copies
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=self.pin)
            if self.config.get("channels_last"):
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, torch.as_tensor(labels).to(self.device)

    def embed_evaluation_set(self, model: nn.Module) -> torch.Tensor:
        return embed(model, self.eval_set, self.config, self.device)


class ActivationSource:
    """Cached activations entering block `cache_from_block`: one cached view per image per
    step, optionally cropped (`feature_crop`) and mirrored (`feature_flip`)."""

    def __init__(self, config, cache: dict, device, rank: int = 0, world_size: int = 1):
        self.config, self.cache, self.device = config, cache, device
        self.rank, self.world_size = rank, world_size
        self.block = config["cache_from_block"]
        self.channels_last = True  # the depthwise and 1x1 convolutions run about 1.5x faster on CPU
        self.cache_seconds = cache.get("seconds")

    def trained_module(self, model: nn.Module) -> nn.Module:
        return FromCachedBlock(model, self.block)

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

    def batches(self, sampler, start: int, count: int):
        views = self.cache["train"].shape[1]
        for step, indices in enumerate(pk_batches(sampler, start, count), start):
            idx = torch.as_tensor(indices)
            n = len(idx)
            global_views = torch.randint(views, (n * self.world_size,), generator=step_generator(self.config["seed"], step, 1))
            view = global_views[self.rank * n : (self.rank + 1) * n]
            x = self.augment(self.cache["train"][idx, view], step, n).to(self.device, torch.float32)
            # channels-last: the depthwise and 1x1 convolutions run about 1.5x faster on CPU
            yield x.contiguous(memory_format=torch.channels_last), self.cache["train_labels"][idx].to(self.device)

    def embed_evaluation_set(self, model: nn.Module) -> torch.Tensor:
        return embed(model, self.cache["test"], self.config, self.device, self.block)


def _base_dataset(dataset):
    while hasattr(dataset, "dataset"):  # ClassSubset chains (max_classes, validation classes)
        dataset = dataset.dataset
    return dataset


def decode_once(dataset, desc: str, workers: int = 0, progress: bool = True):
    """(images, augment, finish): every image of `dataset` through the deterministic head of
    its pipeline (decoded, resized, centre-cropped for a test pipeline) as uint8 tensors,
    and the rest of the pipeline in its two parts (`dmlutils.data.pipeline_stages`)."""
    from ..data import pipeline_stages

    base = _base_dataset(dataset)
    pipeline = getattr(base, "transform", None)
    decode, augment, finish = pipeline_stages(pipeline)
    base.transform = decode if pipeline is not None else None
    try:
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=list)
        images = [image for batch in tqdm(loader, desc=desc, leave=False, disable=not progress) for image, _ in batch]
    finally:
        base.transform = pipeline
    return images, augment, finish


class DecodedImageSource:
    """Images decoded once into memory, augmented as tensors on every step. The random draws
    of a step depend on (seed, step, rank) only, so an interrupted run resumes exactly."""

    def __init__(self, config, train_set, eval_set, device, rank: int = 0, world_size: int = 1, progress: bool = True):
        self.config, self.device, self.rank = config, device, rank
        self.channels_last = bool(config.get("channels_last"))
        self.cache_seconds = None
        workers = config["num_workers"]
        self.train_images, self.augment, self.finish = decode_once(train_set, "decode: train", workers, progress)
        self.train_labels = torch.as_tensor(np.asarray(train_set.labels))
        eval_images, _, self.eval_finish = decode_once(eval_set, "decode: evaluation", workers, progress)
        self.eval_images, self.eval_labels = torch.stack(eval_images), np.asarray(eval_set.labels)

    def trained_module(self, model: nn.Module) -> nn.Module:
        return model

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batches(self, sampler, start: int, count: int):
        for step, indices in enumerate(pk_batches(sampler, start, count), start):
            with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global generator
                torch.manual_seed(int(step_generator(self.config["seed"], step, 5 + 10 * self.rank).initial_seed()))
                x = self.finish(torch.stack([self.augment(self.train_images[i]) for i in indices]))
            yield self._input(x), self.train_labels[torch.as_tensor(indices)].to(self.device)

    @torch.inference_mode()
    def embed_evaluation_set(self, model: nn.Module) -> torch.Tensor:
        model.eval()
        size, out = min(self.config["eval_batch_size"], 32), []  # small batches run faster on CPU
        for start in range(0, len(self.eval_images), size):
            with autocast(self.config, self.device):
                out.append(model(self._input(self.eval_finish(self.eval_images[start : start + size]))).float().cpu())
        return torch.cat(out)


def make_source(config, model, train_set, test_set, device, rank=0, world_size=1, root=None, progress=True):
    """(train set, evaluation set, source) of a run: the batch source its profile names,
    with `validation_classes` held out of the training split when set (evaluated instead of
    the test split, which is then never read)."""
    cache = None
    if config["cache_views"]:
        cache = activation_cache(config, model, train_set, test_set, progress)
    eval_set = test_set
    if config["validation_classes"]:
        main_path = activation_cache_path(config, train_set, test_set) if cache is not None else None
        train_set, eval_set = hold_out_validation(config, train_set, root)
        if cache is not None:
            fit_idx = torch.as_tensor(train_set.indices)
            cache = {
                "train": cache["train"][fit_idx],
                "train_labels": cache["train_labels"][fit_idx],
                "test": _validation_activations(config, model, eval_set.dataset, eval_set.indices, main_path, progress),
                "test_labels": torch.as_tensor(eval_set.labels),
                "seconds": cache.get("seconds"),
            }
    if cache is not None:
        source = ActivationSource(config, cache, device, rank, world_size)
    elif config.get("decoded_images"):
        source = DecodedImageSource(config, train_set, eval_set, device, rank, world_size, progress)
    else:
        source = ImageLoaderSource(config, train_set, eval_set, device, rank, world_size)
    return train_set, eval_set, source
