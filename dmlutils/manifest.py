"""Every run record the book's tables need, declared once: name, loss, settings, seeds.

    python -m dmlutils runs --profile cpu --processes 2          # run what is missing
    python -m dmlutils runs --profile cpu --only ablation:beta --dry-run

A run's record for seed n lives at `results/<profile>/<name>/seed_<n>.json`. A record is
valid when it is finished and was made under the profile's current version with exactly
the settings the manifest gives it (`valid_record`); the runner skips valid records,
resumes interrupted runs from their checkpoints and runs the rest side by side, one
thread per process (`dmlutils.runner`). Chapters read the manifest (`RUNS`, `group`),
never a hand-kept list of names.

Seeds: three for the runs whose differences the book reads against the noise (the nine
losses, the mining / weighting ablation, the embedding sizes 64 and 512, XBM), one for the
sensitivity sweeps; a sweep value whose single seed differs from the default's mean by
more than the default's seed standard deviation gets `ESCALATION_SEEDS` too (`escalate`).
The whole-backbone profile (`cpu_full`, about 50 minutes a run on two threads, 90 for two side by side) runs MS and the mining /
weighting grid with three seeds and triplet, contrastive and binomial deviance with one
seed under the same rule (`one_seed_at`); its baseline is the cpu profile's
(`dmlutils.regimes`).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .losses.registry import LOSSES

MS = "multi_similarity"
THREE_SEEDS = (0, 1, 2)
_EVERYWHERE = ("smoke", "cpu", "paper")
# The whole-backbone regime runs MS, the mining / weighting grid (three seeds each) and three
# other losses (one seed, escalated); its baseline is the cpu profile's (`regimes`).
FULL = "cpu_full"
PROFILES_OF = {name: (*_EVERYWHERE, FULL) for name in (
    MS, "ms_no_mining", "ms_no_weighting", "ms_no_mining_no_weighting", "triplet", "contrastive", "binomial_deviance")}
ONE_SEED_AT = {name: (FULL,) for name in ("triplet", "contrastive", "binomial_deviance")}
ESCALATION_SEEDS = (1, 2)
CRITERION = "recall@1"


@dataclass(frozen=True)
class Run:
    name: str
    loss: str | None  # None: the pretrained baseline (no training)
    overrides: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    group: str = "main"
    escalate: bool = False  # one seed, and more when it differs from the default beyond the noise
    profiles: tuple[str, ...] = ("smoke", "cpu", "paper")  # where the run is possible
    one_seed_at: tuple[str, ...] = ()  # profiles where it takes one seed and the escalation rule
    label: str = ""  # its name for a reader; "" derives one from the overrides (`label`)

    @property
    def kind(self) -> str:
        return "baseline" if self.loss is None else "train"


def _sweep(group: str, key: str, values, default, name: str, seeds_at=()) -> list[Run]:
    """One MS hyper-parameter or setting swept around its default (the default is `multi_similarity`)."""
    runs = []
    for value in values:
        if value == default:
            continue
        seeds = THREE_SEEDS if value in seeds_at else (0,)
        runs.append(Run(f"ms_{name}_{value:g}", MS, {key: value}, seeds, group, escalate=seeds == (0,)))
    return runs


RUNS: list[Run] = [
    # One seed: the baseline has no head, no sampler and no augmentation (plain test views
    # through the pretrained backbone), so at the cpu and paper profiles every seed gives
    # the same record.
    Run("baseline", None, group="main"),
    # MS first: a chapter that trains what is missing (Colab with a GPU) makes its record first.
    # The whole-backbone regime (cpu_full, about 50 min a run on two threads) re-tests MS against three of them:
    # one seed each, and two more where the escalation rule asks.
    *[Run(loss, loss, {}, THREE_SEEDS, "main", profiles=PROFILES_OF.get(loss, _EVERYWHERE), one_seed_at=ONE_SEED_AT.get(loss, ()))
      for loss in [MS, *(name for name in LOSSES if name != MS)]],
    # Mining (each side) and weighting switched off, alone and together (chapter 8).
    *[
        Run(name, MS, overrides, THREE_SEEDS, "mining and weighting", label=label, profiles=PROFILES_OF.get(name, _EVERYWHERE))
        for name, label, overrides in [
            ("ms_no_positive_mining", "no positive mining", {"loss.mine_positives": False}),
            ("ms_no_negative_mining", "no negative mining", {"loss.mine_negatives": False}),
            ("ms_no_mining", "weighting only (no mining)", {"loss.mine_positives": False, "loss.mine_negatives": False}),
            ("ms_no_weighting", "mining only (no weighting)", {"loss.weighting": False}),
            ("ms_no_mining_no_weighting", "neither mining nor weighting",
             {"loss.mine_positives": False, "loss.mine_negatives": False, "loss.weighting": False}),
        ]
    ],
    *_sweep("beta", "loss.beta", (10.0, 20.0, 40.0, 80.0), 40.0, "beta"),
    *_sweep("alpha", "loss.alpha", (1.0, 2.0, 4.0), 2.0, "alpha"),
    *_sweep("lambda", "loss.lam", (0.3, 0.5, 0.7, 1.0), 0.5, "lam"),
    *_sweep("epsilon", "loss.epsilon", (0.05, 0.1, 0.2), 0.1, "epsilon"),
    *_sweep("embedding size", "embedding_dim", (64, 128, 256, 512, 1024), 512, "dim", seeds_at=(64,)),
    # Batch composition at 80 images: 40 x 2, 16 x 5 (the default), 8 x 10.
    # (The smoke profile's synthetic split has 10 classes: no 40-class batches there.)
    Run("ms_batch_40x2", MS, {"p": 40, "k": 2}, (0,), "batch composition", escalate=True, profiles=("cpu", "paper")),
    Run("ms_batch_8x10", MS, {"p": 8, "k": 10}, (0,), "batch composition", escalate=True, profiles=("cpu", "paper")),
    # XBM (Wang et al., CVPR 2020): MS also mines the last 1,600 embeddings, after a warm-up.
    Run("ms_xbm_1600", MS, {"xbm_size": 1600, "xbm_start": 100}, THREE_SEEDS, "cross-batch memory"),
]

GROUPS: list[str] = list(dict.fromkeys(run.group for run in RUNS))


def run(name: str) -> Run:
    for candidate in RUNS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"no run named {name!r} in the manifest; valid: {', '.join(r.name for r in RUNS)}")


def label(name: str) -> str:
    """A run's name for a reader (`dmlutils.names`): its declared label, else what it changes
    from its loss's settings ("β = 10", "64-d", "40 x 2", "MS + XBM 1,600"), else its loss
    ("Multi-Similarity", "Contrastive"; the baseline: "pretrained features, no training")."""
    from . import names

    entry = run(name)
    if entry.label:
        return entry.label
    return names.setting_text(entry.overrides, entry.loss) or names.loss_name(entry.loss)


def group(name: str) -> list[Run]:
    runs = [r for r in RUNS if r.group == name]
    if not runs:
        raise ValueError(f"no group {name!r} in the manifest; valid: {', '.join(GROUPS)}")
    return runs


def default_of(group_name: str) -> str:
    """The run a group's rows are compared with: MS loss at the profile's settings."""
    return MS


def record_path(results, profile: str, name: str, seed: int) -> Path:
    return Path(results) / profile / name / f"seed_{seed}.json"


def config_of(entry: Run, profile: str, seed: int) -> dict:
    from .profiles import make_config

    overrides = {k: v for k, v in entry.overrides.items()}
    return make_config(profile, entry.loss or MS, {**overrides, "seed": seed})


def _as_json(value):
    from .provenance import _jsonable

    return json.loads(json.dumps(value, default=_jsonable))


def valid_record(path: Path, config: dict, skip_damaged: bool = False) -> dict | None:
    """The record at `path` if it is of the profile's current version and made with exactly
    `config` (ignoring settings that do not change a result); else None. A damaged record
    (not JSON, or without a key every record has) raises `records.DamagedRecord`, naming the
    file and the command that re-makes it; with `skip_damaged` it is None like any record
    that is not valid: the planner's way, which then re-makes it."""
    from .records import DamagedRecord, is_current, read_record

    path = Path(path)
    if not path.exists():
        return None
    try:
        record = read_record(path)
    except DamagedRecord:
        if skip_damaged:
            return None
        raise
    if not is_current(record, config["profile"]):
        return None
    from .profiles import PROFILES

    # A setting added after a record was made (with a neutral default, so the profile's
    # version did not change) ran at that default.
    recorded, wanted = {**_as_json(PROFILES[config["profile"]]), **_as_json(record["config"])}, _as_json(config)
    for ignored in NOT_RESULT_SETTINGS:
        recorded.pop(ignored, None)
        wanted.pop(ignored, None)
    return record if recorded == wanted else None


