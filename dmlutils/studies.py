"""Per-loss setting studies: a few settings per loss, chosen on held-out training classes.

Some losses end the cpu profile below the pretrained baseline with the settings of their
papers (chapter 6). A study trains each of a loss's candidate settings with the last
`VALIDATION_CLASSES[profile]` training classes held out (`validation_classes`, see `profiles`),
picks the one with the best final validation MAP@R, and then trains that setting on
all training classes, with the seeds of the loss's own runs, and evaluates it on the test
split. The test split plays no part in the choice, so the chosen setting's records are as
clean a test number as the default's.

    python -m dmlutils study --profile cpu --processes 2      # every study
    python -m dmlutils study contrastive --profile cpu         # one

writes `results/<profile>/study/<loss>/<setting>.json` (one validation record per
setting; `results/<profile>/study/baseline.json` is the pretrained features on the same
classes and `results/<profile>/study/multi_similarity.json` MS loss with its paper's
setting), `results/<profile>/study/<loss>/selection.json` (the choice, what it was chosen
from, and its test record per seed) and `results/<profile>/tuned/<loss>/seed_<n>.json`
(the choice on the test classes; when the choice is the setting the loss's own record
`results/<profile>/<loss>/seed_<n>.json` ran with, that record is the test record and
nothing is trained twice). Runs go side by side like the manifest's (`dmlutils.runner`);
valid records are reused, and interrupted runs resume from their checkpoints.
"""
from __future__ import annotations

from pathlib import Path

from .names import default_name, loss_name, setting_name  # noqa: F401  (default_name: re-exported)
from .records import study_dir  # noqa: F401  (re-exported: the layout is the reader's, and planning sits above reading)

# Classes held out per profile: of CUB's 100 training classes the last 20 (labels 80-99);
# the smoke profile's synthetic split has 10 and batches of 8 classes.
VALIDATION_CLASSES = {"smoke": 2, "cpu": 20, "cpu_full": 20, "paper": 20}
# Of the final model (no early stopping on validation either). MAP@R, as in the recipe
# study: it ranks all of a class's images, so on 1,180 held-out images it separates
# settings that Recall@1 (about 89 for the pretrained features alone) hardly can.
CRITERION = "map@r"
REFERENCE = "multi_similarity"  # also run on the held-out classes, beside the studies

# loss -> {setting name: --set overrides}; "default" is the loss's defaults (its paper's
# setting, or as `DEFAULT_NAMES` says). Two or
# three candidates each: every one is a 400-iteration run (about 10-20 minutes on 2 cores).
STUDIES: dict[str, dict[str, dict]] = {
    # pos_margin 1 pulls every positive pair to S = 1; a lower one stops pulling earlier.
    # A mean over all pairs fades the negatives' weight as most of them are satisfied, and
    # the ever-active positives take over; over the violating pairs only (pytorch-metric-
    # learning's default reducer) the remaining hard negatives keep theirs.
    "contrastive": {
        "default": {},
        "pos_margin_0.8": {"loss.pos_margin": 0.8},
        "nonzero_mean": {"loss.reduction": "nonzero_mean"},
    },
    # On the unit sphere its loss never reaches 0 (module docstring): a slower learning
    # rate limits how far the ever-active pushes move the features; a scale (the norm of
    # the paper's unnormalised embeddings) lets well-separated negatives drop out, so the
    # loss can reach 0 (the margin it asks for shrinks like 1/scale in unit distances).
    "lifted_structure": {
        "default": {},
        "lr_1e-5": {"lr": 1e-5, "head_lr": 1e-5},
        "scale_10": {"loss.scale": 10.0},
        "scale_20": {"loss.scale": 20.0},
    },
    # Logits of unit vectors lie in [-1, 1]: a scale stands for the norms of Sohn's setting.
    "npair": {
        "default": {},
        "scale_10": {"loss.scale": 10.0},
        "scale_30": {"loss.scale": 30.0},
    },
    # The centres start at random and learn at the head's rate: a faster rate lets them
    # reach the classes before the embeddings are pulled towards where they started —
    # for the head and centres together, or (as proxy-based losses are trained, e.g.
    # Proxy Anchor's proxies at 100x) for the centres alone.
    "triplet_center": {
        "default": {},
        "head_lr_1e-3": {"head_lr": 1e-3},
        "centre_lr_1e-2": {"loss_lr": 1e-2},
    },
    # The ranked list loss paper's CUB setting (m = 0.4, alpha = 1.2) beside our default.
    "ranked_list": {
        "default": {},
        "margin_0.4_alpha_1.2": {"loss.margin": 0.4, "loss.alpha": 1.2},
    },
}


