"""Backbones by name: `get_backbone("efficientnet_lite0", pretrained=True)`."""

from __future__ import annotations

from torch import nn

from .bninception import bn_inception
from .efficientnet_lite import efficientnet_lite0
from .tiny import tiny_cnn

__all__ = ["BACKBONES", "get_backbone"]


def _resnet50(pretrained: bool = False, **kwargs) -> nn.Module:
    # Imported lazily: only this backbone needs torchvision's model zoo.
    from .resnet import resnet50

    return resnet50(pretrained=pretrained, **kwargs)


# name -> factory(pretrained=..., **kwargs); each returns a module with
# features(x) -> (N, C, H, W), num_features = C and input_config.
BACKBONES = {
    "efficientnet_lite0": efficientnet_lite0,
    "bn_inception": bn_inception,
    "resnet50": _resnet50,
    "tiny_cnn": tiny_cnn,
}


def get_backbone(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """Build a backbone by name; `kwargs` go to its factory (e.g. weights_path).

    `tiny_cnn` has no pretrained weights: ask for it with pretrained=False.
    """
    try:
        factory = BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; valid names: "
                         f"{', '.join(sorted(BACKBONES))}") from None
    return factory(pretrained=pretrained, **kwargs)
