"""The engine fails early and loudly, and survives being killed."""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

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
    real = engine.loop.shutil.disk_usage
    monkeypatch.setattr(engine.loop.shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 2**20))
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


def _interrupt_at(monkeypatch, batch: int, signum=signal.SIGINT):
    """Deliver `signum` to this process while the source fetches batch number `batch` of the run."""
    fetch, fetched = engine.ImageLoaderSource.batches, [0]

    def batches(self, sampler, start, count):
        for x, y in fetch(self, sampler, start, count):
            fetched[0] += 1
            if fetched[0] == batch:
                signal.raise_signal(signum)
            yield x, y

    monkeypatch.setattr(engine.ImageLoaderSource, "batches", batches)


def test_ctrl_c_between_evaluations_checkpoints_that_step_and_the_resumed_record_is_the_uninterrupted_one(tmp_path, monkeypatch):
    reference = engine.train(smoke(eval_every=10), tmp_path / "reference", progress=False, device="cpu")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 14)
        with pytest.raises(engine.RunInterrupted, match="interrupted at step 14.*--resume"):
            engine.train(smoke(eval_every=10), tmp_path / "run", progress=False, device="cpu")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Python's own again
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 14 and len(state["window"]["losses"]) == 4  # steps 10-13 of the window 10-20
    resumed = engine.train(smoke(eval_every=10), tmp_path / "run", resume=True, record_path=tmp_path / "r.json", progress=False, device="cpu")
    assert resumed["resumed_at"] == [14] and resumed["final"] == reference["final"]
    assert [e["metrics"] for e in resumed["evaluations"]] == [e["metrics"] for e in reference["evaluations"]]
    assert [e["train_loss"] for e in resumed["evaluations"]] == [e["train_loss"] for e in reference["evaluations"]]
    assert [e.get("mining") for e in resumed["evaluations"]] == [e.get("mining") for e in reference["evaluations"]]


def test_sigterm_to_the_cli_checkpoints_prints_the_resume_command_and_that_command_finishes_the_run(tmp_path):
    settings = ["--set", "iterations=400", "--set", "eval_every=100"]
    reference = engine.train(make_config("smoke", "multi_similarity", {"iterations": 400, "eval_every": 100}), tmp_path / "reference",
                             progress=False, device="cpu")
    run_dir, record = tmp_path / "run", tmp_path / "record.json"
    argv = ["train", "--profile", "smoke", "--quiet", "--device", "cpu", "--run-dir", str(run_dir), "--record", str(record), *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "dmlutils", *argv], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():  # the evaluation at iteration 0 is written: training runs
        assert process.poll() is None and time.monotonic() < deadline, "the run ended or stalled before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr[-2000:]
    step = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 400 and f"interrupted at step {step} of 400" in stderr and not record.exists()
    command = stderr.split("Resume with:\n")[1].strip()
    assert command.startswith("python -m dmlutils train ") and command.endswith("--resume")
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    on_disk = json.loads(record.read_text())
    assert on_disk["resumed_at"] == [step] and on_disk["final"] == reference["final"]
    assert [e["train_loss"] for e in on_disk["evaluations"]] == [e["train_loss"] for e in reference["evaluations"]]


def test_a_checkpoint_of_other_code_resumes_with_a_warning_and_both_commits_or_is_refused(tmp_path):
    engine.train(smoke(), tmp_path / "run", stop_after=10, progress=False, device="cpu")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["record"]["git"] = {"commit": "0123456789ab" + "0" * 28, "dirty": False}
    torch.save(state, path)
    with pytest.raises(engine.OtherCodeCheckpoint, match="written by commit 0123456789ab.*delete that folder"):
        engine.train(smoke(), tmp_path / "run", resume=True, same_code=True, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="written by commit 0123456789ab.*will name both commits"):
        record = engine.train(smoke(), tmp_path / "run", resume=True, progress=False, device="cpu")
    assert [r["git"]["commit"][:12] for r in record["resumed_with"]] == ["0123456789ab", engine.code_version()["commit"][:12]]
    assert [r["iteration"] for r in record["resumed_with"]] == [0, 10] and record["git"]["commit"].startswith("0123456789ab")
