"""Speed of the cpu profile's real code path: training steps, evaluation, the activation cache.

The cpu profile (dmlutils/profiles.py) caches the activations entering block 11 of
EfficientNet-Lite0 for 5 augmented views of every CUB training image (and one view of
every test image), then trains blocks 11-15 + the 512-d head on them. Measured here,
each through the engine's own functions (build_model, trainable_parameters, ActivationSource,
FromCachedBlock, embed, test_metrics, activation_cache):

1. training iterations/s: one P x K = 16 x 5 batch of cached activations gathered by
   `ActivationSource` + forward from block 11 + loss + backward + Adam step, for each loss asked
   for. The activations are synthetic (random float16 of the real shape, read from the
   model by running `forward_until_block` on one image of the profile's size), so no
   cache file is needed; only the loss's pair mining could depend on their values, and
   it is a small share of a step.
2. evaluation: embedding the 5,924 test images' cached activations + Recall@K / MAP@R.
3. cache build: `activation_cache` itself (decode + augment in a DataLoader worker,
   the frozen BN-folded prefix, saving to a temporary $DML_CACHE) on an evenly spread
   subset of the real CUB images; the measured images/s gives the projected time for
   the full cache (5 views x 5,864 training + 5,924 test = 35,244 images). Skipped, with
   a note, when CUB is not found.

Also quoted, for comparison: the cache time and wall time stored in the cpu run records
under results/cpu/ (made by `python -m dmlutils train`).

    python benchmarks/bench_engine.py --out /tmp/engine.json [--small] [--losses all]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, write_json_atomically  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dmlutils import distributed  # noqa: E402
from dmlutils.cache import activation_cache  # noqa: E402
from dmlutils.engine import (  # noqa: E402
    ActivationSource,
    FromCachedBlock,
    build_datasets,
    build_loss,
    build_model,
    embed,
    test_metrics,
    trainable_parameters,
)
from dmlutils.losses import LOSSES  # noqa: E402
from dmlutils.profiles import make_config  # noqa: E402
from dmlutils.samplers import PKSampler  # noqa: E402
from dmlutils.xbm import with_cross_batch_memory  # noqa: E402

CUB_TRAIN_IMAGES, CUB_TEST_IMAGES = 5_864, 5_924


def activation_shape(model, config) -> tuple[int, ...]:
    """(C, H, W) of the activation entering the cached block, for the profile's crop size."""
    size = config["image_size"]
    with torch.no_grad():
        return tuple(model.backbone.eval().forward_until_block(torch.zeros(1, 3, size, size), config["cache_from_block"]).shape[1:])


