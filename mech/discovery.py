"""Discover fusion, review and post-integrated layers from layer-wise image masking.

Input is one masking run per decoder layer L: the hidden states of all image tokens are
zeroed at the input of layer L, so image information is only available to layers < L
(what they already moved into text tokens). ``acc(L)`` therefore tends to rise with L
towards the unmasked baseline, and the accuracy of layer L's run compared with layer
L+1's run isolates what layer L itself still needed from the image tokens.

The discovery rule (see :func:`discover_layers`) is written so that both curve shapes
work: a rising curve (small models) and a flat curve with dips (LLaVA-1.5-7B, where the
paper reads off fusion set 2, 4, 8, 11, 12, 13 and review layer 29 by eye).

How stable the answer is: the same rule is applied to bootstrap resamples of the samples,
and each layer's selection frequency as a fusion layer and as the review layer is
reported.

One piece: the rule (`_select`) and its resampled application stay in this module (past
~400 lines) so that the two can never drift apart: both call the same function, only the
paired tests behind it differ (`_PairTests`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import stats as _st

from . import stats

__all__ = ["LayerDiscovery", "HellingerCheck", "DiscoveryWarning", "discover_layers", "min_hellinger_check",
           "bootstrap_indices"]


class DiscoveryWarning(UserWarning):
    """The discovered layers are not stable under bootstrap resampling of the samples."""


@dataclass(frozen=True)
class LayerDiscovery:
    """Result of :func:`discover_layers`.

    ``stats`` is an ``xr.Dataset`` over dims ``("layer",)`` and ``("layer", "bound")``
    (bound = "low"/"high"): ``accuracy``/``accuracy_ci``; ``drop``/``drop_ci`` =
    acc(L+1) - acc(L) (baseline stands in for layer N); ``p_value`` (paired test of
    L vs L+1), ``p_holm`` (Holm-adjusted over layers); ``is_drop``; ``in_dip``/``dip_depth``
    (layers added by the dip-stretch step, depth below the lower rim); ``flat_before``;
    ``baseline_drop``/``baseline_drop_ci`` = baseline - acc(L) when a baseline is given;
    with ``n_bootstrap > 0``, ``fusion_frequency`` / ``review_frequency`` (share of
    resamples in which L is selected as a fusion layer / as the review layer) and the attrs
    ``n_bootstrap``, ``no_review_frequency``, ``answer_frequency`` (resamples giving exactly
    this fusion set and review layer) and ``stable``.
    Parameters used are in ``stats.attrs``.
    """

    fusion_layers: tuple[int, ...]
    review_layer: int | None
    post_layer: int | None
    reason: str
    stats: xr.Dataset

    @property
    def fusion_frequency(self) -> dict[int, float]:
        """``{layer: share of bootstrap resamples selecting it as a fusion layer}`` ({} without bootstrap)."""
        return self._frequency("fusion_frequency")

    @property
    def review_frequency(self) -> dict[int, float]:
        """``{layer: share of bootstrap resamples selecting it as the review layer}`` ({} without bootstrap)."""
        return self._frequency("review_frequency")

    @property
    def stable(self) -> bool | None:
        """Whether every selection frequency is settled (see `discover_layers`); None without bootstrap."""
        value = self.stats.attrs.get("stable")
        return None if value is None else bool(value)

    def _frequency(self, name: str) -> dict[int, float]:
        if name not in self.stats:
            return {}
        return {int(L): float(f) for L, f in zip(self.stats["layer"].values, self.stats[name].values)}

    def frequencies_text(self) -> str:
        """One line: ``S = {1, 2} — selected in 99%, 97% of 1,000 resamples; review layer 6 — 100%``."""
        a = self.stats.attrs
        if not a.get("n_bootstrap"):
            return f"S = {{{', '.join(map(str, self.fusion_layers))}}}; review layer {self.review_layer} (no bootstrap)"
        fus, rev = self.fusion_frequency, self.review_frequency
        s = (f"S = {{{', '.join(map(str, self.fusion_layers))}}} — selected in "
             + (", ".join(f"{100 * fus[L]:.0f}%" for L in self.fusion_layers) or "–")
             + f" of {a['n_bootstrap']:,} resamples")
        if self.review_layer is not None:
            s += f"; review layer {self.review_layer} — {100 * rev[self.review_layer]:.0f}%"
        else:
            s += f"; no review layer — {100 * a['no_review_frequency']:.0f}%"
        return s


@dataclass(frozen=True)
class HellingerCheck:
    """Result of :func:`min_hellinger_check`.

    ``layer``: searched layer with the smallest mean Hellinger distance to the final
    layer's image attention. ``tied_layers``: searched layers whose distance is not
    distinguishable from the minimum (bootstrap CI of the paired difference contains 0),
    ``layer`` included. ``agrees``: ``layer == post_layer`` (None when no post layer was
    given). ``distance``: Dataset with ``mean`` ("layer",) and ``ci`` ("layer", "bound").
    """

    layer: int
    tied_layers: tuple[int, ...]
    agrees: bool | None
    reason: str
    distance: xr.Dataset


def _as_layer_sample(da, name: str, *, min_layers: int) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise ValueError(
            f"{name} must be an xarray.DataArray with dims ('layer', 'sample'), got "
            f"{type(da).__name__}; wrap arrays as xr.DataArray(arr, dims=('layer', 'sample'))"
        )
    if set(da.dims) != {"layer", "sample"}:
        raise ValueError(
            f"{name} must have exactly dims ('layer', 'sample'), got {da.dims}; "
            "rename or select away other dims (e.g. .sel(dataset=...) or .rename(...))"
        )
    da = da.transpose("layer", "sample")
    n_layers = da.sizes["layer"]
    if n_layers < min_layers:
        raise ValueError(
            f"{name} has {n_layers} layer(s); need at least {min_layers} "
            "(one masking run per decoder layer 0..N-1)"
        )
    if da.sizes["sample"] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {da.sizes['sample']}")
    if "layer" in da.coords:
        da = da.sortby("layer")
        layers = da["layer"].values
        if not np.array_equal(layers, np.arange(n_layers)):
            raise ValueError(
                f"{name} layer coords must be the decoder layer indices 0..{n_layers - 1} "
                f"with none missing, got {layers.tolist()}; run the masking at every layer"
            )
    else:
        da = da.assign_coords(layer=np.arange(n_layers))
    if not np.isfinite(da.values).all():
        raise ValueError(f"{name} contains NaN/inf; drop or re-score those samples first")
    return da


def _check_unit(value: float, name: str, *, closed_high: bool = False) -> None:
    ok = 0.0 < value <= 1.0 if closed_high else 0.0 < value < 1.0
    if not ok:
        rng = "(0, 1]" if closed_high else "(0, 1)"
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")


def _align_baseline(baseline, correct: xr.DataArray) -> np.ndarray:
    if not isinstance(baseline, xr.DataArray) or baseline.dims != ("sample",):
        raise ValueError(
            "baseline must be an xarray.DataArray with dims ('sample',) holding the "
            f"unmasked run's per-sample scores, got {getattr(baseline, 'dims', type(baseline).__name__)}"
        )
    if baseline.sizes["sample"] != correct.sizes["sample"]:
        raise ValueError(
            f"baseline has {baseline.sizes['sample']} samples but correct has "
            f"{correct.sizes['sample']}; score the unmasked run on the same samples"
        )
    if "sample" in baseline.coords and "sample" in correct.coords:
        if set(baseline["sample"].values.tolist()) != set(correct["sample"].values.tolist()):
            raise ValueError("baseline and correct have different sample ids; score the same samples")
        baseline = baseline.sel(sample=correct["sample"])
    values = np.asarray(baseline.values, dtype=float)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError("baseline scores must be finite and in [0, 1]")
    return values


def _flat_before(acc: np.ndarray, flat_len: int, flat_tol: float) -> np.ndarray:
    """flat[L]: accuracies of layers L-flat_len..L-1 span less than flat_tol."""
    flat = np.zeros(acc.size, dtype=bool)
    for L in range(flat_len, acc.size):
        win = acc[L - flat_len : L]
        flat[L] = win.max() - win.min() < flat_tol
    return flat


def _dip_stretches(below, is_step) -> dict[int, tuple[int, int]]:
    """Map each layer a..b-1 of a multi-layer dip a..b (b a step layer) to (a, b).
    ``below(i, j)``: row i lies significantly >= min_drop above row j (row N = baseline)."""
    out = {}
    for b in np.flatnonzero(is_step):
        a = b
        while a > 0 and below(b + 1, a - 1):
            a -= 1
        # a == 0: the low stretch reaches layer 0, i.e. a rising curve, not a dip.
        if a == b or a == 0:
            continue
        if all(below(a - 1, L) for L in range(a, b + 1)):
            out.update({L: (a, int(b)) for L in range(a, b)})
    return out


def _select(acc, p, below, n_layers, *, alpha, min_drop, deep_start, flat_len, flat_tol) -> dict:
    """The discovery rule on one set of samples (steps 3-7 of `discover_layers`).

    ``acc``: ``(n_rows,)`` mean score per row (layers 0..N-1, then the baseline if any);
    ``p``: ``(N,)`` raw p-values of row L+1 vs row L (NaN: untested); ``below(i, j)``:
    the paired dip test between rows. Returns the selection and its intermediate arrays.
    """
    n_tested = acc.size - 1
    drop = np.full(n_layers, np.nan)
    drop[:n_tested] = acc[1: n_tested + 1] - acc[:n_tested]
    p_holm = stats.holm(p)
    is_step = (drop >= min_drop) & (p_holm < alpha)  # NaN compares False
    test = lambda i, j: acc[i] - acc[j] >= min_drop and below(i, j)
    dips = _dip_stretches(test, is_step)
    is_drop = is_step.copy()
    is_drop[list(dips)] = True
    dip_depth = np.full(n_layers, np.nan)
    for L, (a, b) in dips.items():
        dip_depth[L] = min(acc[a - 1], acc[b + 1]) - acc[L]
    flat = _flat_before(acc[:n_layers], flat_len, flat_tol)
    candidates = [L for L in range(deep_start, n_layers) if is_drop[L] and flat[L]]
    effect = np.fmax(drop, dip_depth)
    review = max(candidates, key=lambda L: (effect[L], L)) if candidates else None
    fusion = tuple(int(L) for L in np.flatnonzero(is_drop) if L != review)
    return dict(drop=drop, p_holm=p_holm, is_drop=is_drop, dips=dips, dip_depth=dip_depth, flat=flat,
                review=review, fusion=fusion)


def bootstrap_indices(n_samples: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n_bootstrap, n_samples)`` sample indices drawn with replacement, the resamples
    `discover_layers` uses: ``np.random.default_rng(seed).integers(0, n, (B, n))``."""
    return np.random.default_rng(seed).integers(0, n_samples, size=(n_bootstrap, n_samples))


