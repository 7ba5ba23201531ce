"""Training a chapter's runs in Google Colab without losing them: the `colab_train` switch.

A chapter opened in Colab (or Jupyter) reads the committed `cpu` records, like the
rendered book, and trains nothing. Chapters 6 to 9 have one switch to train instead:
`colab_train = True` in their parameters cell. The cell after it calls `train_here`, which

* stops with a message saying what to do unless this is Colab on a GPU runtime;
* fetches CUB-200-2011 into the data root, on the runtime's own disk (the official
  archive, about 1.1 GB, with a progress bar, its MD5 checked before it is unpacked);
* mounts Google Drive when the reader allows it and keeps `results/` and `runs/` there
  (`Drive/MyDrive/ms-loss-reproduced/`): the records as they are written, and each run's
  checkpoint (model and Adam state, about 135 MB at the paper profile), saved at every
  evaluation. A new runtime, after Colab ended the last one, finds both again: the runner
  skips the runs whose record is valid and resumes the interrupted one from its checkpoint.
  Declined, both stay on the runtime's disk and end with it;
* hands the chapter the paper profile, the Drive results folder, the data root and
  `train_missing=True`, so its own `manifest.ensure` trains what is missing.

Colab is recognised as the chapters' install cell recognises it: `google.colab` is imported
in the kernel. The tests stub that module (with its `drive`), nothing else.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

DRIVE_MOUNT = "/content/drive"  # where Colab's drive.mount puts Google Drive (MyDrive/ inside)
DRIVE_FOLDER = "ms-loss-reproduced"  # the book's folder in MyDrive: results/ and runs/
PROFILE = "paper"  # what a GPU trains: the paper's setting


class ColabError(RuntimeError):
    """`colab_train` cannot train here; the message says why and what to do."""


@dataclass(frozen=True)
class Folders:
    """Where a Colab training session keeps its work."""

    results: Path  # run records
    runs: Path  # checkpoints; `<checkout>/runs` points here
    on_drive: bool  # False: the reader declined Drive, and both end with the runtime


def in_colab() -> bool:
    return "google.colab" in sys.modules


def mount_drive(mountpoint: str | os.PathLike = DRIVE_MOUNT) -> Path | None:
    """Mount Google Drive (Colab asks the reader first); MyDrive's path, or None when the
    reader declined or the mount failed (said, not raised: training can go on without it)."""
    from google.colab import drive

    try:
        drive.mount(str(mountpoint))
    except Exception as error:  # Colab raises its own error types when access is refused
        print(f"Google Drive was not mounted ({type(error).__name__}: {error}): the records and checkpoints stay "
              "on this runtime's disk and are lost when it ends. Run this cell again to allow Drive.")
        return None
    return Path(mountpoint) / "MyDrive"


def keep_runs_in(runs: Path, checkout: Path) -> Path:
    """Point `<checkout>/runs` (where the runner puts checkpoints) at `runs`. Checkpoints
    already made in the checkout's own folder move there first, except where `runs` holds
    one of the same run already (a previous runtime's; it is kept)."""
    runs.mkdir(parents=True, exist_ok=True)
    link = checkout / "runs"
    if link.is_symlink():
        if link.resolve() == runs.resolve():
            return link
        link.unlink()
    elif link.is_dir():
        for entry in sorted(link.rglob("checkpoint.pt")):
            target = runs / entry.parent.relative_to(link)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(entry.parent), str(target))
        shutil.rmtree(link)
    link.symlink_to(runs.resolve(), target_is_directory=True)
    return link


def use_drive(checkout: str | os.PathLike = ".", mountpoint: str | os.PathLike = DRIVE_MOUNT,
              folder: str = DRIVE_FOLDER) -> Folders:
    """Mount Drive and keep `results/` and `runs/` in `MyDrive/<folder>/` (`<checkout>/runs`
    a link there); without Drive, the checkout's own `results/` and `runs/`."""
    checkout = Path(checkout).resolve()
    my_drive = mount_drive(mountpoint)
    if my_drive is None:
        return Folders(checkout / "results", checkout / "runs", on_drive=False)
    base = my_drive / folder
    results = base / "results"
    results.mkdir(parents=True, exist_ok=True)
    keep_runs_in(base / "runs", checkout)
    return Folders(results, base / "runs", on_drive=True)


def check_gpu() -> str:
    """The GPU's name; ColabError saying how to get one when the runtime has none."""
    import torch

    if not torch.cuda.is_available():
        raise ColabError(
            "colab_train = True trains at the paper profile, which needs a GPU, and this runtime has none. "
            "Choose Runtime > Change runtime type > T4 GPU (or better), then Runtime > Run all. "
            "With colab_train = False the chapter reads the committed cpu records instead."
        )
    return torch.cuda.get_device_name(0)


def fetch_cub(data_root: str | os.PathLike | None = None) -> Path:
    """CUB-200-2011 under the data root, downloaded first if it is not there (the official
    archive, progress bar, MD5 checked before it is unpacked); its folder."""
    from .data import CUB200, cub_found, resolve_data_root

    if not cub_found(data_root):
        print(f"Fetching CUB-200-2011 (about 1.1 GB) into {resolve_data_root(data_root)} ...")
        CUB200(data_root, split="train", download=True)
    return resolve_data_root(data_root)


def train_here(colab_train: bool, profile: str, results_dir, data_root, train_missing,
               checkout: str | os.PathLike = ".", mountpoint: str | os.PathLike = DRIVE_MOUNT):
    """A chapter's `(profile, results_dir, data_root, train_missing)`: unchanged unless
    `colab_train`; then the paper profile, Drive's results folder (when allowed), CUB fetched
    into the data root (`data_root`, else $DML_DATA, else `./data`: the runtime's disk) and
    `train_missing=True`."""
    if not colab_train:
        return profile, results_dir, data_root, train_missing
    if not in_colab():
        raise ColabError(
            "colab_train = True is for Google Colab (google.colab is not imported here). On a machine "
            "of your own with a GPU, train the runs with `python -m dmlutils runs --profile paper` and "
            "run the chapter with profile = \"paper\"."
        )
    gpu = check_gpu()
    folders = use_drive(checkout, mountpoint)  # first: Colab asks the reader before the long download
    data = fetch_cub(data_root).resolve()  # the runtime's disk: reading images from Drive is slow
    where = "on Google Drive" if folders.on_drive else "on this runtime's disk only (Drive was not mounted)"
    print(f"Training at the {PROFILE} profile on {gpu}. Records: {folders.results}; checkpoints: {folders.runs} "
          f"({where}). Data: {data}. A run that is interrupted resumes from its last checkpoint when the chapter "
          "runs again with colab_train = True; runs with a valid record are not repeated.")
    return PROFILE, str(folders.results), str(data), True
