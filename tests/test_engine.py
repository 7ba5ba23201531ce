"""The training engine on the smoke profile: it learns, records, resumes exactly; bad settings fail clearly."""
import json
import os

import pytest
import torch

from dmlutils import engine
from dmlutils.__main__ import main as cli
from dmlutils.profiles import PROFILES, make_config, parse_set_arguments


def smoke(loss="multi_similarity", **overrides):
    return make_config("smoke", loss, {"iterations": 20, "eval_every": 10, **overrides})


def test_unknown_profile_lists_the_profiles():
    with pytest.raises(ValueError, match="unknown profile 'gpu'; valid profiles: smoke, cpu, cpu_full, paper"):
        make_config("gpu")


def test_unknown_setting_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'.*valid settings: .*lr"):
        make_config("smoke", "multi_similarity", {"learning_rate": "0.1"})


def test_unknown_loss_hparam_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown hyper-parameter 'gamma' for loss 'multi_similarity'; valid: alpha"):
        make_config("smoke", "multi_similarity", {"loss.gamma": "2"})


def test_unknown_loss_lists_the_losses():
    with pytest.raises(ValueError, match="unknown loss 'ms'; valid names: .*multi_similarity"):
        make_config("smoke", "ms")


def test_set_values_are_parsed_to_the_defaults_type():
    config = make_config(
        "cpu",
        "multi_similarity",
        parse_set_arguments(["lr=3e-5", "iterations=300", "freeze_bn=false", "lr_milestones=(100, 200)", "loss.beta=50"]),
    )
    assert config["lr"] == 3e-5 and config["iterations"] == 300 and isinstance(config["iterations"], int)
    assert config["freeze_bn"] is False and config["lr_milestones"] == (100, 200)
    assert config["loss_hparams"] == {"beta": 50}
    with pytest.raises(ValueError, match="iterations expects a number"):
        make_config("cpu", "multi_similarity", {"iterations": "many"})


def test_the_paper_profile_holds_the_papers_settings():
    paper = PROFILES["paper"]
    assert (paper["p"], paper["k"], paper["lr"], paper["weight_decay"]) == (16, 5, 3e-5, 5e-4)
    assert (paper["iterations"], paper["lr_milestones"], paper["eval_every"]) == (3000, (1200, 2400), 200)
    assert (paper["backbone"], paper["embedding_dim"], paper["pooling"], paper["freeze_bn"]) == ("bn_inception", 512, "max", True)


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    record = engine.train(smoke(), out / "run", record_path=out / "record.json", progress=False, device="cpu")
    return record, out


def test_smoke_run_learns_and_writes_a_complete_record(smoke_record):
    record, out = smoke_record
    on_disk = json.loads((out / "record.json").read_text())
    assert on_disk["final"] == record["final"]
    for key in ("profile", "loss", "loss_hparams", "seed", "git", "device", "wall_time_seconds", "evaluations", "final", "config"):
        assert key in on_disk, key
    assert on_disk["loss_hparams"]["beta"] == 40.0
    assert [e["iteration"] for e in on_disk["evaluations"]] == [0, 10, 20]
    assert on_disk["evaluations"][0]["train_seconds"] == 0 and all(e["train_seconds"] > 0 for e in on_disk["evaluations"][1:])
    assert sum(e["train_seconds"] + e["eval_seconds"] for e in on_disk["evaluations"]) == pytest.approx(on_disk["wall_time_seconds"])
    # CPU time beside wall time: none before the first step, then some, each window's own (no more than every
    # core busy all along; a time counted from the process's start would exceed it)
    assert on_disk["evaluations"][0]["train_cpu_seconds"] == 0 and all(e["train_cpu_seconds"] > 0 for e in on_disk["evaluations"][1:])
    cores = os.cpu_count()
    assert all(e["train_cpu_seconds"] <= cores * e["train_seconds"] + 0.01 and 0 <= e["eval_cpu_seconds"] <= cores * e["eval_seconds"] + 0.01
               for e in on_disk["evaluations"])
    first, last = on_disk["evaluations"][0]["metrics"], on_disk["final"]
    # synthetic classes are learnable: training must beat the random-init network
    assert last["recall@1"] > first["recall@1"] + 0.05
    assert set(last) >= {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "precision@1"}


def test_resume_reaches_the_same_final_metrics(smoke_record, tmp_path):
    record, _ = smoke_record
    interrupted = engine.train(smoke(), tmp_path / "run", stop_after=10, progress=False, device="cpu")
    assert "final" not in interrupted and interrupted["evaluations"][-1]["iteration"] == 10
    resumed = engine.train(smoke(), tmp_path / "run", resume=True, progress=False, device="cpu")
    assert resumed["resumed_at"] == [10]
    assert resumed["final"] == record["final"]
    for a, b in zip(resumed["evaluations"], record["evaluations"]):
        assert a["iteration"] == b["iteration"] and a["metrics"] == b["metrics"]
        assert a["train_loss"] == b["train_loss"] and a.get("mining") == b.get("mining")


