"""ResNet-50 from torchvision, classifier removed: a 2048-d pooled feature.

The other common backbone of deep-metric-learning papers. Pretrained weights come
from torchvision's weight enum (downloaded into torch's hub cache on first use).
"""

from __future__ import annotations

import os
import urllib.error

import torch
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models import resnet50 as _torchvision_resnet50

from .preprocessing import InputConfig

__all__ = ["ResNet50Backbone", "resnet50", "RESNET_INPUT"]

RESNET_INPUT = InputConfig(
    color_space="RGB", value_range=(0.0, 1.0), mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225), size=224,
)


class ResNet50Backbone(nn.Module):
    """torchvision's ResNet-50 without `fc`.

    `features(x)` is the (N, 2048, H/32, W/32) map after `layer4`; `forward(x)`
    its global average, (N, 2048). The torchvision network is kept whole (with
    `fc` an identity) so its state-dict keys stay `body.conv1.weight`, ...
    """

    input_config = RESNET_INPUT
    num_features = 2048

    def __init__(self, body: nn.Module):
        super().__init__()
        body.fc = nn.Identity()
        self.body = body

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.body.avgpool(self.features(x)), 1)


def resnet50(pretrained: bool = False, weights: str = "IMAGENET1K_V1") -> ResNet50Backbone:
    """ResNet-50 feature extractor; `weights` names a `ResNet50_Weights` member.

    IMAGENET1K_V1 (the original torchvision weights, 76.1 % top-1) is what the
    metric-learning literature used; IMAGENET1K_V2 is a later, stronger recipe.
    """
    if not pretrained:
        return ResNet50Backbone(_torchvision_resnet50(weights=None))
    try:
        weight_enum = ResNet50_Weights[weights]
    except KeyError:
        raise ValueError(f"unknown ResNet-50 weights {weights!r}; valid: "
                         f"{', '.join(ResNet50_Weights.__members__)}") from None
    try:
        body = _torchvision_resnet50(weights=weight_enum)
    except (urllib.error.URLError, OSError) as err:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints",
                              os.path.basename(weight_enum.url))
        raise RuntimeError(
            f"could not download the ResNet-50 weights from {weight_enum.url} ({err}). "
            f"Without internet, fetch that file on another machine and put it at "
            f"{cached}."
        ) from err
    return ResNet50Backbone(body)
