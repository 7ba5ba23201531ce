"""Decode + augment throughput of the CUB loader, in images per second.

For the cpu profile's pipeline (EfficientNet-Lite0: 224-px crops of the 160-px copy
resized to 256) and the paper's (BN-Inception: 227-px crops of 256), each at its
profile's sizes, with 0, 1 and 2 DataLoader workers. Times a full pass over an evenly spread subset of the training split, after
reading the files once so that the disk cache does not favour later rows. Worker
start-up is included (it is part of every epoch unless persistent_workers=True).
Workers run torch with one thread each; without workers the transforms run in the
main process, measured with one thread and with the process's default thread count.

    python benchmarks/bench_data.py [--root DIR] [--small] [--out results/bench_data.json]

Prints a markdown table and writes the numbers as JSON to --out (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dmlutils.data import CUB200, get_transforms  # noqa: E402
from dmlutils.profiles import PROFILES  # noqa: E402

# (profile, transform pipeline) pairs measured, at the profile's resize and crop sizes.
PIPELINES = (("cpu", "efficientnet_lite0"), ("paper", "bninception"))
ROW_KEYS = ("profile", "pipeline", "crop", "workers", "threads", "images", "seconds", "images_per_s")


def run_benchmark(
    root: str | None = None,
    num_images: int = 512,
    workers: tuple[int, ...] = (0, 1, 2),
    batch_size: int = 32,
    pipelines: tuple[tuple[str, str], ...] = PIPELINES,
) -> dict:
    """Time decode + train-time augmentation; returns the settings and one row per measurement."""
    dataset = CUB200(root=root, split="train")
    count = min(num_images, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()
    for i in indices:  # warm the page cache: measure decoding, not the disk
        Path(dataset.paths[i]).read_bytes()
    rows = []
    default_threads = torch.get_num_threads()
    try:
        for profile, pipeline in pipelines:
            settings = PROFILES[profile]
            crop = settings["image_size"]
            dataset.transform = get_transforms(pipeline, train=True, resize=settings["resize_size"], crop=crop)
            for num_workers in workers:
                # DataLoader workers run torch with one thread each; without workers the
                # transforms run in this process with its thread count -- measured both ways,
                # since small-tensor ops can be slower with more threads on a busy machine.
                thread_counts = sorted({1, default_threads}) if num_workers == 0 else [1]
                for threads in thread_counts:
                    torch.set_num_threads(threads if num_workers == 0 else default_threads)
                    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
                    start = time.perf_counter()
                    seen = sum(len(labels) for _, labels in loader)
                    seconds = time.perf_counter() - start
                    rows.append(
                        {
                            "profile": profile,
                            "pipeline": pipeline,
                            "crop": int(crop),
                            "workers": num_workers,
                            "threads": threads,
                            "images": seen,
                            "seconds": round(seconds, 4),
                            "images_per_s": round(seen / seconds, 1),
                        }
                    )
    finally:
        torch.set_num_threads(default_threads)
    return {
        "benchmark": "data: decode + train augmentation",
        "root": str(dataset.root),
        "num_images": count,
        "batch_size": batch_size,
        "cpu_count": os.cpu_count(),
        "torch_threads": default_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }


def markdown_table(result: dict) -> str:
    lines = [
        "| profile | pipeline | crop | workers | torch threads per loading process | images | seconds | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['profile']} | {row['pipeline']} | {row['crop']} | {row['workers']} | {row['threads']} | "
            f"{row['images']} | {row['seconds']:.2f} | {row['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def write_json_atomically(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="data root holding CUB_200_2011/ (default: $DML_DATA, else ./data)")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--small", action="store_true", help="a quick run on 64 images")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("results/bench_data.json"))
    args = parser.parse_args(argv)
    result = run_benchmark(
        root=args.root,
        num_images=64 if args.small else args.num_images,
        workers=tuple(args.workers),
        batch_size=args.batch_size,
    )
    print(markdown_table(result))
    write_json_atomically(result, args.out)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
