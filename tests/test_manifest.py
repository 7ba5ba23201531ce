"""The run manifest: names, validity of records, escalation of seeds, the runner over it."""
from __future__ import annotations

import json

import pytest

from dmlutils import manifest
from dmlutils.engine import write_json
from dmlutils.losses.registry import LOSSES
from dmlutils.profiles import PROFILE_VERSIONS
from dmlutils.records import DamagedRecord


def fake_record(results, profile, name, seed, recall, **changes):
    entry = manifest.run(name)
    config = manifest.config_of(entry, profile, seed)
    record = {"profile": profile, "profile_version": PROFILE_VERSIONS[profile], "config": config, "evaluations": [], "final": {"recall@1": recall}}
    record.update(changes)
    write_json(manifest.record_path(results, profile, name, seed), record)
    return record


def test_names_are_unique_and_cover_the_main_table():
    names = [r.name for r in manifest.RUNS]
    assert len(names) == len(set(names))
    assert {r.name for r in manifest.group("main")} == {"baseline", *LOSSES}
    assert all(r.seeds == manifest.THREE_SEEDS for r in manifest.group("main") if r.loss)
    assert [r.name for r in manifest.group("main")][:2] == ["baseline", "multi_similarity"]  # MS is trained first


def test_every_run_builds_a_valid_config_at_every_profile():
    for profile in PROFILE_VERSIONS:
        for entry in manifest.RUNS:
            if profile not in entry.profiles:
                continue
            config = manifest.config_of(entry, profile, 0)  # raises on an unknown setting or hyper-parameter
            for key, value in entry.overrides.items():
                if key.startswith("loss."):
                    assert config["loss_hparams"][key[5:]] == value
                else:
                    assert config[key] == value


def test_every_run_has_its_own_label_naming_what_it_changes():
    labels = [manifest.label(r.name) for r in manifest.RUNS]
    assert len(labels) == len(set(labels))  # a table's rows never share a name
    for group, symbol in [("beta", "β"), ("alpha", "α"), ("lambda", "λ"), ("epsilon", "ε")]:
        for entry in manifest.group(group):
            (value,) = entry.overrides.values()
            assert manifest.label(entry.name) == f"{symbol} = {value:g}"
    assert manifest.label(manifest.MS) == "Multi-Similarity"  # a loss's own run: the loss's name
    assert manifest.label("triplet_center") == "Triplet-Center"
    assert manifest.label("baseline") == "pretrained features, no training"
    assert manifest.label("ms_dim_64") == "64-d"
    assert manifest.label("ms_batch_40x2") == "40 x 2"
    assert manifest.label("ms_xbm_1600") == "MS + XBM 1,600"  # the warm-up is not a second setting
    assert manifest.label("ms_no_weighting") == "mining only (no weighting)"


def test_unknown_names_are_named_in_the_error():
    with pytest.raises(ValueError, match="no run named 'ms_beta_7'.*ms_beta_10"):
        manifest.run("ms_beta_7")
    with pytest.raises(ValueError, match="no group 'gamma'.*beta"):
        manifest.group("gamma")


def test_a_record_is_valid_only_for_its_settings_and_profile_version(tmp_path):
    fake_record(tmp_path, "smoke", "ms_beta_10", 0, 0.5)
    path = manifest.record_path(tmp_path, "smoke", "ms_beta_10", 0)
    entry = manifest.run("ms_beta_10")
    assert manifest.valid_record(path, manifest.config_of(entry, "smoke", 0)) is not None
    assert manifest.valid_record(path, manifest.config_of(entry, "smoke", 1)) is None  # another seed
    assert manifest.valid_record(path, manifest.config_of(manifest.run("ms_beta_20"), "smoke", 0)) is None
    fake_record(tmp_path, "smoke", "ms_beta_10", 0, 0.5, profile_version=PROFILE_VERSIONS["smoke"] - 1)
    assert manifest.valid_record(path, manifest.config_of(entry, "smoke", 0)) is None  # an older profile
    fake_record(tmp_path, "smoke", "ms_beta_10", 0, 0.5)
    record = json.loads(path.read_text())
    del record["config"]["xbm_start"]  # made before the setting existed: it ran at its default
    write_json(path, record)
    assert manifest.valid_record(path, manifest.config_of(entry, "smoke", 0)) is not None
    del record["final"]  # the engine writes a record once, finished: this one was cut or edited
    write_json(path, record)
    with pytest.raises(DamagedRecord, match=f"(?s){path}: it lacks 'final'.*ablation ms_beta_10 --profile smoke --seed 0"):
        manifest.valid_record(path, manifest.config_of(entry, "smoke", 0))  # a chapter says so
    assert manifest.valid_record(path, manifest.config_of(entry, "smoke", 0), skip_damaged=True) is None  # the runner re-makes it


