"""DeepFashion In-shop Clothes Retrieval (Liu et al. 2016)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .base import ON_CORRUPT_CHOICES, ImageListDataset, check_choice, locate_or_download, read_table

__all__ = ["InShop"]

_PARTITION_FILE = "list_eval_partition.txt"
_PAGE = "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"


class InShop(ImageListDataset):
    """In-Shop Clothes Retrieval, read from ``list_eval_partition.txt`` + ``img/``.

    Splits as in the official partition (and the DML literature): ``"train"`` (25,882
    images of 3,997 items) for training; ``"query"`` (14,218) and ``"gallery"``
    (12,612), 3,985 other items, for evaluation: every query is searched in the gallery.

    Labels are 0-based in order of the item id. Train items are re-indexed among
    themselves; query and gallery share *one* index over their union of items, so the
    same item carries the same label in both (as retrieval needs). ``classes[label]`` is
    the item id (``"id_00000001"``).

    Args:
        root: data root holding ``InShop/`` (or ``inshop/``, or ``In-shop Clothes Retrieval
            Benchmark/``, or the data root itself), with ``list_eval_partition.txt`` or
            ``Eval/list_eval_partition.txt``, and ``img/`` or ``Img/img/``.
        split: ``"train"``, ``"query"`` or ``"gallery"``.
        transform, on_corrupt: as for :class:`~dmlutils.data.CUB200`.
        download: not available -- the data set is distributed through Google Drive after
            agreeing to its terms; a missing copy raises an error saying where to get it.
    """

    name = "In-Shop Clothes Retrieval"
    folders = ("InShop", "inshop", "In-shop Clothes Retrieval Benchmark", ".")
    splits = ("train", "query", "gallery")

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
        # The partition file lies beside the images or, in the official tree, in Eval/.
        subfolders = [os.path.normpath(os.path.join(folder, sub)) for folder in self.folders for sub in ("", "Eval")]
        how_to_get = (
            f"In-Shop cannot be downloaded automatically (download=True does not apply): get "
            f"'In-shop Clothes Retrieval Benchmark' -> Img/img.zip and Eval/{_PARTITION_FILE} from "
            f"{_PAGE}, then unzip img.zip into <data root>/InShop/ next to {_PARTITION_FILE}."
        )
        partition_dir = locate_or_download(  # no resources: download=True cannot apply
            self.name,
            root,
            subfolders,
            (_PARTITION_FILE,),
            layout=(
                f"  InShop/{_PARTITION_FILE}   <count>, header, then <image_name> <item_id> <train|query|gallery>\n"
                f"  InShop/img/<WOMEN|MEN>/<category>/<item_id>/<n>_<view>.jpg"
            ),
            how_to_get=how_to_get,
        )
        folder = partition_dir.parent if partition_dir.name == "Eval" else partition_dir
        # Image names start with "img/"; the official tree keeps that folder under Img/.
        image_base = folder / "Img" if (folder / "Img" / "img").is_dir() else folder
        self.root = folder
        self.split = split

        rows = read_table(partition_dir / _PARTITION_FILE, 3, skip_lines=2)
        statuses = {r[2].strip() for r in rows}
        unknown = statuses - set(self.splits)
        if unknown:
            raise ValueError(f"{partition_dir / _PARTITION_FILE}: unknown evaluation status(es) {sorted(unknown)}.")
        chosen = [r for r in rows if r[2].strip() == split]
        if not chosen:
            raise ValueError(f"{partition_dir / _PARTITION_FILE} lists no image of the {split!r} split.")
        # The label index: train items alone, or query and gallery items together.
        indexed_statuses = {"train"} if split == "train" else {"query", "gallery"}
        items = sorted({r[1] for r in rows if r[2].strip() in indexed_statuses})
        label_of = {item: label for label, item in enumerate(items)}
        labels = np.array([label_of[r[1]] for r in chosen], dtype=np.int64)
        super().__init__(
            paths=[str(image_base / r[0]) for r in chosen],
            labels=labels,
            classes=items,
            transform=transform,
            on_corrupt=on_corrupt,
        )
