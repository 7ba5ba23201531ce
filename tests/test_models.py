"""Tests of dmlutils.models: backbones, their weights, the embedding head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlutils.models import (
    BN_INCEPTION_INPUT,
    EFFICIENTNET_LITE_INPUT,
    IMAGENET_BIRD_CLASSES,
    BackboneNormalize,
    BNInception,
    EmbeddingModel,
    GlobalPool,
    InputConfig,
    batchnorm_layers,
    bn_inception,
    efficientnet_lite0,
    get_backbone,
    imagenet_class_names,
    resnet50,
    tiny_cnn,
)
from dmlutils.models import bninception as bninception_module
from dmlutils.models.bninception import (
    BN_INCEPTION_FILE,
    BN_INCEPTION_SHA256_PREFIX,
    BN_INCEPTION_URL,
    BN_INCEPTION_URLS,
    fetch_bn_inception_weights,
    sha256_of,
)
from dmlutils.models.efficientnet_lite import Conv2dSame, lite0_weights_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUB_ROOT = os.path.join(
    os.environ.get("DML_DATA", os.path.join(REPO, os.pardir, "shared", "data")),
    "CUB_200_2011",
)


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0(pretrained=True).eval()


@pytest.fixture(scope="module")
def lite0_checkpoint():
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------

def test_lite0_checkpoint_keys_and_shapes_match_the_model_exactly(lite0, lite0_checkpoint):
    own = lite0.state_dict()
    assert set(own) == set(lite0_checkpoint)
    for key, value in lite0_checkpoint.items():
        assert own[key].shape == value.shape, key
        assert torch.equal(own[key], value), key


def test_lite0_parameter_count(lite0, lite0_checkpoint):
    # Oracle: the checkpoint's own tensors, minus BatchNorm running statistics.
    expected = sum(v.numel() for k, v in lite0_checkpoint.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    count = sum(p.numel() for p in lite0.parameters())
    assert count == expected == 4_652_008  # "4.65M" for Lite0 incl. the classifier


def test_lite0_is_the_tensorflow_lite_variant(lite0):
    bns = batchnorm_layers(lite0)
    assert bns and all(bn.eps == 1e-3 for bn in bns)
    assert not any("_se_" in name for name, _ in lite0.named_modules())
    assert len(lite0._blocks) == 16


@pytest.mark.parametrize("size, kernel, expected_pad", [
    # TensorFlow SAME: total = max((ceil(n/s) - 1) * s + k - n, 0), extra at the end.
    (8, 3, (0, 1)), (8, 5, (1, 2)), (9, 3, (1, 1)), (9, 5, (2, 2)),
])
def test_conv2d_same_pads_like_tensorflow(size, kernel, expected_pad):
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, kernel, stride=2)
    x = torch.randn(1, 2, size, size)
    before, after = expected_pad
    reference = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=2)
    assert torch.allclose(conv(x), reference, atol=1e-6)


@pytest.mark.parametrize("n, channels", [(0, 32), (8, 80), (11, 112), (16, 320)])
def test_lite0_activation_entering_block_has_the_b0_table_shape(lite0, n, channels):
    # At 144 px: stem /2; blocks 8 and 11 are entered at /16, block 16 (= after the
    # last) at /32, following EfficientNet-B0's stage table.
    stride = {0: 2, 8: 16, 11: 16, 16: 32}[n]
    with torch.no_grad():
        h = lite0.forward_until_block(torch.randn(1, 3, 144, 144), n)
    assert h.shape == (1, channels, -(-144 // stride), -(-144 // stride))


@pytest.mark.parametrize("n", [0, 5, 8, 11, 16])
def test_lite0_split_forward_equals_forward(lite0, n):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        whole = lite0(x)
        split = lite0.forward_from_block(lite0.forward_until_block(x, n), n)
    assert torch.allclose(split, whole, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 17, 2.0, "8"])
def test_lite0_rejects_bad_block_index(lite0, bad):
    with pytest.raises(ValueError, match="block index"):
        lite0.forward_until_block(torch.zeros(1, 3, 32, 32), bad)


def test_folded_batchnorm_gives_the_same_outputs(lite0):
    folded = lite0.fold_batchnorm()
    assert not batchnorm_layers(folded)
    assert batchnorm_layers(lite0)  # the original keeps its BatchNorm
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        for method in ("features", "forward"):
            expected = getattr(lite0, method)(x)
            got = getattr(folded, method)(x)
            assert torch.allclose(got, expected, atol=1e-4, rtol=0), method
        cl = folded.to(memory_format=torch.channels_last)
        got = cl(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(got, lite0(x), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="already folded"):
        folded.fold_batchnorm()


def test_lite0_pretrained_false_is_random_and_weights_path_needs_pretrained(lite0):
    fresh = efficientnet_lite0(pretrained=False)
    assert not torch.equal(fresh._conv_stem.weight, lite0._conv_stem.weight)
    with pytest.raises(ValueError, match="pretrained=False"):
        efficientnet_lite0(pretrained=False, weights_path="x.pth")
    with pytest.raises(FileNotFoundError):
        efficientnet_lite0(weights_path="/nonexistent/lite0.pth")


def test_lite0_new_classifier_keeps_pretrained_body(lite0):
    model = efficientnet_lite0(num_classes=10)
    assert model._fc.out_features == 10
    assert torch.equal(model._blocks[5]._project_conv.weight,
                       lite0._blocks[5]._project_conv.weight)


def test_imagenet_bird_classes_are_the_bird_names():
    names = imagenet_class_names()
    assert len(names) == 1000
    # The three runs of bird classes start and end where the name list says.
    for first, last in [(7, 24), (80, 100), (127, 146)]:
        assert all(i in IMAGENET_BIRD_CLASSES for i in range(first, last + 1))
        assert first - 1 not in IMAGENET_BIRD_CLASSES
        assert last + 1 not in IMAGENET_BIRD_CLASSES
    assert [names[i] for i in (6, 7, 24, 25)] == [
        "stingray", "cock", "great grey owl", "European fire salamander"]
    assert [names[i] for i in (79, 80, 100, 101)] == [
        "centipede", "black grouse", "black swan", "tusker"]
    assert [names[i] for i in (126, 127, 146, 147)] == [
        "isopod", "white stork", "albatross", "grey whale"]
    assert len(IMAGENET_BIRD_CLASSES) == 59


def _cub_sample(n_images: int):
    """Every k-th image of CUB (deterministic, spread over all 200 classes)."""
    with open(os.path.join(CUB_ROOT, "images.txt")) as f:
        paths = [line.split()[1] for line in f if line.strip()]
    step = len(paths) // n_images
    return [os.path.join(CUB_ROOT, "images", p) for p in paths[::step][:n_images]]


@pytest.mark.skipif(not os.path.isfile(os.path.join(CUB_ROOT, "images.txt")),
                    reason=f"CUB-200-2011 not found at {CUB_ROOT} (set DML_DATA)")
def test_lite0_calls_cub_birds_birds(lite0):
    """The real test that the weights are ImageNet-trained and the input convention
    right: DESIGN measured 94-96 % of CUB images with a bird class as top-1 at a 144
    crop of the 160-px images; a wrong padding, mean/std or eps drops it."""
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(160), T.CenterCrop(144), T.ToTensor(),
                           BackboneNormalize(EFFICIENTNET_LITE_INPUT)])
    images = torch.stack([transform(Image.open(p).convert("RGB"))
                          for p in _cub_sample(200)])
    model = lite0.fold_batchnorm().to(memory_format=torch.channels_last)
    with torch.no_grad():
        top1 = torch.cat([
            model(chunk.contiguous(memory_format=torch.channels_last)).argmax(1)
            for chunk in images.split(20)])
    bird_share = sum(int(c) in IMAGENET_BIRD_CLASSES for c in top1) / len(top1)
    assert bird_share > 0.85, f"only {bird_share:.1%} of CUB images classified as birds"


# ---------------------------------------------------------------------------
# BN-Inception
# ---------------------------------------------------------------------------

# Every convolution of the reference architecture (Cadene's pretrainedmodels
# bninception.py, whose checkpoint bn_inception-52deb4733.pth we must load):
# name, in channels, out channels, kernel size. Each conv has a bias and is
# followed by a BatchNorm named <name>_bn; `last_linear` is 1024 -> 1000.
_REFERENCE_CONVS = """
    conv1_7x7_s2 3 64 7
    conv2_3x3_reduce 64 64 1
    conv2_3x3 64 192 3
    inception_3a_1x1 192 64 1
    inception_3a_3x3_reduce 192 64 1
    inception_3a_3x3 64 64 3
    inception_3a_double_3x3_reduce 192 64 1
    inception_3a_double_3x3_1 64 96 3
    inception_3a_double_3x3_2 96 96 3
    inception_3a_pool_proj 192 32 1
    inception_3b_1x1 256 64 1
    inception_3b_3x3_reduce 256 64 1
    inception_3b_3x3 64 96 3
    inception_3b_double_3x3_reduce 256 64 1
    inception_3b_double_3x3_1 64 96 3
    inception_3b_double_3x3_2 96 96 3
    inception_3b_pool_proj 256 64 1
    inception_3c_3x3_reduce 320 128 1
    inception_3c_3x3 128 160 3
    inception_3c_double_3x3_reduce 320 64 1
    inception_3c_double_3x3_1 64 96 3
    inception_3c_double_3x3_2 96 96 3
    inception_4a_1x1 576 224 1
    inception_4a_3x3_reduce 576 64 1
    inception_4a_3x3 64 96 3
    inception_4a_double_3x3_reduce 576 96 1
    inception_4a_double_3x3_1 96 128 3
    inception_4a_double_3x3_2 128 128 3
    inception_4a_pool_proj 576 128 1
    inception_4b_1x1 576 192 1
    inception_4b_3x3_reduce 576 96 1
    inception_4b_3x3 96 128 3
    inception_4b_double_3x3_reduce 576 96 1
    inception_4b_double_3x3_1 96 128 3
    inception_4b_double_3x3_2 128 128 3
    inception_4b_pool_proj 576 128 1
    inception_4c_1x1 576 160 1
    inception_4c_3x3_reduce 576 128 1
    inception_4c_3x3 128 160 3
    inception_4c_double_3x3_reduce 576 128 1
    inception_4c_double_3x3_1 128 160 3
    inception_4c_double_3x3_2 160 160 3
    inception_4c_pool_proj 576 128 1
    inception_4d_1x1 608 96 1
    inception_4d_3x3_reduce 608 128 1
    inception_4d_3x3 128 192 3
    inception_4d_double_3x3_reduce 608 160 1
    inception_4d_double_3x3_1 160 192 3
    inception_4d_double_3x3_2 192 192 3
    inception_4d_pool_proj 608 128 1
    inception_4e_3x3_reduce 608 128 1
    inception_4e_3x3 128 192 3
    inception_4e_double_3x3_reduce 608 192 1
    inception_4e_double_3x3_1 192 256 3
    inception_4e_double_3x3_2 256 256 3
    inception_5a_1x1 1056 352 1
    inception_5a_3x3_reduce 1056 192 1
    inception_5a_3x3 192 320 3
    inception_5a_double_3x3_reduce 1056 160 1
    inception_5a_double_3x3_1 160 224 3
    inception_5a_double_3x3_2 224 224 3
    inception_5a_pool_proj 1056 128 1
    inception_5b_1x1 1024 352 1
    inception_5b_3x3_reduce 1024 192 1
    inception_5b_3x3 192 320 3
    inception_5b_double_3x3_reduce 1024 192 1
    inception_5b_double_3x3_1 192 224 3
    inception_5b_double_3x3_2 224 224 3
    inception_5b_pool_proj 1024 128 1
