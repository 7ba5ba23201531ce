"""Run many training runs side by side: one process per run, one CPU thread each.

    run_jobs([Job("ms_seed1", config, "results/cpu/ms_seed1.json", "runs/cpu/ms_seed1")], processes=2)

A job whose record exists (and is finished) is skipped; an interrupted one resumes from
its checkpoint. Before it starts, the runner prints what it will run with a time
estimate (`estimate_seconds`); while it runs, one progress bar counts finished runs.
Two OpenMP threads on one shared core busy-wait and run slower than one, so each worker
process is pinned to a single thread; `processes` says how many run at once.
"""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm


@dataclass
class Job:
    name: str
    config: dict
    record_path: Path
    run_dir: Path
    kind: str = "train"  # or "baseline"
    root: str | None = field(default=None, repr=False)


def finished(record_path) -> bool:
    """Whether a job's record is there and readable; a damaged one is not: the job re-makes it."""
    from .records import DamagedRecord, read_record

    path = Path(record_path)
    if not path.exists():
        return False
    try:
        return "final" in read_record(path)
    except DamagedRecord:
        return False


# Seconds per training step of 80 cached activations on one thread of this project's
# machine (benchmarks/bench_engine.py measures them), by (image size, first trained block);
# a first guess for the plan, scaled by the trained map's area when feature_crop is set.
_STEP_SECONDS = {(144, 11): 0.7, (160, 11): 0.85, (224, 11): 1.7, (144, 8): 1.1, (160, 8): 1.4, (224, 8): 2.7}
_EVAL_SECONDS_PER_IMAGE = {11: 0.005, 8: 0.008}
# Two runs side by side on this machine's two cores share its memory bandwidth and L3.
# On a quiet machine, benchmarks/bench_engine.py's side-by-side measurement of the 224-px
# recipe step gave 1.18x and 0.89x in two tries of 20 steps (the step alone itself took
# 1.81 s and 2.03 s: this VM's timings vary by about 10% from minute to minute); the
# 224-px recipe-study records, made beside other load, took a median 1.36x. 1.2 is the
# quiet figure, rounded up.
SIDE_BY_SIDE_SLOWDOWN = 1.2
# The activation cache: every training view and the test split through the frozen blocks,
# at 224 px. Measured: 1,609 s for 5 views + test at block 11, beside another run.
_CACHE_SECONDS_PER_IMAGE = 0.046
_CUB_TRAIN_IMAGES, _CUB_TEST_IMAGES = 5864, 5924


# The whole backbone on decoded images (cpu_full), 224 px, batch 80: seconds per training
# step and per evaluated image, by threads, as benchmarks/bench_whole_backbone.py measured
# them on a quiet machine with freed memory kept (results/benchmarks/whole_backbone.md:
# float32, 2 threads 2.6-2.7 s per step and 0.0095-0.0099 s per image in two runs of it;
# two one-thread runs side by side 4.9-5.1 s per step each, taken here as the one-thread
# figure, and the image twice the two-thread time). With glibc's default malloc the same
# step took 5.2-6.1 s on 2 threads.
_DECODED_STEP_SECONDS = {1: 4.95, 2: 2.6}
_DECODED_EVAL_SECONDS_PER_IMAGE = {1: 0.019, 2: 0.0095}
_DECODE_SECONDS = 60.0  # every image decoded and resized once, at the start of a run


def estimate_seconds(job: Job, threads: int = 1) -> float:
    """A rough time of one job on `threads` threads (the plan printed before a batch starts)."""
    config = job.config
    if job.kind == "baseline":
        return 60.0
    evaluations = config["iterations"] // config["eval_every"] + 1
    eval_images = 1180 if config.get("validation_classes") else 5924
    if config.get("decoded_images"):
        threads = 2 if threads >= 2 else 1
        area = (config["image_size"] / 224) ** 2
        return _DECODE_SECONDS + area * (config["iterations"] * _DECODED_STEP_SECONDS[threads]
                                         + evaluations * eval_images * _DECODED_EVAL_SECONDS_PER_IMAGE[threads])
    if not config.get("cache_views"):
        return 1.0 * config["iterations"]
    size, block = config["image_size"], config["cache_from_block"]
    step = _STEP_SECONDS.get((size, block), 2.0 * (size / 224) ** 2 * (1.6 if block < 11 else 1.0))
    if config.get("feature_crop"):
        full = max(1, round(size / 16))  # the map entering blocks 8-11 is 1/16 of the image
        step *= min(1.0, (config["feature_crop"] / full) ** 2)
    return config["iterations"] * step + evaluations * eval_images * _EVAL_SECONDS_PER_IMAGE.get(block, 0.008)


def estimate_cache_seconds(config: dict) -> float:
    """A rough time to build the activation cache a config needs (0 without one)."""
    if not config.get("cache_views"):
        return 0.0
    images = _CUB_TRAIN_IMAGES * config["cache_views"] + _CUB_TEST_IMAGES
    return images * _CACHE_SECONDS_PER_IMAGE * (config["image_size"] / 224) ** 2


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(2)
        if os.getppid() != parent:
            # The runner was killed: stop, rather than race a restarted runner's workers for
            # the same checkpoints and records.
            os._exit(1)


