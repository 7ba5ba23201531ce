"""The engine fails early and loudly, and survives being killed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from dmlutils import engine
from dmlutils.profiles import make_config


def smoke(**overrides):
    return make_config("smoke", "multi_similarity", {"iterations": 40, "eval_every": 5, **overrides})


def test_an_unwritable_results_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match="cannot write the run record to .*results/smoke"):
        engine.train(smoke(), tmp_path / "run", record_path=blocker / "smoke" / "r.json", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing trained


def test_a_full_disk_fails_before_training(tmp_path, monkeypatch):
    real = engine.shutil.disk_usage
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 2**20))
    with pytest.raises(OSError, match="only 10 MiB free on the disk of .*checkpoints go; a run needs at least 256 MiB"):
        engine.train(smoke(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


TRAIN = """
import sys
from dmlutils import engine
from dmlutils.profiles import make_config
config = make_config("smoke", "multi_similarity", {"iterations": 40, "eval_every": 5})
engine.train(config, sys.argv[1], resume=True, record_path=sys.argv[2], progress=False, device="cpu")
"""


def test_sigkill_at_a_random_moment_then_resume_gives_the_identical_record(tmp_path):
    reference = engine.train(smoke(), tmp_path / "reference", progress=False, device="cpu")
    run_dir, record = tmp_path / "killed", tmp_path / "killed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", TRAIN, str(run_dir), str(record)], env=env)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():  # training has started: its first checkpoint is on disk
        assert process.poll() is None and time.monotonic() < deadline, "the run ended or stalled before its first checkpoint"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in the run: mid-step, mid-evaluation or mid-write
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not record.exists() or process.returncode == 0  # a killed run leaves no half-written record
    resumed = engine.train(smoke(), run_dir, resume=True, record_path=record, progress=False, device="cpu")
    on_disk = json.loads(record.read_text())
    assert on_disk["final"] == reference["final"] == resumed["final"]
    assert [e["metrics"] for e in on_disk["evaluations"]] == [e["metrics"] for e in reference["evaluations"]]
    assert [e["train_loss"] for e in on_disk["evaluations"]] == [e["train_loss"] for e in reference["evaluations"]]
