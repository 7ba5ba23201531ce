"""The recipe study: stages choose on held-out classes, keep earlier choices, reuse records."""
from __future__ import annotations

import json

import pytest

from dmlutils import recipe
from dmlutils.engine import lr_factor
from dmlutils.profiles import PROFILES, make_config


@pytest.fixture
def tiny_study(monkeypatch):
    monkeypatch.setattr(recipe, "PROFILE", "smoke")
    monkeypatch.setattr(recipe, "VALIDATION_CLASSES", 2)
    monkeypatch.setattr(recipe, "BASE", dict(iterations=4, eval_every=2))
    monkeypatch.setattr(recipe, "POOLINGS", ("avg", "max"))
    monkeypatch.setattr(recipe, "SEEDS", (1,))
    monkeypatch.setattr(recipe, "STAGES", [
        ("rate", "learning rate", {"kept": {}, "fast": {"lr": 3e-3, "head_lr": 3e-3}}),
        ("length", "iterations", {"kept": {}, "6": recipe._scaled_length(6)}),
    ])


def test_stages_choose_on_validation_keep_choices_and_reuse_records(tiny_study, tmp_path):
    results = tmp_path / "results"
    chosen = recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    first = json.loads((results / "smoke/recipe/rate/selection.json").read_text())
    second = json.loads((results / "smoke/recipe/length/selection.json").read_text())
    assert first["criterion"] == "final validation map@r"
    assert first["chosen"] == max(first["scores"], key=first["scores"].get)
    # the kept candidate of stage 2 is stage 1's winner: its record, not a second run
    assert second["records"]["kept"] == first["records"][first["chosen"]]
    assert not (results / "smoke/recipe/length/kept.json").exists()
    assert json.loads(json.dumps(chosen)) == second["recipe"]
    for name, path in {**first["records"], **second["records"]}.items():
        record = json.loads((results / path).read_text())
        assert record["evaluated_on"]["split"] == "validation"  # never the test split
        assert record["config"]["validation_classes"] == 2
    assert json.loads((results / "smoke/recipe/seeds/seed_1.json").read_text())["seed"] == 1
    assert {p.stem for p in (results / "smoke/recipe/baseline").glob("*.json")} == {"32_avg", "32_max"}
    loaded = recipe.load_study(results)
    assert [s["chosen"] for s in loaded["stages"]] == [first["chosen"], second["chosen"]]
    assert json.loads(json.dumps(loaded["recipe"])) == second["recipe"] and set(loaded["seeds"]) == {1}
    assert all(row["record"] is not None for stage in loaded["stages"] for row in stage["rows"])


def test_resuming_a_finished_study_leaves_its_selections_as_they_were(tiny_study, tmp_path, monkeypatch):
    results = tmp_path / "results"
    recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    selections = sorted((results / "smoke/recipe").glob("*/selection.json"))
    before = {path: path.read_bytes() for path in selections}
    monkeypatch.setattr("dmlutils.provenance.code_version", lambda: {"commit": "f" * 40, "dirty": False})  # a later commit
    recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    assert len(selections) == 2 and all(path.read_bytes() == before[path] for path in selections)
    # ...but a selection that no longer says what the records say is written again, at the new commit
    stale = json.loads(selections[0].read_text())
    stale["scores"] = {name: 0.0 for name in stale["scores"]}
    selections[0].write_text(json.dumps(stale))
    recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    rewritten = json.loads(selections[0].read_text())
    assert rewritten["scores"] != stale["scores"] and rewritten["git"]["commit"] == "f" * 40


def test_a_candidate_whose_matrix_exceeds_the_budget_is_shown_but_not_chosen(tiny_study, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "matrix_hours", lambda r, processes=2: 99.0 if r.get("lr") == 3e-3 else 1.0)
    results = tmp_path / "results"
    recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    first = json.loads((results / "smoke/recipe/rate/selection.json").read_text())
    assert first["matrix_hours"] == {"kept": 1.0, "fast": 99.0} and first["budget_hours"] == recipe.MATRIX_BUDGET_HOURS
    assert first["eligible"] == ["kept"] and first["chosen"] == "kept"
    assert "fast" in first["scores"]  # its record exists and is scored


def test_the_matrix_estimate_grows_with_depth_and_length_and_the_starting_recipe_fits():
    start = recipe.matrix_hours(recipe.BASE)
    assert 0 < start < recipe.MATRIX_BUDGET_HOURS
    assert recipe.matrix_hours({**recipe.BASE, "cache_from_block": 8}) > start
    assert recipe.matrix_hours({**recipe.BASE, "iterations": 600}) == pytest.approx(
        start + (recipe.matrix_hours({**recipe.BASE, "iterations": 800}) - start) / 2, rel=0.05)
    assert recipe.profile_settings(recipe.BASE)["eval_every"] == 100  # four test evaluations per run


