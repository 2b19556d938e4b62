"""Seaborn figures from the study datasets: one panel per dataset, layers on the x axis."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import xarray as xr

sns.set_theme(style="whitegrid", context="paper")
PERCENT = 100.0


def _panels(n_datasets: int, rows: int = 1, height: float = 2.6):
    fig, axes = plt.subplots(rows, n_datasets, figsize=(3.4 * n_datasets, height * rows), squeeze=False,
                             sharex=True)
    return fig, axes


def _band(ax, x, mean, ci, color, label):
    ax.plot(x, mean, marker="o", ms=3, color=color, label=label)
    ax.fill_between(x, ci[..., 0], ci[..., 1], color=color, alpha=0.2, linewidth=0)


def layer_masking(ds: xr.Dataset, marks: dict | None = None):
    """Accuracy (top) and 1/t (bottom) by masked layer; baseline dashed; optional marks
    ``{"fusion": [...], "review": L}`` shaded on the accuracy panels."""
    datasets = list(ds["dataset"].values)
    fig, axes = _panels(len(datasets), rows=2)
    colors = sns.color_palette("deep")
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        layers = one["layer"].values
        ax = axes[0, j]
        _band(ax, layers, one["accuracy"].values * PERCENT, one["accuracy_ci"].values * PERCENT, colors[0],
              "image tokens zeroed")
        ax.axhline(float(one["baseline_accuracy"]) * PERCENT, ls="--", color="0.3", label="no masking")
        for layer in (marks or {}).get("fusion", []):
            ax.axvspan(layer - 0.4, layer + 0.4, color=colors[2], alpha=0.15)
        review = (marks or {}).get("review")
        if review is not None:
            label = f"review layer {review}" + (" (fallback)" if (marks or {}).get("fallback") else "")
            ax.axvline(review, color=colors[3], lw=1.5, label=label)
        ax.set_title(str(name))
        ax.set_ylabel("accuracy (%)" if j == 0 else "")
        ax.set_ylim(0, 105)
        ax = axes[1, j]
        ax.plot(layers, one["mean_inverse_time"].values, marker="o", ms=3, color=colors[1])
        ax.axhline(float(one["baseline_mean_inverse_time"]), ls="--", color="0.3")
        ax.set_xlabel("decoder layer masked at input")
        shared = "sweep" in ds["inverse_time"].attrs.get("timing", "")
        ax.set_ylabel(("1/t (1/s)" + ("\nshared-prefill timing" if shared else "")) if j == 0 else "")
        if shared:  # a layer's time covers only layers >= L: not comparable across layers
            ax.text(0.02, 0.95, "shared clean prefill: not standalone 1/t\n(--naive-sweep for standalone)",
                    transform=ax.transAxes, fontsize=6, va="top", color="0.35")
        ax.set_xticks(layers if len(layers) <= 16 else layers[::2])
    axes[0, 0].legend(loc="lower right", fontsize=7)
    fig.suptitle("Zero-masking image tokens layer by layer", y=1.02)
    fig.tight_layout()
    return fig


def hellinger_profile(ds: xr.Dataset):
    """Mean Hellinger distance of A(i) to the final layer's A, with the 25-75% spread."""
    datasets = list(ds["dataset"].values)
    fig, axes = _panels(len(datasets))
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        layers = one["layer"].values
        h = one["hellinger"].values  # [layer, sample]
        ax = axes[0, j]
        ax.plot(layers, np.nanmean(h, -1), marker="o", ms=3, label="mean")
        ax.fill_between(layers, np.nanpercentile(h, 25, -1), np.nanpercentile(h, 75, -1), alpha=0.25,
                        linewidth=0, label="25-75%")
        ax.set_title(str(name))
        ax.set_xlabel("decoder layer i")
        ax.set_ylabel("Hellinger(A(i), A(final))" if j == 0 else "")
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def pre_layer_histogram(ds: xr.Dataset):
    """How often each layer is chosen as pre-integrated layer, per dataset."""
    datasets = list(ds["dataset"].values)
    fig, axes = _panels(len(datasets))
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        ax = axes[0, j]
        sns.barplot(x=one["layer"].values, y=one["frequency"].values * PERCENT, ax=ax, color=sns.color_palette()[0])
        ax.set_title(str(name))
        ax.set_xlabel("pre-integrated layer i*")
        ax.set_ylabel("samples (%)" if j == 0 else "")
    fig.tight_layout()
    return fig


