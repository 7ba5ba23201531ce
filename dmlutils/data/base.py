"""Shared machinery of the image data sets: data root, locating or downloading a data
set, image loading, errors.

Every real data set here is an :class:`ImageListDataset`: a list of image paths, a
0-based label per image, and the class names -- parsed from the official annotation
files at construction, so ``dataset.labels`` is available without decoding any image
(the P x K sampler needs only that). Each one finds its files with
:func:`locate_or_download` (the one locate/download path of every data set), and the data
root with :func:`resolve_data_root` / :func:`data_root_origin`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .download import fetch_resources

__all__ = [
    "DATA_ROOT_ENV",
    "DEFAULT_DATA_ROOT",
    "CorruptImageError",
    "DatasetNotFoundError",
    "ClassSubset",
    "ImageListDataset",
    "check_choice",
    "data_root_origin",
    "load_rgb",
    "locate_or_download",
    "resolve_data_root",
]

DATA_ROOT_ENV = "DML_DATA"
DEFAULT_DATA_ROOT = "./data"
ON_CORRUPT_CHOICES = ("raise", "skip")


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder that holds the data sets: ``root``, else ``$DML_DATA``, else ``./data``."""
    return Path(data_root_origin(root)[0])


def data_root_origin(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(data root, where it came from): ``root``, else ``$DML_DATA``, else ``./data``, with
    the words an error message uses to say which (e.g. "the DML_DATA environment variable")."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    from_env = os.environ.get(DATA_ROOT_ENV)
    if from_env:
        return Path(from_env).expanduser(), f"the {DATA_ROOT_ENV} environment variable"
    return (
        Path(DEFAULT_DATA_ROOT),
        f"the default {DEFAULT_DATA_ROOT} (neither a root argument nor {DATA_ROOT_ENV} was given)",
    )


def check_choice(what: str, value, choices: Sequence) -> None:
    """ValueError naming the valid choices, e.g. for an unknown split."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {what} {value!r}; valid: {valid}.")


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where the loader looked for them."""

    def __init__(self, message: str) -> None:
        # A single argument keeps str(err) == message and survives pickling (DataLoader workers).
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


class CorruptImageError(OSError):
    """An image file listed by a data set is missing, truncated or cannot be decoded.

    ``path`` is the offending file (None when re-raised from a DataLoader worker, which
    rebuilds exceptions from their message alone; the message always names the file).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (type(self), (self.args[0], self.path))


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to RGB, turning PIL's many failure modes into one error that names the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except FileNotFoundError as err:
        raise CorruptImageError(
            f"image file missing: {path} (listed in the data set's annotation files). "
            f"Re-extract the data set, or pass on_corrupt='skip' to skip unreadable images.",
            path,
        ) from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(
            f"cannot decode image {path}: {type(err).__name__}: {err}. The file is corrupt or "
            f"truncated; replace it from the original archive, or pass on_corrupt='skip' to skip it.",
            path,
        ) from err


def not_found_message(
    name: str,
    root: str | os.PathLike | None,
    candidates: Sequence[Path],
    required: Sequence[str],
    layout: str,
    how_to_get: str,
) -> str:
    """The message of DatasetNotFoundError: what was looked for, where, and how to get it."""
    resolved, origin = data_root_origin(root)
    looked = []
    for folder in candidates:
        missing = [r for r in required if not (folder / r).exists()]
        found = len(required) - len(missing)
        state = "does not exist" if not folder.exists() else f"has {found} of {len(required)}; missing {', '.join(missing)}"
        looked.append(f"  {folder}/  ({state})")
    return (
        f"{name} not found. Looked for {', '.join(required)} in:\n"
        + "\n".join(looked)
        + f"\nThe data root {resolved.resolve()} came from {origin}; pass root=... or set "
        f"{DATA_ROOT_ENV}=/path/to/data to point elsewhere.\n"
        f"Expected layout under the data root:\n{layout}\n"
        f"To get the data: {how_to_get}"
    )


def find_dataset_dir(candidates: Sequence[Path], required: Sequence[str]) -> Path | None:
    """The first candidate folder that holds every required file or folder."""
    for folder in candidates:
        if all((folder / r).exists() for r in required):
            return folder
    return None


class ImageListDataset(Dataset):
    """Images listed by path with 0-based labels; torchvision-style ``(image, label)`` items.

    Attributes:
        paths: absolute path of every image (str).
        labels: int64 array, the 0-based label of every image in this split.
        classes: class names; ``classes[label]`` names the class of a label.
        boxes: optional float array (N, 4) of (left, top, right, bottom) pixel boxes.

    ``on_corrupt="raise"`` (default) raises :class:`CorruptImageError` naming the file.
    ``on_corrupt="skip"`` warns and returns another image *of the same class* instead
    (the next readable one in the data set's order), so the label -- and the P x K
    structure of a batch built from ``labels`` -- stays right. Skipped files are
    remembered per process (each DataLoader worker warns once per bad file).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        transform: Callable | None = None,
        on_corrupt: str = "raise",
        boxes: np.ndarray | None = None,
    ) -> None:
        check_choice("on_corrupt", on_corrupt, ON_CORRUPT_CHOICES)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.boxes = boxes
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self._unreadable: set[int] = set()
        self._same_class: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        label = int(self.labels[index])
        try:
            image = self._load(index)
        except CorruptImageError as err:
            if self.on_corrupt == "raise":
                raise
            image = self._load_substitute(index, err)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _load(self, index: int) -> Image.Image:
        image = load_rgb(self.paths[index])
        if self.boxes is not None:
            left, top, right, bottom = self.boxes[index]
            width, height = image.size
            # Boxes are annotated in the original pixel grid; clip rounding overshoot.
            left, top = max(0, int(round(left))), max(0, int(round(top)))
            right, bottom = min(width, int(round(right))), min(height, int(round(bottom)))
            if right - left >= 1 and bottom - top >= 1:
                image = image.crop((left, top, right, bottom))
        return image

    def _load_substitute(self, index: int, err: CorruptImageError) -> Image.Image:
        if index not in self._unreadable:
            self._unreadable.add(index)
            warnings.warn(f"skipping unreadable image (on_corrupt='skip'): {err}", RuntimeWarning, stacklevel=3)
        if self._same_class is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
            self._same_class = {int(self.labels[g[0]]): g for g in np.split(order, bounds)}
        members = self._same_class[int(self.labels[index])]
        start = int(np.searchsorted(members, index))
        for other in np.roll(members, -start)[1:]:
            other = int(other)
            if other in self._unreadable:
                continue
            try:
                return self._load(other)
            except CorruptImageError as other_err:
                self._unreadable.add(other)
                warnings.warn(f"skipping unreadable image (on_corrupt='skip'): {other_err}", RuntimeWarning, stacklevel=3)
        raise CorruptImageError(
            f"every image of class {self.classes[int(self.labels[index])]!r} is unreadable "
            f"(first: {self.paths[index]}); on_corrupt='skip' has nothing to substitute.",
            self.paths[index],
        )

    def fingerprint(self) -> dict:
        """What a run record says about its data, with no path of this machine
        (:func:`dmlutils.data.data_fingerprint`)."""
        from .fingerprint import data_fingerprint

        return data_fingerprint(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={getattr(self, 'split', None)!r}, images={len(self)}, "
            f"classes={len(self.classes)}, root={str(getattr(self, 'root', ''))!r})"
        )


def read_table(path: Path, columns: int, skip_lines: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of an annotation file; the last column may hold spaces."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if number <= skip_lines or not line.strip():
                continue
            fields = line.strip().split(maxsplit=columns - 1)
            if len(fields) != columns:
                raise ValueError(
                    f"{path}, line {number}: expected {columns} columns, got {len(fields)}: "
                    f"{line.strip()!r}. The annotation file is damaged; re-extract the data set."
                )
            rows.append(fields)
    return rows


def locate_dataset(
    name: str,
    root: str | os.PathLike | None,
    candidates: Sequence[Path],
    required: Sequence[str],
    layout: str,
    how_to_get: str,
) -> Path:
    """The folder holding a data set, or DatasetNotFoundError saying what, where and how."""
    folder = find_dataset_dir(candidates, required)
    if folder is None:
        raise DatasetNotFoundError(not_found_message(name, root, candidates, required, layout, how_to_get))
    return folder


def locate_or_download(
    name: str,
    root: str | os.PathLike | None,
    subfolders: Sequence[str],
    required: Sequence[str],
    layout: str,
    how_to_get: str,
    download: bool = False,
    resources: Sequence[tuple] = (),
    download_into: str = ".",
) -> Path:
    """The folder holding a data set: the first of ``subfolders`` of the data root (``root``,
    else ``$DML_DATA``, else ``./data``; ``"."`` is the data root itself) that holds every
    ``required`` entry. With ``download``, when none does, the official ``resources`` --
    ``(urls, md5, file name[, extract])``, see :func:`fetch_resources` -- are fetched into
    ``<data root>/<download_into>`` first. Else :class:`DatasetNotFoundError` saying what was
    looked for, where, the expected ``layout`` and ``how_to_get`` the data."""
    data_root = resolve_data_root(root)
    candidates = [data_root / sub for sub in subfolders]
    if download and resources and find_dataset_dir(candidates, required) is None:
        fetch_resources(resources, data_root / download_into)
    return locate_dataset(name, root, candidates, required, layout, how_to_get)


class ClassSubset(Dataset):
    """The samples of a data set at `indices`, keeping `labels` (what the P x K sampler
    reads) and `root`; used to hold classes of the training split out for validation."""

    def __init__(self, dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(dataset.labels)[self.indices]
        self.root = getattr(dataset, "root", "")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]

    def fingerprint(self) -> dict:
        """The fingerprint of these samples (:func:`dmlutils.data.data_fingerprint`)."""
        from .fingerprint import data_fingerprint

        return data_fingerprint(self)

    def __repr__(self) -> str:
        return f"ClassSubset({self.dataset!r}, {len(self)} samples, {len(np.unique(self.labels))} classes)"
