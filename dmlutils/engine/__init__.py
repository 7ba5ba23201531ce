"""The training engine, one module per job; this package re-exports what callers use.

    record = train(make_config("cpu", "multi_similarity"), run_dir="runs/cpu/multi_similarity")

* `build`      — a run's data sets, held-out validation classes, backbone, model, loss,
                 optimiser groups and learning-rate schedule;
* `sources`    — batch sources: cached activations (cpu), images through a DataLoader
                 (smoke, paper), images decoded once into memory (cpu_full);
* `loop`       — `train`: windows of steps between evaluations, checkpoints, Ctrl-C/SIGTERM;
* `checkpoint` — the record a run starts, its checkpoints, and resuming from one;
* `evaluation` — `embed` and `test_metrics`;
* `baseline`   — the untrained baseline, and building an activation cache ahead of a run;
* `allocator`  — glibc told to keep freed memory: a CPU step stops faulting its pages in again.

The activation cache itself lives in `dmlutils.cache`, the records' atomic writer and
provenance in `dmlutils.provenance`.

The run record (JSON, written atomically) holds the profile, loss, hyper-parameters, seed,
git commit, device, wall time, every evaluation and the final metrics.

Several processes (`torchrun --nproc_per_node N -m dmlutils train ...`, see
`dmlutils.distributed`): each computes its share of the global P x K batch, the loss sees
the gathered global batch, DDP averages the gradients, and the main process evaluates and
writes checkpoints and records. `xbm_size > 0` adds a cross-batch memory (`dmlutils.xbm`).
"""
from ..provenance import code_version, environment, write_json
from .baseline import baseline, prepare_cache
from .build import (
    AMP_DTYPES,
    autocast,
    build_backbone,
    build_datasets,
    build_loss,
    build_model,
    dataset_split,
    default_device,
    evaluated_on,
    evaluation_split_name,
    hold_out_validation,
    lr_factor,
    parameter_groups,
    trainable_parameters,
    validation_split,
)
from .checkpoint import RECORD_VERSION, OtherCodeCheckpoint
from .evaluation import embed, test_metrics
from .loop import MIN_FREE_BYTES, RunInterrupted, check_writable, mining_probe, train
from .sources import ActivationSource, DecodedImageSource, FromCachedBlock, ImageLoaderSource, make_source, pk_batches, step_generator

__all__ = [
    "AMP_DTYPES", "ActivationSource", "DecodedImageSource", "FromCachedBlock", "ImageLoaderSource", "MIN_FREE_BYTES", "OtherCodeCheckpoint",
    "RECORD_VERSION", "RunInterrupted", "autocast", "baseline", "build_backbone", "build_datasets", "build_loss",
    "build_model", "check_writable", "code_version", "dataset_split", "default_device", "embed", "environment",
    "evaluated_on", "evaluation_split_name", "hold_out_validation", "lr_factor", "make_source", "mining_probe",
    "parameter_groups", "pk_batches", "prepare_cache", "step_generator", "test_metrics", "train", "trainable_parameters",
    "validation_split", "write_json",
]
