"""Cars196 (Krause et al. 2013) with the deep-metric-learning split."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .base import ON_CORRUPT_CHOICES, ImageListDataset, check_choice, locate_or_download

__all__ = ["Cars196"]


def _field(record, name: str):
    """A scalar from a loadmat struct record, whatever nesting squeeze_me left."""
    value = np.asarray(record[name])
    return value.reshape(-1)[0] if value.size else value


class Cars196(ImageListDataset):
    """Stanford Cars (196 models), read from ``cars_annos.mat`` + ``car_ims/``.

    Split (Song et al. 2016): ``"train"`` = classes 1-98 (8,054 images), ``"test"`` =
    classes 99-196 (8,131 images); the annotation's own ``test`` flag is ignored.
    Labels are 0-based, re-indexed within the split in order of the official class id
    (train: id - 1, test: id - 99). ``classes[label]`` is the model name.

    Args:
        root: data root holding ``cars196/`` (with ``cars_annos.mat`` and ``car_ims/``),
            or that folder itself; default ``$DML_DATA``, else ``./data``.
        split, transform, on_corrupt: as for :class:`~dmlutils.data.CUB200`.
        download: fetch ``car_ims.tgz`` and ``cars_annos.mat`` from the original
            Stanford host into ``<root>/cars196`` (MD5-checked). That host has been
            offline at times; the error then says where to put files fetched by hand.
        crop_to_bbox: crop to the annotated box (bbox_x1..bbox_y2, 1-based inclusive pixels).
    """

    name = "Cars196"
    folder = "cars196"
    splits = ("train", "test")
    num_train_classes = 98
    required = ("cars_annos.mat", "car_ims")
    # (urls, md5, file name, extract?)
    resources = (
        (
            (
                "http://ai.stanford.edu/~jkrause/car196/car_ims.tgz",
                "http://imagenet.stanford.edu/internal/car196/car_ims.tgz",
            ),
            "d5c8f0aa497503f355e17dc7886c3f14",
            "car_ims.tgz",
            True,
        ),
        (
            (
                "http://ai.stanford.edu/~jkrause/car196/cars_annos.mat",
                "http://imagenet.stanford.edu/internal/car196/cars_annos.mat",
            ),
            "b407c6086d669747186bd1d764ff9dbc",
            "cars_annos.mat",
            False,
        ),
    )

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: Callable | None = None,
        download: bool = False,
        crop_to_bbox: bool = False,
        on_corrupt: str = "raise",
    ) -> None:
        check_choice("split", split, self.splits)
        check_choice("on_corrupt", on_corrupt, ON_CORRUPT_CHOICES)
        folder = locate_or_download(
            self.name,
            root,
            (self.folder, "."),
            self.required,
            layout=(
                f"  {self.folder}/cars_annos.mat   (struct 'annotations': relative_im_path, bbox_x1..bbox_y2, class, test; 'class_names')\n"
                f"  {self.folder}/car_ims/000001.jpg ... 016185.jpg"
            ),
            how_to_get=(
                f"Cars196(root=..., download=True) tries {self.resources[0][0][0]} and "
                f"{self.resources[1][0][0]}; or fetch car_ims.tgz (MD5 {self.resources[0][1]}) and "
                f"cars_annos.mat (MD5 {self.resources[1][1]}) yourself, put both in "
                f"<data root>/{self.folder}/ and run `tar -xzf car_ims.tgz` there."
            ),
            download=download,
            resources=self.resources,
            download_into=self.folder,
        )
        self.root = folder
        self.split = split

        try:
            import scipy.io
        except ImportError as err:  # pragma: no cover - scipy comes with scikit-learn
            raise ImportError("Cars196 reads cars_annos.mat with scipy: pip install scipy") from err
        mat = scipy.io.loadmat(folder / "cars_annos.mat", squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        class_names = [str(n) for n in np.atleast_1d(mat["class_names"])]

        official_class = np.array([int(_field(a, "class")) for a in annotations], dtype=np.int64)
        in_split = official_class <= self.num_train_classes if split == "train" else official_class > self.num_train_classes
        chosen = annotations[in_split]
        if len(chosen) == 0:
            raise ValueError(f"{folder / 'cars_annos.mat'} lists no image of the {split!r} split's classes.")
        class_ids, labels = np.unique(official_class[in_split], return_inverse=True)
        if class_ids.max() > len(class_names):
            raise ValueError(f"{folder / 'cars_annos.mat'}: class id {class_ids.max()} but only {len(class_names)} class names.")

        boxes = None
        if crop_to_bbox:
            corners = np.array(
                [[float(_field(a, f"bbox_{c}")) for c in ("x1", "y1", "x2", "y2")] for a in chosen], dtype=np.float64
            )
            # 1-based inclusive corners -> 0-based (left, top, right-exclusive, bottom-exclusive)
            boxes = corners - np.array([1.0, 1.0, 0.0, 0.0])

        self.class_ids = [int(c) for c in class_ids]
        super().__init__(
            paths=[str(folder / str(_field(a, "relative_im_path"))) for a in chosen],
            labels=labels,
            classes=[class_names[int(c) - 1] for c in class_ids],
            transform=transform,
            on_corrupt=on_corrupt,
            boxes=boxes,
        )
