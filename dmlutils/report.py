"""Numbers for the book's tables and sentences, computed from run records over seeds.

    runs = manifest.load("cpu")                       # {name: {seed: record}}
    summarise(runs["multi_similarity"])               # SeedSummary(mean, std, n, values)
    paired(runs["multi_similarity"], runs["npair"])   # the per-seed difference and its test
    verdict(paired(...))                              # one sentence saying if it exceeds the noise

A difference between two runs "exceeds the seed noise" when a two-sided paired t-test
over the seeds both have (same seed: same sampler order, same head initialisation, same
augmented views) rejects "no difference" at the 5% level; with fewer than two common
seeds nothing can be said, and the sentence says so.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CRITERION = "recall@1"
METRIC_LABELS = {"recall@1": "Recall@1", "map@r": "MAP@R"}  # how a sentence names a metric


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float | None  # None with a single seed
    n: int
    values: tuple[float, ...]

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """'59.3 ± 0.4 (n=3)' in points (scale 100), or '59.3 (n=1)'."""
        return self.text_without_n(scale, digits) + (f" (n={self.n})" if self.n else "")

    def text_without_n(self, scale: float = 100.0, digits: int = 1) -> str:
        """'59.3 ± 0.4', or '59.3' from one seed: for a table that shows n in a column of its own."""
        if self.n == 0:
            return "not run"
        spread = f" ± {self.std * scale:.{digits}f}" if self.std is not None else ""
        return f"{self.mean * scale:.{digits}f}{spread}"


def final_value(record: dict, metric: str = CRITERION) -> float:
    return float(record["final"][metric])


def summarise(by_seed: dict[int, dict] | None, metric: str = CRITERION) -> SeedSummary:
    values = tuple(final_value(r, metric) for _, r in sorted((by_seed or {}).items()))
    if not values:
        return SeedSummary(math.nan, None, 0, ())
    std = statistics.stdev(values) if len(values) > 1 else None
    return SeedSummary(statistics.fmean(values), std, len(values), values)


@dataclass(frozen=True)
class PairedDifference:
    mean: float  # a - b, averaged over the common seeds
    std: float | None  # of the per-seed differences
    n: int
    t: float | None
    p: float | None
    seeds: tuple[int, ...]

    @property
    def exceeds_noise(self) -> bool | None:
        return None if self.p is None else self.p < 0.05


def paired(a: dict[int, dict], b: dict[int, dict], metric: str = CRITERION) -> PairedDifference:
    """a - b per common seed, with a two-sided paired t-test."""
    seeds = tuple(sorted(set(a or {}) & set(b or {})))
    diffs = [final_value(a[s], metric) - final_value(b[s], metric) for s in seeds]
    if not diffs:
        return PairedDifference(math.nan, None, 0, None, None, ())
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(mean, None, 1, None, None, seeds)
    std = statistics.stdev(diffs)
    if std <= 1e-12 * max(1.0, abs(mean)):  # equal differences, up to the rounding of the metrics
        std = 0.0
    if std == 0:
        t, p = (math.inf if mean else 0.0), (0.0 if mean else 1.0)
    else:
        from scipy import stats

        t = mean / (std / math.sqrt(len(diffs)))
        p = float(2 * stats.t.sf(abs(t), df=len(diffs) - 1))
    return PairedDifference(mean, std, len(diffs), t, p, seeds)


def p_text(p: float, digits: int = 3, space: str = "") -> str:
    """'p=0.04', or 'p<0.001' when p rounds to zero at `digits` (never 'p=0.000')."""
    if p < 10**-digits:
        return f"p{space}<{space}{10**-digits:.{digits}f}"
    return f"p{space}={space}{p:.{digits}f}"


def duration_text(seconds: float) -> str:
    """'40 s', '17.8 min' or '5.2 hours': a time in the unit a reader thinks in (a smoke run's
    seconds are not '0.0 minutes')."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} hours"


