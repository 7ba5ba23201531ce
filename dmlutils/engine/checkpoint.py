"""A run's record and checkpoints: the record a run starts, the checkpoint it writes at each
evaluation or when it is interrupted, and the resume that reads one back.

A checkpoint holds the model, the loss's own parameters, the optimiser, the schedule, the
gradient scaler, the record so far, the step, and, when the run was interrupted between
two evaluations, the window in progress (its losses, mining measurements and seconds), so
the resumed run writes the record an uninterrupted one writes.

A checkpoint made by other code (another commit, or uncommitted changes) still resumes
when the settings are the same, but says so, and the record names every commit that
trained it (`resumed_with`); `same_code=True` refuses such a checkpoint instead.
"""
from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path

import torch

from ..losses import hparams_of
from ..profiles import PROFILE_VERSIONS, PROFILES
from ..provenance import atomic_write_bytes, code_version, environment
from . import allocator
from .build import evaluated_on

RECORD_VERSION = 1
PARTS = ("model", "loss", "optimizer", "scheduler", "scaler")


class OtherCodeCheckpoint(ValueError):
    """A checkpoint written by other code, refused because `same_code` was asked for."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_record(config: dict, world_size: int, device, base_loss, model, train_set, eval_set, cache_seconds) -> dict:
    """The record of a run about to start: its settings and provenance, no evaluation yet."""
    record = {
        "record_version": RECORD_VERSION,
        "kind": "train",
        "profile": config["profile"],
        "profile_version": PROFILE_VERSIONS[config["profile"]],
        "loss": config["loss"],
        "loss_hparams": hparams_of(base_loss),
        "world_size": world_size,
        "seed": config["seed"],
        "config": config,
        "git": code_version(),
        "device": str(device),
        "environment": {**environment(), "allocator": allocator.describe()},
        "data": {"train": train_set.fingerprint(), "test": eval_set.fingerprint()},  # no machine paths: dmlutils.data.data_fingerprint
        "evaluated_on": evaluated_on(config, eval_set),
        "cache_seconds": cache_seconds,
        "started": now(),
        "wall_time_seconds": 0.0,
        "evaluations": [],
    }
    if getattr(model.backbone, "weights_source", None):
        record["backbone_weights"] = model.backbone.weights_source
    return record


def save_checkpoint(path: Path, parts: dict, record: dict, step: int, window: dict | None = None, extra: dict | None = None) -> None:
    """Write the checkpoint atomically: a crash while writing leaves the previous one.
    `extra` holds what the run keeps for its end (the pictures' batch at iteration 0)."""
    state = {name: parts[name].state_dict() for name in PARTS}
    state.update(record=record, step=step, window=window, extra=extra or {})
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def _same_commit(a: dict, b: dict) -> bool:
    return a.get("commit") == b.get("commit") and not a.get("dirty") and not b.get("dirty")


def resume(path: Path, config: dict, parts: dict, device, same_code: bool = False) -> tuple[dict, int, dict | None, dict]:
    """(record, step, window in progress, extra) of the checkpoint at `path`, its states loaded into
    `parts`. Raises a ValueError naming the fix when the checkpoint cannot continue this run."""
    run_dir = path.parent
    state = torch.load(path, map_location=device, weights_only=False)
    made_under = state["record"].get("profile_version", 1)
    if config["profile"] in PROFILE_VERSIONS and made_under != PROFILE_VERSIONS[config["profile"]]:
        # another version's settings: the filling-in below would read them as this version's
        raise ValueError(
            f"the checkpoint in {run_dir} was made under version {made_under} of the {config['profile']} profile, and the "
            f"profile is at version {PROFILE_VERSIONS[config['profile']]} now; delete that folder to start the run afresh"
        )
    # settings added since the checkpoint was made, within the version, count as their (neutral) defaults
    saved = {**PROFILES.get(config["profile"], {}), **state["record"]["config"]}
    if saved != config:
        changed = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
        raise ValueError(
            f"the checkpoint in {run_dir} was made with other settings ({', '.join(changed)} differ); "
            "resume with the same settings, or delete that folder (or choose another --run-dir) to start afresh"
        )
    record, step = state["record"], state["step"]
    written_by, running = record.get("resumed_with", [{"git": record["git"]}])[-1]["git"], code_version()
    if not _same_commit(written_by, running):
        what = (f"the checkpoint in {run_dir} (step {step}) was written by commit {written_by.get('commit', 'unknown')[:12]}"
                f"{' with uncommitted changes' if written_by.get('dirty') else ''}, and this code is commit "
                f"{running.get('commit', 'unknown')[:12]}{' with uncommitted changes' if running.get('dirty') else ''}")
        if same_code:
            raise OtherCodeCheckpoint(f"{what}; delete that folder (or choose another --run-dir) to re-make the run "
                                      "from this code, or resume without --same-code to continue it")
        warnings.warn(f"{what}: continuing it; its record will name both commits (resumed_with). Delete that folder "
                      "to re-make the run from this code alone.", stacklevel=3)
    try:
        for name in PARTS:
            if name in state:
                parts[name].load_state_dict(state[name])
    except (RuntimeError, ValueError, KeyError) as error:
        # same settings, other code: an older dmlutils laid out the parameters or the
        # optimiser's groups differently, and PyTorch's own message does not say so
        raise ValueError(
            f"the checkpoint in {run_dir} does not fit this version of dmlutils ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); delete that folder (or choose another "
            "--run-dir) to start afresh"
        ) from error
    record["config"] = config
    record["resumed_at"] = record.get("resumed_at", []) + [step]
    record["resumed_with"] = record.get("resumed_with", [{"iteration": 0, "git": record["git"]}]) + [{"iteration": step, "git": running}]
    return record, step, state.get("window"), state.get("extra") or {}
