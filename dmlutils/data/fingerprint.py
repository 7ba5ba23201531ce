"""Data fingerprints: which data a run saw, without saying where it lay on a machine.

A run record names its data by a fingerprint instead of an absolute path::

    {"dataset": "CUB-200-2011", "split": "train", "images": 5864, "sha256": "9c1e..."}

``sha256`` is the SHA-256 of the data set's name, the split, the number of images and,
for every image in the data set's order, its path relative to the data set's folder,
its class name and the SHA-256 of the file's bytes. Two copies of the same images give
the same fingerprint wherever they are; one changed, missing or relabelled image
changes it. The synthetic data set is fingerprinted by its generation parameters.

Hashing 11,788 CUB images reads every file once, so the file hashes come from a
checksum list when the copy ships one (``cub_sha256.txt``, ``<sha256>  <path relative
to CUB_200_2011/>`` per line, in the data set's folder or the data root above it);
a spot check of a few files against the list guards against a stale one, and any file
the list lacks is hashed. Everything is cached in memory per data set folder and split,
so the fingerprint of a run's data costs about as much as reading that list, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path

__all__ = ["CHECKSUM_LISTS", "data_fingerprint", "file_sha256", "file_hashes", "clear_fingerprint_cache"]

FINGERPRINT_VERSION = 1  # part of every hash: bump it when what goes into one changes
# Checksum lists a data set's copy may ship, by data set name.
CHECKSUM_LISTS = {"CUB-200-2011": ("cub_sha256.txt",)}
SPOT_CHECKS = 8  # files of a checksum list re-hashed to catch a list that does not match the copy

_lock = threading.Lock()
_file_hashes: dict[Path, dict[str, str]] = {}  # data set folder -> {relative path: sha256}
_split_entries: dict[tuple, tuple] = {}  # (class, folder, split, images, ...) -> a whole split's image lines


def clear_fingerprint_cache() -> None:
    """Forget every cached file hash and fingerprint (after the files changed on disk)."""
    with _lock:
        _file_hashes.clear()
        _split_entries.clear()


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_checksum_list(path: Path) -> dict[str, str]:
    """{relative path: sha256} of a `sha256sum`-style list (`<hex>  <path>` or `<hex> *<path>`)."""
    hashes = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            digest, _, name = line.partition(" ")
            hashes[name.lstrip(" *").replace("\\", "/")] = digest.lower()
    return hashes


def _checksum_list(name: str, folder: Path) -> Path | None:
    for filename in CHECKSUM_LISTS.get(name, ()):
        for candidate in (folder / filename, folder.parent / filename):
            if candidate.is_file():
                return candidate
    return None


def file_hashes(folder: str | os.PathLike, relative_paths, name: str | None = None) -> dict[str, str]:
    """{relative path: sha256} for files under `folder`, from the data set's checksum list
    when there is one that agrees with a spot check of the files, else by hashing them;
    cached per folder."""
    folder = Path(folder).resolve()
    relative_paths = list(relative_paths)
    with _lock:
        known = _file_hashes.get(folder)
        if known is None:
            known = {}
            listed = _checksum_list(name, folder) if name else None
            if listed is not None:
                from_list = _read_checksum_list(listed)
                present = [p for p in relative_paths if p in from_list]
                step = max(1, len(present) // SPOT_CHECKS)
                stale = [p for p in present[::step][:SPOT_CHECKS] if file_sha256(folder / p) != from_list[p]]
                if stale:
                    warnings.warn(
                        f"{listed} does not match the images in {folder} (first: {stale[0]}); "
                        "hashing every image instead of trusting the list.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                else:
                    known = from_list
            _file_hashes[folder] = known
        for path in relative_paths:
            if path not in known:  # not in a checksum list: hash the file itself
                known[path] = file_sha256(folder / path)
        return {path: known[path] for path in relative_paths}


def _relative(path: str, root: str, folder: Path) -> str:
    if path.startswith(root + os.sep):  # the loaders build every path as <root>/<relative path>
        return path[len(root) + 1:].replace(os.sep, "/")
    try:
        return Path(path).resolve().relative_to(folder).as_posix()
    except ValueError:  # an image outside the data set's folder: its name is all that is not machine-specific
        return Path(path).name


def _image_entries(dataset) -> tuple[str, str, list[str]]:
    """(data set name, split, one line per image) of an image-list data set."""
    name = getattr(dataset, "name", type(dataset).__name__)
    folder = Path(dataset.root).resolve()
    relative = [_relative(str(p), str(dataset.root), folder) for p in dataset.paths]
    hashes = file_hashes(folder, relative, name)
    classes = [dataset.classes[int(label)] for label in dataset.labels]
    lines = [f"{path}\t{cls}\t{hashes[path]}" for path, cls in zip(relative, classes)]
    return name, str(getattr(dataset, "split", "")), lines


def _generated(dataset) -> bool:
    """Whether a data set is generated from parameters (the synthetic set): it names them in
    `generation_parameters()`. Asked of the data set, not found by its class, so this module
    imports none of the data sets (they call it: importing one back would close a circle)."""
    return callable(getattr(dataset, "generation_parameters", None))


def _synthetic_entries(dataset) -> tuple[str, str, list[str]]:
    """The synthetic set is a function of its parameters: they are its image list."""
    return "synthetic", dataset.split, [json.dumps(dataset.generation_parameters(), sort_keys=True)]


def _entries(dataset) -> tuple[str, str, list[str]]:
    """(name, split, per-image lines) of a data set, a ClassSubset or a torch Subset of one."""
    if hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # ClassSubset, torch.utils.data.Subset
        name, split, lines = _entries(dataset.dataset)
        if _generated(dataset.dataset):  # one line of parameters, not one per image
            return name, split, lines + [json.dumps({"indices": [int(i) for i in dataset.indices]})]
        return name, split, [lines[int(i)] for i in dataset.indices]
    if _generated(dataset):
        return _synthetic_entries(dataset)
    if hasattr(dataset, "paths") and hasattr(dataset, "root"):
        key = (type(dataset).__qualname__, str(Path(dataset.root).resolve()), getattr(dataset, "split", None),
               len(dataset.paths), tuple(dataset.paths[:1] + dataset.paths[-1:]))
        with _lock:
            cached = _split_entries.get(key)
        if cached is None:
            cached = _image_entries(dataset)
            with _lock:
                _split_entries[key] = cached
        return cached
    raise TypeError(
        f"cannot fingerprint {type(dataset).__name__}: expected an image-list data set (with `paths`, "
        "`labels`, `classes` and `root`), a generated one (with `generation_parameters()`, e.g. SyntheticDataset), "
        "or a subset of one (`dataset` and `indices`)."
    )


def data_fingerprint(dataset) -> dict:
    """``{"dataset", "split", "images", "sha256"}`` of a data set (see the module docstring).

    Accepts the data sets of :mod:`dmlutils.data`, ``ClassSubset`` and ``torch.utils.data.Subset``
    of them. Holds no path of the machine it ran on.
    """
    name, split, lines = _entries(dataset)
    images = len(dataset)
    digest = hashlib.sha256()
    digest.update(f"dmlutils data fingerprint v{FINGERPRINT_VERSION}\n{name}\n{split}\n{images}\n".encode())
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return {"dataset": name, "split": split, "images": images, "sha256": digest.hexdigest()}
