"""The cpu_full profile's step: every block of EfficientNet-Lite0 fine-tuned on decoded images.

    python benchmarks/bench_whole_backbone.py --out /tmp/whole_backbone.json [--small] [--threads 2]

Each measurement runs the engine's own code (`engine.loop.build_run` builds the model, the
loss, Adam over the engine's parameter groups and the `DecodedImageSource` of a CUB
subset of 16 training classes, decoded once into memory):

1. for float32 and, where the CPU has bfloat16 instructions, bf16 autocast (`amp`):
   * the bare step: forward + loss + backward + Adam on one batch of 80 images already in
     memory, timed call by call;
   * the engine's step: the same, fed by the source (the batch's random crops and flips on
     its uint8 tensors, normalisation, channels-last copy), timed from the end of one step
     to the end of the next, in the same process right after the bare step;
   * their ratio (the engine's overhead; the goal is at most 1.10), GFLOP per step (3 x
     the forward's FLOPs, counted by torch) and GFLOP/s;
   * one evaluation pass over the decoded test images of the subset (inference mode):
     seconds per image;
2. one run on both threads against two runs side by side on one thread each (the bare
   float32 step in two processes started together): which finishes the study's runs sooner;
3. the allocator (`dmlutils.engine.allocator`): the bare float32 step in a fresh process
   with glibc's default malloc (`DML_KEEP_FREED_MEMORY=0`), then in one that keeps freed
   memory (the engine's way): seconds, user and system CPU seconds and page faults per
   step, and peak RSS. This is the step before and after the speed work on the allocator.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops, time_calls, time_loop, write_json_atomically  # noqa: E402
from engine_steps import training_step  # noqa: E402

import torch  # noqa: E402

from dmlutils import distributed, engine  # noqa: E402
from dmlutils.engine import allocator  # noqa: E402
from dmlutils.profiles import make_config  # noqa: E402

FULL = {"max_classes": 16}  # 16 classes x 5 images per batch, as the profile; decoded in seconds
SMALL = {"max_classes": 4, "p": 4, "k": 2, "image_size": 64, "resize_size": 72}


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def build(overrides: dict, root=None):
    config = make_config("cpu_full", "multi_similarity", overrides)
    run = engine.loop.build_run(config, distributed.setup_from_env("cpu"), root, progress=False)
    return config, run


def median(times: list[float]) -> float:
    return statistics.median(times)


def time_precision(amp: str, size: dict, steps: int, warmup: int, root=None) -> dict:
    config, run = build({**size, "amp": amp}, root)
    x, y = next(iter(run.source.batches(run.sampler, 0, 1)))
    gflop = 3 * forward_flops(run.model.eval(), x) / 1e9
    run.trained.train()
    step = training_step(run.trained, run.loss_fn, run.optimizer, config)
    bare = median(time_calls(lambda: step(x, y), steps, warmup))
    fed = median(time_loop(run.source.batches(run.sampler, 1, warmup + steps), step, warmup))
    eval_times = time_calls(lambda: run.source.embed_evaluation_set(run.model), 1, 0)
    return {"amp": amp, "threads": torch.get_num_threads(), "batch": len(y), "image_size": config["image_size"],
            "bare_seconds_per_step": bare, "engine_seconds_per_step": fed, "overhead_ratio": fed / bare,
            "gflop_per_step": gflop, "gflops_per_second": gflop / fed,
            "eval_images": len(run.eval_set), "eval_seconds_per_image": eval_times[0] / len(run.eval_set)}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux keeps
    that across exec, so a spawned process would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bare_step(size: dict, steps: int, warmup: int, threads: int, root, start=None, results=None) -> dict:
    """The bare step of one batch in memory: its median seconds, and its CPU time, page
    faults and this process's peak memory (for the allocator's comparison)."""
    torch.set_num_threads(threads)
    config, run = build(size, root)  # build_run keeps freed memory unless DML_KEEP_FREED_MEMORY=0
    x, y = next(iter(run.source.batches(run.sampler, 0, 1)))
    run.trained.train()
    step = training_step(run.trained, run.loss_fn, run.optimizer, config)
    if start is not None:
        start.wait()
    time_calls(lambda: step(x, y), warmup, 0)
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = time_calls(lambda: step(x, y), steps, 0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    measured = {"allocator": allocator.describe(), "threads": threads, "seconds_per_step": median(seconds),
                "user_seconds_per_step": (after.ru_utime - before.ru_utime) / steps,
                "system_seconds_per_step": (after.ru_stime - before.ru_stime) / steps,
                "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                "peak_rss_mib": peak_rss_mib()}
    if results is not None:
        results.put(measured)
    return measured


def one_or_two_runs(size: dict, steps: int, warmup: int, root=None) -> dict:
    """Steps per minute of the machine: one run on two threads, or two runs on one thread each."""
    alone = _bare_step(size, steps, warmup, 2, root)["seconds_per_step"]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    twins = [context.Process(target=_bare_step, args=(size, steps, warmup, 1, root, start, results)) for _ in range(2)]
    for twin in twins:
        twin.start()
    both = [results.get(timeout=3600)["seconds_per_step"] for _ in twins]
    for twin in twins:
        twin.join()
    one, two = 60 / alone, sum(60 / s for s in both)
    return {"one_run_two_threads_seconds_per_step": alone, "two_runs_one_thread_seconds_per_step": both,
            "steps_per_minute_one_run": one, "steps_per_minute_two_runs": two,
            "faster": "one run on two threads" if one >= two else "two runs side by side"}


def allocator_effect(size: dict, steps: int, warmup: int, threads: int, root=None) -> dict:
    """The bare float32 step in a fresh process with glibc's defaults, then in one that keeps
    freed memory: glibc's settings belong to a process and cannot be taken back within it."""
    context = multiprocessing.get_context("spawn")
    rows = {}
    for name, switch in (("default", "0"), ("kept", "1")):
        previous = os.environ.get(allocator.ENVIRONMENT_SWITCH)
        os.environ[allocator.ENVIRONMENT_SWITCH] = switch  # a spawned process reads it when its run starts
        try:
            results = context.Queue()
            process = context.Process(target=_bare_step, args=(size, steps, warmup, threads, root, None, results))
            process.start()
            rows[name] = results.get(timeout=3600)
            process.join()
        finally:
            if previous is None:
                os.environ.pop(allocator.ENVIRONMENT_SWITCH, None)
            else:
                os.environ[allocator.ENVIRONMENT_SWITCH] = previous
    return {**rows, "speedup": rows["default"]["seconds_per_step"] / rows["kept"]["seconds_per_step"]}


