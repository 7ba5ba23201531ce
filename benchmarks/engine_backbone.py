"""The whole-backbone online step of bench_engine's recipe comparison.

`time_online_step`: the bare step (forward + loss + backward + Adam, the engine's
`training_step`) of the MS loss on one fixed batch of 80 random "decoded" images at 224 px,
float32: what an online run of the whole backbone costs per step, quoted under the recipe
comparison of bench_engine's report (key `recipes.online_whole_backbone`), beside the
cached steps it is compared with.

The cpu_full profile's own benchmark, which times that step fed by the engine's
`DecodedImageSource` on real CUB images (the overhead ratio to the bare step, GFLOP/s,
float32 against bf16, one run on two threads against two side by side, the allocator), is
`bench_whole_backbone.py` (report: results/benchmarks/whole_backbone.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops, time_calls  # noqa: E402
from engine_steps import median_step, profile_model, step_parts, training_step  # noqa: E402

import torch  # noqa: E402

# The cpu profile turned into an online, whole-backbone run: 224-px crops, no cache, every block trained.
WHOLE_BACKBONE = {"image_size": 224, "resize_size": 256, "cache_views": 0, "cache_from_block": 0}


def decoded_batch(config: dict, size: int):
    """A P x K batch of random 'decoded' images (channels-last) and its labels."""
    images = torch.randn(config["p"] * config["k"], 3, size, size).contiguous(memory_format=torch.channels_last)
    return images, torch.arange(config["p"]).repeat_interleave(config["k"])


def whole_backbone_gflop(model, images) -> float:
    """GFLOP of one training step of the whole model on `images`: 3 x its forward."""
    return 3 * forward_flops(model.eval(), images) / 1e9


def time_online_step(steps: int, warmup: int, size: int = 224) -> dict:
    """One MS step that fine-tunes the whole EfficientNet-Lite0 on 80 images at 224 px (the
    paper's manner, no cache; images already decoded): the cost of a flagship online run."""
    config, base = profile_model("cpu", "multi_similarity", WHOLE_BACKBONE)
    model, loss_fn, optimizer = step_parts(base, config)
    images, labels = decoded_batch(config, size)
    model.train()
    step = training_step(model, loss_fn, optimizer, config)
    median = median_step(time_calls(lambda: step(images, labels), steps, warmup))["seconds_per_step_median"]
    return {"steps": steps, "image_size": size, "seconds_per_step_median": median,
            "step_gflop": whole_backbone_gflop(model, images), "projected_hours_per_1000_steps": 1000 * median / 3600}


def markdown_online(online: dict) -> list[str]:
    return ["", f"For comparison, one step that fine-tunes the whole backbone online on 80 images of {online['image_size']} px (the "
            f"paper's manner, no cache, decoding not counted): {online['seconds_per_step_median']:.1f} s on 1 thread, "
            f"{online['step_gflop']:.0f} GFLOP; 1,000 steps would take {online['projected_hours_per_1000_steps']:.1f} hours."]
