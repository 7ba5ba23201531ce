"""Speed of the cpu profile's real code path: training steps, evaluation, the activation cache.

The cpu profile (dmlutils/profiles.py) caches the activations entering block 11 of
EfficientNet-Lite0 for 5 augmented views of every CUB training image (and one view of
every test image), then trains blocks 11-15 + the 512-d head on them. Measured here,
each through the engine's own functions (build_model, parameter_groups, its feeder of
cached activations, embed, test_metrics, activation_cache), one job per module:

1. training iterations/s (engine_cached_step.py): one P x K = 16 x 5 batch of cached
   activations gathered by the engine's feeder + forward from block 11 + loss + backward
   + Adam step, for each loss asked for. The activations are synthetic (random float16 of
   the real shape, read from the model by running `forward_until_block` on one image of
   the profile's size), so no cache file is needed; only the loss's pair mining could
   depend on their values, and it is a small share of a step. Also there: the MS step
   before and after the recipe study (layouts, torch.compile, FLOPs, share of the matmul
   peak), and the step alone vs in two processes at once.
2. evaluation (engine_evaluation.py): embedding the 5,924 test images' cached activations
   + Recall@K / MAP@R.
3. cache build (engine_cache.py): `activation_cache` itself (decode + augment in a
   DataLoader worker, the frozen BN-folded prefix, saving to a temporary $DML_CACHE) on an
   evenly spread subset of the real CUB images; the measured images/s gives the projected
   time for the full cache (5 views x 5,864 training + 5,924 test = 35,244 images). Skipped,
   with a note, when CUB is not found.
4. whole-backbone steps (engine_backbone.py): the online step quoted beside the recipes.
   The cpu_full profile's step, fed by the engine's decoded-images source, with its
   overhead ratio, GFLOP/s and bf16 comparison, has its own job: bench_whole_backbone.py.

Also quoted, for comparison: the cache time and wall time stored in the cpu run records
under results/cpu/ (made by `python -m dmlutils train`). Shared helpers: common.py
(timing, FLOPs, matmul peak, writing) and engine_steps.py (the engine's step, set up).

    python benchmarks/bench_engine.py --out /tmp/engine.json [--small] [--losses all]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, write_json_atomically  # noqa: E402
from engine_cache import from_run_records, markdown_row, markdown_run_records, time_cache_build  # noqa: E402
from engine_cached_step import (  # noqa: E402
    markdown_recipes,
    markdown_side_by_side,
    markdown_training,
    recipe_comparison,
    side_by_side,
    synthetic_cache,
    time_training_steps,
)
from engine_evaluation import markdown_rows, time_evaluation  # noqa: E402
from engine_steps import activation_shape  # noqa: E402

import torch  # noqa: E402

from dmlutils.engine import build_model  # noqa: E402
from dmlutils.losses import LOSSES  # noqa: E402
from dmlutils.profiles import make_config  # noqa: E402

CUB_TRAIN_IMAGES, CUB_TEST_IMAGES = 5_864, 5_924


def run(losses, steps: int, other_steps: int, warmup: int, small: bool, root=None, records_dir=REPO / "results" / "cpu") -> dict:
    config = make_config("cpu", "multi_similarity")
    torch.manual_seed(config["seed"])
    model = build_model(config)
    shape = activation_shape(model, config)
    if small:  # the real shape and code path, tiny amounts
        classes, per_class, num_test, cache_train, cache_test = 16, 6, 64, 2, 2
    else:
        classes, per_class, num_test, cache_train, cache_test = 100, 12, CUB_TEST_IMAGES, 96, 96
    cache = synthetic_cache(shape, classes, per_class, config["cache_views"])
    training = {}
    for name in losses:
        count = steps if name == "multi_similarity" else other_steps
        print(f"  training steps: {name} ({count} steps)", file=sys.stderr)
        training[name] = time_training_steps(model, name, cache, count, warmup)
    print(f"  evaluation: {num_test} test activations", file=sys.stderr)
    evaluation = time_evaluation(model, config, shape, num_test, 100)
    print("  cache build", file=sys.stderr)
    cache_build = time_cache_build(model, config, root, cache_train, cache_test)
    print("  step variants, FLOPs and matmul throughput at each recipe", file=sys.stderr)
    recipes = recipe_comparison(steps=2 if small else 6, compile_steps=1 if small else 3, warmup=0 if small else 1, eval_images=16 if small else 256)
    print("  the step alone, then two processes side by side", file=sys.stderr)
    twins = side_by_side(steps=2 if small else 10, warmup=0 if small else 2)
    report = {
        "benchmark": "engine: the cpu profile's training step, evaluation and activation cache",
        "recipes": recipes,
        "side_by_side": twins,
        "small": small,
        "profile": "cpu",
        "cache_from_block": config["cache_from_block"],
        "activation_shape": list(shape),
        "activation_dtype": "float16 (cast to float32 per batch, as in training)",
        "torch_threads": torch.get_num_threads(),
        "training": training,
        "evaluation": evaluation,
        "cache_build": cache_build,
        "from_run_records": from_run_records(Path(records_dir)),
    }
    ms = training.get("multi_similarity")
    if ms and "projected_full_cache_seconds" in cache_build:
        report["projected_cpu_run_seconds"] = {
            "cache (once, shared by all runs)": cache_build["projected_full_cache_seconds"],
            "training (multi_similarity)": ms["projected_training_seconds"],
            "evaluations": evaluation["projected_evaluation_seconds_per_run"],
        }
    return report


def markdown(report: dict) -> str:
    lines = markdown_training(report)
    lines += ["", "| stage | images | seconds | images/s | projected |", "|---|---:|---:|---:|---|"]
    lines += markdown_rows(report["evaluation"])
    lines.append(markdown_row(report["cache_build"]))
    projected = report.get("projected_cpu_run_seconds")
    if projected:
        lines += ["", "Projected cpu-profile run from these rates: "
                  + "; ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in projected.items()) + "."]
    if report.get("recipes"):
        lines += markdown_recipes(report["recipes"])
    if report.get("side_by_side"):
        lines += markdown_side_by_side(report["side_by_side"])
    if report.get("from_run_records"):
        lines += markdown_run_records(report["from_run_records"])
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
    parser.add_argument("--small", action="store_true", help="tiny amounts: checks the code runs (seconds)")
    parser.add_argument("--losses", default="multi_similarity",
                        help="comma-separated losses to time the step for, or 'all' (default: multi_similarity)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps for multi_similarity")
    parser.add_argument("--other-steps", type=int, default=6, help="timed steps for the other losses")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--root", default=None, help="data root holding CUB_200_2011/ (default: $DML_DATA, else ./data)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    losses = sorted(LOSSES) if args.losses == "all" else [n.strip() for n in args.losses.split(",") if n.strip()]
    unknown = set(losses) - set(LOSSES)
    if unknown or not losses:
        parser.error(f"--losses must name some of {sorted(LOSSES)} or 'all', got {args.losses!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.small:
        args.steps, args.other_steps, args.warmup = 1, 1, 0
    report = run(losses, args.steps, args.other_steps, args.warmup, args.small, args.root)
    print(markdown(report))
    if args.out:
        write_json_atomically(args.out, report)
    return report


if __name__ == "__main__":
    main()