def verdict(diff: PairedDifference, a: str, b: str, metric_name: str = "R@1", scale: float = 100.0) -> str:
    """One sentence on a paired difference: its size, spread and whether it exceeds the noise."""
    if diff.n == 0:
        return f"{a} and {b} share no seed: no comparison."
    size = f"{a} − {b} = {diff.mean * scale:+.1f} {metric_name} points"
    if diff.n == 1:
        return f"{size} on one seed: too few seeds to tell it from the noise."
    reading = "exceeds the seed noise" if diff.exceeds_noise else "is within the seed noise"
    if diff.std == 0:
        return f"{size}, the same on each of its {diff.n} seeds: the difference {reading}."
    return (
        f"{size} (per-seed differences: std {diff.std * scale:.1f}, n={diff.n}; paired t = {diff.t:.1f}, "
        f"{p_text(diff.p, 3, ' ')}): the difference {reading}."
    )


def against_baseline(by_seed: dict[int, dict], baseline: dict[int, dict], metric: str = CRITERION) -> PairedDifference:
    """by_seed − the baseline, per seed, tested as `paired` does. The baseline (pretrained
    features, no training) has no sampler, head or augmentation, so every seed would give
    the same record: its one record stands for each of by_seed's seeds, and the paired test
    becomes a one-sample t-test of the run's seeds against the baseline's value."""
    values = {round(final_value(r, metric), 12) for r in (baseline or {}).values()}
    if len(values) > 1:
        raise ValueError(f"the baseline's seeds differ in {metric} ({sorted(values)}): it should not depend on the seed")
    if not baseline:
        return paired({}, {}, metric)
    record = next(iter(baseline.values()))
    return paired(by_seed, {s: record for s in by_seed or {}}, metric)


def side(diff: PairedDifference) -> str | None:
    """Where a run stands against the other of a paired difference: "above", "level" (the
    difference is within the seed noise) or "below"; None with fewer than two common seeds."""
    if diff.exceeds_noise is None:
        return None
    return "level" if not diff.exceeds_noise else "above" if diff.mean > 0 else "below"


def sides_text(sides: dict[str, str | None], words: dict[str, str] | None = None) -> str:
    """'above 2 (a, b); level 1 (c)' from {name: side}, in the order above, level, below,
    sides with no name left out, then the names too few seeds could place."""
    words = {"above": "above", "level": "level within the noise with", "below": "below", **(words or {})}
    parts = [f"{words[s]} {len(names)} ({', '.join(names)})" for s in ("above", "level", "below")
             if (names := [n for n, v in sides.items() if v == s])]
    untested = [n for n, v in sides.items() if v is None]
    if untested:
        parts.append(f"too few seeds (fewer than two) to tell: {', '.join(untested)}")
    return "; ".join(parts)


def sweep_side(by_seed: dict[int, dict], default: dict[int, dict], metric: str = CRITERION) -> str | None:
    """A swept setting against the default: `side` of the paired difference over two or more
    common seeds; with one seed, "level" when it lies within the default's mean ± seed std
    (the manifest's escalation rule), else None (it needs the escalation's seeds to tell)."""
    diff = paired(by_seed, default, metric)
    if diff.n >= 2:
        return side(diff)
    ratio = effect_over_noise(summarise(by_seed, metric), summarise(default, metric))
    return "level" if ratio is not None and abs(ratio) <= 1 else None


