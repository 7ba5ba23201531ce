"""Seed summaries and paired comparisons of run records (dmlutils.report)."""
import math
import random

import pytest
from scipy import stats

from dmlutils import report


def records(*values, metric="recall@1"):
    return {seed: {"final": {metric: v}} for seed, v in enumerate(values)}


def test_summary_is_the_mean_and_sample_std_over_seeds():
    s = report.summarise(records(0.50, 0.52, 0.57))
    assert s.n == 3 and s.mean == pytest.approx(0.53)
    assert s.std == pytest.approx(math.sqrt(((0.03) ** 2 + 0.01**2 + 0.04**2) / 2))
    assert s.text() == "53.0 ± 3.6 (n=3)"
    assert report.summarise(records(0.5)).text() == "50.0 (n=1)"
    assert report.summarise({}).text() == "not run"
    assert s.text_without_n() == "53.0 ± 3.6" and report.summarise(records(0.5)).text_without_n() == "50.0"


def test_paired_difference_uses_common_seeds_and_matches_scipy():
    a = records(0.60, 0.62, 0.61, 0.70)
    b = records(0.55, 0.58, 0.57)  # no seed 3: it is left out
    d = report.paired(a, b)
    assert d.seeds == (0, 1, 2) and d.n == 3
    assert d.mean == pytest.approx(0.0433333, abs=1e-6)
    expected = stats.ttest_rel([0.60, 0.62, 0.61], [0.55, 0.58, 0.57])
    assert d.t == pytest.approx(expected.statistic) and d.p == pytest.approx(expected.pvalue)
    assert d.exceeds_noise is True
    assert "exceeds the seed noise" in report.verdict(d, "MS", "N-pair")


def test_a_difference_inside_the_noise_is_said_to_be_so():
    d = report.paired(records(0.60, 0.55, 0.62), records(0.58, 0.59, 0.60))
    assert d.exceeds_noise is False
    assert "within the seed noise" in report.verdict(d, "a", "b")
    one = report.paired(records(0.6), records(0.5))
    assert one.exceeds_noise is None and "too few seeds" in report.verdict(one, "a", "b")


def test_effect_over_noise_is_in_reference_standard_deviations():
    value, reference = report.summarise(records(0.56)), report.summarise(records(0.50, 0.52, 0.54))
    assert report.effect_over_noise(value, reference) == pytest.approx(2.0)
    assert report.effect_over_noise(value, report.summarise(records(0.5))) is None


def test_group_rows_compare_each_run_with_the_reference_per_seed():
    loaded = {"multi_similarity": records(0.50, 0.52, 0.54), "ms_no_mining": records(0.45, 0.48, 0.49), "ms_beta_10": records(0.51)}
    rows = report.group_rows(loaded, ["multi_similarity", "ms_no_mining", "ms_beta_10", "ms_alpha_4"], metrics=(("recall@1", "R@1"),))
    assert rows[0] == {"run": "multi_similarity", "R@1": "52.0 ± 2.0 (n=3)", "− multi_similarity, R@1": ""}
    assert rows[1]["− multi_similarity, R@1"].startswith("-4.7 (std 0.6, n=3")
    assert rows[1]["− multi_similarity, R@1"].endswith("beyond the noise")
    assert rows[2]["− multi_similarity, R@1"] == "+1.0 (one seed)"
    named = report.group_rows(loaded, ["multi_similarity", "ms_no_mining"], metrics=(("recall@1", "R@1"),), labels={"multi_similarity": "MS"})
    assert named[0]["run"] == "MS" and named[1]["− MS, R@1"] == rows[1]["− multi_similarity, R@1"]
    assert rows[3]["R@1"] == "not run"
    points = report.sweep(loaded, {40.0: "multi_similarity", 10.0: "ms_beta_10", 80.0: "ms_beta_80"})
    assert [v for v, _ in points] == [10.0, 40.0]


def test_cpu_seconds_count_a_shared_cache_once():
    def rec(seed, cache):
        return {"wall_time_seconds": 100.0, "cache_seconds": cache,
                "config": {"image_size": 224, "resize_size": 256, "cache_from_block": 8, "cache_views": 5, "seed": seed}}
    loaded = {"a": {0: rec(0, 600.0), 1: rec(1, 500.0)}, "b": {0: rec(0, 600.0)}}
    cost = report.cpu_seconds(loaded)
    assert cost == {"runs": 300.0, "caches": 1100.0, "cache_count": 2, "total": 1400.0, "records": 3, "measured": 0}


