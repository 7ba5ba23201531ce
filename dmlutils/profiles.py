"""Named run profiles: one training code path at four sizes (smoke / cpu / cpu_full / paper).

A profile is a flat dict of settings; `make_config(profile, loss, overrides)` copies it,
applies `--set key=value` overrides (checked against the profile's keys, values parsed
to the default's type) and loss hyper-parameters (`loss.beta=50`, checked against the
loss's constructor). Unknown profiles, keys or hyper-parameters raise a ValueError
that lists the valid ones.

* smoke — synthetic images, a tiny CNN trained end to end: CI and the book's smoke run.
* cpu   — CUB-200-2011 (the 160-px copy), EfficientNet-Lite0 with ImageNet weights.
          The first blocks are frozen and their output (the activations entering
          block `cache_from_block`) is computed once for `cache_views` augmented views
          of every training image and cached; training fine-tunes the remaining blocks
          and the embedding head on those cached activations, picking one view per image
          per step. BatchNorm frozen throughout (statistics of ImageNet).
          Version 2 is the recipe the study of `dmlutils.recipe` chose on held-out
          training classes: 224 px (the 160-px copy upsampled), max pooling, a cosine
          decay from 1e-4, blocks 11-15 on 5 views with random flips, 400 iterations,
          the test split evaluated every 100. Version 1 (144 px, average pooling, a
          constant rate, no flips) is the study's starting point, `recipe.BASE`.
* cpu_full — the paper's manner on a CPU: the same data, backbone and input as cpu, but
          every block of EfficientNet-Lite0 fine-tuned (BatchNorm frozen) on images
          decoded once into memory and re-augmented on every step (`decoded_images`),
          channels-last, 800 iterations with the test split evaluated every 200.
          Version 3 is the recipe its study (`recipe.full_study`) chose on held-out
          training classes: blocks and head at 5e-5 decayed along a cosine, no warm-up,
          random crops of at least 64% of the image's area. Version 2 kept the paper
          code's smallest crop (16%); version 1 (both rates 1e-4) is the study's
          starting point, `recipe.FULL_BASE`.
* paper — the paper's setting (BN-Inception, 227-px crops of 256-px images, batch
          80 = 16 x 5, Adam 3e-5 with weight decay 5e-4, 3,000 iterations, lr x 0.1 at
          1,200 and 2,400, global max pooling, frozen BN). For a GPU or Colab.

Learning-rate schedule: `lr_schedule="step"` multiplies the rates by `lr_gamma` at each of
`lr_milestones`; `"cosine"` decays them to 0 along a half cosine over `iterations`. Either
starts with a linear warm-up over `warmup_iterations` (0: none).

`loss_lr` is the learning rate of the loss's own parameters (triplet-center's class
centres; 0: the head's `head_lr`).

Cheap augmentation of cached activations (cpu): `feature_crop=c` trains on a random c x c
window of each cached activation map (evaluation sees the whole map; the convolutions and
the global pooling accept either size, and a smaller map is a cheaper step);
`feature_flip=true` mirrors half of the maps left-right.

Training crops: `crop_min_area` is the smallest area of RandomResizedCrop's random crop, as
a fraction of the resized image: 0.16 (the paper's code) in every profile but cpu_full,
whose recipe study chose 0.64. The copy's images are 160 px on their shorter side, so a
small crop is also a blurred one.

`decoded_images=true` (images path) decodes and resizes every image once into memory as
uint8 and runs the random crop and flip on tensors at each step, in the main process: no
JPEG decoding per step, and a resumed run repeats every random draw.

`xbm_size=n` adds a cross-batch memory of the last n embeddings (`dmlutils.xbm`), used
from iteration `xbm_start` on (the XBM paper's warm-up; the memory fills from there).

Class subset (tests, quick looks): `max_classes=n` (0: all) keeps the first n classes of
each split, training on n classes and evaluating on n.

Backbone weights: `weights_path` (empty: the backbone's published ImageNet weights, from
torch's hub cache, downloaded and checksummed the first time) loads a local copy instead
(BN-Inception). Setting `backbone` without `transform` also sets `transform` to that
backbone's input pipeline, so `--set backbone=resnet50` is all it takes to train ResNet-50
with torchvision's ImageNet weights at the paper profile (its records say so in `backbone`).

GPU efficiency on the images path (the defaults keep full float32, as every record so far):
`amp` = "off" | "bf16" | "fp16" runs the forward pass under torch.autocast (fp16 with a
GradScaler); the loss always runs in float32 on float32 embeddings. `channels_last` feeds
images and the model in channels-last memory format; `cudnn_benchmark` lets cuDNN pick the
fastest convolution algorithms (restored after the run); `pin_memory` pins the loader's
batches for faster host-to-GPU copies (CUDA only); `num_workers` decodes images in that many
processes. Each is a setting, so the run record (which stores the config) shows it. On one
GPU the paper profile might run, e.g., with `--set amp=bf16 --set channels_last=true --set
cudnn_benchmark=true --set pin_memory=true` (fp16 on GPUs without bfloat16, such as the T4).

`PROFILE_VERSIONS` numbers each profile's settings; a record names the version it ran
under, and tables never mix versions (`dmlutils.records`).

`validation_classes=n` (0 by default) holds the last n classes of the training split out:
the run trains on the others and evaluates on those n (plain test-time view), never
reading the test split. Setting studies (`dmlutils.studies`) select on it.
"""
from __future__ import annotations

