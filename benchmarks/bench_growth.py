"""Cost growth: how loss time grows with the batch, and evaluation time with the gallery.

* Losses: forward + backward time of every registered loss on P x K (K = 5) batches of
  40, 80, ..., 1280 embeddings of size 512 (as in bench_losses.py: best time per call
  over torch.utils.benchmark blocks), and the peak RSS above the start of one call.
  A loss can be capped at a largest batch (`--max-batch triplet=320`): the triplet loss
  holds (B, B, B) tensors and the quadruplet loss (positive pairs x negative pairs), so
  their working set outgrows the machine long before the others'.
* Evaluation: `dmlutils.metrics.evaluate` (Recall@1..32, MAP@R, R-precision; no NMI)
  of galleries of 1,000 ... 64,000 embeddings of size 512, every item a query against
  all the others, classes of 50 (clusters on the sphere, as in bench_metrics.py); time
  and the peak RSS above the embeddings already in memory.

Peak RSS is measured in a second process with a fixed malloc mmap threshold (see
MEMORY_WORKER_ENV), which also times the evaluation; the loss times come from this one.

Each curve gets the least-squares slope of log(time) against log(size) over its
largest `--fit-points` sizes: the exponent a of time ~ c size^a once fixed per-call
costs no longer dominate (a pairwise loss or an all-pairs search costs B^2 d, so a
near 2 is expected; a ~ 3 for the triplet loss's B^3 tensors). The plot (log-log,
PNG) shows the measured points, with the fitted exponents in the legend.

    python benchmarks/bench_growth.py --out /tmp/growth.json --plot /tmp/growth.png [--small]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, loglog_slope, write_json_atomically  # noqa: E402

import torch  # noqa: E402

from bench_losses import build_loss, forward_backward_seconds, pk_embeddings  # noqa: E402
from bench_metrics import clustered_sphere  # noqa: E402

from dmlutils.names import loss_name as reader_name  # noqa: E402  ("Multi-Similarity", not the registry key)
from dmlutils.losses import LOSSES  # noqa: E402
from dmlutils.metrics import evaluate  # noqa: E402

FULL = {
    "batches": [40, 80, 160, 320, 640, 1280],
    "galleries": [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000],
    "dim": 512,
    "min_run_time": 0.3,  # seconds of timing per loss measurement
    "eval_min_seconds": 1.0,  # small galleries are evaluated repeatedly for this long; the best time is kept
}
SMALL = {"batches": [10, 20, 40], "galleries": [200, 400, 800], "dim": 32, "min_run_time": 0.01, "eval_min_seconds": 0.05}
# Largest batch per loss (none: triplet and quadruplet count violations by binary search
# instead of enumerating triplets or quadruplets, so every loss fits at 1,280).
DEFAULT_MAX_BATCH: dict[str, int] = {}
EVAL_KS = (1, 2, 4, 8, 16, 32)
EVAL_CLASS_SIZE = 50


def loss_growth(names, batches, dim, min_run_time, max_batch) -> dict:
    """Forward + backward seconds per loss and batch size (this process)."""
    curves = {}
    for name in names:
        points = []
        for batch in batches:
            if batch > max_batch.get(name, float("inf")):
                continue
            embeddings, labels = pk_embeddings(batch, dim)
            loss = build_loss(name, int(labels.max()) + 1, dim)
            seconds = forward_backward_seconds(loss, embeddings, labels, min_run_time)
            points.append({"size": batch, "seconds": seconds})
            print(f"  {name} batch {batch}: {seconds * 1e3:.2f} ms", file=sys.stderr)
        curves[name] = {"points": points, "max_size": max_batch.get(name)}
    return curves


def loss_memory(names, batches, dim, max_batch) -> dict:
    """Peak RSS above the start of one forward + backward, per loss and batch size (MiB)."""
    memory = {}
    for name in names:
        memory[name] = {}
        for batch in batches:
            if batch > max_batch.get(name, float("inf")):
                continue
            embeddings, labels = pk_embeddings(batch, dim)
            loss = build_loss(name, int(labels.max()) + 1, dim)
            e = embeddings.clone().requires_grad_(True)
            with PeakRSS() as probe:
                loss(e, labels).backward()
            memory[name][str(batch)] = probe.increase_mib
            del e, loss
    return memory


def evaluation_growth(galleries, dim, min_seconds: float, seed: int = 0) -> dict:
    points = []
    for n in galleries:
        embeddings, labels = clustered_sphere(n, dim, max(n // EVAL_CLASS_SIZE, 2), noise=3.0, seed=seed)
        embeddings = torch.from_numpy(embeddings)
        times, started = [], time.perf_counter()
        with PeakRSS() as memory:
            while not times or time.perf_counter() - started < min_seconds:
                start = time.perf_counter()
                metrics = evaluate(embeddings, labels, EVAL_KS, include_nmi=False, progress=False)
                times.append(time.perf_counter() - start)
        points.append({
            "size": n, "seconds": min(times), "repeats": len(times),
            "peak_rss_increase_mib": memory.increase_mib, "recall@1": metrics["recall@1"],
        })
        print(f"  evaluate {n:,}: {min(times):.3f} s", file=sys.stderr)
        del embeddings
    return {"evaluate": {"points": points}}


# glibc raises its mmap threshold (up to 32 MiB) after large blocks are freed, and then keeps
# freed blocks in the heap: the RSS stops falling after a call and a later, equal peak no
# longer shows. A fixed threshold keeps large blocks in mmap, returned to the system when
# freed, so each measurement's RSS increase is its own. It is set only in a separate worker
# process: page faults on every large tensor would add to the loss times (not to the
# evaluation's, dominated by its matmul).
MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def run_memory_worker(spec: dict) -> dict:
    """Loss memory and evaluation time + memory, in a fresh process (see MEMORY_WORKER_ENV)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    completed = subprocess.run(command, env={**os.environ, **MEMORY_WORKER_ENV}, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the memory / evaluation worker failed (exit status {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def worker(spec: dict) -> dict:
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    return {
        "loss_memory": loss_memory(spec["losses"], spec["batches"], spec["dim"], spec["max_batch"]),
        "evaluation": evaluation_growth(spec["galleries"], spec["dim"], spec["eval_min_seconds"]),
    }


def add_fits(curves: dict, fit_points: int) -> None:
    """Add the log-log slope over each curve's largest `fit_points` sizes (and over all)."""
    for curve in curves.values():
        points = curve["points"]
        sizes, seconds = [p["size"] for p in points], [p["seconds"] for p in points]
        tail = slice(-min(fit_points, len(points)), None)
        curve["fit_sizes"] = sizes[tail]
        curve["slope"] = loglog_slope(sizes[tail], seconds[tail]) if len(points) >= 2 else None
        curve["slope_all_points"] = loglog_slope(sizes, seconds) if len(points) >= 2 else None


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    palette = sns.color_palette("tab10", len(report["losses"]))
    for colour, (name, curve) in zip(palette, report["losses"].items()):
        pts = curve["points"]
        slope = "n/a" if curve["slope"] is None else f"{curve['slope']:.2f}"
        left.plot([p["size"] for p in pts], [p["seconds"] * 1e3 for p in pts], "o-", color=colour,
                  label=f"{reader_name(name)} (B^{slope})")
    curve = report["evaluation"]["evaluate"]
    pts = curve["points"]
    right.plot([p["size"] for p in pts], [p["seconds"] for p in pts], "o-", color="black",
               label=f"dmlutils.metrics.evaluate (n^{curve['slope']:.2f})")
    for axis, sizes, unit, corner in ((left, report["batches"], 1e3, "lower right"),
                                      (right, report["galleries"], 1.0, "upper left")):
        # a dashed size^2 guide through the median curve's last point, to read the slopes against
        last = sorted(c["points"][-1]["seconds"] * unit for c in report["losses"].values()
                      if c["points"][-1]["size"] == sizes[-1]) if axis is left else [pts[-1]["seconds"]]
        if last:
            anchor = last[len(last) // 2]
            axis.plot(sizes, [anchor * (s / sizes[-1]) ** 2 for s in sizes], "--", color="grey", lw=1, label="slope 2")
        axis.set(xscale="log", yscale="log")
        axis.set_xticks(sizes, [f"{s:,}" for s in sizes])
        axis.minorticks_off()
        axis.legend(fontsize=8, loc=corner)
    left.set(xlabel=f"batch size B (embeddings of size {report['dim']})", ylabel="forward + backward (ms)",
             title="Loss time vs batch size")
    right.set(xlabel=f"gallery size n (every item a query; size {report['dim']})", ylabel="seconds",
              title="Evaluation time vs gallery size")
    fig.suptitle(f"Cost growth on {report['torch_threads']} CPU thread(s); exponents fitted over the "
                 f"largest {report['fit_points']} sizes of each curve", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def markdown(report: dict) -> str:
    batches = report["batches"]
    lines = [
        f"Forward + backward time (ms) by batch size (P x 5, embeddings of size {report['dim']}), "
        f"{report['torch_threads']} torch thread(s); exponent a of time ~ B^a fitted over each curve's "
        f"largest {report['fit_points']} sizes (all sizes in brackets); '-' = above the loss's largest batch.",
        "",
        "| loss | " + " | ".join(str(b) for b in batches) + " | exponent | peak RSS increase at its largest batch (MiB) |",
        "|---|" + "---:|" * (len(batches) + 2),
    ]
    for name, curve in report["losses"].items():
        by_size = {p["size"]: p for p in curve["points"]}
        cells = " | ".join(f"{by_size[b]['seconds'] * 1e3:.2f}" if b in by_size else "-" for b in batches)
        last = curve["points"][-1]
        lines.append(f"| {reader_name(name)} | {cells} | {curve['slope']:.2f} ({curve['slope_all_points']:.2f}) "
                     f"| {last['peak_rss_increase_mib']:.0f} |")
    curve = report["evaluation"]["evaluate"]
    lines += [
        "",
        f"`dmlutils.metrics.evaluate` (Recall@1-32, MAP@R, R-precision) of n embeddings against each other, "
        f"classes of {EVAL_CLASS_SIZE}: exponent {curve['slope']:.2f} over the largest {report['fit_points']} "
        f"sizes ({curve['slope_all_points']:.2f} over all).",
        "",
        "| gallery n | seconds | peak RSS increase (MiB) | R@1 |",
        "|---:|---:|---:|---:|",
    ]
    for p in curve["points"]:
        lines.append(f"| {p['size']:,} | {p['seconds']:.3f} | {p['peak_rss_increase_mib']:.0f} | {p['recall@1']:.3f} |")
    return "\n".join(lines)


def parse_max_batch(pairs) -> dict:
    limits = dict(DEFAULT_MAX_BATCH)
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or name not in LOSSES or not value.isdigit():
            raise ValueError(f"--max-batch expects loss=size with a loss of {sorted(LOSSES)}, got {pair!r}")
        limits[name] = int(value)
    return limits


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
    parser.add_argument("--plot", type=Path, help="write the log-log plot (PNG) here")
    parser.add_argument("--small", action="store_true", help="tiny sizes: checks the code runs (seconds)")
    parser.add_argument("--losses", default="all", help="comma-separated losses, or 'all'")
    parser.add_argument("--max-batch", nargs="*", default=[], metavar="LOSS=SIZE",
                        help=f"largest batch per loss (default: {DEFAULT_MAX_BATCH}); 0 = no limit")
    parser.add_argument("--fit-points", type=int, default=4, help="fit each exponent over this many largest sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    try:
        max_batch = {k: v for k, v in parse_max_batch(args.max_batch).items() if v > 0}
    except ValueError as error:
        parser.error(str(error))
    names = sorted(LOSSES) if args.losses == "all" else [n.strip() for n in args.losses.split(",") if n.strip()]
    if not names or set(names) - set(LOSSES):
        parser.error(f"--losses must name some of {sorted(LOSSES)} or 'all', got {args.losses!r}")
    if args.fit_points < 2:
        parser.error("--fit-points must be at least 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = SMALL if args.small else FULL
    torch.manual_seed(0)
    report = {
        "benchmark": "cost growth: loss time vs batch size, evaluation time vs gallery size",
        "small": args.small,
        "torch_threads": torch.get_num_threads(),
        "dim": sizes["dim"],
        "batches": sizes["batches"],
        "galleries": sizes["galleries"],
        "fit_points": args.fit_points,
        "losses": loss_growth(names, sizes["batches"], sizes["dim"], sizes["min_run_time"], max_batch),
        "memory_probe": "peak RSS above the start of one call (VmHWM after clear_refs), in a separate "
                        f"process with {MEMORY_WORKER_ENV}",
    }
    measured = run_memory_worker({**sizes, "losses": names, "max_batch": max_batch, "threads": torch.get_num_threads()})
    for name, curve in report["losses"].items():
        for point in curve["points"]:
            point["peak_rss_increase_mib"] = measured["loss_memory"][name][str(point["size"])]
    report["evaluation"] = measured["evaluation"]
    add_fits(report["losses"], args.fit_points)
    add_fits(report["evaluation"], args.fit_points)
    print(markdown(report))
    if args.out:
        write_json_atomically(args.out, report)
    if args.plot:
        plot(report, args.plot)
    return report


if __name__ == "__main__":
    main()
