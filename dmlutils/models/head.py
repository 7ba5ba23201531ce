"""The embedding model: backbone feature map -> global pooling -> linear -> L2.

This is the official MS-loss model shape (BN-Inception, global max pooling,
Linear 1024 -> 512, L2 normalisation, BatchNorm frozen), made backbone-agnostic.
A backbone is any module with `features(x)` returning an (N, C, H, W) map and a
`num_features` attribute equal to C (every backbone in `dmlutils.models` has them).

Frozen BatchNorm, as in the official code: the backbone's BatchNorm layers always
run in eval mode (running statistics used, never updated) and their affine
parameters are not trained, even after `model.train()`. With batches of 16 classes
x 5 images, batch statistics would be noisy and far from ImageNet's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "POOLING_MODES",
    "GlobalPool",
    "EmbeddingHead",
    "EmbeddingModel",
    "freeze_batchnorm",
    "batchnorm_layers",
]

# "avg+max" sums the two poolings (as in Roth et al.'s Revisiting-DML code),
# keeping the feature width C.
POOLING_MODES = ("avg", "max", "avg+max")


class GlobalPool(nn.Module):
    """(N, C, H, W) -> (N, C) by global average, max, or their sum."""

    def __init__(self, mode: str = "max"):
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown pooling {mode!r}; valid: {', '.join(POOLING_MODES)}")
        self.mode = mode

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        if feature_map.dim() != 4:
            raise ValueError("expected a feature map shaped (N, C, H, W), got shape "
                             f"{tuple(feature_map.shape)}")
        if self.mode == "avg":
            return feature_map.mean(dim=(2, 3))
        if self.mode == "max":
            return feature_map.amax(dim=(2, 3))
        return feature_map.mean(dim=(2, 3)) + feature_map.amax(dim=(2, 3))

    def extra_repr(self) -> str:
        return repr(self.mode)


class EmbeddingHead(nn.Module):
    """Pool -> Linear(in_features, embedding_dim) -> L2 normalisation.

    `embedding_dim=None` keeps the pooled backbone feature itself (no linear
    layer): the frozen-feature baseline, and on CUB-sized data often better than
    a freshly trained projection.
    """

    def __init__(self, in_features: int, embedding_dim: int | None = 512,
                 pooling: str = "max", normalize: bool = True):
        super().__init__()
        if embedding_dim is not None and (not isinstance(embedding_dim, int)
                                          or embedding_dim < 1):
            raise ValueError(f"embedding_dim must be a positive int or None, "
                             f"got {embedding_dim!r}")
        self.pool = GlobalPool(pooling)
        self.linear = (nn.Linear(in_features, embedding_dim)
                       if embedding_dim is not None else nn.Identity())
        self.normalize = normalize
        self.embedding_dim = embedding_dim if embedding_dim is not None else in_features

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        embeddings = self.linear(self.pool(feature_map))
        return F.normalize(embeddings, p=2, dim=1) if self.normalize else embeddings


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Put every BatchNorm in `module` in eval mode and stop training its affine
    parameters. A later `module.train()` switches them back to training mode;
    `EmbeddingModel(freeze_bn=True)` re-applies the eval mode after each `train()`.
    """
    for bn in batchnorm_layers(module):
        bn.eval()
        for p in bn.parameters():
            p.requires_grad_(False)
    return module


class EmbeddingModel(nn.Module):
    """backbone.features -> EmbeddingHead; L2-normalised embeddings by default.

    `forward_from_block(h, n)` continues from a cached activation entering block
    `n` when the backbone supports it (EfficientNet-Lite), for partial fine-tuning.
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int | None = 512,
                 pooling: str = "max", freeze_bn: bool = True, normalize: bool = True):
        super().__init__()
        if not callable(getattr(backbone, "features", None)) or not hasattr(
                backbone, "num_features"):
            raise TypeError(
                f"{type(backbone).__name__} is not a backbone: it needs a "
                "features(x) method returning (N, C, H, W) and a num_features "
                "attribute; use dmlutils.models.get_backbone(name)"
            )
        self.backbone = backbone
        self.head = EmbeddingHead(backbone.num_features, embedding_dim, pooling, normalize)
        self.freeze_bn = freeze_bn
        if freeze_bn:
            freeze_batchnorm(self.backbone)

    @property
    def embedding_dim(self) -> int:
        return self.head.embedding_dim

    @property
    def input_config(self):
        return getattr(self.backbone, "input_config", None)

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if self.freeze_bn:
            for bn in batchnorm_layers(self.backbone):
                bn.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(images))

    def forward_from_block(self, activation: torch.Tensor, block: int) -> torch.Tensor:
        if not callable(getattr(self.backbone, "features_from_block", None)):
            raise TypeError(f"{type(self.backbone).__name__} cannot start from a block; "
                            "only EfficientNet-Lite supports forward_from_block")
        return self.head(self.backbone.features_from_block(activation, block))