def run(small: bool, steps: int, warmup: int, root=None) -> dict:
    size = SMALL if small else FULL
    precisions = ["off", "bf16"] if cpu_has_bf16() else ["off"]
    rows = []
    for amp in precisions:
        print(f"  whole-backbone step, amp={amp}", file=sys.stderr)
        rows.append(time_precision(amp, size, steps, warmup, root))
    print("  one run on two threads against two runs on one thread each", file=sys.stderr)
    parallel = one_or_two_runs(size, max(1, steps // 2), min(warmup, 1), root)
    print("  glibc's default malloc against freed memory kept", file=sys.stderr)
    return {"benchmark": "the cpu_full profile's whole-backbone step on decoded images", "small": small,
            "settings": size, "cpu_has_bf16": cpu_has_bf16(), "precisions": rows, "parallel": parallel,
            "allocator": allocator_effect(size, steps, warmup, torch.get_num_threads(), root) if allocator.is_glibc() else None}


def markdown(report: dict) -> str:
    lines = ["| amp | threads | bare step (s) | engine step (s) | overhead | GFLOP / step | GFLOP/s | eval s / image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["precisions"]:
        lines.append(f"| {r['amp']} | {r['threads']} | {r['bare_seconds_per_step']:.2f} | {r['engine_seconds_per_step']:.2f} | "
                     f"{r['overhead_ratio']:.2f}x | {r['gflop_per_step']:.0f} | {r['gflops_per_second']:.1f} | "
                     f"{r['eval_seconds_per_image']:.4f} |")
    first = report["precisions"][0]
    p = report["parallel"]
    lines += ["", f"Batches of {first['batch']} images at {first['image_size']} px. *Bare step*: forward + loss + backward + Adam on "
              "one batch already in memory; *engine step*: the same fed by the engine's decoded-images source (random crops "
              "and flips of the batch's uint8 tensors, normalisation), timed in the same process; *overhead* is their ratio "
              "(goal: at most 1.10x). GFLOP per step is three times the forward's count. "
              + ("The CPU has bfloat16 instructions, so bf16 autocast is measured beside float32." if report["cpu_has_bf16"]
                 else "The CPU has no bfloat16 instructions: float32 only."),
              "", f"One run on two threads: {p['one_run_two_threads_seconds_per_step']:.2f} s per step "
              f"({p['steps_per_minute_one_run']:.1f} steps a minute); two runs side by side on one thread each: "
              + " and ".join(f"{s:.2f}" for s in p["two_runs_one_thread_seconds_per_step"])
              + f" s per step ({p['steps_per_minute_two_runs']:.1f} steps a minute together). Faster: {p['faster']}."]
    a = report.get("allocator")
    if a:
        lines += ["", "| malloc | s / step | user CPU s / step | system CPU s / step | page faults / step | peak RSS (MiB) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, title in (("default", "glibc's defaults"), ("kept", "freed memory kept (the engine)")):
            r = a[name]
            lines.append(f"| {title} | {r['seconds_per_step']:.2f} | {r['user_seconds_per_step']:.2f} | "
                         f"{r['system_seconds_per_step']:.2f} | {r['page_faults_per_step']:,.0f} | {r['peak_rss_mib']:,.0f} |")
        lines += ["", f"The bare float32 step on {a['kept']['threads']} thread(s), each way in a fresh process. glibc returns "
                  "large freed blocks to the kernel, which faults and zeroes them again on the next step; kept in the "
                  f"process (`dmlutils.engine.allocator`), the step is {a['speedup']:.2f}x as fast. Every other row of this "
                  "report is measured with freed memory kept."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--small", action="store_true", help="a tiny subset at 64 px, one timed step: checks the code path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--root", default=None, help="data root (default: $DML_DATA, else ./data)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.small:
        args.steps, args.warmup = 1, 0
    report = run(args.small, args.steps, args.warmup, args.root)
    print(markdown(report))
    if args.out:
        write_json_atomically(args.out, report)
    return report


if __name__ == "__main__":
    main()
