"""Train the runs a chapter needs and does not find, then hand it their records.

A chapter's tables come from run records (`dmlutils.records` reads them, and imports
nothing of training). At the smoke profile a run takes seconds, so the book trains the
records a chapter needs there and are missing (`train_missing=True`); at the cpu and
paper profiles the records are made beforehand (`make results-cpu`, `python -m dmlutils
runs`) and a chapter only reads them. This module is that step: the engine's runs
(`ensure_records`) and the setting studies' (`ensure_studies`, `dmlutils.studies`).
"""
from __future__ import annotations

from pathlib import Path

from .engine import train
from .profiles import make_config
from .records import DEFAULT_RESULTS, find_records, load_records, load_studies, load_study
from .studies import run_study


def ensure_records(profile: str, runs: dict[str, tuple[str, dict]], results_dir=None, train_missing=False, root=None) -> dict[str, dict]:
    """The finished records of `runs` ({name: (loss, overrides)}); with `train_missing`,
    first train the ones that have none (the book does this at the smoke profile only,
    where a run takes seconds). When the profile has no record at all,
    `records.check_records_found` raises (cpu) or warns (paper)."""
    folder = Path(results_dir or DEFAULT_RESULTS)
    if train_missing:
        existing = load_records(profile, folder)
        for name, (loss, overrides) in runs.items():
            if name in existing:
                continue
            config = make_config(profile, loss, {k: str(v) for k, v in overrides.items()})
            record_path = folder / profile / f"{name}.json"
            train(config, Path("runs") / profile / name, record_path=record_path, root=root, progress=False)
    return find_records(profile, runs, folder)


def ensure_studies(profile: str, losses, results_dir=None, train_missing=False, root=None) -> dict[str, dict]:
    """{loss: records.load_study(...)}; with `train_missing`, first run the studies that are
    incomplete (the book does this at the smoke profile only)."""
    results = Path(results_dir or DEFAULT_RESULTS)
    if train_missing:
        for loss in losses:
            if load_study(profile, loss, results)["tuned"] is None:
                run_study(loss, profile, results, Path("runs"), root=root, progress=False)
    return load_studies(profile, losses, results)