def test_an_unfinished_study_shows_its_first_open_stage(tiny_study, tmp_path):
    loaded = recipe.load_study(tmp_path)
    assert loaded["recipe"] is None and len(loaded["stages"]) == 1
    assert all(row["record"] is None for row in loaded["stages"][0]["rows"])


def test_the_study_starts_from_the_first_cpu_profile():
    config = make_config("cpu", "multi_similarity", recipe.BASE)
    assert (config["image_size"], config["pooling"], config["cache_from_block"], config["iterations"]) == (144, "avg", 11, 400)
    assert config["lr_schedule"] == "step" and config["lr_milestones"] == ()


def test_scaled_length_keeps_the_schedule_in_proportion():
    config = {"iterations": 400, "lr_milestones": (250,), "warmup_iterations": 40}
    assert recipe._scaled_length(600)(config) == {"iterations": 600, "lr_milestones": (375,), "warmup_iterations": 60}


def test_learning_rate_schedules():
    step = make_config("smoke", "multi_similarity", {"iterations": 100, "lr_milestones": (50, 80), "lr_gamma": 0.1})
    assert [lr_factor(step, s) for s in (0, 49, 50, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = make_config("smoke", "multi_similarity", {"iterations": 100, "lr_schedule": "cosine", "warmup_iterations": 10})
    assert lr_factor(cosine, 0) == pytest.approx(0.1)  # first warm-up step of 10, cosine still at 1
    assert lr_factor(cosine, 50) == pytest.approx(0.5)
    assert lr_factor(cosine, 100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        make_config("smoke", "multi_similarity", {"lr_schedule": "linear"})
    assert PROFILES["paper"]["lr_schedule"] == "step"  # the paper's x0.1 steps


def test_the_cpu_profile_runs_the_recipe_the_study_chose():
    """Once the committed study is complete, the cpu profile holds its choice (evaluation
    cadence aside: it does not change the model, every random draw is seeded by the step),
    under a profile version newer than the study's starting point."""
    from dmlutils.profiles import PROFILE_VERSIONS

    chosen = recipe.final_recipe(recipe.REPO_RESULTS)
    if chosen is None:
        pytest.skip("the recipe study in results/cpu/recipe/ is not finished yet")
    config = make_config("cpu", "multi_similarity", chosen)
    for key in recipe.BASE:
        assert PROFILES["cpu"][key] == recipe.profile_settings(config)[key], key
    assert PROFILE_VERSIONS["cpu"] >= 2


def test_the_cpu_full_profile_runs_the_recipe_its_study_chose():
    """Likewise for the whole-backbone regime: once its committed study is complete, the
    cpu_full profile holds the choice, under a version newer than the study's start (1)."""
    from dmlutils.profiles import PROFILE_VERSIONS

    study = recipe.full_study()
    chosen = recipe.final_recipe(recipe.REPO_RESULTS, study)
    if chosen is None:
        pytest.skip("the recipe study in results/cpu_full/recipe/ is not finished yet")
    config = make_config("cpu_full", "multi_similarity", chosen)
    for key in {*study.base, *chosen}:  # a later stage's setting (crop_min_area) is in the recipe once chosen
        assert PROFILES["cpu_full"][key] == recipe.profile_settings(config)[key], key
    assert PROFILE_VERSIONS["cpu_full"] >= 2


def test_an_open_stage_shows_its_kept_candidate_from_the_stage_before(tiny_study, tmp_path):
    results = tmp_path / "results"
    recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    (results / "smoke/recipe/length/selection.json").unlink()  # as if stage 2 were still running
    loaded = recipe.load_study(results)
    first = json.loads((results / "smoke/recipe/rate/selection.json").read_text())
    kept = json.loads((results / first["records"][first["chosen"]]).read_text())
    assert loaded["recipe"] is None and loaded["stages"][1]["chosen"] is None
    assert loaded["stages"][1]["rows"][0]["record"] == kept


def test_the_final_recipe_reads_back_in_the_profiles_types(tiny_study, tmp_path):
    results = tmp_path / "results"
    recipe.run_recipe_study(results, tmp_path / "runs", processes=1, profile="smoke", echo=lambda *_: None)
    chosen = recipe.final_recipe(results)
    assert chosen == recipe.load_study(results)["recipe"]
    assert isinstance(chosen["lr_milestones"], tuple)  # JSON holds a list; the profile, a tuple


def _row(candidate, score, eligible=True, hours=10.0):
    return {"candidate": candidate, "record": {"final": {"map@r": score}}, "eligible": eligible, "matrix_hours": hours}


def test_findings_read_each_lead_against_the_winners_seed_spread():
    seeds = {1: {"final": {"map@r": 0.50}}, 2: {"final": {"map@r": 0.52}}}  # with seed 0 (0.51): std 1.0 point
    study = {"stages": [
        {"stage": "size", "chosen": "224", "rows": [_row("144", 0.40), _row("224", 0.45)]},  # +5.0: beyond
        {"stage": "pooling", "chosen": "max", "rows": [_row("avg", 0.505), _row("max", 0.51),  # +0.5: within
                                                        _row("avg+max", 0.53, eligible=False, hours=14.0)]},  # budget decided
        {"stage": "length", "chosen": None, "rows": [_row("kept", 0.51)]},
    ], "seeds": seeds, "baselines": {}, "recipe": None}
    lines = recipe.findings(study)
    assert lines[0].startswith("The study's winner with seeds 0, 1, 2: validation MAP@R 51.0 ± 1.0")
    assert "+5.0 MAP@R over *144*, beyond the seed noise" in lines[1]
    assert "+0.5 MAP@R over *avg*, within the seed noise" in lines[2]
    assert "*avg+max* scored higher (53.0 against 51.0, beyond the seed noise)" in lines[2] and "14.0 h against 10.0 h" in lines[2]
    assert "the stage *length* has not chosen yet" in lines[3] and len(lines) == 4


def test_the_cpu_full_study_starts_from_the_cpu_full_profile_and_its_candidates_are_valid_configs():
    study = recipe.get_study("cpu_full")
    assert study.profile == "cpu_full" and study.cost_key == "run_minutes_two_cores" and study.budget == recipe.FULL_BUDGET_MINUTES
    profile = PROFILES["cpu_full"]
    # Version 1 was the study's start: whatever no stage asks about is still the profile's.
    asked = {key for _, _, candidates in study.stages for c in candidates.values() if not callable(c) for key in c}
    asked |= {"iterations", "lr_milestones", "warmup_iterations", "eval_every"}  # the length stage scales these
    assert "lr_schedule" not in asked and all(profile[k] == v for k, v in recipe.FULL_BASE.items() if k not in asked)
    for stage, _, candidates in study.stages:
        for name, candidate in candidates.items():
            config = recipe._config({**study.base, **recipe._resolve(candidate, study.base)}, "cpu_full")
            assert config["validation_classes"] == recipe.VALIDATION_CLASSES and config["decoded_images"], (stage, name)
    # a longer run costs more, and the cost is one run's minutes on two threads, not the cpu matrix's hours
    assert study.cost({**study.base, "iterations": 1200}) > study.cost(study.base) > 10
    assert recipe.get_study("cpu").cost_key == "matrix_hours"


def test_the_cpu_full_study_writes_under_its_own_profile(monkeypatch, tmp_path):
    monkeypatch.setattr(recipe, "FULL_BASE", dict(iterations=4, eval_every=2))
    monkeypatch.setattr(recipe, "FULL_STAGES", [("rates", "learning rate", {"kept": {}, "fast": {"lr": 3e-3}})])
    monkeypatch.setattr(recipe, "SEEDS", ())
    monkeypatch.setattr(recipe, "VALIDATION_CLASSES", 2)
    calls = []
    monkeypatch.setattr("dmlutils.runner.run_jobs", lambda jobs, *a, **k: calls.append([j.name for j in jobs]) or {})
    with pytest.raises(FileNotFoundError):  # nothing ran (run_jobs is stubbed): no record to read
        recipe.run_recipe_study(tmp_path / "results", tmp_path / "runs", profile="cpu_full", echo=lambda *_: None)
    assert calls[0] == ["baseline 224 max"] and calls[1] == ["rates/kept", "rates/fast"]


def test_an_open_stage_says_whether_the_profile_runs_the_choices_before_it():
    def study(so_far):
        return {"profile": "cpu_full", "seeds": {}, "baselines": {}, "recipe": None, "recipe_so_far": so_far, "stages": [
            {"stage": "rates", "chosen": "5e-5", "rows": [_row("1e-4", 0.570), _row("5e-5", 0.571)]},
            {"stage": "crop", "chosen": None, "rows": [_row("kept", 0.571)]},
        ]}

    from dmlutils.profiles import PROFILES, PROFILE_VERSIONS

    chosen = {key: PROFILES["cpu_full"][key] for key in recipe.FULL_BASE}  # what the profile runs
    version = PROFILE_VERSIONS["cpu_full"]
    assert recipe.findings(study(chosen))[-1].endswith(f"the `cpu_full` profile (version {version}) runs the choices of the stages before it.")
    assert recipe.findings(study(recipe.FULL_BASE))[-1].endswith("does not run the choices of the stages before it.")
