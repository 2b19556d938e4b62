"""Comparisons on the same samples: the plain model beside one run per intervention, as one
labelled Dataset (`compare`), with its statistics: accuracy with bootstrap CIs and mean 1/t
per dataset and run (`summarise`, `accuracy_with_ci`) and each run against the plain model
with a paired CI and test (`paired_rows`). The studies and the notebooks use these same
functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from . import parallel, stats
from .runner import slug, sweep


def chunk_folder(out: Path, dataset: str) -> Path:
    """Where the runner keeps one dataset's chunk files; shared by all studies."""
    return out / "chunks" / dataset


PER_SAMPLE = ("score", "inverse_time", "new_tokens", "prediction")

#: what every p-value beside a paired CI is (`mech.stats.paired_bootstrap_diff`)
P_VALUE = ("two-sided paired bootstrap p, from the same resamples as the 95% CI (the interval inverted): "
           "p < 0.05 exactly when the CI excludes 0")


def positional(ds: xr.Dataset) -> xr.Dataset:
    """Sample ids -> a ``sample_id`` coordinate over a positional ``sample`` dim."""
    ids = ds["sample"].values
    ds = ds.drop_vars([v for v in ("dataset",) if v in ds.coords])
    return ds.assign_coords(sample=np.arange(len(ids)), sample_id=("sample", ids.astype(str)))


def per_dataset(runs: dict[str, xr.Dataset]) -> xr.Dataset:
    """``{dataset: Dataset(..., sample)}`` -> one Dataset with a leading ``dataset`` dim
    (shorter datasets are NaN-padded along ``sample``)."""
    names = list(runs)
    parts = [positional(runs[n]).assign(is_sample=lambda d: xr.ones_like(d["sample"], dtype=bool))
             for n in names]
    ds = xr.concat(parts, dim=xr.DataArray(names, dims="dataset", name="dataset"), join="outer")
    ds["is_sample"] = ds["is_sample"].fillna(False).astype(bool)
    for var in [v for v in ds.data_vars if ds[v].dtype == object]:  # netCDF: no NaN in strings
        ds[var] = ds[var].where(ds["is_sample"], "").astype(str)
    ds = ds.assign_coords(sample_id=ds["sample_id"].fillna("").astype(str))  # netCDF: no NaN in strings
    if "question_type" in ds.coords:
        ds = ds.assign_coords(question_type=ds["question_type"].fillna("").astype(str))
    ds["is_sample"].attrs["long_name"] = "a real sample (False: padding of a shorter dataset)"
    return ds


def compare(model, samples_by_dataset: dict, named: dict, dim: str, *, out: Path, seed: int = 0,
            **run_options) -> xr.Dataset:
    """Baseline plus one run per intervention, on the same samples, as one Dataset.

    ``named``: ``{coordinate: intervention}`` along the new dim ``dim`` (e.g. layer -> ZeroImage).
    Dims: ``dataset``, ``dim``, ``sample`` (positional, ``sample_id`` coord), ``bound``.
    Vars: ``score``, ``inverse_time`` (1/s), ``new_tokens``, ``prediction`` and numeric
    per-sample extras (``extra_*``, e.g. ``extra_pre_layer``) over (dataset, dim, sample);
    ``baseline_score``, ``baseline_inverse_time``, ``baseline_new_tokens``,
    ``baseline_prediction`` over (dataset, sample); per-step extras (per-token capture) over
    (dataset, dim, sample, step, ...), NaN after a sample's EOS; ``changed`` (dataset, dim): predictions
    that differ from the baseline's; ``accuracy``/``accuracy_ci``,
    ``mean_inverse_time`` and ``baseline_*`` summaries with percentile-bootstrap 95% CIs.
    """
    coords = list(named)
    from . import progress

    progress.expect(sum(map(len, samples_by_dataset.values())) * (len(coords) + 1))  # the running phase's total
    runs = {}
    folders = {"baseline": None, **{slug(named[c]): named[c] for c in coords}}
    # a shard finishes every dataset it can before it stops (mech.parallel.each)
    swept = parallel.each(samples_by_dataset, lambda name, samples: sweep(
        model, samples, folders, out=chunk_folder(out, name), **run_options))
    for name, results in swept.items():
        parts = []
        for c in coords:
            one = results[slug(named[c])].to_xarray()
            extra = [v for v in one.data_vars if v.startswith("extra_")  # per sample, or per step
                     and (one[v].dims == ("sample",) or one[v].dims[:2] == ("sample", "step"))]
            parts.append(one[[*PER_SAMPLE, *extra]])
        stacked = xr.concat(parts, dim=xr.DataArray(coords, dims=dim, name=dim))
        base = results["baseline"].to_xarray()
        timings = {results[slug(named[c])].meta["timing"] for c in coords}
        stacked["inverse_time"].attrs["timing"] = ",".join(sorted(timings))
        stacked["baseline_score"] = base["score"]
        stacked["baseline_inverse_time"] = base["inverse_time"]
        stacked["baseline_new_tokens"] = base["new_tokens"]
        stacked["baseline_prediction"] = base["prediction"]
        runs[name] = stacked.drop_vars("dataset", errors="ignore")
    return summarise(per_dataset(runs), seed)


