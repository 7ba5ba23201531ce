"""A tiny generated image data set for unit tests and the smoke profile.

Each class has a pattern: a smooth colour layout (a random 4 x 4 colour grid,
bilinearly upsampled) blended with an oriented colour grating. An image of the class is
its pattern, shifted by a few pixels (circularly), scaled in brightness and covered in
Gaussian noise. Classes therefore differ in colour layout and texture -- the kind of
cue a small CNN picks up -- and what a network learns on the training classes carries
over to the unseen test classes, as a metric-learning split requires.

It never stands in for a real data set in a reported number.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import check_choice

__all__ = ["SyntheticDataset"]


class SyntheticDataset(Dataset):
    """Noisy copies of class-specific patterns, deterministic from a seed.

    Items are ``(image, label)`` with ``image`` a float32 tensor (3, S, S) in [0, 1]
    (``transform``, if given, is applied to that tensor).

    Split: the first ``num_classes // 2`` classes are ``"train"``, the others ``"test"``
    (class-disjoint, like CUB); labels are 0-based within the split. Every image is
    generated on access from ``(seed, class, index)``, so any access order, any
    DataLoader worker and any machine give the same pixels.

    Args:
        split: ``"train"`` or ``"test"``.
        num_classes: classes in both splits together (at least 2).
        images_per_class: images of each class.
        image_size: side S of the square images.
        noise_std: standard deviation of the per-pixel Gaussian noise (the pattern's
            values span [0, 1]); larger is harder.
        max_shift: largest circular shift in pixels, per axis.
        seed: fixes the patterns and the noise.
        transform: applied to the image tensor.
    """

    splits = ("train", "test")
    version = 1  # part of the fingerprint: bump it when the same parameters generate other pixels

    def __init__(
        self,
        split: str = "train",
        num_classes: int = 20,
        images_per_class: int = 20,
        image_size: int = 32,
        noise_std: float = 0.4,
        max_shift: int = 8,
        seed: int = 0,
        transform: Callable | None = None,
    ) -> None:
        check_choice("split", split, self.splits)
        if num_classes < 2:
            raise ValueError(f"SyntheticDataset needs num_classes >= 2 (one per split), got {num_classes}.")
        if images_per_class < 1 or image_size < 4:
            raise ValueError(
                f"SyntheticDataset needs images_per_class >= 1 and image_size >= 4, "
                f"got {images_per_class} and {image_size}."
            )
        if noise_std < 0 or max_shift < 0:
            raise ValueError(f"noise_std and max_shift must be >= 0, got {noise_std} and {max_shift}.")
        self.split = split
        self.images_per_class = images_per_class
        self.image_size = image_size
        self.noise_std = float(noise_std)
        self.max_shift = int(max_shift)
        self.seed = int(seed)
        self.transform = transform

        num_train = num_classes // 2
        global_classes = range(num_train) if split == "train" else range(num_train, num_classes)
        self._global_classes = list(global_classes)
        self.classes = [f"synthetic_{c:03d}" for c in self._global_classes]
        self.labels = np.repeat(np.arange(len(self._global_classes), dtype=np.int64), images_per_class)
        self._patterns = torch.stack([self._pattern(c) for c in self._global_classes])

    def _pattern(self, global_class: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, global_class, 0))
        size = self.image_size
        grid = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
        layout = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[0]
        angle, frequency, phase = rng.uniform(0, math.pi), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * math.pi)
        colour = torch.from_numpy(rng.random(3, dtype=np.float32))[:, None, None]
        coords = torch.linspace(0, 1, size)
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        wave = 0.5 + 0.5 * torch.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)) + phase)
        return (0.5 * layout + 0.5 * wave[None] * colour).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def generation_parameters(self) -> dict:
        """Everything that generates the pixels: the fingerprint hashes these instead of images
        (:func:`dmlutils.data.data_fingerprint`; change a key and every record's data fingerprint changes)."""
        return {
            "version": self.version,
            "classes": list(self._global_classes),
            "images_per_class": self.images_per_class,
            "image_size": self.image_size,
            "noise_std": self.noise_std,
            "max_shift": self.max_shift,
            "seed": self.seed,
        }

    def fingerprint(self) -> dict:
        """A fingerprint of the generation parameters (:func:`dmlutils.data.data_fingerprint`)."""
        from .fingerprint import data_fingerprint

        return data_fingerprint(self)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for SyntheticDataset of {len(self)} images")
        index %= len(self)
        label = int(self.labels[index])
        global_class = self._global_classes[label]
        rng = np.random.default_rng((self.seed, global_class, 1 + index % self.images_per_class))
        shift_y, shift_x = (int(s) for s in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        gain = rng.uniform(0.8, 1.2)
        noise = torch.from_numpy(rng.standard_normal((3, self.image_size, self.image_size), dtype=np.float32))
        image = torch.roll(self._patterns[label], shifts=(shift_y, shift_x), dims=(1, 2)) * gain
        image = (image + self.noise_std * noise).clamp(0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image, label