class _PairTests:
    """Paired two-sided p-values between rows of ``rows (n_rows, n)`` in every bootstrap
    resample at once: ``p(i, j)`` -> ``(B,)``; ``counts (B, n)``: how often each sample is
    drawn. 0/1 rows: McNemar (exact binomial below `stats.EXACT_BELOW` discordant pairs,
    else chi-square with continuity correction, as `stats.mcnemar`); soft rows: normal
    approximation of the paired mean difference. Pairs are computed once and cached."""

    def __init__(self, rows: np.ndarray, counts: np.ndarray):
        self.rows, self.counts, self.cache = rows, counts, {}
        self.binary = bool(np.isin(rows, (0, 1)).all())
        self.right = counts @ rows.T  # (B, n_rows): resampled sum of scores per row

    def p(self, i: int, j: int) -> np.ndarray:
        if (i, j) not in self.cache:
            self.cache[(i, j)] = self.cache[(j, i)] = self._p(i, j)
        return self.cache[(i, j)]

    def _p(self, i: int, j: int) -> np.ndarray:
        a, b = self.rows[i], self.rows[j]
        if self.binary:
            both = self.counts @ (a * b)  # (B,) right in both rows
            bc, cb = self.right[:, i] - both, self.right[:, j] - both  # discordant counts
            n = bc + cb
            exact = np.minimum(1.0, 2 * _st.binom.cdf(np.minimum(bc, cb), n, 0.5))
            chi = np.where(n > 0, np.maximum(np.abs(bc - cb) - 1, 0) ** 2 / np.maximum(n, 1), 0.0)
            return np.where(n > 0, np.where(n < stats.EXACT_BELOW, exact, _st.chi2.sf(chi, 1)), 1.0)
        d = a - b
        n = self.counts.sum(1)
        mean = self.counts @ d / n
        var = np.maximum(self.counts @ d ** 2 / n - mean ** 2, 0.0)
        se = np.sqrt(var / n)
        z = np.divide(np.abs(mean), se, out=np.where(np.abs(mean) > 1e-12, np.inf, 0.0), where=se > 0)
        return 2 * _st.norm.sf(z)