def synthetic_cache(shape, num_classes: int, per_class: int, views: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    return {
        "train": torch.randn(n, views, *shape, generator=g).to(torch.float16),
        "train_labels": torch.arange(num_classes).repeat_interleave(per_class),
    }


def time_training_steps(base_model, loss_name: str, cache: dict, steps: int, warmup: int) -> dict:
    """Seconds per training step on cached activations, as `engine.loop` runs it."""
    config = make_config("cpu", loss_name)
    torch.manual_seed(config["seed"])
    model = copy.deepcopy(base_model)  # each loss starts from the same pretrained weights
    labels = cache["train_labels"].numpy()
    base_loss = build_loss(config, int(labels.max()) + 1, model.embedding_dim)
    loss_fn = distributed.GlobalBatchLoss(with_cross_batch_memory(base_loss, config["xbm_size"]))
    backbone_params, head_params = trainable_parameters(model, config)
    # The same parameter groups and optimiser as engine.loop builds.
    groups = [
        {"params": backbone_params, "lr": config["lr"]},
        {"params": head_params + list(loss_fn.parameters()), "lr": config["head_lr"]},
    ]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], weight_decay=config["weight_decay"])
    sampler = PKSampler(labels, p=config["p"], k=config["k"], seed=config["seed"])
    feeder = ActivationSource(config, cache, torch.device("cpu"))
    module = FromCachedBlock(model, config["cache_from_block"])
    module.train()
    loss_fn.train()
    times = []
    last = time.perf_counter()
    # Timed from the end of one step to the end of the next: includes the feeder's gather.
    for x, y in feeder.batches(sampler, 0, warmup + steps):
        loss = loss_fn(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())
        now = time.perf_counter()
        times.append(now - last)
        last = now
    times = times[warmup:]
    median = statistics.median(times)
    return {
        "steps": len(times),
        "batch": config["p"] * config["k"],
        "seconds_per_step_median": median,
        "seconds_per_step_min": min(times),
        "iterations_per_s": 1.0 / median,
        "projected_training_seconds": config["iterations"] * median,
        "profile_iterations": config["iterations"],
    }


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """This CPU's fp32 matrix-multiply throughput at the current thread count (GFLOP/s):
    the ceiling a convolution network's step can approach."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def step_flops(config: dict, base_model, shape) -> float:
    """Floating-point operations of one training step: 3 x the forward pass of the trainable
    blocks and head on a P x K batch (backward = input and weight gradients, about 2 x the
    forward), the forward counted by torch's FlopCounterMode. Its backward count is not
    used: for depthwise (grouped) convolutions it counts as if they were dense (measured
    here: 65x too many for a 64-channel 3x3 depthwise convolution)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(base_model).eval()
    x = torch.randn(config["p"] * config["k"], *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_from_block(x, config["cache_from_block"])
    return 3.0 * float(counter.get_total_flops())


def time_step_variants(base_model, config: dict, shape, steps: int, warmup: int, compile_steps: int,
                       variants=("channels_last", "contiguous", "torch.compile")) -> dict:
    """The MS training step as the engine runs it (channels-last) against what PyTorch
    offers around it: the earlier contiguous layout, and torch.compile of the trainable tail
    (its compile time counted separately; it pays only if it is won back within a run)."""
    x = torch.randn(config["p"] * config["k"], *shape)
    y = torch.arange(config["p"]).repeat_interleave(config["k"])
    results = {}
    for variant in variants:
        model = copy.deepcopy(base_model)
        if variant != "contiguous":
            model = model.to(memory_format=torch.channels_last)
        backbone_params, head_params = trainable_parameters(model, config)
        optimizer = torch.optim.Adam(backbone_params + head_params, lr=config["lr"])
        loss_fn = build_loss(config, 100, model.embedding_dim)
        module = FromCachedBlock(model, config["cache_from_block"]).train()
        inputs = x.contiguous(memory_format=torch.channels_last) if variant != "contiguous" else x.contiguous()
        if variant == "torch.compile":
            start = time.perf_counter()
            module = torch.compile(module)
            loss_fn(module(inputs), y).backward()  # compiles forward and backward
            compile_seconds = time.perf_counter() - start
        count = compile_steps if variant == "torch.compile" else steps
        times = []
        for i in range(warmup + count):
            start = time.perf_counter()
            loss = loss_fn(module(inputs), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        results[variant] = {"steps": count, "seconds_per_step_median": statistics.median(times[warmup:])}
        if variant == "torch.compile":
            results[variant]["compile_seconds"] = compile_seconds
    return results


def time_evaluation_modes(model, config, shape, images: int) -> dict:
    """Embedding cached activations under no_grad (the engine's `embed`) and inference_mode."""
    activations = torch.randn(images, *shape).to(torch.float16)
    out = {}
    for mode, context in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        model.eval()
        start = time.perf_counter()
        with context():
            for i in range(0, images, config["eval_batch_size"]):
                batch = activations[i : i + config["eval_batch_size"]].float().contiguous(memory_format=torch.channels_last)
                model.forward_from_block(batch, config["cache_from_block"])
        out[mode] = {"images": images, "ms_per_image": 1000 * (time.perf_counter() - start) / images}
    return out


def time_evaluation(model, config, shape, num_test: int, num_classes: int) -> dict:
    """Embedding `num_test` cached test activations + the test metrics, as at each evaluation."""
    g = torch.Generator().manual_seed(1)
    activations = torch.randn(num_test, *shape, generator=g).to(torch.float16)
    labels = np.arange(num_test) % num_classes
    start = time.perf_counter()
    embeddings = embed(model, activations, config, torch.device("cpu"), config["cache_from_block"])
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    test_metrics(embeddings, labels, config["eval_ks"])
    metrics_seconds = time.perf_counter() - start
    evaluations = config["iterations"] // config["eval_every"] + 1
    return {
        "test_images": num_test,
        "embed_seconds": embed_seconds,
        "metrics_seconds": metrics_seconds,
        "seconds": embed_seconds + metrics_seconds,
        "evaluations_per_run": evaluations,
        "projected_evaluation_seconds_per_run": evaluations * (embed_seconds + metrics_seconds),
    }


class _LabelledSubset(torch.utils.data.Subset):
    """A Subset that keeps the `labels` and `root` attributes activation_cache reads."""

    def __init__(self, dataset, indices):
        super().__init__(dataset, indices)
        self.labels = [dataset.labels[i] for i in indices]
        self.root = getattr(dataset, "root", "")


def time_cache_build(model, config, root, num_train: int, num_test: int) -> dict:
    """`activation_cache` on a subset of CUB into a temporary cache folder."""
    from dmlutils.data import cub_found

    if not cub_found(root):
        return {"skipped": f"CUB-200-2011 not found under {root or os.environ.get('DML_DATA', './data')} (set DML_DATA)"}
    train, test = build_datasets(config, root)
    subsets = []
    for dataset, count in ((train, num_train), (test, num_test)):
        indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int).tolist()
        for i in indices:  # warm the page cache: measure decoding and the network, not the disk
            Path(dataset.paths[i]).read_bytes()
        subsets.append(_LabelledSubset(dataset, indices))
    views = config["cache_views"]
    images = views * len(subsets[0]) + len(subsets[1])
    previous = os.environ.get("DML_CACHE")
    with tempfile.TemporaryDirectory(prefix="bench_engine_cache_") as tmp:
        os.environ["DML_CACHE"] = tmp
        try:
            start = time.perf_counter()
            cache = activation_cache(config, model, subsets[0], subsets[1], progress=False)
            seconds = time.perf_counter() - start
        finally:
            if previous is None:
                os.environ.pop("DML_CACHE", None)
            else:
                os.environ["DML_CACHE"] = previous
    full_images = views * len(train) + len(test)
    rate = images / seconds
    return {
        "train_images": len(subsets[0]),
        "test_images": len(subsets[1]),
        "views": views,
        "images": images,
        "seconds": seconds,
        "seconds_without_saving": cache["seconds"],
        "images_per_s": rate,
        "full_cache_images": full_images,
        "full_cache_bytes": full_images * int(np.prod(cache["test"].shape[1:])) * 2,
        "projected_full_cache_seconds": full_images / rate,
        "loader_workers": max(1, config["num_workers"]),
    }


def from_run_records(records_dir: Path) -> dict | None:
    """Cache and wall times that `python -m dmlutils train` stored in the cpu records."""
    cache, per_iteration = [], []
    threads = set()
    for path in sorted(records_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("kind") != "train":
            continue
        if record.get("cache_seconds"):
            cache.append(record["cache_seconds"])
        iterations = record.get("config", {}).get("iterations")
        if iterations and record.get("wall_time_seconds"):
            per_iteration.append(record["wall_time_seconds"] / iterations)
        threads.add(record.get("environment", {}).get("cpu_threads"))
    if not per_iteration:
        return None
    return {
        "records": len(per_iteration),
        "records_dir": str(records_dir.relative_to(REPO) if records_dir.is_relative_to(REPO) else records_dir),
        "cache_seconds_median": statistics.median(cache) if cache else None,
        "wall_seconds_per_iteration_median": statistics.median(per_iteration),
        "wall_seconds_per_iteration_range": [min(per_iteration), max(per_iteration)],
        "threads": sorted(t for t in threads if t is not None),
        "note": "wall time of the whole run (training + evaluations) / iterations, from the run records",
    }


def recipe_comparison(steps: int, compile_steps: int, warmup: int, eval_images: int) -> dict:
    """The MS step before the recipe study (cpu profile version 1, `dmlutils.recipe.BASE`)
    and at the current cpu profile: its variants, FLOPs, and the share of this CPU's matmul
    throughput it reaches, at 1 thread (and the engine's variant at 2)."""
    from dmlutils.recipe import BASE

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    peak = {"1": matmul_gflops()}
    torch.set_num_threads(2)
    peak["2"] = matmul_gflops()
    torch.set_num_threads(1)
    out = {"matmul_gflops": peak, "recipes": {}}
    for label, overrides in (("before: cpu profile version 1", BASE), ("now: cpu profile", {})):
        config = make_config("cpu", "multi_similarity", overrides)
        torch.manual_seed(0)
        model = build_model(config)
        shape = activation_shape(model, config)
        if config.get("feature_crop"):
            shape = (shape[0], config["feature_crop"], config["feature_crop"])
        variants = time_step_variants(model, config, shape, steps, warmup, compile_steps)
        torch.set_num_threads(2)
        two = time_step_variants(model, config, shape, steps, warmup, 0, ("channels_last",))["channels_last"]
        torch.set_num_threads(1)
        flops = step_flops(config, model, shape)
        best = variants["channels_last"]["seconds_per_step_median"]
        out["recipes"][label] = {
            "settings": {k: config[k] for k in ("image_size", "pooling", "cache_from_block", "feature_crop", "iterations", "lr_schedule")},
            "trained_map_shape": list(shape),
            "step_variants_1_thread": variants,
            "channels_last_2_threads": two,
            "step_gflop": flops / 1e9,
            "achieved_gflops_1_thread": flops / 1e9 / best,
            "share_of_matmul_peak_1_thread": flops / 1e9 / best / peak["1"],
            "evaluation_modes": time_evaluation_modes(model, config, shape, eval_images),
        }
    out["online_whole_backbone"] = time_online_step(steps=max(1, steps // 2), warmup=warmup, size=64 if eval_images < 64 else 224)
    torch.set_num_threads(threads)
    return out


def _profile_step_seconds(steps: int, warmup: int, start=None) -> float:
    """Median seconds of the current cpu profile's MS step (channels-last, 1 thread), after
    waiting at `start` (a barrier shared with a twin process) if given."""
    torch.set_num_threads(1)
    config = make_config("cpu", "multi_similarity")
    torch.manual_seed(0)
    model = build_model(config)
    shape = activation_shape(model, config)
    if config.get("feature_crop"):
        shape = (shape[0], config["feature_crop"], config["feature_crop"])
    if start is not None:
        start.wait()
    return time_step_variants(model, config, shape, steps, warmup, 0, ("channels_last",))["channels_last"]["seconds_per_step_median"]


def _twin(steps: int, warmup: int, start, results) -> None:
    results.put(_profile_step_seconds(steps, warmup, start))


def side_by_side(steps: int, warmup: int) -> dict:
    """The cpu profile's step alone (one process, one thread), then two processes stepping
    at once, one thread each, as `make results-cpu` runs them: the slowdown the runner's
    estimates use (`dmlutils.runner.SIDE_BY_SIDE_SLOWDOWN`)."""
    import multiprocessing

    alone = _profile_step_seconds(steps, warmup)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    twins = [context.Process(target=_twin, args=(steps, warmup, start, results)) for _ in range(2)]
    for twin in twins:
        twin.start()
    both = [results.get(timeout=1800) for _ in twins]
    for twin in twins:
        twin.join()
    from dmlutils.runner import SIDE_BY_SIDE_SLOWDOWN

    return {"steps": steps, "alone_seconds_per_step": alone, "side_by_side_seconds_per_step": both,
            "slowdown": statistics.mean(both) / alone, "runner_assumes": SIDE_BY_SIDE_SLOWDOWN}


def time_online_step(steps: int, warmup: int, size: int = 224) -> dict:
    """One MS step that fine-tunes the whole EfficientNet-Lite0 on 80 images at 224 px (the
    paper's manner, no cache; images already decoded): the cost of a flagship online run."""
    config = make_config("cpu", "multi_similarity", {"image_size": 224, "resize_size": 256, "cache_views": 0, "cache_from_block": 0})
    torch.manual_seed(0)
    model = build_model(config).to(memory_format=torch.channels_last)
    backbone_params, head_params = trainable_parameters(model, config)
    optimizer = torch.optim.Adam(backbone_params + head_params, lr=config["lr"])
    loss_fn = build_loss(config, 100, model.embedding_dim)
    images = torch.randn(config["p"] * config["k"], 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(config["p"]).repeat_interleave(config["k"])
    model.train()
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times[warmup:])
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(images)
    return {"steps": steps, "image_size": size, "seconds_per_step_median": median, "step_gflop": 3 * counter.get_total_flops() / 1e9,
            "projected_hours_per_1000_steps": 1000 * median / 3600}


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
    shape = "x".join(map(str, report["activation_shape"]))
    lines = [
        f"Training step of the cpu profile on cached activations entering block {report['cache_from_block']} "
        f"({shape}, synthetic), batch 16 x 5, {report['torch_threads']} torch thread(s); "
        "median over the timed steps (the step includes the batch gather, forward, loss, backward and Adam).",
        "",
        "| loss | steps timed | s / step (median) | s / step (best) | iterations/s "
        f"| projected {next(iter(report['training'].values()))['profile_iterations']} iterations (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["training"].items():
        lines.append(
            f"| {name} | {row['steps']} | {row['seconds_per_step_median']:.3f} | {row['seconds_per_step_min']:.3f} "
            f"| {row['iterations_per_s']:.2f} | {row['projected_training_seconds'] / 60:.1f} |"
        )
    ev = report["evaluation"]
    lines += [
        "",
        "| stage | images | seconds | images/s | projected |",
        "|---|---:|---:|---:|---|",
        f"| evaluation: embed cached test activations | {ev['test_images']:,} | {ev['embed_seconds']:.1f} "
        f"| {ev['test_images'] / ev['embed_seconds']:.0f} | |",
        f"| evaluation: Recall@K, MAP@R | {ev['test_images']:,} | {ev['metrics_seconds']:.1f} | | "
        f"{ev['evaluations_per_run']} evaluations per run: {ev['projected_evaluation_seconds_per_run'] / 60:.1f} min |",
    ]
    cb = report["cache_build"]
    if "skipped" in cb:
        lines.append(f"| cache build | | | | skipped: {cb['skipped']} |")
    else:
        lines.append(
            f"| cache build (decode + augment + frozen prefix, {cb['views']} train views + test) | {cb['images']:,} "
            f"| {cb['seconds']:.1f} | {cb['images_per_s']:.1f} | full cache ({cb['full_cache_images']:,} images, "
            f"{cb['full_cache_bytes'] / 2**30:.2f} GiB): {cb['projected_full_cache_seconds'] / 60:.1f} min |"
        )
    projected = report.get("projected_cpu_run_seconds")
    if projected:
        lines += ["", "Projected cpu-profile run from these rates: "
                  + "; ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in projected.items()) + "."]
    recipes = report.get("recipes")
    if recipes:
        peak = recipes["matmul_gflops"]
        lines += [
            "",
            f"The MS step before and after the recipe study (batch 80; 1 thread unless stated). This CPU multiplies fp32 "
            f"matrices at {peak['1']:.0f} GFLOP/s on 1 thread and {peak['2']:.0f} on 2 (1024 x 1024, best of 5).",
            "",
            "| recipe | trained map | GFLOP / step | s / step, channels-last (the engine) | contiguous | torch.compile (compile s) "
            "| 2 threads | GFLOP/s reached | share of matmul peak | eval ms / image, no_grad / inference_mode |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for label, row in recipes["recipes"].items():
            v = row["step_variants_1_thread"]
            c = v["torch.compile"]
            ev = row["evaluation_modes"]
            lines.append(
                f"| {label} (block {row['settings']['cache_from_block']}, {row['settings']['image_size']} px) | "
                f"{'x'.join(map(str, row['trained_map_shape']))} | {row['step_gflop']:.1f} | "
                f"{v['channels_last']['seconds_per_step_median']:.2f} | {v['contiguous']['seconds_per_step_median']:.2f} | "
                f"{c['seconds_per_step_median']:.2f} ({c['compile_seconds']:.0f}) | {row['channels_last_2_threads']['seconds_per_step_median']:.2f} | "
                f"{row['achieved_gflops_1_thread']:.1f} | {100 * row['share_of_matmul_peak_1_thread']:.0f}% | "
                f"{ev['no_grad']['ms_per_image']:.1f} / {ev['inference_mode']['ms_per_image']:.1f} |"
            )
        online = recipes.get("online_whole_backbone")
        if online:
            lines += ["", f"For comparison, one step that fine-tunes the whole backbone online on 80 images of {online['image_size']} px (the "
                      f"paper's manner, no cache, decoding not counted): {online['seconds_per_step_median']:.1f} s on 1 thread, "
                      f"{online['step_gflop']:.0f} GFLOP; 1,000 steps would take {online['projected_hours_per_1000_steps']:.1f} hours."]
    twins = report.get("side_by_side")
    if twins:
        lines += ["", f"Two runs side by side (one thread each, as `make results-cpu` runs them): the cpu profile's step takes "
                  f"{twins['alone_seconds_per_step']:.2f} s alone and "
                  + " and ".join(f"{t:.2f}" for t in twins["side_by_side_seconds_per_step"])
                  + f" s in the two processes at once: {twins['slowdown']:.2f}x (the runner's estimates assume "
                  f"{twins['runner_assumes']:.2f}x)."]
    records = report.get("from_run_records")
    if records:
        cache_min = records["cache_seconds_median"]
        lines += [
            "",
            f"For comparison, the {records['records']} cpu run records in `{records['records_dir']}` "
            f"(threads {records['threads']}): cache built in "
            f"{'n/a' if cache_min is None else f'{cache_min / 60:.1f} min'}; whole run (training + evaluations) "
            f"{records['wall_seconds_per_iteration_median']:.2f} s per iteration (median; range "
            f"{records['wall_seconds_per_iteration_range'][0]:.2f}-{records['wall_seconds_per_iteration_range'][1]:.2f}).",
        ]
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
