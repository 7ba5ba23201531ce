"""The engine benchmark's parts (benchmarks/bench_engine.py and its engine_*.py modules), without timing anything real.

The whole benchmark runs in tests/test_bench_suite.py (at its tiny size); here: the
timing helpers time what they say, the step helper is the engine's step, and the
benchmarks use only the engine's public names but for its feeder of cached activations.
"""
import ast
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import engine_steps  # noqa: E402

from dmlutils import engine  # noqa: E402
from dmlutils.losses import MultiSimilarityLoss  # noqa: E402

# Private engine names the benchmarks may use: none (the batch sources are public).
PRIVATE_ALLOWED: set[str] = set()


def engine_names_used() -> dict[str, set[str]]:
    """{module file: names it imports from dmlutils.engine} over benchmarks/*.py."""
    used = {}
    for path in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dmlutils.engine":
                used.setdefault(path.name, set()).update(a.name for a in node.names)
    return used


def test_benchmarks_import_public_engine_names_only():
    used = engine_names_used()
    assert used, "no benchmark imports dmlutils.engine: the parse looks in the wrong place"
    everything = set().union(*used.values())
    assert {name for name in everything if name.startswith("_")} <= PRIVATE_ALLOWED, used
    assert [name for name in everything if not hasattr(engine, name)] == []  # each still exists there
    assert {m for m, names in used.items() if names & PRIVATE_ALLOWED} <= {"engine_cached_step.py"}


def test_time_loop_counts_the_time_to_produce_each_batch():
    def batches():
        for i in range(4):
            time.sleep(0.02)  # a feeder's gather
            yield (i,)

    seen = []
    times = common.time_loop(batches(), lambda i: (seen.append(i), time.sleep(0.01)), warmup=1)
    assert seen == [0, 1, 2, 3] and len(times) == 3
    assert all(t >= 0.03 for t in times)
    calls = common.time_calls(lambda: time.sleep(0.01), count=2, warmup=1)
    assert len(calls) == 2 and all(t >= 0.01 for t in calls)


@pytest.mark.parametrize("amp, forward_dtype", [("off", torch.float32), ("bf16", torch.bfloat16)])
def test_training_step_is_the_engines_step(amp, forward_dtype):
    """Forward under the config's autocast (bf16 for a bf16 step), loss on float32
    embeddings, one Adam step that moves every trained parameter."""
    torch.manual_seed(0)
    module = torch.nn.Linear(8, 4)
    seen = {}
    module.register_forward_hook(lambda m, i, out: seen.update(dtype=out.dtype))
    loss_fn = MultiSimilarityLoss()
    losses = []
    loss_fn.register_forward_pre_hook(lambda m, args: losses.append(args[0].dtype))
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    step = engine_steps.training_step(module, loss_fn, optimizer, {"amp": amp})
    x, y = torch.randn(12, 8), torch.arange(3).repeat_interleave(4)
    loss = step(x, y)
    assert seen["dtype"] == forward_dtype and losses == [torch.float32] and loss.dtype == torch.float32
    assert float(loss.detach()) > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_forward_flops_counts_a_linear_layer():
    layer = torch.nn.Linear(16, 8, bias=False)
    assert common.forward_flops(layer, torch.randn(5, 16)) == 2 * 5 * 16 * 8


def test_the_run_record_summary_reads_the_committed_cpu_records_not_their_pictures():
    import engine_cache

    records = Path(__file__).resolve().parents[1] / "results" / "cpu"
    summary = engine_cache.from_run_records(records)
    import json

    count = sum(json.loads(p.read_text()).get("kind") == "train" for p in records.glob("*/seed_*.json") if not p.name.endswith(".pictures.json"))
    assert summary is not None and summary["records"] == count > 50  # the trained runs' records, each once
    assert summary["records_dir"] == "results/cpu" and summary["threads"] == [1]
