"""Mask-ratio sweep (the paper's Fig. 7).

Contrastive attention at the review layer with the mask ratio rho (``--rho``, a comma
list: by default from 0, nothing scaled, to 1, every image token but the top-scoring one
scaled by lambda); accuracy and 1/t per ratio and dataset, beside the unmodified model.

Writes ``mask_ratio.nc`` and ``mask_ratio.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import xarray as xr

from . import cli, inputs, options, output, layers as layer_choice

RATIOS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def sweep(model, samples_by_dataset: dict, chosen, *, out, ratios, lam: float, candidates="all",
          mask_at: str | None = None, heads: str = "mean", seed: int = 0, **run_options) -> xr.Dataset:
    import mech

    where = {} if mask_at is None else {"mask_at": mask_at}
    named = {float(r): mech.ContrastiveMask(review=chosen.review, post=chosen.post, candidates=candidates,
                                            rho=float(r), lam=lam, heads=heads, **where) for r in ratios}
    ds = mech.comparisons.compare(model, samples_by_dataset, named, "ratio", out=out, seed=seed, **run_options)
    ds["ratio"].attrs.update(units="fraction", long_name="mask ratio rho (quantile of contrastive scores)")
    return ds


def ratio_table(ds: xr.Dataset):
    """Accuracy (with its CI), changed predictions and 1/t per ratio and dataset, the
    unmasked model first."""
    from .tables import Table, accuracy_interval, number, percent

    t = Table(["dataset", "ρ", "accuracy", "acc 95% CI", "changed", "1/t (1/s)"], numeric={1, 2, 3, 4, 5},
              legend=["ρ", "acc CI", "changed", "1/t"])
    for d in ds["dataset"].values:
        one = ds.sel(dataset=d)
        t.add(str(d), "none", percent(one["baseline_accuracy"]), accuracy_interval(*one["baseline_accuracy_ci"].values),
              "", number(one["baseline_mean_inverse_time"], 2))
        for r in one["ratio"].values:
            x = one.sel(ratio=r)
            t.add("", f"{float(r):g}", percent(x["accuracy"]), accuracy_interval(*x["accuracy_ci"].values),
                  int(x["changed"]), number(x["mean_inverse_time"], 2))
        t.gap()
    return t


def format_table(ds) -> str:
    return ratio_table(ds).text()


def report_tables(ds) -> list:
    """The tables `studies.report` shows for a saved ``mask_ratio.nc``."""
    table = ratio_table(ds)
    table.title = "Accuracy and 1/t by mask ratio"
    return [table]


def main(argv=None) -> xr.Dataset:
    from mech import plots, progress

    parser = cli.parser("mask_ratio", __doc__)
    options.add_contrastive(parser, grid=("--rho",), defaults={"rho": RATIOS})
    args = cli.parse(parser, argv)
    model, samples, chosen = layer_choice.setup(args)
    candidates = options.candidates_for(args.candidates, chosen.fusion, chosen.post)
    with progress.phase(f"2/2 contrastive attention at {len(args.rho)} mask ratios"):
        print(f"2/2 contrastive attention at {len(args.rho)} mask ratios")
        ds = sweep(model, samples, chosen, out=args.out, ratios=args.rho, lam=args.lam, candidates=candidates,
                   mask_at=args.mask_at, heads=args.heads, seed=args.seed, **inputs.run_options(args))
    print(format_table(ds))
    return output.finish(ds, args, model, "mask_ratio", plots.mask_ratio, lam=args.lam, candidates=candidates,
                         mask_at=args.mask_at, heads=args.heads, **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
