"""Statistics over per-image results: bootstrap intervals and paired comparisons of two methods.

Pure functions on sequences of numbers (lists, numpy arrays); NaNs are dropped (an image where
a method failed carries no value). Used by ``actmatch benchmark`` for the intervals in
``summary.csv`` and the paired table in ``paired.csv`` (Holm-corrected with :func:`holm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_comparison", "paired_difference", "holm", "STATISTICS", "SIGN_TEST_BELOW", "TIE_TOLERANCE"]

#: named statistics of :func:`bootstrap_ci`; each maps (n_boot, n) -> (n_boot,) along axis 1
STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}
#: with fewer non-zero differences, :func:`paired_comparison` uses the exact sign test
SIGN_TEST_BELOW = 10
#: differences at most this large (absolute) count as ties
TIE_TOLERANCE = 1e-12
#: significant digits the paired values are rounded to first (results.csv writes ``%.6g``)
SIGNIFICANT = 6


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    return array[~np.isnan(array)]


def bootstrap_ci(
    values: Sequence[float],
    stat: str | Callable[..., np.ndarray] = "mean",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over images.

    Draw ``n_boot`` resamples of the n values with replacement, compute the statistic on each,
    and return the (1 − level)/2 and (1 + level)/2 quantiles of those statistics:
    [q_{α/2}(θ*_1..θ*_B), q_{1−α/2}(θ*_1..θ*_B)], α = 1 − level (Efron & Tibshirani 1993, ch. 13).

    Args:
        values: one value per image (NaNs are dropped).
        stat: ``"mean"``, ``"median"`` or a function ``f(array, axis=1)``.
        n_boot: number of resamples.
        level: coverage, in (0, 1).
        seed: seed of the resampling (the same values give the same interval).

    Returns:
        (low, high); (nan, nan) without values; (v, v) for a single value.

    Raises:
        ValueError: for an unknown statistic, ``n_boot`` < 1 or ``level`` outside (0, 1).
    """
    if isinstance(stat, str):
        if stat not in STATISTICS:
            raise ValueError(f"unknown statistic {stat!r}; choose from {list(STATISTICS)} or pass a function")
        stat = STATISTICS[stat]
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot}, {level}")
    array = _clean(values)
    if array.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    samples = array[rng.integers(0, array.size, size=(n_boot, array.size))]  # (n_boot, n)
    stats = np.asarray(stat(samples, axis=1), dtype=float)  # (n_boot,)
    alpha = 1 - level
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def _significant(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to ``SIGNIFICANT`` significant digits, as ``f"{v:.6g}"`` writes them."""
    return np.array([float(f"{v:.{SIGNIFICANT}g}") for v in values], dtype=float)


def _paired_values(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """a and b as flat arrays rounded as results.csv stores them (:func:`_significant`); ValueError when their lengths differ."""
    a_arr, b_arr = (_significant(np.asarray(v, dtype=float).reshape(-1)) for v in (a, b))
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need the same images: {a_arr.size} against {b_arr.size}")
    return a_arr, b_arr


def paired_comparison(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> dict:
    """Per-image comparison of method a against method b on the same images.

    With d_i = a_i − b_i (sign flipped when lower is better), a *win* is d_i > 0, a *loss*
    d_i < 0 and a *tie* |d_i| ≤ ``TIE_TOLERANCE``. The two-sided p-value tests "no difference":

    * Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: ties are
      dropped, as in the counts) when there are at least ``SIGN_TEST_BELOW`` non-zero
      differences that are not all of one size;
    * otherwise the exact sign test: p = P(|W − n/2| ≥ |wins − n/2|), W ~ Binomial(n, 1/2), n =
      wins + losses (``scipy.stats.binomtest``). Binary metrics (label kept) always get it:
      their differences are all ±1, so the signed ranks carry nothing beyond the signs;
    * p = 1 when every pair is a tie.

    a and b are first rounded to ``SIGNIFICANT`` significant digits, as results.csv stores them, so
    a run and its ``--from-results`` summary give the same p: float32 noise (0.6 stored as
    0.60000002) would otherwise hide ties between |d_i| and switch scipy from its normal
    approximation to the exact test.

    Args:
        a: values of method a, one per image (pairs with a NaN on either side are dropped).
        b: values of method b, the same images in the same order.
        higher_is_better: the direction of the metric.

    Returns:
        dict with ``n`` (pairs), ``wins``, ``ties``, ``losses`` (of a), ``p_value`` and ``test``
        (``"wilcoxon"``, ``"sign"`` or ``"none"``).

    Raises:
        ValueError: when a and b differ in length.
    """
    from scipy import stats

    a_arr, b_arr = _paired_values(a, b)
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    diff = (a_arr - b_arr)[keep] * (1 if higher_is_better else -1)
    diff[np.abs(diff) <= TIE_TOLERANCE] = 0.0
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    result = {"n": int(diff.size), "wins": wins, "ties": int(diff.size) - wins - losses, "losses": losses}
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return {**result, "p_value": 1.0, "test": "none"}
    if nonzero.size < SIGN_TEST_BELOW or np.ptp(np.abs(nonzero)) <= TIE_TOLERANCE:
        p = stats.binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
        return {**result, "p_value": float(p), "test": "sign"}
    p = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue
    return {**result, "p_value": float(p), "test": "wilcoxon"}


def paired_difference(
    a: Sequence[float], b: Sequence[float], stat: str = "mean", n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict:
    """How far apart two methods are on the same images: the statistic of d_i = a_i − b_i and its interval.

    ``difference`` = stat(d) (the mean, or the median for areas and ratios, as the summary's column), and
    ``difference_ci_low``/``_high`` its percentile bootstrap interval over images (:func:`bootstrap_ci`, the
    same resampling as the summary's intervals). The sign is a − b in the column's own units, whatever its
    direction; pairs with a NaN on either side are dropped, and the values are rounded as in
    :func:`paired_comparison` first. An interval that excludes 0 says how large the gap is, where the test
    says only whether there is one.

    Raises:
        ValueError: when a and b differ in length (and as :func:`bootstrap_ci` for ``stat``, ``n_boot``, ``level``).
    """
    a_arr, b_arr = _paired_values(a, b)
    diff = a_arr - b_arr
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return {"difference": float("nan"), "difference_ci_low": float("nan"), "difference_ci_high": float("nan")}
    low, high = bootstrap_ci(diff, stat, n_boot=n_boot, level=level, seed=seed)
    return {"difference": float(STATISTICS[stat](diff)), "difference_ci_low": low, "difference_ci_high": high}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input's order.

    With the m p-values sorted, p_(1) ≤ … ≤ p_(m): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)).
    Rejecting where p̃ < α controls the family-wise error rate at α. NaNs are left out of m and
    stay NaN.
    """
    values = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(values.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(values))
    order = valid[np.argsort(values[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        out[index] = running
    return out.tolist()
