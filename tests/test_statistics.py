"""Statistics over images (``actmatch.evaluation.statistics``) against answers worked out by hand
or by scipy / statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actmatch.evaluation.statistics import bootstrap_ci, holm, paired_comparison, paired_difference


# ----------------------------------------------------------------------------- Holm
def test_holm_by_hand():
    """Sorted: 0.005 · 4 = 0.02, 0.01 · 3 = 0.03, 0.03 · 2 = 0.06, 0.04 · 1 = 0.04 -> running max 0.06."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.02, 0.02, 0.02]) == pytest.approx([0.06, 0.06, 0.06])  # ties: max over the prefix
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # min(1, 2 · 0.5), then max(1, 0.6)
    out = holm([0.01, float("nan"), 0.04])  # NaN is left out of m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]) == []


def test_holm_equals_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(0, 0.2, 12)
    expected = multitest.multipletests(p, method="holm")[1]
    np.testing.assert_allclose(holm(p), expected, atol=1e-12)


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_of_two_values_by_hand():
    """The mean of a resample of (0, 1) is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4: its 2.5 % and
    97.5 % quantiles are 0 and 1, its 30 % and 70 % quantiles both 1/2."""
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], level=0.4) == (0.5, 0.5)
    assert bootstrap_ci([0.3, float("nan"), 0.3]) == (0.3, 0.3)  # NaN dropped, constant values
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_bootstrap_matches_scipy_percentile_bootstrap():
    """scipy.stats.bootstrap (percentile method) draws its own resamples: the same interval up to
    Monte-Carlo error (20000 resamples of 40 values in [0, 1]; the median's bootstrap distribution is
    discrete, so both land on the same order statistics of the data)."""
    from scipy import stats

    values = np.random.default_rng(0).random(40)
    for name, fn, tolerance in (("mean", np.mean, 0.003), ("median", np.median, 1e-12)):
        ours = bootstrap_ci(values, stat=name, n_boot=20000)
        theirs = stats.bootstrap((values,), fn, n_resamples=20000, method="percentile", random_state=np.random.default_rng(1))
        assert ours == pytest.approx((theirs.confidence_interval.low, theirs.confidence_interval.high), abs=tolerance)


def test_paired_difference_by_hand():
    """a − b = (1, 1, 3, nan): the pair with a NaN is dropped; mean 5/3, median 1. A constant difference has a
    zero-width interval; the sign is a − b whatever the column's direction."""
    a, b = [1.0, 2.0, 4.0, 5.0], [0.0, 1.0, 1.0, float("nan")]
    mean = paired_difference(a, b)
    assert mean["difference"] == pytest.approx(5 / 3) and 1 <= mean["difference_ci_low"] < mean["difference_ci_high"] <= 3
    assert paired_difference(a, b, "median")["difference"] == 1.0
    assert paired_difference(b[:3], a[:3])["difference"] == pytest.approx(-5 / 3)
    constant = paired_difference([0.5, 0.7, 0.9], [0.25, 0.45, 0.65])
    assert (constant["difference"], constant["difference_ci_low"], constant["difference_ci_high"]) == pytest.approx((0.25,) * 3)
    assert all(math.isnan(v) for v in paired_difference([float("nan")], [1.0]).values())
    with pytest.raises(ValueError, match="same images"):
        paired_difference([1.0, 2.0], [1.0])


