"""A tiny convolutional backbone for the smoke profile and unit tests.

Random weights only: it exists so every notebook and the training loop can run
end to end in seconds on synthetic images. It never produces a reported number.
"""

from __future__ import annotations

import torch
from torch import nn

from .preprocessing import InputConfig

__all__ = ["TinyCNN", "tiny_cnn", "TINY_INPUT"]

TINY_INPUT = InputConfig(
    color_space="RGB", value_range=(0.0, 1.0), mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25), size=32,
)


class TinyCNN(nn.Module):
    """Three stride-2 conv-BN-ReLU layers: (N, 3, H, W) -> (N, width, H/8, W/8)."""

    input_config = TINY_INPUT

    def __init__(self, width: int = 32):
        super().__init__()
        channels = (3, width // 2, width, width)
        layers = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.num_features = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def tiny_cnn(pretrained: bool = False, width: int = 32) -> TinyCNN:
    if pretrained:
        raise ValueError("tiny_cnn has no pretrained weights; pass pretrained=False")
    return TinyCNN(width=width)
