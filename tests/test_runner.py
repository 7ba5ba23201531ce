"""dmlutils.runner: side-by-side runs do not outlive the runner that started them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmlutils.runner import Job, run_jobs

RUNNER = """
import sys
from pathlib import Path
from dmlutils.profiles import make_config
from dmlutils.runner import Job, run_jobs
out = Path(sys.argv[1])
config = make_config("smoke", "multi_similarity", {"iterations": 100000, "eval_every": 100000})
run_jobs([Job(f"long {i}", {**config, "seed": i}, out / f"{i}.json", out / f"run{i}") for i in range(2)], processes=2, progress=False)
"""


def _children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_runner_is_killed(tmp_path):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2:
            time.sleep(1)
            workers = [p for p in _children(runner.pid) if _is_worker(p)]
        assert len(workers) >= 2, "the runner did not start its two workers"
        time.sleep(1)  # kill it early: a worker may still be importing torch
        runner.send_signal(signal.SIGKILL)  # no clean-up in the runner at all
        runner.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.5)
        assert not any(_alive(p) for p in workers), "a worker outlived the runner"
    finally:  # nothing left behind, whatever happened
        runner.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_silenced_runner_prints_nothing_and_tells_echo(tmp_path, capsys):
    # A chapter runs jobs with progress off and echo silenced; the per-run line used to reach
    # the page anyway through tqdm's write.
    from dmlutils.profiles import make_config

    config = make_config("smoke", "multi_similarity", {"iterations": 2, "eval_every": 2})
    told = []
    run_jobs([Job("tiny run", config, tmp_path / "tiny.json", tmp_path / "tiny")], processes=1, progress=False, echo=told.append)
    assert "tiny run" not in capsys.readouterr().out
    assert [line for line in told if line.startswith("tiny run: ")], told


def test_the_plan_of_one_process_estimates_a_whole_backbone_run_on_every_core(monkeypatch):
    # One process runs its jobs in itself on torch's default threads; the plan said the
    # one-thread time (149 min for a cpu_full candidate that took about 65).
    from dmlutils import runner
    from dmlutils.profiles import make_config

    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    job = runner.Job("full", make_config("cpu_full", "multi_similarity", {"seed": 0}), None, None)
    other = runner.Job("other", make_config("cpu_full", "multi_similarity", {"seed": 1}), None, None)
    minutes = lambda text: float(text.splitlines()[1].split("about")[1].split("min")[0])  # noqa: E731
    one_process, two_processes = runner.plan([job], 1, lambda j: False), runner.plan([job, other], 2, lambda j: False)
    assert minutes(one_process) == pytest.approx(runner.estimate_seconds(job, threads=2) / 60, abs=0.1)
    assert minutes(two_processes) == pytest.approx(runner.estimate_seconds(job, threads=1) * runner.SIDE_BY_SIDE_SLOWDOWN / 60, abs=0.1)
    assert minutes(one_process) < 0.6 * minutes(two_processes)
    # A lone run left for two processes runs in this one, on every core, and is planned so.
    assert runner.plan([job], 2, lambda j: False) == one_process


def test_a_lone_run_left_for_two_processes_trains_in_this_process(tmp_path, monkeypatch):
    from dmlutils import runner

    ran = []
    monkeypatch.setattr(runner, "_run", lambda job, progress=False, device=None: ran.append(job.name) or (job.name, 1.0, {}))
    monkeypatch.setattr(runner.futures, "ProcessPoolExecutor", None)  # a worker pool would fail here
    job = runner.Job("lone", {}, tmp_path / "lone.json", tmp_path / "run")
    monkeypatch.setattr(runner, "plan", lambda *args, **kwargs: "plan")
    assert runner.run_jobs([job], processes=2, progress=False, echo=lambda line: None, is_done=lambda j: False) == {"lone": {}}
    assert ran == ["lone"]


def test_runs_left_over_from_whole_rounds_train_in_this_process_on_every_core(tmp_path, monkeypatch):
    from concurrent import futures

    from dmlutils import runner

    where = {}

    class InlinePool:  # stands for the worker pool: runs each submitted job at once, noting it went to a worker
        def __init__(self, max_workers, **kwargs):
            self.max_workers = max_workers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, function, job, *args):
            where[job.name] = f"worker of {self.max_workers}"
            future = futures.Future()
            future.set_result((job.name, 1.0, {}))
            return future

    def in_this_process(job, progress=False, device=None):
        where[job.name] = "this process"
        return job.name, 1.0, {}

    monkeypatch.setattr(runner.futures, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(runner, "_run", in_this_process)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    jobs = [runner.Job(name, {}, tmp_path / f"{name}.json", tmp_path / name) for name in ("a", "b", "c")]
    monkeypatch.setattr(runner, "estimate_seconds", lambda job, threads=1: 600.0 * (2 if threads == 1 else 1))
    text = runner.plan(jobs, 2, lambda j: False)
    runner.run_jobs(jobs, processes=2, progress=False, echo=lambda line: None, is_done=lambda j: False)
    assert where == {"a": "worker of 2", "b": "worker of 2", "c": "this process"}
    # a and b: 20 min each on one thread, slowed side by side, together; then c alone in 10 min on two threads
    pair = 20 * runner.SIDE_BY_SIDE_SLOWDOWN
    assert f"{round(pair + 10)} minutes of wall time" in text and "(side by side)" in text.splitlines()[1]
    assert "(side by side)" not in text.splitlines()[3]