import ast
import copy

from .losses.registry import loss_hparam_names

PROFILES: dict[str, dict] = {
    "smoke": dict(
        data="synthetic",
        backbone="tiny_cnn",
        pretrained=False,
        image_size=32,
        resize_size=32,
        crop_min_area=0.16,  # RandomResizedCrop: the smallest crop, as a fraction of the resized image
        transform=None,
        embedding_dim=512,  # as at cpu and paper: the manifest sweeps sizes around 512
        pooling="avg",
        freeze_bn=False,
        p=8,
        k=4,
        iterations=60,
        eval_every=20,
        optimizer="adam",
        lr=1e-3,
        head_lr=1e-3,
        loss_lr=0.0,
        weight_decay=0.0,
        lr_milestones=(),
        lr_gamma=0.1,
        lr_schedule="step",
        warmup_iterations=0,
        cache_views=0,
        decoded_images=False,
        cache_from_block=0,
        feature_crop=0,
        feature_flip=False,
        xbm_size=0,
        xbm_start=0,
        validation_classes=0,
        num_workers=0,
        eval_batch_size=256,
        eval_ks=(1, 2, 4, 8),
        seed=0,
        max_classes=0,
        weights_path="",
        amp="off",
        channels_last=False,
        cudnn_benchmark=False,
        pin_memory=False,
    ),
    "cpu": dict(
        data="cub200",
        backbone="efficientnet_lite0",
        pretrained=True,
        image_size=224,
        resize_size=256,
        crop_min_area=0.16,  # RandomResizedCrop: the smallest crop, as a fraction of the resized image
        transform="efficientnet_lite0",
        embedding_dim=512,
        pooling="max",
        freeze_bn=True,
        p=16,
        k=5,
        iterations=400,
        eval_every=100,
        optimizer="adam",
        lr=1e-4,
        head_lr=1e-4,
        loss_lr=0.0,
        weight_decay=5e-4,
        lr_milestones=(),
        lr_gamma=0.1,
        lr_schedule="cosine",
        warmup_iterations=0,
        cache_views=5,
        decoded_images=False,
        cache_from_block=11,
        feature_crop=0,
        feature_flip=True,
        xbm_size=0,
        xbm_start=0,
        validation_classes=0,
        num_workers=0,
        eval_batch_size=128,
        eval_ks=(1, 2, 4, 8, 16, 32),
        seed=0,
        max_classes=0,
        weights_path="",
        amp="off",
        channels_last=False,
        cudnn_benchmark=False,
        pin_memory=False,
    ),
    "cpu_full": {},  # the cpu profile's data, backbone and input, every block trained: below
    "paper": dict(
        data="cub200",
        backbone="bn_inception",
        pretrained=True,
        image_size=227,
        resize_size=256,
        crop_min_area=0.16,  # RandomResizedCrop: the smallest crop, as a fraction of the resized image
        transform="bninception",
        embedding_dim=512,
        pooling="max",
        freeze_bn=True,
        p=16,
        k=5,
        iterations=3000,
        eval_every=200,
        optimizer="adam",
        lr=3e-5,
        head_lr=3e-5,
        loss_lr=0.0,
        weight_decay=5e-4,
        lr_milestones=(1200, 2400),
        lr_gamma=0.1,
        lr_schedule="step",
        warmup_iterations=0,
        cache_views=0,
        decoded_images=False,
        cache_from_block=0,
        feature_crop=0,
        feature_flip=False,
        xbm_size=0,
        xbm_start=0,
        validation_classes=0,
        num_workers=4,
        eval_batch_size=128,
        eval_ks=(1, 2, 4, 8, 16, 32),
        seed=0,
        max_classes=0,
        weights_path="",
        amp="off",
        channels_last=False,
        cudnn_benchmark=False,
        pin_memory=False,
    ),
}

# cpu_full: cpu's data, backbone, input and optimiser, but no activation cache: every block
# trains on images decoded once into memory, channels-last; its own rates, length, cadence and
# smallest crop (version 3: the recipe study's choice, results/cpu_full/recipe/).
PROFILES["cpu_full"] = {
    **PROFILES["cpu"],
    "lr": 5e-5,
    "head_lr": 5e-5,
    "iterations": 800,
    "eval_every": 200,
    "cache_views": 0,
    "decoded_images": True,
    "cache_from_block": 0,
    "feature_flip": False,
    "channels_last": True,
    "crop_min_area": 0.64,
}