def _bootstrap(rows, n_layers, n_bootstrap, seed, rule) -> dict:
    """The rule on ``n_bootstrap`` resamples (`bootstrap_indices`): selection counts."""
    n = rows.shape[1]
    idx = bootstrap_indices(n, n_bootstrap, seed)
    counts = np.stack([np.bincount(r, minlength=n) for r in idx]).astype(float)  # (B, n)
    tests = _PairTests(rows, counts)
    acc = tests.right / n  # (B, n_rows) resampled mean scores
    n_tested = rows.shape[0] - 1
    p_next = np.full((n_bootstrap, n_layers), np.nan)
    for L in range(n_tested):
        p_next[:, L] = tests.p(L + 1, L)
    fusion, review, answers = np.zeros(n_layers), np.zeros(n_layers), []
    for k in range(n_bootstrap):
        found = rule(acc[k], p_next[k], lambda i, j, k=k: bool(tests.p(i, j)[k] < rule.dip_alpha))
        fusion[list(found["fusion"])] += 1
        if found["review"] is not None:
            review[found["review"]] += 1
        answers.append((found["fusion"], found["review"]))
    return dict(fusion=fusion / n_bootstrap, review=review / n_bootstrap, answers=answers)


def discover_layers(
    correct: xr.DataArray,
    *,
    baseline: xr.DataArray | None = None,
    alpha: float = 0.05,
    min_drop: float = 0.05,
    deep_fraction: float = 1 / 3,
    flat_len: int = 3,
    flat_tol: float | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    n_bootstrap: int = 1000,
    stability: float = 0.8,
) -> LayerDiscovery:
    """Find fusion layers, the review layer and the post-integrated layer.

    ``correct``: DataArray ``("layer", "sample")``, layer coords 0..N-1 (N >= 3), per-
    sample scores in [0, 1] of the run that masks image tokens at the input of that
    layer. ``baseline``: optional DataArray ``("sample",)`` of the unmasked run.

    Rule (scores as fractions, so ``min_drop=0.05`` is 5 accuracy points):

    1. drop(L) = acc(L+1) - acc(L): the accuracy lost by masking from L instead of
       L+1, i.e. what layer L itself still needed from the image tokens. For the last
       layer, acc(N) is the baseline; without a baseline the last layer is not tested.
       Isolated dips (acc(L) below both neighbours) and steps of a rising curve both
       show up as a positive drop(L).
    2. p(L): paired two-sided test of per-sample scores at L vs L+1 -- McNemar for 0/1
       scores (exact binomial when fewer than 25 discordant samples, else chi-square
       with continuity correction), paired bootstrap for soft scores -- Holm-adjusted
       over all tested layers.
    3. L is a *step layer* iff drop(L) >= ``min_drop`` and Holm p(L) < ``alpha``.
       Every step layer is a *drop layer*.
    4. Dip stretches (flat curve with a dip wider than one layer): from a step layer b,
       walk left over layers lying >= ``min_drop`` below acc(b+1) (paired p < alpha/N,
       Bonferroni) to the first such layer a. If a > 0 and every layer a..b also lies
       >= ``min_drop`` below acc(a-1) (same test), a..b-1 are drop layers too. On a
       rising curve the low stretch runs down to layer 0 or nothing falls into it, so
       only b counts there: masking from L then costs nothing more than from L+1.
    5. The deep part of the stack is the last ``ceil(N * deep_fraction)`` layers
       (default last third: layers 21..31 of 32). L has a *flat stretch* before it iff
       layers L-flat_len .. L-1 exist and their accuracies span (max - min) less than
       ``flat_tol`` (default ``min_drop``). This asks for positive evidence of flatness
       rather than "no significant change", so a slow climb measured on few samples
       is not mistaken for a plateau and no review layer is invented; the price is that
       with few samples, noise alone can break a real plateau (then: none found).
    6. The *review layer* is the drop layer in the deep part with a flat stretch before
       it, taking the largest effect (drop, or dip depth for dip-stretch layers) and
       then the deepest if several qualify; None if none does ("no review layer found").
       The *post-integrated layer* is review - 1.
    7. *Fusion layers* are all other drop layers, in layer order.

    **Stability.** With ``n_bootstrap > 0`` (default 1000) the whole rule is applied again
    to ``n_bootstrap`` resamples of the samples, drawn with replacement
    (`bootstrap_indices`; one index row per resample, the baseline resampled with the same
    rows), and ``stats`` gains each layer's selection frequency as a fusion layer and as
    the review layer. In a resample the paired tests are McNemar's from the resample's
    discordant counts (0/1 scores, the same test as above) or, for soft scores, the normal
    approximation of the paired bootstrap (a nested bootstrap would cost ``n_bootstrap x
    n_resamples``). The answer is *stable* when every frequency (fusion and review per layer,
    and "no review layer") lies outside ``(1 - stability, stability)``; otherwise a
    `DiscoveryWarning` names the unsettled layers and the sample count.
    """
    _check_unit(alpha, "alpha")
    _check_unit(confidence, "confidence")
    _check_unit(deep_fraction, "deep_fraction", closed_high=True)
    if not 0.0 <= min_drop < 1.0:
        raise ValueError(f"min_drop is an effect size in accuracy fraction, must lie in [0, 1), got {min_drop!r}")
    flat_tol = min_drop if flat_tol is None else flat_tol
    if not 0.0 < flat_tol < 1.0:
        raise ValueError(f"flat_tol (an accuracy span, default min_drop) must lie in (0, 1), got {flat_tol!r}")
    if int(flat_len) != flat_len or flat_len < 1:
        raise ValueError(f"flat_len must be a positive integer number of layers, got {flat_len!r}")
    if int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer (0: no stability check), got {n_bootstrap!r}")
    if not 0.5 < stability <= 1.0:
        raise ValueError(f"stability must lie in (0.5, 1], got {stability!r}")
    correct = _as_layer_sample(correct, "correct", min_layers=3)
    x = np.asarray(correct.values, dtype=float)
    if x.min() < 0 or x.max() > 1:
        raise ValueError("correct scores must lie in [0, 1]; divide percentages by 100")
    n_layers = x.shape[0]
    base = None if baseline is None else _align_baseline(baseline, correct)

    # "next" row for each layer; the baseline plays the role of layer N.
    rows = x if base is None else np.vstack([x, base[None]])
    n_tested = n_layers - 1 if base is None else n_layers
    acc = rows.mean(axis=1)
    p = np.full(n_layers, np.nan)
    test = dict(n_resamples=n_resamples, seed=seed)
    p[:n_tested] = stats.paired_test(rows[1: n_tested + 1], rows[:n_tested], **test)
    deep_start = n_layers - math.ceil(n_layers * deep_fraction)

    def rule(acc_, p_, below):
        return _select(acc_, p_, below, n_layers, alpha=alpha, min_drop=min_drop, deep_start=deep_start,
                       flat_len=flat_len, flat_tol=flat_tol)

    rule.dip_alpha = alpha / n_layers  # Bonferroni over layers for the dip-stretch tests
    found = rule(acc, p, lambda i, j: float(stats.paired_test(rows[i], rows[j], **test)) < rule.dip_alpha)
    drop, dips, review, fusion = found["drop"], found["dips"], found["review"], found["fusion"]

    # One shared resample for all rows keeps the per-layer CIs mutually paired.
    means = stats.resampled_means(rows, n_resamples=n_resamples, seed=seed)
    tail = 100 * (1 - confidence) / 2
    ci = lambda d: np.stack([np.percentile(d, tail, axis=0), np.percentile(d, 100 - tail, axis=0)], -1)
    acc_ci = ci(means[:, :n_layers])
    drop_ci = np.full((n_layers, 2), np.nan)
    drop_ci[:n_tested] = ci(means[:, 1: n_tested + 1] - means[:, :n_tested])

    ds = xr.Dataset(
        {
            "accuracy": ("layer", acc[:n_layers]),
            "accuracy_ci": (("layer", "bound"), acc_ci),
            "drop": ("layer", drop),
            "drop_ci": (("layer", "bound"), drop_ci),
            "p_value": ("layer", p),
            "p_holm": ("layer", found["p_holm"]),
            "is_drop": ("layer", found["is_drop"]),
            "in_dip": ("layer", np.isin(np.arange(n_layers), list(dips))),
            "dip_depth": ("layer", found["dip_depth"]),
            "flat_before": ("layer", found["flat"]),
        },
        coords={"layer": np.arange(n_layers), "bound": ["low", "high"]},
        attrs=dict(alpha=alpha, min_drop=min_drop, deep_fraction=deep_fraction, deep_start=deep_start,
                   flat_len=flat_len, flat_tol=flat_tol, confidence=confidence, n_samples=x.shape[1],
                   baseline_accuracy=np.nan if base is None else float(acc[-1]), n_bootstrap=int(n_bootstrap)),
    )
    if base is not None:
        ds["baseline_drop"] = ("layer", acc[-1] - acc[:n_layers])
        ds["baseline_drop_ci"] = (("layer", "bound"), ci(means[:, -1:] - means[:, :n_layers]))
    if n_bootstrap:
        _add_frequencies(ds, _bootstrap(rows, n_layers, int(n_bootstrap), seed, rule), fusion, review, stability)

    reason = _explain(ds, fusion, review, dips)
    return LayerDiscovery(fusion, review, None if review is None else review - 1, reason, ds)