def test_a_runs_cost_is_its_cpu_time_where_every_window_measured_it():
    windows = [{"train_seconds": 0.0, "eval_seconds": 5.0, "train_cpu_seconds": 0.0, "eval_cpu_seconds": 4.0},
               {"train_seconds": 900.0, "eval_seconds": 5.0, "train_cpu_seconds": 300.0, "eval_cpu_seconds": 4.0}]  # paused 600 s
    measured = {"wall_time_seconds": 910.0, "evaluations": windows, "config": {}}
    resumed = {"wall_time_seconds": 910.0, "evaluations": [{"train_seconds": 0.0, "eval_seconds": 5.0}] + windows[1:], "config": {}}
    assert report.process_seconds(measured) == pytest.approx(308.0)
    assert report.process_seconds(resumed) is None and report.process_seconds({}) is None
    cost = report.cpu_seconds({"a": {0: measured, 1: resumed}})
    assert cost["runs"] == pytest.approx(308.0 + 910.0) and (cost["measured"], cost["records"]) == (1, 2)


def test_mean_curve_and_decay_from_the_best_evaluation():
    def run(*values):
        return {"evaluations": [{"iteration": 50 * i, "metrics": {"recall@1": v}} for i, v in enumerate(values)],
                "final": {"recall@1": values[-1]}}
    by_seed = {0: run(0.4, 0.6, 0.5), 1: run(0.4, 0.5, 0.5)}
    iterations, mean, std = report.mean_curve(by_seed)
    assert iterations == [0, 50, 100] and mean.tolist() == pytest.approx([0.4, 0.55, 0.5])
    assert std[1] == pytest.approx(math.sqrt(0.005))
    decay = report.best_minus_final(by_seed)
    assert decay.values == pytest.approx((0.1, 0.0))


def test_every_selection_criterion_has_a_name_for_the_book_sentences():
    from dmlutils import recipe, studies

    for criterion in (report.CRITERION, recipe.CRITERION, studies.CRITERION):
        assert criterion in report.METRIC_LABELS, f"{criterion} has no label for chapter 6's sentences"


def test_differences_equal_up_to_rounding_have_no_spread_and_say_so():
    # 3329/5924 - 2077/5924 and 3311/5924 - 2059/5924: the same 1,252 images, yet the two
    # float differences differ in the last bit; a t of 1e15 would be printed otherwise.
    a, b = records(3329 / 5924, 3311 / 5924), records(2077 / 5924, 2059 / 5924)
    diff = report.paired(a, b)
    assert diff.std == 0.0 and diff.p == 0.0 and diff.exceeds_noise
    text = report.verdict(diff, "x", "y")
    assert "the same on each of its 2 seeds" in text and "t =" not in text


def test_a_run_is_compared_with_the_seed_independent_baseline_on_each_of_its_seeds():
    baseline = records(0.50)
    d = report.against_baseline(records(0.52, 0.55, 0.53), baseline)
    expected = stats.ttest_1samp([0.52, 0.55, 0.53], 0.50)
    assert d.n == 3 and d.mean == pytest.approx(0.0333333, abs=1e-6)
    assert d.t == pytest.approx(expected.statistic) and d.p == pytest.approx(expected.pvalue)
    assert report.against_baseline(records(0.49, 0.52, 0.50), baseline).exceeds_noise is False
    assert report.against_baseline(records(0.52), baseline).exceeds_noise is None
    assert report.against_baseline(records(0.52), {}).n == 0
    with pytest.raises(ValueError, match="should not depend on the seed"):
        report.against_baseline(records(0.52), records(0.50, 0.51))


def test_best_at_start_means_every_seed_peaked_before_its_first_step():
    def run(*values):
        return {"evaluations": [{"iteration": 100 * i, "metrics": {"recall@1": v}} for i, v in enumerate(values)],
                "final": {"recall@1": values[-1]}}
    assert report.best_at_start({0: run(0.5, 0.4, 0.3), 1: run(0.5, 0.45, 0.4)})
    assert not report.best_at_start({0: run(0.5, 0.4, 0.3), 1: run(0.5, 0.55, 0.4)})
    assert not report.best_at_start({})


def test_side_and_its_sentence_place_each_run_against_the_noise():
    above = report.paired(records(0.60, 0.62, 0.61), records(0.55, 0.58, 0.57))
    below = report.paired(records(0.55, 0.58, 0.57), records(0.60, 0.62, 0.61))
    level = report.paired(records(0.60, 0.55, 0.61), records(0.58, 0.58, 0.58))
    one_seed = report.paired(records(0.6), records(0.5))
    assert [report.side(d) for d in (above, below, level, one_seed)] == ["above", "below", "level", None]
    sides = {"a": "above", "b": "below", "c": "above", "d": None}
    assert report.sides_text(sides) == "above 2 (a, c); below 1 (b); too few seeds (fewer than two) to tell: d"
    assert report.sides_text({"c": "level"}, {"level": "level with"}) == "level with 1 (c)"