def test_an_ms_run_records_what_its_mining_removes_without_changing_the_run(smoke_record, tmp_path, monkeypatch):
    record, _ = smoke_record
    assert "mining" not in record["evaluations"][0]  # nothing trained before the first evaluation
    for evaluation in record["evaluations"][1:]:
        mining = evaluation["mining"]
        assert set(mining) == {"positive_kept", "negative_kept", "positive_weight_dropped", "negative_weight_dropped"}
        assert all(0 <= v <= 1 for v in mining.values()) and mining["negative_kept"] < 1  # smoke batches are mined
    monkeypatch.setattr(engine.loop, "mining_probe", lambda loss: None)
    unmeasured = engine.train(smoke(), tmp_path / "run", progress=False, device="cpu")
    assert unmeasured["final"] == record["final"]  # measuring is read-only: the same run, bit for bit
    assert all("mining" not in e for e in unmeasured["evaluations"])


def test_only_a_mining_ms_loss_is_measured():
    from dmlutils.losses import get_loss

    assert engine.mining_probe(get_loss("multi_similarity")) is not None
    assert engine.mining_probe(get_loss("multi_similarity", mine_negatives=False)) is not None
    assert engine.mining_probe(get_loss("multi_similarity", mine_positives=False, mine_negatives=False)) is None
    assert engine.mining_probe(get_loss("triplet")) is None


def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path):
    engine.train(smoke(), tmp_path / "run", stop_after=10, progress=False, device="cpu")
    with pytest.raises(ValueError, match="other settings \\(lr differ\\)"):
        engine.train(smoke(lr=0.5), tmp_path / "run", resume=True, progress=False, device="cpu")


def test_resume_refuses_a_checkpoint_made_under_another_version_of_the_profile(tmp_path, monkeypatch):
    # a setting a new version adds is missing from an older checkpoint's config, and filling it
    # in with the new value would continue an old-version run as if it were of the new one
    from dmlutils import profiles

    engine.train(smoke(), tmp_path / "run", stop_after=10, progress=False, device="cpu")
    made = profiles.PROFILE_VERSIONS["smoke"]
    monkeypatch.setitem(profiles.PROFILE_VERSIONS, "smoke", made + 1)
    with pytest.raises(ValueError, match=f"made under version {made} of the smoke profile.*at version {made + 1} now; delete that folder"):
        engine.train(smoke(), tmp_path / "run", resume=True, progress=False, device="cpu")


def test_resume_names_a_checkpoint_another_version_of_the_code_wrote(tmp_path):
    engine.train(smoke(), tmp_path / "run", stop_after=10, progress=False, device="cpu")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]  # another group layout
    torch.save(state, checkpoint)
    with pytest.raises(ValueError, match="does not fit this version of dmlutils.*delete that folder"):
        engine.train(smoke(), tmp_path / "run", resume=True, progress=False, device="cpu")


@pytest.mark.parametrize("loss", ["triplet_center", "npair", "ranked_list"])
def test_every_kind_of_loss_trains(loss, tmp_path):
    record = engine.train(
        make_config("smoke", loss, {"iterations": 4, "eval_every": 2}), tmp_path, progress=False, device="cpu"
    )
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in record["evaluations"][1:])


def test_cli_reports_bad_settings_without_a_traceback(capsys):
    assert cli(["train", "--profile", "smoke", "--set", "learning_rate=1"]) == 2
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err


def test_cli_writes_the_record(tmp_path):
    record = tmp_path / "r.json"
    args = ["train", "--profile", "smoke", "--loss", "contrastive", "--quiet", "--record", str(record), "--run-dir", str(tmp_path / "run")]
    assert cli(args + ["--set", "iterations=2", "--set", "eval_every=1"]) == 0
    assert json.loads(record.read_text())["loss"] == "contrastive"


def test_cached_profile_trains_exactly_the_blocks_after_the_cache():
    from dmlutils.engine import trainable_parameters
    from dmlutils.models import EmbeddingModel, efficientnet_lite0

    config = make_config("cpu")
    model = EmbeddingModel(efficientnet_lite0(pretrained=False), embedding_dim=8, pooling="avg", freeze_bn=True)
    backbone_params, head_params = trainable_parameters(model, config)
    trained = {n for n, p in model.backbone.named_parameters() if any(p is q for q in backbone_params)}
    blocks = {int(n.split(".")[1]) for n in trained if n.startswith("_blocks.")}
    assert blocks == set(range(config["cache_from_block"], model.backbone.num_blocks))
    assert any(n.startswith("_conv_head.") for n in trained)
    assert not any(n.startswith(("_conv_stem.", "_bn0.", "_fc.")) for n in trained)
    assert len(head_params) == 2  # the linear layer's weight and bias


def test_the_loss_parameters_learn_at_loss_lr_or_else_at_the_heads_rate():
    from dmlutils.losses.triplet_center import TripletCenterLoss

    config = smoke("triplet_center", head_lr=0.002)
    model, loss_fn = engine.build_model(config), TripletCenterLoss(num_classes=5, embedding_dim=config["embedding_dim"])
    centres = {id(p) for p in loss_fn.parameters()}

    def centre_rate(groups):
        (rate,) = [g["lr"] for g in groups if centres <= {id(p) for p in g["params"]}]
        return rate

    default = engine.parameter_groups(model, loss_fn, config)
    assert centre_rate(default) == 0.002
    # by default the centres share the head's group: the groups (and so the optimiser
    # checkpoints) of runs made before `loss_lr` existed
    assert len(default) == 2 and len(engine.parameter_groups(model, loss_fn, {**config, "loss_lr": 0.05})) == 3
    assert centre_rate(engine.parameter_groups(model, loss_fn, {**config, "loss_lr": 0.05})) == 0.05
