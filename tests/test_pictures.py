"""The pictures' data a run writes beside its record (dmlutils.pictures)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlutils import engine, pictures
from dmlutils.losses import get_loss
from dmlutils.profiles import make_config


def smoke(**overrides):
    return make_config("smoke", "multi_similarity", {"iterations": 20, "eval_every": 10, **overrides})


@pytest.fixture(scope="module")
def smoke_pictures(tmp_path_factory):
    out = tmp_path_factory.mktemp("pictures")
    record = engine.train(smoke(), out / "run", record_path=out / "seed_0.json", progress=False, device="cpu")
    return record, json.loads((out / "seed_0.pictures.json").read_text()), out


def test_queries_and_batch_are_fixed_by_the_labels_alone():
    labels = np.repeat(np.arange(100, 200), 7)
    queries, batch = pictures.fixed_queries(labels), pictures.fixed_batch(labels)
    assert np.array_equal(queries, pictures.fixed_queries(labels.copy())) and np.array_equal(batch, pictures.fixed_batch(labels.copy()))
    assert len(queries) == 24 and len(np.unique(labels[queries])) == 24  # one query per class
    assert len(batch) == 80 and np.array_equal(labels[batch].reshape(16, 5), np.repeat(np.unique(labels[batch]), 5).reshape(16, 5))


def test_a_run_writes_its_pictures_beside_its_record_with_its_provenance(smoke_pictures):
    record, drawn, out = smoke_pictures
    assert (out / "seed_0.json").exists() and pictures.pictures_path(out / "seed_0.json") == out / "seed_0.pictures.json"
    assert (drawn["profile"], drawn["loss"], drawn["seed"], drawn["record_git"]) == ("smoke", "multi_similarity", 0, record["git"])
    assert drawn["evaluated_on"] == record["evaluated_on"] and drawn["data"] == record["data"]["test"]
    n = record["evaluated_on"]["images"]
    assert len(drawn["map"]["x"]) == len(drawn["map"]["label"]) == n and "t-SNE" in drawn["map"]["method"]
    assert drawn["batch"]["iterations"] == [0, 20] and len(drawn["batch"]["states"]) == 2
    for query, hits, sims in zip(drawn["queries"]["index"], drawn["queries"]["neighbours"], drawn["queries"]["similarity"]):
        assert query not in hits and len(hits) == 8 and sims == sorted(sims, reverse=True)
    assert all(str(i) in drawn["images"] for i in drawn["queries"]["index"] + sum(drawn["queries"]["neighbours"], []))


def test_the_batch_weights_are_the_losses_closed_form_of_the_stored_similarities(smoke_pictures):
    _, drawn, _ = smoke_pictures
    labels = torch.as_tensor(drawn["batch"]["label"])
    loss = get_loss("multi_similarity")
    first, last = drawn["batch"]["states"]
    for state in (first, last):
        S, W = torch.tensor(state["similarity"]), torch.tensor(state["weights"])
        assert torch.allclose(W, loss.pair_weights(S, labels), atol=2e-3)
    assert first["similarity"] != last["similarity"]  # training moved the batch


def test_a_resumed_run_draws_the_pictures_of_an_uninterrupted_one(smoke_pictures, tmp_path):
    _, drawn, _ = smoke_pictures
    engine.train(smoke(), tmp_path / "run", stop_after=10, record_path=tmp_path / "seed_0.json", progress=False, device="cpu")
    assert not (tmp_path / "seed_0.pictures.json").exists()
    engine.train(smoke(), tmp_path / "run", resume=True, record_path=tmp_path / "seed_0.json", progress=False, device="cpu")
    resumed = json.loads((tmp_path / "seed_0.pictures.json").read_text())
    for key in ("queries", "batch", "map", "images"):
        assert resumed[key] == drawn[key], key


def test_a_validation_run_draws_nothing_and_the_baseline_draws_its_features(tmp_path):
    engine.train(smoke(validation_classes=2), tmp_path / "run", record_path=tmp_path / "v.json", progress=False, device="cpu")
    assert not (tmp_path / "v.pictures.json").exists()  # the test split is never read
    engine.baseline(smoke(), record_path=tmp_path / "baseline.json", device="cpu", progress=False)
    drawn = pictures.read_pictures(tmp_path / "baseline.pictures.json")
    assert drawn["batch"]["iterations"] == [0] and drawn["batch"]["loss"].startswith("multi_similarity (default")


def test_a_damaged_pictures_file_names_itself_and_the_fix(tmp_path):
    path = tmp_path / "seed_0.pictures.json"
    path.write_text('{"kind": "pict')
    with pytest.raises(ValueError, match="(?s)Damaged pictures file .*seed_0.pictures.json.*verify --profile .* --pictures --runs"):
        pictures.read_pictures(path)


def test_a_pictures_file_is_compact(smoke_pictures):
    _, drawn, out = smoke_pictures
    text = (out / "seed_0.pictures.json").read_text()
    assert "\n " not in text and len(text.splitlines()) == 1  # no indentation: one number per line would triple it
    assert all(round(v, 4) == v for v in drawn["batch"]["states"][0]["similarity"][0])
    assert all(round(v, 2) == v for v in drawn["map"]["x"])


def test_small_pair_weights_keep_three_significant_figures():
    assert pictures._significant([1.23456e-5, -0.0123456, 0.0]) == [1.23e-5, -0.0123, 0.0]