def test_paired_difference_matches_scipy_paired_bootstrap():
    """scipy.stats.bootstrap with ``paired=True`` resamples the images, keeping each pair together: its
    percentile interval of mean(a) − mean(b) is ours up to Monte-Carlo error (20000 resamples, 60 images)."""
    from scipy import stats

    rng = np.random.default_rng(3)
    a = rng.random(60)
    b = a - 0.05 + 0.1 * rng.standard_normal(60)
    ours = paired_difference(a, b, n_boot=20000)
    theirs = stats.bootstrap(
        (a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True, n_resamples=20000, method="percentile",
        random_state=np.random.default_rng(4),
    ).confidence_interval  # fmt: skip
    assert ours["difference"] == pytest.approx(np.mean(a - b), abs=1e-5)  # values rounded to 6 significant digits
    assert (ours["difference_ci_low"], ours["difference_ci_high"]) == pytest.approx((theirs.low, theirs.high), abs=0.002)


def test_bootstrap_is_reproducible_and_checks_its_arguments():
    values = np.random.default_rng(2).random(40).tolist()
    low, high = bootstrap_ci(values)
    assert min(values) <= low < np.mean(values) < high <= max(values)
    assert bootstrap_ci(values) == (low, high) and bootstrap_ci(values, seed=1) != (low, high)
    narrow = bootstrap_ci(values * 4)  # four times the images: about half the width
    assert (narrow[1] - narrow[0]) == pytest.approx((high - low) / 2, rel=0.25)
    assert bootstrap_ci(values, stat=lambda a, axis: np.max(a, axis=axis))[1] == max(values)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(values, stat="mode")
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(values, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(values, n_boot=0)


# ----------------------------------------------------------------------------- paired comparison
def test_wilcoxon_p_by_hand():
    """10 non-zero differences of distinct sizes 1..10. All positive: W− = 0, and exactly one of the
    2^10 sign patterns has W ≤ 0 on each side: p = 2/1024. The smallest negative: W− = 1, two patterns
    (W− = 0, 1) per side: p = 4/1024."""
    b = [0.0] * 10
    all_wins = paired_comparison(list(range(1, 11)), b)
    assert (all_wins["wins"], all_wins["losses"], all_wins["test"]) == (10, 0, "wilcoxon")
    assert all_wins["p_value"] == pytest.approx(2 / 1024, abs=1e-15)
    one_loss = paired_comparison([-1] + list(range(2, 11)), b)
    assert (one_loss["wins"], one_loss["losses"], one_loss["test"]) == (9, 1, "wilcoxon")
    assert one_loss["p_value"] == pytest.approx(4 / 1024, abs=1e-15)
    lower = paired_comparison(list(range(1, 11)), b, higher_is_better=False)  # e.g. deletion AUC
    assert (lower["wins"], lower["losses"], lower["p_value"]) == (0, 10, pytest.approx(2 / 1024))


def test_sign_test_p_by_hand():
    """Binary values: 12 wins, 3 losses, 5 ties: p = 2 · Σ_{k≤3} C(15, k) / 2^15 = 1152 / 32768."""
    kept = paired_comparison([1] * 12 + [0] * 3 + [1] * 5, [0] * 12 + [1] * 3 + [1] * 5)
    assert (kept["n"], kept["wins"], kept["ties"], kept["losses"], kept["test"]) == (20, 12, 5, 3, "sign")
    assert kept["p_value"] == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15, abs=1e-15)
    assert kept["p_value"] == pytest.approx(0.03515625)
    few = paired_comparison([0.5, 0.7, 0.9, 0.2, 0.4], [0.1, 0.2, 0.3, 0.1, 0.6])  # 4 wins 1 loss: 2 · 6/32
    assert (few["test"], few["p_value"]) == ("sign", pytest.approx(12 / 32))


def test_paired_comparison_against_scipy_and_edge_cases():
    from scipy import stats

    rng = np.random.default_rng(1)
    b = rng.random(30)
    a = b + 0.05 * rng.standard_normal(30) + 0.01
    result = paired_comparison(a, b)
    d = np.array([float(f"{x:.6g}") for x in a]) - np.array([float(f"{x:.6g}") for x in b])
    # (the differences of the values as results.csv stores them, 6 significant digits)
    assert result["test"] == "wilcoxon"
    assert result["p_value"] == pytest.approx(stats.wilcoxon(d[d != 0]).pvalue, rel=1e-12)
    same = paired_comparison([1, 0, 1], [1, 0, 1])
    assert same == {"n": 3, "wins": 0, "ties": 3, "losses": 0, "p_value": 1.0, "test": "none"}
    nan = paired_comparison([0.1, 0.5, 0.3], [0.2, 0.1, float("nan")])  # NaN pair dropped, 2 left: sign test
    assert nan["n"] == 2 and nan["test"] == "sign" and nan["p_value"] == pytest.approx(1.0)
    equal_sizes = paired_comparison([1.0] * 11 + [0.0], [0.0] * 11 + [1.0])  # |d| all 1: the sign test
    assert equal_sizes["test"] == "sign" and equal_sizes["p_value"] == pytest.approx(2 * (1 + 12) / 4096)
    with pytest.raises(ValueError, match="same images"):
        paired_comparison([1, 2], [1])


def test_paired_comparison_sees_ties_through_float32_noise():
    """Values on a grid tie in |d|; float32 noise must not hide that (a run and its results.csv agree)."""
    grid = [0.6, 0.0475, 0.1, 0.05, 0.2, 0.03, 0.6, 0.0475, 0.15, 0.01, 0.3, 0.02]
    a = [0.0475, 0.01, 0.03, 0.02, 0.0475, 0.01, 0.05, 0.01, 0.0475, 0.03, 0.1, 0.05]
    noisy = [float(np.float32(v)) for v in grid]
    assert noisy != grid  # 0.6 as float32 is 0.60000002...
    as_stored = paired_comparison(a, [float(f"{v:.6g}") for v in noisy], higher_is_better=False)
    assert paired_comparison(a, noisy, higher_is_better=False) == as_stored
    assert paired_comparison(a, grid, higher_is_better=False) == as_stored
