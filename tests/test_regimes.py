"""dmlutils.regimes: the paper's claims judged under each regime, the shared baseline."""
from __future__ import annotations

import pytest

from dmlutils import manifest, regimes
from dmlutils.engine import write_json
from dmlutils.profiles import PROFILE_VERSIONS


def records(*values, metric="recall@1"):
    return {seed: {"final": {metric: v, "map@r": v / 3}} for seed, v in enumerate(values)}


MS_RUNS = records(0.60, 0.62, 0.64)


def test_a_comparison_is_paired_over_common_seeds_else_placed_against_the_band():
    assert regimes.comparison_side(MS_RUNS, records(0.55, 0.56, 0.58)) == "above"
    assert regimes.comparison_side(MS_RUNS, records(0.61, 0.60, 0.65)) == "level"
    assert regimes.comparison_side(MS_RUNS, records(0.615)) == "level"  # one seed inside MS's mean ± std
    assert regimes.comparison_side(MS_RUNS, records(0.50)) is None  # outside it: the escalation's seeds decide
    assert regimes.comparison_side(records(0.6), records(0.5)) is None  # one seed each: nothing to read
    assert regimes.comparison_text(MS_RUNS, records(0.55, 0.56, 0.58)).startswith("+5.7 (n=3, p")
    assert regimes.comparison_text(MS_RUNS, records(0.615)) == "+0.5 (one seed, inside the other's seed std)"
    assert regimes.comparison_text(MS_RUNS, {}) == "not run"


def test_claims_get_a_verdict_per_regime_with_their_comparisons():
    loaded = {
        "cpu": {"multi_similarity": MS_RUNS, "triplet": records(0.55, 0.56, 0.58), "npair": records(0.61, 0.60, 0.65)},
        "cpu_full": {"multi_similarity": MS_RUNS, "triplet": records(0.615)},
    }
    claims = [regimes.Claim("MS above Triplet", (("multi_similarity", "triplet"),)),
              regimes.Claim("MS above N-pair", (("multi_similarity", "npair"),))]
    rows = regimes.claims_rows(loaded, claims, planned=lambda regime, name: regime == "cpu" or name != "npair")
    cpu, full = regimes.REGIME_TEXT["cpu"], regimes.REGIME_TEXT["cpu_full"]
    assert rows[0][cpu].startswith("holds: +5.7 (n=3, p")
    assert rows[0][full] == "does not hold: +0.5 (one seed, inside the other's seed std)"
    assert rows[1][cpu].startswith("does not hold: +0.0 (n=3, p=")
    assert rows[1][full] == "not in this regime's plan"
    assert regimes.claims_rows({"cpu_full": {}}, claims[:1])[0][full] == "unresolved: not run"


def test_the_claims_name_their_runs_in_the_manifest():
    for claim in regimes.main_claims() + regimes.ablation_claims():
        for pair in claim.pairs:
            for name in pair:
                manifest.run(name)  # raises for a name the manifest does not have
    assert len(regimes.main_claims()) == 8 and regimes.main_claims()[0].text == "Multi-Similarity above Binomial Deviance"
    assert regimes.planned("cpu_full", "triplet") and not regimes.planned("cpu_full", "npair")
    assert regimes.planned("cpu_full", "baseline")  # shared with cpu


def test_the_whole_backbone_regime_shares_the_cpu_baseline_only_while_its_settings_agree(tmp_path, monkeypatch):
    assert regimes.baseline_differences("cpu_full", "cpu") == {}  # same data, backbone, input and pooling
    config = manifest.config_of(manifest.run("baseline"), "cpu", 0)
    write_json(manifest.record_path(tmp_path, "cpu", "baseline", 0),
               {"profile": "cpu", "profile_version": PROFILE_VERSIONS["cpu"], "config": config, "evaluations": [],
                "final": {"recall@1": 0.529}})
    loaded = regimes.load_regimes("cpu", tmp_path)
    assert set(loaded) == {"cpu", "cpu_full"}
    assert loaded["cpu_full"]["baseline"][0]["final"]["recall@1"] == 0.529
    assert regimes.load_regimes("smoke", tmp_path).keys() == {"smoke"}

    from dmlutils import profiles

    monkeypatch.setitem(profiles.PROFILES, "cpu_full", {**profiles.PROFILES["cpu_full"], "image_size": 160, "pooling": "avg"})
    with pytest.raises(ValueError, match="cannot share the cpu profile's baseline: image_size is 224 there and 160 here, "
                                         "pooling is 'max' there and 'avg' here; give cpu_full a baseline run"):
        regimes.load_regimes("cpu", tmp_path)


