"""The untrained baseline (the pretrained backbone's pooled features: the floor every loss
must beat) and building a run's activation cache ahead of the run."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..cache import activation_cache, activation_cache_path
from ..profiles import PROFILE_VERSIONS
from ..provenance import code_version, environment, write_json
from . import allocator
from .build import build_backbone, build_datasets, build_model, default_device, evaluated_on, hold_out_validation
from .checkpoint import RECORD_VERSION, now
from .evaluation import embed, test_metrics


def prepare_cache(config: dict, root=None, progress: bool = True) -> Path:
    """Build (or find) the activation cache a run of `config` reads, ahead of the run: on a
    core that would otherwise wait, while other runs train. Returns the cache's path."""
    if not config["cache_views"]:
        raise ValueError("this config trains on images (cache_views=0): it has no activation cache to build")
    train_set, test_set = build_datasets(config, root)
    activation_cache(config, build_model(config), train_set, test_set, progress)
    return activation_cache_path(config, train_set, test_set)


def baseline(config: dict, root=None, record_path=None, device=None, progress: bool = True) -> dict:
    """The pretrained backbone's globally pooled features, no metric learning: the floor."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cpu":
        allocator.keep_freed_memory()
    train_set, test_set = build_datasets(config, root)
    if config["validation_classes"]:
        test_set = hold_out_validation(config, train_set, root)[1]
    from ..models import EmbeddingModel

    backbone = build_backbone(config)
    weights_source = getattr(backbone, "weights_source", None)
    if hasattr(backbone, "fold_batchnorm"):  # frozen: BatchNorm folded into the convolutions (same function, faster)
        backbone = backbone.fold_batchnorm()
    model = EmbeddingModel(backbone, embedding_dim=None, pooling=config["pooling"], freeze_bn=True).to(device)
    model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    embeddings = embed(model, test_set, config, device, progress=progress)
    metrics = test_metrics(embeddings, np.asarray(test_set.labels), config["eval_ks"])
    record = {
        "record_version": RECORD_VERSION,
        "kind": "baseline",
        "profile": config["profile"],
        "profile_version": PROFILE_VERSIONS[config["profile"]],
        "loss": None,
        "description": f"{config['backbone']} ImageNet features, global {config['pooling']} pooling, no training",
        "seed": config["seed"],
        "config": config,
        "git": code_version(),
        "device": str(device),
        "environment": {**environment(), "allocator": allocator.describe()},
        "data": {"test": test_set.fingerprint()},
        "evaluated_on": evaluated_on(config, test_set),
        "wall_time_seconds": time.perf_counter() - t0,
        "finished": now(),
        "evaluations": [{"iteration": 0, "train_loss": None, "metrics": metrics}],
        "final": {"iteration": 0, **metrics},
    }
    if weights_source:
        record["backbone_weights"] = weights_source
    if record_path is not None:
        if not config["validation_classes"]:  # its pictures, W under MS at its defaults: what training starts from
            from ..losses import get_loss
            from ..pictures import make_pictures, write_pictures

            write_pictures(record_path, make_pictures(record, test_set, embeddings, None, get_loss("multi_similarity"),
                                                      loss_name="multi_similarity (default settings; no training)"))
        write_json(Path(record_path), record)
    return record
