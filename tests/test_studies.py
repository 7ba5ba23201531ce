"""Held-out validation classes and the per-loss setting studies that select on them."""
import json

import numpy as np
import pytest

from dmlutils import engine, studies
from dmlutils.profiles import make_config
from dmlutils.records import load_validation_runs


def test_validation_split_holds_out_the_last_classes_and_nothing_else():
    labels = np.repeat(np.arange(10), [3, 4, 5, 3, 4, 5, 3, 4, 5, 6])
    fit, held_out, classes = engine.validation_split({"validation_classes": 3}, labels)
    assert classes == [7, 8, 9]
    assert set(labels[held_out]) == {7, 8, 9} and set(labels[fit]) == set(range(7))
    assert sorted(np.concatenate([fit, held_out]).tolist()) == list(range(len(labels)))


@pytest.mark.parametrize("n", [1, 9, 10])
def test_validation_split_refuses_to_leave_too_few_classes(n):
    with pytest.raises(ValueError, match="between 2 and 8"):
        engine.validation_split({"validation_classes": n}, np.repeat(np.arange(10), 4))


class _Untouchable:
    """A test split that fails if anything reads an image or its length."""

    def __init__(self, dataset):
        self.labels = dataset.labels

    def __len__(self):
        raise AssertionError("the test split was used by a validation run")

    def __getitem__(self, index):
        raise AssertionError("the test split was read by a validation run")


def test_a_validation_run_trains_without_the_held_out_classes_and_never_reads_the_test_split(tmp_path, monkeypatch):
    build = engine.build_datasets

    def build_with_untouchable_test(config, root=None):
        train, test = build(config, root)
        return train, _Untouchable(test)

    monkeypatch.setattr(engine.loop, "build_datasets", build_with_untouchable_test)
    seen_labels = set()
    feed = engine.ImageLoaderSource.batches

    def recording_batches(self, sampler, start, count):
        for x, y in feed(self, sampler, start, count):
            seen_labels.update(y.tolist())
            yield x, y

    monkeypatch.setattr(engine.ImageLoaderSource, "batches", recording_batches)
    config = make_config("smoke", "multi_similarity", {"validation_classes": 2, "iterations": 4, "eval_every": 2})
    record = engine.train(config, tmp_path / "run", progress=False)
    assert record["evaluated_on"] == {"split": "validation", "images": 2 * 20, "classes": 2, "labels": [8, 9]}
    assert seen_labels and max(seen_labels) <= 7  # classes 8 and 9 were never trained on
    assert "best_on_validation" in record and "best_on_test" not in record


def _record(split, score):
    return {"evaluated_on": {"split": split}, "final": {studies.CRITERION: score}}


def test_the_studies_choose_by_map_at_r_like_the_recipe_study():
    # On 20 held-out classes Recall@1 is near its ceiling for every run: where the two
    # metrics disagree, the candidate with the better MAP@R must win, as in the recipe study.
    from dmlutils import recipe

    def scored(recall, map_at_r):
        return {"evaluated_on": {"split": "validation"}, "final": {"recall@1": recall, "map@r": map_at_r}}

    chosen, scores = studies.select({"default": scored(0.90, 0.47), "tuned": scored(0.89, 0.54)})
    assert chosen == "tuned" and scores == {"default": 0.47, "tuned": 0.54}
    assert studies.CRITERION == recipe.CRITERION


def test_select_takes_the_best_final_score_and_breaks_ties_towards_the_first_listed():
    chosen, scores = studies.select({"default": _record("validation", 0.5), "a": _record("validation", 0.7), "b": _record("validation", 0.7)})
    assert chosen == "a" and scores == {"default": 0.5, "a": 0.7, "b": 0.7}
    assert studies.select({"default": _record("validation", 0.7), "a": _record("validation", 0.7)})[0] == "default"


def test_select_refuses_records_evaluated_on_the_test_split():
    with pytest.raises(ValueError, match="not on validation"):
        studies.select({"default": _record("test", 0.9)})


def test_unknown_study_names_the_losses_that_have_one():
    with pytest.raises(ValueError, match="studies exist for: contrastive"):
        studies.study("multi_similarity")