def _worker_init(runner: int) -> None:
    import threading

    # The runner's pid is passed in, not read here: it may have died while this worker started.
    threading.Thread(target=_exit_with_parent, args=(runner,), daemon=True).start()
    import torch

    torch.set_num_threads(1)


def _run(job: Job, progress: bool = False, device: str | None = "cpu") -> tuple[str, float, dict]:
    from . import engine

    started = time.perf_counter()
    if job.kind == "baseline":
        record = engine.baseline(job.config, root=job.root, record_path=job.record_path, device=device, progress=progress)
    else:
        record = engine.train(job.config, job.run_dir, resume=True, root=job.root, record_path=job.record_path, progress=progress, device=device)
    return job.name, time.perf_counter() - started, record.get("final", {})


def _report(bar, echo, results: dict, name: str, seconds: float, final: dict) -> None:
    results[name] = final
    bar.update(1)
    line = f"{name}: {seconds / 60:.1f} min, " + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k in ("recall@1", "map@r"))
    # Above a live bar, tqdm's write keeps the bar intact; without one the caller's echo decides (a chapter silences it).
    (echo if bar.disable else bar.write)(line)


def _rounds(count: int, processes: int) -> tuple[int, int]:
    """(processes, how many of `count` runs go side by side): whole rounds of `processes`
    runs; the runs left over (fewer than a round) train one after another in this process
    on every core, not each on one core in a worker beside an idle one."""
    processes = min(processes, max(1, count))
    return processes, (count - count % processes if processes > 1 else 0)


def job_threads(processes: int, together: bool) -> int:
    """The threads one run trains on: a worker beside others takes one; a run alone in this
    process takes torch's default (every core)."""
    return 1 if together and processes > 1 else (os.cpu_count() or 1)


def plan(jobs: list[Job], processes: int, is_done=None, measured: dict[int, tuple[float, int]] | None = None) -> str:
    """What a batch will run and its time. `measured`: {threads: (median wall seconds,
    count)} of the training records already made at this profile on that many threads,
    which replaces the first-guess estimate of a training run on as many threads (those
    records' times include whatever ran beside them: two runs side by side, one thread
    each, take longer per run than one run on both threads)."""
    is_done = is_done or (lambda job: finished(job.record_path))
    todo = [job for job in jobs if not is_done(job)]
    processes, side_by_side = _rounds(len(todo), processes)
    lines = [f"{len(jobs)} runs, {len(jobs) - len(todo)} with a record already; {len(todo)} to run, {processes} at a time:"]
    total = wall = 0.0
    timed_by = set()  # the thread counts whose records timed a run
    for index, job in enumerate(todo):
        together = index < side_by_side
        threads = job_threads(processes, together)
        slowdown = SIDE_BY_SIDE_SLOWDOWN if together else 1.0
        if measured and job.kind == "train" and threads in measured:
            seconds = measured[threads][0]
            timed_by.add(threads)
        else:
            seconds = estimate_seconds(job, threads) * slowdown
        total += seconds * threads
        wall += seconds / processes if together else seconds
        lines.append(f"  {job.name:<40} about {seconds / 60:5.1f} min" + (" (side by side)" if together else ""))
    if todo:
        if timed_by:
            counts = " and ".join(f"{measured[t][1]} on {t} thread{'s' * (t > 1)}" for t in sorted(timed_by))
            source = f"training runs at the median wall time of the records made before on as many threads: {counts}"
        else:
            source = "estimate"
        lines.append(f"about {total / 60:.0f} CPU-minutes, {wall / 60:.0f} minutes of wall time ({source})")
    return "\n".join(lines)


def run_jobs(jobs: list[Job], processes: int = 1, progress: bool = True, echo=print, is_done=None, device: str | None = None,
             measured: dict[int, tuple[float, int]] | None = None) -> dict[str, dict]:
    """Run every job that is not done (default: has no finished record); returns
    {name: final metrics} of those run. `device`: None is a GPU if there is one, in this
    process; worker processes (`processes` > 1) run on the CPU unless told otherwise."""
    is_done = is_done or (lambda job: finished(job.record_path))
    todo = [job for job in jobs if not is_done(job)]
    echo(plan(jobs, processes, is_done, measured))
    if not todo:
        return {}
    for job in todo:  # fail before anything runs, not after an hour
        Path(job.record_path).parent.mkdir(parents=True, exist_ok=True)
        if not os.access(Path(job.record_path).parent, os.W_OK):
            raise PermissionError(f"cannot write run records to {Path(job.record_path).parent}")
    results = {}
    processes, side_by_side = _rounds(len(todo), processes)
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress)
    if side_by_side:
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers before torch loads there
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            pending = [pool.submit(_run, job, False, device or "cpu") for job in todo[:side_by_side]]
            for future in futures.as_completed(pending):
                _report(bar, echo, results, *future.result())
    for job in todo[side_by_side:]:  # in this process: the run's own progress bar, and a GPU if there is one
        _report(bar, echo, results, *_run(job, progress=progress, device=device))
    bar.close()
    return results
