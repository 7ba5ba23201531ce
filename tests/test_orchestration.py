"""dmlutils.orchestration: a chapter's missing runs are trained (smoke profile), then read."""
import json

import pytest

from dmlutils.orchestration import ensure_records, ensure_studies
from dmlutils.records import RecordsNotFound


def test_ensure_records_trains_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints go to ./runs
    runs = {"a": ("contrastive", {"iterations": 2, "eval_every": 1})}
    first = ensure_records("smoke", runs, tmp_path / "results", train_missing=True)
    assert list(first) == ["a"] and first["a"]["loss"] == "contrastive" and first["a"]["config"]["iterations"] == 2
    stamp = (tmp_path / "results" / "smoke" / "a.json").stat().st_mtime_ns
    again = ensure_records("smoke", runs, tmp_path / "results", train_missing=True)
    assert again["a"]["final"] == first["a"]["final"]
    assert (tmp_path / "results" / "smoke" / "a.json").stat().st_mtime_ns == stamp  # not retrained
    assert ensure_records("smoke", {"b": ("triplet", {})}, tmp_path / "results", train_missing=False) == {}
    assert not (tmp_path / "results" / "smoke" / "b.json").exists()


def test_without_train_missing_nothing_is_trained_and_no_record_at_the_cpu_profile_is_loud(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordsNotFound, match="No run records at the 'cpu' profile"):
        ensure_records("cpu", {"triplet": ("triplet", {})}, tmp_path / "results")
    studies = ensure_studies("smoke", ["npair"], tmp_path / "results")
    assert studies == {"npair": {"validation": {}, "selection": None, "tuned": None}}
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_ensure_studies_reads_a_finished_study_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "results" / "smoke"
    (folder / "study" / "npair").mkdir(parents=True)
    final = {"final": {"recall@1": 0.5}, "evaluations": []}
    (folder / "study" / "npair" / "default.json").write_text(json.dumps(final))
    (folder / "study" / "npair" / "selection.json").write_text(json.dumps({"chosen": "default", "test_record": "smoke/npair.json"}))
    (folder / "npair.json").write_text(json.dumps(final))
    study = ensure_studies("smoke", ["npair"], tmp_path / "results", train_missing=True)["npair"]
    assert study["selection"]["chosen"] == "default" and study["tuned"] == final and list(study["validation"]) == ["default"]
    assert not (tmp_path / "runs").exists()  # complete: nothing trained
