"""The cpu profile's recipe, chosen on held-out training classes, one question at a time.

The first cpu profile (version 1: 144-px crops, average pooling, a constant learning rate,
blocks 11-15 fine-tuned on 5 cached views, 400 iterations) trained MS loss only 3 points
of Recall@1 above the pretrained features. This study asks, in order, which input size,
pooling, learning-rate schedule, fine-tuning depth, augmentation and length the profile
should use. Every candidate is an MS-loss run (the paper's setting) that trains on 80 of
the 100 training classes and is scored on the other 20 (`validation_classes`); the test
split is never read. Each stage keeps the winner of the stages before it and adds one
change per candidate; the candidate with the best final validation MAP@R wins (MAP@R
ranks all R relevant images, so it is steadier than Recall@1 on 1,180 images), among
those under which the whole run manifest would fit `MATRIX_BUDGET_HOURS` on 2 cores (the
runner's estimate): a deeper or longer candidate that wins at a higher price is shown,
not chosen. The first candidate of a stage is the kept recipe, whose record comes from
the stage before.

    python -m dmlutils recipe --processes 2

writes `results/cpu/recipe/<stage>/<candidate>.json` (validation records),
`results/cpu/recipe/<stage>/selection.json` (scores, choice, the recipe so far),
`results/cpu/recipe/baseline/<size>_<pooling>.json` (pretrained features on the same
classes, no training: the floor each input candidate must clear) and
`results/cpu/recipe/seeds/seed_<n>.json` (the winner again with other seeds: the noise
a difference between candidates must exceed). The cpu profile's settings are the final
recipe (a test checks that they agree).

The same machinery chooses the `cpu_full` profile's recipe (the whole backbone fine-tuned
on decoded images, `FULL`): its learning rates, warm-up, length and smallest random crop, each candidate within
`FULL_BUDGET_MINUTES` for one run of the profile it would become, on this machine's two
cores (the budget counts one run on both threads; two one-thread runs side by side finish
a pair of candidates about as soon, 4% sooner in results/benchmarks/whole_backbone.md):

    python -m dmlutils recipe --profile cpu_full [--processes 2]

writes the same files under `results/cpu_full/recipe/`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PROFILE = "cpu"
LOSS = "multi_similarity"
REPO_RESULTS = Path(__file__).resolve().parents[1] / "results"  # the committed study
VALIDATION_CLASSES = 20
CRITERION = "map@r"

# The study's starting point, pinned here so the study means the same thing after the
# cpu profile has adopted its result: version 1 of the cpu profile.
BASE: dict = dict(
    image_size=144,
    resize_size=160,
    pooling="avg",
    lr=1e-4,
    head_lr=1e-4,
    lr_schedule="step",
    lr_milestones=(),
    warmup_iterations=0,
    cache_from_block=11,
    cache_views=5,
    feature_crop=0,
    feature_flip=False,
    iterations=400,
    eval_every=50,
)


def _map_size(config: dict) -> int:
    """Side of the activation map entering blocks 8-10 (1/16 of the input, rounded up)."""
    return -(-config["image_size"] // 16)


def _scaled_length(iterations: int) -> Callable[[dict], dict]:
    def overrides(config: dict) -> dict:
        ratio = iterations / config["iterations"]
        milestones = tuple(round(m * ratio) for m in config["lr_milestones"])
        warmup = round(config["warmup_iterations"] * ratio)
        return {"iterations": iterations, "lr_milestones": milestones, "warmup_iterations": warmup}

    return overrides


# (stage, question, {candidate: overrides on top of the recipe so far, or a function of it}).
STAGES: list[tuple[str, str, dict[str, dict | Callable[[dict], dict]]]] = [
    ("input_size", "input size (the 160-px copy, upsampled for 224)", {
        "144": {},
        "160": {"image_size": 160, "resize_size": 183},
        "224": {"image_size": 224, "resize_size": 256},
    }),
    ("pooling", "global pooling of the last feature map", {
        "avg": {},
        "max": {"pooling": "max"},
        "avg+max": {"pooling": "avg+max"},
    }),
    ("schedule", "learning-rate schedule", {
        "constant": {},
        "cosine": {"lr_schedule": "cosine"},
        "cosine_warmup": {"lr_schedule": "cosine", "warmup_iterations": 40},
        "cosine_blocks_3e-4": {"lr_schedule": "cosine", "lr": 3e-4},  # blocks faster than the fresh head
        "cosine_5e-5": {"lr_schedule": "cosine", "lr": 5e-5, "head_lr": 5e-5},
    }),
    ("depth", "first fine-tuned block", {
        "block_11": {},
        "block_8": {"cache_from_block": 8},
        "block_8_crop": lambda c: {"cache_from_block": 8, "feature_crop": _map_size(c) - 2},
    }),
    ("augmentation", "more views, or cheap augmentation of cached activations", {
        "kept": {},
        "flip": {"feature_flip": True},
        "views_10": {"cache_views": 10},
    }),
    ("length", "number of iterations (the schedule scaled with it)", {
        "kept": {},
        "300": _scaled_length(300),
        "600": _scaled_length(600),
    }),
]
SEEDS = (1, 2)  # the winner again: the spread a difference between candidates must exceed
# A candidate is eligible only if the run manifest (dmlutils/manifest.py, its declared
# seeds) under it fits this many hours on 2 cores, caches included, by the runner's
# estimate: a deeper or longer recipe that wins but costs more is shown, not chosen.
MATRIX_BUDGET_HOURS = 12.0
MATRIX_PROCESSES = 2
POOLINGS = ("avg", "max", "avg+max")

# The cpu_full profile's study: its starting point (version 1 of cpu_full, the untuned
# whole-backbone probe of DESIGN.md) and the questions, in order.
FULL_BASE: dict = dict(
    lr=1e-4,
    head_lr=1e-4,
    lr_schedule="cosine",
    lr_milestones=(),
    warmup_iterations=0,
    iterations=800,
    eval_every=100,
)
FULL_STAGES: list[tuple[str, str, dict[str, dict | Callable[[dict], dict]]]] = [
    ("rates", "learning rates of the pretrained blocks and of the new head", {
        "1e-4": {},
        "5e-5": {"lr": 5e-5, "head_lr": 5e-5},
        "2e-4": {"lr": 2e-4, "head_lr": 2e-4},
        "head_1e-3": {"head_lr": 1e-3},  # the fresh head faster than the pretrained blocks
    }),
    ("warmup", "a linear warm-up of the rates", {
        "none": {},
        "warmup_100": {"warmup_iterations": 100},
    }),
    ("length", "number of iterations (the schedule scaled with it)", {
        "kept": {},
        "400": _scaled_length(400),
        "1200": _scaled_length(1200),
    }),
    # The copy's images are 160 px on their shorter side, upsampled to 256: the paper code's
    # smallest crop (16% of the area, 40% of the side) is then about 64 px of real image.
    # Larger smallest crops, at 60% and 80% of the side, blur less and match the test
    # view's scale better, at the cost of less variety.
    ("crop", "the random crop's smallest area (the 160-px copy: a small crop is a blurred one)", {
        "kept": {},
        "area_0.36": {"crop_min_area": 0.36},
        "area_0.64": {"crop_min_area": 0.64},
    }),
]
FULL_BUDGET_MINUTES = 90.0  # one run of the profile, evaluations included, on two cores


@dataclass(frozen=True)
class RecipeStudy:
    """One profile's recipe study: where it starts, what it asks, and what a candidate may cost."""

    profile: str
    base: dict
    stages: list
    seeds: tuple
    poolings: tuple  # the floors: the pretrained features at each input size and pooling
    budget: float
    budget_unit: str  # "h" (the run manifest's hours) or "min" (one run's minutes)
    cost_key: str  # what the selection and the rows call the cost: "matrix_hours" or "run_minutes_two_cores"
    budget_key: str
    cost: Callable[[dict], float] = field(repr=False)