"""


def _published_bn_inception_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published checkpoint (saved before PyTorch 0.4, so
    without num_batches_tracked)."""
    shapes = {}
    for line in _REFERENCE_CONVS.strip().splitlines():
        name, c_in, c_out, k = line.split()
        c_in, c_out, k = int(c_in), int(c_out), int(k)
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)
        shapes[f"{name}.bias"] = (c_out,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}_bn.{stat}"] = (c_out,)
    shapes["last_linear.weight"] = (1000, 1024)
    shapes["last_linear.bias"] = (1000,)
    return shapes


def _fake_published_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _published_bn_inception_shapes().items():
        tensor = torch.randn(shape, generator=g) * 0.05
        if key.endswith("running_var"):
            tensor = tensor.abs() + 0.5
        state[key] = tensor
    return state


@pytest.fixture(scope="module")
def bninception_model():
    return BNInception().eval()


def test_bn_inception_keys_and_shapes_match_the_published_checkpoint(bninception_model):
    expected = _published_bn_inception_shapes()
    assert len(expected) == 416
    own = {k: tuple(v.shape) for k, v in bninception_model.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert own == expected


def test_bn_inception_parameter_count(bninception_model):
    # Oracle: the reference's learnable tensors (everything but running stats).
    expected = sum(torch.Size(s).numel() for k, s in _published_bn_inception_shapes().items()
                   if not k.endswith(("running_mean", "running_var")))
    assert expected == 11_295_240  # 10,270,240 features + 1,025,000 classifier
    assert sum(p.numel() for p in bninception_model.parameters()) == expected
    features_only = expected - sum(p.numel() for p in bninception_model.last_linear.parameters())
    assert features_only == 10_270_240


def test_bn_inception_loads_published_layout_strictly_from_weights_path(tmp_path):
    state = _fake_published_checkpoint()
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(state, path)
    model = bn_inception(pretrained=True, weights_path=str(path))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bn_inception_loads_tsn_layout_with_1xC_batchnorm_tensors(tmp_path):
    state = _fake_published_checkpoint(seed=1)
    tsn = {k: (v.unsqueeze(0) if "_bn." in k else v) for k, v in state.items()}
    path = tmp_path / "tsn_bn_inception.pth"
    torch.save(tsn, path)
    model = bn_inception(pretrained=True, weights_path=str(path))
    assert torch.equal(model.inception_4a_3x3_bn.running_mean,
                       state["inception_4a_3x3_bn.running_mean"])


def test_bn_inception_loads_tsn_layout_with_its_fc_classifier(tmp_path):
    state = _fake_published_checkpoint(seed=3)
    tsn = {(k.replace("last_linear.", "fc.") if k.startswith("last_linear.") else k): v for k, v in state.items()}
    assert "fc.weight" in tsn and "last_linear.weight" not in tsn
    path = tmp_path / "bn_inception-9f5701afb96c8044.pth"
    torch.save(tsn, path)
    model = bn_inception(pretrained=True, weights_path=str(path))
    assert torch.equal(model.last_linear.weight, state["last_linear.weight"])
    assert model.weights_source == {"file": path.name, "sha256": sha256_of(str(path))}


def test_bn_inception_rejects_a_wrong_checkpoint(tmp_path):
    state = _fake_published_checkpoint()
    del state["inception_5b_pool_proj.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="inception_5b_pool_proj.weight"):
        bn_inception(pretrained=True, weights_path=str(path))


def test_bn_inception_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_internet(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_internet)
    expected_file = os.path.join(str(tmp_path), "hub", "checkpoints",
                                 "bn_inception-52deb4733.pth")
    with pytest.raises(RuntimeError) as info:
        bn_inception(pretrained=True)
    message = str(info.value)
    assert BN_INCEPTION_URL in message and expected_file in message
    # the ways out: the setting on the command line and in Python, and the other backbone
    assert "--set weights_path=" in message and 'overrides={"weights_path"' in message
    assert "--set backbone=resnet50" in message and BN_INCEPTION_SHA256_PREFIX in message
    assert not os.path.exists(expected_file)


def _as_published(monkeypatch, path) -> str:
    """Make `path` pass the published file's SHA-256 check: no file of ours can have the
    real prefix, so the expected prefix becomes this file's (same length)."""
    digest = sha256_of(str(path))
    monkeypatch.setattr(bninception_module, "BN_INCEPTION_SHA256_PREFIX",
                        digest[:len(BN_INCEPTION_SHA256_PREFIX)])
    return digest


def test_the_published_file_name_carries_its_sha256_prefix():
    # torch.hub's convention: <name>-<first digits of the SHA-256>.<ext>
    assert BN_INCEPTION_FILE == "bn_inception-52deb4733.pth"
    assert BN_INCEPTION_SHA256_PREFIX == "52deb4733"
    assert all(url.endswith("/" + BN_INCEPTION_FILE) for url in BN_INCEPTION_URLS)


def test_bn_inception_uses_the_cached_file_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("should not download"))
    cached = tmp_path / "hub" / "checkpoints" / "bn_inception-52deb4733.pth"
    cached.parent.mkdir(parents=True)
    state = _fake_published_checkpoint(seed=2)
    torch.save(state, cached)
    digest = _as_published(monkeypatch, cached)
    model = bn_inception(pretrained=True)
    assert torch.equal(model.conv1_7x7_s2.weight, state["conv1_7x7_s2.weight"])
    assert model.weights_source == {"file": BN_INCEPTION_FILE, "sha256": digest}


def test_a_cached_file_with_the_wrong_sha256_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("should not download"))
    cached = tmp_path / "hub" / "checkpoints" / BN_INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    torch.save(_fake_published_checkpoint(seed=2), cached)  # not the published file
    with pytest.raises(RuntimeError, match="does not start with 52deb4733") as info:
        bn_inception(pretrained=True)
    assert str(cached) in str(info.value) and "weights_path" in str(info.value)