def _add_frequencies(ds, boot, fusion, review, stability) -> None:
    """Selection frequencies into ``ds``; warn when any is unsettled."""
    ds["fusion_frequency"] = ("layer", boot["fusion"])
    ds["review_frequency"] = ("layer", boot["review"])
    no_review = 1.0 - float(boot["review"].sum())
    same = sum(a == (fusion, review) for a in boot["answers"]) / len(boot["answers"])
    unsettled = lambda f: 1 - stability < f < stability
    loose = [f"layer {L} as fusion in {100 * f:.0f}%" for L, f in enumerate(boot["fusion"]) if unsettled(f)]
    loose += [f"layer {L} as review in {100 * f:.0f}%" for L, f in enumerate(boot["review"]) if unsettled(f)]
    if unsettled(no_review):
        loose.append(f"no review layer in {100 * no_review:.0f}%")
    ds.attrs.update(no_review_frequency=no_review, answer_frequency=same, stable=int(not loose),
                    stability=stability)
    if loose:
        warnings.warn(
            f"discovered layers are not stable under resampling: with n = {ds.attrs['n_samples']} samples, "
            f"{'; '.join(loose)} of {len(boot['answers']):,} bootstrap resamples (settled means at least "
            f"{100 * stability:.0f}% or at most {100 * (1 - stability):.0f}%); n is too small for a stable "
            "answer, use more samples", DiscoveryWarning, stacklevel=3)


