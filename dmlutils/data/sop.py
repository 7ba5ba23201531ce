"""Stanford Online Products (Oh Song et al. 2016)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .base import ON_CORRUPT_CHOICES, ImageListDataset, check_choice, locate_or_download, read_table

__all__ = ["StanfordOnlineProducts"]


class StanfordOnlineProducts(ImageListDataset):
    """Stanford Online Products, read from ``Ebay_train.txt`` / ``Ebay_test.txt``.

    The official files define the class-disjoint split: train 59,551 images of 11,318
    products, test 60,502 images of 11,316 products. Each file has a header line and the
    columns ``image_id class_id super_class_id path``.

    Labels are 0-based, re-indexed within the split in order of the official class id
    (train: id - 1, test: id - 11,319). ``classes[label]`` is the official class id as a
    string; ``super_labels`` holds the 0-based super class (one of 12 product types) of
    every image and ``super_classes`` their names (``bicycle``, ``cabinet``, ...).

    Args:
        root: data root holding ``Stanford_Online_Products/`` (or that folder itself).
        split: ``"train"`` or ``"test"``.
        transform, on_corrupt: as for :class:`~dmlutils.data.CUB200`.
        download: fetch the official zip (about 2.9 GB, MD5-checked) into the data root.
    """

    name = "Stanford Online Products"
    folder = "Stanford_Online_Products"
    splits = ("train", "test")
    split_files = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
    resources = (
        (
            (
                "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            ),
            "7f73d41a2f44250d4779881525aea32e",
            "Stanford_Online_Products.zip",
        ),
    )

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        transform: Callable | None = None,
        download: bool = False,
        on_corrupt: str = "raise",
    ) -> None:
        check_choice("split", split, self.splits)
        check_choice("on_corrupt", on_corrupt, ON_CORRUPT_CHOICES)
        split_file = self.split_files[split]
        urls, md5, filename = self.resources[0]
        folder = locate_or_download(
            self.name,
            root,
            (self.folder, "."),
            (split_file,),
            layout=(
                f"  {self.folder}/Ebay_train.txt   header, then <image_id> <class_id> <super_class_id> <path>\n"
                f"  {self.folder}/Ebay_test.txt\n"
                f"  {self.folder}/<super_class>_final/<product>_<n>.JPG"
            ),
            how_to_get=(
                f"StanfordOnlineProducts(root=..., download=True) downloads {urls[0]} (MD5 {md5}) "
                f"into the data root and extracts it; or download {filename} yourself and unzip it there."
            ),
            download=download,
            resources=self.resources,
        )
        self.root = folder
        self.split = split

        rows = read_table(folder / split_file, 4, skip_lines=1)
        if not rows:
            raise ValueError(f"{folder / split_file} lists no images.")
        official_class = np.array([int(r[1]) for r in rows], dtype=np.int64)
        class_ids, labels = np.unique(official_class, return_inverse=True)
        super_ids, self.super_labels = np.unique(np.array([int(r[2]) for r in rows]), return_inverse=True)
        # The super class's name is the image's top folder, e.g. "bicycle_final" -> "bicycle".
        super_name = {}
        for r in rows:
            super_name.setdefault(int(r[2]), r[3].strip().split("/")[0].removesuffix("_final"))
        self.super_classes = [super_name[int(s)] for s in super_ids]
        self.class_ids = [int(c) for c in class_ids]
        super().__init__(
            paths=[str(folder / r[3].strip()) for r in rows],
            labels=labels,
            classes=[str(int(c)) for c in class_ids],
            transform=transform,
            on_corrupt=on_corrupt,
        )
