"""Run records as the book reads them, and the ablation matrix's settings."""
import json

import pytest

from dmlutils.ablations import ABLATIONS, ablation, all_ablations
from dmlutils.profiles import make_config
from dmlutils.records import ensure_records, learning_curve, load_records, provenance


def test_every_ablation_is_a_valid_configuration_at_every_profile():
    names = [name for group in ABLATIONS.values() for name in group]
    assert len(names) == len(set(names)), "ablation names must be unique (they name record files)"
    for name, (loss, overrides) in all_ablations().items():
        for profile in ("smoke", "cpu", "paper"):
            config = make_config(profile, loss, {k: str(v) for k, v in overrides.items()})
            for key, value in overrides.items():
                if key.startswith("loss."):
                    assert config["loss_hparams"][key[5:]] == value, (name, key)
                else:
                    assert config[key] == value, (name, key)


def test_unknown_ablation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown ablation 'ms_no_minning'; valid: .*ms_no_mining"):
        ablation("ms_no_minning")


def test_unfinished_records_are_not_results(tmp_path):
    folder = tmp_path / "cpu"
    folder.mkdir()
    finished = {"profile": "cpu", "loss": "triplet", "evaluations": [{"iteration": 0, "metrics": {"recall@1": 0.5}}],
                "final": {"iteration": 0, "recall@1": 0.5}, "git": {"commit": "abc", "dirty": False}}
    (folder / "triplet.json").write_text(json.dumps(finished))
    del_final = dict(finished)
    del del_final["final"]
    (folder / "npair.json").write_text(json.dumps(del_final))
    records = load_records("cpu", tmp_path)
    assert list(records) == ["triplet"]
    assert learning_curve(records["triplet"]) == ([0], [0.5])
    assert "commit abc" in provenance(records["triplet"])


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
