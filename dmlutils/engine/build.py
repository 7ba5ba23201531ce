"""Building a run: its data sets, held-out validation classes, backbone, model, loss,
optimiser groups and learning-rate schedule. Nothing here trains or evaluates."""
from __future__ import annotations

import bisect
import contextlib
import math

import numpy as np
import torch
from torch import nn

from ..losses import get_loss


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- data --------------------------------------------------------------------------------


def build_datasets(config: dict, root=None):
    """(train, test) data sets of the profile, with the train / test transforms."""
    return dataset_split(config, "train", True, root), dataset_split(config, "test", False, root)


def dataset_split(config: dict, split: str, augment: bool, root=None):
    """One split of the profile's data set, with the training (`augment`) or test transform."""
    from ..data import get_dataset, get_transforms

    if config["data"] == "synthetic":  # generated tensors in [0, 1]: no decoding, no augmentation
        return _first_classes(config, get_dataset("synthetic", split=split, seed=config["seed"], image_size=config["image_size"]))
    sizes = dict(resize=config["resize_size"], crop=config["image_size"], scale=(config["crop_min_area"], 1.0))
    return _first_classes(
        config, get_dataset(config["data"], root=root, split=split, transform=get_transforms(config["transform"], train=augment, **sizes))
    )


def _first_classes(config: dict, dataset):
    """The samples of the first `max_classes` classes of a split (all of them when 0)."""
    n = config.get("max_classes", 0)
    if not n:
        return dataset
    from ..data import ClassSubset

    labels = np.asarray(dataset.labels)
    classes = np.unique(labels)
    if len(classes) < n:
        raise ValueError(f"max_classes={n} but this split has only {len(classes)} classes")
    return ClassSubset(dataset, np.flatnonzero(np.isin(labels, classes[:n])))


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


def hold_out_validation(config: dict, train_set, root=None):
    """(train set, evaluation set) of a run with `validation_classes` held out: the held-out
    classes are evaluated on the test-time view of their images."""
    from ..data import ClassSubset

    fit_idx, val_idx, _ = validation_split(config, train_set.labels)
    plain = dataset_split(config, "train", False, root)
    return ClassSubset(train_set, fit_idx), ClassSubset(plain, val_idx)


def evaluation_split_name(config: dict) -> str:
    return "validation" if config["validation_classes"] else "test"


def evaluated_on(config: dict, evaluation_set) -> dict:
    """What a record's metrics measure: the split, its images and its class range."""
    classes = sorted(int(c) for c in np.unique(np.asarray(evaluation_set.labels)))
    return {"split": evaluation_split_name(config), "images": len(evaluation_set), "classes": len(classes), "labels": [classes[0], classes[-1]]}


# --- model and loss ----------------------------------------------------------------------


def build_backbone(config: dict) -> nn.Module:
    """The profile's backbone, its ImageNet weights read from `weights_path` when set."""
    from ..models import get_backbone

    kwargs = {}
    if config.get("weights_path"):
        if config["backbone"] != "bn_inception":
            raise ValueError(
                f"weights_path loads BN-Inception weights; backbone {config['backbone']!r} gets its own "
                "(leave weights_path empty)"
            )
        kwargs["weights_path"] = config["weights_path"]
    return get_backbone(config["backbone"], pretrained=config["pretrained"], **kwargs)


def build_model(config: dict) -> nn.Module:
    from ..models import EmbeddingModel

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


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config: dict, device):
    """torch.autocast at the `amp` setting for a forward pass; a no-op when "off"."""
    amp = config.get("amp", "off")
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


# --- optimiser ---------------------------------------------------------------------------


def _in_cached_prefix(name: str, block: int) -> bool:
    """Whether a backbone parameter belongs to the part computed once into the cache: the
    stem and the blocks before `block` (EfficientNet-Lite's parameter names)."""
    if name.startswith("_blocks."):
        return int(name.split(".")[1]) < block
    return name.startswith(("_conv_stem.", "_bn0."))


def trainable_parameters(model, config) -> tuple[list, list]:
    """(backbone parameters, head parameters) that train; the cached prefix and the
    ImageNet classifier are frozen."""
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
    backbone_params, head_params = trainable_parameters(model, config)
    loss_params = list(loss_fn.parameters())
    groups = [
        {"params": backbone_params, "lr": config["lr"]},
        {"params": head_params + ([] if config["loss_lr"] else loss_params), "lr": config["head_lr"]},
        {"params": loss_params if config["loss_lr"] else [], "lr": config["loss_lr"]},
    ]
    return [g for g in groups if g["params"]]


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
