"""The engine's training step set up for timing: what the engine benchmarks share.

Built from the engine's public names only (build_model, build_loss, parameter_groups,
autocast). `training_step` is the body of the loop in `dmlutils.engine`'s training
function: forward under the profile's autocast, the loss on float32 embeddings outside
it, zero_grad, backward, Adam step. A benchmark times it with `common.time_calls` (on a
fixed batch) or `common.time_loop` (on the batches of a feeder, whose work then counts).
"""
from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dmlutils.engine import autocast, build_loss, build_model, parameter_groups  # noqa: E402
from dmlutils.profiles import make_config  # noqa: E402


def activation_shape(model, config) -> tuple[int, ...]:
    """(C, H, W) of the activation entering the cached block, for the profile's crop size."""
    size = config["image_size"]
    with torch.no_grad():
        return tuple(model.backbone.eval().forward_until_block(torch.zeros(1, 3, size, size), config["cache_from_block"]).shape[1:])


def trained_shape(model, config) -> tuple[int, ...]:
    """(C, H, W) of what the trained blocks see: the cached activation, cut to `feature_crop`."""
    shape = activation_shape(model, config)
    if config.get("feature_crop"):
        shape = (shape[0], config["feature_crop"], config["feature_crop"])
    return shape


def profile_model(profile: str = "cpu", loss: str = "multi_similarity", overrides=None, seed: int = 0):
    """(config, model) of a profile, the model built after seeding torch with `seed`."""
    config = make_config(profile, loss, overrides or {})
    torch.manual_seed(seed)
    return config, build_model(config)


class FromBlock(nn.Module):
    """The model's forward from block `block` on as a module (what the engine trains on cached
    activations; the engine's own wrapper exists for DDP and is private to it)."""

    def __init__(self, model: nn.Module, block: int):
        super().__init__()
        self.model, self.block = model, block

    def forward(self, activations):
        return self.model.forward_from_block(activations, self.block)


def step_parts(base_model, config, num_classes: int = 100, channels_last: bool = True, weight_decay: float = 0.0):
    """(model, loss, Adam) for a step: a copy of `base_model` (every variant starts from the
    same weights), the profile's loss, and Adam over the engine's parameter groups (the
    blocks before `cache_from_block` frozen when the profile caches, the ImageNet classifier
    always)."""
    model = copy.deepcopy(base_model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(config, num_classes, model.embedding_dim)
    optimizer = torch.optim.Adam(parameter_groups(model, loss_fn, config), lr=config["lr"], weight_decay=weight_decay)
    return model, loss_fn, optimizer


def training_step(module, loss_fn, optimizer, config: dict, device="cpu"):
    """step(inputs, labels) -> loss: one training step as the engine's loop runs it."""

    def step(inputs, labels):
        with autocast(config, device):
            embeddings = module(inputs)
        loss = loss_fn(embeddings.float(), labels)  # outside autocast, as in the engine
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def median_step(times: list[float]) -> dict:
    return {"steps": len(times), "seconds_per_step_median": statistics.median(times)}
