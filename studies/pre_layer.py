"""Which layer is chosen as pre-integrated layer (the paper's Fig. 6).

Contrastive attention with the candidate set of ``--candidates`` (default: all, every
layer below the post-integrated layer); per dataset, the histogram of the per-sample
choice ``i* = argmax_i H(A(i), A(post))``.

Writes ``pre_layer.nc`` and ``pre_layer.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import cli, inputs, options, output, layers as layer_choice


def histogram(model, samples_by_dataset: dict, chosen, *, out, rho: float, lam: float, seed: int = 0,
              candidates="all", mask_at: str | None = None, heads: str = "mean", **run_options) -> xr.Dataset:
    """Dataset: ``pre_layer`` (dataset, sample), ``count``/``frequency`` (dataset, layer)."""
    import mech

    where = {} if mask_at is None else {"mask_at": mask_at}
    named = {"all": mech.ContrastiveMask(review=chosen.review, post=chosen.post, candidates=candidates,
                                         rho=rho, lam=lam, heads=heads, **where)}
    runs = mech.comparisons.compare(model, samples_by_dataset, named, "strategy", out=out, seed=seed, **run_options)
    chosen_layer = runs["extra_pre_layer"].sel(strategy="all")
    layers = np.arange(chosen.post)
    counts = xr.concat([
        xr.DataArray(np.bincount(chosen_layer.sel(dataset=d).values[runs["is_sample"].sel(dataset=d).values]
                                 .astype(int), minlength=len(layers))[:len(layers)],
                     dims="layer", coords={"layer": layers})
        for d in runs["dataset"].values], dim=runs["dataset"])
    ds = xr.Dataset({"pre_layer": chosen_layer.drop_vars("strategy"), "count": counts,
                     "frequency": counts / counts.sum("layer"), "is_sample": runs["is_sample"]})
    ds["frequency"].attrs.update(units="fraction", long_name="share of samples choosing this pre-integrated layer")
    ds["count"].attrs["units"] = "samples"
    ds["layer"].attrs["long_name"] = "candidate pre-integrated layer (0-based)"
    return ds


def choice_table(ds: xr.Dataset):
    """Share of samples per chosen pre-integrated layer, per dataset."""
    from .tables import Table, percent

    datasets = [str(d) for d in ds["dataset"].values]
    n = {d: int(ds["count"].sel(dataset=d).sum()) for d in datasets}
    t = Table(["layer i*", *[f"{d} (%, n={n[d]})" for d in datasets]], numeric=set(range(len(datasets) + 1)),
              legend=["layer i*: the pre-integrated layer, argmax over the candidates of Hellinger(A(i), A(post)), "
                      "chosen per sample; the cells are the share of each dataset's samples choosing it"])
    for layer in ds["layer"].values:
        t.add(int(layer), *[percent(ds["frequency"].sel(dataset=d, layer=layer)) for d in datasets])
    return t


def format_table(ds) -> str:
    return choice_table(ds).text()


def report_tables(ds) -> list:
    """The tables `studies.report` shows for a saved ``pre_layer.nc``."""
    table = choice_table(ds)
    table.title = "The chosen pre-integrated layer"
    return [table]


def main(argv=None) -> xr.Dataset:
    from mech import plots, progress

    parser = cli.parser("pre_layer", __doc__)
    options.add_contrastive(parser)
    args = cli.parse(parser, argv)
    model, samples, chosen = layer_choice.setup(args)
    candidates = options.candidates_for(args.candidates, chosen.fusion, chosen.post)
    with progress.phase("2/2 contrastive attention (the pre-integrated layer per sample)"):
        print("2/2 contrastive attention (the pre-integrated layer per sample)")
        ds = histogram(model, samples, chosen, out=args.out, rho=args.rho, lam=args.lam, seed=args.seed,
                       candidates=candidates, mask_at=args.mask_at, heads=args.heads, **inputs.run_options(args))
    print(format_table(ds))
    return output.finish(ds, args, model, "pre_layer", plots.pre_layer_histogram, rho=args.rho, lam=args.lam,
                         candidates=candidates, mask_at=args.mask_at, heads=args.heads, **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
