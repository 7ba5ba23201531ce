"""The paper profile end to end: BN-Inception at 227 px on CUB images, two iterations.

Random weights in the published checkpoint's key layout stand in for the ImageNet ones
(no internet here); two classes of each split keep it under a minute on one CPU thread.
Everything else is the paper profile as a GPU user runs it: the image DataLoader with
P x K batches, global max pooling, frozen BatchNorm, Adam with weight decay, the step
schedule (a milestone moved to iteration 1 so that two iterations cross it), evaluation
on the test classes and a run record.
"""
import json

import numpy as np
import pytest
import torch

from dmlutils import engine
from dmlutils.models import BNInception, GlobalPool
from dmlutils.profiles import PROFILES, make_config


@pytest.fixture
def random_bn_inception_weights(tmp_path):
    """A checkpoint in the published key layout (no num_batches_tracked, as the file)."""
    torch.manual_seed(0)
    state = {k: v for k, v in BNInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "bn_inception-random.pth"
    torch.save(state, path)
    return path, state


def test_paper_profile_trains_two_iterations_on_cub_images(shared_data_root, random_bn_inception_weights, tmp_path, monkeypatch):
    weights, state = random_bn_inception_weights
    overrides = {
        "iterations": "2",
        "eval_every": "2",
        "max_classes": "2",
        "p": "2",
        "k": "2",
        "lr_milestones": "(1,)",
        "weights_path": str(weights),
        "num_workers": "0",
        "eval_batch_size": "32",
    }
    config = make_config("paper", "multi_similarity", overrides)
    paper = PROFILES["paper"]
    # what is not overridden is the paper's setting
    assert (config["backbone"], config["image_size"], config["resize_size"], config["transform"]) == ("bn_inception", 227, 256, "bninception")
    assert (config["pooling"], config["freeze_bn"], config["pretrained"], config["lr"], config["lr_gamma"]) == ("max", True, True, 3e-5, 0.1)
    assert config["cache_views"] == 0 and config["amp"] == paper["amp"] == "off"

    seen = {"batches": [], "pooling": [], "inputs": []}
    real_loader, real_pool = engine.sources.DataLoader, GlobalPool.forward

    def spy_loader(*args, **kwargs):
        if "batch_sampler" in kwargs:  # the training loader of the images path
            seen["batches"].extend(kwargs["batch_sampler"])
        return real_loader(*args, **kwargs)

    def spy_pool(self, feature_map):
        seen["pooling"].append((self.mode, tuple(feature_map.shape[1:])))
        return real_pool(self, feature_map)

    monkeypatch.setattr(engine.sources, "DataLoader", spy_loader)
    monkeypatch.setattr(engine.evaluation, "DataLoader", spy_loader)
    monkeypatch.setattr(GlobalPool, "forward", spy_pool)
    real_build = engine.build_model

    def spy_build(config):
        model = real_build(config)
        model.register_forward_pre_hook(lambda module, args: seen["inputs"].append(tuple(args[0].shape)))
        seen["model"] = model
        return model

    monkeypatch.setattr(engine.loop, "build_model", spy_build)
    real_datasets = engine.build_datasets

    def spy_datasets(config, root=None):
        train, test = real_datasets(config, root)
        seen["train_set"] = train
        return train, test

    monkeypatch.setattr(engine.loop, "build_datasets", spy_datasets)

    record_path = tmp_path / "paper.json"
    record = engine.train(config, tmp_path / "run", record_path=record_path, root=shared_data_root, progress=False, device="cpu")

    # the backbone started from the weights file, strictly loaded
    assert record["backbone_weights"]["file"] == weights.name
    # (its frozen BatchNorm statistics are never updated by training)
    assert torch.equal(seen["model"].backbone.inception_4a_3x3_bn.running_mean, state["inception_4a_3x3_bn.running_mean"])
    # images, P x K batches of the first two training classes, at 227 px
    assert len(seen["batches"]) == 2 and all(len(b) == 4 for b in seen["batches"])
    train_inputs = [s for s in seen["inputs"] if s[0] == 4]
    assert len(train_inputs) == 2 and all(s[1:] == (3, 227, 227) for s in train_inputs)
    train_labels = np.asarray(seen["train_set"].labels)
    assert len(train_labels) == 120 and np.unique(train_labels).tolist() == [0, 1] and record["cache_seconds"] is None
    assert set(np.concatenate([train_labels[b] for b in seen["batches"]]).tolist()) == {0, 1}
    # global max pooling of the 1024 x 7 x 7 map
    assert {mode for mode, _ in seen["pooling"]} == {"max"}
    assert {shape for _, shape in seen["pooling"]} == {(1024, 7, 7)}
    # lr x 0.1 after the milestone at iteration 1: the optimizer's rates in the last checkpoint
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    rates = [group["lr"] for group in checkpoint["optimizer"]["param_groups"]]
    assert rates == pytest.approx([3e-5 * 0.1, 3e-5 * 0.1], rel=1e-9)
    # evaluated on the first two test classes at 0 and 2, and recorded
    on_disk = json.loads(record_path.read_text())
    assert on_disk["profile"] == "paper" and on_disk["config"]["backbone"] == "bn_inception"
    assert [e["iteration"] for e in on_disk["evaluations"]] == [0, 2]
    # (classes 101 and 102 hold 50 + 60 images; the first two training classes 60 + 60)
    assert on_disk["evaluated_on"]["split"] == "test" and on_disk["evaluated_on"]["classes"] == 2
    assert on_disk["evaluated_on"]["images"] == 110
    assert np.isfinite(on_disk["evaluations"][-1]["train_loss"])
    assert 0.0 <= on_disk["final"]["recall@1"] <= 1.0 and "map@r" in on_disk["final"]
    for setting in ("amp", "channels_last", "cudnn_benchmark", "pin_memory", "num_workers", "weights_path", "max_classes"):
        assert setting in on_disk["config"], setting


def test_max_classes_keeps_the_first_classes_of_each_split():
    config = make_config("smoke", "multi_similarity", {"max_classes": "3"})
    train, test = engine.build_datasets(config)
    full_train, full_test = engine.build_datasets(make_config("smoke"))
    first = np.unique(np.asarray(full_train.labels))[:3]
    assert sorted(set(np.asarray(train.labels).tolist())) == first.tolist()
    assert len(np.unique(np.asarray(test.labels))) == 3
    assert len(train) == int(np.isin(np.asarray(full_train.labels), first).sum())
    with pytest.raises(ValueError, match="max_classes"):
        make_config("smoke", "multi_similarity", {"max_classes": "1"})


def test_weights_path_is_for_bn_inception_only():
    config = make_config("cpu", "multi_similarity", {"weights_path": "/some/file.pth"})
    with pytest.raises(ValueError, match="weights_path loads BN-Inception weights"):
        engine.build_backbone(config)


def test_a_missing_weights_file_names_the_setting(tmp_path):
    config = make_config("paper", "multi_similarity", {"weights_path": str(tmp_path / "absent.pth")})
    with pytest.raises(FileNotFoundError, match="weights_path"):
        engine.build_backbone(config)


def test_resnet50_is_the_documented_alternative_backbone():
    config = make_config("paper", "multi_similarity", {"backbone": "resnet50"})
    # its own input convention follows it (RGB, ImageNet mean/std), the paper's geometry stays
    assert config["transform"] == "resnet50" and config["image_size"] == 227
    assert make_config("paper", "multi_similarity", {"backbone": "resnet50", "transform": "bninception"})["transform"] == "bninception"
    model = engine.build_model({**config, "pretrained": False})
    assert type(model.backbone).__name__ == "ResNet50Backbone" and model.head.pool.mode == "max"
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 227, 227)).shape == (1, 512)


def test_settings_added_since_a_checkpoint_do_not_block_its_resume(tmp_path):
    config = make_config("smoke", "multi_similarity", {"iterations": "4", "eval_every": "2"})
    engine.train(config, tmp_path / "run", stop_after=2, progress=False, device="cpu")
    # a checkpoint written before the new settings existed
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    for key in ("amp", "channels_last", "cudnn_benchmark", "pin_memory", "weights_path", "max_classes"):
        del state["record"]["config"][key]
    del state["scaler"]
    torch.save(state, path)
    resumed = engine.train(config, tmp_path / "run", resume=True, progress=False, device="cpu")
    assert resumed["resumed_at"] == [2] and resumed["final"]["iteration"] == 4
    assert resumed["config"]["amp"] == "off"
    with pytest.raises(ValueError, match="amp differ"):
        engine.train({**config, "amp": "bf16"}, tmp_path / "run", resume=True, progress=False, device="cpu")