# Settings that change how a run is executed, not what it computes.
NOT_RESULT_SETTINGS = ("num_workers", "eval_batch_size", "pin_memory")


# The smoke profile only exercises the code (CI builds the book with it): two seeds are
# enough to compute a mean and a spread.
SEEDS_AT_MOST = {"smoke": 2}


def declared_seeds(entry: Run, profile: str) -> tuple[int, ...]:
    seeds = entry.seeds[:1] if profile in entry.one_seed_at else entry.seeds
    return seeds[: SEEDS_AT_MOST.get(profile, len(seeds))]


def escalates(entry: Run, profile: str) -> bool:
    """Whether the entry takes one seed at `profile` and `ESCALATION_SEEDS` when the rule asks."""
    return (entry.escalate or profile in entry.one_seed_at) and profile not in SEEDS_AT_MOST


def seeds_wanted(entry: Run, profile: str, results) -> tuple[int, ...]:
    """The entry's seeds, plus `ESCALATION_SEEDS` when its one seed differs from the
    default run's mean by more than the default's seed standard deviation."""
    declared = declared_seeds(entry, profile)
    if not escalates(entry, profile):
        return declared
    first, reference = _escalation_evidence(entry, profile, results)
    if outside_band(first, reference):
        return tuple(dict.fromkeys(declared + ESCALATION_SEEDS))
    return declared


