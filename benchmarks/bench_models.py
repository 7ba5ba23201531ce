"""CPU speed of EfficientNet-Lite0, the cpu profile's backbone.

Measures
1. forward images/s (ImageNet logits, inference mode) at 144 and 224 px, batch
   1 / 8 / 32, with and without channels_last memory format and BatchNorm folded
   into the convolutions;
2. the time to compute the activations entering block 8 and block 11 (what the
   cpu profile caches once before fine-tuning the later blocks) for N images at the
   cpu profile's input size.

Prints a Markdown table; `--out file.json` also writes every number with the
environment it was measured in. `--small` runs a seconds-long version (tiny images,
few repetitions) that only shows the script works.

    python benchmarks/bench_models.py --out results/bench_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from dmlutils.models.efficientnet_lite import efficientnet_lite0  # noqa: E402
from dmlutils.profiles import PROFILES  # noqa: E402


def images_per_second(model, batch: torch.Tensor, min_seconds: float,
                      min_repeats: int, warmup: int) -> tuple[float, float]:
    """(images/s of the median call, images/s of the fastest call).

    The cores of a shared machine are often busy with other work; the median is
    the typical speed under that load, the fastest call is the better estimate of
    the speed on idle cores (the usual `timeit` reasoning).
    """
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        start = time.perf_counter()
        while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - t0)
    return batch.shape[0] / statistics.median(times), batch.shape[0] / min(times)


def prepare(model, batch, channels_last: bool, folded: bool):
    model = model.fold_batchnorm() if folded else model
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    return model.eval(), batch


def bench_forward(base, sizes, batch_sizes, min_seconds, min_repeats, warmup):
    rows = []
    for size in sizes:
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, size, size)
            for folded in (False, True):
                for channels_last in (False, True):
                    model, batch = prepare(base, images, channels_last, folded)
                    median, best = images_per_second(model, batch, min_seconds,
                                                     min_repeats, warmup)
                    rows.append({"size": size, "batch": batch_size,
                                 "channels_last": channels_last, "folded_bn": folded,
                                 "images_per_s": median, "images_per_s_best": best})
                    print(f"  forward {size}px batch {batch_size:>2} "
                          f"folded={folded!s:5} channels_last={channels_last!s:5} "
                          f"median {median:7.1f} img/s, best {best:7.1f}", file=sys.stderr)
    return rows


def bench_cache(base, size, blocks, n_images, batch_size):
    """Seconds to compute the activations entering each block for n_images."""
    model, _ = prepare(base, torch.zeros(1, 3, 1, 1), channels_last=True, folded=True)
    images = torch.randn(n_images, 3, size, size)
    rows = []
    for block in blocks:
        with torch.inference_mode():
            model.forward_until_block(images[:batch_size].contiguous(
                memory_format=torch.channels_last), block)  # warm-up
            start = time.perf_counter()
            shape = None
            for i in range(0, n_images, batch_size):
                chunk = images[i:i + batch_size].contiguous(memory_format=torch.channels_last)
                shape = tuple(model.forward_until_block(chunk, block).shape[1:])
            seconds = time.perf_counter() - start
        rows.append({"size": size, "block": block, "n_images": n_images,
                     "batch": batch_size, "seconds": seconds,
                     "images_per_s": n_images / seconds, "activation_shape": shape})
        print(f"  cache block {block} at {size}px: {n_images} images in {seconds:.2f} s",
              file=sys.stderr)
    return rows


def markdown(result) -> str:
    lines = ["| size | batch | BN | memory format | images/s (median) | images/s (best) |",
             "|---:|---:|---|---|---:|---:|"]
    for r in result["forward"]:
        lines.append(f"| {r['size']} | {r['batch']} | "
                     f"{'folded' if r['folded_bn'] else 'separate'} | "
                     f"{'channels_last' if r['channels_last'] else 'contiguous'} | "
                     f"{r['images_per_s']:.1f} | {r['images_per_s_best']:.1f} |")
    lines += ["", "| activations entering | size | images | seconds | images/s | shape |",
              "|---|---:|---:|---:|---:|---|"]
    for r in result["cache"]:
        lines.append(f"| block {r['block']} | {r['size']} | {r['n_images']} | "
                     f"{r['seconds']:.2f} | {r['images_per_s']:.1f} | "
                     f"{'x'.join(map(str, r['activation_shape']))} |")
    env = result["environment"]
    lines += ["", f"torch {env['torch']}, {env['threads']} threads on "
                  f"{env['cpu_count']} CPUs; 1-minute load average "
                  f"{env['load_average'][0]} before the run, "
                  f"{result['load_average_after'][0]} after (above the thread count "
                  f"means other processes shared the cores: wall-clock rates are low)"]
    return "\n".join(lines)


def write_json_atomically(data, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="tiny sizes and few repetitions: checks the script runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[144, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="minimum timed seconds per forward configuration")
    parser.add_argument("--cache-images", type=int, default=256,
                        help="images whose block-8/11 activations are timed")
    parser.add_argument("--cache-size", type=int, default=PROFILES["cpu"]["image_size"],
                        help="input side for the activation timing (default: the cpu profile's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.small:
        args.sizes, args.batches, args.seconds = [32], [1, 2], 0.0
        args.cache_images, args.cache_size = 4, 32
    min_repeats, warmup = (1, 1) if args.small else (3, 2)

    base = efficientnet_lite0(pretrained=True).eval()
    result = {
        "benchmark": "efficientnet_lite0 cpu forward",
        "small": args.small,
        "environment": {
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "forward": bench_forward(base, args.sizes, args.batches, args.seconds,
                                 min_repeats, warmup),
        "cache": bench_cache(base, args.cache_size, (8, 11), args.cache_images,
                             batch_size=min(8, args.cache_images)),
    }
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown(result))
    if args.out:
        write_json_atomically(result, args.out)
    return result


if __name__ == "__main__":
    main()
