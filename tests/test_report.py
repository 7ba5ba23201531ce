"""Seed summaries and paired comparisons of run records (dmlutils.report)."""
import math

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
