"""The activation cache of the cpu profile: how fast it is built, and what the runs recorded.

* `time_cache_build`: the engine's `activation_cache` itself (decode + augment in a
  DataLoader worker, the frozen BN-folded prefix, saving to a temporary $DML_CACHE) on an
  evenly spread subset of the real CUB images; the measured images/s gives the projected
  time for the full cache (views x 5,864 training + 5,924 test images). Skipped, with a
  note, when CUB is not found.
* `from_run_records`: the cache time and wall time stored in the cpu run records under
  results/cpu/ (made by `python -m dmlutils train`), quoted for comparison.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dmlutils.cache import activation_cache  # noqa: E402
from dmlutils.engine import build_datasets  # noqa: E402


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
    """Cache and wall times that `python -m dmlutils train` stored in the cpu records
    (`<records_dir>/<run>/seed_<n>.json`; not their pictures files)."""
    cache, per_iteration = [], []
    threads = set()
    for path in sorted(p for p in records_dir.glob("*/seed_*.json") if re.fullmatch(r"seed_\d+\.json", p.name)):
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


# ------------------------------------------------------------------------ markdown


def markdown_row(cb: dict) -> str:
    """The cache build's row of bench_engine's stage table."""
    if "skipped" in cb:
        return f"| cache build | | | | skipped: {cb['skipped']} |"
    return (
        f"| cache build (decode + augment + frozen prefix, {cb['views']} train views + test) | {cb['images']:,} "
        f"| {cb['seconds']:.1f} | {cb['images_per_s']:.1f} | full cache ({cb['full_cache_images']:,} images, "
        f"{cb['full_cache_bytes'] / 2**30:.2f} GiB): {cb['projected_full_cache_seconds'] / 60:.1f} min |"
    )


def markdown_run_records(records: dict) -> list[str]:
    cache_min = records["cache_seconds_median"]
    return [
        "",
        f"For comparison, the {records['records']} cpu run records in `{records['records_dir']}` "
        f"(threads {records['threads']}): cache built in "
        f"{'n/a' if cache_min is None else f'{cache_min / 60:.1f} min'}; whole run (training + evaluations) "
        f"{records['wall_seconds_per_iteration_median']:.2f} s per iteration (median; range "
        f"{records['wall_seconds_per_iteration_range'][0]:.2f}-{records['wall_seconds_per_iteration_range'][1]:.2f}).",
    ]
