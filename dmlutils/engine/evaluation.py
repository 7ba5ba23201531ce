"""Evaluation: embed an evaluation set with the model, then its retrieval metrics."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from ..metrics import evaluate
from .build import autocast


@torch.no_grad()
def embed(model: nn.Module, source, config: dict, device, cached_block: int | None = None, progress=False) -> torch.Tensor:
    """Embeddings of a data set of images, or of a tensor of cached activations."""
    model.eval()
    out = []
    bs = config["eval_batch_size"]
    if isinstance(source, torch.Tensor):
        for start in range(0, len(source), bs):
            x = source[start : start + bs].to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            out.append(model.forward_from_block(x, cached_block).float().cpu())
    else:
        # Small channels-last batches run several times faster on CPU than one large one.
        pin = bool(config.get("pin_memory")) and torch.device(device).type == "cuda"
        loader = DataLoader(source, batch_size=min(bs, 32), shuffle=False, num_workers=max(1, config["num_workers"]), pin_memory=pin)
        for images, _ in tqdm(loader, desc="embed", leave=False, disable=not progress):
            images = images.to(device, non_blocking=pin).contiguous(memory_format=torch.channels_last)
            with autocast(config, device):
                out.append(model(images).float().cpu())
    return torch.cat(out)


def test_metrics(embeddings: torch.Tensor, labels, ks) -> dict:
    """Recall@K, precision@1, R-precision and MAP@R of the test set against itself."""
    metrics = evaluate(embeddings, labels, ks=tuple(ks), include_nmi=False, progress=False)
    return {k: float(v) for k, v in metrics.items()}