def test_a_study_chooses_on_validation_and_trains_the_choice_on_the_test_split(tmp_path, monkeypatch):
    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    short = {"iterations": "4", "eval_every": "2"}
    selection = studies.run_study("npair", "smoke", tmp_path / "results", tmp_path / "runs", progress=False, extra_overrides=short, seeds=(0,))
    folder = tmp_path / "results" / "smoke" / "study" / "npair"
    validation = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("default", "scale_10")}
    best = max(validation, key=lambda n: (validation[n]["final"][studies.CRITERION], n == "default"))
    assert selection["chosen"] == best
    assert json.loads((folder / "selection.json").read_text())["chosen"] == best
    assert all(r["config"]["validation_classes"] == 2 for r in validation.values())
    references = load_validation_runs("smoke", tmp_path / "results")  # the floor and MS on the same held-out classes
    assert set(references) == {"baseline", "multi_similarity"}
    assert all(r["evaluated_on"]["labels"] == [8, 9] for r in references.values())
    assert selection["test_records"] == {"0": "smoke/tuned/npair/seed_0.json"}
    tuned = json.loads((tmp_path / "results" / "smoke" / "tuned" / "npair" / "seed_0.json").read_text())
    assert tuned["evaluated_on"]["split"] == "test" and tuned["config"]["validation_classes"] == 0
    assert tuned["loss_hparams"]["scale"] == (10.0 if best == "scale_10" else 1.0)


def test_the_choice_runs_with_the_seeds_of_the_losses_own_runs_and_reuses_them_per_seed(tmp_path, monkeypatch):
    from dmlutils import manifest

    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    monkeypatch.setattr(studies, "select", lambda records: ("default", {n: 0.0 for n in records}))
    assert studies.tuned_seeds("npair", "cpu") == manifest.run("npair").seeds == (0, 1, 2)
    assert studies.tuned_seeds("npair", "smoke") == (0, 1)  # the manifest's two seeds at smoke
    results, short = tmp_path / "results", {"iterations": "4", "eval_every": "2"}
    # The loss's own run of seed 1 exists, with the chosen (default) setting; seed 0's does not.
    own = manifest.record_path(results, "smoke", "npair", 1)
    engine.train(make_config("smoke", "npair", {**short, "seed": 1}), tmp_path / "own", record_path=own, progress=False)
    stamp = own.stat().st_mtime_ns
    selection = studies.run_study("npair", "smoke", results, tmp_path / "runs", progress=False, extra_overrides=short, seeds=(0, 1))
    assert selection["test_records"] == {"0": "smoke/tuned/npair/seed_0.json", "1": "smoke/npair/seed_1.json"}
    assert own.stat().st_mtime_ns == stamp and not (results / "smoke" / "tuned" / "npair" / "seed_1.json").exists()
    from dmlutils.records import load_study
    from dmlutils.studies import study_complete

    loaded = load_study("smoke", "npair", results)
    assert {s: r["seed"] for s, r in loaded["tuned"].items()} == {0: 0, 1: 1} and study_complete(loaded, "npair")
    monkeypatch.setitem(studies.STUDIES, "npair", {**studies.STUDIES["npair"], "scale_30": {"loss.scale": 30.0}})
    assert not study_complete(load_study("smoke", "npair", results), "npair")  # a candidate added since: choose again
    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    criterion = studies.CRITERION
    monkeypatch.setattr(studies, "CRITERION", "recall@1")
    assert not study_complete(load_study("smoke", "npair", results), "npair")  # chosen by another criterion
    monkeypatch.setattr(studies, "CRITERION", criterion)
    assert study_complete(load_study("smoke", "npair", results), "npair")
    (results / "smoke" / "tuned" / "npair" / "seed_0.json").unlink()
    assert not study_complete(load_study("smoke", "npair", results), "npair")
    selection_path = results / "smoke" / "study" / "npair" / "selection.json"
    older = {k: v for k, v in json.loads(selection_path.read_text()).items() if k != "test_records"}
    selection_path.write_text(json.dumps({**older, "test_record": "smoke/npair/seed_1.json"}))  # the layout before seeds
    assert not study_complete(load_study("smoke", "npair", results), "npair")


