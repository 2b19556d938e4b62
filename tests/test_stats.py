import numpy as np
import pytest
from scipy import stats as st

from mech.stats import (
    bootstrap_ci, holm, mcnemar, paired_bootstrap_diff, paired_test, resampled_means,
)


def pair_with_counts(b, c, both_right=7, both_wrong=5, seed=0):
    """Paired 0/1 vectors with exactly b (a right, b wrong) and c (a wrong, b right)."""
    a = np.r_[np.ones(b), np.zeros(c), np.ones(both_right), np.zeros(both_wrong)]
    o = np.r_[np.zeros(b), np.ones(c), np.ones(both_right), np.zeros(both_wrong)]
    perm = np.random.default_rng(seed).permutation(a.size)
    return a[perm].astype(int), o[perm].astype(int)


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (3, 9), (10, 2), (7, 7), (0, 12), (20, 4)])
def test_mcnemar_exact_matches_binomtest(b, c):
    x, y = pair_with_counts(b, c)
    r = mcnemar(x, y, exact=True)
    assert (r["b"], r["c"]) == (b, c)
    expected = 1.0 if b + c == 0 else st.binomtest(b, b + c, 0.5).pvalue
    assert r["p_value"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("b,c", [(30, 12), (40, 41), (100, 60), (25, 0)])
def test_mcnemar_chi_square_matches_hand_formula(b, c):
    x, y = pair_with_counts(b, c)
    r = mcnemar(x, y, exact=False)
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    assert r["statistic"] == pytest.approx(stat)
    # chi-square(1) survival = erfc(sqrt(stat / 2)), independent of scipy.stats.chi2
    from math import erfc, sqrt
    assert r["p_value"] == pytest.approx(erfc(sqrt(stat / 2)), rel=1e-9)


def test_mcnemar_auto_switches_at_25_discordant():
    small = pair_with_counts(20, 4)
    large = pair_with_counts(20, 5)
    assert mcnemar(*small)["p_value"] == pytest.approx(st.binomtest(20, 24).pvalue)
    assert mcnemar(*large)["statistic"] == pytest.approx((15 - 1) ** 2 / 25)


def test_mcnemar_vectorised_rows_match_single_calls():
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 5, 60)) < 0.6
    r = mcnemar(a, b)
    for i in range(5):
        single = mcnemar(a[i], b[i])
        assert r["p_value"][i] == pytest.approx(single["p_value"])
        assert (r["b"][i], r["c"][i]) == (single["b"], single["c"])


def test_mcnemar_rejects_soft_scores_and_shape_mismatch():
    with pytest.raises(ValueError, match="binary"):
        mcnemar([0.3, 1.0], [0, 1])
    with pytest.raises(ValueError, match="same samples"):
        mcnemar([0, 1, 1], [0, 1])


def test_bootstrap_ci_covers_true_mean_at_roughly_nominal_rate():
    rng = np.random.default_rng(0)
    n_sets, n, true_mean = 300, 60, 0.3
    data = rng.binomial(1, true_mean, size=(n_sets, n)).astype(float)
    low, high = bootstrap_ci(data, n_resamples=999, seed=1)  # one vectorised call
    coverage = np.mean((low <= true_mean) & (true_mean <= high))
    assert 0.89 <= coverage <= 0.99


def test_bootstrap_ci_scalar_and_bca():
    x = np.random.default_rng(2).normal(5.0, 1.0, 200)
    lo, hi = bootstrap_ci(x)
    assert isinstance(lo, float) and lo < x.mean() < hi
    lo_b, hi_b = bootstrap_ci(x, method="BCa", stat=np.median)
    assert lo_b < np.median(x) < hi_b
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(x, confidence=95)


def test_resampled_means_shape_and_centre():
    x = np.random.default_rng(4).random((3, 500))
    m = resampled_means(x, n_resamples=400, seed=0)
    assert m.shape == (400, 3)
    np.testing.assert_allclose(m.mean(axis=0), x.mean(axis=1), atol=0.01)


def test_paired_bootstrap_identical_systems_give_zero():
    a = np.random.default_rng(5).random(100)
    r = paired_bootstrap_diff(a, a.copy())
    assert r == {"mean_diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_paired_bootstrap_detects_a_real_shift_and_vectorises():
    rng = np.random.default_rng(6)
    b = rng.random((2, 400))
    noise = rng.normal(0, 0.05, b.shape)
    noise -= noise.mean(axis=1, keepdims=True)  # true mean difference is exactly 0.1 / 0
    a = b + np.array([[0.1], [0.0]]) + noise
    r = paired_bootstrap_diff(a, b)
    np.testing.assert_allclose(r["mean_diff"], (a - b).mean(axis=1))
    assert r["low"][0] < 0.1 < r["high"][0] and r["p_value"][0] < 0.01
    assert r["low"][1] < 0 < r["high"][1] and r["p_value"][1] > 0.5


def test_paired_test_dispatches_on_score_type():
    x, y = pair_with_counts(3, 9)
    assert paired_test(x, y) == pytest.approx(st.binomtest(3, 12).pvalue)
    soft = np.linspace(0, 1, 50)
    assert paired_test(soft, soft) == 1.0


def test_holm_matches_hand_computation():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