def cpu_study() -> RecipeStudy:
    """The cpu profile's study, read from this module's names at call time (tests rebind them)."""
    return RecipeStudy(PROFILE, BASE, STAGES, SEEDS, POOLINGS, MATRIX_BUDGET_HOURS, "h", "matrix_hours", "budget_hours",
                       lambda recipe: matrix_hours(recipe))


def full_study() -> RecipeStudy:
    """The cpu_full profile's study: a candidate is affordable when one run of the profile it
    would become fits `FULL_BUDGET_MINUTES` on two cores."""
    return RecipeStudy("cpu_full", FULL_BASE, FULL_STAGES, SEEDS, ("max",), FULL_BUDGET_MINUTES, "min", "run_minutes_two_cores",
                       "budget_minutes", lambda recipe: run_minutes(recipe, "cpu_full", threads=2))


def get_study(profile: str = PROFILE) -> RecipeStudy:
    studies = {"cpu": cpu_study, "cpu_full": full_study}
    if profile == PROFILE or profile not in studies:  # tests run the cpu study at the smoke profile
        return cpu_study()
    return studies[profile]()


def recipe_dir(results, study: RecipeStudy | None = None) -> Path:
    return Path(results) / (study or cpu_study()).profile / "recipe"


def _config(overrides: dict, profile: str = PROFILE, seed: int = 0) -> dict:
    from .profiles import make_config

    return make_config(profile, LOSS, {**overrides, "validation_classes": VALIDATION_CLASSES, "seed": seed})


