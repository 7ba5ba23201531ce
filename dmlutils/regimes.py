"""The book's two CPU regimes side by side, and the paper's claims judged under each.

`cpu` fine-tunes the last blocks of EfficientNet-Lite0 on cached activations (the cheap
regime of the wide ablation matrix); `cpu_full` fine-tunes every block on images decoded
once and re-augmented at every step, the paper's manner. At the cpu profile, chapters 7
and 8 read both regimes' records and give, for each claim, a verdict under each regime
with the n and p of the comparisons behind it:

    loaded = load_regimes("cpu", "results")          # {regime: {run: {seed: record}}}
    claims_rows(loaded, main_claims(), "recall@1")   # [{"claim": ..., "cpu": ..., "cpu_full": ...}]

A loss whose setting a study chose on held-out training classes (chapter 6,
`dmlutils.studies`) is judged once more with that setting: `with_chosen_settings` adds its
test records under `chosen_name(loss)`, and `chosen_claims` compares MS with them.

A comparison of runs with two or more common seeds is a paired t-test (`report.paired`);
one with a single seed on one side is placed against the other's mean ± seed std, the
band of the manifest's escalation rule (`report.sweep_side`). A claim holds, does not
hold, or is unresolved as `report.claim_status` reads its comparisons.

The whole-backbone regime has no baseline run of its own: the untrained baseline is the
pretrained backbone's pooled features, which depend only on the data, the backbone and the
input, so it shares the cpu profile's record after checking that those settings agree
(`shared_baseline`).
"""
from __future__ import annotations

from dataclasses import dataclass

# The regimes a chapter at a profile shows side by side (other profiles show their own).
REGIMES = {"cpu": ("cpu", "cpu_full")}
REGIME_TEXT = {
    "smoke": "smoke (a tiny CNN on synthetic images)",
    "cpu": "last blocks on cached activations (cpu)",
    "cpu_full": "whole backbone on decoded images (cpu_full)",
    "paper": "BN-Inception, the paper's setting (paper)",
}
# Where a regime's untrained baseline comes from, and the settings that decide that record.
SHARED_BASELINE = {"cpu_full": "cpu"}
BASELINE_SETTINGS = ("data", "max_classes", "backbone", "pretrained", "weights_path", "image_size", "resize_size",
                     "transform", "pooling", "amp", "eval_ks")
MS = "multi_similarity"
CHOSEN = "chosen:"  # a run name's prefix: the loss with the setting its study chose on held-out classes


def regimes(profile: str) -> tuple[str, ...]:
    return REGIMES.get(profile, (profile,))


def baseline_differences(regime: str, source: str) -> dict[str, tuple]:
    """{setting: (source's value, regime's value)} of the settings that decide the baseline's
    record and differ between the two profiles; {} when the record can be shared."""
    from .profiles import make_config

    mine, theirs = make_config(regime), make_config(source)
    return {key: (theirs.get(key), mine.get(key)) for key in BASELINE_SETTINGS if theirs.get(key) != mine.get(key)}


def shared_baseline(regime: str, results="results") -> dict[int, dict]:
    """The baseline records a regime without its own reads (`SHARED_BASELINE`), after
    checking that every setting that decides them agrees; raises naming the settings if not."""
    from . import manifest

    source = SHARED_BASELINE[regime]
    differ = baseline_differences(regime, source)
    if differ:
        raise ValueError(f"the {regime} profile cannot share the {source} profile's baseline: "
                         + ", ".join(f"{k} is {a!r} there and {b!r} here" for k, (a, b) in differ.items())
                         + f"; give {regime} a baseline run of its own in dmlutils/manifest.py")
    return manifest.load(source, results).get("baseline", {})


def load_regimes(profile: str, results="results") -> dict[str, dict[str, dict[int, dict]]]:
    """{regime: {run name: {seed: record}}} for every regime shown at `profile`, each regime
    with its baseline (its own, or the shared one)."""
    from . import manifest

    loaded = {}
    for regime in regimes(profile):
        runs = dict(manifest.load(regime, results))
        if regime in SHARED_BASELINE and "baseline" not in runs:
            baseline = shared_baseline(regime, results)
            if baseline:
                runs["baseline"] = baseline
        loaded[regime] = runs
    return loaded


def chosen_name(loss: str) -> str:
    return f"{CHOSEN}{loss}"