def test_seeds_escalate_only_beyond_the_default_seed_spread(tmp_path):
    entry = manifest.run("ms_beta_10")
    assert manifest.seeds_wanted(entry, "cpu", tmp_path) == (0,)  # nothing to compare with yet
    for seed, recall in zip((0, 1, 2), (0.50, 0.52, 0.54)):  # mean 0.52, std 0.02
        fake_record(tmp_path, "cpu", "multi_similarity", seed, recall)
    fake_record(tmp_path, "cpu", "ms_beta_10", 0, 0.535)  # 0.015 from the mean: within the noise
    assert manifest.seeds_wanted(entry, "cpu", tmp_path) == (0,)
    fake_record(tmp_path, "cpu", "ms_beta_10", 0, 0.45)  # 0.07 below: beyond it
    assert manifest.seeds_wanted(entry, "cpu", tmp_path) == (0, 1, 2)
    assert manifest.seeds_wanted(manifest.run("ms_no_mining"), "cpu", tmp_path) == (0, 1, 2)  # always three
    assert manifest.seeds_wanted(manifest.run("ms_no_mining"), "smoke", tmp_path) == (0, 1)  # smoke: code paths only


def test_the_runner_makes_missing_records_once(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    made = manifest.run_manifest("smoke", results, runs, processes=1, only=["baseline", "ms_dim_128"], echo=lambda *_: None)
    assert made == 2
    loaded = manifest.load("smoke", results)
    assert set(loaded) == {"baseline", "ms_dim_128"}
    assert loaded["ms_dim_128"][0]["config"]["embedding_dim"] == 128
    assert loaded["ms_dim_128"][0]["profile_version"] == PROFILE_VERSIONS["smoke"]
    again = manifest.run_manifest("smoke", results, runs, processes=1, only=["ms_dim_256", "ms_dim_128", "baseline"], echo=lambda *_: None)
    assert again == 1  # ms_dim_256 only: the two records are valid and skipped
    assert manifest.run_manifest("smoke", results, runs, only=["baseline"], dry_run=True, echo=lambda *_: None) == 0


def test_the_plan_counts_the_slowdown_of_runs_side_by_side(tmp_path, monkeypatch):
    import re

    from dmlutils.runner import SIDE_BY_SIDE_SLOWDOWN, Job, estimate_seconds, plan

    jobs = [Job(f"ms seed {s}", manifest.config_of(manifest.run("multi_similarity"), "cpu", s), tmp_path / f"{s}.json", tmp_path) for s in (0, 1)]
    alone = sum(estimate_seconds(j) for j in jobs) / 60

    def cpu_minutes(text):
        return float(re.search(r"about (\d+) CPU-minutes", text).group(1))

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert cpu_minutes(plan(jobs, 1)) == round(2 * alone)  # one after another, each on both threads
    assert cpu_minutes(plan(jobs, 2)) == round(alone * SIDE_BY_SIDE_SLOWDOWN)  # side by side, one thread each


def test_the_cpu_baseline_is_the_same_record_at_every_seed(shared_data_root):
    """Why the manifest gives the baseline one seed: at the cpu profile it has pretrained
    weights and no head, sampler or augmentation, so a seed changes nothing it computes.
    (At the smoke profile the synthetic images themselves depend on the seed.)"""
    from dmlutils.engine import baseline
    from dmlutils.profiles import make_config

    records = [baseline(make_config("cpu", overrides={"seed": seed, "max_classes": 2}), root=shared_data_root, device="cpu", progress=False)
               for seed in (0, 1)]
    assert records[0]["evaluated_on"]["classes"] == 2
    assert records[0]["final"] == records[1]["final"]
    assert records[0]["data"] == records[1]["data"]
    smoke = [baseline(make_config("smoke", overrides={"seed": seed}), device="cpu", progress=False) for seed in (0, 1)]
    assert smoke[0]["data"] != smoke[1]["data"]  # the check above could fail: a seed does reach the smoke data


def test_the_plan_names_the_runs_escalation_may_still_add(tmp_path):
    sweeps = {r.name for r in manifest.RUNS if r.escalate}
    assert {r.name for r in manifest.undecided_escalations("cpu", tmp_path)} == sweeps  # nothing decided yet
    for seed, recall in zip((0, 1, 2), (0.50, 0.52, 0.54)):
        fake_record(tmp_path, "cpu", "multi_similarity", seed, recall)
    fake_record(tmp_path, "cpu", "ms_beta_10", 0, 0.45)  # decided: it escalates, and its seeds are in the plan
    fake_record(tmp_path, "cpu", "ms_beta_20", 0, 0.52)  # decided: it does not
    assert {r.name for r in manifest.undecided_escalations("cpu", tmp_path)} == sweeps - {"ms_beta_10", "ms_beta_20"}
    assert [r.name for r in manifest.undecided_escalations("cpu", tmp_path, only=["group:beta"])] == ["ms_beta_80"]
    note = manifest.escalation_note("cpu", tmp_path, processes=2, only=["group:beta"])
    assert "1 one-seed runs (ms_beta_80)" in note and "up to 2 more runs" in note
    assert manifest.undecided_escalations("smoke", tmp_path) == []  # smoke never escalates
    said = []
    manifest.run_manifest("cpu", tmp_path, tmp_path / "runs", processes=2, only=["group:beta"], dry_run=True, echo=said.append)
    assert said[-1] == note


def test_the_plan_times_training_runs_by_the_records_already_made_on_as_many_threads(tmp_path, monkeypatch):
    import re

    import torch

    from dmlutils.runner import Job, plan

    results = tmp_path / "results"
    assert manifest.measured_run_seconds("smoke", results) == {}  # no record: the first guess
    made = manifest.run_manifest("smoke", results, tmp_path / "runs", processes=1, only=["multi_similarity", "ms_dim_128"],
                                 echo=lambda *_: None, progress=False)
    assert made == 3  # MS at two seeds, ms_dim_128 at one, in this process on its threads
    walls = sorted(r["wall_time_seconds"] for by_seed in manifest.load("smoke", results).values() for r in by_seed.values())
    assert manifest.measured_run_seconds("smoke", results) == {torch.get_num_threads(): (walls[1], 3)}

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    jobs = [Job(f"ms seed {s}", manifest.config_of(manifest.run("multi_similarity"), "cpu", s), tmp_path / f"{s}.json", tmp_path) for s in (5, 6)]
    measured = {1: (600.0, 7), 2: (240.0, 4)}
    text = plan(jobs, 2, measured=measured)  # side by side, one thread each: the one-thread records
    assert re.search(r"ms seed 5 +about +10\.0 min \(side by side\)", text)
    assert ("about 20 CPU-minutes, 10 minutes of wall time (training runs at the median wall time of the records made before "
            "on as many threads: 7 on 1 thread)") in text
    text = plan(jobs, 1, measured=measured)  # one after another on both threads: the two-thread records
    assert re.search(r"ms seed 5 +about +4\.0 min\n", text)
    assert "about 16 CPU-minutes, 8 minutes of wall time (training runs at the median wall time of the records made before on as many threads: 4 on 2 threads)" in text
    assert plan(jobs, 1, measured={1: (600.0, 7)}).endswith("(estimate)")  # no two-thread record: not the one-thread time


def test_the_whole_backbone_regime_runs_ms_the_grid_and_three_losses_one_seed_each_escalated(tmp_path):
    at_full = {r.name for r in manifest.RUNS if "cpu_full" in r.profiles}
    assert at_full == {"multi_similarity", "ms_no_mining", "ms_no_weighting", "ms_no_mining_no_weighting",
                       "triplet", "contrastive", "binomial_deviance"}  # its baseline is cpu's (dmlutils.regimes)
    for name in ("multi_similarity", "ms_no_mining", "ms_no_weighting", "ms_no_mining_no_weighting"):
        assert manifest.declared_seeds(manifest.run(name), "cpu_full") == (0, 1, 2)
    triplet = manifest.run("triplet")
    assert manifest.declared_seeds(triplet, "cpu") == (0, 1, 2)  # the cpu regime keeps its three
    assert manifest.seeds_wanted(triplet, "cpu_full", tmp_path) == (0,)
    assert triplet in manifest.undecided_escalations("cpu_full", tmp_path)
    for seed, recall in zip((0, 1, 2), (0.60, 0.62, 0.64)):  # mean 0.62, std 0.02
        fake_record(tmp_path, "cpu_full", "multi_similarity", seed, recall)
    fake_record(tmp_path, "cpu_full", "triplet", 0, 0.615)  # inside MS's band: level, one seed is enough
    assert manifest.seeds_wanted(triplet, "cpu_full", tmp_path) == (0,)
    fake_record(tmp_path, "cpu_full", "triplet", 0, 0.55)  # outside it: two more seeds decide
    assert manifest.seeds_wanted(triplet, "cpu_full", tmp_path) == (0, 1, 2)
    assert triplet not in manifest.undecided_escalations("cpu_full", tmp_path)
    assert [j.name for j, done in manifest.jobs("cpu_full", tmp_path, only=["triplet"]) if not done] == ["triplet seed 1", "triplet seed 2"]