def mask_ratio(ds: xr.Dataset):
    """Accuracy and 1/t as the mask ratio rho goes from 0 to 1."""
    datasets = list(ds["dataset"].values)
    fig, axes = _panels(len(datasets), rows=2)
    colors = sns.color_palette("deep")
    for j, name in enumerate(datasets):
        one = ds.sel(dataset=name)
        ratios = one["ratio"].values
        _band(axes[0, j], ratios, one["accuracy"].values * PERCENT, one["accuracy_ci"].values * PERCENT,
              colors[0], "contrastive attention")
        axes[0, j].axhline(float(one["baseline_accuracy"]) * PERCENT, ls="--", color="0.3", label="no intervention")
        axes[0, j].set_title(str(name))
        axes[0, j].set_ylabel("accuracy (%)" if j == 0 else "")
        axes[1, j].plot(ratios, one["mean_inverse_time"].values, marker="o", ms=3, color=colors[1])
        axes[1, j].set_xlabel("mask ratio rho")
        axes[1, j].set_ylabel("1/t (1/s)" if j == 0 else "")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def strategies(ds: xr.Dataset):
    """Accuracy per candidate strategy, per dataset, with CIs."""
    frame = ds[["accuracy"]].to_dataframe().reset_index()
    frame["accuracy"] *= PERCENT
    fig, ax = plt.subplots(figsize=(1.2 + 1.4 * ds.sizes["strategy"], 2.8))
    sns.barplot(frame, x="strategy", y="accuracy", hue="dataset", ax=ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("candidate set for the pre-integrated layer")
    fig.tight_layout()
    return fig


def review_table(table: xr.Dataset):
    """Baseline vs contrastive accuracy per dataset (left) and the difference with its
    paired bootstrap 95% CI (right) — the review-layer study's Table 1 row as a figure."""
    rows = [str(r) for r in table["row"].values]
    fig, (left, right) = plt.subplots(1, 2, figsize=(2.0 + 1.6 * len(rows), 2.8))
    frame = []
    for r in rows:
        one = table.sel(row=r)
        frame += [(r, "no intervention", float(one["baseline_accuracy"]) * PERCENT),
                  (r, "contrastive attention", float(one["contrastive_accuracy"]) * PERCENT)]
    import pandas as pd

    sns.barplot(pd.DataFrame(frame, columns=["dataset", "model", "accuracy"]), x="dataset", y="accuracy",
                hue="model", ax=left)
    left.set_ylabel("accuracy (%)")
    left.set_ylim(0, 105)
    left.legend(fontsize=7, loc="lower right")
    diff = table["difference"].values * PERCENT
    ci = table["difference_ci"].values * PERCENT
    right.errorbar(rows, diff, yerr=[diff - ci[:, 0], ci[:, 1] - diff], fmt="o", capsize=4)
    right.axhline(0, color="0.3", lw=1)
    right.set_ylabel("contrastive - baseline (points)")
    right.set_xlabel("dataset")
    fig.tight_layout()
    return fig


def baselines(ds: xr.Dataset):
    """Table 2 as a figure: accuracy per dataset for the plain model and each method
    with bootstrap 95% CIs (left); each method minus the plain model with the paired
    bootstrap 95% CI, on the table's last row (the dataset, or the average) (right)."""
    import pandas as pd

    systems = [str(s) for s in ds["system"].values]
    datasets = [str(d) for d in ds["dataset"].values]
    frame = []
    for d in datasets:
        one = ds.sel(dataset=d)
        frame.append((d, "no intervention", float(one["baseline_accuracy"]) * PERCENT,
                      *(one["baseline_accuracy_ci"].values * PERCENT)))
        for s in systems:
            frame.append((d, s, float(one["accuracy"].sel(system=s)) * PERCENT,
                          *(one["accuracy_ci"].sel(system=s).values * PERCENT)))
    frame = pd.DataFrame(frame, columns=["dataset", "method", "accuracy", "low", "high"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(3.0 + 1.8 * len(datasets) + 0.8 * len(systems), 3.0),
                                      gridspec_kw={"width_ratios": [max(2, len(datasets)), 1.4]})
    sns.barplot(frame, x="dataset", y="accuracy", hue="method", ax=left)
    methods = list(dict.fromkeys(frame["method"]))
    for container, method in zip(left.containers, methods):
        rows = frame[frame["method"] == method].set_index("dataset").loc[datasets]
        xs = [bar.get_x() + bar.get_width() / 2 for bar in container]
        left.errorbar(xs, rows["accuracy"], yerr=[rows["accuracy"] - rows["low"], rows["high"] - rows["accuracy"]],
                      fmt="none", ecolor="0.2", capsize=2, lw=0.8)
    left.set_ylabel("accuracy (%)")
    left.set_ylim(0, 105)
    left.legend(fontsize=7, loc="lower right")
    row = str(ds["row"].values[-1])
    diff = ds["difference"].sel(row=row).values * PERCENT
    ci = ds["difference_ci"].sel(row=row).values * PERCENT
    right.errorbar(systems, diff, yerr=[diff - ci[:, 0], ci[:, 1] - diff], fmt="o", capsize=4)
    right.axhline(0, color="0.3", ls="--", lw=1)
    right.set_ylabel(f"difference vs plain model (pp, {row})")
    right.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def controls(table: xr.Dataset):
    """Contrastive attention minus each control (and minus the plain model), with paired
    bootstrap 95% CIs, one panel per table row (dataset), settings on the y axis."""
    rows = [str(r) for r in table["row"].values]
    settings = [str(s) for s in table["setting"].values]
    columns = ["baseline", *[str(c) for c in table["control"].values]]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 0.9 + 0.32 * len(settings) * len(columns) / 2),
                             squeeze=False, sharey=True)
    colors = sns.color_palette("deep", len(columns))
    y = np.arange(len(settings))
    for j, row in enumerate(rows):
        ax = axes[0, j]
        one = table.sel(row=row)
        for k, column in enumerate(columns):
            if column == "baseline":
                diff, ci = one["gain"].values, one["gain_ci"].values
            else:
                diff, ci = one["difference"].sel(control=column).values, one["difference_ci"].sel(control=column).values
            offset = (k - (len(columns) - 1) / 2) * 0.8 / len(columns)
            ax.errorbar(diff * PERCENT, y + offset, xerr=[(diff - ci[:, 0]) * PERCENT, (ci[:, 1] - diff) * PERCENT],
                        fmt="o", ms=3, capsize=2, color=colors[k], label=f"vs {column}")
        ax.axvline(0, color="0.3", lw=1)
        ax.set_yticks(y, settings, fontsize=6)
        ax.set_title(row, fontsize=8)
        ax.set_xlabel("contrastive minus ... (points)")
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
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