def test_a_default_choice_reuses_the_losses_own_record_only_when_it_ran_the_same_setting(tmp_path, monkeypatch):
    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    monkeypatch.setattr(studies, "select", lambda records: ("default", {n: 0.0 for n in records}))
    results = tmp_path / "results"
    short = {"iterations": "4", "eval_every": "2"}
    own = results / "smoke" / "npair" / "seed_0.json"  # the loss's own run, in the manifest layout
    engine.train(make_config("smoke", "npair", short), tmp_path / "own", record_path=own, progress=False)
    selection = studies.run_study("npair", "smoke", results, tmp_path / "runs", progress=False, extra_overrides=short, seeds=(0,))
    assert selection["test_records"] == {"0": "smoke/npair/seed_0.json"}
    assert not (results / "smoke" / "tuned" / "npair").exists()

    # A record made with other settings (here a longer schedule) is not the choice's run.
    engine.train(make_config("smoke", "npair", {"iterations": "6", "eval_every": "2"}), tmp_path / "own6", record_path=own, progress=False)
    (results / "smoke" / "study" / "npair" / "selection.json").unlink()
    selection = studies.run_study("npair", "smoke", results, tmp_path / "runs", progress=False, extra_overrides=short, seeds=(0,))
    assert selection["test_records"] == {"0": "smoke/tuned/npair/seed_0.json"}
    assert json.loads((results / "smoke" / "tuned" / "npair" / "seed_0.json").read_text())["config"]["iterations"] == 4


def test_studies_of_several_losses_run_side_by_side_and_choose_each(tmp_path, monkeypatch):
    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    monkeypatch.setitem(studies.STUDIES, "contrastive", {"default": {}, "pos_margin_0.8": {"loss.pos_margin": 0.8}})
    short = {"iterations": "2", "eval_every": "2"}
    lines = []
    selections = studies.run_studies(["npair", "contrastive"], "smoke", tmp_path / "results", tmp_path / "runs", processes=2,
                                     progress=False, extra_overrides=short, seeds=(0,), echo=lines.append)
    assert set(selections) == {"npair", "contrastive"}
    plan = next(line for line in lines if "to run, 2 at a time" in line)
    assert "6 to run" in plan  # the floor, the MS reference and two candidates per loss
    for loss, selection in selections.items():
        assert selection["chosen"] in studies.STUDIES[loss]
        record = json.loads((tmp_path / "results" / selection["test_records"]["0"]).read_text())
        assert record["loss"] == loss and record["evaluated_on"]["split"] == "test"


def test_an_unknown_loss_fails_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="no setting study for loss 'triplet'"):
        studies.run_studies(["npair", "triplet"], "smoke", tmp_path / "results", tmp_path / "runs", progress=False)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_a_new_profile_version_hides_a_study_and_runs_it_again(tmp_path, monkeypatch):
    from dmlutils import profiles
    from dmlutils.records import load_study

    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    results, short = tmp_path / "results", {"iterations": "4", "eval_every": "2"}
    studies.run_study("npair", "smoke", results, tmp_path / "runs", progress=False, extra_overrides=short, seeds=(0,))
    loaded = load_study("smoke", "npair", results)
    assert set(loaded["validation"]) == {"default", "scale_10"} and loaded["selection"] and loaded["tuned"]

    monkeypatch.setitem(profiles.PROFILE_VERSIONS, "smoke", profiles.PROFILE_VERSIONS["smoke"] + 1)
    assert load_study("smoke", "npair", results) == {"validation": {}, "selection": None, "tuned": None}
    assert load_validation_runs("smoke", results) == {}
    studies.run_study("npair", "smoke", results, tmp_path / "runs2", progress=False, extra_overrides=short, seeds=(0,))
    loaded = load_study("smoke", "npair", results)
    assert set(loaded["validation"]) == {"default", "scale_10"} and loaded["tuned"]
    new_version = profiles.PROFILE_VERSIONS["smoke"]
    assert all(r["profile_version"] == new_version for r in [*loaded["validation"].values(), *loaded["tuned"].values()])
    assert loaded["selection"]["profile_version"] == new_version
    assert set(load_validation_runs("smoke", results)) == {"baseline", "multi_similarity"}