def outside_band(first: dict | None, reference: list[dict | None]) -> bool:
    """The escalation rule: whether a one-seed record lies outside the reference runs'
    mean ± seed standard deviation (False until the record and every reference exist)."""
    if first is None or not reference or any(r is None for r in reference):
        return False  # decided once the first seed and the default's seeds exist
    values = [r["final"][CRITERION] for r in reference]
    return abs(first["final"][CRITERION] - statistics.mean(values)) > statistics.stdev(values)


def _escalation_evidence(entry: Run, profile: str, results) -> tuple[dict | None, list[dict | None]]:
    """What decides an escalation: the entry's first-seed record and the default's records."""
    first = valid_record(record_path(results, profile, entry.name, 0), config_of(entry, profile, 0), skip_damaged=True)
    return first, reference_records(entry, profile, results)


def reference_records(entry: Run, profile: str, results) -> list[dict | None]:
    """The records an entry's one seed is placed against: its group default's, one per
    declared seed (None where missing)."""
    default = run(default_of(entry.group))
    return [valid_record(record_path(results, profile, default.name, s), config_of(default, profile, s), skip_damaged=True)
            for s in declared_seeds(default, profile)]


def undecided_escalations(profile: str, results="results", only=None) -> list[Run]:
    """The one-seed runs whose escalation is not decided yet (their first seed or the
    default's seeds have no record): each may still add `ESCALATION_SEEDS`."""
    undecided = []
    for entry in _selected(only):
        if escalates(entry, profile) and profile in entry.profiles:
            first, reference = _escalation_evidence(entry, profile, results)
            if first is None or any(r is None for r in reference):
                undecided.append(entry)
    return undecided


def escalation_note(profile: str, results="results", processes: int = 1, only=None,
                    measured: dict[int, tuple[float, int]] | None = None) -> str | None:
    """A line for the plan: the runs that escalation may still add, with their time."""
    from .runner import SIDE_BY_SIDE_SLOWDOWN, Job, estimate_seconds, job_threads

    undecided = undecided_escalations(profile, results, only)
    if not undecided:
        return None
    extra = len(ESCALATION_SEEDS) * len(undecided)
    threads = job_threads(processes, together=True)
    slowdown = SIDE_BY_SIDE_SLOWDOWN if processes > 1 else 1.0
    timed = (measured or {}).get(threads)
    if timed:  # `measured_run_seconds`: the records' own wall times include the runs beside them
        seconds = timed[0] * extra
    else:
        seconds = sum(estimate_seconds(Job(e.name, config_of(e, profile, 0), None, None, e.kind), threads) for e in undecided)
        seconds *= len(ESCALATION_SEEDS) * slowdown
    return (f"Escalation may add runs to the plan: {len(undecided)} one-seed runs ({', '.join(e.name for e in undecided)}) each add seeds "
            f"{', '.join(map(str, ESCALATION_SEEDS))} if their first seed differs from the default's mean by more than its seed "
            f"std: up to {extra} more runs, about {seconds * threads / 60:.0f} CPU-minutes, "
            f"{seconds / 60 / max(1, processes):.0f} minutes of wall time more ({'from the records made before' if timed else 'estimate'}).")


def _selected(only) -> list[Run]:
    """The manifest's runs named in `only` (run names or `group:<name>`); all if None."""
    if not only:
        return RUNS
    wanted = set()
    for item in only:
        wanted |= {r.name for r in group(item.split(":", 1)[1])} if item.startswith("group:") else {run(item).name}
    return [r for r in RUNS if r.name in wanted]