def test_a_swept_setting_with_one_seed_is_level_only_inside_the_defaults_seed_band():
    default = records(0.50, 0.52, 0.54)  # mean 0.52, std 0.02
    assert report.sweep_side({0: {"final": {"recall@1": 0.535}}}, default) == "level"
    assert report.sweep_side({0: {"final": {"recall@1": 0.545}}}, default) is None  # escalation decides
    assert report.sweep_side(records(0.56, 0.58, 0.60), default) == "above"  # three seeds: the paired test
    assert report.sweep_side(records(0.51, 0.525, 0.53), default) == "level"
    assert report.sweep_side({}, default) is None


def test_a_one_seed_setting_is_read_against_the_defaults_band_in_a_sentence():
    default = records(0.52, 0.53, 0.54)  # mean 0.53, std 0.01
    inside = report.band_verdict({0: {"final": {"recall@1": 0.535}}}, default, "x", "MS")
    assert inside.startswith("x − MS's mean = +0.5 R@1 points on one seed, +0.5 of MS's seed std") and "level" in inside
    outside = report.band_verdict({0: {"final": {"recall@1": 0.515}}}, default, "x", "MS")
    assert "-1.5 R@1" in outside and "-1.5 of" in outside and "two more seeds decide" in outside
    # two or more seeds: the paired test's sentence, the same as verdict's
    shifted = records(0.56, 0.58, 0.60)
    assert report.band_verdict(shifted, default, "x", "MS") == report.verdict(report.paired(shifted, default), "x", "MS")
    assert report.band_verdict({}, default, "x", "MS") == "x: not run yet."
    # a default with one seed has no band: the one-seed sentence of verdict
    assert "too few seeds" in report.band_verdict({0: {"final": {"recall@1": 0.6}}}, {0: {"final": {"recall@1": 0.5}}}, "x", "MS")


def test_a_claim_holds_only_when_every_comparison_bears_it_out():
    assert report.claim_status(["above", "above"]) == "holds"
    assert report.claim_status(["above", "level"]) == "does not hold"
    assert report.claim_status(["above", None]) == "unresolved"
    assert report.claim_status(["below", None]) == "does not hold"  # refuted whatever the rest says
    assert report.claim_status([]) == "unresolved"
    assert report.claim_status(["level", "level"], expected="level") == "holds"
    assert report.claim_status(["level", None], expected="level") == "unresolved"
    assert report.claim_status(["above", None], expected="level") == "does not hold"
    with pytest.raises(ValueError, match="expected"):
        report.claim_status(["above"], expected="better")


def test_the_cost_of_one_run_comes_from_the_records_own_timings():
    def run(wall, segments, evals, cache=None):
        evaluations = [{"train_seconds": t, "eval_seconds": e} for t, e in zip(segments, evals)]
        return {"kind": "train", "wall_time_seconds": wall, "config": {"iterations": 200}, "evaluations": evaluations,
                "cache_seconds": cache}

    loaded = {"a": {0: run(300.0, [0.0, 100.0, 100.0], [10.0, 20.0, 30.0], cache=1000.0)},
              "b": {0: run(500.0, [0.0, 200.0, 200.0], [30.0, 30.0, 30.0])},
              "baseline": {0: {"kind": "baseline", "wall_time_seconds": 60.0, "evaluations": [{"train_seconds": 0, "eval_seconds": 60}]}}}
    cost = report.run_cost(loaded)
    assert cost["runs"] == 2
    assert cost["wall_seconds"] == {"median": 400.0, "min": 300.0, "max": 500.0}
    assert cost["seconds_per_iteration"] == {"median": 1.5, "min": 1.0, "max": 2.0}
    assert cost["seconds_per_evaluation"]["min"] == pytest.approx(20.0) and cost["evaluations_per_run"]["median"] == 3
    assert cost["cache_seconds"]["median"] == 1000.0
    assert cost["cpu_seconds"] is None and cost["cpu_measured"] == 0  # no window measured CPU time
    for window, cpu in zip(loaded["b"][0]["evaluations"], (0.0, 150.0, 150.0)):
        window |= {"train_cpu_seconds": cpu, "eval_cpu_seconds": 25.0}
    cost = report.run_cost(loaded)
    assert cost["cpu_seconds"] == {"median": 375.0, "min": 375.0, "max": 375.0} and cost["cpu_measured"] == 1
    assert report.run_cost({"baseline": loaded["baseline"]}) is None


