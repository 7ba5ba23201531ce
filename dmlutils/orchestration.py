"""Train the runs a chapter needs and does not find, then hand it their records.

A chapter's tables come from run records (`dmlutils.records` reads them, and imports
nothing of training). At the smoke profile a run takes seconds, so the book trains the
records a chapter needs there and are missing (`train_missing=True`); at the cpu and
paper profiles the records are made beforehand (`make results-cpu`, `python -m dmlutils
runs`) and a chapter only reads them. The runs of the manifest have theirs in
`dmlutils.manifest.ensure`; the setting studies' is here (`ensure_studies`,
`dmlutils.studies`).
"""
from __future__ import annotations

from pathlib import Path

from .records import DEFAULT_RESULTS, load_study
from .studies import run_studies, study, study_complete


def ensure_studies(profile: str, losses, results_dir=None, train_missing=False, root=None) -> dict[str, dict]:
    """{loss: records.load_study(...)} of each loss's declared candidates
    (`studies.study`); with `train_missing`, first run the studies that are incomplete (the
    book does this at the smoke profile only)."""
    results = Path(results_dir or DEFAULT_RESULTS)

    def load(loss):
        return load_study(profile, loss, results, candidates=study(loss))

    if train_missing:
        incomplete = [loss for loss in losses if not study_complete(load(loss), loss)]
        if incomplete:
            run_studies(incomplete, profile, results, Path("runs"), root=root, progress=False, echo=lambda line: None)
    return {loss: load(loss) for loss in losses}