def summarise(ds: xr.Dataset, seed: int) -> xr.Dataset:
    """Add accuracy with bootstrap CIs and mean 1/t, per dataset and run."""
    parts = []
    for name in ds["dataset"].values:
        one = ds.sel(dataset=name)
        one = one.isel(sample=np.flatnonzero(one["is_sample"].values))
        masked = accuracy_with_ci(one["score"], seed)
        base = accuracy_with_ci(one["baseline_score"], seed)
        parts.append(xr.Dataset({
            "accuracy": masked["accuracy"], "accuracy_ci": masked["accuracy_ci"],
            "mean_inverse_time": one["inverse_time"].mean("sample"),
            "mean_new_tokens": one["new_tokens"].mean("sample"),
            "baseline_accuracy": base["accuracy"], "baseline_accuracy_ci": base["accuracy_ci"],
            "baseline_mean_inverse_time": one["baseline_inverse_time"].mean("sample"),
            "baseline_mean_new_tokens": one["baseline_new_tokens"].mean("sample"),
            "changed": (one["prediction"] != one["baseline_prediction"]).sum("sample"),
        }))
    ds = ds.merge(xr.concat(parts, dim=ds["dataset"]), compat="no_conflicts")
    for var in ds.data_vars:
        unit = "1/s" if "inverse_time" in var else "tokens" if "new_tokens" in var else \
            "fraction" if ("score" in var or "accuracy" in var) else None
        if unit:
            ds[var].attrs["units"] = unit
    for var in ("accuracy_ci", "baseline_accuracy_ci"):
        ds[var].attrs["long_name"] = "95% percentile bootstrap CI of the mean over samples"
    ds["changed"].attrs.update(units="samples", long_name="predictions that differ from the baseline's")
    ds["inverse_time"].attrs["long_name"] = "1/t: inverse seconds in generate per sample"
    ds["new_tokens"].attrs["long_name"] = ("generated tokens before EOS (at most the cap): tells a slower "
                                           "run from a longer answer")
    timing = ds["inverse_time"].attrs.get("timing", "")
    ds["inverse_time"].attrs["timing_note"] = (
        "sweep: the runs shared one clean prefill, so a layer's seconds cover only its own "
        "incremental prefill (layers >= L) and decoding; run with --naive-sweep for standalone times"
        if "sweep" in timing else "per-sample: exact per-sample generate time" if timing == "per-sample"
        else "amortised: each batch's generate time shared equally by its samples")
    return ds


def accuracy_with_ci(score: xr.DataArray, seed: int, confidence: float = 0.95) -> xr.Dataset:
    """Mean over ``sample`` with a percentile-bootstrap CI (``bound`` = low/high)."""
    values = score.transpose(..., "sample").values
    low, high = stats.bootstrap_ci(values, confidence=confidence, seed=seed, axis=-1)
    dims = [d for d in score.dims if d != "sample"]
    mean = score.mean("sample")
    ci = xr.DataArray(np.stack([np.asarray(low), np.asarray(high)], -1), dims=[*dims, "bound"],
                      coords={**{d: score[d] for d in dims}, "bound": ["low", "high"]})
    return xr.Dataset({"accuracy": mean, "accuracy_ci": ci})


def paired_rows(ds: xr.Dataset, dim: str, coord, seed: int) -> xr.Dataset:
    """One run against the plain model, per dataset (and ``average`` over several):
    ``baseline_accuracy``, ``accuracy``, ``difference`` (run - baseline) with its paired
    bootstrap 95% CI and the ``p_value`` of the same bootstrap (`P_VALUE`: p < 0.05 exactly
    when the CI excludes 0) and ``n_samples``, over a ``row`` dim.

    ``ds``: a `compare` Dataset; ``coord``: the run's coordinate along ``dim``.
    """
    rows = {}
    pooled_a, pooled_b = [], []
    for name in ds["dataset"].values:
        one = ds.sel(dataset=name).isel(sample=np.flatnonzero(ds["is_sample"].sel(dataset=name).values))
        a = one["baseline_score"].values
        b = one["score"].sel({dim: coord}).values
        pooled_a.append(a)
        pooled_b.append(b)
        diff = stats.paired_bootstrap_diff(b, a, seed=seed)
        rows[str(name)] = (a.mean(), b.mean(), diff["mean_diff"], diff["low"], diff["high"], diff["p_value"], len(a))
    if len(rows) > 1:
        a, b = np.concatenate(pooled_a), np.concatenate(pooled_b)
        diff = stats.paired_bootstrap_diff(b, a, seed=seed)
        means = np.array([r[:3] for r in rows.values()]).mean(0)  # average over datasets, as the paper
        rows["average"] = (*means, diff["low"], diff["high"], diff["p_value"], len(a))
    names = list(rows)
    values = np.array([rows[n] for n in names], dtype=float)
    table = xr.Dataset(
        {"baseline_accuracy": ("row", values[:, 0]), "accuracy": ("row", values[:, 1]),
         "difference": ("row", values[:, 2]),
         "difference_ci": (("row", "bound"), values[:, 3:5]), "p_value": ("row", values[:, 5]),
         "n_samples": ("row", values[:, 6].astype(int))},
        coords={"row": names, "bound": ["low", "high"]})
    for var in ("baseline_accuracy", "accuracy", "difference", "difference_ci"):
        table[var].attrs["units"] = "fraction"
    table["difference_ci"].attrs["long_name"] = f"paired bootstrap 95% CI of {coord} - baseline"
    table["p_value"].attrs["long_name"] = P_VALUE
    table["row"].attrs["long_name"] = "dataset, or 'average' (mean of dataset accuracies; CI/test pooled)"
    return table
