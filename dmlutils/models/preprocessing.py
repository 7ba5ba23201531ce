"""What each backbone expects as input, and a module that converts to it.

Every backbone was trained on a different input convention (RGB in [-1, 1] for the
TensorFlow EfficientNet-Lite port, BGR 0-255 minus the Caffe mean for BN-Inception,
RGB ImageNet mean/std for torchvision's ResNet). Feeding the wrong one costs
several points of accuracy without any error, so each backbone carries its
`InputConfig`, and `BackboneNormalize` turns torchvision's usual `ToTensor()`
output (RGB, float in [0, 1]) into that convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InputConfig", "BackboneNormalize"]


@dataclass(frozen=True)
class InputConfig:
    """The input convention of a pretrained backbone.

    `mean` and `std` are in the units of `value_range` and in the channel order of
    `color_space`: the network sees `(x * value_range[1] - mean) / std`.
    `size` is the square side the weights were trained at (a default, not a limit).
    """

    color_space: str  # "RGB" or "BGR"
    value_range: tuple[float, float]  # (0, 1) or (0, 255)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int

    def __post_init__(self) -> None:
        if self.color_space not in ("RGB", "BGR"):
            raise ValueError(
                f"color_space must be 'RGB' or 'BGR', got {self.color_space!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must each have 3 values, one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")


class BackboneNormalize(nn.Module):
    """Map RGB images in [0, 1] (the output of `ToTensor()`) to a backbone's input.

    Works on a single image (3, H, W) or a batch (N, 3, H, W), so it can sit in a
    torchvision `Compose` or be applied to a whole batch.
    """

    def __init__(self, config: InputConfig):
        super().__init__()
        self.config = config
        self.register_buffer(
            "mean", torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() not in (3, 4) or images.shape[-3] != 3:
            raise ValueError(
                "expected RGB images shaped (3, H, W) or (N, 3, H, W), "
                f"got shape {tuple(images.shape)}"
            )
        if self.config.color_space == "BGR":
            images = images.flip(-3)
        images = images * self.config.value_range[1]
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.color_space}, range={c.value_range}, mean={c.mean}, std={c.std}"