def _describe(ds: xr.Dataset, L: int, dips=None) -> str:
    if dips and L in dips:
        a, b = dips[L]
        return f"{L} (in dip {a}..{b}: {100 * ds['dip_depth'].values[L]:.1f} pts below layers {a - 1} and {b + 1})"
    lo, hi = ds["drop_ci"].values[L]
    return f"{L} (drop {100 * ds['drop'].values[L]:.1f} pts [{100 * lo:.1f}, {100 * hi:.1f}], Holm p={ds['p_holm'].values[L]:.2g})"


def _explain(ds: xr.Dataset, fusion, review, dips) -> str:
    a = ds.attrs
    n = ds.sizes["layer"]
    rule = f"drop(L) = acc(L+1) - acc(L) >= {100 * a['min_drop']:g} pts with Holm p < {a['alpha']:g}"
    if dips:
        rule += ", or inside a dip of such a layer"
    parts = []
    if fusion:
        parts.append(f"fusion layers {', '.join(map(str, fusion))}: {rule}: " + "; ".join(_describe(ds, L, dips) for L in fusion))
    else:
        parts.append(f"no fusion layers: no layer has {rule}")
    deep = f"deep part = layers {a['deep_start']}..{n - 1}"
    if review is not None:
        s = review - a["flat_len"]
        parts.append(
            f"review layer {_describe(ds, review, dips)}: largest drop in the {deep} after a flat stretch "
            f"(layers {s}..{review - 1} span < {100 * a['flat_tol']:g} pts); "
            f"post-integrated layer {review - 1} = review - 1"
        )
    else:
        deep_drops = [L for L in range(a["deep_start"], n) if ds["is_drop"].values[L]]
        why = (f"drops at {', '.join(map(str, deep_drops))} are not preceded by a flat stretch of {a['flat_len']} layers"
               if deep_drops else "no layer there has a significant drop")
        parts.append(f"no review layer found: {why} ({deep}); no post-integrated layer")
    if a.get("n_bootstrap"):
        share = lambda f: f"{100 * f:.0f}%"
        fus = ", ".join(f"{L} {share(ds['fusion_frequency'].values[L])}" for L in fusion) or "none"
        rev = (f"review layer {review} {share(ds['review_frequency'].values[review])}" if review is not None
               else f"no review layer {share(a['no_review_frequency'])}")
        parts.append(f"Selected in {a['n_bootstrap']:,} bootstrap resamples of the {a['n_samples']} samples: "
                     f"fusion {fus}; {rev}; this exact answer {share(a['answer_frequency'])}"
                     + ("" if a["stable"] else " (not stable: more samples needed)"))
    return ". ".join(parts) + "."