def test_the_study_command_runs_every_study_unless_told_which(monkeypatch, capsys):
    from dmlutils.__main__ import main

    calls = []

    def fake_run_studies(losses, profile, results, runs, processes, **kwargs):
        calls.append((list(losses), profile, processes, kwargs["extra_overrides"]))
        return {loss: {"scores": {"default": 0.5}, "chosen": "default", "test_records": {"0": f"{profile}/{loss}/seed_0.json"}} for loss in losses}

    monkeypatch.setattr(studies, "run_studies", fake_run_studies)
    assert main(["study", "--profile", "smoke", "--processes", "2"]) == 0
    assert main(["study", "npair", "--profile", "smoke", "--set", "iterations=4"]) == 0
    assert calls == [(list(studies.STUDIES), "smoke", 2, {}), (["npair"], "smoke", 1, {"iterations": "4"})]
    assert "npair: validation default=0.5000; chose default; test records smoke/npair/seed_0.json" in capsys.readouterr().out


def test_study_has_no_single_record_option(capsys):
    from dmlutils.__main__ import main as cli

    # a study writes a record per candidate and seed: one --record path cannot hold them
    with pytest.raises(SystemExit) as stopped:
        cli(["study", "--profile", "smoke", "--record", "r.json"])
    assert stopped.value.code == 2 and "unrecognized arguments: --record" in capsys.readouterr().err


def _final(recall_at_1):
    return {"final": {"recall@1": recall_at_1}}


@pytest.mark.parametrize("first, seeds", [
    (None, (0,)),  # undecided until the choice's first seed exists
    (_final(0.606), (0,)),  # inside MS's mean ± seed std: level, one seed
    (_final(0.45), (0, 1, 2)),  # outside it: two more seeds decide
])
def test_at_the_whole_backbone_profile_a_choice_runs_one_seed_and_the_escalation_rule(monkeypatch, first, seeds):
    from dmlutils import manifest

    ms = [_final(0.61), _final(0.60), _final(0.605)]  # mean 0.605, std 0.005
    monkeypatch.setattr(manifest, "reference_records", lambda entry, profile, results: ms)
    assert studies.tuned_seeds("contrastive", "cpu_full", first, "results") == seeds
    assert manifest.declared_seeds(manifest.run("contrastive"), "cpu_full") == (0,)  # as the loss's own runs
    assert studies.tuned_seeds("contrastive", "cpu", _final(0.45), "results") == (0, 1, 2)  # three seeds there, always


def test_the_study_command_runs_at_a_profile_only_the_studies_of_losses_the_manifest_runs_there(tmp_path):
    assert studies.studied_losses("cpu") == list(studies.STUDIES)
    assert studies.studied_losses("cpu_full") == ["contrastive"]  # of triplet, contrastive and binomial deviance
    with pytest.raises(ValueError, match="does not run 'npair' at the cpu_full profile.*studies at cpu_full: contrastive"):
        studies.run_studies(["contrastive", "npair"], "cpu_full", tmp_path / "results", tmp_path / "runs", progress=False)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_a_choice_whose_first_seed_escalates_gets_its_other_seeds_in_the_same_command(tmp_path, monkeypatch):
    monkeypatch.setitem(studies.STUDIES, "npair", {"default": {}, "scale_10": {"loss.scale": 10.0}})
    firsts = []

    def escalating(loss, profile, first=None, results=None):  # the rule's answer, as at cpu_full: more seeds after the first
        firsts.append(first is not None)
        return (0, 1) if first is not None else (0,)

    monkeypatch.setattr(studies, "tuned_seeds", escalating)
    results, short = tmp_path / "results", {"iterations": "2", "eval_every": "2"}
    selection = studies.run_study("npair", "smoke", results, tmp_path / "runs", progress=False, extra_overrides=short)
    assert firsts[0] is False and firsts[-1] is True
    assert set(selection["test_records"]) == {"0", "1"}
    assert all((results / path).exists() for path in selection["test_records"].values())
    stored = json.loads((results / "smoke" / "study" / "npair" / "selection.json").read_text())
    assert stored["test_records"] == selection["test_records"]
