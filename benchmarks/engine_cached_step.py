"""The cpu profile's training step on cached activations: bench_engine's step measurements.

* `time_training_steps`: the engine's step as its loop runs it on the cpu profile, one P x K
  batch of cached activations gathered by the engine's feeder + forward from the cached
  block + loss + backward + Adam, for one loss. The activations are synthetic (random
  float16 of the real shape), so no cache file is needed; only the loss's pair mining could
  depend on their values, and it is a small share of a step.
* `recipe_comparison`: the MS step before the recipe study (cpu profile version 1) and now:
  channels-last (the engine) vs contiguous vs torch.compile, its FLOPs and the share of
  this CPU's matmul throughput it reaches, evaluation under no_grad vs inference_mode,
  and the whole-backbone online step for comparison (engine_backbone.py).
* `side_by_side`: the step alone, then in two processes at once (the runner's slowdown).
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops, matmul_gflops, time_calls, time_loop  # noqa: E402
from engine_steps import FromBlock, median_step, profile_model, step_parts, trained_shape, training_step  # noqa: E402

import torch  # noqa: E402

from dmlutils import distributed  # noqa: E402
from dmlutils.names import loss_name as reader_name  # noqa: E402  ("Multi-Similarity", not the registry key)
from dmlutils.engine import build_loss, parameter_groups  # noqa: E402
from dmlutils.profiles import make_config  # noqa: E402
from dmlutils.samplers import PKSampler  # noqa: E402
from dmlutils.xbm import with_cross_batch_memory  # noqa: E402


def cached_feeder(config, cache, device):
    """The engine's batch source of cached activations: the batch gather, view choice,
    feature crop and flip, and the channels-last copy of each step."""
    from dmlutils.engine import ActivationSource

    return ActivationSource(config, cache, device)


def synthetic_cache(shape, num_classes: int, per_class: int, views: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    return {
        "train": torch.randn(n, views, *shape, generator=g).to(torch.float16),
        "train_labels": torch.arange(num_classes).repeat_interleave(per_class),
    }


def time_training_steps(base_model, loss_name: str, cache: dict, steps: int, warmup: int) -> dict:
    """Seconds per training step on cached activations, as the engine's loop runs it."""
    config = make_config("cpu", loss_name)
    torch.manual_seed(config["seed"])
    model = copy.deepcopy(base_model)  # each loss starts from the same pretrained weights
    labels = cache["train_labels"].numpy()
    base_loss = build_loss(config, int(labels.max()) + 1, model.embedding_dim)
    loss_fn = distributed.GlobalBatchLoss(with_cross_batch_memory(base_loss, config["xbm_size"]))
    # The engine's parameter groups and optimiser.
    optimizer = torch.optim.Adam(parameter_groups(model, loss_fn, config), weight_decay=config["weight_decay"])
    sampler = PKSampler(labels, p=config["p"], k=config["k"], seed=config["seed"])
    feeder = cached_feeder(config, cache, torch.device("cpu"))
    module = FromBlock(model, config["cache_from_block"])
    module.train()
    loss_fn.train()
    step = training_step(module, loss_fn, optimizer, config)
    # Timed from the end of one step to the end of the next: includes the feeder's gather.
    times = time_loop(feeder.batches(sampler, 0, warmup + steps), lambda x, y: float(step(x, y).detach()), warmup)
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


def step_flops(config: dict, base_model, shape) -> float:
    """Floating-point operations of one training step of the trainable blocks and head on a
    P x K batch: 3 x their forward (see common.forward_flops)."""
    model = copy.deepcopy(base_model).eval()
    x = torch.randn(config["p"] * config["k"], *shape)
    return 3.0 * forward_flops(model.forward_from_block, x, config["cache_from_block"])