def min_hellinger_check(
    hellinger: xr.DataArray,
    *,
    post_layer: int | None = None,
    exclude_last: int = 2,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> HellingerCheck:
    """Fig. 5 check: which layer's image attention is closest to the final layer's?

    ``hellinger``: DataArray ``("layer", "sample")``, layer coords 0..N-1, Hellinger
    distance of each layer's image-attention distribution to the final layer's. The last
    ``exclude_last`` layers are not searched (default 2: the final layer is the reference
    itself and its neighbour is trivially close), so layers 0..N-1-exclude_last are.
    Returns the layer with the smallest mean distance, the layers statistically tied with
    it, and whether it equals ``post_layer`` (the post-integrated layer in use: discovered
    from drops, given, or the fallback).
    """
    _check_unit(confidence, "confidence")
    if int(exclude_last) != exclude_last or exclude_last < 0:
        raise ValueError(f"exclude_last must be a non-negative integer, got {exclude_last!r}")
    h = _as_layer_sample(hellinger, "hellinger", min_layers=exclude_last + 1)
    d = np.asarray(h.values, dtype=float)
    if d.min() < 0:
        raise ValueError("hellinger distances must be >= 0")
    n_layers = d.shape[0]
    searched = n_layers - exclude_last
    mean = d.mean(axis=1)
    best = int(np.argmin(mean[:searched]))
    means = stats.resampled_means(d, n_resamples=n_resamples, seed=seed)
    tail = 100 * (1 - confidence) / 2
    diff = means[:, :searched] - means[:, [best]]
    tied = tuple(int(L) for L in range(searched) if np.percentile(diff[:, L], tail) <= 0)
    ds = xr.Dataset(
        {"mean": ("layer", mean),
         "ci": (("layer", "bound"), np.stack([np.percentile(means, tail, 0), np.percentile(means, 100 - tail, 0)], -1))},
        coords={"layer": np.arange(n_layers), "bound": ["low", "high"]},
        attrs=dict(exclude_last=exclude_last, confidence=confidence),
    )
    agrees = None if post_layer is None else best == int(post_layer)
    reason = (f"layer {best} has the smallest mean Hellinger distance to the final layer "
              f"({mean[best]:.4f}) among layers 0..{searched - 1}")
    if len(tied) > 1:
        reason += f"; not distinguishable from layers {', '.join(str(L) for L in tied if L != best)}"
    if post_layer is not None:
        verdict = "agrees with" if agrees else "differs from"
        reason += f"; {verdict} the chosen post-integrated layer {post_layer}"
        if not agrees and int(post_layer) in tied:
            reason += " (which is statistically tied with it)"
    return HellingerCheck(best, tied, agrees, reason + ".", ds)
