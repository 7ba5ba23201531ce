"""What a book run stands on: its profile, and whether CUB-200-2011 is under the data root.

The default profile is cpu, with or without CUB: at cpu the chapters read the committed run
records, and only chapter 1 shows CUB itself. `plan_data` decides before any chapter runs
(and refuses a profile whose chapters would train on a missing CUB); `data_summary` is the
run's closing line, which says which chapters ran on what. The book runner
(`dmlutils.book`) uses both and re-exports their names.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .notebook_tools import BookError, fetch_data_command

# The profiles a book run may use (cpu_full joins them once its records are committed).
PROFILES = ("smoke", "cpu", "paper")

# The profile whose run records are committed (results/cpu/): the book reads them, and only
# chapter 1's images need CUB-200-2011 itself, so this is the default with or without it.
DEFAULT_PROFILE = "cpu"
CUB_ARCHIVE_SIZE = "about 1.1 GB"


def cub_found(data_root: str | os.PathLike | None = None) -> bool:
    """True if the data root (argument, else $DML_DATA, else ./data) holds CUB-200-2011
    (`dmlutils.data.cub_found`, kept here for the callers of the book runner's name)."""
    from .data import cub_found as found

    return found(data_root)


def _cub_missing_message(data_root) -> str:
    from .data import data_root_origin

    root, origin = data_root_origin(data_root)
    return (
        f"CUB-200-2011 was not found: {root / 'CUB_200_2011' / 'images.txt'} does not exist "
        f"(the data root comes from {origin}).\n"
        "Either\n"
        "  * point DML_DATA (or --data-root) at the folder that holds CUB_200_2011/, or\n"
        f"  * fetch the official archive ({CUB_ARCHIVE_SIZE}, MD5-checked): {fetch_data_command(data_root)}\n"
        "  * or run the book without CUB: the default profile (cpu) reads the committed records,\n"
        "    and --profile smoke trains on synthetic data"
    )


@dataclass(frozen=True)
class DataPlan:
    """What a book run stands on: its profile, and whether CUB-200-2011 is under the data
    root for the chapters that show its images (`plan_data`)."""

    profile: str
    cub: bool  # CUB-200-2011 found under data_root
    data_root: Path
    origin: str  # where data_root came from, in words ("the DML_DATA environment variable")
    fetch_command: str  # the one command that fetches CUB into data_root


def _book_trains(profile: str) -> bool:
    """Whether the chapters train missing runs at `profile` (`manifest.should_train`, what
    they do with their default `train_missing=None`): at cpu never, its records are committed."""
    from .manifest import should_train

    return should_train(profile)


def plan_data(profile: str | None = None, data_root: str | os.PathLike | None = None) -> DataPlan:
    """The profile a book run uses (`profile`, else `DEFAULT_PROFILE`) and whether CUB is
    there. CUB is required only where the chapters would train on it (paper with a GPU);
    at cpu they read the committed records, and chapter 1 says what it cannot show."""
    from .data import data_root_origin
    from .profiles import make_config

    profile = profile or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise BookError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}.")
    root, origin = data_root_origin(data_root)
    found = cub_found(data_root)
    if not found and make_config(profile)["data"] != "synthetic" and _book_trains(profile):
        raise BookError(f"profile {profile!r} needs CUB-200-2011: the chapters train its missing runs on it.\n"
                        + _cub_missing_message(data_root))
    return DataPlan(profile, found, Path(root), origin, fetch_data_command(data_root, _python_command()))


def default_profile(data_root: str | os.PathLike | None = None) -> str:
    """The profile a book run uses when none is given: `DEFAULT_PROFILE`, found or not
    (kept for the callers of the name; `plan_data` also says whether CUB is there)."""
    return plan_data(None, data_root).profile


def check_profile_data(profile: str, data_root=None) -> None:
    """Fail early (before any chapter runs) when the chapters would train on a missing CUB."""
    plan_data(profile, data_root)


def _python_command() -> str:
    """How the reader calls this interpreter: `.venv/bin/python` under `make` (the reader's
    `python` may not have dmlutils), else `python`. Not resolved: a venv's python is a link."""
    executable = Path(sys.executable)
    if executable.is_relative_to(Path.cwd() / ".venv"):
        return str(executable.relative_to(Path.cwd()))
    return "python"


def chapter_label(stem: str) -> str:
    """"chapter 1" for 01_data_and_sampling, "appendix A1" for A1_environment_and_provenance."""
    head = stem.split("_", 1)[0]
    return f"chapter {int(head)}" if head.isdigit() else f"appendix {head}"


def chapters_text(stems: list[str]) -> str:
    """A reader's list of chapters: runs of numbers joined by an en dash ("chapters 2–9 and appendix A1")."""
    numbers = sorted(int(s[:2]) for s in stems if s[:2].isdigit())
    spans, start = [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            spans.append(str(n) if n == start else f"{start}–{n}" if n > start + 1 else f"{start}, {n}")
            start = None
    parts = []
    if spans:
        parts.append(("chapters " if len(numbers) > 1 else "chapter ") + ", ".join(spans))
    parts += [chapter_label(s) for s in stems if not s[:2].isdigit()]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def data_summary(plan: DataPlan, executed: list[str], skipped: list[str], results_dir: str = "results") -> str | None:
    """The closing line of a book run that lacked CUB: which chapters ran on what, what was
    skipped and the one command that fetches the data. None when nothing was skipped
    (CUB present, or a profile that needs none): then the run is as it always was."""
    if not skipped:
        return None
    full = [s for s in executed if s not in skipped]
    records = Path(results_dir) / plan.profile
    ran = (f"{chapters_text(full)} ran in full at the {plan.profile} profile (every run they show is read from "
           f"the committed records in {records}/); " if full else "")
    return (f"{ran}{chapters_text(skipped)}'s figures and tables of CUB-200-2011 were skipped: no CUB-200-2011 "
            f"under {plan.data_root} (the data root, from {plan.origin}); fetch it ({CUB_ARCHIVE_SIZE}, "
            f"MD5-checked) with `{plan.fetch_command}`, then run the book again.")