def chosen_settings(regime: str, results="results") -> dict[str, tuple[str, dict[int, dict]]]:
    """{loss: (its chosen setting as a reader writes it, {seed: the choice's test record})}
    of every study at `regime` that has chosen and has test records (a choice of the
    paper's setting reads its loss's own records)."""
    from .records import load_study
    from .studies import VALIDATION_CLASSES, candidate_text, study, studied_losses

    if regime not in VALIDATION_CLASSES:
        return {}
    found = {}
    for loss in studied_losses(regime):
        loaded = load_study(regime, loss, results, candidates=study(loss))
        if loaded["selection"] and loaded["tuned"]:
            found[loss] = (candidate_text(loss, loaded["selection"]["chosen"]), loaded["tuned"])
    return found


def with_chosen_settings(loaded: dict[str, dict[str, dict[int, dict]]], results="results") -> dict[str, dict[str, dict[int, dict]]]:
    """`loaded` (`load_regimes`) with each regime's chosen settings' test records added as
    runs named `chosen_name(loss)`, for `chosen_claims`. Kept apart from `load_regimes`: a
    choice of the paper's setting is the loss's own records, which a count of a regime's
    runs must not see twice."""
    return {regime: {**runs, **{chosen_name(loss): tuned for loss, (_, tuned) in chosen_settings(regime, results).items()}}
            for regime, runs in loaded.items()}


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as comparisons: in each (favoured, other) pair the paper
    says the favoured run is above (expected "above") or level with (expected "level") the other."""

    text: str
    pairs: tuple[tuple[str, str], ...]
    expected: str = "above"


def main_claims() -> list[Claim]:
    """MS above each other loss of the registry (chapter 7)."""
    from .losses import LOSSES
    from .names import loss_name

    return [Claim(f"Multi-Similarity above {loss_name(loss)}", ((MS, loss),)) for loss in sorted(LOSSES) if loss != MS]


def chosen_claims() -> list[Claim]:
    """MS (its paper's setting) above each loss with a setting study, with the setting the
    study chose on held-out classes (chapter 7)."""
    from .names import loss_name
    from .studies import STUDIES

    return [Claim(f"Multi-Similarity above {loss_name(loss)}, its setting chosen on validation classes", ((MS, chosen_name(loss)),))
            for loss in sorted(STUDIES)]


def ablation_claims() -> list[Claim]:
    """The paper's mining / weighting claims (chapter 8)."""
    return [
        Claim("MS mining helps (on its own)", (("ms_no_weighting", "ms_no_mining_no_weighting"),)),
        Claim("MS weighting helps (on its own)", (("ms_no_mining", "ms_no_mining_no_weighting"),)),
        Claim("mining and weighting help most together", ((MS, "ms_no_mining"), (MS, "ms_no_weighting"))),
    ]


def comparison_side(a: dict[int, dict], b: dict[int, dict], metric: str = "recall@1") -> str | None:
    """Where `a` stands against `b`: a paired test over two or more common seeds; with one
    seed on one side and several on the other, the one seed against the other's band."""
    from .report import paired, side, summarise, sweep_side

    diff = paired(a, b, metric)
    if diff.n >= 2:
        return side(diff)
    n_a, n_b = summarise(a, metric).n, summarise(b, metric).n
    if n_a == 1 and n_b >= 2:
        return sweep_side(a, b, metric)  # "level" inside b's band, else None: more seeds decide
    if n_b == 1 and n_a >= 2:
        return sweep_side(b, a, metric)
    return None


def comparison_text(a: dict[int, dict], b: dict[int, dict], metric: str = "recall@1", scale: float = 100.0) -> str:
    """'+2.3 (n=3, p=0.04)', '-0.4 (one seed, inside the seed std)', or 'not run'."""
    from .report import p_text, paired, summarise

    diff = paired(a, b, metric)
    if diff.n >= 2:
        return f"{diff.mean * scale:+.1f} (n={diff.n}, {p_text(diff.p, 2)})"
    if not a or not b:
        return "not run"
    mean = (summarise(a, metric).mean - summarise(b, metric).mean) * scale
    if comparison_side(a, b, metric) == "level":
        return f"{mean:+.1f} (one seed, inside the other's seed std)"
    return f"{mean:+.1f} (one seed: two more decide)" if max(summarise(a, metric).n, summarise(b, metric).n) > 1 else f"{mean:+.1f} (one seed)"


def claim_verdict(runs: dict[str, dict[int, dict]], claim: Claim, metric: str = "recall@1") -> tuple[str, str]:
    """(status, its comparisons as text) of one claim on one regime's records."""
    from .report import claim_status

    from .manifest import label

    sides = [comparison_side(runs.get(a, {}), runs.get(b, {}), metric) for a, b in claim.pairs]
    texts = [comparison_text(runs.get(a, {}), runs.get(b, {}), metric) for a, b in claim.pairs]
    if all(t == "not run" for t in texts):
        texts = ["not run"]
    elif len(claim.pairs) > 1:  # which comparison is which
        texts = [f"{label(a)} − {label(b)} {t}" for (a, b), t in zip(claim.pairs, texts)]
    return claim_status(sides, claim.expected), "; ".join(texts)


def claims_rows(loaded: dict[str, dict[str, dict[int, dict]]], claims: list[Claim], metric: str = "recall@1",
                planned=None) -> list[dict]:
    """One row per claim, one column per regime: 'holds: +2.3 (n=3, p=0.04)'. `planned`
    (regime, run name) -> bool says whether a regime's plan has a run at all; a claim that
    needs a run outside the plan reads 'not in this regime's plan'."""
    rows = []
    for claim in claims:
        row = {"claim": claim.text}
        for regime, runs in loaded.items():
            if planned and not all(planned(regime, name) for pair in claim.pairs for name in pair):
                row[REGIME_TEXT.get(regime, regime)] = "not in this regime's plan"
                continue
            status, text = claim_verdict(runs, claim, metric)
            row[REGIME_TEXT.get(regime, regime)] = f"{status}: {text}"
        rows.append(row)
    return rows


def planned(regime: str, name: str) -> bool:
    """Whether the run manifest has run `name` at `regime` (the baseline: its own or a shared
    one; a chosen setting: whether the loss has a study there)."""
    from . import manifest
    from .studies import VALIDATION_CLASSES, studied_losses

    if name.startswith(CHOSEN):
        return regime in VALIDATION_CLASSES and name[len(CHOSEN):] in studied_losses(regime)
    entry = manifest.run(name)
    return regime in entry.profiles or (name == "baseline" and regime in SHARED_BASELINE)


def cost_rows(loaded: dict[str, dict[str, dict[int, dict]]]) -> list[dict]:
    """What one training run of each regime costs, from its test-split records (median over
    runs: wall minutes with the threads it ran on, seconds per training step, wall and CPU
    with every thread counted, and per evaluation) and what all of them took in CPU hours; a regime without records gets the
    runner's estimate, marked as one."""
    from .profiles import make_config
    from .report import cpu_seconds, run_cost
    from .runner import Job, estimate_seconds

    rows = []
    for regime, runs in loaded.items():
        trained = {name: by_seed for name, by_seed in runs.items() if name != "baseline"}
        cost = run_cost(trained)
        config = make_config(regime)
        row = {"regime": REGIME_TEXT.get(regime, regime), "iterations": config["iterations"]}
        if cost is None:
            threads = 2 if config.get("decoded_images") else 1  # how the runner runs it (chapter 6's benchmark)
            minutes = estimate_seconds(Job(regime, config, None, None), threads=threads) / 60
            rows.append({**row, "training records": 0, "minutes per run": f"about {minutes:.0f} (estimate, {threads} threads)",
                         "s per step": "", "CPU s per step": "", "s per evaluation": "", "CPU hours, all records": ""})
            continue
        rows.append({**row, "training records": cost["runs"], "minutes per run": _minutes_by_threads(trained),
                     "s per step": f"{cost['seconds_per_iteration']['median']:.2f}",
                     "CPU s per step": f"{cost['cpu_seconds_per_iteration']['median']:.2f}" if cost["cpu_seconds_per_iteration"] else "not measured",
                     "s per evaluation": f"{cost['seconds_per_evaluation']['median']:.0f}",
                     "CPU hours, all records": f"{cpu_seconds(trained)['total'] / 3600:.1f}"})
    return rows


def _minutes_by_threads(trained: dict[str, dict[int, dict]]) -> str:
    """'51 on 2 threads (median of 1); 88 on 1 thread (median of 2)': a run's wall time
    depends on the threads it had (and on a run beside it), so each count gets its own median."""
    from .records import threads_of
    from .report import run_cost

    counts = sorted({threads_of(r) for by_seed in trained.values() for r in by_seed.values()}, key=lambda t: (t is None, -(t or 0)))
    parts = []
    for count in counts:
        subset = {name: {s: r for s, r in by_seed.items() if threads_of(r) == count} for name, by_seed in trained.items()}
        cost = run_cost(subset)
        if cost:
            where = f"on {count} thread{'' if count == 1 else 's'}" if count else "threads not recorded"
            parts.append(f"{cost['wall_seconds']['median'] / 60:.0f} {where} (median of {cost['runs']})")
    return "; ".join(parts)