def _resolve(candidate, recipe: dict) -> dict:
    return dict(candidate(_config(recipe)) if callable(candidate) else candidate)


def profile_settings(recipe: dict) -> dict:
    """The cpu profile a recipe becomes: its settings, with the test split evaluated
    four times per run (every 50 iterations cost about 30% of a run)."""
    return {**recipe, "eval_every": max(1, recipe["iterations"] // 4)}


def run_minutes(recipe: dict, profile: str | None = None, threads: int = 1) -> float:
    """Estimated minutes of one MS run of the profile a recipe becomes, on `threads` threads
    of an otherwise idle machine (two one-thread runs side by side take
    `runner.SIDE_BY_SIDE_SLOWDOWN` times longer)."""
    from .runner import Job, estimate_seconds

    return estimate_seconds(Job("ms", _profile_config(recipe, {}, LOSS, 0, profile), None, None), threads=threads) / 60


def _profile_config(recipe: dict, overrides: dict, loss: str, seed: int, profile: str | None = None) -> dict:
    from .profiles import make_config

    return make_config(profile or PROFILE, loss, {**profile_settings(recipe), **overrides, "seed": seed})


def matrix_hours(recipe: dict, processes: int = MATRIX_PROCESSES) -> float:
    """Estimated wall-clock hours of the run manifest's declared runs under a recipe,
    `processes` side by side, plus one activation cache per seed and input pipeline."""
    from . import manifest
    from .profiles import cache_settings
    from .runner import SIDE_BY_SIDE_SLOWDOWN, Job, estimate_cache_seconds, estimate_seconds

    seconds, caches = 0.0, {}
    for entry in manifest.RUNS:
        if PROFILE not in entry.profiles:
            continue
        for seed in manifest.declared_seeds(entry, PROFILE):
            config = _profile_config(recipe, entry.overrides, entry.loss or LOSS, seed)
            seconds += estimate_seconds(Job(entry.name, config, None, None, entry.kind))
            caches[cache_settings(config)] = estimate_cache_seconds(config)
    slowdown = SIDE_BY_SIDE_SLOWDOWN if processes > 1 else 1.0  # the cache time was measured side by side already
    return (seconds * slowdown + sum(caches.values())) / 3600 / processes


def _score(record: dict) -> float:
    return float(record["final"][CRITERION])


def read_selection(stage: str, results="results", study: RecipeStudy | None = None) -> dict | None:
    from .records import read_record  # a damaged file raises, naming it and the command that re-makes it

    path = recipe_dir(results, study) / stage / "selection.json"
    return read_record(path) if path.exists() else None


def final_recipe(results="results", study: RecipeStudy | None = None) -> dict | None:
    """The overrides the whole study chose (on top of the profile), or None if unfinished."""
    study = study or cpu_study()
    selection = read_selection(study.stages[-1][0], results, study)
    return None if selection is None else _recipe_of(selection)


def _recipe_of(selection: dict) -> dict:
    """A selection's recipe with JSON's lists back as the tuples the profile holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in selection["recipe"].items()}


def run_recipe_study(results="results", runs="runs", processes: int = 1, root=None, profile: str = PROFILE, progress=True, echo=print) -> dict:
    """Run the stages in order (each one's candidates side by side); returns the recipe."""
    from .provenance import _jsonable, write_decision
    from .records import read_record
    from .runner import Job, run_jobs

    study = get_study(profile)
    folder = recipe_dir(results, study)
    recipe = dict(study.base)
    done: dict[str, str] = {}  # config as JSON -> record path (relative to results): no run twice

    def key(overrides, seed=0):
        return json.dumps(_config(overrides, profile, seed), sort_keys=True, default=_jsonable)

    # The floor: pretrained features on the held-out classes for every input size and pooling.
    base = study.base
    floors = [_config({**base, **_resolve(c, base), "pooling": p}, profile) for c in study.stages[0][2].values() for p in study.poolings]
    baselines = [
        Job(f"baseline {c['image_size']} {c['pooling']}", c, folder / "baseline" / f"{c['image_size']}_{c['pooling']}.json", Path(runs), kind="baseline", root=root)
        for c in {(c["image_size"], c["pooling"]): c for c in floors}.values()
    ]
    run_jobs(baselines, processes, progress, echo)

    for stage, question, candidates in study.stages:
        settings = {name: {**recipe, **_resolve(c, recipe)} for name, c in candidates.items()}
        jobs, paths = [], {}
        for name, overrides in settings.items():
            k = key(overrides)
            if k in done:
                paths[name] = done[k]
                continue
            path = folder / stage / f"{name}.json"
            paths[name] = str(path.relative_to(results))
            done[k] = paths[name]
            jobs.append(Job(f"{stage}/{name}", _config(overrides, profile), path, Path(runs) / study.profile / "recipe" / stage / name, root=root))
        echo(f"stage {stage}: {question}")
        run_jobs(jobs, processes, progress, echo)
        records = {name: read_record(Path(results) / p) for name, p in paths.items()}
        for name, record in records.items():
            if record.get("evaluated_on", {}).get("split") != "validation":
                raise ValueError(f"recipe record {paths[name]} was not evaluated on validation classes")
        scores = {name: _score(r) for name, r in records.items()}
        costs = {name: study.cost(settings[name]) for name in settings}
        eligible = [n for n in scores if costs[n] <= study.budget] or [min(costs, key=costs.get)]
        best = max(scores[n] for n in eligible)
        chosen = next(n for n in eligible if scores[n] == best)  # ties: the kept recipe
        recipe = settings[chosen]
        write_decision(folder / stage / "selection.json", {
            "stage": stage,
            "question": question,
            "criterion": f"final validation {CRITERION}",
            "validation_classes": VALIDATION_CLASSES,
            "scores": scores,
            "run_minutes": {name: run_minutes(settings[name], study.profile) for name in settings},
            study.cost_key: costs,
            study.budget_key: study.budget,
            "eligible": eligible,
            "records": paths,
            "chosen": chosen,
            "recipe": recipe,
        })
        echo(f"stage {stage}: " + ", ".join(f"{n} {s:.4f} ({costs[n]:.1f} {study.budget_unit})" for n, s in scores.items()) + f"; chose {chosen}")

    seed_jobs = [
        Job(f"seeds/seed_{seed}", _config(recipe, profile, seed), folder / "seeds" / f"seed_{seed}.json",
            Path(runs) / study.profile / "recipe" / "seeds" / f"seed_{seed}", root=root)
        for seed in study.seeds
    ]
    run_jobs(seed_jobs, processes, progress, echo)
    return recipe


def describe(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "as kept"


def load_study(results="results", profile: str = PROFILE) -> dict:
    """What the recipe study has produced so far: {"stages": [{stage, question, rows,
    chosen}], "baselines": {(size, pooling): record}, "seeds": {seed: record},
    "recipe": the final recipe or None}. Each row: candidate, what it changes, its record
    (None if not run yet), the estimated minutes of one run and hours of the matrix under
    it, and whether that fits the budget."""
    from .records import read_record  # a damaged file raises, naming it and the command that re-makes it

    study = get_study(profile)
    folder = recipe_dir(results, study)

    def read(path):
        path = Path(path)
        return read_record(path) if path.exists() else None

    stages, recipe, kept_path = [], dict(study.base), None
    for stage, question, candidates in study.stages:
        selection = read(folder / stage / "selection.json")
        rows = []
        for name, candidate in candidates.items():
            change = _resolve(candidate, recipe)
            if selection:
                path = Path(results) / selection["records"][name]
            else:  # an open stage: its kept candidate is the record the stage before chose
                path = kept_path if (not change and kept_path) else folder / stage / f"{name}.json"
            cost = study.cost({**recipe, **change})
            changed = {k: v for k, v in change.items() if recipe.get(k) != v}  # e.g. a length's schedule, unchanged
            rows.append({"candidate": name, "change": describe(changed), "record": read(path),
                         "run_minutes": run_minutes({**recipe, **change}, study.profile), study.cost_key: cost,
                         "cost": cost, "eligible": cost <= study.budget})
        stages.append({"stage": stage, "question": question, "rows": rows, "chosen": selection["chosen"] if selection else None})
        if selection is None:
            break  # later stages depend on this one's choice
        recipe = _recipe_of(selection)
        kept_path = Path(results) / selection["records"][selection["chosen"]]
    baselines = {}
    for path in sorted((folder / "baseline").glob("*.json")):
        record = read(path)
        baselines[(record["config"]["image_size"], record["config"]["pooling"])] = record
    seeds = {seed: read(folder / "seeds" / f"seed_{seed}.json") for seed in study.seeds}
    complete = len(stages) == len(study.stages) and stages[-1]["chosen"] is not None
    return {"profile": study.profile, "stages": stages, "baselines": baselines, "seeds": {s: r for s, r in seeds.items() if r},
            "recipe": recipe if complete else None, "recipe_so_far": recipe}


def findings(study: dict) -> list[str]:
    """What the study decided, as sentences read from its records (`load_study`): the
    winner's seed spread, each stage's choice and whether its lead over the kept candidate
    exceeds that spread, where the budget rather than the score decided, and whether the
    cpu profile runs the result."""
    from .profiles import PROFILE_VERSIONS, PROFILES, make_config
    from .report import summarise

    spec = get_study(study.get("profile", PROFILE))
    profile = spec.profile

    def score(row):
        return row["record"]["final"][CRITERION]

    decided = [s for s in study["stages"] if s["chosen"]]
    lines, noise = [], None  # noise: the winner's seed-to-seed spread, what a lead must exceed
    if study["seeds"] and decided:
        winner = next(row["record"] for row in decided[-1]["rows"] if row["candidate"] == decided[-1]["chosen"])
        spread = summarise({0: winner, **study["seeds"]}, CRITERION)
        noise = spread.std
        lines.append(f"The study's winner with seeds {', '.join(map(str, [0, *sorted(study['seeds'])]))}: validation MAP@R "
                     f"{spread.text()}. A lead smaller than that spread ({100 * noise:.1f} points) is within the noise of one seed.")
    for stage in decided:
        line = f"**{stage['stage']}**: {stage['chosen']}"
        scored = [row for row in stage["rows"] if row["record"]]
        kept, picked = scored[0], next(row for row in scored if row["candidate"] == stage["chosen"])
        if noise and picked is not kept:
            lead = score(picked) - score(kept)
            line += f" ({100 * lead:+.1f} MAP@R over *{kept['candidate']}*, {'beyond' if abs(lead) > noise else 'within'} the seed noise)"
        top = max(scored, key=score)
        if top["candidate"] != stage["chosen"] and not top["eligible"]:  # the budget, not the score, decided
            gap = score(top) - score(picked)
            beyond = "" if not noise else f", {'beyond' if gap > noise else 'within'} the seed noise"
            what = "the matrix under it" if spec.cost_key == "matrix_hours" else "one run of it"
            unit = spec.budget_unit
            line += (f" — *{top['candidate']}* scored higher ({100 * score(top):.1f} against {100 * score(picked):.1f}{beyond}), "
                     f"but {what} would take about {top[spec.cost_key]:.1f} {unit} against {picked[spec.cost_key]:.1f} {unit} "
                     f"(budget {spec.budget:g} {unit})")
        lines.append(line)

    def runs(recipe):  # whether the profile holds a recipe (the evaluation cadence is the profile's own)
        settings = profile_settings(make_config(profile, LOSS, recipe))
        return all(settings[k] == PROFILES[profile][k] for k in {*spec.base, *recipe})

    version = f"the `{profile}` profile (version {PROFILE_VERSIONS[profile]})"
    if study["recipe"] is None:
        pending = next((s["stage"] for s in study["stages"] if not s["chosen"]), None)
        so_far = study.get("recipe_so_far")
        lines.append(f"The study is not finished: the stage *{pending}* has not chosen yet, and {version} "
                     + ("runs the choices of the stages before it." if decided and so_far and runs(so_far)
                        else "still runs its first recipe." if not decided else "does not run the choices of the stages before it."))
    else:
        lines.append(f"{version[0].upper()}{version[1:]} " + ("runs this recipe." if runs(study["recipe"]) else "does NOT run this recipe yet."))
    return lines
