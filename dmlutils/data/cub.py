"""CUB-200-2011 (Wah et al. 2011) with the deep-metric-learning split, and `cub_found`."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .base import ON_CORRUPT_CHOICES, ImageListDataset, check_choice, locate_or_download, read_table, resolve_data_root

__all__ = ["CUB200", "cub_found"]


def cub_found(root: str | os.PathLike | None = None) -> bool:
    """True if the data root (``root``, else ``$DML_DATA``, else ``./data``) holds
    CUB-200-2011: ``CUB_200_2011/images.txt``, or ``images.txt`` in the root itself."""
    data_root = resolve_data_root(root)
    return (data_root / CUB200.folder / "images.txt").is_file() or (data_root / "images.txt").is_file()


class CUB200(ImageListDataset):
    """CUB-200-2011 birds, read from the official archive's layout.

    Split (Song et al. 2016, used by the MS-loss paper): ``"train"`` = classes 1-100
    (5,864 images), ``"test"`` = classes 101-200 (5,924 images). The archive's own
    ``train_test_split.txt`` (a per-image split over all 200 classes) is *not* used.

    Labels are 0-based and re-indexed within the split, in order of the official class
    id: train label = class id - 1, test label = class id - 101 (both 0..99).
    ``classes[label]`` is the official class name (e.g. ``"001.Black_footed_Albatross"``)
    and ``class_ids[label]`` the official 1-based class id.

    Args:
        root: the data root holding ``CUB_200_2011/`` (or that folder itself); default
            ``$DML_DATA``, else ``./data``.
        split: ``"train"`` or ``"test"``.
        transform: applied to the PIL RGB image.
        download: if the data set is not found, download the official archive into the
            data root (about 1.1 GB), check its MD5 and extract it.
        crop_to_bbox: crop every image to its ``bounding_boxes.txt`` box before the transform.
        on_corrupt: ``"raise"`` or ``"skip"`` (see :class:`ImageListDataset`).
    """

    name = "CUB-200-2011"
    folder = "CUB_200_2011"
    splits = ("train", "test")
    num_train_classes = 100  # classes 1..100 train, the rest test
    required = ("images.txt", "image_class_labels.txt", "classes.txt", "images")
    # (urls, md5, archive file name); a class attribute so tests can point it at a local file.
    resources = (
        (
            ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",),
            "97eceeb196236b17998738112f37df78",
            "CUB_200_2011.tgz",
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
        required = self.required + (("bounding_boxes.txt",) if crop_to_bbox else ())
        urls, md5, filename = self.resources[0]
        folder = locate_or_download(
            self.name,
            root,
            (self.folder, "."),
            required,
            layout=(
                f"  {self.folder}/images.txt              <image_id> <class_dir>/<file>.jpg\n"
                f"  {self.folder}/image_class_labels.txt  <image_id> <class_id 1..200>\n"
                f"  {self.folder}/classes.txt             <class_id> <NNN.Class_name>\n"
                f"  {self.folder}/bounding_boxes.txt      <image_id> <x> <y> <w> <h>  (for crop_to_bbox=True)\n"
                f"  {self.folder}/images/<NNN.Class_name>/<file>.jpg"
            ),
            how_to_get=(
                f"CUB200(root=..., download=True) downloads {urls[0]} (about 1.1 GB, MD5 {md5}) "
                f"into the data root and extracts it; or download it yourself and run "
                f"`tar -xzf {filename} -C <data root>`."
            ),
            download=download,
            resources=self.resources,
        )
        self.root = folder
        self.split = split

        image_paths = {image_id: path for image_id, path in read_table(folder / "images.txt", 2)}
        class_of = {image_id: int(class_id) for image_id, class_id in read_table(folder / "image_class_labels.txt", 2)}
        class_names = {int(class_id): name for class_id, name in read_table(folder / "classes.txt", 2)}
        unlabelled = [i for i in image_paths if i not in class_of]
        if unlabelled:
            raise ValueError(
                f"{folder / 'image_class_labels.txt'} has no label for {len(unlabelled)} image id(s) "
                f"listed in images.txt (first: {unlabelled[:5]}); the annotation files do not match."
            )

        in_split = (lambda c: c <= self.num_train_classes) if split == "train" else (lambda c: c > self.num_train_classes)
        image_ids = [i for i in image_paths if in_split(class_of[i])]  # images.txt order
        if not image_ids:
            raise ValueError(f"{folder / 'images.txt'} lists no image of the {split!r} split's classes.")
        official_class = np.array([class_of[i] for i in image_ids], dtype=np.int64)
        class_ids, labels = np.unique(official_class, return_inverse=True)
        missing_names = [int(c) for c in class_ids if int(c) not in class_names]
        if missing_names:
            raise ValueError(f"{folder / 'classes.txt'} lacks class id(s) {missing_names[:5]}.")

        boxes = None
        if crop_to_bbox:
            box_of = {
                image_id: tuple(float(v) for v in rest.split())
                for image_id, rest in read_table(folder / "bounding_boxes.txt", 2)
            }
            unboxed = [i for i in image_ids if i not in box_of]
            if unboxed:
                raise ValueError(f"{folder / 'bounding_boxes.txt'} has no box for image id(s) {unboxed[:5]}.")
            xywh = np.array([box_of[i] for i in image_ids], dtype=np.float64).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

        self.image_ids = [int(i) for i in image_ids]
        self.class_ids = [int(c) for c in class_ids]
        super().__init__(
            paths=[str(folder / "images" / image_paths[i]) for i in image_ids],
            labels=labels,
            classes=[class_names[int(c)] for c in class_ids],
            transform=transform,
            on_corrupt=on_corrupt,
            boxes=boxes,
        )
