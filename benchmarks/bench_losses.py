"""Forward + backward time of the losses, as ratios measured in one process.

    python benchmarks/bench_losses.py                 # batch 80 x 512 (P=16, K=5), CPU
    python benchmarks/bench_losses.py --batch 80 1000 --out results/benchmarks/losses.json

For each batch size: our MultiSimilarityLoss vs the official per-anchor loop
(`dmlutils.losses.reference.multi_similarity_loop`) vs pytorch-metric-learning's
MultiSimilarityLoss + MultiSimilarityMiner, then all nine registered losses.
Times are the best (minimum) per-call time over the blocks of torch.utils.benchmark's
blocked_autorange: on a shared machine other processes only ever add time, so the
minimum is the least disturbed estimate (Python's timeit documentation makes the same
point). Ratios compare numbers from the same run, so they hold on any machine while
absolute times do not.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import benchmark

from dmlutils.names import loss_name as reader_name  # "Multi-Similarity", not the registry key
from dmlutils.losses import LOSSES, MultiSimilarityLoss, get_loss
from dmlutils.losses.reference import multi_similarity_loop


def pk_embeddings(batch: int, dim: int, k: int = 5, seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    p = batch // k
    labels = torch.arange(p).repeat_interleave(k)
    # Clustered like a half-trained model's batch, so MS mining keeps a realistic share of pairs.
    centres = torch.randn(p, dim, generator=g)
    embeddings = centres[labels] + 1.5 * torch.randn(p * k, dim, generator=g)
    return embeddings.to(device), labels.to(device)


def forward_backward_seconds(loss_fn, embeddings, labels, min_run_time: float) -> float:
    e = embeddings.clone().requires_grad_(True)

    def step():
        e.grad = None
        loss_fn(e, labels).backward()

    step()  # warm-up (allocations, lazy init)
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return min(measurement.times)


def ms_contenders(alpha=2.0, beta=40.0, lam=0.5, epsilon=0.1):
    contenders = {
        "ours (vectorised)": MultiSimilarityLoss(alpha, beta, lam, epsilon),
        "official per-anchor loop": lambda e, y: multi_similarity_loop(e, y, alpha, beta, lam, epsilon),
    }
    try:
        from pytorch_metric_learning.losses import MultiSimilarityLoss as PMLLoss
        from pytorch_metric_learning.miners import MultiSimilarityMiner

        pml_loss, miner = PMLLoss(alpha=alpha, beta=beta, base=lam), MultiSimilarityMiner(epsilon=epsilon)
        contenders["pytorch-metric-learning loss + miner"] = lambda e, y: pml_loss(e, y, miner(e, y))
    except ImportError:  # PML is a dev dependency; the benchmark still runs without it
        pass
    return contenders


def build_loss(name: str, num_classes: int, dim: int):
    if name == "triplet_center":
        return get_loss(name, num_classes=num_classes, embedding_dim=dim)
    return get_loss(name)


def run(batches=(80,), dim=512, device="cpu", min_run_time=1.0, skip_loop_above=2000) -> dict:
    torch.manual_seed(0)
    report = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "dim": dim,
        "load_average_before": os.getloadavg(),
        "multi_similarity": {},
        "all_losses": {},
    }
    for batch in batches:
        embeddings, labels = pk_embeddings(batch, dim, device=device)
        ms = {}
        for label, fn in ms_contenders().items():
            if "loop" in label and batch > skip_loop_above:
                continue
            ms[label] = forward_backward_seconds(fn, embeddings, labels, min_run_time)
        ours = ms["ours (vectorised)"]
        report["multi_similarity"][str(batch)] = {
            "seconds": ms,
            "speed-up vs": {k: v / ours for k, v in ms.items() if k != "ours (vectorised)"},
        }
        report["all_losses"][str(batch)] = {
            name: forward_backward_seconds(
                build_loss(name, int(labels.max()) + 1, dim).to(device), embeddings, labels, min_run_time
            )
            for name in sorted(LOSSES)
        }
    report["load_average_after"] = os.getloadavg()
    return report


def markdown(report: dict) -> str:
    lines = [
        f"Forward + backward on {report['device']} ({report['threads']} threads, torch {report['torch']}), "
        f"embeddings of size {report['dim']}, P x K batches with K = 5; best time per call. "
        f"Load average before / after: {report['load_average_before'][0]:.1f} / {report['load_average_after'][0]:.1f} "
        "(other work on the machine slows every contender; the ratios are from one run).",
        "",
        "| batch | contender | time (ms) | ours is faster by |",
        "|---|---|---|---|",
    ]
    for batch, entry in report["multi_similarity"].items():
        for label, seconds in entry["seconds"].items():
            ratio = entry["speed-up vs"].get(label)
            lines.append(f"| {batch} | {label} | {seconds * 1e3:.2f} | {'' if ratio is None else f'{ratio:.1f}x'} |")
    lines += ["", "| loss | " + " | ".join(f"batch {b} (ms)" for b in report["all_losses"]) + " |"]
    lines.append("|---|" + "---|" * len(report["all_losses"]))
    names = sorted(next(iter(report["all_losses"].values())))
    for name in names:
        cells = " | ".join(
            "skipped (memory)" if report["all_losses"][b][name] is None else f"{report['all_losses'][b][name] * 1e3:.2f}"
            for b in report["all_losses"]
        )
        lines.append(f"| {reader_name(name)} | {cells} |")
    return "\n".join(lines)


def write_json_atomically(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2)
    os.replace(f.name, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[80], help="batch sizes (P x 5)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the JSON report (and a .md table beside it) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.batch, args.dim, args.device, args.min_run_time)
    print(markdown(report))
    if args.out:
        write_json_atomically(report, args.out)
        args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    return report


if __name__ == "__main__":
    main()