def jobs(profile: str, results="results", runs="runs", root=None, only=None):
    """The runner's jobs for every (run, seed) of the manifest (or of `only`: run names or
    `group:<name>`), valid records included (the runner skips them)."""
    from .runner import Job

    out = []
    for entry in _selected(only):
        if profile not in entry.profiles:
            continue
        for seed in seeds_wanted(entry, profile, results):
            config = config_of(entry, profile, seed)
            path = record_path(results, profile, entry.name, seed)
            done = valid_record(path, config, skip_damaged=True) is not None  # a damaged record is re-made
            out.append((Job(f"{entry.name} seed {seed}", config, path, Path(runs) / profile / entry.name / f"seed_{seed}", entry.kind, root), done))
    return out


def load(profile: str, results="results", skip_damaged: bool = False) -> dict[str, dict[int, dict]]:
    """{run name: {seed: record}} of every valid record of the manifest. A damaged record
    raises `records.DamagedRecord` (a chapter names it and how to re-make it) unless
    `skip_damaged` (the planner, which re-makes it)."""
    found: dict[str, dict[int, dict]] = {}
    for entry in RUNS:
        if profile not in entry.profiles:
            continue
        for seed in sorted(set(declared_seeds(entry, profile)) | set(ESCALATION_SEEDS if escalates(entry, profile) else ())):
            record = valid_record(record_path(results, profile, entry.name, seed), config_of(entry, profile, seed), skip_damaged)
            if record is not None:
                found.setdefault(entry.name, {})[seed] = record
    return found


def measured_run_seconds(profile: str, results="results") -> dict[int, tuple[float, int]]:
    """{threads: (median wall seconds, count)} of the manifest's valid training records at
    `profile`, by the threads each trained on (`records.threads_of`), for every thread count
    with three or more records: the plan's time per training run on as many threads. A
    thread count with fewer records is absent (the plan falls back to
    `runner.estimate_seconds`)."""
    from .records import threads_of

    by_threads: dict[int, list[float]] = {}
    for by_seed in load(profile, results, skip_damaged=True).values():
        for r in by_seed.values():
            threads = threads_of(r)
            if r.get("kind", "train") == "train" and "wall_time_seconds" in r and threads:
                by_threads.setdefault(int(threads), []).append(float(r["wall_time_seconds"]))
    return {t: (statistics.median(s), len(s)) for t, s in sorted(by_threads.items()) if len(s) >= 3}


def run_manifest(profile: str, results="results", runs="runs", processes: int = 1, root=None, only=None, dry_run=False, echo=print,
                 progress: bool = True) -> int:
    """Run every missing (run, seed) of the manifest; repeats while escalations add seeds.
    Returns the number of runs made (or, with `dry_run`, that would be made now)."""
    from .runner import plan, run_jobs

    made, seen = 0, set()
    while True:
        listed = jobs(profile, results, runs, root, only)
        todo = {job.name for job, done in listed if not done}
        is_done = lambda job: job.name not in todo  # noqa: E731
        measured = measured_run_seconds(profile, results)
        note = escalation_note(profile, results, processes, only, measured) if not seen else None  # once, before the first batch
        if dry_run:
            echo(plan([job for job, _ in listed], processes, is_done, measured))
            if note:
                echo(note)
            return len(todo)
        if note:
            echo(note)
        if not todo or todo <= seen:  # nothing new to run (a run that failed stays failed)
            return made
        seen |= todo
        made += len(run_jobs([job for job, _ in listed], processes, progress=progress, echo=echo, is_done=is_done, measured=measured))


def should_train(profile: str, train_missing: bool | None = None) -> bool:
    """A chapter's `train_missing` parameter: None means yes at the smoke profile (seconds
    per run) and at the paper profile when a GPU is present, no at the cpu profile (its
    records are committed; `make results-cpu` re-makes them)."""
    if train_missing is not None:
        return bool(train_missing)
    if profile == "smoke":
        return True
    if profile == "paper":
        import torch

        return torch.cuda.is_available()
    return False


def ensure(profile: str, results="results", only=None, train_missing: bool | None = None, root=None) -> dict[str, dict[int, dict]]:
    """A chapter's records: with `should_train`, first make the missing (run, seed) pairs of
    `only` (the whole manifest if None); then {run name: {seed: record}} of every valid
    record. A profile whose records ship with the repository (cpu) and where none is found
    raises `records.RecordsNotFound`, naming the folder and the command that makes them."""
    from .records import check_records_found

    if should_train(profile, train_missing):
        # progress bars where runs take minutes (a GPU at the paper profile), not at smoke
        run_manifest(profile, results, processes=1, root=root, only=only, echo=lambda *_: None, progress=profile != "smoke")
    loaded = load(profile, results)
    if not loaded:
        check_records_found(profile, results)
    return loaded
