"""ImageNet-1k class names and the indices of its bird classes.

The bird indices are a sanity check of pretrained weights on CUB: a correctly
loaded and correctly preprocessed ImageNet network calls most CUB images some bird.
They were read off the class-name list (and are checked against it in the tests):
7-24 (cock ... great grey owl), 80-100 (black grouse ... black swan) and 127-146
(white stork ... albatross).
"""

from __future__ import annotations

__all__ = ["IMAGENET_BIRD_CLASSES", "imagenet_class_names"]

IMAGENET_BIRD_CLASSES = frozenset(
    [*range(7, 25), *range(80, 101), *range(127, 147)]
)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (from torchvision, offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
