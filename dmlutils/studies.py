"""Per-loss setting studies: a few settings per loss, chosen on held-out training classes.

Some losses end the cpu profile below the pretrained baseline with the settings of their
papers (chapter 6). A study trains each of a loss's candidate settings with the last
`VALIDATION_CLASSES[profile]` training classes held out (`validation_classes`, see `profiles`),
picks the one with the best final validation Recall@1, and then trains that setting on
all training classes and evaluates it on the test split. The test split plays no part in
the choice, so the tuned record is as clean a test number as the default one.

    python -m dmlutils study contrastive --profile cpu

writes `results/<profile>/study/<loss>/<setting>.json` (one validation record per
setting; `results/<profile>/study/baseline.json` is the pretrained features on the same
classes and `results/<profile>/study/multi_similarity.json` MS loss with its paper's setting), `results/<profile>/study/<loss>/selection.json` (the choice and what it was
chosen from), and `results/<profile>/tuned/<loss>.json` (the test record of the choice;
when the choice is the loss's default setting and `results/<profile>/<loss>/seed_0.json` was
trained with exactly it, that record is the test record and nothing is trained twice).
Records that exist are reused; interrupted runs resume from their checkpoints.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

# Classes held out per profile: of CUB's 100 training classes the last 20 (labels 80-99);
# the smoke profile's synthetic split has 10 and batches of 8 classes.
VALIDATION_CLASSES = {"smoke": 2, "cpu": 20, "paper": 20}
CRITERION = "recall@1"  # of the final model (no early stopping on validation either)
REFERENCE = "multi_similarity"  # also run on the held-out classes, beside the studies

# loss -> {setting name: --set overrides}; "default" is the loss's paper setting. Two or
# three candidates each: every one is a 400-iteration run (about 10-20 minutes on 2 cores).
STUDIES: dict[str, dict[str, dict]] = {
    # pos_margin 1 pulls every positive pair to S = 1; a lower one stops pulling earlier.
    "contrastive": {
        "default": {},
        "pos_margin_0.8": {"loss.pos_margin": 0.8},
    },
    # On the unit sphere its loss never reaches 0 (module docstring): a slower learning
    # rate limits how far the ever-active pushes move the features.
    "lifted_structure": {
        "default": {},
        "lr_1e-5": {"lr": 1e-5, "head_lr": 1e-5},
    },
    # Logits of unit vectors lie in [-1, 1]: a scale stands for the norms of Sohn's setting.
    "npair": {
        "default": {},
        "scale_10": {"loss.scale": 10.0},
        "scale_30": {"loss.scale": 30.0},
    },
    # The centres start at random and learn at the head's rate: a faster rate lets them
    # reach the classes before the embeddings are pulled towards where they started.
    "triplet_center": {
        "default": {},
        "head_lr_1e-3": {"head_lr": 1e-3},
    },
    # The ranked list loss paper's CUB setting (m = 0.4, alpha = 1.2) beside our default.
    "ranked_list": {
        "default": {},
        "margin_0.4_alpha_1.2": {"loss.margin": 0.4, "loss.alpha": 1.2},
    },
}


def study(loss: str) -> dict[str, dict]:
    if loss not in STUDIES:
        raise ValueError(f"no setting study for loss {loss!r}; studies exist for: {', '.join(STUDIES)}")
    return STUDIES[loss]


def study_dir(results, profile: str, loss: str) -> Path:
    return Path(results) / profile / "study" / loss


def tuned_record_path(results, profile: str, loss: str) -> Path:
    return Path(results) / profile / "tuned" / f"{loss}.json"


def select(records: dict[str, dict]) -> tuple[str, dict[str, float]]:
    """(chosen setting, criterion of every setting): the best final validation score;
    ties go to the setting listed first (the default)."""
    for name, record in records.items():
        split = record.get("evaluated_on", {}).get("split")
        if split != "validation":
            raise ValueError(f"study record {name!r} was evaluated on {split!r}, not on validation classes")
    scores = {name: float(record["final"][CRITERION]) for name, record in records.items()}
    best = max(scores.values())
    return next(name for name, score in scores.items() if score == best), scores


def validation_baseline(profile: str = "cpu", results="results", root=None, device=None) -> dict:
    """The pretrained features on the held-out classes: the floor of a study's table."""
    from . import engine
    from .manifest import valid_record
    from .profiles import make_config

    path = study_dir(results, profile, "baseline").with_suffix(".json")
    config = make_config(profile, "multi_similarity", {"validation_classes": VALIDATION_CLASSES[profile]})
    if record := valid_record(path, config):
        return record
    return engine.baseline(config, root=root, record_path=path, device=device, progress=False)


def validation_reference(profile: str = "cpu", results="results", runs="runs", root=None, device=None, progress=True) -> dict:
    """MS loss with its paper's setting on the held-out classes: a loss that clears the
    baseline on the test classes, to show the validation classes agree."""
    from . import engine
    from .manifest import valid_record
    from .profiles import make_config

    path = study_dir(results, profile, REFERENCE).with_suffix(".json")
    config = make_config(profile, REFERENCE, {"validation_classes": VALIDATION_CLASSES[profile]})
    if record := valid_record(path, config):
        return record
    run_dir = Path(runs) / profile / "study" / REFERENCE
    return engine.train(config, run_dir, resume=True, root=root, record_path=path, progress=progress, device=device)


def run_study(loss: str, profile: str = "cpu", results="results", runs="runs", root=None, device=None, progress=True, extra_overrides=None) -> dict:
    """Train every setting on validation classes, choose, train the choice for the test split."""
    from . import engine
    from .provenance import write_json
    from .manifest import record_path, valid_record
    from .profiles import PROFILE_VERSIONS, make_config

    # A study reuses only valid records (finished, the profile's current version, exactly
    # these settings): a new profile version runs every study again.
    settings = study(loss)
    folder = study_dir(results, profile, loss)
    validation_baseline(profile, results, root, device)
    validation_reference(profile, results, runs, root, device, progress)
    records = {}
    for name, overrides in settings.items():
        path = folder / f"{name}.json"
        held_out = {"validation_classes": VALIDATION_CLASSES[profile]}
        config = make_config(profile, loss, {**held_out, **overrides, **(extra_overrides or {})})
        if record := valid_record(path, config):
            records[name] = record
            continue
        run_dir = Path(runs) / profile / "study" / loss / name
        records[name] = engine.train(config, run_dir, resume=True, root=root, record_path=path, progress=progress, device=device)
    chosen, scores = select(records)
    tuned_config = make_config(profile, loss, {**settings[chosen], **(extra_overrides or {})})
    tuned_path = tuned_record_path(results, profile, loss)
    default_path = record_path(results, profile, loss, tuned_config["seed"])  # the loss's own run in the manifest
    tuned = valid_record(tuned_path, tuned_config)
    if tuned is None and (tuned := valid_record(default_path, tuned_config)) is not None:
        tuned_path = default_path  # the choice is the setting of the loss's own record: no need to train it twice
    selection = {
        "loss": loss,
        "profile": profile,
        "profile_version": PROFILE_VERSIONS[profile],
        "validation_classes": VALIDATION_CLASSES[profile],
        "criterion": f"final validation {CRITERION}",
        "scores": scores,
        "chosen": chosen,
        "overrides": settings[chosen],
        "test_record": str(tuned_path.relative_to(Path(results))),
        "git": engine.code_version(),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(folder / "selection.json", selection)
    if tuned is None:
        run_dir = Path(runs) / profile / "tuned" / loss
        engine.train(tuned_config, run_dir, resume=True, root=root, record_path=tuned_path, progress=progress, device=device)
    return selection
