"""Benchmark of dmlutils.metrics: time and peak memory against faiss and scikit-learn.

Two synthetic cases of Gaussian class clusters on the unit sphere:

* ``sop_like``: 60,502 x 512, 11,316 classes of 5-6 (Stanford Online Products' test
  set), Recall@{1,10,100,1000} + MAP@R / R-precision / P@1;
* ``cub_like``: 11,000 x 512, 200 classes of 55 (about CUB-200-2011's size),
  Recall@{1,2,4,8,16,32} + the same.

Cluster spreads are set per case so that the metrics are neither 0 nor 1 (R@1 about
0.95 and 0.83); timing hardly depends on them.

Each method runs in its own subprocess on the same embeddings (saved once as .npy),
so its peak memory is its own: the worker resets the kernel's peak-RSS mark
(/proc/self/clear_refs) after loading the data, and reports the peak RSS during the
evaluation minus the RSS before it (the evaluation's own working memory), beside the
process's absolute peak. Falls back to the increase of ru_maxrss where clear_refs is
unavailable. Methods:

* ``ours``    dmlutils.metrics.evaluate (chunked torch matmul + topk), no NMI;
* ``faiss``   faiss IndexFlatIP (exact) on L2-normalised copies, searched in blocks
              of 8,192 queries for max(K, R) + 1 neighbours, self dropped, then the
              same metric code (retrieval_metrics_from_neighbours);
* ``sklearn`` NearestNeighbors(algorithm="brute", metric="cosine"), cub_like only.

Methods run interleaved ``--repeats`` times; the fastest time and the largest memory
are reported, with ratios ours / reference from the same run. The machine is shared,
so times carry noise; ratios are the meaningful numbers.

    python benchmarks/bench_metrics.py --out results/bench_metrics.json
    python benchmarks/bench_metrics.py --small --out /tmp/bench.json   # seconds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import _status_kib  # noqa: E402  (benchmarks/ is the script's folder)

REPO = Path(__file__).resolve().parents[1]

FULL_CASES = [
    {"name": "sop_like", "n": 60_502, "dim": 512, "classes": 11_316, "ks": [1, 10, 100, 1000],
     "noise": 2.0, "references": ["faiss"]},
    {"name": "cub_like", "n": 11_000, "dim": 512, "classes": 200, "ks": [1, 2, 4, 8, 16, 32],
     "noise": 3.0, "references": ["faiss", "sklearn"]},
]
SMALL_CASES = [
    {"name": "sop_like", "n": 2_000, "dim": 64, "classes": 374, "ks": [1, 10, 100, 1000],
     "noise": 1.5, "references": ["faiss"]},
    {"name": "cub_like", "n": 800, "dim": 64, "classes": 16, "ks": [1, 2, 4, 8, 16, 32],
     "noise": 1.5, "references": ["faiss", "sklearn"]},
]
FAISS_QUERY_BLOCK = 8_192
MIB = 2**20


# ------------------------------------------------------------------------- data


def clustered_sphere(n: int, dim: int, num_classes: int, noise: float, seed: int):
    """Unit vectors around random class centres; classes of n // C or n // C + 1.

    Sample = normalise(centre + noise * g / sqrt(dim)), g standard normal, so the
    expected cosine to its own centre is about 1 / sqrt(1 + noise^2).
    """
    rng = np.random.default_rng(seed)
    sizes = np.full(num_classes, n // num_classes)
    sizes[: n % num_classes] += 1
    labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    embeddings = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # blocks keep the generator's temporaries small
        stop = min(start + 8192, n)
        block = centres[labels[start:stop]]
        block += (noise / np.sqrt(dim)) * rng.standard_normal((stop - start, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        embeddings[start:stop] = block
    return embeddings, labels.astype(np.int64)


# ------------------------------------------------------------------ memory probes


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- methods


def _num_relevant(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels)[labels] - 1


def run_ours(embeddings, labels, ks, memory_budget_bytes):
    from dmlutils.metrics import evaluate

    return evaluate(
        embeddings, labels, ks, include_nmi=False, progress=False,
        memory_budget_bytes=memory_budget_bytes,
    )


def _drop_self(indices: np.ndarray, first_query: int, keep: int) -> np.ndarray:
    """Remove each query's own index from its neighbour row (or the last, if absent)."""
    own = indices == (first_query + np.arange(len(indices)))[:, None]
    missing = ~own.any(axis=1)
    own[missing, -1] = True  # a tie pushed self out: drop the farthest instead
    return indices[~own].reshape(len(indices), -1)[:, :keep]