def candidate_text(loss: str, candidate: str) -> str:
    """A candidate as a reader writes it (`dmlutils.names`): 'scale 20', or for "default"
    what the default is ("the paper's setting")."""
    return setting_name(loss, _candidate(loss, candidate))


def candidate_name(loss: str, candidate: str) -> str:
    """'Lifted Structure (scale 20)': a candidate with its loss."""
    return f"{loss_name(loss)} ({candidate_text(loss, candidate)})"


def _candidate(loss: str, candidate: str) -> dict:
    candidates = study(loss)
    if candidate not in candidates:
        raise ValueError(f"no candidate {candidate!r} in the setting study of {loss!r}; candidates: {', '.join(candidates)}")
    return candidates[candidate]


def study(loss: str) -> dict[str, dict]:
    if loss not in STUDIES:
        raise ValueError(f"no setting study for loss {loss!r}; studies exist for: {', '.join(STUDIES)}")
    return STUDIES[loss]


def studied_losses(profile: str) -> list[str]:
    """The losses with a study that the run manifest runs at `profile` (the whole-backbone
    profile runs three of the nine losses, and of those only contrastive has a study)."""
    from .manifest import run

    return [loss for loss in STUDIES if profile in run(loss).profiles]


def tuned_record_path(results, profile: str, loss: str, seed: int = 0) -> Path:
    return Path(results) / profile / "tuned" / loss / f"seed_{seed}.json"


def tuned_seeds(loss: str, profile: str, first: dict | None = None, results=None) -> tuple[int, ...]:
    """The seeds of a loss's own runs in the manifest at `profile`: the chosen setting gets
    the same, so that chapter 6 compares the two settings seed by seed. Where the loss runs
    one seed under the escalation rule (the whole-backbone profile), so does its choice:
    `first`, the choice's seed-0 test record, adds `manifest.ESCALATION_SEEDS` when it lies
    outside MS's mean ± seed std in `results`, as the loss's own first seed would."""
    from .manifest import ESCALATION_SEEDS, declared_seeds, escalates, outside_band, reference_records, run

    entry = run(loss)
    declared = declared_seeds(entry, profile)
    if escalates(entry, profile) and results is not None and outside_band(first, reference_records(entry, profile, results)):
        return tuple(dict.fromkeys(declared + ESCALATION_SEEDS))
    return declared


def study_complete(loaded: dict, loss: str) -> bool:
    """Whether a loaded study of `loss` (`records.load_study`) chose among all of its
    candidates, by the current criterion (a candidate added since, or another criterion,
    means choosing again), and has a test record for every seed its choice names (a
    selection of an older layout, without `test_records`, is not complete)."""
    selection = loaded["selection"] or {}
    wanted = selection.get("test_records")
    chose_among_all = set(selection.get("scores", {})) == set(study(loss)) == set(loaded["validation"])
    current = selection.get("criterion") == f"final validation {CRITERION}"
    return bool(wanted) and chose_among_all and current and len(loaded["tuned"] or {}) == len(wanted)


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


def _held_out(profile: str, loss: str, overrides=None, extra_overrides=None) -> dict:
    from .profiles import make_config

    return make_config(profile, loss, {"validation_classes": VALIDATION_CLASSES[profile], **(overrides or {}), **(extra_overrides or {})})


def _valid(job) -> bool:
    from .manifest import valid_record

    return valid_record(job.record_path, job.config, skip_damaged=True) is not None  # a damaged record is re-made


def validation_jobs(losses, profile: str = "cpu", results="results", runs="runs", root=None, extra_overrides=None) -> list:
    """Every run on the held-out classes that the studies of `losses` need: the floor (the
    pretrained features), MS loss with its paper's setting as a reference (it clears the
    baseline on the test classes: do the held-out classes agree?), and each candidate."""
    from .runner import Job

    folder = Path(runs) / profile / "study"
    jobs = [
        Job("baseline (validation)", _held_out(profile, REFERENCE, extra_overrides=extra_overrides),
            study_dir(results, profile, "baseline").with_suffix(".json"), folder / "baseline", kind="baseline", root=root),
        Job(f"{REFERENCE} (validation)", _held_out(profile, REFERENCE, extra_overrides=extra_overrides),
            study_dir(results, profile, REFERENCE).with_suffix(".json"), folder / REFERENCE, root=root),
    ]
    for loss in losses:
        for name, overrides in study(loss).items():
            jobs.append(Job(f"{loss} {name} (validation)", _held_out(profile, loss, overrides, extra_overrides),
                            study_dir(results, profile, loss) / f"{name}.json", folder / loss / name, root=root))
    return jobs