# Bumped whenever a profile's settings change; records carry it as `profile_version`.
PROFILE_VERSIONS = {"smoke": 2, "cpu": 2, "cpu_full": 3, "paper": 1}
# The settings that build an activation cache (`dmlutils.cache`): runs that agree on them
# share one cache (its file name, and the cost tables that count each cache once, use
# them). Here beside the settings, not in the cache module, so that the record readers'
# cost table (`dmlutils.report.cpu_seconds`) imports nothing of the planning or the cache.
CACHE_SETTINGS = ("data", "backbone", "pretrained", "image_size", "resize_size", "crop_min_area", "transform", "cache_views",
                  "cache_from_block", "seed")


def cache_settings(config: dict) -> tuple:
    """The (setting, value) pairs that identify a run's activation cache."""
    return tuple((k, config.get(k)) for k in CACHE_SETTINGS)


LR_SCHEDULES = ("step", "cosine")
AMP_MODES = ("off", "bf16", "fp16")
# The input pipeline (dmlutils.data.transforms) of each pretrained backbone.
BACKBONE_TRANSFORMS = {"bn_inception": "bninception", "resnet50": "resnet50", "efficientnet_lite0": "efficientnet_lite0"}

LOSS_PREFIX = "loss."


def _parse_like(text: str, default, key: str):
    """Parse a --set value to the type of the profile's default."""
    if not isinstance(text, str):
        return text
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        raise ValueError(f"{key} expects true or false, got {text!r}")
    if isinstance(default, tuple):
        value = ast.literal_eval(text) if text.strip() else ()
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if isinstance(default, (int, float)):
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{key} expects a number, got {text!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return text


def _parse_loss_value(text):
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a plain string such as reduction=mean


def make_config(profile: str, loss: str = "multi_similarity", overrides: dict | None = None) -> dict:
    """The settings of one run: the profile's, then `overrides` (`key` or `loss.<hparam>`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    config = copy.deepcopy(PROFILES[profile])
    valid_hparams = loss_hparam_names(loss)  # raises for an unknown loss, listing the valid ones
    loss_hparams = {}
    for key, value in (overrides or {}).items():
        if key.startswith(LOSS_PREFIX):
            name = key[len(LOSS_PREFIX):]
            if name not in valid_hparams:
                raise ValueError(
                    f"unknown hyper-parameter {name!r} for loss {loss!r}; valid: {', '.join(valid_hparams)}"
                )
            loss_hparams[name] = _parse_loss_value(value)
        elif key in config:
            config[key] = _parse_like(value, config[key], key)
        else:
            raise ValueError(
                f"unknown setting {key!r} for profile {profile!r}; valid settings: {', '.join(config)}, "
                f"or {LOSS_PREFIX}<name> for the loss's hyper-parameters ({', '.join(valid_hparams)})"
            )
    if config["eval_every"] < 1 or config["iterations"] < 0:
        raise ValueError("eval_every must be >= 1 and iterations >= 0")
    if config["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config['lr_schedule']!r}; valid: {', '.join(LR_SCHEDULES)}")
    if config["warmup_iterations"] < 0 or config["feature_crop"] < 0:
        raise ValueError("warmup_iterations and feature_crop must be >= 0")
    if config["decoded_images"] and config["cache_views"]:
        raise ValueError("decoded_images trains on images; cache_views > 0 trains on cached activations: set one of them")
    if config["feature_crop"] and not config["cache_views"]:
        raise ValueError("feature_crop crops cached activation maps: it needs cache_views > 0")
    if not 0 < config["crop_min_area"] <= 1:
        raise ValueError(f"crop_min_area is a fraction of the image's area: it must lie in (0, 1], got {config['crop_min_area']}")
    if config["amp"] not in AMP_MODES:
        raise ValueError(f"unknown amp {config['amp']!r}; valid: {', '.join(AMP_MODES)}")
    if config["max_classes"] < 0 or config["max_classes"] == 1:
        raise ValueError("max_classes must be 0 (all classes) or at least 2")
    if "backbone" in (overrides or {}) and "transform" not in (overrides or {}) and config["transform"] is not None:
        # the backbone's own input convention (BGR 0-255 for BN-Inception, ImageNet mean/std for ResNet-50)
        config["transform"] = BACKBONE_TRANSFORMS.get(config["backbone"], config["transform"])
    config.update(profile=profile, loss=loss, loss_hparams=loss_hparams)
    return config


def parse_set_arguments(pairs: list[str]) -> dict:
    """['lr=1e-4', 'loss.beta=50'] -> {'lr': '1e-4', 'loss.beta': '50'} (parsed later by type)."""
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides
