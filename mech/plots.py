"""Seaborn figures from the study datasets, each readable at its default size.

Rules every figure keeps: facets by what varies (one panel per dataset, settings as rows
only when there are many), shared axes across panels, legends outside the data, and a
title that says what is shown, the model, and n (samples per dataset). Sizes are bounded:
`tests/test_figures.py` renders every study's default figure and checks its pixels.
"""

from __future__ import annotations

from pathlib import PurePath

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr

sns.set_theme(style="whitegrid", context="paper")
PERCENT = 100.0
PANEL = (3.3, 2.5)  # inches per panel (width, height)
MANY_SETTINGS = 8   # controls: above this many settings, a heat map instead of intervals


def model_name(attrs) -> str:
    """The model as a title names it: a hub id or ``tiny``, a folder by its last part."""
    source = str((attrs or {}).get("model", "") or "")
    if not source:
        return ""
    return PurePath(source).name if "/" in source and not source.count("/") == 1 else source


def sample_counts(ds: xr.Dataset) -> dict[str, int]:
    """Real samples per dataset (``is_sample``), or {} when the dataset does not say."""
    if "is_sample" not in ds or "dataset" not in ds.dims:
        return {}
    return {str(d): int(ds["is_sample"].sel(dataset=d).sum()) for d in ds["dataset"].values}


def _n_text(counts: dict) -> str:
    values = sorted(set(counts.values()))
    if not values:
        return ""
    return f"n = {values[0]:,} per dataset" if len(values) == 1 else \
        "n = " + ", ".join(f"{n:,}" for n in counts.values())


def _title(fig, what: str, attrs=None, counts=None, extra: str = "") -> None:
    parts = [p for p in (model_name(attrs), _n_text(counts or {}), extra) if p]
    fig.suptitle(what + (f"\n{' · '.join(parts)}" if parts else ""), fontsize=9)


def _panels(n_datasets: int, rows: int = 1, height: float = PANEL[1], sharey="row"):
    fig, axes = plt.subplots(rows, n_datasets, figsize=(0.6 + PANEL[0] * n_datasets, 0.9 + height * rows),
                             squeeze=False, sharex=True, sharey=sharey)
    return fig, axes


def _finish(fig, axes=(), ncol: int | None = None, note: str = "") -> None:
    """Lay the panels out, then one legend for the figure under them and an optional note
    under that: outside the data, kept by ``savefig(bbox_inches="tight")`` (how studies and
    notebooks save and show figures)."""
    fig.tight_layout()
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels and not label.startswith("_"):
                handles.append(h)
                labels.append(label)
    bottom = 0.0
    if handles:
        legend = fig.legend(handles, labels, loc="upper center", ncol=ncol or min(len(labels), 4), fontsize=7,
                            frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.canvas.draw()
        bottom = legend.get_window_extent().y0 / fig.bbox.height
    if note:
        fig.text(0.5, bottom - 0.01, note, ha="center", va="top", fontsize=6.5, color="0.35")


def _band(ax, x, mean, ci, color, label):
    ax.plot(x, mean, marker="o", ms=3, color=color, label=label)
    ax.fill_between(x, ci[..., 0], ci[..., 1], color=color, alpha=0.2, linewidth=0)


def _panel_title(ax, name: str, counts: dict) -> None:
    ax.set_title(f"{name} (n={counts[name]:,})" if name in counts else name, fontsize=8)


def layer_masking(ds: xr.Dataset, marks: dict | None = None):
    """Accuracy (top) and 1/t (bottom) by masked layer, one column per dataset, the
    unmasked model dashed; optional marks ``{"fusion": [...], "review": L}`` on the
    accuracy panels."""
    datasets = [str(d) for d in ds["dataset"].values]
    counts = sample_counts(ds)
    fig, axes = _panels(len(datasets), rows=2)
    colors = sns.color_palette("deep")
    shared = "sweep" in ds["inverse_time"].attrs.get("timing", "")
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        layers = one["layer"].values
        ax = axes[0, j]
        _band(ax, layers, one["accuracy"].values * PERCENT, one["accuracy_ci"].values * PERCENT, colors[0],
              "image tokens zeroed at this layer's input (95% CI)")
        ax.axhline(float(one["baseline_accuracy"]) * PERCENT, ls="--", color="0.3", label="unmasked model")
        for k, layer in enumerate((marks or {}).get("fusion", [])):
            ax.axvspan(layer - 0.4, layer + 0.4, color=colors[2], alpha=0.15, label="fusion layers S" if k == 0 else None)
        review = (marks or {}).get("review")
        if review is not None:
            label = "review layer" + (" (fallback: none found)" if (marks or {}).get("fallback") else "")
            ax.axvline(review, color=colors[3], lw=1.5, label=label)
        _panel_title(ax, name, counts)
        ax.set_ylabel("accuracy (%)" if j == 0 else "")
        ax.set_ylim(0, 105)
        ax = axes[1, j]
        ax.plot(layers, one["mean_inverse_time"].values, marker="o", ms=3, color=colors[1])
        ax.axhline(float(one["baseline_mean_inverse_time"]), ls="--", color="0.3")
        ax.set_xlabel("decoder layer masked at input")
        ax.set_ylabel(("1/t, shared prefill (1/s)" if shared else "1/t (1/s)") if j == 0 else "")
        ax.set_xticks(layers if len(layers) <= 16 else layers[::2])
    _title(fig, "Zero-masking the image tokens layer by layer", ds.attrs, counts)
    _finish(fig, axes, note="1/t with the clean prefill shared: layer L's time covers layers ≥ L only, so 1/t rises with L "
                      "by construction (--naive-sweep gives standalone 1/t)" if shared else "")
    return fig


def hellinger_profile(ds: xr.Dataset):
    """Mean Hellinger distance of A(i) to the final layer's A, with the 25-75% spread."""
    datasets = [str(d) for d in ds["dataset"].values]
    counts = sample_counts(ds)
    fig, axes = _panels(len(datasets))
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        layers = one["layer"].values
        keep = one["is_sample"].values if "is_sample" in one else slice(None)
        h = one["hellinger"].values[:, keep]  # [layer, sample]
        ax = axes[0, j]
        ax.plot(layers, np.nanmean(h, -1), marker="o", ms=3, label="mean over samples")
        ax.fill_between(layers, np.nanpercentile(h, 25, -1), np.nanpercentile(h, 75, -1), alpha=0.25,
                        linewidth=0, label="25-75% of samples")
        _panel_title(ax, name, counts)
        ax.set_xlabel("decoder layer i")
        ax.set_ylabel("Hellinger(A(i), A(final))" if j == 0 else "")
        ax.set_ylim(0, 1)
        ax.set_xticks(layers if len(layers) <= 16 else layers[::2])
    _title(fig, "How far each layer's image attention is from the final layer's", ds.attrs, counts)
    _finish(fig, axes)
    return fig


def pre_layer_histogram(ds: xr.Dataset):
    """How often each layer is chosen as pre-integrated layer, datasets side by side."""
    import pandas as pd

    counts = sample_counts(ds)
    frame = pd.DataFrame([(str(d), int(layer), float(ds["frequency"].sel(dataset=d, layer=layer)) * PERCENT)
                          for d in ds["dataset"].values for layer in ds["layer"].values],
                         columns=["dataset", "layer", "share"])
    frame["dataset"] = [f"{d} (n={counts[d]:,})" if d in counts else d for d in frame["dataset"]]
    fig, ax = plt.subplots(figsize=(1.8 + 0.45 * ds.sizes["layer"] * max(1, ds.sizes["dataset"]) ** 0.5, 3.2))
    sns.barplot(frame, x="layer", y="share", hue="dataset", ax=ax)
    ax.set_xlabel("pre-integrated layer i* (argmax Hellinger to A(post))")
    ax.set_ylabel("samples (%)")
    ax.set_ylim(0, 105)
    ax.get_legend().remove()
    _title(fig, "Which layer is chosen as pre-integrated layer", ds.attrs, counts)
    _finish(fig, [ax])
    return fig


def mask_ratio(ds: xr.Dataset):
    """Accuracy and 1/t as the mask ratio rho goes from 0 to 1, one column per dataset."""
    datasets = [str(d) for d in ds["dataset"].values]
    counts = sample_counts(ds)
    fig, axes = _panels(len(datasets), rows=2)
    colors = sns.color_palette("deep")
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        ratios = one["ratio"].values
        _band(axes[0, j], ratios, one["accuracy"].values * PERCENT, one["accuracy_ci"].values * PERCENT,
              colors[0], "contrastive attention (95% CI)")
        axes[0, j].axhline(float(one["baseline_accuracy"]) * PERCENT, ls="--", color="0.3", label="unmasked model")
        _panel_title(axes[0, j], name, counts)
        axes[0, j].set_ylabel("accuracy (%)" if j == 0 else "")
        axes[0, j].set_ylim(0, 105)
        axes[1, j].plot(ratios, one["mean_inverse_time"].values, marker="o", ms=3, color=colors[1])
        axes[1, j].axhline(float(one["baseline_mean_inverse_time"]), ls="--", color="0.3")
        axes[1, j].set_xlabel("mask ratio ρ")
        axes[1, j].set_ylabel("1/t (1/s)" if j == 0 else "")
    attrs = ds.attrs
    extra = f"review layer {attrs['review_layer']}, λ {attrs['lam']:g}" if "review_layer" in attrs and "lam" in attrs \
        else ""
    _title(fig, "Contrastive attention as the mask ratio grows", attrs, counts, extra)
    _finish(fig, axes)
    return fig


def strategies(ds: xr.Dataset):
    """Accuracy per candidate set for the pre-integrated layer, the unmasked model first,
    datasets side by side, with bootstrap 95% CIs."""
    import pandas as pd

    counts = sample_counts(ds)
    rows = []
    for d in ds["dataset"].values:
        one = ds.sel(dataset=d)
        rows.append((str(d), "no intervention", float(one["baseline_accuracy"]) * PERCENT,
                     *(one["baseline_accuracy_ci"].values * PERCENT)))
        for s in ds["strategy"].values:
            rows.append((str(d), str(s), float(one["accuracy"].sel(strategy=s)) * PERCENT,
                         *(one["accuracy_ci"].sel(strategy=s).values * PERCENT)))
    frame = pd.DataFrame(rows, columns=["dataset", "strategy", "accuracy", "low", "high"])
    frame["dataset"] = [f"{d} (n={counts[d]:,})" if d in counts else d for d in frame["dataset"]]
    fig, ax = plt.subplots(figsize=(1.8 + 1.1 * (ds.sizes["strategy"] + 1) * max(1, ds.sizes["dataset"]) ** 0.5, 3.2))
    _bars_with_ci(ax, frame, "strategy", "dataset")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("candidate set for the pre-integrated layer")
    ax.set_ylim(0, 105)
    attrs = ds.attrs
    extra = f"review layer {attrs['review_layer']}, ρ {attrs['rho']:g}, λ {attrs['lam']:g}" \
        if {"review_layer", "rho", "lam"} <= set(attrs) else ""
    _title(fig, "Contrastive attention by candidate set", attrs, counts, extra)
    _finish(fig, [ax])
    return fig


def _bars_with_ci(ax, frame, x: str, hue: str) -> None:
    """Grouped bars with their CIs as error bars; the legend is the figure's (below)."""
    sns.barplot(frame, x=x, y="accuracy", hue=hue, ax=ax)
    for container, name in zip(ax.containers, list(dict.fromkeys(frame[hue]))):
        rows = frame[frame[hue] == name].set_index(x).loc[list(dict.fromkeys(frame[x]))]
        xs = [bar.get_x() + bar.get_width() / 2 for bar in container]
        ax.errorbar(xs, rows["accuracy"], yerr=[rows["accuracy"] - rows["low"], rows["high"] - rows["accuracy"]],
                    fmt="none", ecolor="0.2", capsize=2, lw=0.8)
    if ax.get_legend() is not None:
        ax.get_legend().remove()


def baselines(ds: xr.Dataset):
    """Table 2 as a figure: accuracy per dataset for the unmasked model and each method
    with bootstrap 95% CIs (left); each method minus the unmasked model with the paired
    bootstrap 95% CI, on the table's last row (the dataset, or the average) (right)."""
    import pandas as pd

    systems = [str(s) for s in ds["system"].values]
    datasets = [str(d) for d in ds["dataset"].values]
    counts = sample_counts(ds)
    frame = []
    for d in datasets:
        one = ds.sel(dataset=d)
        frame.append((d, "no intervention", float(one["baseline_accuracy"]) * PERCENT,
                      *(one["baseline_accuracy_ci"].values * PERCENT)))
        for s in systems:
            frame.append((d, s, float(one["accuracy"].sel(system=s)) * PERCENT,
                          *(one["accuracy_ci"].sel(system=s).values * PERCENT)))
    frame = pd.DataFrame(frame, columns=["dataset", "method", "accuracy", "low", "high"])
    frame["dataset"] = [f"{d} (n={counts[d]:,})" if d in counts else d for d in frame["dataset"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(3.0 + 1.6 * len(datasets) + 0.6 * len(systems), 3.4),
                                      gridspec_kw={"width_ratios": [max(2, len(datasets)), 1.4]})
    _bars_with_ci(left, frame, "dataset", "method")
    left.set_ylabel("accuracy (%)")
    left.set_xlabel("")
    left.set_ylim(0, 105)
    row = str(ds["row"].values[-1])
    diff = ds["difference"].sel(row=row).values * PERCENT
    ci = ds["difference_ci"].sel(row=row).values * PERCENT
    right.errorbar(systems, diff, yerr=[diff - ci[:, 0], ci[:, 1] - diff], fmt="o", capsize=4, color="0.2")
    right.axhline(0, color="0.3", ls="--", lw=1)
    reach = float(np.nanmax(np.abs(ci))) if np.isfinite(ci).any() else 0.0
    right.set_ylim(-max(5.0, 1.1 * reach), max(5.0, 1.1 * reach))  # symmetric, never a 1e-17 axis
    right.set_ylabel("method − unmasked (points)")
    right.set_title(f"{row}: paired 95% CI", fontsize=8)
    right.tick_params(axis="x", rotation=20)
    _title(fig, "Training-free methods against the unmasked model", ds.attrs, counts)
    _finish(fig, [left])
    return fig


def _setting_label(setting: str) -> str:
    """``"review5|normed|rho0.2|lam0.1"`` -> ``"review 5 · normed · ρ 0.2 · λ 0.1"``."""
    review, mask_at, rho, lam = setting.split("|")
    return (f"review {review.removeprefix('review')} · {mask_at} · ρ {rho.removeprefix('rho')} · "
            f"λ {lam.removeprefix('lam')}")


def controls(table: xr.Dataset, attrs: dict | None = None):
    """Contrastive attention minus the unmasked model and minus each control, in points,
    with paired bootstrap 95% CIs, one panel per table row (dataset).

    A few settings (at most `MANY_SETTINGS`): intervals, the comparisons on the y axis and
    the settings side by side. More (a grid): a heat map per comparison, settings as rows
    and datasets as columns, each cell Δ in points (``*``: its CI excludes 0)."""
    rows = [str(r) for r in table["row"].values]
    settings = [str(s) for s in table["setting"].values]
    columns = ["no intervention", *[str(c) for c in table["control"].values]]
    counts = {r: int(np.nanmax(table["n_samples"].sel(row=r).values)) for r in rows}
    diff, low, high = _differences(table)
    if len(settings) > MANY_SETTINGS:
        return _controls_heatmap(table, rows, settings, columns, counts, diff, low, high, attrs)
    fig, axes = plt.subplots(1, len(rows), figsize=(1.2 + 3.0 * len(rows), 2.2 + 0.32 * len(columns) *
                                                    max(1, len(settings)) ** 0.7),
                             squeeze=False, sharex=True, sharey=True)
    colors = sns.color_palette("deep", max(len(settings), 1))
    y = np.arange(len(columns))[::-1]
    for j, row in enumerate(rows):
        ax = axes[0, j]
        for k, setting in enumerate(settings):
            offset = (k - (len(settings) - 1) / 2) * 0.7 / max(len(settings), 1)
            d, lo, hi = diff[j, k] * PERCENT, low[j, k] * PERCENT, high[j, k] * PERCENT
            ax.errorbar(d, y + offset, xerr=[d - lo, hi - d], fmt="o", ms=4, capsize=3, color=colors[k],
                        label=_setting_label(setting))
        ax.axvline(0, color="0.3", lw=1)
        ax.set_yticks(y, [f"vs {c}" for c in columns], fontsize=7)
        ax.set_ylim(-0.6, len(columns) - 0.4)
        _panel_title(ax, row, counts)
        ax.set_xlabel("contrastive minus the other (points)", fontsize=7)
    reach = np.nanmax(np.abs(np.concatenate([low.ravel(), high.ravel()]))) * PERCENT
    axes[0, 0].set_xlim(-max(5.0, 1.1 * reach), max(5.0, 1.1 * reach))  # symmetric, never a 1e-17 axis
    extra = "paired bootstrap 95% CIs" + (f"; {_setting_label(settings[0])}" if len(settings) == 1 else "")
    _title(fig, "Contrastive attention against the unmasked model and the controls", attrs, counts, extra)
    _finish(fig, axes if len(settings) > 1 else (), ncol=min(len(settings), 3),
            note="every control scales as many image tokens per sample as the contrastive run")
    return fig


def _differences(table: xr.Dataset):
    """``(diff, low, high)``, each ``[row, setting, comparison]``: contrastive minus the
    unmasked model, then minus each control."""
    diff = np.concatenate([table["gain"].values[..., None], table["difference"].values], -1)
    ci = np.concatenate([table["gain_ci"].values[:, :, None, :], table["difference_ci"].values], -2)
    return diff, ci[..., 0], ci[..., 1]


def _controls_heatmap(table, rows, settings, columns, counts, diff, low, high, attrs):
    n_rows, n_cols = len(settings), len(rows)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.2 + len(columns) * (0.55 * n_cols + 0.35),
                                                       1.6 + 0.19 * n_rows), squeeze=False, sharey=True)
    limit = float(np.nanmax(np.abs(diff))) * PERCENT or 1.0
    significant = (low > 0) | (high < 0)
    for c, column in enumerate(columns):
        ax = axes[0, c]
        values = diff[:, :, c].T * PERCENT  # [setting, row]
        image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        if n_rows * n_cols <= 400:
            for s in range(n_rows):
                for r in range(n_cols):
                    ax.text(r, s, f"{values[s, r]:+.1f}" + ("*" if significant[r, s, c] else ""), ha="center",
                            va="center", fontsize=5.5, color="white" if abs(values[s, r]) > 0.6 * limit else "black")
        ax.set_xticks(range(n_cols), rows, rotation=35, ha="right", fontsize=6.5)
        ax.set_title(f"vs {column}", fontsize=8)
        ax.grid(False)
        reviews = [s.split("|")[0] for s in settings]
        for s in range(1, n_rows):
            if reviews[s] != reviews[s - 1]:
                ax.axhline(s - 0.5, color="white", lw=2)
    axes[0, 0].set_yticks(range(n_rows), [_setting_label(s) for s in settings], fontsize=6)
    _title(fig, "Contrastive attention minus the unmasked model and each control", attrs, counts,
           f"{n_rows} settings; * the paired 95% CI excludes 0")
    top = 1 - 0.9 / fig.get_figheight()
    fig.subplots_adjust(left=0.2, right=0.9, bottom=0.12, top=top, wspace=0.08)
    bar = fig.add_axes((0.92, 0.12 + (top - 0.12) * 0.3, 0.012, (top - 0.12) * 0.4))  # beside the panels, not on one
    fig.colorbar(image, cax=bar, label="contrastive minus the other (points)")
    return fig


def overlay(image, values, grid, view: int | None = None, ax=None, cmap: str = "magma", alpha: float = 0.6,
            image_index: int = 0, title: str | None = None, colorbar: bool = True):
    """Draw a per-image-token quantity on the image it came from.

    ``values``: one number per image token of a batch row (attention A(i), contrastive
    scores, a patching effect; ``[n_image]``, or the row of the batch's padded layout),
    ``grid``: that row's `mech.grid.ImageGrid` (``batch.image_grid[b]``). Each token's
    value fills the rectangle of the image its patch covers; ``view`` picks which of the
    image's views to draw (default: the finest, e.g. LLaVA-NeXT's tiles rather than its
    base view); newline tokens read no patch and are not drawn. Returns the
    ``AxesImage`` of the values (its ``extent`` is the view's box in image pixels).
    """
    image = np.asarray(image)
    view = grid.finest(image_index) if view is None else view
    if grid.views[view].image != image_index:
        raise ValueError(f"view {view} is of image {grid.views[view].image}, not image_index={image_index}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4 * image.shape[0] / max(image.shape[1], 1)))
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    left, top, right, bottom = grid.views[view].box
    shown = ax.imshow(grid.on_view(values, view).numpy(), extent=(left, right, bottom, top), cmap=cmap,
                      alpha=alpha, interpolation="nearest")
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    return shown
