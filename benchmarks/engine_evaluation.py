"""Evaluation of the cpu profile: embedding the cached test activations + the test metrics.

* `time_evaluation`: the engine's `embed` of the test images' cached activations and its
  `test_metrics` (Recall@K, MAP@R), as at each evaluation of a run; projected per run.
* `time_evaluation_modes`: the same embedding under no_grad (the engine's) and inference_mode.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dmlutils.engine import embed, test_metrics  # noqa: E402


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


def markdown_rows(ev: dict) -> list[str]:
    """The evaluation's rows of bench_engine's stage table."""
    return [
        f"| evaluation: embed cached test activations | {ev['test_images']:,} | {ev['embed_seconds']:.1f} "
        f"| {ev['test_images'] / ev['embed_seconds']:.0f} | |",
        f"| evaluation: Recall@K, MAP@R | {ev['test_images']:,} | {ev['metrics_seconds']:.1f} | | "
        f"{ev['evaluations_per_run']} evaluations per run: {ev['projected_evaluation_seconds_per_run'] / 60:.1f} min |",
    ]