def band_verdict(by_seed: dict[int, dict], default: dict[int, dict], a: str, b: str, metric: str = CRITERION,
                 metric_name: str = "R@1", scale: float = 100.0) -> str:
    """One sentence on a setting against the default, as `sweep_side` reads it: `verdict` of
    the paired difference over two or more common seeds; a one-seed setting is placed
    against the default's mean ± seed std, the band of the manifest's escalation rule."""
    diff = paired(by_seed, default, metric)
    value, reference = summarise(by_seed, metric), summarise(default, metric)
    ratio = effect_over_noise(value, reference)
    if value.n == 0:
        return f"{a}: not run yet."
    if diff.n >= 2 or value.n != 1 or ratio is None:
        return verdict(diff, a, b, metric_name, scale)
    size = (f"{a} − {b}'s mean = {(value.mean - reference.mean) * scale:+.1f} {metric_name} points on one seed, "
            f"{ratio:+.1f} of {b}'s seed std")
    if sweep_side(by_seed, default, metric) == "level":  # the band's one definition
        return f"{size}: inside the band, level within the noise as the escalation rule reads it."
    return f"{size}: outside the band, so two more seeds decide."


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of one family of m = len(p_values) tests, which hold
    the chance of any false "beyond the noise" in the family at the level. A None (a test
    not made yet) counts in m and is ranked after every known p, so a known adjusted value
    only falls when the missing ones arrive: a rejection now stays one."""
    m = len(p_values)
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, (p, index) in enumerate(sorted((p, i) for i, p in enumerate(p_values) if p is not None)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def sweep_sides(sweep: list[dict[int, dict]], default: dict[int, dict], metric: str = CRITERION) -> list[tuple[str | None, float | None]]:
    """(side, Holm-adjusted p) of each value of one hyper-parameter's sweep against the
    default, the sweep read as one family (a robustness claim): m values each tested at 5%
    would read one "beyond the noise" by chance with probability up to 1 - 0.95^m. Values with
    two or more seeds are placed by their adjusted paired p; a one-seed value by `sweep_side`'s
    band (level: adjusted p 1; outside: None, its escalation seeds decide)."""
    diffs = [paired(by_seed, default, metric) for by_seed in sweep]
    raw = [d.p if d.n >= 2 else 1.0 if sweep_side(by_seed, default, metric) == "level" else None
           for by_seed, d in zip(sweep, diffs)]
    placed = []
    for diff, p in zip(diffs, holm(raw)):
        if p is None or diff.n < 2:
            placed.append((None if p is None else "level", p))
        else:
            placed.append(("level" if p >= 0.05 else "above" if diff.mean > 0 else "below", p))
    return placed


def claim_status(sides: list[str | None], expected: str = "above") -> str:
    """Whether the comparisons behind one of the paper's claims bear it out: "holds",
    "does not hold" or "unresolved". `sides` places the paper's favoured run against the
    other of each comparison (`side`; None: too few seeds). expected="above": the favoured
    run should be above in every comparison; one below beyond the noise refutes the claim.
    expected="level" (a robustness claim): every comparison should be within the noise."""
    if expected not in ("above", "level"):
        raise ValueError(f"expected must be 'above' or 'level', not {expected!r}")
    decided = [s for s in sides if s is not None]
    if expected == "above":
        if "below" in decided:
            return "does not hold"
        if len(decided) < len(sides) or not sides:
            return "unresolved"
        return "holds" if all(s == "above" for s in sides) else "does not hold"
    if any(s != "level" for s in decided):
        return "does not hold"
    return "holds" if sides and len(decided) == len(sides) else "unresolved"


def run_cost(loaded: dict[str, dict[int, dict]]) -> dict | None:
    """What one training run costs, from the records' own timings (median over runs, with
    the range): wall time, CPU time (of the runs that measured it), training seconds per
    iteration (wall, and CPU with every thread counted: comparable between runs made on one
    thread and on two), seconds per evaluation and the evaluations per run, and the activation
    cache's build time. None without a training record."""
    trained = [r for by_seed in loaded.values() for r in by_seed.values() if r.get("kind", "train") == "train" and r.get("evaluations")]
    if not trained:
        return None

    def spread(values):
        values = sorted(values)
        return {"median": statistics.median(values), "min": values[0], "max": values[-1]}

    caches = [float(r["cache_seconds"]) for r in trained if r.get("cache_seconds")]
    measured = [cpu for r in trained if (cpu := process_seconds(r)) is not None]
    cpu_steps = [sum(e["train_cpu_seconds"] for e in r["evaluations"]) / r["config"]["iterations"]
                 for r in trained if all(e.get("train_cpu_seconds") is not None for e in r["evaluations"])]
    return {
        "runs": len(trained),
        "wall_seconds": spread(float(r["wall_time_seconds"]) for r in trained),
        "cpu_seconds": spread(measured) if measured else None,  # the runs that measured their CPU time
        "cpu_measured": len(measured),
        "seconds_per_iteration": spread(sum(e["train_seconds"] for e in r["evaluations"]) / r["config"]["iterations"] for r in trained),
        "cpu_seconds_per_iteration": spread(cpu_steps) if cpu_steps else None,  # the runs that measured it
        "seconds_per_evaluation": spread(statistics.fmean(e["eval_seconds"] for e in r["evaluations"]) for r in trained),
        "evaluations_per_run": spread(len(r["evaluations"]) for r in trained),
        "cache_seconds": spread(caches) if caches else None,
    }