def time_step_variants(base_model, config: dict, shape, steps: int, warmup: int, compile_steps: int,
                       variants=("channels_last", "contiguous", "torch.compile")) -> dict:
    """The MS training step as the engine runs it (channels-last) against what PyTorch
    offers around it: the earlier contiguous layout, and torch.compile of the trainable tail
    (its compile time counted separately; it pays only if it is won back within a run)."""
    x = torch.randn(config["p"] * config["k"], *shape)
    y = torch.arange(config["p"]).repeat_interleave(config["k"])
    results = {}
    for variant in variants:
        model, loss_fn, optimizer = step_parts(base_model, config, channels_last=variant != "contiguous")
        module = FromBlock(model, config["cache_from_block"]).train()
        inputs = x.contiguous(memory_format=torch.channels_last) if variant != "contiguous" else x.contiguous()
        if variant == "torch.compile":
            start = time.perf_counter()
            module = torch.compile(module)
            loss_fn(module(inputs), y).backward()  # compiles forward and backward
            compile_seconds = time.perf_counter() - start
        step = training_step(module, loss_fn, optimizer, config)
        count = compile_steps if variant == "torch.compile" else steps
        results[variant] = median_step(time_calls(lambda: step(inputs, y), count, warmup))
        if variant == "torch.compile":
            results[variant]["compile_seconds"] = compile_seconds
    return results


def recipe_comparison(steps: int, compile_steps: int, warmup: int, eval_images: int) -> dict:
    """The MS step before the recipe study (cpu profile version 1, `dmlutils.recipe.BASE`)
    and at the current cpu profile: its variants, FLOPs, and the share of this CPU's matmul
    throughput it reaches, at 1 thread (and the engine's variant at 2)."""
    from dmlutils.recipe import BASE
    from engine_backbone import time_online_step
    from engine_evaluation import time_evaluation_modes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    peak = {"1": matmul_gflops()}
    torch.set_num_threads(2)
    peak["2"] = matmul_gflops()
    torch.set_num_threads(1)
    out = {"matmul_gflops": peak, "recipes": {}}
    for label, overrides in (("before: cpu profile version 1", BASE), ("now: cpu profile", {})):
        config, model = profile_model("cpu", "multi_similarity", overrides)
        shape = trained_shape(model, config)
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
    config, model = profile_model("cpu", "multi_similarity")
    shape = trained_shape(model, config)
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

    from dmlutils.runner import SIDE_BY_SIDE_SLOWDOWN

    alone = _profile_step_seconds(steps, warmup)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    twins = [context.Process(target=_twin, args=(steps, warmup, start, results)) for _ in range(2)]
    for twin in twins:
        twin.start()
    both = [results.get(timeout=1800) for _ in twins]
    for twin in twins:
        twin.join()
    return {"steps": steps, "alone_seconds_per_step": alone, "side_by_side_seconds_per_step": both,
            "slowdown": statistics.mean(both) / alone, "runner_assumes": SIDE_BY_SIDE_SLOWDOWN}


# ------------------------------------------------------------------------ markdown


def markdown_training(report: dict) -> list[str]:
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
            f"| {reader_name(name)} | {row['steps']} | {row['seconds_per_step_median']:.3f} | {row['seconds_per_step_min']:.3f} "
            f"| {row['iterations_per_s']:.2f} | {row['projected_training_seconds'] / 60:.1f} |"
        )
    return lines


def markdown_recipes(recipes: dict) -> list[str]:
    from engine_backbone import markdown_online

    peak = recipes["matmul_gflops"]
    lines = [
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
    if recipes.get("online_whole_backbone"):
        lines += markdown_online(recipes["online_whole_backbone"])
    return lines


def markdown_side_by_side(twins: dict) -> list[str]:
    return ["", f"Two runs side by side (one thread each, as `make results-cpu` runs them): the cpu profile's step takes "
            f"{twins['alone_seconds_per_step']:.2f} s alone and "
            + " and ".join(f"{t:.2f}" for t in twins["side_by_side_seconds_per_step"])
            + f" s in the two processes at once: {twins['slowdown']:.2f}x (the runner's estimates assume "
            f"{twins['runner_assumes']:.2f}x)."]
