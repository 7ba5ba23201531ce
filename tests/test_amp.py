"""GPU efficiency settings, tested without a GPU: autocast (bf16 on CPU, fp16 with a
GradScaler), the loss in float32, channels-last inputs, cudnn.benchmark restored,
and every setting in the run record."""
import contextlib

import pytest
import torch

from dmlutils import engine
from dmlutils.profiles import AMP_MODES, PROFILES, make_config

NEW_SETTINGS = {"amp": "off", "channels_last": False, "cudnn_benchmark": False, "pin_memory": False}


def smoke(**overrides):
    return make_config("smoke", "multi_similarity", {"iterations": "2", "eval_every": "2", **{k: str(v) for k, v in overrides.items()}})


# Settings a profile adopts on purpose: cpu_full's whole-backbone step runs channels-last.
CHOSEN = {("cpu_full", "channels_last"): True}


def test_every_profile_has_the_settings_with_neutral_defaults():
    for name, profile in PROFILES.items():
        for key, default in {**NEW_SETTINGS, "max_classes": 0, "weights_path": ""}.items():
            default = CHOSEN.get((name, key), default)
            assert profile[key] == default and type(profile[key]) is type(default), (name, key)
        assert "num_workers" in profile


def test_amp_accepts_the_three_modes_only():
    assert AMP_MODES == ("off", "bf16", "fp16")
    assert make_config("paper", "multi_similarity", {"amp": "bf16"})["amp"] == "bf16"
    with pytest.raises(ValueError, match="unknown amp 'fp32'; valid: off, bf16, fp16"):
        make_config("paper", "multi_similarity", {"amp": "fp32"})


def test_autocast_is_a_no_op_when_off_and_bf16_on_cpu():
    assert isinstance(engine.autocast({"amp": "off"}, "cpu"), contextlib.nullcontext)
    with engine.autocast({"amp": "bf16"}, torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


class _Spy:
    """Wraps engine.build_model / build_loss to see the initial weights, the dtype the
    head's linear layer computes in, and what the loss receives and computes in."""

    def __init__(self, monkeypatch):
        self.initial, self.head_dtypes, self.loss_inputs, self.loss_matmul = None, [], [], []
        self.inputs = []
        real_model, real_loss = engine.build_model, engine.build_loss

        def build_model(config):
            model = real_model(config)
            self.initial = {k: v.clone() for k, v in model.state_dict().items()}
            self.model = model
            model.head.linear.register_forward_hook(lambda m, args, out: self.head_dtypes.append(out.dtype))
            model.register_forward_pre_hook(lambda m, args: self.inputs.append((m.training, args[0])))
            return model

        def build_loss(config, num_classes, embedding_dim):
            loss = real_loss(config, num_classes, embedding_dim)
            forward = loss.forward

            def spied(embeddings, labels, *args, **kwargs):
                self.loss_inputs.append(embeddings.dtype)
                self.loss_matmul.append((embeddings @ embeddings.T).dtype)  # what its own ops compute in
                return forward(embeddings, labels, *args, **kwargs)

            loss.forward = spied
            return loss

        monkeypatch.setattr(engine.loop, "build_model", build_model)
        monkeypatch.setattr(engine.loop, "build_loss", build_loss)


def test_bf16_autocast_on_cpu_trains_with_a_float32_loss(monkeypatch, tmp_path):
    spy = _Spy(monkeypatch)
    record = engine.train(smoke(amp="bf16"), tmp_path / "run", progress=False, device="cpu")
    # the forward pass ran under autocast: the head's linear layer computed in bfloat16
    assert torch.bfloat16 in spy.head_dtypes
    # the loss received float32 embeddings and ran outside autocast
    assert spy.loss_inputs and set(spy.loss_inputs) == {torch.float32}
    assert set(spy.loss_matmul) == {torch.float32}
    # two steps: a finite loss, and the trained parameters moved
    loss = record["evaluations"][-1]["train_loss"]
    assert loss == loss and abs(loss) < float("inf")
    after = spy.model.state_dict()
    assert not torch.equal(after["head.linear.weight"], spy.initial["head.linear.weight"])
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert record["config"]["amp"] == "bf16"


def test_amp_off_never_autocasts(monkeypatch, tmp_path):
    spy = _Spy(monkeypatch)
    engine.train(smoke(), tmp_path / "run", progress=False, device="cpu")
    assert set(spy.head_dtypes) == {torch.float32} and set(spy.loss_matmul) == {torch.float32}


def test_fp16_uses_a_grad_scaler_that_resumes(monkeypatch, tmp_path):
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("this torch has no torch.amp.GradScaler")
    scalers = []
    real_scaler = torch.amp.GradScaler

    def spy_scaler(*args, **kwargs):
        scalers.append(real_scaler(*args, **kwargs))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", spy_scaler)
    config = make_config("smoke", "multi_similarity", {"iterations": "4", "eval_every": "2", "amp": "fp16"})
    engine.train(config, tmp_path / "run", stop_after=2, progress=False, device="cpu")
    assert scalers[-1].is_enabled()
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["scaler"]
    assert saved["scale"] > 0
    record = engine.train(config, tmp_path / "run", resume=True, progress=False, device="cpu")
    assert record["final"]["iteration"] == 4 and record["resumed_at"] == [2]
    assert scalers[-1].get_scale() > 0
    # amp off: the scaler is a disabled pass-through
    engine.train(smoke(), tmp_path / "off", progress=False, device="cpu")
    assert not scalers[-1].is_enabled()


def test_channels_last_feeds_channels_last_images(monkeypatch, tmp_path):
    spy = _Spy(monkeypatch)
    engine.train(smoke(channels_last=True), tmp_path / "run", progress=False, device="cpu")
    training = [x for is_training, x in spy.inputs if is_training]
    assert len(training) == 2 and all(x.is_contiguous(memory_format=torch.channels_last) for x in training)
    kernels = [p for p in spy.model.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)

    spy_off = _Spy(monkeypatch)
    engine.train(smoke(), tmp_path / "off", progress=False, device="cpu")
    training = [x for is_training, x in spy_off.inputs if is_training]
    assert len(training) == 2 and not any(x.is_contiguous(memory_format=torch.channels_last) for x in training)


def test_cudnn_benchmark_is_on_during_the_run_and_restored_after(monkeypatch, tmp_path):
    during = []
    real_model = engine.build_model
    monkeypatch.setattr(engine.loop, "build_model", lambda config: (during.append(torch.backends.cudnn.benchmark), real_model(config))[1])
    before = torch.backends.cudnn.benchmark
    engine.train(smoke(cudnn_benchmark=True), tmp_path / "run", progress=False, device="cpu")
    assert during == [True] and torch.backends.cudnn.benchmark == before


def test_pin_memory_only_pins_for_cuda(monkeypatch, tmp_path):
    pins = []
    real_loader = engine.sources.DataLoader

    def spy_loader(*args, **kwargs):
        pins.append(kwargs.get("pin_memory"))
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(engine.sources, "DataLoader", spy_loader)
    monkeypatch.setattr(engine.evaluation, "DataLoader", spy_loader)
    record = engine.train(smoke(pin_memory=True), tmp_path / "run", progress=False, device="cpu")
    assert pins and not any(pins)  # no CUDA here: pinning would only warn
    assert record["config"]["pin_memory"] is True


def test_the_record_shows_every_efficiency_setting(tmp_path):
    settings = dict(amp="bf16", channels_last=True, cudnn_benchmark=True, pin_memory=True, num_workers=1)
    record = engine.train(smoke(**settings), tmp_path / "run", progress=False, device="cpu")
    assert {k: record["config"][k] for k in settings} == settings