MINING_SHARES = ("negative_kept", "negative_weight_dropped", "positive_kept", "positive_weight_dropped")


def mining_shares(by_seed: dict[int, dict]) -> dict | None:
    """What MS mining removed during a run (the engine's per-evaluation `mining` entry, from
    `losses.mining_summary`): each share's mean over seeds in the first and in the last
    training window, {"first": {...}, "last": {...}, "seeds": how many}; None when no record
    carries it. A record measured in only some windows (a run resumed across the change that
    added it) is left out, so "seeds" can be fewer than the run's records."""
    trained = [[e for e in r.get("evaluations", []) if e.get("iteration")] for r in (by_seed or {}).values()]
    windows = [[e["mining"] for e in w] for w in trained if w and all("mining" in e for e in w)]
    if not windows:
        return None

    def mean(values):  # None: a window whose batches had no such pairs
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else math.nan

    shares = {which: {key: mean(w[index][key] for w in windows) for key in MINING_SHARES}
              for which, index in (("first", 0), ("last", -1))}
    return shares | {"seeds": len(windows)}


def best_at_start(by_seed: dict[int, dict], metric: str = CRITERION) -> bool:
    """True when every seed's best evaluation is its first one (iteration 0, before any
    step): training only ever lowered the metric."""
    return bool(by_seed) and all(
        max(r["evaluations"], key=lambda e: e["metrics"][metric]) is r["evaluations"][0] and r["evaluations"][0]["iteration"] == 0
        for r in by_seed.values())


def effect_over_noise(value: SeedSummary, reference: SeedSummary) -> float | None:
    """(value - reference) / the reference's seed std: how many seed spreads apart."""
    if value.n == 0 or reference.std in (None, 0):
        return None
    return (value.mean - reference.mean) / reference.std


def short_verdict(diff: PairedDifference, scale: float = 100.0) -> str:
    """'+1.2 (std 0.4, n=3, p=0.03): beyond the noise' — a table cell."""
    if diff.n == 0:
        return "not run"
    if diff.n == 1:
        return f"{diff.mean * scale:+.1f} (one seed)"
    reading = "beyond the noise" if diff.exceeds_noise else "within the noise"
    return f"{diff.mean * scale:+.1f} (std {diff.std * scale:.1f}, n={diff.n}, {p_text(diff.p, 2)}): {reading}"


def group_rows(loaded: dict[str, dict[int, dict]], names, reference: str | None = "multi_similarity",
               metrics=(("recall@1", "R@1"), ("map@r", "MAP@R")), labels: dict | None = None) -> list[dict]:
    """One row per run name: each metric's mean ± std (n) over seeds, and the paired
    difference from `reference` (per common seed) with its verdict; runs and the reference's
    column are named by `labels` where it names them."""
    rows = []
    for name in names:
        by_seed = loaded.get(name, {})
        row = {"run": (labels or {}).get(name, name)}
        for metric, title in metrics:
            row[title] = summarise(by_seed, metric).text()
        if reference is not None:
            row[f"− {(labels or {}).get(reference, reference)}, {metrics[0][1]}"] = "" if name == reference else short_verdict(paired(by_seed, loaded.get(reference, {}), metrics[0][0]))
        rows.append(row)
    return rows