def test_the_download_is_checked_and_lands_in_the_cache(tmp_path, monkeypatch):
    """A file:// URL stands in for the host: torch.hub's real downloader runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "host" / BN_INCEPTION_FILE
    served.parent.mkdir()
    state = _fake_published_checkpoint(seed=4)
    torch.save(state, served)
    digest = _as_published(monkeypatch, served)
    monkeypatch.setattr(bninception_module, "BN_INCEPTION_URLS", (served.as_uri(),))
    model = bn_inception(pretrained=True)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / BN_INCEPTION_FILE
    assert cached.is_file() and sha256_of(str(cached)) == digest
    assert torch.equal(model.inception_5b_pool_proj.weight, state["inception_5b_pool_proj.weight"])
    assert sorted(p.name for p in cached.parent.iterdir()) == [BN_INCEPTION_FILE]  # no partial file left


def test_a_download_with_the_wrong_sha256_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    served = tmp_path / "host" / BN_INCEPTION_FILE
    served.parent.mkdir()
    torch.save(_fake_published_checkpoint(seed=5), served)  # a substituted file
    monkeypatch.setattr(bninception_module, "BN_INCEPTION_URLS", (served.as_uri(),))
    with pytest.raises(RuntimeError) as info:
        bn_inception(pretrained=True)
    message = str(info.value)
    assert "SHA-256 mismatch" in message and sha256_of(str(served)) in message
    assert served.as_uri() in message and "--set backbone=resnet50" in message
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert list(folder.iterdir()) == []  # neither the file nor a partial download


def test_the_next_source_is_tried_when_one_fails(tmp_path, monkeypatch):
    good = tmp_path / "mirror" / BN_INCEPTION_FILE
    good.parent.mkdir()
    torch.save(_fake_published_checkpoint(seed=6), good)
    bad = tmp_path / "corrupt" / BN_INCEPTION_FILE
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:1000])  # truncated
    _as_published(monkeypatch, good)
    calls = []
    real = torch.hub.download_url_to_file

    def downloader(url, dst, *args, **kwargs):
        calls.append(url)
        if url.startswith("http://unreachable"):
            raise urllib.error.URLError("[Errno 110] Connection timed out")
        return real(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", downloader)
    destination = tmp_path / "cache" / BN_INCEPTION_FILE
    urls = ("http://unreachable.example/" + BN_INCEPTION_FILE, bad.as_uri(), good.as_uri())
    assert fetch_bn_inception_weights(str(destination), urls=urls, progress=False) == str(destination)
    assert calls == list(urls)
    assert destination.read_bytes() == good.read_bytes()


@pytest.mark.parametrize("size", [224, 227])
def test_bn_inception_output_shapes(bninception_model, size):
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        feature_map = bninception_model.features(x)
        logits = bninception_model.logits(feature_map)
        embedding = EmbeddingModel(bninception_model, embedding_dim=None).eval()(x)
    assert feature_map.shape == (1, 1024, 7, 7)
    assert logits.shape == (1, 1000)
    assert embedding.shape == (1, 1024)


def test_bn_inception_pretrained_false_with_weights_path_is_an_error():
    with pytest.raises(ValueError, match="pretrained"):
        bn_inception(pretrained=False, weights_path="x.pth")


# ---------------------------------------------------------------------------
# ResNet-50
# ---------------------------------------------------------------------------

def test_resnet50_features_reproduce_torchvision_without_fc():
    from torchvision.models import resnet50 as tv_resnet50

    torch.manual_seed(0)
    ours = resnet50(pretrained=False).eval()
    reference = tv_resnet50(weights=None)
    reference.fc = nn.Identity()
    reference.load_state_dict(ours.body.state_dict())
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = ours(x)
        assert pooled.shape == (2, 2048)
        assert torch.allclose(pooled, reference(x), atol=1e-5)
        assert ours.features(x).shape == (2, 2048, 2, 2)
    assert not any(isinstance(m, nn.Linear) for m in ours.modules())


def test_resnet50_unknown_weights_name():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        resnet50(pretrained=True, weights="IMAGENET21K")


# ---------------------------------------------------------------------------
# Embedding head, frozen BatchNorm, registry, preprocessing
# ---------------------------------------------------------------------------

def _bn_state(module):
    return {k: v.clone() for k, v in module.state_dict().items()
            if "running" in k or "num_batches" in k}


def test_frozen_batchnorm_stays_frozen_after_train():
    torch.manual_seed(0)
    model = EmbeddingModel(tiny_cnn(), embedding_dim=8, freeze_bn=True)
    before = _bn_state(model)
    model.train()
    assert model.training and model.head.training
    assert all(not bn.training for bn in batchnorm_layers(model))
    out = model(torch.randn(6, 3, 32, 32) * 3 + 1)
    out.pow(2).sum().backward()
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    for bn in batchnorm_layers(model):
        assert not bn.weight.requires_grad and bn.weight.grad is None
    assert model.head.linear.weight.grad is not None
    assert model.backbone.body[0].weight.grad is not None  # convs still train


def test_unfrozen_batchnorm_updates_running_stats():
    # The counterpart of the test above: without freezing, the same forward moves
    # the statistics (so the frozen test could fail).
    torch.manual_seed(0)
    model = EmbeddingModel(tiny_cnn(), embedding_dim=8, freeze_bn=False).train()
    before = _bn_state(model)
    model(torch.randn(6, 3, 32, 32) * 3 + 1)
    after = _bn_state(model)
    assert not all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
@pytest.mark.parametrize("embedding_dim", [16, None])
def test_embedding_shapes_and_unit_norm(pooling, embedding_dim):
    model = EmbeddingModel(tiny_cnn(width=32), embedding_dim=embedding_dim,
                           pooling=pooling).eval()
    out = model(torch.randn(5, 3, 40, 40))
    assert out.shape == (5, embedding_dim or 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_normalize_false_keeps_raw_embeddings():
    torch.manual_seed(0)
    model = EmbeddingModel(tiny_cnn(), embedding_dim=16, normalize=False).eval()
    norms = model(torch.randn(4, 3, 32, 32)).norm(dim=1)
    assert not torch.allclose(norms, torch.ones(4), atol=1e-2)


def test_global_pool_against_torch_pooling():
    x = torch.randn(3, 7, 5, 4)
    avg = F.adaptive_avg_pool2d(x, 1).flatten(1)
    mx = F.adaptive_max_pool2d(x, 1).flatten(1)
    assert torch.allclose(GlobalPool("avg")(x), avg, atol=1e-6)
    assert torch.allclose(GlobalPool("max")(x), mx)
    assert torch.allclose(GlobalPool("avg+max")(x), avg + mx, atol=1e-6)


def test_embedding_head_is_max_pool_linear_l2_like_the_official_model():
    torch.manual_seed(0)
    model = EmbeddingModel(tiny_cnn(), embedding_dim=12).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fmap = model.backbone.features(x)
        manual = F.normalize(model.head.linear(fmap.amax(dim=(2, 3))), dim=1)
        assert torch.allclose(model(x), manual, atol=1e-6)


def test_embedding_model_from_block_equals_forward(lite0):
    model = EmbeddingModel(lite0, embedding_dim=32, pooling="avg").eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        cached = lite0.forward_until_block(x, 11)
        assert torch.allclose(model.forward_from_block(cached, 11), model(x), atol=1e-5)
    tiny = EmbeddingModel(tiny_cnn(), embedding_dim=4)
    with pytest.raises(TypeError, match="forward_from_block"):
        tiny.forward_from_block(torch.zeros(1, 3, 8, 8), 1)


def test_embedding_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="avg, max, avg\\+max"):
        EmbeddingModel(tiny_cnn(), pooling="mean")
    with pytest.raises(ValueError, match="embedding_dim"):
        EmbeddingModel(tiny_cnn(), embedding_dim=0)
    with pytest.raises(TypeError, match="not a backbone"):
        EmbeddingModel(nn.Linear(3, 3))


def test_get_backbone_builds_each_name_and_lists_valid_names_on_error():
    assert isinstance(get_backbone("bn_inception", pretrained=False), BNInception)
    assert get_backbone("resnet50", pretrained=False).num_features == 2048
    assert get_backbone("efficientnet_lite0").num_features == 1280
    assert get_backbone("tiny_cnn", pretrained=False, width=16).num_features == 16
    with pytest.raises(ValueError) as info:
        get_backbone("vgg16")
    for name in ("bn_inception", "efficientnet_lite0", "resnet50", "tiny_cnn"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="no pretrained weights"):
        get_backbone("tiny_cnn", pretrained=True)


def test_backbone_normalize_conventions():
    rgb = torch.tensor([0.2, 0.5, 1.0]).view(3, 1, 1)
    bgr_caffe = BackboneNormalize(BN_INCEPTION_INPUT)(rgb).flatten()
    # BGR order, 0-255, Caffe mean (104, 117, 128) subtracted, no scaling.
    assert torch.allclose(bgr_caffe, torch.tensor([255 - 104.0, 127.5 - 117.0, 51 - 128.0]))
    lite = BackboneNormalize(EFFICIENTNET_LITE_INPUT)(rgb.unsqueeze(0)).flatten()
    assert torch.allclose(lite, 2 * rgb.flatten() - 1)
    with pytest.raises(ValueError, match="RGB images"):
        BackboneNormalize(EFFICIENTNET_LITE_INPUT)(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="color_space"):
        InputConfig("HSV", (0, 1), (0, 0, 0), (1, 1, 1), 32)


# ---------------------------------------------------------------------------
# The benchmark script
# ---------------------------------------------------------------------------

def test_bench_models_small_run_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench_models.py"),
         "--small", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| size | batch |" in proc.stdout
    result = json.loads(out.read_text())
    forward = result["forward"]
    assert len(forward) == 2 * 2 * 2  # batches x folded x channels_last
    assert all(0 < r["images_per_s"] <= r["images_per_s_best"] for r in forward)
    assert {(r["folded_bn"], r["channels_last"]) for r in forward} == {
        (False, False), (False, True), (True, False), (True, True)}
    shapes = {r["block"]: r["activation_shape"] for r in result["cache"]}
    assert shapes == {8: [80, 2, 2], 11: [112, 2, 2]}
