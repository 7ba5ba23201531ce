"""glibc told to keep freed memory: a step that allocates and frees large tensors stops
faulting its pages in again (dmlutils.engine.allocator)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dmlutils.engine import allocator

pytestmark = pytest.mark.skipif(not allocator.is_glibc(), reason="mallopt is glibc's")

# Allocate and free 64 MiB tensors, as a training step does with its activations; count the
# page faults of the rounds after the first (which may fault the heap in once).
ROUNDS = """
import resource, sys, torch
from dmlutils.engine import allocator
applied = allocator.keep_freed_memory()
def round_():
    kept = [torch.ones(16 * 2**20) for _ in range(4)]  # 4 x 64 MiB, written
    del kept
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, allocator.describe(), sep="|")
"""


def faults_of_five_rounds(switch: str) -> tuple[bool, int, str]:
    env = {**os.environ, allocator.ENVIRONMENT_SWITCH: switch}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True).stdout
    applied, faults, described = out.strip().splitlines()[-1].split("|")
    return applied == "True", int(faults), described


def test_kept_memory_is_reused_instead_of_faulted_in_again():
    applied, faults, described = faults_of_five_rounds("1")
    default_applied, default_faults, default_described = faults_of_five_rounds("0")
    pages = 5 * 4 * 64 * 2**20 // 4096  # every page of five rounds, had each been faulted in afresh
    assert applied and not default_applied
    assert default_faults > pages // 4  # glibc's defaults: the big blocks go back to the kernel and fault in again
    assert faults < pages // 10  # kept: the rounds after the first re-use the heap's pages
    assert "kept" in described and "defaults" in default_described


def test_it_is_idempotent_and_the_engine_applies_it_when_a_run_starts_on_the_cpu():
    import importlib
    import inspect

    from dmlutils.engine import loop

    baseline = importlib.import_module("dmlutils.engine.baseline")  # the package re-exports its function under the same name

    assert allocator.keep_freed_memory() == allocator.keep_freed_memory()
    assert "keep_freed_memory()" in inspect.getsource(loop.build_run)
    assert "keep_freed_memory()" in inspect.getsource(baseline.baseline)
