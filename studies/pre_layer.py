"""Which layer is chosen as pre-integrated layer (the paper's Fig. 6).

Contrastive attention with the unconstrained candidate set (every layer below the
post-integrated layer); per dataset, the histogram of the per-sample choice
``i* = argmax_i H(A(i), A(post))``.

Writes ``pre_layer.nc`` and ``pre_layer.png/.pdf`` under ``--out``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import cli, inputs, output
from .strategies import add_contrastive_arguments, setup


def histogram(model, samples_by_dataset: dict, chosen, *, out, rho: float, lam: float, seed: int = 0,
              **run_options) -> xr.Dataset:
    """Dataset: ``pre_layer`` (dataset, sample), ``count``/``frequency`` (dataset, layer)."""
    import mech

    named = {"all": mech.ContrastiveMask(review=chosen.review, post=chosen.post, candidates="all",
                                         rho=rho, lam=lam)}
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


def main(argv=None) -> xr.Dataset:
    parser = cli.parser("pre_layer", __doc__)
    add_contrastive_arguments(parser)
    args = cli.parse(parser, argv)
    model, samples, chosen = setup(args)
    ds = histogram(model, samples, chosen, out=args.out, rho=args.rho, lam=args.lam, seed=args.seed,
                   **inputs.run_options(args))
    from mech import plots

    print((ds["frequency"].to_pandas() * 100).round(1).to_string())
    return output.finish(ds, args, model, "pre_layer", plots.pre_layer_histogram, rho=args.rho, lam=args.lam,
                         candidates="all", **chosen.attrs())


if __name__ == "__main__":
    cli.cli(main)