def test_a_p_value_that_rounds_to_zero_is_written_as_a_bound():
    assert report.p_text(0.0312) == "p=0.031" and report.p_text(0.0312, 2, " ") == "p = 0.03"
    assert report.p_text(0.0004) == "p<0.001" and report.p_text(0.004, 2) == "p<0.01"
    strong = report.paired(records(0.60, 0.70, 0.80), records(0.50, 0.6001, 0.70))
    assert "p < 0.001" in report.verdict(strong, "a", "b") and "p=0.000" not in report.short_verdict(strong)


def test_durations_are_given_in_the_unit_a_reader_thinks_in():
    assert report.duration_text(2.4) == "2 s" and report.duration_text(89) == "89 s"
    assert report.duration_text(1068) == "17.8 min" and report.duration_text(5 * 3600 + 720) == "5.2 hours"


def _holm_rejections(p_values, alpha=0.05):
    """Holm's procedure as its paper states it: walk the p-values up, reject while
    p_(j) <= alpha / (m - j + 1), stop at the first that is not."""
    m, rejected = len(p_values), set()
    for j, (p, index) in enumerate(sorted((p, i) for i, p in enumerate(p_values))):
        if p > alpha / (m - j):
            break
        rejected.add(index)
    return rejected


def test_holm_adjusted_p_values_reject_what_holms_procedure_rejects():
    assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert report.holm([0.5]) == [0.5] and report.holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    rng = random.Random(0)
    for _ in range(500):
        ps = [rng.choice([rng.random(), rng.random() * 0.05, 0.0]) for _ in range(rng.randint(1, 6))]
        adjusted = report.holm(ps)
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, q in enumerate(adjusted) if q <= alpha} == _holm_rejections(ps, alpha)


def test_a_missing_test_never_undoes_a_holm_rejection():
    rng = random.Random(1)
    for _ in range(500):
        full = [rng.random() * rng.choice([1, 0.05]) for _ in range(rng.randint(2, 5))]
        partial = [None if rng.random() < 0.4 else p for p in full]
        adjusted = report.holm(partial)
        assert all(q is None for q, p in zip(adjusted, partial) if p is None)
        now = {i for i, q in enumerate(adjusted) if q is not None and q < 0.05}
        assert now <= {i for i, q in enumerate(report.holm(full)) if q < 0.05}


def test_a_sweep_is_read_as_one_family():
    default = records(0.50, 0.52, 0.54)
    shifted = records(0.505, 0.5235, 0.5465)  # +0.5 point at every seed, steady: p about 0.03 on its own
    alone = report.paired(shifted, default).p
    assert 0.025 < alone < 0.05 and report.sweep_side(shifted, default) == "above"
    one_seed_level = {0: {"final": {"recall@1": 0.525}}}
    (first, p_first), (second, p_second) = report.sweep_sides([shifted, one_seed_level], default)
    assert first == "level" and p_first == pytest.approx(2 * alone) and (second, p_second) == ("level", 1.0)
    assert report.sweep_sides([shifted], default) == [("above", pytest.approx(alone))]  # a family of one
    undecided = {0: {"final": {"recall@1": 0.60}}}  # outside the band: its escalation decides
    assert report.sweep_sides([undecided, one_seed_level], default) == [(None, None), ("level", 1.0)]


def test_mining_shares_average_the_first_and_last_window_over_seeds():
    def run(first, last):
        shares = [dict.fromkeys(report.MINING_SHARES, v) for v in (first, last)]
        return {"evaluations": [{"iteration": 0}] + [{"iteration": i + 1, "mining": m} for i, m in enumerate(shares)]}

    summary = report.mining_shares({0: run(0.2, 0.6), 1: run(0.4, 0.8)})
    assert summary["first"]["negative_kept"] == pytest.approx(0.3) and summary["last"]["positive_weight_dropped"] == pytest.approx(0.7)
    assert summary["seeds"] == 2
    assert report.mining_shares({0: {"evaluations": [{"iteration": 0}]}}) is None and report.mining_shares({}) is None
    resumed = run(0.9, 0.9)
    del resumed["evaluations"][1]["mining"]  # its first window ran before the engine measured
    partly = report.mining_shares({0: run(0.2, 0.6), 1: resumed})
    assert partly["first"]["negative_kept"] == pytest.approx(0.2) and partly["seeds"] == 1
