"""The whole-backbone regime's batch source: images decoded once, augmented as tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlutils import engine
from dmlutils.data import get_dataset, get_transforms, pipeline_stages
from dmlutils.profiles import make_config


@pytest.mark.parametrize("train", [True, False])
def test_the_three_stages_of_a_pipeline_are_the_pipeline(shared_data_root, train):
    dataset = get_dataset("cub200", root=shared_data_root, split="test")
    pipeline = get_transforms("efficientnet_lite0", train=train, resize=256, crop=224)
    decode, augment, finish = pipeline_stages(pipeline)
    assert [type(t).__name__ for t in decode.transforms] == (["ToImage", "Resize"] if train else ["ToImage", "Resize", "CenterCrop"])
    for index in (0, 17, 4000):
        image = dataset._load(index)
        torch.manual_seed(index)
        whole = pipeline(image)
        torch.manual_seed(index)
        staged = finish(augment(decode(image))[None])[0]  # the finish runs on a batch
        assert decode(image).dtype == torch.uint8 and torch.equal(whole, staged)


def cub_full(**overrides):
    settings = {"max_classes": 4, "p": 4, "k": 3, "iterations": 4, "eval_every": 2, "image_size": 64, "resize_size": 72}
    return make_config("cpu_full", "multi_similarity", {**settings, **overrides})


def test_the_cpu_full_profile_fine_tunes_every_block_on_decoded_images(shared_data_root, tmp_path):
    config = cub_full()
    assert config["decoded_images"] and not config["cache_views"] and config["freeze_bn"]
    model = engine.build_model(config)
    backbone, head = engine.trainable_parameters(model, config)
    trained = {id(p) for p in backbone}
    convolutions = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) > 40 and all(id(p) in trained for m in convolutions for p in m.parameters())  # stem to head
    frozen = [p for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in m.parameters()]
    assert frozen and not any(id(p) in trained for p in frozen)  # BatchNorm frozen, as in the paper's code
    record = engine.train(config, tmp_path / "run", root=shared_data_root, progress=False, device="cpu")
    assert [e["iteration"] for e in record["evaluations"]] == [0, 2, 4] and record["evaluated_on"]["images"] > 200


def test_a_decoded_images_run_interrupted_between_evaluations_resumes_exactly(shared_data_root, tmp_path, monkeypatch):
    reference = engine.train(cub_full(), tmp_path / "reference", root=shared_data_root, progress=False, device="cpu")
    fetch = engine.DecodedImageSource.batches
    seen = []

    def interrupt_at_the_third_batch(self, sampler, start, count):
        for x, y in fetch(self, sampler, start, count):
            seen.append(x)
            if len(seen) == 3:
                raise_stop = __import__("signal")
                raise_stop.raise_signal(raise_stop.SIGINT)
            yield x, y

    with monkeypatch.context() as patch:
        patch.setattr(engine.DecodedImageSource, "batches", interrupt_at_the_third_batch)
        with pytest.raises(engine.RunInterrupted, match="step 3"):
            engine.train(cub_full(), tmp_path / "run", root=shared_data_root, progress=False, device="cpu")
    resumed = engine.train(cub_full(), tmp_path / "run", resume=True, root=shared_data_root, progress=False, device="cpu")
    assert resumed["resumed_at"] == [3]
    assert [e["train_loss"] for e in resumed["evaluations"]] == [e["train_loss"] for e in reference["evaluations"]]
    assert resumed["final"] == reference["final"]
    assert len({tuple(np.round(x.flatten()[:50].numpy(), 4)) for x in seen}) == 3  # every step draws new crops


def test_the_training_crop_takes_its_smallest_area_from_the_profile(shared_data_root):
    from dmlutils.engine.build import dataset_split
    from dmlutils.engine.sources import _base_dataset

    for area in (0.16, 0.64):
        train = _base_dataset(dataset_split(cub_full(crop_min_area=area), "train", True, shared_data_root))
        crops = [t for t in train.transform.transforms if type(t).__name__ == "RandomResizedCrop"]
        assert [c.scale for c in crops] == [(area, 1.0)]
    test = _base_dataset(dataset_split(cub_full(crop_min_area=0.64), "test", False, shared_data_root))
    assert not [t for t in test.transform.transforms if type(t).__name__ == "RandomResizedCrop"]  # the test view: a centre crop
    with pytest.raises(ValueError, match="crop_min_area is a fraction of the image's area"):
        cub_full(crop_min_area=0)