def choose(loss: str, profile: str = "cpu", results="results", runs="runs", root=None, extra_overrides=None, seeds=None) -> tuple[dict, list]:
    """(selection, the choice's test runs still to train) of a loss whose validation runs
    are finished; writes `selection.json`.

    Per seed, the choice's test record is the loss's own record in the manifest layout when
    that record ran exactly the chosen setting (nothing is trained twice), else
    `tuned/<loss>/seed_<n>.json`.
    """
    from .manifest import record_path, valid_record
    from .provenance import write_decision
    from .profiles import PROFILE_VERSIONS, make_config
    from .runner import Job

    settings = study(loss)
    records = {}
    for name, overrides in settings.items():
        path = study_dir(results, profile, loss) / f"{name}.json"
        records[name] = valid_record(path, _held_out(profile, loss, overrides, extra_overrides))  # run_studies re-made a damaged one just before
        if records[name] is None:
            raise ValueError(f"the {loss} study has no finished run of {name!r} on validation classes ({path}): run_studies trains it")
    chosen, scores = select(records)

    def test_run(seed):  # (config, record path): the loss's own record when it ran the choice
        config = make_config(profile, loss, {**settings[chosen], **(extra_overrides or {}), "seed": seed})
        own = record_path(results, profile, loss, seed)
        return config, own if valid_record(own, config, skip_damaged=True) else tuned_record_path(results, profile, loss, seed)

    if not seeds:
        config, path = test_run(0)
        seeds = tuned_seeds(loss, profile, valid_record(path, config, skip_damaged=True), results)
    test_records, jobs = {}, []
    for seed in seeds:
        config, path = test_run(seed)
        own = record_path(results, profile, loss, seed)
        test_records[str(seed)] = str(path.relative_to(Path(results)))
        if path != own:
            jobs.append(Job(f"{loss} {chosen} seed {seed} (test)", config, path, Path(runs) / profile / "tuned" / loss / f"seed_{seed}", root=root))
    selection = {
        "loss": loss,
        "profile": profile,
        "profile_version": PROFILE_VERSIONS[profile],
        "validation_classes": VALIDATION_CLASSES[profile],
        "criterion": f"final validation {CRITERION}",
        "scores": scores,
        "chosen": chosen,
        "overrides": settings[chosen],
        "test_records": test_records,
    }
    return write_decision(study_dir(results, profile, loss) / "selection.json", selection), jobs


def run_studies(losses, profile: str = "cpu", results="results", runs="runs", processes: int = 1, root=None, device=None,
                progress=True, extra_overrides=None, seeds=None, echo=print) -> dict[str, dict]:
    """{loss: selection}: the studies' runs on validation classes (`processes` side by side),
    the choices, then the choices' runs on the test classes, one per seed of the loss's own
    runs (`seeds` overrides; else the escalation rule may add seeds once the first exists,
    `tuned_seeds`). Valid records are reused; interrupted runs resume."""
    from .runner import run_jobs

    losses = list(losses)
    for loss in losses:
        study(loss)  # an unknown loss fails here, before anything runs
        if loss not in studied_losses(profile):
            raise ValueError(f"the run manifest does not run {loss!r} at the {profile} profile, so its study there would have no "
                             f"own records to compare with; studies at {profile}: {', '.join(studied_losses(profile)) or 'none'}")
    echo(f"setting studies ({', '.join(losses)}): candidates on {VALIDATION_CLASSES[profile]} held-out training classes")
    run_jobs(validation_jobs(losses, profile, results, runs, root, extra_overrides), processes, progress, echo, is_done=_valid, device=device)
    selections, test_jobs = {}, []
    for loss in losses:
        selections[loss], jobs = choose(loss, profile, results, runs, root, extra_overrides, seeds)
        test_jobs += jobs
    echo("the chosen settings on the test classes: " + ", ".join(f"{loss} {s['chosen']}" for loss, s in selections.items()))
    seen = set()
    while test_jobs:  # choosing again reads the new first seeds: the escalation rule may add seeds
        run_jobs(test_jobs, processes, progress, echo, is_done=_valid, device=device)
        seen |= {job.name for job in test_jobs}
        test_jobs = []
        for loss in losses:
            selections[loss], jobs = choose(loss, profile, results, runs, root, extra_overrides, seeds)
            test_jobs += [job for job in jobs if job.name not in seen and not _valid(job)]
    return selections


def run_study(loss: str, profile: str = "cpu", results="results", runs="runs", root=None, device=None, progress=True,
              extra_overrides=None, seeds=None, processes: int = 1, echo=print) -> dict:
    """One loss's study (`run_studies`); returns its selection."""
    return run_studies([loss], profile, results, runs, processes, root, device, progress, extra_overrides, seeds, echo)[loss]
