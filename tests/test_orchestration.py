"""dmlutils.orchestration: a chapter's missing runs are trained (smoke profile), then read."""
import json

import pytest

from dmlutils.orchestration import ensure_studies
from dmlutils.profiles import PROFILE_VERSIONS
from dmlutils.records import RecordsNotFound


def test_manifest_ensure_trains_only_what_is_missing(tmp_path, monkeypatch):
    from dmlutils import manifest

    monkeypatch.chdir(tmp_path)  # checkpoints go to ./runs
    first = manifest.ensure("smoke", tmp_path / "results", only=["ms_beta_10"])
    assert list(first) == ["ms_beta_10"] and first["ms_beta_10"][0]["loss_hparams"]["beta"] == 10.0
    path = manifest.record_path(tmp_path / "results", "smoke", "ms_beta_10", 0)
    stamp = path.stat().st_mtime_ns
    again = manifest.ensure("smoke", tmp_path / "results", only=["ms_beta_10"])
    assert again["ms_beta_10"][0]["final"] == first["ms_beta_10"][0]["final"]
    assert path.stat().st_mtime_ns == stamp  # not retrained
    assert "ms_beta_20" not in manifest.ensure("smoke", tmp_path / "results", only=["ms_beta_20"], train_missing=False)


def test_without_train_missing_nothing_is_trained_and_no_record_at_the_cpu_profile_is_loud(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from dmlutils import manifest

    with pytest.raises(RecordsNotFound, match="(?s)No run records at the 'cpu' profile.*make results-cpu"):
        manifest.ensure("cpu", tmp_path / "results", only=["triplet"])
    studies = ensure_studies("smoke", ["npair"], tmp_path / "results")
    assert studies == {"npair": {"validation": {}, "selection": None, "tuned": None}}
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_ensure_studies_reads_a_finished_study_without_training(tmp_path, monkeypatch):
    from dmlutils import studies

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}})
    folder = tmp_path / "results" / "smoke"
    (folder / "study" / "npair").mkdir(parents=True)
    final = {"profile": "smoke", "config": {}, "final": {"recall@1": 0.5}, "evaluations": [], "profile_version": PROFILE_VERSIONS["smoke"]}
    (folder / "study" / "npair" / "default.json").write_text(json.dumps(final))
    (folder / "study" / "npair" / "selection.json").write_text(json.dumps({"chosen": "default", "criterion": f"final validation {studies.CRITERION}", "scores": {"default": 0.5}, "test_records": {"0": "smoke/npair.json"}, "profile_version": PROFILE_VERSIONS["smoke"]}))
    (folder / "npair.json").write_text(json.dumps(final))
    study = ensure_studies("smoke", ["npair"], tmp_path / "results", train_missing=True)["npair"]
    assert study["selection"]["chosen"] == "default" and study["tuned"] == {0: final} and list(study["validation"]) == ["default"]
    assert not (tmp_path / "runs").exists()  # complete: nothing trained