def sweep(loaded: dict[str, dict[int, dict]], points: dict[float, str], metric: str = CRITERION) -> list[tuple[float, SeedSummary]]:
    """[(setting value, summary)] of the runs named in `points` ({value: run name}) that have records."""
    return [(value, summarise(loaded.get(name), metric)) for value, name in sorted(points.items()) if loaded.get(name)]


def process_seconds(record: dict) -> float | None:
    """A run's CPU time (training and evaluations, every thread of its process), from the
    engine's per-window `train_cpu_seconds` and `eval_cpu_seconds`; None when a window lacks
    them (records made before the engine measured it, or a run resumed across that change)."""
    windows = record.get("evaluations") or []
    if not windows or not all("train_cpu_seconds" in e and "eval_cpu_seconds" in e for e in windows):
        return None
    return sum(float(e["train_cpu_seconds"]) + float(e["eval_cpu_seconds"]) for e in windows)


def cpu_seconds(loaded: dict[str, dict[int, dict]]) -> dict:
    """What the records cost on one thread each: the runs' CPU time where the record measured
    it (`process_seconds`), else their wall time, which also counts any wait for a core the
    run shared; and the activation caches they share, each counted once (a cache is
    identified by the settings that build it; its build time is wall time). "measured" counts
    the records read by their CPU time, "records" all of them."""
    from .profiles import cache_settings

    runs, caches, measured, count = 0.0, {}, 0, 0
    for by_seed in loaded.values():
        for record in by_seed.values():
            count += 1
            cpu = process_seconds(record)
            measured += cpu is not None
            runs += cpu if cpu is not None else float(record.get("wall_time_seconds", 0.0))
            if record.get("cache_seconds"):
                caches[cache_settings(record["config"])] = float(record["cache_seconds"])
    return {"runs": runs, "caches": sum(caches.values()), "cache_count": len(caches), "total": runs + sum(caches.values()),
            "records": count, "measured": measured}


def mean_curve(by_seed: dict[int, dict], metric: str = CRITERION):
    """(iterations, mean, std) of a run's evaluations over its seeds, at the iterations
    every seed evaluated (std is 0 with a single seed)."""
    import numpy as np

    curves = [{e["iteration"]: e["metrics"][metric] for e in r["evaluations"]} for r in (by_seed or {}).values()]
    if not curves:
        return [], np.array([]), np.array([])
    iterations = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[i] for i in iterations] for c in curves])
    return iterations, values.mean(axis=0), values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(iterations))


def best_minus_final(by_seed: dict[int, dict], metric: str = CRITERION) -> SeedSummary:
    """How far each seed's final evaluation is below its best one (0: no decay at the end)."""
    gaps = {s: {"final": {metric: max(e["metrics"][metric] for e in r["evaluations"]) - r["final"][metric]}} for s, r in (by_seed or {}).items()}
    return summarise(gaps, metric)


def setup_label(config: dict) -> str:
    """The backbone and input of a record, e.g. 'efficientnet_lite0, 224 px, avg+max pooling,
    blocks 8- fine-tuned' — from the record's own settings, not from its profile's name."""
    if config.get("data") == "synthetic":
        return f"{config['backbone']}, synthetic data"
    parts = [config["backbone"], f"{config['image_size']} px", f"{config['pooling']} pooling"]
    if config.get("cache_views"):
        parts.append(f"blocks {config['cache_from_block']}- fine-tuned on {config['cache_views']} cached views")
    return ", ".join(parts)
