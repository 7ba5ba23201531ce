"""Where a run record comes from, and how it reaches the disk.

Owns the atomic writer every record, checkpoint, cache and benchmark report goes through
(`atomic_write_bytes`: a temporary file beside the target, fsync, rename; `write_json`
with `_jsonable` for numpy numbers, tuples and paths) and the provenance a record
carries: the commit of the code this process imported (`code_version`, read once at
import), `git_commit`, the software `environment`, and `REPO_ROOT`. It imports nothing
of training (torch only inside `environment`), so reading records stays light.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temporary file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a record is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(data, indent=2, default=_jsonable) + "\n").encode()))


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_decision(path: Path, decision: dict) -> dict:
    """Write a study's decision (a `selection.json`) with the commit and time it was made,
    unless the file already says the same: a resumed study decides its finished stages again,
    and rewriting them would change only the commit and time, and dirty a committed tree
    under the runs that follow. A decision that differs from the file is written anew.
    Returns the decision as the file holds it."""
    import datetime

    decision = json.loads(json.dumps(decision, default=_jsonable))
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if isinstance(old, dict) and {k: v for k, v in old.items() if k not in ("git", "written")} == decision:
            return old
    decision = {**decision, "git": code_version(),
                "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json(path, decision)
    return decision


_CODE_VERSION: dict | None = None


def code_version() -> dict:
    """The commit of the code this process imported: read once, at import (see below), so a
    record made by a long run names the code it ran, not what the tree holds when it ends."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        _CODE_VERSION = git_commit()
    return _CODE_VERSION


def git_commit() -> dict:
    """The commit this code runs from, and whether the tree had uncommitted changes outside
    `results/` (records and reports are what runs write, not code: a study that rewrites its
    own selections does not make the code it runs uncommitted)."""
    def run(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def environment() -> dict:
    import torch

    return {
        "dmlutils": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }


code_version()  # at import: the code in memory is the code of this commit
