"""Image pipelines for the backbones, chosen by name: ``get_transforms(name, train)``.

Geometry follows the MS-loss paper's official code: train = resize the shorter side to
256, RandomResizedCrop 227 with scale (0.16, 1), horizontal flip; test = resize 256,
centre crop 227. The pipelines differ in the backbone's input convention:

=====================  =========  ======  =====================  =================
name                   channels   range   mean                   std
=====================  =========  ======  =====================  =================
``bninception``        BGR        0-255   (104, 117, 128) BGR    (1, 1, 1)
``resnet50``           RGB        0-1     ImageNet (.485 ...)    ImageNet (.229 ...)
``efficientnet_lite0`` RGB        0-1     (0.5, 0.5, 0.5)        (0.5, 0.5, 0.5)
=====================  =========  ======  =====================  =================

BN-Inception is the Caffe model ported to PyTorch: it expects BGR pixels in 0-255
minus the Caffe mean. EfficientNet-Lite0's checkpoint is a port of the TensorFlow one,
whose inputs are scaled to [-1, 1]. ``efficientnet_lite0`` is the cpu profile's
reduced-resolution pipeline for the 160-px CUB copy: resize 160, crop 144 (train:
RandomResizedCrop 144, scale (0.16, 1), flip). Every size is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

__all__ = ["TRANSFORM_SPECS", "InputSpec", "RGBToBGR", "denormalize", "get_transforms", "pipeline_stages", "transform_names"]


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects, and the default sizes of its pipeline."""

    mean: tuple[float, float, float]  # in the backbone's channel order and value range
    std: tuple[float, float, float]
    bgr: bool  # channels reversed (Caffe models)
    max_value: float  # 255.0 for 0-255 inputs, 1.0 for 0-1
    resize: int  # shorter side before cropping
    crop: int  # side of the square crop
    scale: tuple[float, float]  # RandomResizedCrop area range (train)


TRANSFORM_SPECS: dict[str, InputSpec] = {
    "bninception": InputSpec(
        mean=(104.0, 117.0, 128.0), std=(1.0, 1.0, 1.0), bgr=True, max_value=255.0,
        resize=256, crop=227, scale=(0.16, 1.0),
    ),
    "resnet50": InputSpec(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), bgr=False, max_value=1.0,
        resize=256, crop=227, scale=(0.16, 1.0),
    ),
    "efficientnet_lite0": InputSpec(
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=False, max_value=1.0,
        resize=160, crop=144, scale=(0.16, 1.0),
    ),
}


def transform_names() -> list[str]:
    return sorted(TRANSFORM_SPECS)


def _spec(name: str) -> InputSpec:
    try:
        return TRANSFORM_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown transform pipeline {name!r}; valid names: {', '.join(transform_names())}.") from None


class RGBToBGR(torch.nn.Module):
    """Reverse the channel axis of a (..., 3, H, W) tensor (RGB <-> BGR)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-3)


def get_transforms(
    name: str,
    train: bool,
    *,
    resize: int | None = None,
    crop: int | None = None,
    scale: tuple[float, float] | None = None,
    flip_prob: float = 0.5,
) -> v2.Compose:
    """The train or test pipeline of a backbone, PIL image (or uint8 tensor) -> float tensor.

    Args:
        name: one of :func:`transform_names` (``bninception``, ``efficientnet_lite0``, ``resnet50``).
        train: random crop + flip if True, centre crop if False.
        resize: shorter side after resizing (default: the pipeline's, e.g. 256).
        crop: side of the square output (default: the pipeline's, e.g. 227).
        scale: RandomResizedCrop's area range (train only; default (0.16, 1)).
        flip_prob: probability of a horizontal flip (train only).
    """
    spec = _spec(name)
    resize = spec.resize if resize is None else int(resize)
    crop = spec.crop if crop is None else int(crop)
    scale = spec.scale if scale is None else tuple(scale)
    if resize < 1 or crop < 1:
        raise ValueError(f"resize and crop must be positive, got resize={resize}, crop={crop}.")
    if crop > resize:
        raise ValueError(
            f"crop={crop} is larger than resize={resize}: the centre crop would pad the image "
            f"with black borders. Use crop <= resize."
        )
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale}.")
    if not 0 <= flip_prob <= 1:
        raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}.")

    # Decode to a uint8 tensor first: torchvision's antialiased uint8 resize is fast.
    steps: list = [v2.ToImage(), v2.Resize(resize, antialias=True)]
    if train:
        steps += [v2.RandomResizedCrop(crop, scale=scale, antialias=True), v2.RandomHorizontalFlip(flip_prob)]
    else:
        steps += [v2.CenterCrop(crop)]
    steps.append(v2.ToDtype(torch.float32, scale=spec.max_value == 1.0))  # scale=True maps 0-255 -> 0-1
    if spec.bgr:
        steps.append(RGBToBGR())
    steps.append(v2.Normalize(mean=list(spec.mean), std=list(spec.std)))
    return v2.Compose(steps)


_DETERMINISTIC = (v2.ToImage, v2.Resize, v2.CenterCrop)


def pipeline_stages(pipeline: v2.Compose | None) -> tuple[v2.Transform, v2.Transform, v2.Transform]:
    """A pipeline of :func:`get_transforms` cut in three: (decode, augment, finish).

    ``decode`` is its deterministic head (to a uint8 tensor, resize, centre crop): run once
    per image, its output can be kept in memory. ``augment`` is the random middle
    (RandomResizedCrop, flip; empty for a test pipeline): run on every draw of an image.
    ``finish`` (to float, channel order, normalisation) works on a whole batch at once.
    Composed in order they are the pipeline. ``None`` (generated tensors) gives three
    identities.
    """
    if pipeline is None:
        return v2.Identity(), v2.Identity(), v2.Identity()
    steps = list(pipeline.transforms)
    to_float = next((i for i, step in enumerate(steps) if isinstance(step, v2.ToDtype)), len(steps))
    head = steps[:to_float]
    fixed = next((i for i, step in enumerate(head) if not isinstance(step, _DETERMINISTIC)), len(head))
    return tuple(v2.Compose(part) if part else v2.Identity() for part in (head[:fixed], head[fixed:], steps[to_float:]))


def denormalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """Undo a pipeline's normalisation: RGB floats in [0, 1], e.g. to show a batch."""
    spec = _spec(name)
    mean = torch.tensor(spec.mean, dtype=images.dtype, device=images.device)[:, None, None]
    std = torch.tensor(spec.std, dtype=images.dtype, device=images.device)[:, None, None]
    restored = images * std + mean
    if spec.bgr:
        restored = restored.flip(-3)
    return (restored / spec.max_value).clamp(0, 1)
