"""Small, vectorised statistics for per-sample scores (numpy/scipy only).

Conventions: per-sample scores live on the last axis (``(..., sample)``); scores are
correctness in {0, 1} or soft scores in [0, 1] (e.g. VQA accuracy). Every random
routine takes an integer ``seed`` so results are reproducible.

scipy is imported inside the functions that use it: mech ships its modules by value with
remote traces, and a module-level reference to ``scipy.stats`` made every ``remote="local"``
request import it again on deserialisation (about 2.4 s each).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = [
    "bootstrap_ci",
    "resampled_means",
    "paired_bootstrap_diff",
    "mcnemar",
    "paired_test",
    "holm",
]

#: Below this many discordant pairs ``mcnemar(exact=None)`` uses the exact binomial test;
#: the chi-square approximation is the textbook choice from 25 up.
EXACT_BELOW = 25


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}; use e.g. 0.95")


def bootstrap_ci(
    values,
    *,
    stat: Callable = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    axis: int = -1,
):
    """Bootstrap confidence interval of ``stat`` over samples (``scipy.stats.bootstrap``).

    ``values``: array ``(..., sample)`` (samples along ``axis``); every leading row gets
    its own interval in one vectorised call. ``stat`` must accept ``axis=`` (numpy
    reductions do). ``method`` is ``"percentile"`` by default because it stays defined
    for degenerate samples (all-correct / all-wrong rows), where BCa returns NaN;
    pass ``method="BCa"`` for better small-sample coverage. Returns ``(low, high)``:
    floats for 1-D input, arrays of the leading shape otherwise.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=float)
    if x.shape[axis] < 2:
        raise ValueError(f"bootstrap needs at least 2 samples along axis {axis}, got {x.shape}")
    # batch bounds memory: scipy would otherwise materialise (n_resamples, *x.shape).
    batch = max(1, int(2e7 // max(x.size, 1)))
    from scipy import stats as _st  # imported where used, see the module docstring

    res = _st.bootstrap(
        (x,), stat, n_resamples=n_resamples, confidence_level=confidence, method=method,
        axis=axis, vectorized=True, batch=batch, rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def resampled_means(values, *, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap means with ONE set of resampled sample indices shared by all rows.

    ``values``: ``(..., sample)``. Returns ``(n_resamples, ...)``. Sharing the resample
    across rows keeps rows paired, so differences of rows' resampled means are valid
    paired-bootstrap draws (this is what makes per-layer CIs on drops consistent).
    Implemented as multinomial counts @ values, i.e. no ``(B, ..., n)`` array is built.
    """
    x = np.asarray(values, dtype=float)
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"need at least 2 samples on the last axis, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)  # (B, n)
    flat = x.reshape(-1, n)
    return (counts @ flat.T / n).reshape((n_resamples,) + x.shape[:-1])


def _order_ci(draws: np.ndarray, confidence: float):
    """The percentile interval as order statistics: the k-th smallest and k-th largest of
    the B draws, k = ceil(B (1 - confidence) / 2), so that it excludes 0 exactly when
    `_inversion_p` is below 1 - confidence."""
    n = draws.shape[0]
    k = max(1, math.ceil(n * (1 - confidence) / 2 - 1e-9))
    ordered = np.sort(draws, axis=0)
    return ordered[k - 1], ordered[n - k]


def _inversion_p(draws: np.ndarray) -> np.ndarray:
    """Two-sided p for "the mean difference is 0" from the same draws as the interval (the
    interval inverted): ``min(1, 2 min(#{d* <= 0}, #{d* >= 0}) / B)``."""
    n = draws.shape[0]
    tol = 1e-12  # float sums of identical resamples count as 0
    return np.minimum(1.0, 2 * np.minimum((draws <= tol).sum(axis=0), (draws >= -tol).sum(axis=0)) / n)


def paired_bootstrap_diff(
    a, b, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Mean difference ``a - b`` of two systems scored on the same samples, with its CI and
    p-value from one paired bootstrap.

    ``a``, ``b``: same shape ``(..., sample)``. Returns ``dict(mean_diff, low, high,
    p_value)`` (floats for 1-D input, arrays of the leading shape otherwise). The CI is the
    percentile interval of the resampled mean differences d* (as order statistics: the k-th
    smallest and largest of B, k = ceil(B (1 - confidence) / 2)); ``p_value`` is two-sided
    for H0 "mean difference is 0", the same interval inverted:
    ``min(1, 2 min(#{d* <= 0}, #{d* >= 0}) / B)``. So ``p_value < 1 - confidence`` exactly
    when the CI excludes 0, and a CI that ends at 0 has p >= 1 - confidence. Identical
    systems give diff 0, CI [0, 0] and p = 1. The smallest p it can give is 0 (every draw
    on one side): read it as p < 1 / B.
    """
    _check_confidence(confidence)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be scored on the same samples; shapes {a.shape} != {b.shape}")
    d = a - b
    obs = d.mean(axis=-1)
    draws = resampled_means(d, n_resamples=n_resamples, seed=seed)
    low, high = _order_ci(draws, confidence)
    out = dict(mean_diff=obs, low=low, high=high, p_value=_inversion_p(draws))
    return {k: float(v) for k, v in out.items()} if np.ndim(obs) == 0 else out


def mcnemar(correct_a, correct_b, *, exact: bool | None = None) -> dict:
    """McNemar's test for paired binary correctness of two systems on the same samples.

    ``correct_a``, ``correct_b``: boolean/0-1 arrays ``(..., sample)``. Discordant counts:
    ``b`` = a right & b wrong, ``c`` = a wrong & b right. ``exact=True``: two-sided exact
    binomial test, ``p = min(1, 2 * BinomCDF(min(b, c); b + c, 1/2))``, statistic
    ``min(b, c)``. ``exact=False``: chi-square with continuity correction,
    ``(|b - c| - 1)^2 / (b + c)`` on 1 df. ``exact=None`` picks exact per row when
    ``b + c < 25``. No discordant pairs gives statistic 0, p = 1. Returns
    ``dict(b, c, statistic, p_value)`` (scalars for 1-D input, arrays otherwise).
    """
    x, y = np.asarray(correct_a), np.asarray(correct_b)
    if x.shape != y.shape:
        raise ValueError(f"correct_a and correct_b must cover the same samples; shapes {x.shape} != {y.shape}")
    for name, arr in (("correct_a", x), ("correct_b", y)):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be binary (0/1 or bool); for soft scores use paired_bootstrap_diff")
    x, y = x.astype(bool), y.astype(bool)
    b = (x & ~y).sum(axis=-1)
    c = (~x & y).sum(axis=-1)
    n = b + c
    use_exact = n < EXACT_BELOW if exact is None else np.full(np.shape(n), bool(exact))
    safe_n = np.maximum(n, 1)
    from scipy import stats as _st

    p_exact = np.minimum(1.0, 2 * _st.binom.cdf(np.minimum(b, c), n, 0.5))
    chi = np.where(n > 0, np.maximum(np.abs(b - c) - 1, 0) ** 2 / safe_n, 0.0)
    p_chi = _st.chi2.sf(chi, 1)
    stat = np.where(use_exact, np.minimum(b, c), chi).astype(float)
    p = np.where(n > 0, np.where(use_exact, p_exact, p_chi), 1.0)
    out = dict(b=b, c=c, statistic=stat, p_value=p)
    if np.ndim(b) == 0:
        return dict(b=int(b), c=int(c), statistic=float(stat), p_value=float(p))
    return out


def paired_test(a, b, *, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-sided p-value(s) for "a and b have the same mean score" on paired samples.

    ``a``, ``b``: ``(..., sample)``. Binary scores use :func:`mcnemar` (exact/chi-square
    as documented there); soft scores use :func:`paired_bootstrap_diff`. Returns an
    array of the leading shape.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all():
        return np.asarray(mcnemar(a, b)["p_value"], dtype=float)
    return np.asarray(paired_bootstrap_diff(a, b, n_resamples=n_resamples, seed=seed)["p_value"])


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control); NaNs are left out."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q)
    adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out