def _blockwise_metrics(search, labels, ks, keep):
    """Apply `search(start, stop) -> neighbour indices incl. self` block by block and
    combine the per-block metrics into overall means (weighted like the definitions)."""
    from dmlutils.metrics import retrieval_metrics_from_neighbours

    num_relevant = _num_relevant(labels)
    sums: dict[str, float] = {}
    for start in range(0, len(labels), FAISS_QUERY_BLOCK):
        stop = min(start + FAISS_QUERY_BLOCK, len(labels))
        neighbours = _drop_self(search(start, stop), start, keep)
        block = retrieval_metrics_from_neighbours(
            labels[neighbours], labels[start:stop], num_relevant[start:stop], ks
        )
        weights = {"all": stop - start, "relevant": int((num_relevant[start:stop] > 0).sum())}
        for name, value in block.items():
            weight = weights["all"] if name.startswith("recall@") else weights["relevant"]
            if weight:
                sums[name] = sums.get(name, 0.0) + value * weight
    total, relevant = len(labels), int((num_relevant > 0).sum())
    return {
        name: value / (total if name.startswith("recall@") else relevant)
        for name, value in sums.items()
    }


def run_faiss(embeddings, labels, ks, memory_budget_bytes):
    import faiss

    keep = max(max(ks), int(_num_relevant(labels).max()))
    unit = np.array(embeddings, dtype=np.float32, copy=True)
    faiss.normalize_L2(unit)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    return _blockwise_metrics(
        lambda start, stop: index.search(unit[start:stop], keep + 1)[1], labels, ks, keep
    )


def run_sklearn(embeddings, labels, ks, memory_budget_bytes):
    from sklearn.neighbors import NearestNeighbors

    keep = max(max(ks), int(_num_relevant(labels).max()))
    search = NearestNeighbors(n_neighbors=keep + 1, algorithm="brute", metric="cosine")
    search.fit(embeddings)
    return _blockwise_metrics(
        lambda start, stop: search.kneighbors(embeddings[start:stop], return_distance=False),
        labels, ks, keep,
    )


METHODS = {"ours": run_ours, "faiss": run_faiss, "sklearn": run_sklearn}


def worker(method: str, data_dir: Path, ks: list[int], memory_budget_bytes: int) -> dict:
    """Run one method in this (fresh) process and return time and memory."""
    import gc

    # Import the method's libraries before the baseline so that they are not counted.
    if method == "ours":
        import torch  # noqa: F401

        import dmlutils.metrics  # noqa: F401
    elif method == "faiss":
        import faiss  # noqa: F401
    import dmlutils.metrics  # noqa: F401,F811  (metric code used by every method)

    embeddings = np.load(data_dir / "embeddings.npy")
    labels = np.load(data_dir / "labels.npy")
    gc.collect()
    rss_before = _status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak_rss()
    start = time.perf_counter()
    result = METHODS[method](embeddings, labels, ks, memory_budget_bytes)
    seconds = time.perf_counter() - start
    if reset and rss_before is not None:
        peak = _status_kib("VmHWM")
        increase = peak - rss_before
        probe = "VmHWM after clear_refs"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        increase = peak - maxrss_before
        probe = "ru_maxrss difference"
    return {
        "seconds": seconds,
        "peak_rss_mib": peak / 1024,
        "peak_rss_increase_mib": max(increase, 0) / 1024,
        "memory_probe": probe,
        "metrics": result,
    }


# ---------------------------------------------------------------------- driver