def test_the_cost_of_each_regime_comes_from_its_records_else_is_marked_an_estimate():
    def timed(wall, threads):
        windows = [{"iteration": i, "train_seconds": 200.0 if i else 0.0, "eval_seconds": 30.0, "train_cpu_seconds": (200.0 if i else 0.0) * threads,
                    "eval_cpu_seconds": 30.0 * threads} for i in (0, 100, 200, 300, 400)]
        return {"kind": "train", "config": {"iterations": 400}, "wall_time_seconds": wall, "evaluations": windows,
                "environment": {"cpu_threads": threads}, "final": {"recall@1": 0.5}}

    loaded = {"cpu": {"baseline": {0: {"kind": "baseline", "final": {"recall@1": 0.5}}},
                      "multi_similarity": {0: timed(900.0, 1), 1: timed(1100.0, 1)}},
              "cpu_full": {}}
    cpu, full = regimes.cost_rows(loaded)
    assert cpu["training records"] == 2 and cpu["minutes per run"] == "17 on 1 thread (median of 2)"
    assert cpu["s per step"] == "2.00" and cpu["CPU s per step"] == "2.00" and cpu["s per evaluation"] == "30"
    # on two threads a step's wall time is the same and its CPU time twice as much: every thread counts
    two = regimes.cost_rows({"cpu": {"multi_similarity": {0: timed(900.0, 2)}}})[0]
    assert two["s per step"] == "2.00" and two["CPU s per step"] == "4.00" and two["minutes per run"] == "15 on 2 threads (median of 1)"
    # runs on two threads and on one side by side: each count its own median, not one across both
    mixed = regimes.cost_rows({"cpu_full": {"multi_similarity": {0: timed(3000.0, 2), 1: timed(5200.0, 1), 2: timed(5400.0, 1)}}})[0]
    assert mixed["minutes per run"] == "50 on 2 threads (median of 1); 88 on 1 thread (median of 2)"
    assert cpu["CPU hours, all records"] == f"{2 * (4 * 200 + 5 * 30) / 3600:.1f}"
    assert full["training records"] == 0 and full["minutes per run"].endswith("(estimate, 2 threads)")


def test_a_claim_of_several_comparisons_says_which_is_which():
    runs = {"multi_similarity": MS_RUNS, "ms_no_mining": records(0.55, 0.56, 0.58), "ms_no_weighting": records(0.61, 0.60, 0.65)}
    status, text = regimes.claim_verdict(runs, regimes.ablation_claims()[2])
    assert status == "does not hold"
    assert text.startswith("Multi-Similarity − weighting only (no mining) +5.7 (n=3, p")
    assert "; Multi-Similarity − mining only (no weighting) +0.0 (n=3, p" in text
    assert regimes.claim_verdict({}, regimes.ablation_claims()[2]) == ("unresolved", "not run")


def test_a_setting_chosen_on_validation_classes_is_judged_as_its_own_claim_where_its_study_ran(tmp_path):
    version = PROFILE_VERSIONS["cpu_full"]
    tuned = {"profile": "cpu_full", "profile_version": version, "config": {}, "evaluations": [], "final": {"recall@1": 0.52}}
    write_json(tmp_path / "cpu_full" / "tuned" / "contrastive" / "seed_0.json", tuned)
    write_json(tmp_path / "cpu_full" / "study" / "contrastive" / "selection.json",
               {"profile_version": version, "scores": {}, "chosen": "nonzero_mean",
                "test_records": {"0": "cpu_full/tuned/contrastive/seed_0.json"}})
    chosen = regimes.chosen_settings("cpu_full", tmp_path)
    assert list(chosen) == ["contrastive"] and chosen["contrastive"][0] == "mean over non-zero pairs"
    assert chosen["contrastive"][1][0]["final"]["recall@1"] == 0.52
    loaded = regimes.with_chosen_settings({"cpu_full": {"multi_similarity": MS_RUNS}}, tmp_path)
    assert set(loaded["cpu_full"]) == {"multi_similarity", "chosen:contrastive"}
    rows = {row["claim"]: row[regimes.REGIME_TEXT["cpu_full"]]
            for row in regimes.claims_rows(loaded, regimes.chosen_claims(), planned=regimes.planned)}
    # one seed 10 points below MS's band: two more seeds decide, as for the loss's own runs
    assert rows["Multi-Similarity above Contrastive, its setting chosen on validation classes"] == "unresolved: +10.0 (one seed: two more decide)"
    assert rows["Multi-Similarity above N-pair, its setting chosen on validation classes"] == "not in this regime's plan"
    assert regimes.planned("cpu", "chosen:npair") and not regimes.planned("cpu_full", "chosen:triplet")
    assert regimes.chosen_settings("smoke", tmp_path) == {}  # no study made there