def run_in_subprocess(method, data_dir, ks, memory_budget_bytes) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", method,
        "--data-dir", str(data_dir), "--ks", ",".join(map(str, ks)),
        "--memory-budget-mib", str(memory_budget_bytes / MIB),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {method} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_case(case, args, memory_budget_bytes) -> dict:
    from dmlutils.metrics import chunk_size_for_memory_budget

    noise = case["noise"] if args.noise is None else args.noise
    embeddings, labels = clustered_sphere(case["n"], case["dim"], case["classes"], noise, args.seed)
    methods = ["ours", *case["references"]]
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        data_dir = Path(tmp)
        np.save(data_dir / "embeddings.npy", embeddings)
        np.save(data_dir / "labels.npy", labels)
        del embeddings
        for repeat in range(args.repeats):
            for method in methods:  # interleaved, so load changes hit every method alike
                print(f"  {case['name']}: {method} (repeat {repeat + 1}/{args.repeats})", file=sys.stderr)
                run = run_in_subprocess(method, data_dir, case["ks"], memory_budget_bytes)
                best = runs.setdefault(method, {**run, "all_seconds": []})
                best["all_seconds"].append(run["seconds"])
                best["seconds"] = min(best["seconds"], run["seconds"])
                for key in ("peak_rss_mib", "peak_rss_increase_mib"):
                    best[key] = max(best[key], run[key])
    ratios = {}
    for reference in case["references"]:
        ratios[f"time_ours_over_{reference}"] = runs["ours"]["seconds"] / runs[reference]["seconds"]
        ratios[f"peak_rss_ours_over_{reference}"] = (
            runs["ours"]["peak_rss_increase_mib"] / max(runs[reference]["peak_rss_increase_mib"], 1e-9)
        )
        ratios[f"max_abs_metric_difference_vs_{reference}"] = max(
            abs(runs["ours"]["metrics"][name] - runs[reference]["metrics"][name])
            for name in runs["ours"]["metrics"]
        )
    num_neighbours = max(max(case["ks"]), int(np.bincount(labels).max()) - 1) + 1
    return {
        **case,
        "noise": noise,
        "chunk_size_ours": min(
            case["n"], chunk_size_for_memory_budget(case["n"], num_neighbours, memory_budget_bytes)
        ),
        "runs": runs,
        "ratios": ratios,
    }


def markdown_table(cases: list[dict]) -> str:
    lines = [
        "| case | n x dim | method | time (s) | peak RSS (MiB) | eval. RSS increase (MiB) "
        "| R@1 | MAP@R | time ours/ref | RSS increase ours/ref |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        for method, run in case["runs"].items():
            time_ratio = case["ratios"].get(f"time_ours_over_{method}")
            memory_ratio = case["ratios"].get(f"peak_rss_ours_over_{method}")
            lines.append(
                f"| {case['name']} | {case['n']:,} x {case['dim']} | {method} "
                f"| {run['seconds']:.2f} | {run['peak_rss_mib']:.0f} "
                f"| {run['peak_rss_increase_mib']:.0f} "
                f"| {run['metrics']['recall@1']:.4f} | {run['metrics']['map@r']:.4f} "
                f"| {'' if time_ratio is None else f'{time_ratio:.2f}'} "
                f"| {'' if memory_ratio is None else f'{memory_ratio:.2f}'} |"
            )
    return "\n".join(lines)


def write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, path)


def environment() -> dict:
    import faiss
    import sklearn
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON report here (atomically)")
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a quick check")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per method; fastest kept")
    parser.add_argument("--cases", default="sop_like,cub_like",
                        help="comma-separated subset of: sop_like, cub_like")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=None,
                        help="cluster spread for every case (see clustered_sphere; larger is "
                             "harder); default per case: R@1 about 0.95 on sop_like, 0.83 on cub_like")
    parser.add_argument("--memory-budget-mib", type=float, default=None,
                        help="chunk working-memory budget of ours (default: the library's)")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ks", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_budget_mib is None:
        sys.path.insert(0, str(REPO))
        from dmlutils.metrics import DEFAULT_MEMORY_BUDGET_BYTES

        memory_budget_bytes = DEFAULT_MEMORY_BUDGET_BYTES
    else:
        memory_budget_bytes = int(args.memory_budget_mib * MIB)
    if args.worker:
        ks = [int(k) for k in args.ks.split(",")]
        print(json.dumps(worker(args.worker, args.data_dir, ks, memory_budget_bytes)))
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    wanted = [name.strip() for name in args.cases.split(",") if name.strip()]
    known = [case["name"] for case in FULL_CASES]
    if not wanted or set(wanted) - set(known):
        parser.error(f"--cases must name some of {known}, got {args.cases!r}")

    sys.path.insert(0, str(REPO))
    cases = [
        run_case(case, args, memory_budget_bytes)
        for case in (SMALL_CASES if args.small else FULL_CASES)
        if case["name"] in wanted
    ]
    report = {
        "config": {
            "small": args.small,
            "repeats": args.repeats,
            "noise_override": args.noise,
            "seed": args.seed,
            "memory_budget_mib": memory_budget_bytes / MIB,
            "faiss_query_block": FAISS_QUERY_BLOCK,
            "environment": environment(),
        },
        "cases": cases,
    }
    print(markdown_table(cases))
    if args.out:
        write_json_atomically(args.out, report)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
